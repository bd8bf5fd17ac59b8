//! The webhook task against an in-process receiver: configuration, signing on the wire, order,
//! the outbox across a restart, retries, `max_age`, 410 Gone.

use std::sync::atomic::{AtomicU16, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use tokio::net::TcpListener;

use super::*;
use crate::base::clock::now_ms;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    id: u64,
    timestamp: u64,
    signature: String,
    content_type: String,
    body: String,
    /// What it answered.
    answered: u16,
}

/// A receiver answering `answer` (or, while `fail_first` > 0, 500 and counting down). While
/// `held` is write-locked, requests wait unanswered and unrecorded.
#[derive(Default)]
struct Receiver {
    seen: Mutex<Vec<Received>>,
    answer: AtomicU16,
    fail_first: AtomicU16,
    held: tokio::sync::RwLock<()>,
}

impl Receiver {
    fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }
}

async fn hook(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: String) -> StatusCode {
    drop(r.held.read().await);
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let answered = if r
        .fail_first
        .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
        .is_ok()
    {
        500
    } else {
        r.answer.load(Relaxed)
    };
    r.seen.lock().unwrap().push(Received {
        id: h("webhook-id").parse().unwrap(),
        timestamp: h("webhook-timestamp").parse().unwrap(),
        signature: h("webhook-signature"),
        content_type: h("content-type"),
        body,
        answered,
    });
    StatusCode::from_u16(answered).unwrap()
}

/// Start a receiver answering `answer`; its URL.
async fn receiver(answer: u16) -> (Arc<Receiver>, String) {
    let r = Arc::new(Receiver::default());
    r.answer.store(answer, Relaxed);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/hooks?token=t0ken",
        listener.local_addr().unwrap()
    );
    let app = axum::Router::new()
        .route("/hooks", axum::routing::post(hook))
        .with_state(r.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, url)
}

fn endpoint(name: &str, url: &str) -> WebhookSettings {
    WebhookSettings {
        name: name.into(),
        url: url.parse().unwrap(),
        key: SigningKey::parse(SECRET).unwrap(),
        legacy_name: None,
        filter: Filter::default(),
        max_age: Duration::from_secs(3600),
        max_backlog_bytes: DEFAULT_MAX_BACKLOG,
    }
}

fn event(id: u64, user: &str) -> Arc<Event> {
    event_at(id, user, now_ms())
}

fn event_at(id: u64, user: &str, at: u64) -> Arc<Event> {
    Arc::new(Event {
        id,
        user: BareJid::new(user).unwrap(),
        at,
        data: format!(r#"{{"user":"{user}","n":{id}}}"#).into(),
        sse_frame: Default::default(),
    })
}

/// A running webhook task.
struct Running {
    tx: mpsc::UnboundedSender<Arc<Event>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    metrics: WebhookMetrics,
}

async fn start_task(settings: Vec<WebhookSettings>, store: &Path) -> Running {
    let (tx, rx) = mpsc::unbounded_channel();
    let metrics = WebhookMetrics::default();
    let stop = CancellationToken::new();
    let task = start(settings, store, rx, &metrics, stop.clone())
        .await
        .unwrap();
    Running {
        tx,
        stop,
        task,
        metrics,
    }
}

impl Running {
    fn send(&self, e: Arc<Event>) {
        self.tx.send(e).unwrap();
    }

    /// Stop it as at shutdown; it must return promptly.
    async fn stop(self) -> WebhookMetrics {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the webhook task did not stop within 5 s")
            .unwrap();
        self.metrics
    }

    fn metric(&self, line_start: &str) -> u64 {
        metric(&self.metrics, line_start)
    }
}

fn metric(m: &WebhookMetrics, line_start: &str) -> u64 {
    let mut out = String::new();
    m.render(&mut out);
    out.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{line_start} not in\n{out}"))
}

/// Wait (at most `secs`) until `done`.
async fn until(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn delivered(r: &Receiver) -> Vec<u64> {
    r.seen()
        .iter()
        .filter(|s| (200..300).contains(&s.answered))
        .map(|s| s.id)
        .collect()
}

fn parse(text: &str) -> Result<Vec<WebhookSettings>, ConfigError> {
    #[derive(Deserialize)]
    struct File {
        webhooks: Vec<RawWebhook>,
    }
    let raw: File = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| ConfigError::Load(e.to_string()))?;
    let served = BTreeSet::from(["example.com".to_string(), "example.org".to_string()]);
    validate(raw.webhooks, &served)
}

#[test]
fn config_defaults_filters_and_masking() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let s = parse(&format!(
        r#"
        [[webhooks]]
        url = "https://user:hunter2@crm.example.net:8443/hooks?token=abc"
        secret_file = "{}"
        [[webhooks]]
        name = "pbx"
        url = "http://127.0.0.1:9000/"
        secret = "{SECRET}"
        users = ["Alice@Example.com"]
        domains = ["example.org"]
        max_age_secs = 60
        "#,
        secret_file.display()
    ))
    .unwrap();
    assert_eq!(s[0].name, "crm.example.net:8443/hooks");
    assert_eq!(s[0].legacy_name.as_deref(), Some("crm.example.net"));
    assert_eq!(s[0].max_age, Duration::from_secs(3600));
    assert_eq!(s[0].max_backlog_bytes, 64 << 20);
    assert_eq!(s[1].legacy_name, None);
    assert!(s[0]
        .filter
        .wants(&BareJid::new("anyone@example.com").unwrap()));
    assert_eq!(s[0].key, SigningKey::parse(SECRET).unwrap());
    assert_eq!(s[1].name, "pbx");
    assert_eq!(s[1].max_age, Duration::from_secs(60));
    let pbx = &s[1].filter;
    assert!(pbx.wants(&BareJid::new("alice@example.com").unwrap()));
    assert!(pbx.wants(&BareJid::new("bob@example.org").unwrap()));
    assert!(!pbx.wants(&BareJid::new("bob@example.com").unwrap()));
    let dbg = format!("{s:?}");
    for secret in ["hunter2", "abc", "MfKQ9r8", "whsec_"] {
        assert!(!dbg.contains(secret), "{secret} in {dbg}");
    }
    assert!(dbg.contains("crm.example.net:8443/hooks"), "{dbg}");
}

#[test]
fn config_errors_name_the_key() {
    let ok = format!("[[webhooks]]\nurl = \"https://a.example.net/\"\nsecret = \"{SECRET}\"\n");
    let cases = [
        (
            ok.replace("https://a.example.net/", "ftp://a.example.net/"),
            "webhooks.url",
        ),
        (
            ok.replace("https://a.example.net/", "not a url"),
            "webhooks.url",
        ),
        (
            ok.replace(SECRET, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "webhooks.secret",
        ),
        (
            ok.replace(&format!("secret = \"{SECRET}\""), ""),
            "webhooks.secret",
        ),
        (
            format!("{ok}secret_file = \"/nonexistent/x\"\n"),
            "webhooks.secret",
        ),
        (
            ok.replace("secret = ", "secret_file = \"/nonexistent/x\"\nsecretx = "),
            "cannot load",
        ),
        (format!("{ok}{ok}"), "webhooks.name"),
        (format!("{ok}name = \"a b\"\n"), "webhooks.name"),
        (format!("{ok}users = [\"example.com\"]\n"), "webhooks.users"),
        (
            format!("{ok}users = [\"bob@elsewhere.net\"]\n"),
            "webhooks.users",
        ),
        (
            format!("{ok}domains = [\"elsewhere.net\"]\n"),
            "webhooks.domains",
        ),
        (format!("{ok}max_age_secs = 0\n"), "webhooks.max_age_secs"),
        (
            format!("{ok}max_backlog_bytes = 100\n"),
            "webhooks.max_backlog_bytes",
        ),
    ];
    for (text, key) in cases {
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with(key), "expected {key}, got {e} for\n{text}");
        assert!(!e.contains("MfKQ9r8"), "the secret is in {e}");
    }
    // A second one with the same host needs its own name.
    let two = format!(
        "{ok}{}",
        ok.replace("[[webhooks]]\n", "[[webhooks]]\nname = \"b\"\n")
    );
    assert_eq!(parse(&two).unwrap().len(), 2);
}

/// Issue 19, defect 9: entries without `name` on one host are told apart by port and path;
/// the same URL twice without names is refused, naming both entries.
#[test]
fn default_names_are_unique() {
    let entry = |url: &str, extra: &str| {
        format!("[[webhooks]]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n{extra}")
    };
    let names = |text: String| -> Vec<String> {
        parse(&text)
            .unwrap_or_else(|e| panic!("{e} for\n{text}"))
            .into_iter()
            .map(|s| s.name)
            .collect()
    };
    assert_eq!(
        names(
            entry("http://127.0.0.1:8080/hooks/a", "")
                + &entry("http://127.0.0.1:8080/hooks/b", "")
                + &entry("http://127.0.0.1:9090/hooks/a", "")
                + &entry("https://crm.example.net/", "")
                + &entry("https://[::1]/x%20y?q=1", "")
        ),
        [
            "127.0.0.1:8080/hooks/a",
            "127.0.0.1:8080/hooks/b",
            "127.0.0.1:9090/hooks/a",
            "crm.example.net",
            "[::1]/x_20y",
        ]
    );
    // Alike but for the query (which is never shown): numbered; a name given is kept free.
    assert_eq!(
        names(
            entry("https://h.example.net/p?token=1", "")
                + &entry("https://h.example.net/p?token=2", "")
                + &entry(
                    "https://other.example.net/",
                    "name = \"h.example.net/p~2\"\n"
                )
        ),
        ["h.example.net/p", "h.example.net/p~3", "h.example.net/p~2"]
    );
    // A long path is cut to 64.
    let long = format!("https://h.example.net/{}", "a".repeat(100));
    let n = names(entry(&long, "") + &entry(&format!("{long}b"), ""));
    assert_eq!(n[0].len(), 64, "{n:?}");
    assert_eq!(n[1], format!("{}~2", &n[0][..62]));
    // The same URL twice, without names: refused, naming both.
    let e = parse(
        &(entry("https://a.example.net/x?secret=s3", "")
            + &entry("https://b.example.net/", "")
            + &entry("https://a.example.net/x?secret=s3", "")),
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("webhooks.name"), "{e}");
    assert!(e.contains("#1 and #3"), "{e}");
    assert!(e.contains("https://a.example.net/x"), "{e}");
    assert!(!e.contains("s3"), "the query is in {e}");
}

#[test]
fn outbox_beside_the_store() {
    assert_eq!(
        outbox_path(Path::new("/var/lib/extpresence/statuses.redb")),
        Path::new("/var/lib/extpresence/statuses.redb.webhooks")
    );
}

/// Every event, to every endpoint whose filter passes it, in order, signed as the spec says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_signed_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (all, all_url) = receiver(204).await;
    let (bobs, bobs_url) = receiver(200).await;
    let mut bob_only = endpoint("bob", &bobs_url);
    bob_only
        .filter
        .users
        .insert(BareJid::new("bob@example.com").unwrap());
    let w = start_task(
        vec![endpoint("all", &all_url), bob_only],
        &dir.path().join("s.redb"),
    )
    .await;
    let before = now_ms() / 1000;
    for id in 1..=30 {
        let user = if id % 3 == 0 {
            "bob@example.com"
        } else {
            "alice@example.com"
        };
        w.send(event(id, user));
    }
    until(10, "30 deliveries", || delivered(&all).len() == 30).await;
    until(10, "10 deliveries to bob's endpoint", || {
        delivered(&bobs).len() == 10
    })
    .await;
    assert_eq!(delivered(&all), (1..=30).collect::<Vec<_>>());
    assert_eq!(
        delivered(&bobs),
        (1..=10).map(|n| n * 3).collect::<Vec<_>>()
    );
    let key = SigningKey::parse(SECRET).unwrap();
    for r in all.seen() {
        assert_eq!(r.content_type, "application/json");
        assert!(
            r.timestamp >= before && r.timestamp <= now_ms() / 1000 + 1,
            "{r:?}"
        );
        assert_eq!(
            r.signature,
            key.sign(&r.id.to_string(), r.timestamp, &r.body),
            "{r:?}"
        );
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["type"], "presence");
        assert_eq!(v["data"]["n"], r.id);
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'), "{v}");
    }
    until(5, "pending 0", || {
        w.metric("extpresence_webhook_pending{endpoint=\"all\"}") == 0
    })
    .await;
    assert_eq!(
        w.metric("extpresence_webhook_deliveries_total{endpoint=\"all\",outcome=\"ok\"}"),
        30
    );
    assert_eq!(
        w.metric("extpresence_webhook_deliveries_total{endpoint=\"bob\",outcome=\"ok\"}"),
        10
    );
    assert_eq!(
        w.metric("extpresence_webhook_deliveries_total{endpoint=\"all\",outcome=\"retry\"}"),
        0
    );
    w.stop().await;
}

/// The receiver fails; the task is stopped (as at shutdown) and started again: every event
/// arrives, in order, the pending ones first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_events_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s.redb");
    let (r, url) = receiver(500).await;
    let w = start_task(vec![endpoint("r", &url)], &store).await;
    for id in 1..=3 {
        w.send(event(id, "alice@example.com"));
    }
    until(5, "a failed attempt", || !r.seen().is_empty()).await;
    // Sent after the first failure: waiting behind the head, also on disk.
    w.send(event(4, "bob@example.com"));
    let m = w.stop().await;
    assert_eq!(metric(&m, "extpresence_webhook_pending{endpoint=\"r\"}"), 4);
    assert!(
        metric(
            &m,
            "extpresence_webhook_deliveries_total{endpoint=\"r\",outcome=\"retry\"}"
        ) >= 1
    );
    assert!(delivered(&r).is_empty());

    // The receiver is back, but holds its answers until the count from the outbox is read: the
    // senders start with the task, and a delivery would lower the gauge under the assertion.
    r.answer.store(200, Relaxed);
    let held = r.held.write().await;
    let w = start_task(vec![endpoint("r", &url)], &store).await;
    assert_eq!(w.metric("extpresence_webhook_pending{endpoint=\"r\"}"), 4);
    assert!(delivered(&r).is_empty());
    drop(held);
    w.send(event(5, "alice@example.com"));
    until(5, "5 deliveries", || delivered(&r).len() == 5).await;
    assert_eq!(delivered(&r), vec![1, 2, 3, 4, 5]);
    until(5, "pending 0", || {
        w.metric("extpresence_webhook_pending{endpoint=\"r\"}") == 0
    })
    .await;
    w.stop().await;
    // Nothing is left for a third start.
    let w = start_task(vec![endpoint("r", &url)], &store).await;
    assert_eq!(w.metric("extpresence_webhook_pending{endpoint=\"r\"}"), 0);
    w.stop().await;
}

/// Failed attempts are retried after 1 s, then 2 s; the event then arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let (r, url) = receiver(200).await;
    r.fail_first.store(2, Relaxed);
    let w = start_task(vec![endpoint("r", &url)], &dir.path().join("s.redb")).await;
    let t0 = Instant::now();
    w.send(event(1, "alice@example.com"));
    until(10, "the delivery", || delivered(&r) == vec![1]).await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
        "backoff 1 s + 2 s, took {took:?}"
    );
    assert_eq!(r.seen().len(), 3);
    assert_eq!(
        w.metric("extpresence_webhook_deliveries_total{endpoint=\"r\",outcome=\"retry\"}"),
        2
    );
    w.stop().await;
}

/// An event older than max_age is dropped without a request; younger ones still go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_old_events_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (r, url) = receiver(500).await;
    let mut e = endpoint("r", &url);
    e.max_age = Duration::from_secs(2);
    let w = start_task(vec![e], &dir.path().join("s.redb")).await;
    w.send(event_at(1, "alice@example.com", now_ms() - 3000));
    w.send(event(2, "alice@example.com"));
    // 2 fails until it is 2 s old, then is dropped too; 3 arrives once the receiver is back.
    until(10, "both dropped", || {
        w.metric("extpresence_webhook_deliveries_total{endpoint=\"r\",outcome=\"dropped\"}") == 2
    })
    .await;
    assert!(
        r.seen().iter().all(|s| s.id == 2),
        "1 was sent: {:?}",
        r.seen()
    );
    assert!(!r.seen().is_empty());
    r.answer.store(200, Relaxed);
    w.send(event(3, "alice@example.com"));
    until(10, "3 delivered", || delivered(&r) == vec![3]).await;
    // The receiver records a request before it answers; the sender counts the event delivered
    // once the answer is in.
    until(5, "pending 0", || {
        w.metric("extpresence_webhook_pending{endpoint=\"r\"}") == 0
    })
    .await;
    w.stop().await;
}

/// 410 Gone: the endpoint is disabled, its outbox cleared, and nothing more is sent to it; the
/// other endpoint goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (gone, gone_url) = receiver(410).await;
    let (ok, ok_url) = receiver(200).await;
    let w = start_task(
        vec![endpoint("gone", &gone_url), endpoint("ok", &ok_url)],
        &dir.path().join("s.redb"),
    )
    .await;
    w.send(event(1, "alice@example.com"));
    w.send(event(2, "alice@example.com"));
    until(5, "disabled", || {
        w.metric("extpresence_webhook_disabled{endpoint=\"gone\"}") == 1
    })
    .await;
    for id in 3..=5 {
        w.send(event(id, "alice@example.com"));
    }
    until(5, "the other endpoint's deliveries", || {
        delivered(&ok).len() == 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gone.seen().len(), 1, "{:?}", gone.seen());
    until(5, "all 5 dropped", || {
        w.metric("extpresence_webhook_deliveries_total{endpoint=\"gone\",outcome=\"dropped\"}") == 5
    })
    .await;
    assert_eq!(
        w.metric("extpresence_webhook_pending{endpoint=\"gone\"}"),
        0
    );
    w.stop().await;
}
