//! Tier: several real things (Prosody, XMPP clients, the standardwebhooks library, a tmpfs).
//!
//! Webhooks against a real Prosody, every request verified by the Standard Webhooks reference
//! library (tests/python/webhook_receiver.py, `standardwebhooks` from PyPI in `target/venv`):
//! every event arrives; a receiver failing for 20 s while extpresence is restarted (SIGTERM)
//! gets every event afterwards, in order, none lost; a 410 stops the deliveries. The README's
//! `[[webhooks]]` example is the configuration, and its Python receiver is run as written.
//! Issue 19: the backlog bound (drop the oldest, counted), two unnamed entries on one host,
//! events routed at a clean stop, and a full disk under the outbox (a real tmpfs: needs root).
//!
//! Events are made with `/v1` status updates (one event per update).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::ext::{request, Ext, API_KEY};
use common::server::{Kind, Server};
use common::tmpfs::Tmpfs;
use common::{free_port, COMPONENT, DOMAIN, SECRET};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

/// A test secret: whsec_ + base64 of 32 bytes.
const WEBHOOK_SECRET: &str = "whsec_dGVzdC1zZWNyZXQtb2YtMzItYnl0ZXMtZm9yLWhvb2s=";
const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/venv/bin/python");

fn python() -> &'static str {
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: run scripts/install-deps.sh (the test command does)"
    );
    PYTHON
}

/// tests/python/webhook_receiver.py as a child process.
struct Receiver {
    _child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Receiver {
    async fn start() -> Receiver {
        Receiver::start_at(0).await
    }

    /// Listening on `port` (0: a free one).
    async fn start_at(port: u16) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), WEBHOOK_SECRET).unwrap();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/webhook_receiver.py"
        );
        let mut child = tokio::process::Command::new(python())
            .arg(script)
            .arg(dir.path())
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run webhook_receiver.py");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the receiver did not start")
            .unwrap()
            .expect("the receiver exited");
        let port = first
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("receiver said {first:?}"));
        Receiver {
            _child: child,
            dir,
            port,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hooks/presence", self.port)
    }

    fn secret_file(&self) -> PathBuf {
        self.dir.path().join("secret")
    }

    /// Every request so far: {"id", "answer", "verified", "error", "payload"}.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("requests.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Answer `code` to every request from now on (`None`: answer normally).
    fn answer(&self, code: Option<u16>) {
        let path = self.dir.path().join("answer");
        match code {
            Some(code) => {
                let tmp = self.dir.path().join("answer.tmp");
                std::fs::write(&tmp, code.to_string()).unwrap();
                std::fs::rename(tmp, path).unwrap();
            }
            None => std::fs::remove_file(path).unwrap(),
        }
    }

    /// The ids delivered (answered 204), in the order of their first delivery.
    fn delivered(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = Vec::new();
        for r in self.requests() {
            let id = id_of(&r);
            if r["answer"] == 204 && !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }
}

fn id_of(r: &Value) -> u64 {
    r["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no webhook-id: {r}"))
}

/// The README's `[[webhooks]]` example, pointed at `url` and `secret_file`.
fn readme_webhook(url: &str, secret_file: &Path) -> String {
    let block = common::readme_code("\n## Webhooks", "toml", 1);
    let block = block.as_str();
    assert!(block.contains("[[webhooks]]"), "{block}");
    block
        .replace("https://crm.example.com/hooks/presence", url)
        .replace(
            "/etc/extpresence/webhook-crm",
            &secret_file.display().to_string(),
        )
        .replace("example.com", DOMAIN)
}

async fn start_ext(server: &Server, webhook: String) -> Ext {
    let mut ext = Ext::start_with(server.component_port(), DOMAIN, COMPONENT, SECRET, |c| {
        format!("{c}\n{webhook}")
    })
    .await;
    ext.wait_privileged(1).await;
    ext
}

async fn prosody() -> Server {
    let server = Server::start(Kind::Prosody).await;
    server.register(&["alice", "bob"]).await;
    server
}

/// `PUT /v1/users/{user}@DOMAIN/status` away with `status`; must be 200.
async fn put(ext: &Ext, user: &str, status: &str) {
    let body = json!({"presence": "away", "status": status}).to_string();
    let (code, answer) = request(
        ext.http,
        "PUT",
        &format!("/v1/users/{user}@{DOMAIN}/status"),
        &[("Api-Key", API_KEY), ("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(code, 200, "PUT {user}: {answer}");
}

/// A `/metrics` sample (`name` with its labels), or `None` when absent.
async fn metric(ext: &Ext, name: &str) -> Option<f64> {
    let (code, text) = request(ext.http, "GET", "/metrics", &[], b"").await;
    assert_eq!(code, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Wait (at most 5 s) until the `/metrics` sample `name` is `value`.
async fn metric_becomes(ext: &Ext, name: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = metric(ext, name).await;
        if now == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {now:?}, never {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn until(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every request carried a valid signature; the verified payloads are presence events.
fn all_verified(r: &Receiver) {
    for req in r.requests() {
        assert_eq!(req["verified"], true, "not verified: {req}");
        assert_eq!(req["payload"]["type"], "presence", "{req}");
    }
}

/// (a) every event arrives, verified; (b) the receiver answers 500 for 20 s, meanwhile
/// extpresence is stopped with SIGTERM and started again: afterwards every event arrives, in
/// order, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_through_an_outage_and_a_restart() {
    let server = prosody().await;
    let r = Receiver::start().await;
    let mut ext = start_ext(&server, readme_webhook(&r.url(), &r.secret_file())).await;
    let mut last = std::collections::HashMap::new();
    let mut n = 0;
    let mut update = |user: &'static str| {
        n += 1;
        let status = format!("{user} {n}");
        last.insert(user, status.clone());
        status
    };

    // (a)
    for user in ["alice", "bob", "alice", "bob", "alice", "bob"] {
        put(&ext, user, &update(user)).await;
    }
    until(15, "6 deliveries", || r.delivered().len() == 6).await;
    all_verified(&r);

    // (b) The receiver fails; events are queued behind the failing head.
    let failing_since = Instant::now();
    r.answer(Some(500));
    for user in ["alice", "bob", "alice", "bob", "alice", "bob"] {
        put(&ext, user, &update(user)).await;
    }
    until(15, "a failed attempt", || {
        r.requests().iter().any(|q| q["answer"] == 500)
    })
    .await;
    // All 6 wait in the outbox (the last ones reach it a moment after their PUT).
    metric_becomes(&ext, "extpresence_webhook_pending{endpoint=\"crm\"}", 6.0).await;
    let first_life = metric(&ext, "extpresence_events_total").await.unwrap();
    assert_eq!(ext.terminate().await, Some(0), "{}", ext.log());
    assert!(
        ext.log().contains("webhook events kept in the outbox"),
        "{}",
        ext.log()
    );

    ext.restart().await;
    ext.wait_privileged(1).await;
    ext.wait_log("webhook events pending from before the restart")
        .await;
    for user in ["alice", "bob", "alice", "bob"] {
        put(&ext, user, &update(user)).await;
    }
    let outage = Duration::from_secs(20);
    tokio::time::sleep(outage.saturating_sub(failing_since.elapsed())).await;
    assert!(
        r.delivered().len() == 6,
        "delivered while failing: {:?}",
        r.requests()
    );
    r.answer(None);

    // Backoff reaches 16 s during the outage: the next attempt comes within that, then the rest.
    until(60, "16 deliveries", || r.delivered().len() >= 16).await;
    let second_life = metric(&ext, "extpresence_events_total").await.unwrap();
    let delivered = r.delivered();
    assert_eq!(
        delivered.len() as f64,
        first_life + second_life,
        "every published event once: {delivered:?}"
    );
    assert_eq!(delivered.len(), 16, "one event per update");
    assert!(
        delivered.windows(2).all(|w| w[0] < w[1]),
        "not in event order: {delivered:?}"
    );
    all_verified(&r);
    // Each user's last event shows the last update.
    for (user, status) in &last {
        let jid = format!("{user}@{DOMAIN}");
        let last_event = r
            .requests()
            .into_iter()
            .rfind(|q| q["answer"] == 204 && q["payload"]["data"]["user"] == jid.as_str())
            .unwrap_or_else(|| panic!("no event for {jid}"));
        assert_eq!(
            last_event["payload"]["data"]["status"],
            status.as_str(),
            "{last_event}"
        );
    }
    let retries = metric(
        &ext,
        "extpresence_webhook_deliveries_total{endpoint=\"crm\",outcome=\"retry\"}",
    )
    .await
    .unwrap();
    assert!(retries >= 1.0, "{retries}");
    metric_becomes(&ext, "extpresence_webhook_pending{endpoint=\"crm\"}", 0.0).await;
    assert_eq!(ext.terminate().await, Some(0));
}

/// (c) A 410 Gone disables the endpoint: an ERROR line names it, and nothing more is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_stops_the_deliveries() {
    let server = prosody().await;
    let r = Receiver::start().await;
    let mut ext = start_ext(&server, readme_webhook(&r.url(), &r.secret_file())).await;
    put(&ext, "alice", "before").await;
    until(15, "the first delivery", || r.delivered().len() == 1).await;
    r.answer(Some(410));
    put(&ext, "alice", "gone").await;
    until(15, "the request answered 410", || r.requests().len() == 2).await;
    ext.wait_log("answered 410 Gone").await;
    let line = ext
        .log()
        .lines()
        .find(|l| l.contains("answered 410 Gone"))
        .unwrap()
        .to_string();
    assert!(line.contains("ERROR") && line.contains("crm"), "{line}");
    r.answer(None);
    for n in 0..3 {
        put(&ext, "bob", &format!("after {n}")).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        r.requests().len(),
        2,
        "sent after the 410: {:?}",
        r.requests()
    );
    all_verified(&r);
    assert_eq!(
        metric(&ext, "extpresence_webhook_disabled{endpoint=\"crm\"}").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&ext, "extpresence_webhook_pending{endpoint=\"crm\"}").await,
        Some(0.0)
    );
    assert_eq!(
        metric(
            &ext,
            "extpresence_webhook_deliveries_total{endpoint=\"crm\",outcome=\"dropped\"}"
        )
        .await,
        Some(4.0)
    );
    assert_eq!(ext.terminate().await, Some(0));
}

/// The README's Python receiver, run as written (secret file and port substituted), verifies
/// what extpresence sends and prints the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_receiver_verifies_the_events() {
    let server = prosody().await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook-secret");
    std::fs::write(&secret_file, format!("{WEBHOOK_SECRET}\n")).unwrap();
    let port = free_port();
    let script = common::readme_code("\n## Webhooks", "python", 1)
        .replace(
            "/etc/receiver/webhook-secret",
            &secret_file.display().to_string(),
        )
        .replace("8000", &port.to_string());
    let mut child = tokio::process::Command::new(python())
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the README receiver");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = format!("http://127.0.0.1:{port}/hooks");
    let webhook = format!(
        "[[webhooks]]\nurl = \"{url}\"\nsecret_file = \"{}\"\n",
        secret_file.display()
    );
    let mut ext = start_ext(&server, webhook).await;
    put(&ext, "alice", "In the README").await;
    // Until the receiver listens, deliveries fail and are retried.
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the README receiver printed nothing")
        .unwrap()
        .expect("the README receiver exited");
    let (id, data) = line.split_once(' ').expect("id and data");
    assert!(id.parse::<u64>().is_ok(), "{line}");
    let data: Value = serde_json::from_str(data).unwrap();
    assert_eq!(data["user"], format!("alice@{DOMAIN}"), "{data}");
    assert_eq!(data["status"], "In the README", "{data}");
    assert_eq!(data["cause"], "status", "{data}");
    // Named after the URL's host, port and path when no name is given.
    metric_becomes(
        &ext,
        &format!(
            "extpresence_webhook_deliveries_total{{endpoint=\"127.0.0.1:{port}/hooks\",outcome=\"ok\"}}"
        ),
        1.0,
    )
    .await;
    assert_eq!(ext.terminate().await, Some(0));
}

/// `user` holds `n` more resources with 1,000-character statuses at a low priority: each of
/// their events carries them all (about n KB).
async fn large_events(ext: &Ext, user: &str, n: usize) {
    let long = "x".repeat(1000);
    let updates: Vec<Value> = (0..n)
        .map(|i| {
            json!({"user": format!("{user}@{DOMAIN}"), "resource": format!("big{i}"),
                   "presence": "xa", "status": long, "priority": -100})
        })
        .collect();
    common::bulk(ext, &updates).await;
}

/// A `[[webhooks]]` entry to `url` (no name unless `name`), with `extra` lines.
fn webhook(name: Option<&str>, url: &str, r: &Receiver, extra: &str) -> String {
    let name = name
        .map(|n| format!("name = \"{n}\"\n"))
        .unwrap_or_default();
    format!(
        "[[webhooks]]\n{name}url = \"{url}\"\nsecret_file = \"{}\"\n{extra}",
        r.secret_file().display()
    )
}

/// Wait (at most `secs`) until the `/metrics` sample `name` passes `ok`; its value.
async fn metric_until(ext: &Ext, secs: u64, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let now = metric(ext, name).await;
        if let Some(v) = now.filter(|v| ok(*v)) {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} is {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 19, defect 5: an endpoint's backlog keeps at most `max_backlog_bytes`: beyond it the
/// oldest events are dropped, counted (`reason="backlog"`) and logged (one ERROR line per
/// 10 s); once the endpoint answers again it gets the newest ones, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_bound_drops_the_oldest() {
    let server = prosody().await;
    let r = Receiver::start().await;
    r.answer(Some(500));
    let bound = 64 * 1024;
    let hook = webhook(
        Some("crm"),
        &r.url(),
        &r,
        &format!("max_backlog_bytes = {bound}\n"),
    );
    let mut ext = start_ext(&server, hook).await;
    // 20 events of 1 to 20 KB, then 10 of about 21 KB: about 430 KB for a 64 KiB bound.
    large_events(&ext, "alice", 20).await;
    for i in 0..10 {
        put(&ext, "alice", &format!("update {i}")).await;
    }
    // One event per update.
    let events = metric_until(&ext, 10, "extpresence_events_total", |n| n == 30.0).await;
    let backlog = "extpresence_webhook_dropped_total{endpoint=\"crm\",reason=\"backlog\"}";
    let ok = "extpresence_webhook_deliveries_total{endpoint=\"crm\",outcome=\"ok\"}";
    let pending = "extpresence_webhook_pending{endpoint=\"crm\"}";
    // Every event is in the outbox or dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (kept, dropped) = loop {
        let kept = metric(&ext, pending).await.unwrap();
        let dropped = metric(&ext, backlog).await.unwrap();
        if kept + dropped == events {
            break (kept, dropped);
        }
        assert!(
            Instant::now() < deadline,
            "{kept} pending, {dropped} dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(dropped >= 20.0, "{dropped}");
    // Usually 1 to 3 events of about 21 KB; what the bound holds is checked in bytes below.
    assert!(kept >= 1.0, "{kept} events kept");
    let bytes = metric(&ext, "extpresence_webhook_backlog_bytes{endpoint=\"crm\"}")
        .await
        .unwrap();
    assert!(bytes > 0.0 && bytes <= bound as f64, "{bytes}");
    let log = ext.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("webhook events dropped"))
        .collect();
    assert_eq!(errors.len(), 1, "one line per 10 s: {errors:?}");
    assert!(
        errors[0].contains("ERROR") && errors[0].contains("crm"),
        "{errors:?}"
    );
    let failed: Vec<u64> = r.requests().iter().map(id_of).collect();
    assert!(!failed.is_empty());

    r.answer(None);
    metric_until(&ext, 40, pending, |p| p == 0.0).await;
    let delivered = r.delivered();
    assert_eq!(delivered.len() as f64, kept, "{delivered:?}");
    assert_eq!(metric(&ext, ok).await, Some(kept));
    // The newest were kept: the last update arrived, and nothing older than what was dropped.
    let last = r
        .requests()
        .into_iter()
        .rfind(|q| q["answer"] == 204)
        .unwrap();
    assert_eq!(last["payload"]["data"]["status"], "update 9", "{last}");
    // An event attempted while the endpoint failed is either delivered later (it was among the
    // newest, within the bound) or dropped; every dropped one is older than every delivered one.
    let oldest_kept = delivered.iter().min().unwrap();
    assert!(
        failed
            .iter()
            .filter(|f| !delivered.contains(f))
            .all(|f| f < oldest_kept),
        "a dropped event is newer than a delivered one: {failed:?} {delivered:?}"
    );
    assert!(
        delivered.windows(2).all(|w| w[0] < w[1]),
        "not in event order: {delivered:?}"
    );
    for reason in ["age", "disk", "disabled"] {
        assert_eq!(
            metric(
                &ext,
                &format!(
                    "extpresence_webhook_dropped_total{{endpoint=\"crm\",reason=\"{reason}\"}}"
                )
            )
            .await,
            Some(0.0),
            "{reason}"
        );
    }
    all_verified(&r);
    assert_eq!(ext.terminate().await, Some(0));
}

/// Issue 19, defect 9: two `[[webhooks]]` without `name` on one host, different paths, are
/// accepted, named after host, port and path, and both receive every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_paths_on_one_host_both_receive() {
    let server = prosody().await;
    let r = Receiver::start().await;
    let a = format!("http://127.0.0.1:{}/hooks/a", r.port);
    let b = format!("http://127.0.0.1:{}/hooks/b", r.port);
    let hooks = webhook(None, &a, &r, "") + &webhook(None, &b, &r, "");
    let mut ext = start_ext(&server, hooks).await;
    for n in 0..3 {
        put(&ext, "alice", &format!("both {n}")).await;
    }
    until(15, "6 deliveries", || {
        r.requests().iter().filter(|q| q["answer"] == 204).count() == 6
    })
    .await;
    all_verified(&r);
    for path in ["/hooks/a", "/hooks/b"] {
        let ids: Vec<u64> = r
            .requests()
            .iter()
            .filter(|q| q["path"] == path && q["answer"] == 204)
            .map(id_of)
            .collect();
        assert_eq!(ids, r.delivered(), "{path}");
        metric_becomes(
            &ext,
            &format!(
                "extpresence_webhook_deliveries_total{{endpoint=\"127.0.0.1:{}{path}\",outcome=\"ok\"}}",
                r.port
            ),
            3.0,
        )
        .await;
    }
    assert_eq!(ext.terminate().await, Some(0));
}

/// Issue 19, defect 5: events routed while the endpoint is down (nothing listens) are all
/// delivered after a clean stop (SIGTERM right after the last update, while they are still
/// being routed) and a start with the endpoint up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_at_a_clean_stop_are_delivered_after_the_restart() {
    let server = prosody().await;
    let port = free_port();
    let secret_dir = tempfile::tempdir().unwrap();
    std::fs::write(secret_dir.path().join("secret"), WEBHOOK_SECRET).unwrap();
    let hook = format!(
        "[[webhooks]]\nname = \"down\"\nurl = \"http://127.0.0.1:{port}/hooks\"\nsecret_file = \"{}\"\n",
        secret_dir.path().join("secret").display()
    );
    let mut ext = start_ext(&server, hook).await;
    // Large events, many at once: a bulk of 200 updates of alice's status.
    large_events(&ext, "alice", 30).await;
    let updates: Vec<Value> = (0..200)
        .map(|i| json!({"user": format!("alice@{DOMAIN}"), "presence": "away", "status": format!("queued {i}")}))
        .collect();
    common::bulk(&ext, &updates).await;
    // One event per update (some are still being routed now).
    let events = 230.0;
    assert_eq!(ext.terminate().await, Some(0), "{}", ext.log());
    assert!(
        !ext.log().contains("did not finish"),
        "the drain was cut: {}",
        ext.log()
    );

    let r = Receiver::start_at(port).await;
    ext.restart().await;
    ext.wait_privileged(1).await;
    let pending = "extpresence_webhook_pending{endpoint=\"down\"}";
    metric_until(&ext, 60, pending, |p| p == 0.0).await;
    let delivered = r.delivered();
    assert_eq!(
        delivered.len() as f64,
        events,
        "every event of the first run"
    );
    let last = r
        .requests()
        .into_iter()
        .rfind(|q| q["answer"] == 204)
        .unwrap();
    assert_eq!(last["payload"]["data"]["status"], "queued 199", "{last}");
    assert_eq!(
        metric(
            &ext,
            "extpresence_webhook_deliveries_total{endpoint=\"down\",outcome=\"dropped\"}"
        )
        .await,
        Some(0.0)
    );
    all_verified(&r);
    assert_eq!(ext.terminate().await, Some(0));
}

/// Update alice's status (her events carry her large statuses) until the outbox cannot commit.
async fn fill_until_failing(ext: &Ext, status: &str) {
    for i in 0..300 {
        put(ext, "alice", &format!("{status} {i}")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if metric(ext, "extpresence_webhook_outbox_ok").await == Some(0.0) {
            return;
        }
    }
    panic!("the outbox still commits on a full disk");
}

/// `GET /readyz`: its status and text.
async fn readyz(ext: &Ext) -> (u16, String) {
    request(ext.http, "GET", "/readyz", &[], b"").await
}

/// Issue 19, defect 5: on a full disk the outbox's commits fail: `/readyz` says so (503) and
/// `/metrics` too, the events wait in memory only up to the bound (the oldest beyond it dropped,
/// `reason="disk"`), and once there is room again the outbox commits and delivers. At a clean
/// stop on a full disk what cannot be written is logged, and the stop is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_reported_and_memory_stays_bounded() {
    let server = prosody().await;
    let r = Receiver::start().await;
    r.answer(Some(500));
    let disk = Tmpfs::mount("4m");
    // The status store on the ordinary disk; its webhook outbox on the tmpfs.
    let state = tempfile::tempdir().unwrap();
    let store = state.path().join("statuses.redb");
    std::os::unix::fs::symlink(
        disk.path().join("outbox"),
        state.path().join("statuses.redb.webhooks"),
    )
    .unwrap();
    let bound = 1 << 20;
    let hook = webhook(
        Some("crm"),
        &r.url(),
        &r,
        &format!("max_backlog_bytes = {bound}\n"),
    );
    let mut ext = Ext::start_with(server.component_port(), DOMAIN, COMPONENT, SECRET, |c| {
        let c: Vec<String> = c
            .lines()
            .map(|l| {
                if l.starts_with("path = ") {
                    format!("path = \"{}\"", store.display())
                } else {
                    l.to_string()
                }
            })
            .collect();
        format!("{}\n{hook}", c.join("\n"))
    })
    .await;
    ext.wait_privileged(1).await;
    assert!(
        disk.path().join("outbox").exists(),
        "the outbox is on the tmpfs"
    );
    assert_eq!(readyz(&ext).await.0, 200);
    disk.fill();

    // Events of about 30 KB until a commit fails.
    large_events(&ext, "alice", 30).await;
    fill_until_failing(&ext, "until full").await;
    // 70 more (2 MB) wait in memory for a 1 MiB bound: the oldest of them go.
    let updates: Vec<Value> = (0..70)
        .map(|i| json!({"user": format!("alice@{DOMAIN}"), "presence": "away", "status": format!("full {i}")}))
        .collect();
    common::bulk(&ext, &updates).await;
    let (code, text) = readyz(&ext).await;
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("webhook outbox cannot commit"), "{text}");
    let disk_drops = "extpresence_webhook_dropped_total{endpoint=\"crm\",reason=\"disk\"}";
    metric_until(&ext, 10, disk_drops, |d| d > 0.0).await;
    let queued = metric(&ext, "extpresence_webhook_queued_bytes{endpoint=\"crm\"}")
        .await
        .unwrap();
    assert!(queued <= bound as f64, "{queued} bytes in memory");
    assert!(
        metric(&ext, "extpresence_webhook_outbox_failed_commits_total")
            .await
            .unwrap()
            >= 1.0
    );
    assert!(ext.log().contains("the webhook outbox cannot commit"));

    // Room again: the outbox commits, is ready, and delivers the newest events.
    disk.free();
    metric_until(&ext, 10, "extpresence_webhook_outbox_ok", |v| v == 1.0).await;
    assert_eq!(readyz(&ext).await.0, 200);
    metric_until(
        &ext,
        10,
        "extpresence_webhook_queued_bytes{endpoint=\"crm\"}",
        |v| v == 0.0,
    )
    .await;
    r.answer(None);
    let pending = "extpresence_webhook_pending{endpoint=\"crm\"}";
    metric_until(&ext, 60, pending, |p| p == 0.0).await;
    let last = r
        .requests()
        .into_iter()
        .rfind(|q| q["answer"] == 204)
        .unwrap();
    assert_eq!(last["payload"]["data"]["status"], "full 69", "{last}");
    let ok = metric(
        &ext,
        "extpresence_webhook_deliveries_total{endpoint=\"crm\",outcome=\"ok\"}",
    )
    .await
    .unwrap();
    let dropped = metric(
        &ext,
        "extpresence_webhook_deliveries_total{endpoint=\"crm\",outcome=\"dropped\"}",
    )
    .await
    .unwrap();
    let events = metric(&ext, "extpresence_events_total").await.unwrap();
    assert_eq!(ok + dropped, events, "every event delivered or counted");

    // A clean stop with the disk full again and events waiting in memory: logged, not held up.
    r.answer(Some(500));
    disk.fill();
    fill_until_failing(&ext, "at the stop").await;
    let stopping = Instant::now();
    assert_eq!(ext.terminate().await, Some(0));
    assert!(stopping.elapsed() < Duration::from_secs(10));
    let log = ext.log();
    assert!(
        log.contains("at shutdown the webhook outbox still cannot commit"),
        "{log}"
    );
    assert!(!log.contains("did not finish"), "{log}");
}
