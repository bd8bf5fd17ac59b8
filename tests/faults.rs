//! Tier: several real things (Prosody and ejabberd, XMPP clients, a tmpfs).
//!
//! Faults and hostile traffic: what goes wrong around extpresence must not make it lose, leak or
//! invent anything. Real binary, real Prosody (and ejabberd where the behaviour is the server's),
//! real XMPP clients.
//!
//! - a store whose disk fills up and is freed again (writes recover, `/readyz` tells the truth,
//!   a refused update leaves no trace anywhere);
//! - a server frozen with SIGSTOP under load (the link notices, memory stays bounded, the last
//!   status arrives after SIGCONT);
//! - a held resource named like a real session of the same user;
//! - request-derived values in the log (one line per event, escaped) and floods of refusals;
//! - thousands of slow and idle HTTP connections under a 1,024 open-file limit.

mod common;

use std::time::Duration;

use common::ext::{request, Ext, API_KEY};
use common::server::{Kind, Server};
use common::tmpfs::Tmpfs;
use common::{subscribe_mutual, subscribe_one_way, TestClient, COMPONENT, DOMAIN, SECRET};
use xmpp_parsers::presence::{Presence, Type as PresenceType};

const WAIT: Duration = Duration::from_secs(10);

fn alice(resource: &str) -> String {
    format!("alice@{DOMAIN}/{resource}")
}

fn from_is(p: &Presence, jid: &str) -> bool {
    p.from.as_ref().map(|j| j.to_string()).as_deref() == Some(jid)
}

fn status_text(p: &Presence) -> Option<&str> {
    p.statuses.values().next().map(String::as_str)
}

/// A server with alice and bob mutual contacts, dave following alice (offline), carol unrelated.
async fn users(kind: Kind) -> Server {
    let server = Server::start(kind).await;
    server.register(&["alice", "bob", "carol", "dave"]).await;
    let port = server.c2s_port();
    let mut alice = TestClient::connect(port, "alice", true).await;
    let mut bob = TestClient::connect(port, "bob", true).await;
    let mut dave = TestClient::connect(port, "dave", true).await;
    subscribe_mutual(&mut alice, &mut bob).await;
    subscribe_one_way(&mut dave, &mut alice).await;
    dave.disconnect().await;
    alice.disconnect().await;
    bob.disconnect().await;
    server
}

async fn get(ext: &Ext, path: &str) -> (u16, String) {
    request(ext.http, "GET", path, &[], b"").await
}

/// The value of an unlabelled metric.
async fn metric(ext: &Ext, name: &str) -> f64 {
    let (_, body) = get(ext, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in\n{body}"))
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Defects 1 and 2: the store's disk fills up. The update whose commit fails is refused (503) and
/// leaves no trace: not in `extpresence_held_statuses`, not for a contact logging in later, not
/// after a server restart, not after a kill -9. While commits fail `/readyz` says why (503), and
/// one ERROR line says so. Once space is freed, writes are
/// accepted again by themselves, and nothing acknowledged before was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_disk_full_then_freed() {
    let mut server = users(Kind::Prosody).await;
    let fs = Tmpfs::mount("4m");
    let store = fs.path().join("statuses.redb");
    let mut ext = Ext::start_with(server.component_port(), DOMAIN, COMPONENT, SECRET, |c| {
        let start = c.find("[store]").expect("store section");
        format!("{}[store]\npath = \"{}\"\n", &c[..start], store.display())
    })
    .await;
    ext.wait_privileged(1).await;
    let mut bob = TestClient::connect(server.c2s_port(), "bob", true).await;
    let base = format!("/rest/user/alice@{DOMAIN}/status");
    ext.post_ok(
        &base,
        "application/json",
        r#"{"show": "xa", "status": "Acknowledged"}"#,
    )
    .await;
    bob.expect_presence(WAIT, |p| from_is(p, &alice("tigase-external")))
        .await;
    assert_eq!(get(&ext, "/readyz").await.0, 200);

    fs.fill();
    // New resources with long texts until the store needs space it cannot get; then 100 more
    // while the disk stays full (some may fit into space the failed commit left; those are
    // acknowledged like any other). After each refusal /readyz is asked at once.
    let long = "x".repeat(1000);
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    let mut readyz_503 = None;
    for i in 0..5000 {
        if !refused.is_empty() && i > refused[0] + 100 {
            break;
        }
        let (code, body) = ext
            .post(
                &format!("{base}/r{i}"),
                "application/json",
                &format!(r#"{{"show": "away", "status": "try {i} {long}"}}"#),
            )
            .await;
        match code {
            200 => acknowledged.push(i),
            503 => {
                assert!(body.contains("storage_unavailable"), "{body}");
                refused.push(i);
                let (code, body) = get(&ext, "/readyz").await;
                if code == 503 {
                    readyz_503.get_or_insert(body);
                }
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        !refused.is_empty(),
        "the full disk never made a commit fail"
    );
    let readyz = readyz_503.expect("/readyz never said 503 while commits failed");
    assert!(readyz.contains("status store cannot commit"), "{readyz}");
    assert!(metric(&ext, "extpresence_store_failed_commits_total").await >= 1.0);
    let held = metric(&ext, "extpresence_held_statuses").await;
    assert_eq!(
        held,
        (1 + acknowledged.len()) as f64,
        "refused updates are not counted as held"
    );
    assert_eq!(
        ext.log().matches("status store cannot commit").count(),
        1,
        "one ERROR line, not one per request:\n{}",
        ext.log()
    );

    // dave logs in: he gets the acknowledged statuses, never a refused one.
    let mut dave = TestClient::connect(server.c2s_port(), "dave", true).await;
    let p = dave
        .expect_presence(WAIT, |p| from_is(p, &alice("tigase-external")))
        .await;
    assert_eq!(status_text(&p), Some("Acknowledged"));
    let seen = dave.presences_within(Duration::from_secs(2)).await;
    let leaked = |seen: &[Presence]| {
        seen.iter()
            .filter(|p| refused.iter().any(|i| from_is(p, &alice(&format!("r{i}")))))
            .count()
    };
    assert_eq!(leaked(&seen), 0, "a refused update reached dave: {seen:?}");

    // Space is freed: writes recover by themselves.
    fs.free();
    wait_until("readyz 200 after space is freed", WAIT, || async {
        get(&ext, "/readyz").await.0 == 200
    })
    .await;
    assert_eq!(metric(&ext, "extpresence_store_ok").await, 1.0);
    ext.wait_log("status store commits again").await;
    ext.post_ok(
        &format!("{base}/desk"),
        "application/json",
        r#"{"status": "After recovery"}"#,
    )
    .await;

    // A server restart: bob (logged in again) gets every acknowledged status, nothing refused.
    drop(bob);
    server.stop().await;
    server.start_again().await;
    ext.wait_privileged(2).await;
    let mut bob = TestClient::connect(server.c2s_port(), "bob", true).await;
    let seen = bob.presences_within(Duration::from_secs(4)).await;
    assert_eq!(leaked(&seen), 0, "a refused update reached bob: {seen:?}");
    let desk = seen
        .iter()
        .find(|p| from_is(p, &alice("desk")))
        .expect("the status set after recovery");
    assert_eq!(status_text(desk), Some("After recovery"));
    let external = seen
        .iter()
        .find(|p| from_is(p, &alice("tigase-external")) && p.type_ == PresenceType::None)
        .expect("the acknowledged status after the server restart");
    assert_eq!(status_text(external), Some("Acknowledged"));

    // kill -9 and restart: everything acknowledged is still there, nothing refused.
    ext.kill().await;
    ext.restart().await;
    assert_eq!(
        metric(&ext, "extpresence_held_statuses").await,
        (2 + acknowledged.len()) as f64,
        "every acknowledged status and nothing else after kill -9"
    );
    ext.wait_privileged(1).await;
    let again = bob.presences_within(Duration::from_secs(3)).await;
    assert_eq!(leaked(&again), 0, "a refused update came back: {again:?}");
    assert!(
        again.iter().any(
            |p| from_is(p, &alice("tigase-external")) && status_text(p) == Some("Acknowledged")
        ),
        "the acknowledged status is replayed after the restart: {again:?}"
    );
    eprintln!(
        "store full: {} updates acknowledged, {} refused (first: update {}); recovered after freeing space",
        acknowledged.len(),
        refused.len(),
        refused[0]
    );
}

/// An HTTP/1.1 keep-alive connection for load (one TCP connection per worker, so a load of many
/// thousand requests does not use up the loopback's ephemeral ports). Reconnects when the server
/// closes the connection after an answer (as it does after refusing a request whose body it did
/// not read).
struct KeepAlive {
    addr: std::net::SocketAddr,
    stream: Option<tokio::io::BufReader<tokio::net::TcpStream>>,
}

impl KeepAlive {
    async fn connect(addr: std::net::SocketAddr) -> KeepAlive {
        KeepAlive { addr, stream: None }
    }

    /// POST a JSON body to `target` (path and query); returns the status code.
    async fn post(&mut self, target: &str, body: &str) -> u16 {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let head = format!(
            "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let stream = match &mut self.stream {
            Some(s) => s,
            None => {
                let tcp = tokio::net::TcpStream::connect(self.addr)
                    .await
                    .expect("connect to HTTP");
                self.stream.insert(tokio::io::BufReader::new(tcp))
            }
        };
        stream
            .get_mut()
            .write_all(head.as_bytes())
            .await
            .expect("write request");
        let mut line = String::new();
        stream.read_line(&mut line).await.expect("status line");
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status in {line:?}"));
        let mut length = 0usize;
        let mut close = false;
        loop {
            line.clear();
            stream.read_line(&mut line).await.expect("header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().expect("content-length");
                }
                if k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close") {
                    close = true;
                }
            }
        }
        let mut answer = vec![0u8; length];
        stream.read_exact(&mut answer).await.expect("body");
        if close {
            self.stream = None;
        }
        status
    }
}

/// `n` POSTs of `body(i)` to `target(i)` (path and query) over `workers` keep-alive
/// connections; returns how many were answered 200.
async fn load(
    addr: std::net::SocketAddr,
    n: usize,
    workers: usize,
    path: impl Fn(usize) -> String + Send + Sync + 'static,
    body: impl Fn(usize) -> String + Send + Sync + 'static,
) -> usize {
    let make = std::sync::Arc::new((path, body));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = KeepAlive::connect(addr).await;
            let mut ok = 0;
            for i in (w..n).step_by(workers) {
                if c.post(&(make.0)(i), &(make.1)(i)).await == 200 {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.expect("load worker");
    }
    ok
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Defect 3: Prosody is frozen (SIGSTOP) while updates flow. The link notices within the write
/// timeout although it is busy, `/readyz` answers 503, updates are still held (200), memory stays
/// bounded while thousands more arrive, and after SIGCONT the link is back within the reconnect
/// bounds and bob gets the last status of every resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_server_is_noticed_under_load() {
    let server = users(Kind::Prosody).await;
    let common::server::Server::Prosody(prosody) = &server else {
        unreachable!()
    };
    let pid = prosody.pid().expect("prosody pid");
    let mut ext = Ext::start_with(server.component_port(), DOMAIN, COMPONENT, SECRET, |c| {
        c.replace(
            "keepalive_secs = 10",
            "keepalive_secs = 10\nwrite_timeout_secs = 3",
        )
    })
    .await;
    ext.wait_privileged(1).await;
    let mut bob = TestClient::connect(server.c2s_port(), "bob", true).await;
    let base = format!("/rest/user/alice@{DOMAIN}/status");
    ext.post_ok(&base, "application/json", r#"{"status": "before"}"#)
        .await;
    bob.expect_presence(WAIT, |p| from_is(p, &alice("tigase-external")))
        .await;

    signal(pid, "-STOP");
    let frozen = std::time::Instant::now();
    let long = "z".repeat(1000);
    let text = move |i: usize| format!(r#"{{"show": "away", "status": "n{i} {long}"}}"#);
    let path = {
        let base = base.clone();
        move |i: usize| format!("{base}/r{}?api-key={API_KEY}", i % 50)
    };
    // Updates keep coming (in the background) until the link is seen dead (bounded: 60 s).
    let flow = tokio::spawn(load(ext.http, 3000, 8, path.clone(), text.clone()));
    let mut noticed = None;
    while frozen.elapsed() < Duration::from_secs(60) {
        if get(&ext, "/readyz").await.0 == 503 {
            noticed = Some(frozen.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let noticed = noticed.expect("the frozen server was not noticed within 60 s");
    let ok = flow.await.expect("load");
    assert_eq!(ok, 3000, "updates are held while the server is frozen");
    let mut sent = 3000;
    eprintln!("frozen: noticed after {noticed:?}");
    ext.wait_log("the server accepted no data for").await;
    let (_, why) = get(&ext, "/readyz").await;
    assert!(why.contains("XMPP component link is down"), "{why}");

    // Memory stays bounded while 3,000 more updates arrive for the frozen server.
    let ext_pid = ext.pid().expect("extpresence pid");
    let before = rss_kib(ext_pid);
    let ok = load(ext.http, 3000, 8, path.clone(), text.clone()).await;
    assert_eq!(ok, 3000);
    sent += 3000;
    let after = rss_kib(ext_pid);
    // The last status of every resource.
    let last = load(ext.http, 50, 1, path.clone(), |i| {
        format!(r#"{{"show": "dnd", "status": "last {i}"}}"#)
    })
    .await;
    assert_eq!(last, 50);

    signal(pid, "-CONT");
    let thawed = std::time::Instant::now();
    ext.wait_privileged(2).await;
    let reconnected = thawed.elapsed();
    eprintln!("frozen: RSS {before} -> {after} KiB; link back after {reconnected:?}");
    let mut missing: std::collections::HashSet<usize> = (0..50).collect();
    while !missing.is_empty() {
        let p = bob
            .expect_presence(Duration::from_secs(30), |p| {
                missing.iter().any(|i| {
                    from_is(p, &alice(&format!("r{i}")))
                        && status_text(p) == Some(&format!("last {i}"))
                })
            })
            .await;
        assert_eq!(p.show, Some(xmpp_parsers::presence::Show::Dnd));
        let r = p
            .from
            .as_ref()
            .and_then(|j| j.resource())
            .expect("resource");
        missing.remove(&r.as_str()[1..].parse::<usize>().expect("r<i>"));
    }
    eprintln!(
        "frozen server: noticed after {noticed:?} and {sent} updates in all; RSS {before} -> {after} KiB \
         over 3,000 updates while frozen; link back {reconnected:?} after SIGCONT"
    );
    assert!(
        after < before + 16 * 1024,
        "memory grew from {before} to {after} KiB over 3,000 updates"
    );
    assert!(
        noticed < Duration::from_secs(30),
        "noticed only after {noticed:?} (write timeout 3 s after the socket buffers filled)"
    );
    assert!(
        reconnected < Duration::from_secs(15),
        "link back only {reconnected:?} after SIGCONT"
    );
}

/// Open a connection and send a request head without its final blank line (slowloris).
async fn slow_head(addr: std::net::SocketAddr) -> Option<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .ok()?;
    Some(s)
}

/// Open a connection, GET /healthz on it (keep-alive), and keep it open idle.
async fn idle_keepalive(addr: std::net::SocketAddr) -> Option<KeepAliveIdle> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.ok()?;
        (n > 0).then_some(KeepAliveIdle(s))
    })
    .await
    .ok()?
}

/// An idle keep-alive connection (held only to occupy the server).
#[allow(dead_code)]
struct KeepAliveIdle(tokio::net::TcpStream);

/// Whether the server has closed `s` (EOF or reset) within `limit`.
async fn closed_by_server(s: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    matches!(
        tokio::time::timeout(limit, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Weakness 6: extpresence runs with 1,024 descriptors (prlimit). 500 slow-header and 2,000 idle
/// keep-alive connections: `/healthz` still answers at once, the slow ones are closed after the
/// header timeout, the cap is logged (and below the descriptor limit), and the XMPP link still
/// reconnects after a server restart while the connections press on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_under_fd_limit() {
    let mut server = Server::start(Kind::Prosody).await;
    let ext = Ext::start_launched(
        server.component_port(),
        DOMAIN,
        COMPONENT,
        SECRET,
        |c| c.replace("[http]\n", "[http]\nheader_timeout_secs = 6\n"),
        Vec::new(),
        vec!["prlimit".into(), "--nofile=1024:1024".into()],
    )
    .await;
    let mut ext = ext;
    ext.wait_privileged(1).await;
    assert_eq!(
        metric(&ext, "extpresence_http_connections_max").await,
        960.0,
        "1,024 descriptors less the 64 kept for the link and the store"
    );
    let addr = ext.http;
    let started = std::time::Instant::now();

    // 2,000 idle keep-alive connections, then 500 slow heads, 32 being opened at a time.
    let mut idle = Vec::new();
    for chunk in (0..2000).collect::<Vec<_>>().chunks(32) {
        let opened = futures::future::join_all(chunk.iter().map(|_| idle_keepalive(addr))).await;
        idle.extend(opened.into_iter().flatten());
    }
    let mut slow = Vec::new();
    for chunk in (0..500).collect::<Vec<_>>().chunks(32) {
        let opened = futures::future::join_all(chunk.iter().map(|_| slow_head(addr))).await;
        slow.extend(opened.into_iter().flatten());
    }
    let opened = started.elapsed();

    // /healthz answers while all of them are held.
    let t = std::time::Instant::now();
    let (code, _) = get(&ext, "/healthz").await;
    assert_eq!(code, 200);
    let healthz = t.elapsed();
    let open_now = metric(&ext, "extpresence_http_connections").await;
    assert!(open_now <= 961.0, "{open_now} connections open");

    // The XMPP server restarts while a filler keeps the connections at the cap.
    let stop = tokio_util::sync::CancellationToken::new();
    let filler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while !stop.is_cancelled() {
                if let Some(c) = idle_keepalive(addr).await {
                    held.push(c);
                }
                if held.len() > 3000 {
                    held.drain(..1000);
                }
            }
            held.len()
        })
    };
    server.stop().await;
    server.start_again().await;
    ext.wait_privileged(2).await;
    stop.cancel();
    filler.await.expect("filler");

    // Fresh slow heads are closed by the server after the header timeout (6 s).
    let mut fresh = Vec::new();
    for _ in 0..20 {
        fresh.extend(slow_head(addr).await);
    }
    let mut closed = 0;
    for s in &mut fresh {
        if closed_by_server(s, Duration::from_secs(10)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, fresh.len(), "slow heads were not closed");
    ext.wait_log("HTTP connection cap of 960 reached").await;
    let (_, metrics) = get(&ext, "/metrics").await;
    let reached = metrics
        .lines()
        .find_map(|l| l.strip_prefix("extpresence_http_connection_cap_total{event=\"reached\"} "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("cap metric");
    assert!(reached > 0, "{metrics}");
    assert!(
        !ext.log().contains("Too many open files"),
        "descriptors ran out:\n{}",
        ext.log()
    );
    eprintln!(
        "connections: {} idle + {} slow opened in {opened:?}; /healthz in {healthz:?}; \
         {open_now} open at the server (cap 960); cap reached {reached} times; link back after a \
         server restart under pressure",
        idle.len(),
        slow.len()
    );
}

/// Weakness 7: request-derived values are escaped in the log (a `%0A` in the path cannot forge a
/// line, an ESC byte never reaches the terminal), and a flood of 20,000 unauthenticated requests
/// writes a bounded number of lines while `/metrics` counts every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_injection_and_flood() {
    let server = Server::start(Kind::Prosody).await;
    let ext = Ext::start_with_env(
        server.component_port(),
        DOMAIN,
        COMPONENT,
        SECRET,
        |c| c,
        vec![("RUST_LOG".into(), "info".into())],
    )
    .await;
    ext.wait_log("XMPP component link up").await;
    let forged = "%0A2026-01-01T00:00:00.000000Z%20ERROR%20extpresence:%20forged%1B%5B31mred";
    let (code, body) = request(
        ext.http,
        "POST",
        &format!("/rest/user/{forged}@{DOMAIN}/status?api-key={API_KEY}"),
        &[("Content-Type", "application/json")],
        b"{}",
    )
    .await;
    assert_eq!(code, 400, "{body}");
    ext.wait_log("request refused").await;

    let flood = load(
        ext.http,
        20_000,
        8,
        |_| format!("/rest/user/alice@{DOMAIN}/status"),
        |_| "{}".to_string(),
    )
    .await;
    assert_eq!(flood, 0, "every unauthenticated request is refused");
    let (_, metrics) = get(&ext, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l
            == "extpresence_http_refused_total{dialect=\"tigase\",code=\"missing_api_key\"} 20000"),
        "exact count in /metrics:\n{metrics}"
    );
    // The summary of the flood's period comes when the period is over.
    ext.wait_log("were not logged one by one").await;

    let log = ext.log();
    assert!(!log.contains('\u{1b}'), "an ESC byte reached the log");
    for line in log.lines() {
        assert!(
            line.starts_with("20") && line.as_bytes().get(4) == Some(&b'-'),
            "a line that is not a log record (forged or broken): {line:?}"
        );
        assert!(
            !line.starts_with("2026-01-01T00:00:00"),
            "a forged line: {line:?}"
        );
    }
    let injected: Vec<&str> = log.lines().filter(|l| l.contains("forged")).collect();
    assert_eq!(injected.len(), 1, "one line for the request: {injected:?}");
    assert!(injected[0].contains("\\n2026-01-01"), "{}", injected[0]);
    assert!(injected[0].contains("\\u{1b}[31m"), "{}", injected[0]);
    let refused_lines = log
        .lines()
        .filter(|l| l.contains("request refused"))
        .count();
    assert!(
        refused_lines <= 30,
        "{refused_lines} lines for 20,001 refusals (bytes in all: {})",
        log.len()
    );
    eprintln!(
        "log: 20,001 refused requests wrote {refused_lines} 'request refused' lines, {} lines and {} bytes in all",
        log.lines().count(),
        log.len()
    );
}
