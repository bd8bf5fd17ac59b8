//! Tier: several real things (Prosody and ejabberd, XMPP clients, schemathesis,
//! openapi-spec-validator, a generated Python client).
//!
//! The native API `/v1` against real Prosody and ejabberd with real XMPP contacts: the presence
//! vocabulary, several sources per resource, the Tigase dialect and `/v1` combining, durable
//! expiry (also across kill -9), bulk updates, the upgrade of a store written by the previous
//! release, and the OpenAPI document checked by schemathesis against the running service.
//!
//! alice and bob are mutual contacts; bob watches alice's synthetic resources.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::ext::{request, Ext, API_KEY};
use common::server::{Kind, Server};
use common::{TestClient, COMPONENT, DOMAIN, SECRET};
use serde_json::{json, Value};
use xmpp_parsers::presence::{Presence, Show, Type as PresenceType};

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(1500);

use common::{call_json as call, world};

async fn put(ext: &Ext, user: &str, body: Value) -> Value {
    let (code, v) = call(ext, "PUT", &format!("/v1/users/{user}/status"), Some(body)).await;
    assert_eq!(code, 200, "{v}");
    v
}

fn from_is(p: &Presence, jid: &str) -> bool {
    p.from.as_ref().map(|j| j.to_string()).as_deref() == Some(jid)
}

fn text(p: &Presence) -> Option<&str> {
    p.statuses.values().next().map(String::as_str)
}

fn alice(resource: &str) -> String {
    format!("alice@{DOMAIN}/{resource}")
}

/// Scenario 1: Each word → bob sees it (`online`: no show; `offline`: unavailable).
async fn vocabulary(kind: Kind) {
    let w = world(kind, &["alice", "bob"]).await;
    let mut bob = TestClient::connect(w.server.c2s_port(), "bob", true).await;
    let user = format!("alice@{DOMAIN}");
    for (word, show) in [
        ("online", None),
        ("chat", Some(Show::Chat)),
        ("away", Some(Show::Away)),
        ("xa", Some(Show::Xa)),
        ("dnd", Some(Show::Dnd)),
    ] {
        let v = put(
            &w.ext,
            &user,
            json!({"presence": word, "status": format!("word {word}"), "resource": "r"}),
        )
        .await;
        assert_eq!(v["effective"]["presence"], word);
        let p = bob
            .expect_presence(WAIT, |p| {
                from_is(p, &alice("r")) && text(p) == Some(&format!("word {word}"))
            })
            .await;
        assert_eq!(p.show, show, "{word}");
        assert_eq!(p.type_, PresenceType::None);
    }
    let v = put(
        &w.ext,
        &user,
        json!({"presence": "offline", "resource": "r"}),
    )
    .await;
    assert!(v.get("effective").is_none(), "{v}");
    bob.expect_presence(WAIT, |p| {
        from_is(p, &alice("r")) && p.type_ == PresenceType::Unavailable
    })
    .await;
}

/// Scenario 2: pbx dnd + calendar away → dnd; a change of the losing source sends nothing; pbx cleared →
/// away; calendar cleared → unavailable.
async fn sources_combine(kind: Kind) {
    let w = world(kind, &["alice", "bob"]).await;
    let mut bob = TestClient::connect(w.server.c2s_port(), "bob", true).await;
    let user = format!("alice@{DOMAIN}");
    put(
        &w.ext,
        &user,
        json!({"presence": "dnd", "status": "On a call", "source": "pbx", "resource": "phone"}),
    )
    .await;
    bob.expect_presence(WAIT, |p| {
        from_is(p, &alice("phone")) && p.show == Some(Show::Dnd)
    })
    .await;
    let v = put(&w.ext, &user, json!({"presence": "away", "status": "In a meeting", "source": "calendar", "resource": "phone"})).await;
    assert_eq!(
        v["effective"],
        json!({"presence": "dnd", "status": "On a call", "source": "pbx", "priority": -1})
    );
    put(&w.ext, &user, json!({"presence": "away", "status": "In another meeting", "source": "calendar", "resource": "phone"})).await;
    let seen = bob.presences_within(QUIET).await;
    assert!(
        !seen.iter().any(|p| from_is(p, &alice("phone"))),
        "a change of the losing source reached bob: {seen:?}"
    );
    let (code, v) = call(&w.ext, "GET", &format!("/v1/users/{user}/status"), None).await;
    assert_eq!(code, 200);
    assert_eq!(
        v["resources"][0]["sources"].as_array().unwrap().len(),
        2,
        "{v}"
    );
    let (code, v) = call(
        &w.ext,
        "DELETE",
        &format!("/v1/users/{user}/status?resource=phone&source=pbx"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["effective"]["source"], "calendar");
    let p = bob
        .expect_presence(WAIT, |p| from_is(p, &alice("phone")))
        .await;
    assert_eq!(
        (p.show.clone(), text(&p)),
        (Some(Show::Away), Some("In another meeting"))
    );
    call(
        &w.ext,
        "DELETE",
        &format!("/v1/users/{user}/status?resource=phone&source=calendar"),
        None,
    )
    .await;
    bob.expect_presence(WAIT, |p| {
        from_is(p, &alice("phone")) && p.type_ == PresenceType::Unavailable
    })
    .await;
}

/// Scenario 3: A Tigase-dialect set (source `default`) and a /v1 set of another source combine.
async fn tigase_and_v1_combine(kind: Kind) {
    let w = world(kind, &["alice", "bob"]).await;
    let mut bob = TestClient::connect(w.server.c2s_port(), "bob", true).await;
    w.ext
        .post_ok(
            &format!("/rest/user/alice@{DOMAIN}/status"),
            "application/json",
            r#"{"show": "away", "status": "Tigase says away"}"#,
        )
        .await;
    bob.expect_presence(WAIT, |p| {
        from_is(p, &alice("tigase-external")) && p.show == Some(Show::Away)
    })
    .await;
    put(
        &w.ext,
        &format!("alice@{DOMAIN}"),
        json!({"presence": "dnd", "status": "PBX: call", "source": "pbx"}),
    )
    .await;
    let p = bob
        .expect_presence(WAIT, |p| {
            from_is(p, &alice("tigase-external")) && p.show == Some(Show::Dnd)
        })
        .await;
    assert_eq!(text(&p), Some("PBX: call"));
    w.ext
        .post_ok(
            &format!("/rest/user/alice@{DOMAIN}/status"),
            "application/json",
            r#"{"available": false}"#,
        )
        .await;
    // Clearing `default` leaves pbx: still dnd, nothing new for bob.
    let seen = bob.presences_within(QUIET).await;
    assert!(
        !seen.iter().any(|p| from_is(p, &alice("tigase-external"))),
        "{seen:?}"
    );
}

/// Scenario 4: Expiry: the removal reaches bob within 1 s of the deadline; kill -9 one second before the
/// deadline and restart → the removal still comes; kill -9, wait past the deadline, restart →
/// bob never sees the expired status again.
async fn expiry_is_durable(kind: Kind) {
    let mut w = world(kind, &["alice", "bob"]).await;
    let mut bob = TestClient::connect(w.server.c2s_port(), "bob", true).await;
    let user = format!("alice@{DOMAIN}");
    let v = put(
        &w.ext,
        &user,
        json!({"presence": "away", "status": "brief", "resource": "a", "expires_in": 2}),
    )
    .await;
    let deadline = chrono::DateTime::parse_from_rfc3339(v["expires_at"].as_str().unwrap()).unwrap();
    bob.expect_presence(WAIT, |p| {
        from_is(p, &alice("a")) && p.type_ == PresenceType::None
    })
    .await;
    bob.expect_presence(WAIT, |p| {
        from_is(p, &alice("a")) && p.type_ == PresenceType::Unavailable
    })
    .await;
    let late = extpresence::base::clock::now_ms() as i64 - deadline.timestamp_millis();
    assert!(late < 1000, "removal {late} ms after the deadline");

    // kill -9 one second before the deadline.
    put(
        &w.ext,
        &user,
        json!({"presence": "xa", "status": "until restart", "resource": "b", "expires_in": 3}),
    )
    .await;
    bob.expect_presence(WAIT, |p| {
        from_is(p, &alice("b")) && p.type_ == PresenceType::None
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.ext.kill().await;
    w.ext.restart().await;
    bob.expect_presence(WAIT, |p| {
        from_is(p, &alice("b")) && p.type_ == PresenceType::Unavailable
    })
    .await;

    // kill -9, wait past the deadline, restart: the expired status is never replayed.
    put(
        &w.ext,
        &user,
        json!({"presence": "dnd", "status": "stale", "resource": "c", "expires_in": 1}),
    )
    .await;
    bob.expect_presence(WAIT, |p| {
        from_is(p, &alice("c")) && p.type_ == PresenceType::None
    })
    .await;
    w.ext.kill().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    bob.drain();
    w.ext.restart().await;
    let seen = bob.presences_within(Duration::from_secs(4)).await;
    assert!(
        !seen
            .iter()
            .any(|p| from_is(p, &alice("c")) && p.type_ == PresenceType::None),
        "an expired status was replayed: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|p| from_is(p, &alice("c")) && p.type_ == PresenceType::Unavailable),
        "the removal was not delivered after the restart: {seen:?}"
    );
}

/// Scenario 5: Bulk: 1,000 updates over 100 users with 3 invalid items → the 3 reported by index and code,
/// every valid one reaches the contacts; a malformed envelope applies nothing.
async fn bulk_updates(kind: Kind) {
    let w = world(kind, &["alice", "bob"]).await;
    let mut bob = TestClient::connect(w.server.c2s_port(), "bob", true).await;
    let mut updates: Vec<Value> = (0..1000)
        .map(|i| {
            let user = if i % 100 == 0 { "alice".to_string() } else { format!("u{}", i % 100) };
            json!({"user": format!("{user}@{DOMAIN}"), "presence": "away", "status": format!("bulk {i}"), "resource": format!("r{}", i / 100)})
        })
        .collect();
    updates[7] = json!({"user": format!("u7@{DOMAIN}"), "presence": "sleeping"});
    updates[500] = json!({"user": "x@elsewhere.org", "presence": "away"});
    updates[999] = json!({"user": format!("u99@{DOMAIN}"), "presence": "away", "expires_in": 0});
    let started = Instant::now();
    let (code, v) = call(
        &w.ext,
        "POST",
        "/v1/statuses",
        Some(json!({"updates": updates})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let failed: Vec<(u64, String)> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["ok"] == false)
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["error"]["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        failed,
        vec![
            (7, "invalid_presence".to_string()),
            (500, "domain_not_served".to_string()),
            (999, "invalid_expiry".to_string())
        ]
    );
    // alice's ten valid updates (r0..r9; index 500 was replaced) reach bob.
    let mut missing: std::collections::HashSet<usize> = (0..10).filter(|r| *r != 5).collect();
    while !missing.is_empty() {
        let p = bob
            .expect_presence(WAIT, |p| {
                missing.iter().any(|r| from_is(p, &alice(&format!("r{r}"))))
            })
            .await;
        let r = p.from.as_ref().and_then(|j| j.resource()).unwrap().as_str()[1..]
            .parse::<usize>()
            .unwrap();
        assert_eq!(text(&p), Some(format!("bulk {}", r * 100).as_str()));
        missing.remove(&r);
    }
    let held = |ext: &Ext| {
        let http = ext.http;
        async move {
            let (_, body) = request(http, "GET", "/metrics", &[], b"").await;
            body.lines()
                .find_map(|l| {
                    l.strip_prefix("extpresence_held_statuses ")?
                        .parse::<u64>()
                        .ok()
                })
                .unwrap()
        }
    };
    assert_eq!(held(&w.ext).await, 997);
    eprintln!("bulk: 1,000 updates answered in {:?}", started.elapsed());
    // A malformed envelope applies nothing.
    for bad in [
        json!({"updates": [{"user": format!("u1@{DOMAIN}"), "presence": "dnd"}], "extra": 1}),
        json!({"update": []}),
        json!({"updates": [1, 2]}),
        json!({"updates": (0..1001).map(|_| json!({})).collect::<Vec<_>>()}),
    ] {
        let (code, v) = call(&w.ext, "POST", "/v1/statuses", Some(bad)).await;
        assert_eq!(code, 400, "{v}");
    }
    assert_eq!(held(&w.ext).await, 997);
    let (_, v) = call(
        &w.ext,
        "GET",
        &format!("/v1/users/u1@{DOMAIN}/status"),
        None,
    )
    .await;
    assert_eq!(v["resources"][0]["effective"]["presence"], "away", "{v}");
}

/// Bad inputs of /v1 get their codes in the JSON error shape.
async fn bad_inputs(kind: Kind) {
    let w = world(kind, &["alice", "bob"]).await;
    let user = format!("/v1/users/alice@{DOMAIN}/status");
    for (body, code, error) in [
        (json!({"presence": "busy"}), 400, "invalid_presence"),
        (json!({"status": "x"}), 400, "invalid_presence"),
        (
            json!({"presence": "away", "source": "PBX"}),
            400,
            "invalid_source",
        ),
        (
            json!({"presence": "away", "expires_in": 2592001}),
            400,
            "invalid_expiry",
        ),
        (
            json!({"presence": "away", "expires_in": 5, "expires_at": "2030-01-01T00:00:00Z"}),
            400,
            "invalid_expiry",
        ),
        (
            json!({"presence": "away", "expires_at": "yesterday"}),
            400,
            "invalid_expiry",
        ),
        (
            json!({"presence": "away", "expires_at": "2001-01-01T00:00:00Z"}),
            400,
            "invalid_expiry",
        ),
        (
            json!({"presence": "away", "priority": 0}),
            400,
            "invalid_priority",
        ),
        (
            json!({"presence": "away", "priority": -1.5}),
            400,
            "invalid_priority",
        ),
        (
            json!({"presence": "away", "status": "a\u{7}b"}),
            400,
            "invalid_status",
        ),
        (
            json!({"presence": "away", "resource": ""}),
            400,
            "invalid_resource",
        ),
        (
            json!({"presence": "away", "mood": "x"}),
            400,
            "malformed_body",
        ),
    ] {
        let (got, v) = call(&w.ext, "PUT", &user, Some(body.clone())).await;
        assert_eq!(
            (got, v["error"]["code"].as_str()),
            (code, Some(error)),
            "{body}: {v}"
        );
    }
    // A time in the past is named so (it was "not in the next 2592000 seconds"), in a PUT and in
    // a bulk item; one too far ahead keeps its own message.
    let past = json!({"presence": "away", "expires_at": "2001-01-01T00:00:00Z"});
    let (got, v) = call(&w.ext, "PUT", &user, Some(past.clone())).await;
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        got == 400 && message.contains("\"2001-01-01T00:00:00Z\" is in the past"),
        "{v}"
    );
    let mut item = past.clone();
    item["user"] = json!(format!("alice@{DOMAIN}"));
    let (got, v) = call(
        &w.ext,
        "POST",
        "/v1/statuses",
        Some(json!({"updates": [item]})),
    )
    .await;
    let result = &v["results"][0];
    assert!(
        got == 200
            && result["error"]["code"] == "invalid_expiry"
            && result["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("is in the past")),
        "{v}"
    );
    let (got, v) = call(
        &w.ext,
        "PUT",
        &user,
        Some(json!({"presence": "away", "expires_at": "2999-01-01T00:00:00Z"})),
    )
    .await;
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        got == 400 && message.contains("is not in the next 2592000 seconds"),
        "{v}"
    );
    let (got, v) = call(
        &w.ext,
        "PUT",
        "/v1/users/alice@elsewhere.org/status",
        Some(json!({"presence": "away"})),
    )
    .await;
    assert_eq!(
        (got, v["error"]["code"].as_str()),
        (403, Some("domain_not_served"))
    );
    let (got, v) = call(
        &w.ext,
        "PUT",
        "/v1/users/not-a-jid/status",
        Some(json!({"presence": "away"})),
    )
    .await;
    assert_eq!(
        (got, v["error"]["code"].as_str()),
        (400, Some("invalid_jid"))
    );
    let (got, _) = request(w.ext.http, "GET", &user, &[], b"").await;
    assert_eq!(got, 401);
    let (got, text) = request(w.ext.http, "PATCH", &user, &[("Api-Key", API_KEY)], b"").await;
    assert_eq!(got, 405, "{text}");
}

scenarios!(
    vocabulary,
    sources_combine,
    tigase_and_v1_combine,
    expiry_is_durable,
    bulk_updates,
    bad_inputs,
);

/// A store written by the previous release (format 1, `tests/data/store-format1.redb.gz`) opens
/// and keeps every status as source `default`; the CR its text held is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_of_the_previous_release_is_upgraded() {
    let server = Server::start(Kind::Prosody).await;
    let mut ext = Ext::start(server.component_port(), DOMAIN, COMPONENT, SECRET).await;
    ext.terminate().await;
    let config = std::fs::read_to_string(&ext.config).unwrap();
    let store = config
        .lines()
        .find_map(|l| l.strip_prefix("path = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("store path")
        .to_string();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/store-format1.redb.gz"
    );
    let out = std::process::Command::new("gzip")
        .args(["-dc", fixture])
        .output()
        .expect("gzip");
    assert!(out.status.success());
    std::fs::write(&store, out.stdout).unwrap();
    ext.restart().await;
    ext.wait_log("status store upgraded from format 1 to 2")
        .await;
    let (_, v) = call(
        &ext,
        "GET",
        &format!("/v1/users/alice@{DOMAIN}/status"),
        None,
    )
    .await;
    let resources = v["resources"].as_array().unwrap();
    let find = |r: &str| {
        resources
            .iter()
            .find(|x| x["resource"] == r)
            .cloned()
            .unwrap_or_else(|| panic!("{r} in {v}"))
    };
    let external = find("tigase-external");
    assert_eq!(external["sources"][0]["source"], "default");
    assert_eq!(
        external["effective"],
        json!({"presence": "xa", "status": "On the phone", "source": "default", "priority": -1})
    );
    assert_eq!(
        find("desk")["effective"],
        json!({"presence": "dnd", "status": "line one\r\nline two", "source": "default", "priority": -5})
    );
    let (_, v) = call(&ext, "GET", &format!("/v1/users/bob@{DOMAIN}/status"), None).await;
    assert_eq!(v["resources"][0]["effective"]["presence"], "online", "{v}");
    // carol's cleared resource came back as a tombstone (its `unavailable` goes out at once:
    // carol has no contacts here), never as a status.
    let (_, v) = call(
        &ext,
        "GET",
        &format!("/v1/users/carol@{DOMAIN}/status"),
        None,
    )
    .await;
    assert_eq!(v["resources"], json!([]), "{v}");
}

/// The OpenAPI document, checked against the running service by schemathesis (positive and
/// negative cases of every operation): no failure, no 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_holds_against_the_service() {
    let server = Server::start(Kind::Prosody).await;
    server.register(&["alice"]).await;
    let mut ext = Ext::start(server.component_port(), DOMAIN, COMPONENT, SECRET).await;
    ext.wait_privileged(1).await;
    let st = concat!(env!("CARGO_MANIFEST_DIR"), "/target/venv/bin/schemathesis");
    assert!(
        std::path::Path::new(st).exists(),
        "{st} is missing: run scripts/install-deps.sh (the test command does)"
    );
    let url = format!("http://{}/v1/openapi.json", ext.http);
    let out = tokio::process::Command::new(st)
        .args([
            "run",
            &url,
            "--mode",
            "all",
            "--max-examples",
            "40",
            "--seed",
            "1",
            // An event stream never ends: a fuzzer would wait for ever (tests/read.rs tests it).
            "--exclude-path",
            "/v1/events",
        ])
        .args(["-H", &format!("Api-Key: {API_KEY}")])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .await
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "{}",
        report
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!ext.log().contains("panicked"), "{}", ext.log());
    ext.terminate().await;
}

/// The README's `/v1` examples, run as written (address, key and domain substituted; no date:
/// the calendar's end is computed, so the example does not stop working once a date passes)
/// against the real service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_examples_work() {
    let w = world(Kind::Prosody, &["alice", "bob"]).await;
    let block = common::readme_code("## Native API `/v1` (JSON)", "sh", 1);
    let block = block.as_str();
    let script = block
        .replace("http://127.0.0.1:8080", &format!("http://{}", w.ext.http))
        .replace("KEY", API_KEY)
        .replace("example.com", DOMAIN)
        .replace("curl ", "curl -sS -w '\\n' ");
    let answers = common::run_sh_json(&script).await;
    assert_eq!(answers.len(), 5, "{answers:?}");
    assert_eq!(answers[0]["effective"]["source"], "pbx");
    assert_eq!(
        answers[1]["effective"]["source"], "pbx",
        "the call still wins"
    );
    assert_eq!(answers[2]["effective"]["source"], "calendar");
    assert_eq!(
        answers[3]["resources"][0]["sources"][0]["source"],
        "calendar"
    );
    assert_eq!(
        answers[4]["results"][1]["error"]["code"],
        "invalid_presence"
    );
}

/// A wrong method on a `/v1` path (and the Tigase dialect's) answers 405 naming the method given
/// and the methods the path serves, in the body and in `Allow` (RFC 9110 §15.5.6) — not "use POST".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_names_the_allowed_ones() {
    let server = Server::start(Kind::Prosody).await;
    let mut ext = Ext::start(server.component_port(), DOMAIN, COMPONENT, SECRET).await;
    let http = reqwest::Client::new();
    for (method, path, allow) in [
        ("PUT", "/v1/tokens".to_string(), "GET, POST"),
        ("GET", "/v1/tokens/0123456789ab".to_string(), "DELETE"),
        (
            "PATCH",
            format!("/v1/users/alice@{DOMAIN}/status"),
            "GET, PUT, DELETE",
        ),
        ("GET", "/v1/statuses".to_string(), "POST"),
        ("DELETE", "/v1/openapi.json".to_string(), "GET"),
        ("PUT", format!("/v1/users/alice@{DOMAIN}/presence"), "GET"),
        ("GET", "/v1/presence/query".to_string(), "POST"),
        ("POST", "/v1/events".to_string(), "GET"),
        ("GET", format!("/rest/user/alice@{DOMAIN}/status"), "POST"),
    ] {
        let r = http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("http://{}{path}", ext.http),
            )
            .header("Api-Key", API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 405, "{method} {path}");
        assert_eq!(r.headers()["allow"], allow, "{method} {path}");
        let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(v["error"]["code"], "method_not_allowed", "{v}");
        assert_eq!(
            v["error"]["message"],
            format!("method {method} is not allowed here; allowed: {allow}"),
            "{method} {path}"
        );
    }
    ext.terminate().await;
}

/// The OpenAPI document is valid OpenAPI 3.1 for a strict validator (`openapi-spec-validator`:
/// a `$ref` to an undefined schema made it refuse the document), and a client generated from it
/// (`openapi-python-client`, into a temporary directory) sets and reads a status against the
/// running service with Prosody. Both tools are pinned in `tests/python/requirements.txt`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_is_valid_and_a_generated_client_works() {
    let server = Server::start(Kind::Prosody).await;
    server.register(&["alice"]).await;
    let mut ext = Ext::start(server.component_port(), DOMAIN, COMPONENT, SECRET).await;
    ext.wait_privileged(1).await;
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/venv/bin");
    let tool = |name: &str| {
        let path = format!("{venv}/{name}");
        assert!(
            std::path::Path::new(&path).exists(),
            "{path} is missing: run scripts/install-deps.sh (the test command does)"
        );
        path
    };
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("openapi.json");
    let (code, text) = request(ext.http, "GET", "/v1/openapi.json", &[], b"").await;
    assert_eq!(code, 200);
    std::fs::write(&doc, &text).unwrap();
    // Every keyed operation documents the rate limit's 429; the reads that may ask the server
    // for a roster document its 503.
    let parsed: Value = serde_json::from_str(&text).unwrap();
    for (path, item) in parsed["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let answers = op["responses"].as_object().unwrap();
            if answers.contains_key("401") {
                assert!(answers.contains_key("429"), "{method} {path}: no 429");
            }
        }
    }
    for path in [
        "/v1/users/{jid}/presence",
        "/v1/presence/query",
        "/v1/events",
    ] {
        let answers = parsed["paths"][path]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap();
        assert!(answers["responses"].get("503").is_some(), "{path}: no 503");
    }
    let run = |program: String, args: Vec<String>| async move {
        let out = tokio::process::Command::new(&program)
            .args(&args)
            // The generator runs ruff (from the venv) on what it wrote.
            .env(
                "PATH",
                format!("{venv}:{}", std::env::var("PATH").unwrap_or_default()),
            )
            .output()
            .await
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{program} {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let doc_path = doc.display().to_string();
    let said = run(tool("openapi-spec-validator"), vec![doc_path.clone()]).await;
    assert!(said.trim_end().ends_with("OK"), "{said}");
    let package = dir.path().join("extpresence_client").display().to_string();
    run(
        tool("openapi-python-client"),
        [
            "generate",
            "--path",
            &doc_path,
            "--output-path",
            &package,
            "--meta",
            "none",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/openapi_client.py"
    );
    let said = run(
        tool("python3"),
        vec![
            script.to_string(),
            dir.path().display().to_string(),
            format!("http://{}", ext.http),
            API_KEY.to_string(),
            format!("alice@{DOMAIN}"),
        ],
    )
    .await;
    let v: Value = serde_json::from_str(said.lines().last().unwrap_or("")).unwrap();
    assert_eq!(v["set"]["effective"]["source"], "pbx", "{v}");
    // What the generated client set is what the service holds.
    let (_, held) = call(
        &ext,
        "GET",
        &format!("/v1/users/alice@{DOMAIN}/status"),
        None,
    )
    .await;
    assert_eq!(
        held["resources"][0]["effective"]["status"], "On a call",
        "{held}"
    );
    ext.terminate().await;
}

/// Source names (issue 19): five bulk requests whose 5,000 items are all refused used to intern
/// 5,000 names and leave every new source refused for everyone. Now refused items take no name,
/// one credential brings in at most 64 names in use (`too_many_sources` beyond, others are not
/// affected), and clearing a status gives its name back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_names_cannot_be_used_up() {
    let w = world(Kind::Prosody, &["alice", "bob"]).await;
    let alice = format!("alice@{DOMAIN}");
    for round in 0..5 {
        let updates: Vec<Value> = (0..1000)
            .map(|i| json!({"user": alice, "presence": "away", "source": format!("n{round}x{i}"), "priority": 5}))
            .collect();
        let results = common::bulk_results(&w.ext, &updates).await;
        assert!(results.iter().all(|r| r["ok"] == false));
    }
    // A new source, and a clear of a new source, still work.
    put(
        &w.ext,
        &alice,
        json!({"presence": "away", "source": "after-attack", "resource": "r"}),
    )
    .await;
    let (code, v) = call(
        &w.ext,
        "DELETE",
        &format!("/v1/users/{alice}/status?resource=r&source=never-set"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{v}");

    // The admin key brings in 64 names in use (one is "after-attack"); the 65th is refused.
    let updates: Vec<Value> = (0..63)
        .map(|i| json!({"user": alice, "presence": "away", "source": format!("s{i}"), "resource": format!("r{i}")}))
        .collect();
    common::bulk(&w.ext, &updates).await;
    let (code, v) = call(
        &w.ext,
        "PUT",
        &format!("/v1/users/{alice}/status"),
        Some(json!({"presence": "away", "source": "one-more"})),
    )
    .await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (400, Some("too_many_sources")),
        "{v}"
    );
    // Names already in use are fine, and so is another credential's new name.
    put(
        &w.ext,
        &alice,
        json!({"presence": "dnd", "source": "s1", "resource": "r1"}),
    )
    .await;
    let token = common::mint_token(&w.ext, &alice, "write").await;
    let (code, text) = request(
        w.ext.http,
        "PUT",
        &format!("/v1/users/{alice}/status"),
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "application/json"),
        ],
        json!({"presence": "away", "source": "phone-app"})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(code, 200, "{text}");
    // Clearing a status gives its name back: the admin key may bring in a new one.
    let (code, v) = call(
        &w.ext,
        "DELETE",
        &format!("/v1/users/{alice}/status?resource=r0&source=s0"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{v}");
    put(
        &w.ext,
        &alice,
        json!({"presence": "away", "source": "one-more"}),
    )
    .await;
    w.ext
        .log()
        .contains("panicked")
        .then(|| panic!("{}", w.ext.log()));
}

/// Token times are RFC 3339 like every other `/v1` time (they were milliseconds since the epoch),
/// in the mint answer and the list; revoking an id that is not held is 404 `no_such_token`
/// ("no such token"), not the "no such endpoint" of a path that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_times_are_rfc3339_and_an_unknown_token_is_named() {
    let server = Server::start(Kind::Prosody).await;
    let mut ext = Ext::start(server.component_port(), DOMAIN, COMPONENT, SECRET).await;
    let time = |v: &Value, what: &str| {
        let text = v
            .as_str()
            .unwrap_or_else(|| panic!("{what} {v} is not a string"));
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|e| panic!("{what} {text:?}: {e}"))
            .timestamp_millis()
    };
    let before = extpresence::base::clock::now_ms() as i64;
    let (code, minted) = call(
        &ext,
        "POST",
        "/v1/tokens",
        Some(json!({"user": format!("alice@{DOMAIN}"), "access": "read", "expires_in": 3600})),
    )
    .await;
    assert_eq!(code, 201, "{minted}");
    let created = time(&minted["created_at"], "created_at");
    assert!(
        (before - 1000..=before + 60_000).contains(&created),
        "{minted}"
    );
    assert_eq!(
        time(&minted["expires_at"], "expires_at") - created,
        3_600_000,
        "{minted}"
    );
    let (code, never) = call(
        &ext,
        "POST",
        "/v1/tokens",
        Some(json!({"user": format!("alice@{DOMAIN}"), "access": "read"})),
    )
    .await;
    assert_eq!(code, 201, "{never}");
    assert!(never["expires_at"].is_null(), "{never}");
    time(&never["created_at"], "created_at");
    let (code, list) = call(&ext, "GET", "/v1/tokens", None).await;
    assert_eq!(code, 200, "{list}");
    let listed = &list["tokens"][0];
    assert_eq!(listed["id"], minted["id"], "{list}");
    assert_eq!(
        (&listed["created_at"], &listed["expires_at"]),
        (&minted["created_at"], &minted["expires_at"]),
        "{list}"
    );

    let (code, v) = call(&ext, "DELETE", "/v1/tokens/0123456789ab", None).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (404, Some("no_such_token")),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("no such token"), "{v}");
    assert!(message.contains("0123456789ab"), "{v}");
    // Revoked once: the second revocation names the token too.
    let id = minted["id"].as_str().unwrap();
    let (code, text) = request(
        ext.http,
        "DELETE",
        &format!("/v1/tokens/{id}"),
        &[("Api-Key", API_KEY)],
        b"",
    )
    .await;
    assert_eq!(code, 204, "{text}");
    let (code, v) = call(&ext, "DELETE", &format!("/v1/tokens/{id}"), None).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (404, Some("no_such_token")),
        "{v}"
    );
    // A path that does not exist is still "no such endpoint".
    let (code, v) = call(&ext, "DELETE", "/v1/tokens/0123456789ab/x", None).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    ext.terminate().await;
}
