//! Tier: one real server (Prosody, with real XMPP clients).
//!
//! What an admin sees when the server side is set up wrong, and that an idle link stays up: the
//! real binary against a real Prosody whose config lacks one line, checking the log names the fix.
//! And what the admin sees when extpresence's own configuration is wrong (no server needed): the
//! binary run with the mistake, as `check-config` and as the daemon.

mod common;

use std::time::Duration;

use common::ext::Ext;
use common::{Prosody, COMPONENT, DOMAIN, SECRET};

/// Without `validate_from_addresses = false` Prosody closes the stream with `invalid-from` on the
/// first presence; extpresence logs the server's text and the fix, and keeps the status held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_from_names_the_fix() {
    let prosody = Prosody::start_with(|c| c.replace("validate_from_addresses = false", "")).await;
    common::alice_and_bob_contacts(&prosody).await;
    let mut ext = Ext::start(prosody.component_port, DOMAIN, COMPONENT, SECRET).await;
    ext.wait_privileged(1).await;
    ext.post_ok(
        &format!("/rest/user/alice@{DOMAIN}/status"),
        "application/json",
        r#"{"show": "away"}"#,
    )
    .await;
    ext.wait_log("invalid-from").await;
    let log = ext.log();
    assert!(
        log.contains("validate_from_addresses = false"),
        "no fix named:\n{log}"
    );
}

/// A wrong secret is reported as such, with where to look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_reported() {
    let prosody = Prosody::start().await;
    let ext = Ext::start(prosody.component_port, DOMAIN, COMPONENT, "not-the-secret").await;
    ext.wait_log("refused the component handshake").await;
    let log = ext.log();
    assert!(log.contains("wrong component secret"), "{log}");
    assert!(
        !log.contains("not-the-secret"),
        "the secret was logged:\n{log}"
    );
}

/// Without `privileged_entities` no advertisement comes: one warning naming the config to add.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_privileges_warned_once() {
    let prosody = Prosody::start_with(|c| {
        let start = c
            .find("    privileged_entities")
            .expect("snippet has privileged_entities");
        let end = start + c[start..].find("    }\n").expect("end of the table") + 6;
        format!("{}{}", &c[..start], &c[end..])
    })
    .await;
    let ext = Ext::start(prosody.component_port, DOMAIN, COMPONENT, SECRET).await;
    ext.wait_log("no XEP-0356 privilege advertisement").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let log = ext.log();
    assert_eq!(
        log.matches("no XEP-0356 privilege advertisement").count(),
        1,
        "{log}"
    );
    assert!(log.contains("privileged_entities"), "{log}");
}

/// With a 1 s keepalive the idle link is pinged and answered, and never mistaken for dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_link_stays_up() {
    let prosody = Prosody::start().await;
    let mut ext = Ext::start_with(prosody.component_port, DOMAIN, COMPONENT, SECRET, |c| {
        c.replace("keepalive_secs = 10", "keepalive_secs = 1")
    })
    .await;
    ext.wait_privileged(1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = ext.log();
    assert!(
        log.matches("sending keepalive ping").count() >= 3,
        "no keepalive pings:\n{log}"
    );
    assert!(!log.contains("link failed"), "idle link dropped:\n{log}");
    assert_eq!(log.matches("XMPP component link up").count(), 1, "{log}");
}

/// `[xmpp] server` may name a host: it is resolved at every connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_host_name_is_resolved() {
    let prosody = Prosody::start().await;
    let port = prosody.component_port;
    let mut ext = Ext::start_with(port, DOMAIN, COMPONENT, SECRET, |c| {
        c.replace(
            &format!("server = \"127.0.0.1:{port}\""),
            &format!("server = \"localhost:{port}\""),
        )
    })
    .await;
    ext.wait_privileged(1).await;
    assert!(
        ext.log().contains(&format!("server=localhost:{port}")),
        "{}",
        ext.log()
    );
}

/// Even at `RUST_LOG=trace` the handshake digest (SHA-1 of stream id and secret, an offline
/// guessing aid for a weak secret) is never logged; the handshake still succeeds.
///
/// The digest is computed here from the secret and the stream id the server sent. Positive
/// controls: the log holds the server's stream header with that id and its `<handshake/>` (so the
/// exchange was captured at TRACE), and the same search finds the digest where it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_digest_never_logged() {
    use sha1::{Digest, Sha1};
    let prosody = Prosody::start().await;
    let mut ext = Ext::start_with_env(
        prosody.component_port,
        DOMAIN,
        COMPONENT,
        SECRET,
        |c| c,
        vec![("RUST_LOG".into(), "trace".into())],
    )
    .await;
    ext.wait_privileged(1).await;
    let log = ext.log();
    // The server's stream header, as tokio-xmpp logged it received.
    let header = log
        .lines()
        .find(|l| l.contains("RECV") && l.contains("<stream:stream"))
        .unwrap_or_else(|| panic!("the received stream header is in the TRACE log:\n{log}"));
    let id = header
        .split(" id='")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or_else(|| panic!("a stream id in {header}"));
    assert!(id.len() >= 8, "a real stream id: {id:?}");
    assert!(
        log.contains("<handshake/>"),
        "the server's handshake answer is in the TRACE log:\n{log}"
    );
    let digest: String = Sha1::digest(format!("{id}{SECRET}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let logged = |text: &str| text.to_ascii_lowercase().contains(&digest);
    assert!(
        logged(&format!("SEND <handshake>{digest}</handshake>")),
        "the search finds a logged digest"
    );
    assert!(
        !logged(&log),
        "the handshake digest {digest} was logged:\n{log}"
    );
}

/// A minimal valid configuration, and the binary run on it with `args` and `env`: (exit code,
/// stdout and stderr).
fn run_with(
    toml_tweak: impl Fn(String) -> String,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("extpresence.toml");
    let base = format!(
        r#"[xmpp]
component = "{COMPONENT}"
server = "127.0.0.1:9"
secret = "s3cret-value"
domains = ["{DOMAIN}"]
[http]
listen = "127.0.0.1:0"
api_keys = ["key-value"]
[store]
path = "{}"
"#,
        dir.path().join("statuses.redb").display()
    );
    std::fs::write(&path, toml_tweak(base)).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_extpresence"));
    cmd.args(args).arg("--config").arg(&path);
    // Only the variables of the case: none inherited from the test's own environment.
    for (k, _) in std::env::vars() {
        if k.starts_with("EXTPRESENCE") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.envs(env.iter().copied()).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .replace(&path.display().to_string(), "FILE");
    assert!(
        !text.contains("s3cret-value") && !text.contains("key-value"),
        "a secret was shown: {text}"
    );
    (out.status.code(), text)
}

/// Each configuration mistake, made for `check-config` and for the daemon itself: exit 64 and
/// the one line that names where (file line or variable), the setting, and what is accepted.
#[test]
fn config_mistakes_are_named() {
    let in_xmpp =
        |line: &'static str| move |c: String| c.replace("domains =", &format!("{line}\ndomains ="));
    type Tweak = Box<dyn Fn(String) -> String>;
    type Case = (
        &'static str,
        Tweak,
        Vec<(&'static str, &'static str)>,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "a wrong backend in the file",
            Box::new(in_xmpp("backend = \"prosody\"")),
            vec![],
            "extpresence: invalid configuration: in FILE: line 5: xmpp.backend: \"prosody\" is \
             not a valid value: use one of \"fanout\", \"tigase\"",
        ),
        (
            "a wrong on_shutdown in the file",
            Box::new(|c: String| format!("{c}[status]\non_shutdown = \"drop\"\n")),
            vec![],
            "extpresence: invalid configuration: in FILE: line 12: status.on_shutdown: \"drop\" \
             is not a valid value: use one of \"unavailable\", \"keep\"",
        ),
        (
            "a wrong backend in a variable",
            Box::new(|c| c),
            vec![("EXTPRESENCE__XMPP__BACKEND", "prosody")],
            "extpresence: invalid configuration: in the environment variable \
             EXTPRESENCE__XMPP__BACKEND: xmpp.backend: \"prosody\" is not a valid value: use one \
             of \"fanout\", \"tigase\"",
        ),
        (
            "a number as a string in the file",
            Box::new(in_xmpp("keepalive_secs = \"30\"")),
            vec![],
            "extpresence: invalid configuration: in FILE: line 5: xmpp.keepalive_secs: a number is \
             expected, not the string \"30\": write it without quotes (keepalive_secs = 30)",
        ),
        (
            "a typo in a variable's name",
            Box::new(|c| c),
            vec![("EXTPRESENCE__HTTP__LISTN", "127.0.0.1:8080")],
            "extpresence: invalid configuration: in the environment variable \
             EXTPRESENCE__HTTP__LISTN: http.listn: there is no setting `listn` (the settings \
             here: `listen`, `api_keys`,",
        ),
        (
            "a typo in a variable's section",
            Box::new(|c| c),
            vec![("EXTPRESENCE__HTP__LISTEN", "127.0.0.1:8080")],
            "extpresence: invalid configuration: in the environment variable \
             EXTPRESENCE__HTP__LISTEN: htp.listen: there is no setting `htp` (the settings here: \
             `xmpp`, `status`, `http`,",
        ),
        (
            "a variable that is not a number",
            Box::new(|c| c),
            vec![("EXTPRESENCE__XMPP__KEEPALIVE_SECS", "30s")],
            "extpresence: invalid configuration: in the environment variable \
             EXTPRESENCE__XMPP__KEEPALIVE_SECS: xmpp.keepalive_secs: a number is expected, not \
             \"30s\"",
        ),
        (
            "a syntax error on the secret's line (its value is not quoted back)",
            Box::new(|c: String| c.replace("secret = \"s3cret-value\"", "secret = \"s3cret-value\\q\"")),
            vec![],
            "extpresence: invalid configuration: in FILE: line 4: ",
        ),
        (
            "a variable's value refused",
            Box::new(|c| c),
            vec![("EXTPRESENCE__HTTP__LISTEN", "localhost")],
            "extpresence: invalid configuration: in the environment variable \
             EXTPRESENCE__HTTP__LISTEN: http.listen: \"localhost\" is not ip:port",
        ),
    ];
    // The README shows the first message as the admin sees it.
    let readme = include_str!("../README.md");
    let shown = cases[0]
        .3
        .replace("FILE", "/etc/extpresence/extpresence.toml");
    assert!(readme.contains(&shown), "README does not show {shown}");
    for (what, tweak, env, want) in &cases {
        for args in [&["check-config"][..], &[][..]] {
            let (code, text) = run_with(tweak, args, env);
            assert_eq!(code, Some(64), "{what} ({args:?}): {text}");
            assert!(
                text.starts_with(want) && text.lines().count() == 1,
                "{what} ({args:?}): expected\n{want}\ngot\n{text}"
            );
            if !env.is_empty() {
                assert!(
                    !text.contains("FILE"),
                    "{what}: the file was blamed: {text}"
                );
            }
        }
    }
}

/// Variables are strings by nature: digits in one are a number, and a list is comma-separated.
#[test]
fn variables_still_parse_as_numbers() {
    let (code, text) = run_with(
        |c| c,
        &["check-config"],
        &[
            ("EXTPRESENCE__XMPP__KEEPALIVE_SECS", "30"),
            ("EXTPRESENCE__HTTP__MAX_CONNECTIONS", "100"),
            ("EXTPRESENCE__XMPP__BACKEND", "tigase"),
            ("EXTPRESENCE__XMPP__DOMAINS", "a.example,b.example"),
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("is valid"), "{text}");
    assert!(text.contains("\"a.example\", \"b.example\""), "{text}");

    // A required setting given by a variable only (the file leaves the component and the
    // secret to the environment), with a number from another variable.
    let (code, text) = run_with(
        |c| {
            c.replace(&format!("component = \"{COMPONENT}\"\n"), "")
                .replace("secret = \"s3cret-value\"\n", "")
        },
        &["check-config"],
        &[
            ("EXTPRESENCE__XMPP__COMPONENT", COMPONENT),
            ("EXTPRESENCE__XMPP__SECRET", "s3cret-value"),
            ("EXTPRESENCE__XMPP__KEEPALIVE_SECS", "30"),
        ],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(&format!("component {COMPONENT}")), "{text}");
}
