//! Tier: several real things (Prosody, XMPP clients, the matrix-nio client library).
//!
//! The Matrix dialect against a real Prosody with real XMPP clients, driven by a real Matrix
//! client library (matrix-nio, from `target/venv`), and every Matrix error as a table.
//!
//! alice and bob are mutual contacts; bob watches alice's synthetic resource.

#[macro_use]
mod common;

use std::time::Duration;

use common::ext::{request, Ext, API_KEY};
use common::server::{Kind, Server};
use common::{subscribe_mutual, TestClient, COMPONENT, DOMAIN, SECRET};
use serde_json::{json, Value};
use xmpp_parsers::presence::{Show, Type as PresenceType};

const WAIT: Duration = Duration::from_secs(10);

async fn world() -> (Server, Ext) {
    let server = Server::start(Kind::Prosody).await;
    server.register(&["alice", "bob"]).await;
    let port = server.c2s_port();
    let mut alice = TestClient::connect(port, "alice", true).await;
    let mut bob = TestClient::connect(port, "bob", true).await;
    subscribe_mutual(&mut alice, &mut bob).await;
    alice.disconnect().await;
    bob.disconnect().await;
    let mut ext = Ext::start_with(server.component_port(), DOMAIN, COMPONENT, SECRET, |c| {
        c.replace(
            "[http]\n",
            "[matrix]\nserver_names = { \"matrix.localhost\" = \"localhost\" }\n\n[http]\n",
        )
    })
    .await;
    ext.wait_privileged(1).await;
    (server, ext)
}

/// Run tests/python/matrix_client.py (matrix-nio) with `args`; one JSON answer per command.
async fn nio(ext: &Ext, token: &str, user_id: &str, args: &[&str]) -> Vec<Value> {
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/target/venv/bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/matrix_client.py");
    assert!(
        std::path::Path::new(python).exists(),
        "{python} is missing: run scripts/install-deps.sh (the test command does)"
    );
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(python)
            .arg(script)
            .arg(format!("http://{}", ext.http))
            .arg(token)
            .arg(user_id)
            .args(args)
            .output(),
    )
    .await
    .expect("matrix-nio within 60 s")
    .expect("run matrix_client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// matrix-nio with alice's token: `unavailable` "Lunch" → bob sees away "Lunch"; reading it back
/// gives `unavailable` "Lunch"; `offline` → bob sees unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_nio_sets_and_reads_presence() {
    let (server, ext) = world().await;
    let mut bob = TestClient::connect(server.c2s_port(), "bob", true).await;
    let token = common::mint_token(&ext, &format!("alice@{DOMAIN}"), "read-write").await;
    let me = format!("@alice:{DOMAIN}");
    let answers = nio(
        &ext,
        &token,
        &me,
        &["set", "unavailable", "Lunch", "get", &me],
    )
    .await;
    assert_eq!(answers[0]["type"], "PresenceSetResponse", "{answers:?}");
    let from = format!("alice@{DOMAIN}/tigase-external");
    let p = bob
        .expect_presence(WAIT, |p| {
            p.from.as_ref().map(|j| j.to_string()) == Some(from.clone())
                && p.statuses.values().any(|s| s == "Lunch")
        })
        .await;
    assert_eq!(p.show, Some(Show::Away));
    assert_eq!(answers[1]["type"], "PresenceGetResponse", "{answers:?}");
    assert_eq!(answers[1]["presence"], "unavailable", "{answers:?}");
    assert_eq!(answers[1]["status_msg"], "Lunch", "{answers:?}");
    assert_eq!(answers[1]["user_id"], me, "{answers:?}");

    // The mapped server name works too.
    let mapped = "@alice:matrix.localhost";
    let answers = nio(&ext, &token, mapped, &["set", "offline"]).await;
    assert_eq!(answers[0]["type"], "PresenceSetResponse", "{answers:?}");
    bob.expect_presence(WAIT, |p| {
        p.from.as_ref().map(|j| j.to_string()) == Some(from.clone())
            && p.type_ == PresenceType::Unavailable
    })
    .await;
    let answers = nio(&ext, &token, &me, &["get", &me]).await;
    assert_eq!(answers[0]["presence"], "offline", "{answers:?}");
    bob.disconnect().await;
}

/// One row of the error table: method, path, headers, body, status, errcode, error text.
type Case<'a> = (
    &'a str,
    String,
    Vec<(&'a str, &'a str)>,
    &'a str,
    u16,
    &'a str,
    Option<&'a str>,
);

/// Every Matrix error, with its exact `errcode`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_errors() {
    let (_server, ext) = world().await;
    let alice_token = common::mint_token(&ext, &format!("alice@{DOMAIN}"), "read-write").await;
    let alice_bearer = format!("Bearer {alice_token}");
    let admin = format!("Bearer {API_KEY}");
    let path = |id: &str| format!("/_matrix/client/v3/presence/{id}/status");
    let alice = path("@alice:localhost");
    let json_ct = ("Content-Type", "application/json");
    let cases: Vec<Case> = vec![
        (
            "PUT",
            alice.clone(),
            vec![json_ct],
            r#"{"presence":"online"}"#,
            401,
            "M_MISSING_TOKEN",
            None,
        ),
        (
            "PUT",
            alice.clone(),
            vec![json_ct, ("Authorization", "Bearer nope")],
            r#"{"presence":"online"}"#,
            401,
            "M_UNKNOWN_TOKEN",
            None,
        ),
        (
            "PUT",
            format!("{alice}?access_token=nope"),
            vec![json_ct],
            r#"{"presence":"online"}"#,
            401,
            "M_UNKNOWN_TOKEN",
            None,
        ),
        (
            "PUT",
            path("@bob:localhost"),
            vec![json_ct, ("Authorization", &alice_bearer)],
            r#"{"presence":"online"}"#,
            403,
            "M_FORBIDDEN",
            Some("Can only set your own presence state"),
        ),
        (
            "PUT",
            path("@alice:elsewhere.example"),
            vec![json_ct, ("Authorization", &admin)],
            r#"{"presence":"online"}"#,
            403,
            "M_FORBIDDEN",
            None,
        ),
        (
            "PUT",
            alice.clone(),
            vec![json_ct, ("Authorization", &alice_bearer)],
            "not json",
            400,
            "M_NOT_JSON",
            None,
        ),
        (
            "PUT",
            alice.clone(),
            vec![json_ct, ("Authorization", &alice_bearer)],
            r#"{"presence":"online","mood":"happy"}"#,
            400,
            "M_UNKNOWN",
            Some("Unable to parse state"),
        ),
        (
            "PUT",
            alice.clone(),
            vec![json_ct, ("Authorization", &alice_bearer)],
            r#"{"presence":"busy","status_msg":"x","mood":"happy"}"#,
            400,
            "M_UNKNOWN",
            Some("Unable to parse state"),
        ),
        (
            "PUT",
            alice.clone(),
            vec![json_ct, ("Authorization", &alice_bearer)],
            r#"{"presence":"online","status_msg":5}"#,
            400,
            "M_UNKNOWN",
            Some("status_msg must be a string."),
        ),
        (
            "PUT",
            alice.clone(),
            vec![json_ct, ("Authorization", &alice_bearer)],
            r#"{"presence":"online","status_msg":null,"mood":"happy"}"#,
            400,
            "M_UNKNOWN",
            Some("status_msg must be a string."),
        ),
        (
            "PUT",
            path("alice"),
            vec![json_ct, ("Authorization", &admin)],
            r#"{"presence":"online"}"#,
            400,
            "M_INVALID_PARAM",
            None,
        ),
        (
            "PUT",
            path("@Alice:localhost"),
            vec![json_ct, ("Authorization", &admin)],
            r#"{"presence":"online"}"#,
            400,
            "M_INVALID_PARAM",
            None,
        ),
        (
            "PUT",
            alice.clone(),
            vec![json_ct, ("Authorization", &alice_bearer)],
            r#"{"presence":"busy"}"#,
            400,
            "M_UNKNOWN",
            Some("Invalid presence state"),
        ),
        (
            "PUT",
            alice.clone(),
            vec![json_ct, ("Authorization", &alice_bearer)],
            r#"{"status_msg":"x"}"#,
            400,
            "M_UNKNOWN",
            Some("Unable to parse state"),
        ),
        (
            "GET",
            "/_matrix/client/v3/rooms".to_string(),
            vec![("Authorization", &admin)],
            "",
            404,
            "M_UNRECOGNIZED",
            None,
        ),
        (
            "GET",
            "/_matrix/client/v9/presence/@alice:localhost/status".to_string(),
            vec![("Authorization", &admin)],
            "",
            404,
            "M_UNRECOGNIZED",
            None,
        ),
    ];
    for (method, path, headers, body, status, errcode, error) in cases {
        let (code, text) = request(ext.http, method, &path, &headers, body.as_bytes()).await;
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
        assert_eq!(
            (code, v["errcode"].as_str().unwrap_or("")),
            (status, errcode),
            "{method} {path} {body}: {text}"
        );
        if let Some(error) = error {
            assert_eq!(v["error"], error, "{text}");
        }
    }
    // Client libraries start with the versions.
    let (code, text) = request(ext.http, "GET", "/_matrix/client/versions", &[], b"").await;
    assert_eq!(code, 200);
    assert!(text.contains("\"v1.1\""), "{text}");
    // r0 works like v3.
    let (code, text) = request(
        ext.http,
        "PUT",
        "/_matrix/client/r0/presence/@alice:localhost/status",
        &[json_ct, ("Authorization", &alice_bearer)],
        br#"{"presence":"online","status_msg":"r0"}"#,
    )
    .await;
    assert_eq!((code, text.as_str()), (200, "{}"));
}

/// 429 `M_LIMIT_EXCEEDED` with `retry_after_ms` and `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_rate_limit() {
    let server = Server::start(Kind::Prosody).await;
    server.register(&["alice"]).await;
    let mut ext = Ext::start_with(server.component_port(), DOMAIN, COMPONENT, SECRET, |c| {
        c.replace("\nrate_per_sec = 1000000", "\nrate_per_sec = 1")
            .replace("\nrate_burst = 1000000", "\nrate_burst = 3")
    })
    .await;
    ext.wait_privileged(1).await;
    let admin = format!("Bearer {API_KEY}");
    let headers = [
        ("Authorization", admin.as_str()),
        ("Content-Type", "application/json"),
    ];
    let put = || {
        request(
            ext.http,
            "PUT",
            "/_matrix/client/v3/presence/@alice:localhost/status",
            &headers,
            br#"{"presence":"online"}"#,
        )
    };
    for _ in 0..3 {
        assert_eq!(put().await.0, 200);
    }
    let (code, text) = put().await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (code, &v["errcode"]),
        (429, &json!("M_LIMIT_EXCEEDED")),
        "{text}"
    );
    assert!(
        v["retry_after_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0 && ms <= 1000),
        "{text}"
    );
}
