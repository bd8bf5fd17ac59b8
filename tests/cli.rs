//! Tier: one real server (Prosody, with real XMPP clients).
//!
//! The command-line client (`extpresence set|clear|get|watch|token`) against a live extpresence
//! with a real Prosody and a real contact: every subcommand, human and `--json` output, every
//! exit code; and the daemon's JSON logs.
//!
//! alice and bob are mutual contacts; bob's client watches alice's synthetic resource.

#[macro_use]
mod common;

use std::process::Stdio;
use std::time::Duration;

use common::ext::{Ext, API_KEY};
use common::server::{Kind, Server};
use common::{TestClient, COMPONENT, DOMAIN, SECRET};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use xmpp_parsers::presence::{Show, Type as PresenceType};

const BIN: &str = env!("CARGO_BIN_EXE_extpresence");
const WAIT: Duration = Duration::from_secs(10);

/// What a run printed, and its exit code.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run the client with `args`, pointed at `ext` by flags and the key by `EXTPRESENCE_KEY`.
async fn cli(ext: &Ext, args: &[&str]) -> Run {
    let url = format!("http://{}", ext.http);
    let mut all = vec!["--url", url.as_str()];
    all.extend_from_slice(args);
    run(&all, &[("EXTPRESENCE_KEY", API_KEY)]).await
}

async fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(BIN)
            .args(args)
            .env_remove("EXTPRESENCE_URL")
            .env_remove("EXTPRESENCE_KEY")
            .env_remove("EXTPRESENCE_KEY_FILE")
            .envs(env.iter().copied())
            .output(),
    )
    .await
    .expect("the client within 30 s")
    .expect("run the binary");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Wait until the event hub has `n` subscribers (`/metrics`).
async fn wait_subscribers(ext: &Ext, n: usize) {
    let want = format!("extpresence_event_subscribers {n}\n");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, metrics) = common::ext::request(ext.http, "GET", "/metrics", &[], b"").await;
        if metrics.contains(&want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {n} subscribers: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `extpresence --url URL watch --user ARGS…` in the background (killed on drop), and its
/// output's lines.
fn spawn_watch(
    url: &str,
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) {
    let mut watch = tokio::process::Command::new(BIN)
        .args(["--url", url, "watch", "--user"])
        .args(args)
        .env("EXTPRESENCE_KEY", API_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("watch");
    let lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    (watch, lines)
}

fn json(r: &Run) -> Value {
    serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {r:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_and_exit_code() {
    let w = common::world(Kind::Prosody, &["alice", "bob"]).await;
    let ext = &w.ext;
    let mut bob = TestClient::connect(w.server.c2s_port(), "bob", true).await;
    let alice = format!("alice@{DOMAIN}");

    // watch, in the background, from the start.
    let url = format!("http://{}", ext.http);
    let (mut watch, mut watched) = spawn_watch(&url, &[&alice]);
    wait_subscribers(ext, 1).await;

    // set: human output, and bob's client gets it.
    let r = cli(
        ext,
        &[
            "set",
            &alice,
            "away",
            "On the phone",
            "--expires",
            "45m",
            "--source",
            "pbx",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("away \"On the phone\""), "{r:?}");
    assert!(r.stdout.contains("until 20"), "the expiry is shown: {r:?}");
    let until = r.stdout.trim().split(", ").nth(1).unwrap();
    let until = until.split(';').next().unwrap().to_string();
    assert!(until.starts_with("until 20"), "{r:?}");
    bob.expect_presence(WAIT, |p| {
        p.show == Some(Show::Away)
            && p.statuses.values().any(|s| s == "On the phone")
            && p.from
                .as_ref()
                .is_some_and(|f| f.to_bare().to_string() == alice)
    })
    .await;
    // watch printed it as one line.
    let line = tokio::time::timeout(WAIT, watched.next_line())
        .await
        .expect("an event line within 10 s")
        .unwrap()
        .expect("a line");
    assert!(
        line.contains(&alice) && line.contains("away") && line.contains("(status)"),
        "{line}"
    );

    // set --json; get (human and --json).
    let r = cli(
        ext,
        &[
            "set",
            &alice,
            "dnd",
            "In a call",
            "--resource",
            "phone",
            "--json",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(json(&r)["presence"], "dnd", "{r:?}");
    let r = cli(ext, &["get", &alice]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with(&format!("{alice}: ")), "{r:?}");
    // get shows the expiry as set did (the `phone` resource has none).
    let line = |r: &Run, resource: &str| {
        r.stdout
            .lines()
            .find(|l| l.trim_start().starts_with(resource))
            .unwrap_or_else(|| panic!("no {resource} line: {r:?}"))
            .to_string()
    };
    assert!(
        line(&r, "tigase-external").ends_with(&format!("held by pbx, {until}")),
        "{r:?}"
    );
    assert!(line(&r, "phone").ends_with("held by default"), "{r:?}");
    let r = cli(ext, &["get", &alice, "--json"]).await;
    let v = json(&r);
    assert_eq!(v["resources"].as_array().unwrap().len(), 2, "{v}");

    // clear: bob sees the resource go.
    let r = cli(ext, &["clear", &alice, "--source", "pbx"]).await;
    assert_eq!(
        (r.code, r.stdout.trim()),
        (0, format!("{alice}: cleared").as_str()),
        "{r:?}"
    );
    bob.expect_presence(WAIT, |p| {
        p.type_ == PresenceType::Unavailable
            && p.from
                .as_ref()
                .is_some_and(|f| f.to_string().ends_with("/tigase-external"))
    })
    .await;

    // tokens: create, list (human, --json), use it, revoke, revoke again (refused).
    let r = cli(
        ext,
        &[
            "token", "create", &alice, "--access", "read", "--name", "cli test",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let token = r.stdout.lines().next().unwrap().to_string();
    assert!(token.starts_with("ept_"), "{r:?}");
    let id = token
        .trim_start_matches("ept_")
        .split('.')
        .next()
        .unwrap()
        .to_string();
    let r = cli(ext, &["token", "list"]).await;
    assert!(
        r.stdout.contains(&id) && r.stdout.contains("cli test"),
        "{r:?}"
    );
    assert!(
        !r.stdout.contains(&token),
        "the secret is never listed: {r:?}"
    );
    let r = cli(ext, &["token", "list", "--json"]).await;
    assert!(json(&r)["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["id"] == id.as_str()));
    let r = run(
        &["--url", &url, "get", &alice],
        &[("EXTPRESENCE_KEY", token.as_str())],
    )
    .await;
    assert_eq!(r.code, 0, "the token reads alice: {r:?}");
    let r = run(
        &["--url", &url, "set", &alice, "away"],
        &[("EXTPRESENCE_KEY", token.as_str())],
    )
    .await;
    assert_eq!(r.code, 1, "a read token may not write: {r:?}");
    assert!(r.stderr.contains("refused by the server (403)"), "{r:?}");
    let r = cli(ext, &["token", "revoke", &id]).await;
    assert_eq!(
        (r.code, r.stdout.trim()),
        (0, format!("token {id} revoked").as_str()),
        "{r:?}"
    );
    let r = cli(ext, &["token", "revoke", &id]).await;
    assert_eq!(r.code, 1, "{r:?}");

    // Exit codes: 1 refused (with the server's message), 2 usage, 3 unreachable.
    let r = cli(ext, &["get", "alice@elsewhere.example"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("not served"), "{r:?}");
    let r = run(
        &["--url", &url, "get", &alice],
        &[("EXTPRESENCE_KEY", "wrong")],
    )
    .await;
    assert_eq!(r.code, 1, "{r:?}");
    for args in [
        vec!["set", alice.as_str(), "sleepy"],
        vec!["set", alice.as_str(), "away", "--expires", "soon"],
        vec!["frobnicate"],
    ] {
        let r = cli(ext, &args).await;
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(!r.stderr.contains("panicked"), "{r:?}");
    }
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let r = run(
        &["--url", &dead, "get", &alice],
        &[("EXTPRESENCE_KEY", API_KEY)],
    )
    .await;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("cannot be reached"), "{r:?}");
    assert!(!r.stderr.contains("reqwest::Error"), "no debug dump: {r:?}");
    // No key anywhere and no readable configuration: a usage error that says what to do.
    let r = run(
        &[
            "--config",
            "/nonexistent/extpresence.toml",
            "--url",
            &url,
            "get",
            &alice,
        ],
        &[],
    )
    .await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--key-file"), "{r:?}");

    // On the server host without flags: the daemon's configuration gives URL and admin key.
    let text = std::fs::read_to_string(&ext.config).unwrap();
    let local = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        local.path(),
        text.replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{}\"", ext.http),
        ),
    )
    .unwrap();
    let config = local.path().to_str().unwrap();
    let r = run(&["--config", config, "get", &alice, "--json"], &[]).await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(json(&r)["user"], alice.as_str());
    // A key file wins over the configuration's key.
    let key_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key_file.path(), "wrong\n").unwrap();
    let r = run(
        &[
            "--config",
            config,
            "--key-file",
            key_file.path().to_str().unwrap(),
            "get",
            &alice,
        ],
        &[],
    )
    .await;
    assert_eq!(r.code, 1, "the key file's (wrong) key is used: {r:?}");

    // watch ends on Ctrl-C with 0.
    let pid = watch.id().expect("watch runs").to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(WAIT, watch.wait())
        .await
        .expect("watch ends on SIGINT")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    bob.disconnect().await;
}

/// `watch` decodes the event stream, not each network read: a status text with multi-byte
/// characters, delivered a byte at a time through a trickling proxy, prints exactly as set (it
/// printed U+FFFD where a character was split across two reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_keeps_characters_split_across_reads() {
    let w = common::world(Kind::Prosody, &["alice", "bob"]).await;
    let ext = &w.ext;
    let alice = format!("alice@{DOMAIN}");
    let proxy = common::proxy::TrickleProxy::start(ext.http).await;
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let (_watch, mut watched) = spawn_watch(&url, &[&alice, "--json"]);
    wait_subscribers(ext, 1).await;
    let text = "Café ☕ — 電話中 🎧";
    let r = cli(ext, &["set", &alice, "dnd", text]).await;
    assert_eq!(r.code, 0, "{r:?}");
    let line = tokio::time::timeout(Duration::from_secs(30), watched.next_line())
        .await
        .expect("an event line within 30 s")
        .unwrap()
        .expect("a line");
    let event: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert!(
        !line.contains('\u{FFFD}'),
        "a character was garbled: {line}"
    );
    assert_eq!(event["status"], text, "{line}");
}

/// `[log] format = "json"`: every line the daemon writes is a JSON object, and a request's lines
/// carry the request span's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs() {
    let server = Server::start(Kind::Prosody).await;
    server.register(&["alice"]).await;
    let mut ext = Ext::start_with(server.component_port(), DOMAIN, COMPONENT, SECRET, |c| {
        format!("{c}\n[log]\nformat = \"json\"\n")
    })
    .await;
    ext.wait_privileged(1).await;
    // A refused request is logged inside its request span (the Tigase dialect's pipeline).
    let (code, _) = common::ext::request(
        ext.http,
        "POST",
        &format!("/rest/user/alice@elsewhere.example/status?api-key={API_KEY}"),
        &[("Content-Type", "application/json")],
        br#"{"available":true}"#,
    )
    .await;
    assert_eq!(code, 403);
    let r = cli(&ext, &["get", "alice@elsewhere.example"]).await;
    assert_eq!(r.code, 1, "{r:?}");
    let alice = format!("alice@{DOMAIN}");
    let r = cli(&ext, &["set", &alice, "away"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    ext.terminate().await;
    let log = ext.log();
    let mut with_span = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        if let Some(span) = v.get("span") {
            assert!(span["name"].is_string(), "{line}");
            with_span += 1;
        }
    }
    assert!(with_span > 0, "no line carries a span:\n{log}");
    let refusal = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["span"]["name"] == "request")
        .unwrap_or_else(|| panic!("no line inside a request span:\n{log}"));
    assert_eq!(refusal["span"]["method"], "POST", "{refusal}");
    assert_eq!(
        refusal["span"]["user"], "alice@elsewhere.example",
        "{refusal}"
    );
}

/// `watch` says "events were missed" once per loss: after a restart of extpresence it is told so
/// (its `Last-Event-ID` is from the previous process); when its connection then drops (a proxy
/// in between cuts it) and it resumes from the same process, it is not told again — it used to
/// be, at every reconnection, as it kept resuming after the id from before the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_says_events_were_missed_once() {
    let server = Server::start(Kind::Prosody).await;
    server.register(&["alice"]).await;
    // A fixed port, so the proxy reaches the restarted process too.
    let port = common::free_port();
    let mut ext = Ext::start_with(server.component_port(), DOMAIN, COMPONENT, SECRET, |c| {
        c.replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
    })
    .await;
    ext.wait_privileged(1).await;
    let alice = format!("alice@{DOMAIN}");
    let proxy = common::proxy::LinkProxy::start(port).await;
    let url = format!("http://127.0.0.1:{}", proxy.port);
    let (_watch, mut watched) = spawn_watch(&url, &[&alice]);
    wait_subscribers(&ext, 1).await;
    let mut lines = Vec::new();
    // Every line printed until one contains `needle`.
    async fn until(
        watched: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
        lines: &mut Vec<String>,
        needle: &str,
    ) {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), watched.next_line())
                .await
                .unwrap_or_else(|_| panic!("no line with {needle:?} within 30 s: {lines:#?}"))
                .unwrap()
                .expect("watch runs");
            let found = line.contains(needle);
            lines.push(line);
            if found {
                return;
            }
        }
    }
    let r = cli(&ext, &["set", &alice, "away", "before the restart"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    until(&mut watched, &mut lines, "before the restart").await;

    ext.terminate().await;
    ext.restart().await;
    ext.wait_privileged(1).await;
    until(&mut watched, &mut lines, "events were missed").await;

    // The connection drops; watch resumes from the same process: nothing was missed.
    proxy.cut();
    proxy.restore();
    let r = cli(&ext, &["set", &alice, "dnd", "after the cut"]).await;
    assert_eq!(r.code, 0, "{r:?}");
    until(&mut watched, &mut lines, "after the cut").await;
    let missed = lines
        .iter()
        .filter(|l| l.contains("events were missed"))
        .count();
    assert_eq!(missed, 1, "{lines:#?}");
    ext.terminate().await;
}
