//! Round 2, the read side: reading a user's presence (P7), memory per observed session (P8),
//! and events to many Server-Sent Events subscribers (P9). Every phase runs extpresence against
//! the [`Sink`] (no XMPP server: what is measured is extpresence), which also plays the server
//! forwarding users' presence ([`Sink::forward`]). Under `cargo test` each phase runs once in a
//! small size ([`Size::Smoke`]) and only its completeness is checked.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::bare::Bare;
use crate::common::ext::{Ext, API_KEY};
use crate::common::{COMPONENT, DOMAIN, SECRET};
use crate::component::{self, Sink};
use crate::events::{self, Subscribers};
use crate::load::{self, MakeRequest};
use crate::{check, cpu_secs, loadavg, percentiles, proc_mib, start_ext, throughput, Row};

/// How big a phase runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// The measurement (`cargo bench`).
    Bench,
    /// A few of everything, for `cargo test`.
    Smoke,
}

/// Users P7 reads, each with one held status and one observed session.
const READ_USERS: u64 = 1000;
/// Observed sessions P8 adds (twice: the first batch is the goal, the second the marginal cost).
const SESSIONS: u64 = 100_000;
/// Event-stream subscribers of P9.
const SUBSCRIBERS: usize = 10_000;
/// Status changes P9 makes, one at a time.
const CHANGES: usize = 20;
/// Pause between two changes of P9, so each is measured on its own.
const CHANGE_GAP: Duration = Duration::from_millis(200);
const MIB: f64 = 1_048_576.0;

/// `PUT /v1/users/{user}/status` with `presence` and status text `text`; returns the HTTP
/// status (0 if none came).
async fn put_status(http: std::net::SocketAddr, user: &str, presence: &str, text: &str) -> u16 {
    let request = load::with_body(
        "PUT",
        &format!("/v1/users/{user}/status?api-key={API_KEY}"),
        "application/json",
        &format!(r#"{{"presence":"{presence}","status":"{text}"}}"#),
    );
    load::once(http, &request)
        .await
        .map_or(0, |(status, _)| status)
}

/// The request reading `user`'s presence, key in the `Api-Key` header.
fn presence_request(user: &str) -> Vec<u8> {
    load::get_with(
        &format!("/v1/users/{user}/presence"),
        &[("Api-Key", API_KEY)],
    )
}

/// Wait (bounded) until `GET /v1/users/{user}/presence` shows resource `resource`: the observed
/// sessions forwarded before it (same link, in order) are then all in the read model.
async fn wait_for_session(http: std::net::SocketAddr, user: &str, resource: &str) -> bool {
    let needle = format!(r#""resource":"{resource}""#);
    let request = presence_request(user);
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok((200, body)) = load::once(http, &request).await {
            if body.contains(&needle) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The observed sessions extpresence counts now (`extpresence_observed_sessions` of `/metrics`).
async fn observed_sessions(http: std::net::SocketAddr) -> Option<u64> {
    let (_, body) = load::once(http, &load::get_with("/metrics", &[("Api-Key", API_KEY)]))
        .await
        .ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("extpresence_observed_sessions "))
        .and_then(|v| v.trim().parse().ok())
}

/// Hold a status for users `r0..r<users>` through `POST /v1/statuses`, 1,000 per request.
async fn hold_statuses(http: std::net::SocketAddr, users: u64) {
    const WORDS: [&str; 5] = ["away", "dnd", "xa", "online", "chat"];
    let make: MakeRequest = Arc::new(move |i| {
        let items: Vec<String> = (i * 1000..((i + 1) * 1000).min(users))
            .map(|u| {
                format!(
                    r#"{{"user":"r{u}@{DOMAIN}","presence":"{}","status":"In a meeting until 15:00","source":"calendar"}}"#,
                    WORDS[(u % 5) as usize]
                )
            })
            .collect();
        load::post(
            &format!("/v1/statuses?api-key={API_KEY}"),
            "application/json",
            &format!(r#"{{"updates":[{}]}}"#, items.join(",")),
        )
    });
    let outcome = load::run(
        load::Plan {
            addr: http,
            connections: 4,
            total: users.div_ceil(1000),
            max_time: Duration::from_secs(60),
            rate: None,
            record: false,
        },
        make,
    )
    .await;
    check("hold statuses", &outcome);
}

/// Requests/s of `addr` with `make` (process `pid`'s CPU per request, µs): [`throughput`] for 5 s
/// after a 1 s warm-up, or 200 requests in the smoke check.
async fn read_rate(
    addr: std::net::SocketAddr,
    pid: u32,
    size: Size,
    make: MakeRequest,
) -> (load::Outcome, f64) {
    let cpu = cpu_secs(pid);
    let outcome = match size {
        Size::Bench => throughput(addr, crate::CONNECTIONS, Duration::from_secs(5), make).await,
        Size::Smoke => {
            load::run(
                load::Plan {
                    addr,
                    connections: 4,
                    total: 200,
                    max_time: Duration::from_secs(20),
                    rate: None,
                    record: false,
                },
                make,
            )
            .await
        }
    };
    let per_request = (cpu_secs(pid) - cpu) * 1e6 / outcome.ok.max(1) as f64;
    (outcome, per_request)
}

/// P7: `GET /v1/users/{jid}/presence` requests/s against the bare hyper handler answering the
/// same body, same client and connections. Every user read has a held status (source
/// `calendar`) and an observed session, so each answer aggregates two resources.
pub async fn p7(rows: &mut Vec<Row>, size: Size) -> bool {
    let users = match size {
        Size::Bench => READ_USERS,
        Size::Smoke => 20,
    };
    let sink = Sink::start(DOMAIN).await;
    let mut ext = start_ext(sink.port, |c| c).await;
    ext.wait_privileged(1).await;
    let pid = ext.pid().expect("extpresence pid");
    hold_statuses(ext.http, users).await;
    let mut sessions = String::new();
    for u in 0..users {
        sessions.push_str(&component::session_presence(
            &format!("r{u}@{DOMAIN}/desktop"),
            COMPONENT,
            u,
        ));
    }
    sink.forward(sessions.as_bytes()).await;
    let last = format!("r{}@{DOMAIN}", users - 1);
    assert!(
        wait_for_session(ext.http, &last, "desktop").await,
        "p7: the forwarded sessions never showed"
    );
    let make: MakeRequest =
        Arc::new(move |i| presence_request(&format!("r{}@{DOMAIN}", i % users)));
    let (status, body) = load::once(ext.http, &make(0))
        .await
        .expect("p7: read a presence");
    assert_eq!(status, 200, "p7: GET presence: {body}");

    let bare = Bare::start_with_body(&body).await;
    let (base, base_cpu) = read_rate(bare.addr, bare.pid, size, make.clone()).await;
    check("bare hyper", &base);
    drop(bare);
    let (through, ext_cpu) = read_rate(ext.http, pid, size, make).await;
    check("extpresence GET presence", &through);
    eprintln!(
        "p7: GET presence {:.0} req/s ({ext_cpu:.1} µs CPU each), bare hyper {:.0} req/s \
         ({base_cpu:.1} µs CPU each); answers of {} bytes, {users} users each with a held status \
         and an observed session (load {})",
        through.rate(),
        base.rate(),
        body.len(),
        loadavg()
    );
    ext.terminate().await;
    let ratio = through.rate() / base.rate();
    rows.push(Row {
        metric: format!(
            "P7 read: GET /v1/users/{{jid}}/presence requests/s, {} keep-alive connections",
            crate::CONNECTIONS
        ),
        ext: format!(
            "{:.0} (1 session + 1 held status each, {} B)",
            through.rate(),
            body.len()
        ),
        base: format!("{:.0} (bare hyper, same body)", base.rate()),
        ratio: Some(ratio),
        goal: "≥ 0.7".into(),
        met: Some(ratio >= 0.7),
    });
    through.failed == 0 && base.failed == 0
}

/// The user of observed session `k`: nine users per ten sessions (every ninth user has a second
/// session), so most users have one.
fn session_user(k: u64) -> u64 {
    (k / 10) * 9 + (k % 10).min(8)
}

/// Forward sessions `first..first + n` (`u<user>@<domain>/res<k>`), wait until extpresence has
/// taken them all — the last one shows in a GET, and the event of a change made after it (status
/// text marked `change`) reached `done`, so the event hub has worked through them too —
/// and return how long that took.
async fn observe_batch(
    sink: &Sink,
    http: std::net::SocketAddr,
    done: &Subscribers,
    (first, n): (u64, u64),
    change: usize,
) -> Option<Duration> {
    let mut payload = String::with_capacity(n as usize * 160);
    for k in first..first + n {
        payload.push_str(&component::session_presence(
            &format!("u{}@{DOMAIN}/res{k}", session_user(k)),
            COMPONENT,
            k,
        ));
    }
    let last = first + n - 1;
    let started = Instant::now();
    sink.forward(payload.as_bytes()).await;
    let user = format!("u{}@{DOMAIN}", session_user(last));
    if !wait_for_session(http, &user, &format!("res{last}")).await {
        eprintln!("WARNING: p8: session res{last} never showed");
        return None;
    }
    let status = put_status(
        http,
        &format!("p8@{DOMAIN}"),
        "away",
        &events::marked(change),
    )
    .await;
    assert_eq!(status, 200, "p8: PUT of the completion marker");
    if done.wait_for(change, Duration::from_secs(60)).await < 1 {
        eprintln!("WARNING: p8: the event after the sessions never came");
        return None;
    }
    let took = started.elapsed();
    let counted = observed_sessions(http).await;
    if counted != Some(first + n) {
        eprintln!(
            "WARNING: p8: /metrics counts {counted:?} observed sessions, {} forwarded",
            first + n
        );
        return None;
    }
    Some(took)
}

/// P8: RSS growth of extpresence per observed session, [`SESSIONS`] real sessions forwarded by
/// the server (show, a status text of 10 to 20 characters, priority; nine users per ten
/// sessions); then the same again, for the marginal cost once every fixed-size buffer is full.
pub async fn p8(rows: &mut Vec<Row>, size: Size) -> bool {
    let n = match size {
        Size::Bench => SESSIONS,
        Size::Smoke => 1_000,
    };
    let sink = Sink::start(DOMAIN).await;
    let mut ext = start_ext(sink.port, |c| c).await;
    ext.wait_privileged(1).await;
    let pid = ext.pid().expect("extpresence pid");
    let done = Subscribers::connect(ext.http, API_KEY, &format!("?user=p8@{DOMAIN}"), 1, 2).await;
    assert_eq!(done.connected(), 1, "p8: subscribe: {:?}", done.failed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss0 = proc_mib(pid, "VmRSS");
    let first = observe_batch(&sink, ext.http, &done, (0, n), 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss1 = proc_mib(pid, "VmRSS");
    let second = observe_batch(&sink, ext.http, &done, (n, n), 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss2 = proc_mib(pid, "VmRSS");
    let hwm = proc_mib(pid, "VmHWM");
    let per_session = (rss1 - rss0) * MIB / n as f64;
    let marginal = (rss2 - rss1) * MIB / n as f64;
    let took = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.2}", d.as_secs_f64()));
    eprintln!(
        "p8: RSS {rss0:.1} MiB → {rss1:.1} MiB with {n} observed sessions ({per_session:.0} B each; \
         forwarded and taken in {} s) → {rss2:.1} MiB with {} ({marginal:.0} B each for the \
         second {n}; {} s); peak {hwm:.1} MiB (load {})",
        took(first),
        2 * n,
        took(second),
        loadavg()
    );
    ext.terminate().await;
    rows.push(Row {
        metric: format!("P8 RSS growth per observed session, first {n} (then the next {n})"),
        ext: format!("{per_session:.0} B ({marginal:.0} B)"),
        base: "-".into(),
        ratio: None,
        goal: "≤ 200 B".into(),
        met: Some(per_session <= 200.0),
    });
    first.is_some() && second.is_some()
}

/// Raise this process's open-file limit to at least `need` (P9's clients), with `prlimit` (as
/// root, or within the hard limit).
fn ensure_nofile(need: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let (soft, hard) = limits
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("Max open files")?;
            let mut v = rest
                .split_whitespace()
                .map(|x| x.parse::<u64>().unwrap_or(u64::MAX));
            Some((v.next()?, v.next()?))
        })
        .unwrap_or((0, 0));
    if soft >= need {
        return;
    }
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={need}:{}", hard.max(need)))
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "p9 needs {need} open files (limit {soft}): run as root or raise `ulimit -n`"
    );
}

/// What one event fan-out measurement found (P9, for extpresence and for the baseline).
struct FanOut {
    connected: usize,
    connect_time: Duration,
    /// RSS growth of the server per connected subscriber (bytes).
    per_subscriber: f64,
    /// PUT sent → event at a subscriber, over all (change, subscriber) pairs (µs).
    p50: i64,
    p99: i64,
    /// PUT sent → the last subscriber has it, per change (µs).
    last_p50: i64,
    last_max: i64,
    /// PUT sent → its answer, p50 (µs).
    answered_p50: i64,
    /// CPU per event delivered to one subscriber: the server's, this process's (µs).
    server_cpu: f64,
    own_cpu: f64,
    /// Length of an event's `data:`.
    data_len: usize,
    /// Every subscriber connected, got every change, and none failed.
    complete: bool,
}

impl FanOut {
    fn summary(&self, what: &str) -> String {
        let ms = |us: i64| us as f64 / 1e3;
        format!(
            "p9: {what}: {} subscribers connected in {:.2} s ({:.1} KiB RSS each); PUT sent → \
             event at a subscriber: p50 {:.1} ms, p99 {:.1} ms over all (change, subscriber) \
             pairs; until the last subscriber has it: p50 {:.1} ms, max {:.1} ms; PUT answered \
             after p50 {:.2} ms; CPU per event delivered: server {:.1} µs, the subscribers (this \
             process) {:.1} µs; events of {} B (load {})",
            self.connected,
            self.connect_time.as_secs_f64(),
            self.per_subscriber / 1024.0,
            ms(self.p50),
            ms(self.p99),
            ms(self.last_p50),
            ms(self.last_max),
            ms(self.answered_p50),
            self.server_cpu,
            self.own_cpu,
            self.data_len,
            loadavg()
        )
    }
}

/// Connect `n` subscribers to `http` (server process `pid`), then make `changes` status changes
/// of `user` one at a time, each timed until every subscriber has it.
async fn fan_out(
    http: std::net::SocketAddr,
    pid: u32,
    user: &str,
    (n, changes): (usize, usize),
) -> FanOut {
    let rss0 = proc_mib(pid, "VmRSS");
    let t = Instant::now();
    let subs = Subscribers::connect(http, API_KEY, "", n, changes).await;
    let connect_time = t.elapsed();
    let connected = subs.connected();
    let mut complete = connected == n;
    if !complete {
        eprintln!(
            "WARNING: p9: {connected} of {n} subscribers connected; first failure: {:?}",
            subs.failed().1
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = proc_mib(pid, "VmRSS");
    let mut pairs: Vec<i64> = Vec::with_capacity(n * changes);
    let mut last: Vec<i64> = Vec::new();
    let mut answered: Vec<i64> = Vec::new();
    let (server_cpu, own_cpu) = (cpu_secs(pid), cpu_secs(std::process::id()));
    for k in 0..changes {
        let presence = ["away", "xa"][k % 2];
        let sent = Instant::now();
        let status = put_status(http, user, presence, &events::marked(k)).await;
        answered.push(sent.elapsed().as_micros() as i64);
        assert_eq!(status, 200, "p9: PUT {k}");
        let got = subs.wait_for(k, Duration::from_secs(10)).await;
        if got < connected {
            complete = false;
            eprintln!("WARNING: p9: change {k} reached {got} of {connected} subscribers in 10 s");
        }
        let arrivals: Vec<i64> = subs
            .arrivals(k)
            .into_iter()
            .map(|at| at.saturating_duration_since(sent).as_micros() as i64)
            .collect();
        last.push(arrivals.iter().copied().max().unwrap_or(0));
        pairs.extend(arrivals);
        tokio::time::sleep(CHANGE_GAP).await;
    }
    let deliveries = pairs.len().max(1) as f64;
    let server_cpu = (cpu_secs(pid) - server_cpu) * 1e6 / deliveries;
    let own_cpu = (cpu_secs(std::process::id()) - own_cpu) * 1e6 / deliveries;
    let (failed, first_failure) = subs.failed();
    if failed > 0 {
        complete = false;
        eprintln!("WARNING: p9: {failed} subscribers failed; first: {first_failure:?}");
    }
    let (p50, p99) = percentiles(&mut pairs);
    let (last_p50, _) = percentiles(&mut last);
    let (answered_p50, _) = percentiles(&mut answered);
    FanOut {
        connected,
        connect_time,
        per_subscriber: (rss1 - rss0) * MIB / connected.max(1) as f64,
        p50,
        p99,
        last_p50,
        last_max: last.last().copied().unwrap_or(0),
        answered_p50,
        server_cpu,
        own_cpu,
        data_len: subs.data_len(),
        complete,
    }
}

/// P9: [`SUBSCRIBERS`] SSE subscribers of `GET /v1/events` on one extpresence, then [`CHANGES`]
/// status changes one at a time: for each, the time from sending the `PUT` until each
/// subscriber has the event, p50 / p99 over all (change, subscriber) pairs; the time until the
/// last subscriber has it, per change; and RSS growth per subscriber. The baseline: the same
/// with the bare hyper event stream ([`Bare::start_events`]: an event rendered once, the same
/// bytes written to every subscriber), same client.
pub async fn p9(rows: &mut Vec<Row>, size: Size) -> bool {
    let (n, changes) = match size {
        Size::Bench => (SUBSCRIBERS, CHANGES),
        Size::Smoke => (10, 2),
    };
    let fds = (n + 4096) as u64;
    if size == Size::Bench {
        ensure_nofile(fds);
    }
    let sink = Sink::start(DOMAIN).await;
    let max_connections = n + 1024;
    let launcher = match size {
        Size::Bench => vec!["prlimit".to_string(), format!("--nofile={fds}:{fds}")],
        Size::Smoke => Vec::new(),
    };
    let mut ext = Ext::start_launched(
        sink.port,
        DOMAIN,
        COMPONENT,
        SECRET,
        move |c| {
            assert!(
                c.contains("[http]\n"),
                "p9: no [http] section for max_connections"
            );
            c.replace(
                "[http]\n",
                &format!("[http]\nmax_connections = {max_connections}\n"),
            )
        },
        vec![("RUST_LOG".to_string(), "info".to_string())],
        launcher,
    )
    .await;
    ext.wait_privileged(1).await;
    let pid = ext.pid().expect("extpresence pid");
    let user = format!("p9@{DOMAIN}");
    // The user's first status (its table entry and the store's first record) before measuring.
    assert_eq!(put_status(ext.http, &user, "online", "warm-up").await, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let through = fan_out(ext.http, pid, &user, (n, changes)).await;
    eprintln!("{}", through.summary("extpresence"));
    ext.terminate().await;
    drop(sink);

    let bare = Bare::start_events(through.data_len).await;
    let base = fan_out(bare.addr, bare.pid, &user, (n, changes)).await;
    eprintln!("{}", base.summary("bare hyper event stream"));
    drop(bare);

    let ms = |us: i64| us as f64 / 1e3;
    rows.push(Row {
        metric: format!(
            "P9 events: PUT sent → event at each of {n} SSE subscribers, p50 / p99 over all \
             (change, subscriber) pairs, {changes} changes (last subscriber p50 / max)"
        ),
        ext: format!(
            "{:.1} / {:.1} ms ({:.1} / {:.1})",
            ms(through.p50),
            ms(through.p99),
            ms(through.last_p50),
            ms(through.last_max)
        ),
        base: format!(
            "{:.1} / {:.1} ms ({:.1} / {:.1}) (bare hyper, one event to all)",
            ms(base.p50),
            ms(base.p99),
            ms(base.last_p50),
            ms(base.last_max)
        ),
        ratio: None,
        goal: "p99 ≤ 100 ms".into(),
        met: Some(through.complete && through.p99 <= 100_000),
    });
    rows.push(Row {
        metric: format!(
            "P9 per SSE subscriber: RSS growth ({} connected); CPU per event delivered",
            through.connected
        ),
        ext: format!(
            "{:.1} KiB; {:.1} µs",
            through.per_subscriber / 1024.0,
            through.server_cpu
        ),
        base: format!(
            "{:.1} KiB; {:.1} µs (bare hyper)",
            base.per_subscriber / 1024.0,
            base.server_cpu
        ),
        ratio: None,
        goal: "report".into(),
        met: None,
    });
    through.complete && base.complete
}
