//! Tier: one real server (Prosody, with real XMPP clients).
//!
//! Readiness that means delivery, and diagnostics that name the cause (issue 21): each mistake an
//! admin made in a real try is made here against a real Prosody, and the test checks what the
//! admin is told: the log line with its hint, `/readyz` (503 naming the failing condition and its
//! fix), the metrics, and every write's answer saying that delivery is pending. The server's
//! config mistakes live in tests/misconfig.rs; these are the link's and the privileges'.

mod common;

use std::time::Duration;

use common::ext::{request, Ext, API_KEY};
use common::{Prosody, TestClient, COMPONENT, DOMAIN, SECRET};
use serde_json::Value;
use xmpp_parsers::presence::Show;

const WAIT: Duration = Duration::from_secs(30);

/// `GET /readyz`: (status, text).
async fn readyz(ext: &Ext) -> (u16, String) {
    request(ext.http, "GET", "/readyz", &[], b"").await
}

/// `GET /readyz` as JSON: (status, report).
async fn readyz_json(ext: &Ext) -> (u16, Value) {
    let (code, body) = request(
        ext.http,
        "GET",
        "/readyz",
        &[("Accept", "application/json")],
        b"",
    )
    .await;
    (
        code,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")),
    )
}

/// The value of the series `name` (with its labels) in `/metrics`, if present.
async fn metric(ext: &Ext, name: &str) -> Option<f64> {
    let (_, text) = request(ext.http, "GET", "/metrics", &[], b"").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.parse().unwrap())
}

/// Wait (bounded) until `/readyz` answers `code`; returns its text.
async fn readyz_until(ext: &Ext, code: u16) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (c, text) = readyz(ext).await;
        if c == code {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never answered {code} within {WAIT:?}; last: {c} {text}\nlog:\n{}",
            ext.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The generated config without the VirtualHost's `privileged_entities` table.
fn without_privileged_entities(c: String) -> String {
    let start = c
        .find("    privileged_entities")
        .expect("snippet has privileged_entities");
    let end = start + c[start..].find("    }\n").expect("end of the table") + 6;
    format!("{}{}", &c[..start], &c[end..])
}

/// The worst finding of the admin's try: Prosody without XEP-0356 privileges. `/readyz` is 503
/// naming the domain and the fix, every dialect's success says delivery is pending, the metric
/// is 0; once the admin fixes the config and reloads the module, extpresence (reconnecting by
/// itself to be granted them) delivers the held status to the contact and becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_privileges_are_not_ready_and_fixing_them_delivers() {
    let mut prosody = Prosody::start_with(without_privileged_entities).await;
    common::alice_and_bob_contacts(&prosody).await;
    let mut bob = TestClient::connect(prosody.c2s_port, "bob", true).await;
    let ext = Ext::start(prosody.component_port, DOMAIN, COMPONENT, SECRET).await;
    ext.wait_log("no XEP-0356 privilege advertisement").await;

    let text = readyz_until(&ext, 503).await;
    assert!(text.contains(&format!("privileges:{DOMAIN}")), "{text}");
    assert!(
        text.contains("privileged_entities"),
        "no fix named:\n{text}"
    );
    assert!(text.contains("next retry"), "{text}");
    let (code, report) = readyz_json(&ext).await;
    assert_eq!(code, 503);
    assert_eq!(report["ready"], false);
    assert_eq!(report["link"]["up"], true, "{report}");
    assert_eq!(report["privileges"][DOMAIN]["state"], "missing", "{report}");
    assert_eq!(
        metric(
            &ext,
            &format!("extpresence_privileges_granted{{domain=\"{DOMAIN}\"}}")
        )
        .await,
        Some(0.0)
    );

    // Writes are accepted and held, and say that delivery is pending: /v1 in its body and a
    // header, Tigase in its body, Matrix (whose answer is `{}`) in the header.
    let http = reqwest::Client::new();
    let r = http
        .put(format!(
            "http://{}/v1/users/alice@{DOMAIN}/status?api-key={API_KEY}",
            ext.http
        ))
        .header("Content-Type", "application/json")
        .body(r#"{"presence": "away", "status": "On the phone"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["extpresence-delivery"], "pending");
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["delivery"], "pending", "{v}");
    assert!(
        v["delivery_reason"].as_str().unwrap().contains("privilege"),
        "{v}"
    );
    let body = ext
        .post_ok(
            &format!("/rest/user/alice@{DOMAIN}/status/desk"),
            "application/json",
            r#"{"show": "dnd"}"#,
        )
        .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"]["success"], true, "{v}");
    assert_eq!(v["status"]["delivery"], "pending", "{v}");
    ext.wait_log("updates are accepted and held, but not delivered")
        .await;
    // Nothing of alice's synthetic resources reaches bob meanwhile (Prosody itself answers
    // bob's probe with alice's bare `unavailable`).
    let seen = bob.presences_within(Duration::from_secs(1)).await;
    assert!(
        !seen.iter().any(|p| p
            .from
            .as_ref()
            .is_some_and(|f| f.to_string().starts_with(&format!("alice@{DOMAIN}/")))),
        "{seen:?}"
    );

    // The admin fixes the config and applies it (a config reload alone does not: mod_privilege
    // reads privileged_entities when it loads).
    prosody.rewrite_config(|c| c);
    prosody.shell(&["config:reload()"]).await;
    prosody
        .shell(&["module", "reload", "privilege", DOMAIN])
        .await;
    let p = bob
        .expect_presence(WAIT, |p| {
            p.from
                .as_ref()
                .is_some_and(|f| f.to_string() == format!("alice@{DOMAIN}/tigase-external"))
                && p.show == Some(Show::Away)
        })
        .await;
    assert_eq!(
        p.statuses.values().next().map(String::as_str),
        Some("On the phone")
    );
    readyz_until(&ext, 200).await;
    assert_eq!(
        metric(
            &ext,
            &format!("extpresence_privileges_granted{{domain=\"{DOMAIN}\"}}")
        )
        .await,
        Some(1.0)
    );
    let r = http
        .put(format!(
            "http://{}/v1/users/alice@{DOMAIN}/status?api-key={API_KEY}",
            ext.http
        ))
        .header("Content-Type", "application/json")
        .body(r#"{"presence": "chat"}"#)
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("extpresence-delivery").is_none());
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["delivery"], "queued", "{v}");
}

/// The second way to miss privileges: mod_privilege not loaded on the Component. No
/// advertisement comes: 503 naming the domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privilege_module_missing_on_the_component_is_not_ready() {
    let prosody = Prosody::start_with(|c| {
        let at = c.find("Component \"").expect("a Component");
        let (head, tail) = c.split_at(at);
        format!(
            "{head}{}",
            tail.replace("modules_enabled = { \"privilege\" }", "")
        )
    })
    .await;
    let ext = Ext::start(prosody.component_port, DOMAIN, COMPONENT, SECRET).await;
    ext.wait_log("no XEP-0356 privilege advertisement").await;
    let text = readyz_until(&ext, 503).await;
    assert!(text.contains(&format!("privileges:{DOMAIN}")), "{text}");
    assert!(text.contains("in Component"), "{text}");
}

/// The third way: privileged_entities on another VirtualHost. The advertisement comes from a
/// domain that is not served: said in the log, and the served domain is not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileges_on_the_wrong_virtualhost_are_named() {
    let prosody = Prosody::start_with(|c| {
        let at = c.find("VirtualHost \"").expect("a VirtualHost");
        format!(
            "{}VirtualHost \"elsewhere.localhost\"\n    modules_enabled = {{ \"privilege\" }}\n    \
             privileged_entities = {{ [\"{COMPONENT}\"] = {{ roster = \"both\"; presence = \
             \"managed_entity\" }} }}\n\n{}",
            &c[..at],
            without_privileged_entities(c[at..].to_string())
        )
    })
    .await;
    let ext = Ext::start(prosody.component_port, DOMAIN, COMPONENT, SECRET).await;
    ext.wait_log("advertised by a domain that is not served")
        .await;
    assert!(ext.log().contains("elsewhere.localhost"), "{}", ext.log());
    let text = readyz_until(&ext, 503).await;
    assert!(text.contains(&format!("privileges:{DOMAIN}")), "{text}");
}

/// `[xmpp] server` pointed at the client port: the stream's namespace says what answered, and
/// the hint names the component port setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_port_is_named_as_the_wrong_port() {
    let prosody = Prosody::start().await;
    let ext = Ext::start(prosody.c2s_port, DOMAIN, COMPONENT, SECRET).await;
    ext.wait_log("is not a component port").await;
    let log = ext.log();
    assert!(log.contains("client (c2s) listener"), "{log}");
    assert!(log.contains("component_ports"), "{log}");
    let text = readyz_until(&ext, 503).await;
    assert!(text.contains("is not a component port"), "{text}");
    assert!(text.contains("fix: [xmpp] server must name"), "{text}");
    let n = metric(
        &ext,
        "extpresence_link_attempts_total{result=\"wrong_port\"}",
    )
    .await
    .unwrap_or(0.0);
    assert!(n >= 1.0, "{n}");
}

/// A wrong secret: every failed attempt is counted, and `/readyz` gives the reason, the fix and
/// the next retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_attempts_are_counted_and_named() {
    let prosody = Prosody::start().await;
    let ext = Ext::start(prosody.component_port, DOMAIN, COMPONENT, "not-the-secret").await;
    ext.wait_log("refused the component handshake").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = metric(&ext, "extpresence_link_attempts_total{result=\"auth\"}")
            .await
            .unwrap_or(0.0);
        if n >= 2.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "attempts: {n}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = readyz_until(&ext, 503).await;
    assert!(text.contains("refused the component handshake"), "{text}");
    assert!(text.contains("wrong component secret"), "{text}");
    assert!(text.contains("next retry"), "{text}");
    let (_, report) = readyz_json(&ext).await;
    assert!(
        report["link"]["attempts"].as_u64().unwrap() >= 2,
        "{report}"
    );
    assert!(!text.contains("not-the-secret") && !ext.log().contains("not-the-secret"));
}

/// The server stops cleanly (Prosody closes the connection without a stream footer): the log
/// says the server went away, not an XML parser's error alone; `/readyz` says the link is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_going_away_is_said() {
    let mut prosody = Prosody::start().await;
    let mut ext = Ext::start(prosody.component_port, DOMAIN, COMPONENT, SECRET).await;
    ext.wait_privileged(1).await;
    readyz_until(&ext, 200).await;
    prosody.stop().await;
    ext.wait_log("connection closed by the server").await;
    let log = ext.log();
    assert!(log.contains("went away"), "{log}");
    let text = readyz_until(&ext, 503).await;
    assert!(text.contains("XMPP component link is down"), "{text}");
    assert!(text.contains("went away"), "{text}");
    prosody.start_again().await;
    ext.wait_privileged(2).await;
    readyz_until(&ext, 200).await;
}

/// A served domain the server does not know: named at start (a disco#info query to it fails),
/// and not ready; the known domain keeps its privileges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_the_server_does_not_serve_is_named() {
    let prosody = Prosody::start().await;
    let ext = Ext::start_with(prosody.component_port, DOMAIN, COMPONENT, SECRET, |c| {
        c.replace(
            &format!("domains = [\"{DOMAIN}\"]"),
            &format!("domains = [\"{DOMAIN}\", \"nowhere.example\"]"),
        )
    })
    .await;
    ext.wait_log("does not serve nowhere.example").await;
    let text = readyz_until(&ext, 503).await;
    assert!(text.contains("privileges:nowhere.example"), "{text}");
    assert!(text.contains("does not serve nowhere.example"), "{text}");
    assert!(!text.contains(&format!("privileges:{DOMAIN}")), "{text}");
    let (_, report) = readyz_json(&ext).await;
    assert_eq!(report["privileges"][DOMAIN]["state"], "granted", "{report}");
    // No reconnect is imposed on the domain that works: no retry is scheduled (SIGHUP is the
    // way once it is fixed), and the link stays as it is.
    let condition = report["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "privileges:nowhere.example")
        .unwrap()
        .clone();
    assert!(condition.get("next_retry").is_none(), "{condition}");
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(attempts(&ext).await, 1, "{}", ext.log());
}

/// Run the binary with `args`; (exit code, stdout, stderr).
async fn run(args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(common::ext::binary())
            .args(args)
            .env_remove("EXTPRESENCE_URL")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the command ends in time")
    .expect("run extpresence");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A configuration file (in `dir`) for a component at `port` with `secret`, listening on
/// `listen`.
fn config_file(dir: &std::path::Path, port: u16, secret: &str, listen: &str) -> String {
    let path = dir.join("extpresence.toml");
    std::fs::write(
        &path,
        format!(
            "[xmpp]\ncomponent = \"{COMPONENT}\"\nserver = \"127.0.0.1:{port}\"\nsecret = \
             \"{secret}\"\ndomains = [\"{DOMAIN}\"]\n\n[http]\nlisten = \"{listen}\"\napi_keys = \
             [\"{API_KEY}\"]\n\n[store]\npath = \"{}\"\n",
            dir.join("statuses.redb").display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// `extpresence status`, like `prosodyctl status`: ready (exit 0), not ready with the reason
/// (exit 1), not running (exit 3); `--json` is the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_command_says_ready_not_ready_and_not_running() {
    let mut prosody = Prosody::start().await;
    let mut ext = Ext::start(prosody.component_port, DOMAIN, COMPONENT, SECRET).await;
    ext.wait_privileged(1).await;
    readyz_until(&ext, 200).await;
    let url = format!("http://{}", ext.http);
    let (code, out, err) = run(&["status", "--url", &url]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": ready (backend fanout"), "{out}");
    assert!(out.contains("link:        up since"), "{out}");
    assert!(
        out.contains(&format!(
            "privileges:  {DOMAIN}: granted (roster both, presence managed_entity)"
        )),
        "{out}"
    );
    assert!(out.contains("store:       ok"), "{out}");
    assert!(out.contains("held:        0 statuses"), "{out}");
    let (code, out, _) = run(&["status", "--json", "--url", &url]).await;
    assert_eq!(code, 0);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ready"], true);
    assert!(report["version"].is_string() && report["uptime_secs"].is_u64());

    prosody.stop().await;
    readyz_until(&ext, 503).await;
    let (code, out, _) = run(&["status", "--url", &url]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NOT READY"), "{out}");
    assert!(out.contains("link:        DOWN"), "{out}");
    assert!(
        out.contains("last error:  connection closed by the server"),
        "{out}"
    );
    assert!(
        out.contains("not ready because:\n  - link: the XMPP component link is down"),
        "{out}"
    );

    ext.terminate().await;
    let (code, _, err) = run(&["status", "--url", &url]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("is not running"), "{err}");
}

/// `check-config --connect` against Prosody: the handshake and the privileges, reported; a
/// wrong secret and missing privileges fail with the reason. With an extpresence answering on
/// the configured HTTP port, it is asked instead and its link is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_against_prosody() {
    let dir = tempfile::tempdir().unwrap();
    let prosody = Prosody::start().await;
    let cfg = config_file(dir.path(), prosody.component_port, SECRET, "127.0.0.1:1");
    let (code, out, err) = run(&["check-config", "--connect", "--config", &cfg]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("handshake ok"), "{out}");
    assert!(
        out.contains(&format!("privileges:  {DOMAIN}: granted (roster both")),
        "{out}"
    );
    assert!(out.contains("ok: extpresence can deliver"), "{out}");

    let cfg = config_file(dir.path(), prosody.component_port, "wrong", "127.0.0.1:1");
    let (code, out, _) = run(&["check-config", "--connect", "--config", &cfg]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAILED: the server refused the component handshake"),
        "{out}"
    );
    assert!(out.contains("wrong component secret"), "{out}");

    let cfg = config_file(dir.path(), prosody.c2s_port, SECRET, "127.0.0.1:1");
    let (code, out, _) = run(&["check-config", "--connect", "--config", &cfg]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is not a component port"), "{out}");

    let unprivileged = Prosody::start_with(without_privileged_entities).await;
    let cfg = config_file(
        dir.path(),
        unprivileged.component_port,
        SECRET,
        "127.0.0.1:1",
    );
    let (code, out, _) = run(&["check-config", "--connect", "--config", &cfg]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("privileges:  {DOMAIN}: MISSING")),
        "{out}"
    );

    let mut ext = Ext::start(prosody.component_port, DOMAIN, COMPONENT, SECRET).await;
    ext.wait_privileged(1).await;
    let cfg = config_file(
        dir.path(),
        prosody.component_port,
        SECRET,
        &ext.http.to_string(),
    );
    let (code, out, _) = run(&["check-config", "--connect", "--config", &cfg]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("already runs at"), "{out}");
    assert!(out.contains("asked it instead of connecting"), "{out}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !ext.log().contains("XMPP component link failed"),
        "{}",
        ext.log()
    );
    assert_eq!(readyz(&ext).await.0, 200);
    ext.terminate().await;
}

/// The same against ejabberd, where a second connection's disconnect would remove a running
/// instance's privileges: alone it connects and reports; beside a running extpresence it asks
/// it, and that instance keeps its privileges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connect_against_ejabberd() {
    let dir = tempfile::tempdir().unwrap();
    let ejabberd = common::ejabberd::Ejabberd::start(DOMAIN, COMPONENT, SECRET).await;
    let cfg = config_file(dir.path(), ejabberd.component_port, SECRET, "127.0.0.1:1");
    let (code, out, err) = run(&["check-config", "--connect", "--config", &cfg]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("handshake ok"), "{out}");
    assert!(
        out.contains(&format!("privileges:  {DOMAIN}: granted (roster")),
        "{out}"
    );

    let mut ext = Ext::start(ejabberd.component_port, DOMAIN, COMPONENT, SECRET).await;
    ext.wait_privileged(1).await;
    readyz_until(&ext, 200).await;
    let url = format!("http://{}", ext.http);
    let (code, out, _) = run(&["status", "--url", &url]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("privileges:  {DOMAIN}: granted")),
        "{out}"
    );
    let cfg = config_file(
        dir.path(),
        ejabberd.component_port,
        SECRET,
        &ext.http.to_string(),
    );
    let (code, out, _) = run(&["check-config", "--connect", "--config", &cfg]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("asked it instead of connecting"), "{out}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, report) = readyz_json(&ext).await;
    assert_eq!(report["privileges"][DOMAIN]["state"], "granted", "{report}");
    assert_eq!(report["link"]["attempts"], 1, "{report}");
    ext.terminate().await;
}

/// The README's "Readiness and diagnostics" examples, run as written (address and domain
/// substituted) against the real service: not ready without privileges, then ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_examples_work() {
    let title = "## Readiness and diagnostics";
    let substitute = |block: String, ext: &Ext| {
        block
            .replace("http://127.0.0.1:8080", &format!("http://{}", ext.http))
            .replace("example.com", DOMAIN)
            .replace(
                "extpresence status",
                &format!(
                    "{} status --url http://{}",
                    common::ext::binary().display(),
                    ext.http
                ),
            )
            .replace("curl -s ", "curl -sS ")
    };
    let sh = |script: String| async move {
        let out = tokio::process::Command::new("bash")
            .args(["-uo", "pipefail", "-c", &script])
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let unprivileged = Prosody::start_with(without_privileged_entities).await;
    let ext = Ext::start(unprivileged.component_port, DOMAIN, COMPONENT, SECRET).await;
    ext.wait_log("no XEP-0356 privilege advertisement").await;
    let (_, out) = sh(substitute(common::readme_code(title, "sh", 1), &ext)).await;
    assert!(out.starts_with("not ready\n"), "{out}");
    assert!(out.contains(&format!("- privileges:{DOMAIN}: ")), "{out}");
    let report: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(report["ready"], false);
    let (code, out) = sh(substitute(common::readme_code(title, "sh", 2), &ext)).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("NOT READY"), "{out}");

    let prosody = Prosody::start().await;
    let mut ext = Ext::start(prosody.component_port, DOMAIN, COMPONENT, SECRET).await;
    ext.wait_privileged(1).await;
    readyz_until(&ext, 200).await;
    let (code, out) = sh(substitute(common::readme_code(title, "sh", 2), &ext)).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(": ready (backend fanout, up "), "{out}");
    assert!(
        out.contains(&format!(
            "privileges:  {DOMAIN}: granted (roster both, presence managed_entity)"
        )),
        "{out}"
    );
}

/// The link's attempts so far (`/readyz`'s report).
async fn attempts(ext: &Ext) -> u64 {
    readyz_json(ext).await.1["link"]["attempts"]
        .as_u64()
        .unwrap_or(0)
}

/// SIGHUP connects again at once, also while the link waits out a long backoff (a wrong secret,
/// `reconnect_max_secs = 60`: the 6th attempt would come 8 to 16 s after the 5th).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_connects_again_during_the_backoff() {
    let prosody = Prosody::start().await;
    let ext = Ext::start_with(prosody.component_port, DOMAIN, COMPONENT, "wrong", |c| {
        c.replace("reconnect_max_secs = 2", "reconnect_max_secs = 60")
    })
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while attempts(&ext).await < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "5 attempts not made"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = tokio::time::Instant::now();
    let pid = ext.pid().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    while attempts(&ext).await < 6 {
        assert!(
            sent.elapsed() < Duration::from_secs(4),
            "SIGHUP did not shorten the backoff:\n{}",
            ext.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ext.log().contains("SIGHUP received"), "{}", ext.log());
}

/// ejabberd withdraws the component's privileges when another connection of the component
/// disconnects (here: `check-config --connect` run with a config that does not name the running
/// instance's HTTP port). The next roster request is refused: `/readyz` says the privilege was
/// withdrawn, and extpresence (no domain left granted) connects again by itself and is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileges_withdrawn_by_ejabberd_are_noticed_and_regained() {
    let dir = tempfile::tempdir().unwrap();
    let ejabberd = common::ejabberd::Ejabberd::start(DOMAIN, COMPONENT, SECRET).await;
    ejabberd.register(&["alice", "bob"], common::PASSWORD).await;
    let mut ext = Ext::start(ejabberd.component_port, DOMAIN, COMPONENT, SECRET).await;
    ext.wait_privileged(1).await;
    readyz_until(&ext, 200).await;
    let cfg = config_file(dir.path(), ejabberd.component_port, SECRET, "127.0.0.1:1");
    let (code, out, _) = run(&["check-config", "--connect", "--config", &cfg]).await;
    // ejabberd sends its privilege advertisement to one of the component's connections only
    // (servers.md): this second one may or may not get it; either way its disconnect withdraws
    // the running instance's privileges.
    assert!(matches!(code, 0 | 1), "{code}: {out}");
    assert!(out.contains("handshake ok"), "{out}");
    // A user whose roster is not cached: the update asks the server for it.
    ext.post_ok(
        &format!("/rest/user/alice@{DOMAIN}/status"),
        "application/json",
        r#"{"show": "away"}"#,
    )
    .await;
    let text = readyz_until(&ext, 503).await;
    assert!(text.contains("privilege was withdrawn"), "{text}");
    assert!(text.contains("next retry"), "{text}");
    ext.wait_privileged(2).await;
    readyz_until(&ext, 200).await;
}
