//! Tier: several real things (Prosody, XMPP clients, systemd-analyze).
//!
//! extpresence as a service: the systemd unit verifies and is hardened, readiness is notified
//! (`Type=notify`), the operations endpoints tell the truth, and `on_shutdown = "keep"` keeps
//! contacts' view through a restart. Real binary, real Prosody, real clients.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::ext::{request, Ext};
use common::proxy::LinkProxy;
use common::{subscribe_mutual, Prosody, TestClient, COMPONENT, DOMAIN, SECRET};
use xmpp_parsers::presence::Type as PresenceType;

const WAIT: Duration = Duration::from_secs(10);

/// `systemd-analyze verify` accepts the unit (no warnings either), and it has what the issue asks.
#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/extpresence.service"
    ))
    .expect("read unit");
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "StateDirectory=extpresence",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "LimitNOFILE=1088",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line}");
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("extpresence.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/extpresence",
            env!("CARGO_BIN_EXE_extpresence"),
        ),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze is needed (apt-get install systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {stderr}");
    assert!(
        !stderr.contains("extpresence.service"),
        "verify warned about the unit: {stderr}"
    );
}

/// READY=1 arrives once HTTP listens (and the store is open); STOPPING=1 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_ready_and_stopping() {
    let prosody = Prosody::start().await;
    let mut ext = Ext::start(prosody.component_port, DOMAIN, COMPONENT, SECRET).await;
    assert_eq!(ext.terminate().await, Some(0));
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    ext.env
        .push(("NOTIFY_SOCKET".into(), socket_path.display().to_string()));
    ext.restart().await;
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 within 10 s");
    assert_eq!(&buf[..n], b"READY=1");
    // It was sent after the listener was up: the API answers now.
    let (code, _) = request(ext.http, "GET", "/healthz", &[], b"").await;
    assert_eq!(code, 200);
    assert_eq!(ext.terminate().await, Some(0));
    let n = socket.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

/// /healthz is 200; /readyz follows the link (503 with the reason while it is cut); /metrics
/// counts what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints() {
    let prosody = Prosody::start().await;
    prosody.register(&["alice", "bob"]).await;
    let link = LinkProxy::start(prosody.component_port).await;
    let mut ext = Ext::start(link.port, DOMAIN, COMPONENT, SECRET).await;
    ext.wait_privileged(1).await;
    let http = ext.http;
    let get = move |path: &'static str| request(http, "GET", path, &[], b"");
    assert_eq!(get("/healthz").await, (200, "ok\n".into()));
    assert_eq!(get("/readyz").await.0, 200);

    let path = format!("/rest/user/alice@{DOMAIN}/status");
    ext.post_ok(&path, "application/json", r#"{"show": "away"}"#)
        .await;
    assert_eq!(
        ext.post(&path, "application/json", r#"{"show": "nope"}"#)
            .await
            .0,
        400
    );
    // The roster fetch for alice has gone out by the time the metrics are read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, text) = get("/metrics").await;
    assert_eq!(code, 200);
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("extpresence_held_statuses"), 1.0);
    assert_eq!(value("extpresence_updates_total{outcome=\"set\"}"), 1.0);
    assert_eq!(
        value("extpresence_updates_total{outcome=\"rejected\"}"),
        1.0
    );
    assert_eq!(value("extpresence_link_up"), 1.0);
    assert_eq!(value("extpresence_link_reconnects_total"), 0.0);
    assert_eq!(value("extpresence_roster_cache_misses_total"), 1.0);
    assert!(value("extpresence_stanzas_sent_total") >= 1.0);
    assert!(value("extpresence_stanzas_received_total") >= 2.0);
    assert_eq!(
        value("extpresence_http_request_duration_seconds_count{dialect=\"tigase\"}"),
        2.0
    );

    link.cut();
    ext.wait_log("XMPP component link failed").await;
    let (code, body) = get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("XMPP component link is down"), "{body}");
    link.restore();
    ext.wait_privileged(2).await;
    assert_eq!(get("/readyz").await.0, 200);
    let (_, text) = get("/metrics").await;
    assert!(
        text.lines()
            .any(|l| l == "extpresence_link_reconnects_total 1"),
        "{text}"
    );
}

/// `on_shutdown = "keep"`: SIGTERM sends no `unavailable`; the restarted daemon replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_keep() {
    let prosody = Prosody::start().await;
    prosody.register(&["alice", "bob"]).await;
    let mut alice = TestClient::connect(prosody.c2s_port, "alice", true).await;
    let mut bob = TestClient::connect(prosody.c2s_port, "bob", true).await;
    subscribe_mutual(&mut alice, &mut bob).await;
    alice.disconnect().await;
    let mut ext = Ext::start_with(prosody.component_port, DOMAIN, COMPONENT, SECRET, |c| {
        c.replace(
            "default_priority = -1",
            "default_priority = -1\non_shutdown = \"keep\"",
        )
    })
    .await;
    ext.wait_privileged(1).await;
    let path = format!("/rest/user/alice@{DOMAIN}/status");
    ext.post_ok(&path, "application/json", r#"{"status": "kept"}"#)
        .await;
    let from_alice = |p: &xmpp_parsers::presence::Presence| {
        p.from.as_ref().map(|j| j.to_string()) == Some(format!("alice@{DOMAIN}/tigase-external"))
    };
    bob.expect_presence(WAIT, |p| from_alice(p) && p.type_ == PresenceType::None)
        .await;
    assert_eq!(ext.terminate().await, Some(0));
    let seen = bob.presences_within(Duration::from_secs(2)).await;
    assert!(
        !seen
            .iter()
            .any(|p| from_alice(p) && p.type_ == PresenceType::Unavailable),
        "keep sent unavailable: {seen:?}"
    );
    ext.restart().await;
    let p = bob
        .expect_presence(WAIT, |p| from_alice(p) && p.type_ == PresenceType::None)
        .await;
    assert_eq!(p.statuses.values().next().map(String::as_str), Some("kept"));
}

/// `check-config`: 0 and a summary for a good file; 64 and a message naming the key for a bad
/// one; environment overrides apply (lists comma-separated) and unknown ones are refused.
#[test]
fn check_config_and_environment_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("extpresence.toml");
    std::fs::write(
        &path,
        r#"[xmpp]
component = "status.example.com"
secret = "s3cret-value"
domains = ["example.com"]
[http]
api_keys = ["key-value"]
[store]
path = "/tmp/unused.redb"
"#,
    )
    .unwrap();
    let run = |env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_extpresence"))
            .arg("check-config")
            .arg("--config")
            .arg(&path)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains("s3cret-value") && !text.contains("key-value"),
            "{text}"
        );
        (out.status.code(), text)
    };
    let (code, text) = run(&[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("is valid"), "{text}");

    let (code, text) = run(&[("EXTPRESENCE__XMPP__DOMAINS", "a.org,b.org")]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("\"a.org\"") && text.contains("\"b.org\""),
        "{text}"
    );
    assert!(!text.contains("example.com\""), "{text}");

    let (code, text) = run(&[("EXTPRESENCE__XMPP__COMPONENT", "alice@example.com")]);
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains("xmpp.component"), "{text}");

    let (code, text) = run(&[("EXTPRESENCE__HTTP__LISTEN_ADDR", "x")]);
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains("listen_addr"), "{text}");

    let (code, text) = run(&[("EXTPRESENCE__STATUS__DEFAULT_PRIORITY", "3")]);
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains("status.default_priority"), "{text}");
}

/// Nobody reads stderr any more (journald restarted, the parent that read it died): log lines
/// are lost, nothing else. The link still comes up (its "connected" line is written into the
/// broken pipe), requests are served, and SIGTERM still stops the daemon cleanly. (With
/// tracing-subscriber's defaults, a failed write was reported with `eprintln!`, which panicked
/// the logging task: the signal handler died and SIGTERM was ignored.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_stderr_is_survived() {
    let prosody = Prosody::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("extpresence.toml");
    std::fs::write(
        &config,
        format!(
            r#"[xmpp]
component = "{COMPONENT}"
server = "127.0.0.1:{}"
secret = "{SECRET}"
domains = ["{DOMAIN}"]
[http]
listen = "127.0.0.1:{port}"
api_keys = ["{}"]
[store]
path = "{}"
"#,
            prosody.component_port,
            common::ext::API_KEY,
            dir.path().join("statuses.redb").display()
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_extpresence"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Close the only read end of the stderr pipe.
    drop(child.stderr.take());
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let listening = tokio::net::TcpStream::connect(addr).await.is_ok();
        if listening && request(addr, "GET", "/readyz", &[], b"").await.0 == 200 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "extpresence exited with stderr closed"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz not 200 within {WAIT:?} with stderr closed (listening: {listening})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let path = format!("/rest/user/alice@{DOMAIN}/status");
    let (code, body) = request(
        addr,
        "POST",
        &path,
        &[
            ("Api-Key", common::ext::API_KEY),
            ("Content-Type", "application/json"),
        ],
        br#"{"show": "away", "status": "On the phone"}"#,
    )
    .await;
    assert_eq!(code, 200, "{body}");

    assert_eq!(common::ext::terminate_child(&mut child).await, Some(0));
}
