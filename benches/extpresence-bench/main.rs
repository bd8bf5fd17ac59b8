//! `cargo bench --bench extpresence-bench`: extpresence measured against the physical limit and
//! against the alternative, side by side in one run, on real local servers.
//!
//! | metric | extpresence | baseline |
//! |---|---|---|
//! | P1 limit | presences/s reaching real contacts through HTTP → fan-out (Prosody) | a raw XEP-0114 blaster writing pre-serialised presences to the same server |
//! | P2 alternative | status updates/s fully delivered to 10 contacts each (ejabberd) | the same through ejabberd's HTTP API `send_stanza`, one call per contact |
//! | P3 HTTP overhead | requests/s of the status endpoint, XMPP side a sink | a bare hyper handler returning a fixed body |
//! | P4 scale | RSS with 1,000,000 held statuses; start → ready with 1,000,000 persisted | goals |
//! | latency | p50 / p99 from the HTTP response to receipt at a contact, at half the max rate | |
//! | P7 read | requests/s of `GET /v1/users/{jid}/presence`, XMPP side a sink | the bare hyper handler answering the same body |
//! | P8 observed sessions | RSS growth per session the server forwards (100,000, then 100,000 more) | goal |
//! | P9 events | PUT → event at each of 10,000 SSE subscribers, p50 / p99; RSS and CPU per subscriber | a bare hyper event stream writing one pre-rendered event to all |
//!
//! Everything runs on loopback and is bounded: every load has a request count and a deadline,
//! every wait a timeout; the run takes a few minutes on 2 cores and stops by itself. The servers,
//! users, rosters and logins come from the integration-test harness (`tests/common`); contacts are
//! real c2s sessions that count the presences they receive ([`contacts`]). Numbers go to stdout as
//! one table, never into assertions.
//!
//! Options: `--only p1,p2,p3,p4` runs a subset (latency belongs to p1; p7, p8, p9 are the read
//! side, [`read`]); `--p3-connections N` runs P3 (both sides) with N keep-alive connections
//! instead of 32. Without `--bench` (i.e. under `cargo test --all-targets`) only a short smoke
//! check of the harness pieces runs, and the read side's phases in a small size.

#[path = "../../tests/common/mod.rs"]
mod common;

mod bare;
mod component;
mod contacts;
mod events;
mod load;
mod read;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::ejabberd::Ejabberd;
use common::ext::{Ext, API_KEY};
use common::{subscribe_one_way, Prosody, TestClient, COMPONENT, DOMAIN, PASSWORD, SECRET};
use component::{Blaster, Sink};
use contacts::Contacts;
use tokio::time::Instant;

/// Keep-alive connections of every HTTP load (extpresence, bare hyper, ejabberd's API).
const CONNECTIONS: usize = 32;
/// Users whose status is updated (each has every contact on its roster, subscription `from`).
const USERS: usize = 50;
/// Logged-in contacts per user.
const CONTACTS: usize = 10;
/// Target length of each measured throughput phase.
const PHASE: Duration = Duration::from_secs(4);
/// Nothing new at the contacts for this long ends a phase.
const QUIET: Duration = Duration::from_secs(2);
/// Longest wait for deliveries after a load.
const MAX_DELIVERY_WAIT: Duration = Duration::from_secs(60);
/// Statuses held / persisted for P4.
const SCALE_STATUSES: u64 = 1_000_000;

/// One line of the result table.
struct Row {
    metric: String,
    ext: String,
    base: String,
    ratio: Option<f64>,
    goal: String,
    met: Option<bool>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == bare::SERVE_FLAG) {
        bare::serve();
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if !args.iter().any(|a| a == "--bench") {
        runtime.block_on(smoke());
        return;
    }
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(|p| p.trim().to_lowercase()).collect());
    let wants = |p: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == p));
    let p3_connections = match args.iter().position(|a| a == "--p3-connections") {
        None => CONNECTIONS,
        Some(i) => args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .filter(|&n: &usize| n > 0)
            .expect("--p3-connections needs a positive number"),
    };
    runtime.block_on(async {
        let started = Instant::now();
        println!("{}", machine());
        let mut rows = Vec::new();
        if wants("p3") {
            p3(&mut rows, p3_connections).await;
        }
        if wants("p1") || wants("burst") {
            p1(&mut rows, wants("p1"), wants("burst")).await;
        }
        if wants("p2") {
            p2(&mut rows).await;
        }
        if wants("p4") {
            p4(&mut rows, false).await;
        }
        if wants("p4d") {
            p4(&mut rows, true).await;
        }
        if wants("p5") {
            p5(&mut rows).await;
        }
        if wants("p6") {
            p6(&mut rows).await;
        }
        if wants("p7") {
            read::p7(&mut rows, read::Size::Bench).await;
        }
        if wants("p8") {
            read::p8(&mut rows, read::Size::Bench).await;
        }
        if wants("p9") {
            read::p9(&mut rows, read::Size::Bench).await;
        }
        println!(
            "\nextpresence-bench: {} s in all; load average at the end: {}",
            started.elapsed().as_secs(),
            loadavg()
        );
        println!("\n{}", table(&rows));
    });
}

/// What a reader needs to judge the numbers: the machine, the versions, the load.
fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    let cmd = |c: &str, a: &[&str]| {
        std::process::Command::new(c)
            .args(a)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|_| "not found".into())
    };
    let binary = match std::env::var("EXTPRESENCE_BIN") {
        Ok(bin) => format!("EXTPRESENCE_BIN={bin}"),
        Err(_) => {
            // What the binary is built from (the benchmark's own files do not count).
            let changed = cmd(
                "git",
                &[
                    "status",
                    "--porcelain",
                    "--",
                    "src",
                    "Cargo.toml",
                    "Cargo.lock",
                ],
            )
            .lines()
            .count();
            format!(
                "release build of this tree: commit {}{}",
                cmd("git", &["rev-parse", "--short", "HEAD"]),
                match changed {
                    0 => String::new(),
                    n => format!(" with {n} files of src/ and Cargo.* changed"),
                }
            )
        }
    };
    let mut out = String::new();
    let _ = writeln!(out, "extpresence-bench: extpresence = {binary}");
    let _ = writeln!(
        out,
        "machine: {} cores ({}), {mem} memory, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu,
        read("/proc/sys/kernel/osrelease").trim()
    );
    let _ = writeln!(
        out,
        "versions: prosody {}, ejabberd {}, {}",
        cmd("dpkg-query", &["-W", "-f=${Version}", "prosody"]),
        cmd("dpkg-query", &["-W", "-f=${Version}", "ejabberd"]),
        cmd("rustc", &["--version"])
    );
    let _ = write!(out, "load average at the start: {}", loadavg());
    out
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// CPU seconds (user + system) used so far by process `pid`.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15, i.e. the 12th and 13th after the comm.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| rest.get(*i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

/// A line of `/proc/<pid>/status` (e.g. `VmRSS`) in MiB.
fn proc_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn table(rows: &[Row]) -> String {
    let header = ["metric", "extpresence", "baseline", "ratio", "goal", "met?"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.metric.clone(),
                r.ext.clone(),
                r.base.clone(),
                r.ratio.map_or("-".into(), |x| format!("{x:.2}")),
                r.goal.clone(),
                match r.met {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| {
        let mut s = String::from("|");
        for (c, w) in cols.iter().zip(widths) {
            let _ = write!(s, " {c}{} |", " ".repeat(w - c.chars().count()));
        }
        s
    };
    let mut out = line(&header.map(String::from));
    out.push('\n');
    out.push_str(&line(&widths.map(|w| "-".repeat(w))));
    for row in &cells {
        out.push('\n');
        out.push_str(&line(row));
    }
    out
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// The extpresence status request for user `u` carrying marker `n`.
fn status_request(u: usize, n: u64) -> Vec<u8> {
    load::post(
        &format!("/rest/user/u{u}@{DOMAIN}/status?api-key={API_KEY}"),
        "application/json",
        &format!(r#"{{"show":"away","status":"bench:{n}"}}"#),
    )
}

/// The real binary with the operator's default log level (`info`).
async fn start_ext(component_port: u16, tweak: impl FnOnce(String) -> String) -> Ext {
    let env = vec![("RUST_LOG".to_string(), "info".to_string())];
    Ext::start_with_env(component_port, DOMAIN, COMPONENT, SECRET, tweak, env).await
}

/// A measured delivery phase: `delivered` presences between `started` and the last arrival.
struct Delivery {
    delivered: u64,
    elapsed: Duration,
}

impl Delivery {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Wait for `expected` presences at `contacts` (counted from `from`), and time them from
/// `started` to the last arrival.
async fn delivered(contacts: &Contacts, from: u64, expected: u64, started: Instant) -> Delivery {
    let delivered = contacts
        .wait_for(from, expected, QUIET, MAX_DELIVERY_WAIT)
        .await;
    Delivery {
        delivered,
        elapsed: contacts.last_arrival().saturating_duration_since(started),
    }
}

/// Blast `updates` status updates (each one presence from user `(i % USERS)` to every contact)
/// over a raw component connection; returns the delivery.
async fn blast(port: u16, contacts: &Contacts, first_marker: u64, updates: u64) -> Delivery {
    let mut payload = String::new();
    for i in 0..updates {
        let from = format!("u{}@{DOMAIN}/tigase-external", i as usize % USERS);
        for c in 0..CONTACTS {
            payload.push_str(&component::presence(
                &from,
                &format!("c{c}@{DOMAIN}"),
                first_marker + i,
            ));
        }
    }
    let mut blaster = Blaster::connect(port, COMPONENT, SECRET).await;
    let from = contacts.count();
    let started = Instant::now();
    blaster.send(payload.as_bytes()).await;
    let d = delivered(contacts, from, updates * CONTACTS as u64, started).await;
    blaster.close().await;
    d
}

/// Send status updates to extpresence at `http` (user `i % USERS`, marker `first_marker + i`),
/// `updates` of them or for `time`, at `rate` per second or as fast as it answers; returns the
/// delivery and the HTTP outcome. Updates of a user that come faster than they can be delivered
/// are coalesced by extpresence (only the latest goes out), so what counts is presences
/// delivered per second.
async fn storm(
    http: SocketAddr,
    contacts: &Contacts,
    first_marker: u64,
    (updates, time, rate): (u64, Duration, Option<f64>),
) -> (Delivery, load::Outcome) {
    let from = contacts.count();
    let started = Instant::now();
    let outcome = load::run(
        load::Plan {
            addr: http,
            connections: CONNECTIONS,
            total: updates,
            max_time: time,
            rate,
            record: false,
        },
        Arc::new(move |i| status_request(i as usize % USERS, first_marker + i)),
    )
    .await;
    check("extpresence", &outcome);
    let d = delivered(contacts, from, outcome.ok * CONTACTS as u64, started).await;
    (d, outcome)
}

fn check(what: &str, outcome: &load::Outcome) {
    if outcome.failed > 0 {
        eprintln!(
            "WARNING: {what}: {} of {} requests failed; first: {:?}",
            outcome.failed,
            outcome.ok + outcome.failed,
            outcome.first_error
        );
    }
}

/// The offered update rate of a throughput phase: 10% above what the server can deliver at all
/// (`limit` presences/s from the blaster), so delivery is saturated without the HTTP side
/// burning CPU on updates that could only be coalesced away (both share 2 cores with the server).
fn offered(limit: f64) -> Option<f64> {
    Some(1.1 * limit / CONTACTS as f64)
}

/// Before a measured phase: every user once (rosters fetched and cached), then 1 s at `rate`.
async fn warm_up(http: SocketAddr, contacts: &Contacts, rate: Option<f64>) {
    let every_user = (USERS as u64, MAX_DELIVERY_WAIT, None);
    storm(http, contacts, 2_000_000, every_user).await;
    storm(
        http,
        contacts,
        2_100_000,
        (u64::MAX, Duration::from_secs(1), rate),
    )
    .await;
}

/// Size a phase so it lasts about [`PHASE`] at `rate` (per second), within bounds.
fn sized(rate: f64, min: u64, max: u64) -> u64 {
    ((rate * PHASE.as_secs_f64()) as u64).clamp(min, max)
}

/// p50 and p99 of `values` (µs).
fn percentiles(values: &mut [i64]) -> (i64, i64) {
    values.sort_unstable();
    if values.is_empty() {
        return (0, 0);
    }
    let at = |p: usize| values[(values.len() * p / 100).min(values.len() - 1)];
    (at(50), at(99))
}

/// Prosody with USERS users whose rosters hold CONTACTS contacts (subscription `from`, made by
/// real subscribe / subscribed exchanges), and the contacts logged in as counting clients.
async fn prosody_setup() -> (Prosody, Contacts) {
    let t = Instant::now();
    let prosody = Prosody::start().await;
    let users = names("u", USERS);
    let contacts = names("c", CONTACTS);
    let all: Vec<&str> = users.iter().chain(&contacts).map(String::as_str).collect();
    for chunk in all.chunks(4) {
        futures::future::join_all(
            chunk
                .iter()
                .map(|u| prosody.register(std::slice::from_ref(u))),
        )
        .await;
    }
    let mut followers = Vec::new();
    for c in &contacts {
        followers.push(TestClient::connect(prosody.c2s_port, c, true).await);
    }
    for u in &users {
        let mut owner = TestClient::connect(prosody.c2s_port, u, true).await;
        for f in &mut followers {
            subscribe_one_way(f, &mut owner).await;
        }
        owner.disconnect().await;
    }
    for f in followers {
        f.disconnect().await;
    }
    let counting = Contacts::login(prosody.c2s_port, &contacts).await;
    eprintln!(
        "p1: Prosody with {USERS} users × {CONTACTS} contacts ready in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    (prosody, counting)
}

/// P1 (limit ratio) and latency, on Prosody; then (`burst`) the latency of known users' updates
/// during a burst of new users.
async fn p1(rows: &mut Vec<Row>, limit_and_latency: bool, with_burst: bool) {
    let (prosody, contacts) = prosody_setup().await;
    if limit_and_latency {
        p1_limit_and_latency(rows, &prosody, &contacts).await;
    }
    if with_burst {
        burst(rows, &prosody, &contacts).await;
    }
}

async fn p1_limit_and_latency(rows: &mut Vec<Row>, prosody: &Prosody, contacts: &Contacts) {
    let k = CONTACTS as u64;

    // The limit: calibrate (and warm up) with a short blast, then a blast of about PHASE.
    let warm = blast(prosody.component_port, contacts, 0, 1_000).await;
    let updates = sized(warm.rate() / k as f64, 2_000, 50_000);
    let limit = blast(prosody.component_port, contacts, 1_000_000, updates).await;
    eprintln!(
        "p1: blaster: {} presences in {:.2} s = {:.0}/s (load {})",
        limit.delivered,
        limit.elapsed.as_secs_f64(),
        limit.rate(),
        loadavg()
    );

    let mut ext = start_ext(prosody.component_port, |c| c).await;
    ext.wait_privileged(1).await;
    let pid = ext.pid().expect("extpresence pid");
    let rate = offered(limit.rate());
    warm_up(ext.http, contacts, rate).await;
    let cpu = cpu_secs(pid);
    let (through, http) = storm(ext.http, contacts, 3_000_000, (u64::MAX, PHASE, rate)).await;
    let cpu = cpu_secs(pid) - cpu;
    eprintln!(
        "p1: extpresence (offered {:.0} updates/s): {} updates acknowledged at {:.0}/s, {} presences delivered in {:.2} s = \
         {:.0}/s; extpresence CPU {:.2} s ({:.1} µs per presence) (load {})",
        rate.unwrap_or(0.0),
        http.ok,
        http.rate(),
        through.delivered,
        through.elapsed.as_secs_f64(),
        through.rate(),
        cpu,
        cpu * 1e6 / through.delivered.max(1) as f64,
        loadavg()
    );
    let ratio = through.rate() / limit.rate();
    rows.push(Row {
        metric: format!(
            "P1 limit: presences/s to real contacts (Prosody, {USERS} users × {CONTACTS})"
        ),
        ext: format!("{:.0}", through.rate()),
        base: format!("{:.0} (raw XEP-0114 blaster)", limit.rate()),
        ratio: Some(ratio),
        goal: "≥ 0.9".into(),
        met: Some(ratio >= 0.9),
    });

    // Latency at half of the maximum update rate.
    let rate = through.rate() / k as f64 / 2.0;
    let total = sized(rate, 500, 20_000);
    contacts.set_recording(true);
    let from = contacts.count();
    let first_marker = 4_000_000;
    let started = Instant::now();
    let outcome = load::run(
        load::Plan {
            addr: ext.http,
            connections: CONNECTIONS,
            total,
            max_time: MAX_DELIVERY_WAIT,
            rate: Some(rate),
            record: true,
        },
        Arc::new(move |i| status_request(i as usize % USERS, first_marker + i)),
    )
    .await;
    check("extpresence (latency)", &outcome);
    let d = delivered(contacts, from, outcome.ok * k, started).await;
    contacts.set_recording(false);
    let answered: HashMap<u64, Instant> = outcome
        .responses
        .iter()
        .map(|(i, at)| (first_marker + i, *at))
        .collect();
    let mut latencies: Vec<i64> = contacts
        .take_records()
        .into_iter()
        .filter_map(|(n, arrived)| {
            let answered = *answered.get(&n)?;
            Some(if arrived >= answered {
                (arrived - answered).as_micros() as i64
            } else {
                -((answered - arrived).as_micros() as i64)
            })
        })
        .collect();
    let samples = latencies.len();
    let (p50, p99) = percentiles(&mut latencies);
    eprintln!(
        "latency: {} updates at {:.0}/s (asked {rate:.0}/s), {} of {} presences matched; \
         p50 {p50} µs, p99 {p99} µs (load {})",
        outcome.ok,
        outcome.rate(),
        samples,
        d.delivered,
        loadavg()
    );
    rows.push(Row {
        metric: format!(
            "latency HTTP response → contact, p50 / p99 at {:.0} updates/s",
            outcome.rate()
        ),
        ext: format!("{:.2} / {:.2} ms", p50 as f64 / 1e3, p99 as f64 / 1e3),
        base: "-".into(),
        ratio: None,
        goal: "report".into(),
        met: None,
    });
    ext.terminate().await;
}

/// Known users' updates during a burst of updates of new users (whose rosters must all be
/// fetched): 20 updates/s of the 50 known users (rosters cached) while 50,000 updates of 50,000
/// distinct new users arrive as fast as extpresence answers; each known update is timed from
/// when it was sent to when the contacts got it, and compared with the same updates without the
/// burst.
async fn burst(rows: &mut Vec<Row>, prosody: &Prosody, contacts: &Contacts) {
    const NEW_USERS: u64 = 50_000;
    const PROBES: u64 = 100;
    const PROBE_RATE: f64 = 20.0;
    let mut ext = start_ext(prosody.component_port, |c| c).await;
    ext.wait_privileged(1).await;
    warm_up(ext.http, contacts, Some(100.0)).await;
    let probe = |first_marker: u64| async move {
        contacts.set_recording(true);
        let from = contacts.count();
        let outcome = load::run(
            load::Plan {
                addr: ext.http,
                connections: 1,
                total: PROBES,
                max_time: MAX_DELIVERY_WAIT,
                rate: Some(PROBE_RATE),
                record: true,
            },
            Arc::new(move |i| status_request(i as usize % USERS, first_marker + i)),
        )
        .await;
        check("burst probe", &outcome);
        delivered(
            contacts,
            from,
            outcome.ok * CONTACTS as u64,
            outcome.started.unwrap(),
        )
        .await;
        contacts.set_recording(false);
        let started = outcome.started.expect("started");
        // Sent at its slot of the paced schedule; the first contact to get it counts.
        let mut first: HashMap<u64, Instant> = HashMap::new();
        for (n, at) in contacts.take_records() {
            let e = first.entry(n).or_insert(at);
            *e = (*e).min(at);
        }
        let mut latencies: Vec<i64> = (0..outcome.ok)
            .filter_map(|i| {
                let sent = started + Duration::from_secs_f64(i as f64 / PROBE_RATE);
                let arrived = *first.get(&(first_marker + i))?;
                Some(arrived.saturating_duration_since(sent).as_micros() as i64)
            })
            .collect();
        let samples = latencies.len();
        (percentiles(&mut latencies), samples)
    };
    let ((quiet50, quiet99), quiet_n) = probe(6_000_000).await;
    let flood = tokio::spawn({
        let http = ext.http;
        async move {
            load::run(
                load::Plan {
                    addr: http,
                    connections: CONNECTIONS,
                    total: NEW_USERS,
                    max_time: MAX_DELIVERY_WAIT,
                    rate: None,
                    record: false,
                },
                Arc::new(|i| {
                    load::post(
                        &format!("/rest/user/new{i}@{DOMAIN}/status?api-key={API_KEY}"),
                        "application/json",
                        r#"{"show":"away","status":"burst"}"#,
                    )
                }),
            )
            .await
        }
    });
    // Let the burst get going first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ((busy50, busy99), busy_n) = probe(7_000_000).await;
    let flood = flood.await.expect("flood");
    check("burst", &flood);
    eprintln!(
        "burst: known users' updates, sent → first contact: quiet p50 {quiet50} µs p99 {quiet99} µs \
         ({quiet_n} samples); during {} new users' updates at {:.0}/s: p50 {busy50} µs p99 {busy99} µs \
         ({busy_n} samples) (load {})",
        flood.ok,
        flood.rate(),
        loadavg()
    );
    rows.push(Row {
        metric: format!(
            "burst: known user's update → contact, p50 / p99, during {} new users at {:.0}/s",
            flood.ok,
            flood.rate()
        ),
        ext: format!("{:.1} / {:.1} ms", busy50 as f64 / 1e3, busy99 as f64 / 1e3),
        base: format!(
            "{:.1} / {:.1} ms (no burst)",
            quiet50 as f64 / 1e3,
            quiet99 as f64 / 1e3
        ),
        ratio: None,
        goal: "report".into(),
        met: None,
    });
    ext.terminate().await;
}

/// One ejabberd HTTP API call during setup; panics on failure.
async fn api(addr: SocketAddr, command: &str, body: String) {
    let (status, answer) = load::once(
        addr,
        &load::post(&format!("/api/{command}"), "application/json", &body),
    )
    .await
    .unwrap_or_else(|e| panic!("ejabberd API {command}: {e}"));
    assert!(
        status == 200,
        "ejabberd API {command} {body} answered {status}: {answer}"
    );
}

/// P2 (alternative ratio) on ejabberd, plus the limit ratio there for reference.
async fn p2(rows: &mut Vec<Row>) {
    let t = Instant::now();
    let ejabberd = Ejabberd::start_with_api(DOMAIN, COMPONENT, SECRET).await;
    let api_addr: SocketAddr = ([127, 0, 0, 1], ejabberd.api_port.expect("api port")).into();
    let users = names("u", USERS);
    let contact_names = names("c", CONTACTS);
    for name in users.iter().chain(&contact_names) {
        api(
            api_addr,
            "register",
            format!(r#"{{"user":"{name}","host":"{DOMAIN}","password":"{PASSWORD}"}}"#),
        )
        .await;
    }
    // Each user's roster gets every contact with subscription `from` (the contact sees the
    // user's presence), as after an accepted subscription request.
    for u in &users {
        for c in &contact_names {
            api(
                api_addr,
                "add_rosteritem",
                format!(
                    r#"{{"localuser":"{u}","localhost":"{DOMAIN}","user":"{c}","host":"{DOMAIN}","nick":"{c}","group":"bench","subs":"from"}}"#
                ),
            )
            .await;
        }
    }
    let contacts = Contacts::login(ejabberd.c2s_port, &contact_names).await;
    eprintln!(
        "p2: ejabberd with {USERS} users × {CONTACTS} contacts ready in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let k = CONTACTS as u64;

    // The alternative: one send_stanza call per contact and update, CONNECTIONS at a time.
    let alternative = |first_marker: u64, time: Duration| {
        let contacts = &contacts;
        async move {
            let from = contacts.count();
            let started = Instant::now();
            let outcome = load::run(
                load::Plan {
                    addr: api_addr,
                    connections: CONNECTIONS,
                    total: u64::MAX,
                    max_time: time,
                    rate: None,
                    record: false,
                },
                Arc::new(move |j| {
                    let (i, c) = (j / k, j % k);
                    let stanza = component::presence(
                        &format!("u{}@{DOMAIN}/tigase-external", i as usize % USERS),
                        &format!("c{c}@{DOMAIN}"),
                        first_marker + i,
                    );
                    load::post(
                        "/api/send_stanza",
                        "application/json",
                        &format!(
                            r#"{{"from":"u{}@{DOMAIN}/tigase-external","to":"c{c}@{DOMAIN}","stanza":"{stanza}"}}"#,
                            i as usize % USERS
                        ),
                    )
                }),
            )
            .await;
            check("ejabberd send_stanza", &outcome);
            let d = delivered(contacts, from, outcome.ok, started).await;
            (d, outcome)
        }
    };
    alternative(0, Duration::from_secs(1)).await;
    let (alt, alt_http) = alternative(1_000_000, PHASE).await;
    let alt_rate = alt.rate() / k as f64;
    eprintln!(
        "p2: send_stanza: {} calls at {:.0}/s, {} presences in {:.2} s = {alt_rate:.0} updates/s (load {})",
        alt_http.ok,
        alt_http.rate(),
        alt.delivered,
        alt.elapsed.as_secs_f64(),
        loadavg()
    );

    // The limit on ejabberd, for reference.
    let warm = blast(ejabberd.component_port, &contacts, 1_500_000, 1_000).await;
    let updates = sized(warm.rate() / k as f64, 2_000, 50_000);
    let limit = blast(ejabberd.component_port, &contacts, 1_600_000, updates).await;
    eprintln!(
        "p2: blaster on ejabberd: {} presences in {:.2} s = {:.0}/s",
        limit.delivered,
        limit.elapsed.as_secs_f64(),
        limit.rate()
    );

    let mut ext = start_ext(ejabberd.component_port, |c| c).await;
    ext.wait_privileged(1).await;
    let rate = offered(limit.rate());
    warm_up(ext.http, &contacts, rate).await;
    let (through, http) = storm(ext.http, &contacts, 3_000_000, (u64::MAX, PHASE, rate)).await;
    let ext_rate = through.rate() / k as f64;
    eprintln!(
        "p2: extpresence (offered {:.0} updates/s): {} updates acknowledged at {:.0}/s, {} presences in {:.2} s = \
         {ext_rate:.0} updates/s (load {})",
        rate.unwrap_or(0.0),
        http.ok,
        http.rate(),
        through.delivered,
        through.elapsed.as_secs_f64(),
        loadavg()
    );
    let ratio = ext_rate / alt_rate;
    rows.push(Row {
        metric: format!(
            "P2 alternative: updates/s fully delivered to {CONTACTS} contacts (ejabberd)"
        ),
        ext: format!("{ext_rate:.0}"),
        base: format!("{alt_rate:.0} (HTTP API send_stanza ×{CONTACTS})"),
        ratio: Some(ratio),
        goal: "≥ 5".into(),
        met: Some(ratio >= 5.0),
    });
    let ratio = through.rate() / limit.rate();
    rows.push(Row {
        metric: format!(
            "P1 limit on ejabberd (reference): presences/s, {USERS} users × {CONTACTS}"
        ),
        ext: format!("{:.0}", through.rate()),
        base: format!("{:.0} (raw XEP-0114 blaster)", limit.rate()),
        ratio: Some(ratio),
        goal: "≥ 0.9".into(),
        met: Some(ratio >= 0.9),
    });
    ext.terminate().await;
    drop(contacts);
    drop(ejabberd);
}

/// Requests per second of `addr` for `time` after a one-second warm-up, with `make`.
async fn throughput(
    addr: SocketAddr,
    connections: usize,
    time: Duration,
    make: load::MakeRequest,
) -> load::Outcome {
    let plan = |max_time| load::Plan {
        addr,
        connections,
        total: u64::MAX,
        max_time,
        rate: None,
        record: false,
    };
    load::run(plan(Duration::from_secs(1)), make.clone()).await;
    load::run(plan(time), make).await
}

/// P3: the status endpoint (XMPP side a sink) against a bare hyper handler, `connections` each.
async fn p3(rows: &mut Vec<Row>, connections: usize) {
    let time = Duration::from_secs(5);
    let make: load::MakeRequest = Arc::new(|i| status_request(i as usize % 1000, i));

    let bare = bare::Bare::start().await;
    let cpu = cpu_secs(bare.pid);
    let base = throughput(bare.addr, connections, time, make.clone()).await;
    let base_cpu = (cpu_secs(bare.pid) - cpu) * 1e6 / base.ok.max(1) as f64;
    check("bare hyper", &base);
    drop(bare);

    let sink = Sink::start(DOMAIN).await;
    let mut ext = start_ext(sink.port, |c| c).await;
    ext.wait_privileged(1).await;
    let pid = ext.pid().expect("pid");
    let cpu = cpu_secs(pid);
    let through = throughput(ext.http, connections, time, make).await;
    let ext_cpu = (cpu_secs(pid) - cpu) * 1e6 / through.ok.max(1) as f64;
    check("extpresence (sink)", &through);
    eprintln!(
        "p3: extpresence {:.0} req/s ({ext_cpu:.0} µs CPU each, {} roster gets answered by the \
         sink), bare hyper {:.0} req/s ({base_cpu:.0} µs CPU each) (load {})",
        through.rate(),
        sink.roster_gets(),
        base.rate(),
        loadavg()
    );
    ext.terminate().await;
    let ratio = through.rate() / base.rate();
    rows.push(Row {
        metric: format!("P3 HTTP overhead: requests/s, {connections} keep-alive connections"),
        ext: format!("{:.0} (XMPP side: sink)", through.rate()),
        base: format!("{:.0} (bare hyper, fixed body)", base.rate()),
        ratio: Some(ratio),
        goal: "≥ 0.7".into(),
        met: Some(ratio >= 0.7),
    });
}

/// P5: statuses/s committed through `POST /v1/statuses` (1,000 per request) against single `PUT`s
/// at the usual concurrency, same run, XMPP side a sink.
async fn p5(rows: &mut Vec<Row>) {
    let time = Duration::from_secs(5);
    let sink = Sink::start(DOMAIN).await;
    let mut ext = start_ext(sink.port, |c| c).await;
    ext.wait_privileged(1).await;
    let single: load::MakeRequest = Arc::new(|i| {
        load::with_body(
            "PUT",
            &format!(
                "/v1/users/u{}@{DOMAIN}/status?api-key={API_KEY}",
                i % 100_000
            ),
            "application/json",
            &format!(r#"{{"presence":"away","status":"p5 {i}"}}"#),
        )
    });
    let singles = throughput(ext.http, CONNECTIONS, time, single).await;
    check("p5 single PUTs", &singles);
    const PER_REQUEST: u64 = 1000;
    let bulk: load::MakeRequest = Arc::new(|i| {
        let mut body = String::from(r#"{"updates":["#);
        for j in 0..PER_REQUEST {
            if j > 0 {
                body.push(',');
            }
            let n = i * PER_REQUEST + j;
            body.push_str(&format!(
                r#"{{"user":"u{}@{DOMAIN}","presence":"xa","status":"bulk {n}"}}"#,
                n % 100_000
            ));
        }
        body.push_str("]}");
        load::post(
            &format!("/v1/statuses?api-key={API_KEY}"),
            "application/json",
            &body,
        )
    });
    let bulks = throughput(ext.http, 4, time, bulk).await;
    check("p5 bulk", &bulks);
    let single_rate = singles.rate();
    let bulk_rate = bulks.rate() * PER_REQUEST as f64;
    eprintln!(
        "p5: single PUTs {single_rate:.0} statuses/s ({CONNECTIONS} connections); bulk {:.1} requests/s × \
         {PER_REQUEST} = {bulk_rate:.0} statuses/s (4 connections) (load {})",
        bulks.rate(),
        loadavg()
    );
    ext.terminate().await;
    let ratio = bulk_rate / single_rate;
    rows.push(Row {
        metric: "P5 bulk: statuses/s committed, POST /v1/statuses (1,000 each) vs single PUTs"
            .into(),
        ext: format!("{bulk_rate:.0}"),
        base: format!("{single_rate:.0} (single PUTs, {CONNECTIONS} connections)"),
        ratio: Some(ratio),
        goal: "≥ 10".into(),
        met: Some(ratio >= 10.0),
    });
}

/// P6: 100,000 statuses expiring within the same second, all removals delivered to the sink;
/// spread from deadline to send. Then the RSS with 1,000,000 statuses each with a deadline.
async fn p6(rows: &mut Vec<Row>) {
    const N: u64 = 100_000;
    let contact = format!("c0@{DOMAIN}");
    let sink = Sink::start_with_contact(DOMAIN, Some(&contact)).await;
    let mut ext = start_ext(sink.port, |c| c).await;
    ext.wait_privileged(1).await;
    // Set them in bulk, all expiring at the same whole second, 20 s from now.
    let deadline_ms = (extpresence::base::clock::now_ms() / 1000 + 20) * 1000;
    let at = chrono::DateTime::from_timestamp_millis(deadline_ms as i64)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let bulk: load::MakeRequest = Arc::new(move |i| {
        let mut body = String::from(r#"{"updates":["#);
        for j in 0..1000u64 {
            if j > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                r#"{{"user":"e{}@{DOMAIN}","presence":"away","expires_at":"{at}"}}"#,
                i * 1000 + j
            ));
        }
        body.push_str("]}");
        load::post(
            &format!("/v1/statuses?api-key={API_KEY}"),
            "application/json",
            &body,
        )
    });
    let set = load::run(
        load::Plan {
            addr: ext.http,
            connections: 4,
            total: N / 1000,
            max_time: Duration::from_secs(60),
            rate: None,
            record: false,
        },
        bulk,
    )
    .await;
    check("p6 set", &set);
    let before = sink.unavailable_sent_at().len();
    let wait =
        Duration::from_millis(deadline_ms.saturating_sub(extpresence::base::clock::now_ms()));
    tokio::time::sleep(wait + Duration::from_secs(10)).await;
    let mut spread: Vec<i64> = sink.unavailable_sent_at()[before..]
        .iter()
        .map(|t| *t as i64 - deadline_ms as i64)
        .collect();
    let removals = spread.len();
    let (p50, p99) = percentiles(&mut spread);
    let pid = ext.pid().expect("pid");
    eprintln!(
        "p6: {removals} of {N} removals received by the sink; deadline → received p50 {p50} ms, p99 {p99} ms; \
         RSS {:.0} MiB (load {})",
        proc_mib(pid, "VmRSS"),
        loadavg()
    );
    ext.terminate().await;
    rows.push(Row {
        metric: format!(
            "P6 expiry: {N} statuses due in the same second, deadline → sink, p50 / p99"
        ),
        ext: format!("{p50} / {p99} ms ({removals} of {N} removals)"),
        base: "-".into(),
        ratio: None,
        goal: "within 1 s".into(),
        met: Some(removals as u64 == N && p99 <= 1000),
    });
}

/// P4: memory with 1,000,000 held statuses, and start → ready with them persisted; with
/// `deadlines` (phase `p4d`) every status expires in 20 days.
async fn p4(rows: &mut Vec<Row>, deadlines: bool) {
    use extpresence::model::{Show, Source, Status};
    use extpresence::store::{Store, StoredSource, Write};

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("statuses.redb");
    let t = Instant::now();
    {
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            let (store, _) = Store::open(&p).expect("open store");
            let status = Status {
                show: Some(Show::Away),
                text: Some("In a meeting until 15:00".into()),
                priority: -1,
            };
            let now = extpresence::base::clock::now_ms();
            let stored = StoredSource {
                status,
                updated_at: now,
                expires_at: deadlines.then_some(now + 20 * 86_400_000),
            };
            let pending: Vec<_> = (0..SCALE_STATUSES)
                .map(|i| {
                    let jid = jid::FullJid::new(&format!("user{i}@{DOMAIN}/tigase-external"))
                        .expect("jid");
                    store.write(vec![Write::Set(jid, Source::DEFAULT, stored.clone())])
                })
                .collect();
            futures::executor::block_on(async {
                for p in pending {
                    p.durable().await.expect("durable");
                }
            });
        })
        .await
        .expect("fill store");
    }
    // The writer thread closes the database once the last handle is gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    while redb::Database::open(&path).is_err() {
        assert!(Instant::now() < deadline, "store still locked after 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let file_mib = std::fs::metadata(&path).map_or(0, |m| m.len()) as f64 / 1048576.0;
    eprintln!(
        "p4: store filled with {SCALE_STATUSES} statuses in {:.1} s ({file_mib:.0} MiB)",
        t.elapsed().as_secs_f64()
    );

    let sink = Sink::start(DOMAIN).await;
    let store_line = format!("[store]\npath = \"{}\"\n", path.display());
    let started = Instant::now();
    let mut ext = start_ext(sink.port, move |c| {
        let head = c.split("[store]").next().unwrap_or_default().to_string();
        head + &store_line
    })
    .await;
    let listening = started.elapsed();
    let ready_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _) = load::once(ext.http, &load::get("/readyz"))
            .await
            .unwrap_or((0, String::new()));
        if status == 200 {
            break;
        }
        assert!(Instant::now() < ready_deadline, "not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready = started.elapsed();
    let pid = ext.pid().expect("pid");
    let rss_ready = proc_mib(pid, "VmRSS");
    // The replay after connect asks the sink for every user's roster: wait until it is done.
    let replay_deadline = Instant::now() + Duration::from_secs(120);
    while sink.roster_gets() < SCALE_STATUSES && Instant::now() < replay_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let replayed = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = proc_mib(pid, "VmRSS");
    let hwm = proc_mib(pid, "VmHWM");
    eprintln!(
        "p4: listening after {:.2} s, ready after {:.2} s (RSS {rss_ready:.0} MiB), replay of \
         {} rosters done after {:.1} s; RSS {rss:.0} MiB, peak {hwm:.0} MiB (load {})",
        listening.as_secs_f64(),
        ready.as_secs_f64(),
        sink.roster_gets(),
        replayed.as_secs_f64(),
        loadavg()
    );
    ext.terminate().await;
    if deadlines {
        rows.push(Row {
            metric:
                "P4 RSS with 1,000,000 held statuses, each with a deadline (after replay; peak)"
                    .into(),
            ext: format!("{rss:.0} MiB (peak {hwm:.0})"),
            base: "-".into(),
            ratio: None,
            goal: "report".into(),
            met: None,
        });
        return;
    }
    rows.push(Row {
        metric: "P4 RSS with 1,000,000 held statuses (after replay; peak)".into(),
        ext: format!("{rss:.0} MiB (peak {hwm:.0})"),
        base: "-".into(),
        ratio: None,
        goal: "≤ 400 MB".into(),
        met: Some(rss * 1.048576 <= 400.0),
    });
    rows.push(Row {
        metric: "P4 start → ready with 1,000,000 persisted statuses".into(),
        ext: format!("{:.2} s", ready.as_secs_f64()),
        base: "-".into(),
        ratio: None,
        goal: "≤ 5 s".into(),
        met: Some(ready <= Duration::from_secs(5)),
    });
}

/// Under `cargo test`: check the harness pieces quickly (no XMPP server needed), and run the read
/// side's phases in their small size.
async fn smoke() {
    contacts::scanner_self_check();
    events::scanner_self_check();
    let make: load::MakeRequest = Arc::new(|i| status_request(i as usize % 10, i));
    let plan = |addr| load::Plan {
        addr,
        connections: 4,
        total: 200,
        max_time: Duration::from_secs(20),
        rate: None,
        record: false,
    };
    let bare = bare::Bare::start().await;
    let base = load::run(plan(bare.addr), make.clone()).await;
    assert_eq!((base.ok, base.failed), (200, 0), "bare hyper: {base:?}");
    let sink = Sink::start(DOMAIN).await;
    let mut ext = start_ext(sink.port, |c| c).await;
    ext.wait_privileged(1).await;
    let through = load::run(plan(ext.http), make).await;
    assert_eq!(
        (through.ok, through.failed),
        (200, 0),
        "extpresence: {through:?}"
    );
    ext.terminate().await;
    let mut rows = Vec::new();
    assert!(read::p7(&mut rows, read::Size::Smoke).await, "p7 smoke");
    assert!(read::p8(&mut rows, read::Size::Smoke).await, "p8 smoke");
    assert!(read::p9(&mut rows, read::Size::Smoke).await, "p9 smoke");
    println!(
        "extpresence-bench smoke check: 4 passed, 0 failed (run the benchmark with \
         `cargo bench --bench extpresence-bench`)"
    );
}
