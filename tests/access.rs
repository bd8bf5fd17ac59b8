//! Tier: one real server (Prosody, with real XMPP clients).
//!
//! Who may do what (issue 11), against a real Prosody with real XMPP clients: scoped keys
//! (`[[http.keys]]`), per-user tokens minted at run time (also after a restart, revoked at once),
//! and rate limits, in the Tigase dialect and `/v1`.
//!
//! alice and bob are mutual contacts; carol is nobody's. A second served domain
//! (`other.localhost`) has no users: scope checks come before anything reaches the server.

#[macro_use]
mod common;

use std::time::Duration;

use common::ext::{request, Ext, API_KEY};
use common::server::{Kind, Server};
use common::{COMPONENT, DOMAIN, SECRET};
use serde_json::{json, Value};

const TEAM_KEY: &str = "team-key-0123456789";
const READER_KEY: &str = "reader-key-0123456789";
const OTHER: &str = "other.localhost";

async fn start(server: &Server, tweak: impl FnOnce(String) -> String) -> Ext {
    let mut ext = Ext::start_with(server.component_port(), DOMAIN, COMPONENT, SECRET, |c| {
        let c = c
            .replace(
                &format!("domains = [\"{DOMAIN}\"]"),
                &format!("domains = [\"{DOMAIN}\", \"{OTHER}\"]"),
            )
            .replace(
                "[http]\n",
                &format!(
                    "[[http.keys]]\nkey = \"{TEAM_KEY}\"\nscope = {{ domains = [\"{DOMAIN}\"] }}\n\
                     access = \"write\"\nname = \"team\"\n\
                     [[http.keys]]\nkey = \"{READER_KEY}\"\nscope = \"admin\"\naccess = \"read\"\n\
                     name = \"dashboard\"\n\n[http]\n"
                ),
            );
        tweak(c)
    })
    .await;
    ext.wait_privileged(1).await;
    ext
}

async fn call(ext: &Ext, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = format!("Bearer {key}");
    let mut headers = vec![("Authorization", auth.as_str())];
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    let (code, text) = request(ext.http, method, path, &headers, body.as_bytes()).await;
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (code, v)
}

/// The Tigase dialect: set `user`'s default resource to `show`.
async fn tigase(ext: &Ext, key: &str, user: &str) -> (u16, Value) {
    call(
        ext,
        key,
        "POST",
        &format!("/rest/user/{user}/status"),
        Some(json!({"show": "dnd", "status": "tigase"})),
    )
    .await
}

async fn put(ext: &Ext, key: &str, user: &str) -> (u16, Value) {
    call(
        ext,
        key,
        "PUT",
        &format!("/v1/users/{user}/status"),
        Some(json!({"presence": "away"})),
    )
    .await
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

async fn world() -> Server {
    let server = Server::start(Kind::Prosody).await;
    server.register(&["alice", "bob", "carol"]).await;
    common::alice_and_bob_mutual(&server).await;
    server
}

/// Scoped keys: a domain key cannot touch another domain, a read key cannot write, a write key
/// cannot read — in both dialects; refusals are the dialect's 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_keys() {
    let server = world().await;
    let ext = start(&server, |c| c).await;
    let alice = format!("alice@{DOMAIN}");
    let stranger = format!("someone@{OTHER}");

    assert_eq!(tigase(&ext, TEAM_KEY, &alice).await.0, 200);
    assert_eq!(put(&ext, TEAM_KEY, &alice).await.0, 200);
    for (what, (status, v)) in [
        (
            "tigase other domain",
            tigase(&ext, TEAM_KEY, &stranger).await,
        ),
        ("v1 other domain", put(&ext, TEAM_KEY, &stranger).await),
        ("tigase read key", tigase(&ext, READER_KEY, &alice).await),
        ("v1 read key", put(&ext, READER_KEY, &alice).await),
        (
            "bulk read key",
            call(
                &ext,
                READER_KEY,
                "POST",
                "/v1/statuses",
                Some(json!({"updates": [{"user": alice, "presence": "away"}]})),
            )
            .await,
        ),
        (
            "write key reads",
            call(
                &ext,
                TEAM_KEY,
                "GET",
                &format!("/v1/users/{alice}/presence"),
                None,
            )
            .await,
        ),
        (
            "write key mints",
            call(
                &ext,
                TEAM_KEY,
                "POST",
                "/v1/tokens",
                Some(json!({"user": alice, "access": "read"})),
            )
            .await,
        ),
    ] {
        assert_eq!(status, 403, "{what}: {v}");
        assert_eq!(code(&v), "forbidden", "{what}: {v}");
    }
    // The Tigase dialect answers in its own format.
    let (status, body) = request(
        ext.http,
        "POST",
        &format!("/rest/user/{alice}/status"),
        &[("Api-Key", READER_KEY), ("Content-Type", "application/xml")],
        b"<command><available>true</available></command>",
    )
    .await;
    assert_eq!(status, 403);
    assert!(body.contains("<code>forbidden</code>"), "{body}");
    let (status, v) = call(
        &ext,
        READER_KEY,
        "GET",
        &format!("/v1/users/{alice}/presence"),
        None,
    )
    .await;
    assert_eq!((status, &v["presence"]), (200, &json!("away")), "{v}");

    // The Matrix dialect: the same scopes, Matrix's 403.
    let matrix = |id: &str| format!("/_matrix/client/v3/presence/{id}/status");
    let online = Some(json!({"presence": "online"}));
    let other = format!("@someone:{OTHER}");
    for (what, (status, v)) in [
        (
            "matrix read key",
            call(
                &ext,
                READER_KEY,
                "PUT",
                &matrix("@alice:localhost"),
                online.clone(),
            )
            .await,
        ),
        (
            "matrix other domain",
            call(&ext, TEAM_KEY, "PUT", &matrix(&other), online.clone()).await,
        ),
        (
            "matrix write key reads",
            call(&ext, TEAM_KEY, "GET", &matrix("@alice:localhost"), None).await,
        ),
    ] {
        assert_eq!(
            (status, v["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{what}: {v}"
        );
    }
    let (status, v) = call(&ext, TEAM_KEY, "PUT", &matrix("@alice:localhost"), online).await;
    assert_eq!(status, 200, "{v}");
}

/// Per-user tokens: minted by an admin key; alice's token writes alice (both dialects), not bob
/// (403); reads bob (her contact) but not carol; a revoked token fails at once; a token works
/// after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_tokens() {
    let server = world().await;
    let mut ext = start(&server, |c| c).await;
    let (alice, bob, carol) = (
        format!("alice@{DOMAIN}"),
        format!("bob@{DOMAIN}"),
        format!("carol@{DOMAIN}"),
    );
    let (status, minted) = call(
        &ext,
        API_KEY,
        "POST",
        "/v1/tokens",
        Some(json!({"user": alice, "access": "read-write", "name": "alice's phone"})),
    )
    .await;
    assert_eq!(status, 201, "{minted}");
    let token = minted["token"].as_str().unwrap().to_string();
    let id = minted["id"].as_str().unwrap().to_string();
    assert_eq!(minted["user"], alice);

    assert_eq!(tigase(&ext, &token, &alice).await.0, 200);
    assert_eq!(put(&ext, &token, &alice).await.0, 200);
    for (what, (status, v)) in [
        ("tigase bob", tigase(&ext, &token, &bob).await),
        ("v1 bob", put(&ext, &token, &bob).await),
        (
            "read carol",
            call(
                &ext,
                &token,
                "GET",
                &format!("/v1/users/{carol}/presence"),
                None,
            )
            .await,
        ),
        (
            "bob's contacts",
            call(
                &ext,
                &token,
                "GET",
                &format!("/v1/users/{bob}/contacts"),
                None,
            )
            .await,
        ),
        (
            "list tokens",
            call(&ext, &token, "GET", "/v1/tokens", None).await,
        ),
    ] {
        assert_eq!(status, 403, "{what}: {v}");
    }
    let (status, v) = call(
        &ext,
        &token,
        "GET",
        &format!("/v1/users/{bob}/presence"),
        None,
    )
    .await;
    assert_eq!(status, 200, "bob is alice's contact: {v}");
    let (status, v) = call(
        &ext,
        &token,
        "GET",
        &format!("/v1/users/{alice}/contacts"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");

    // Events: her own and her contacts', not carol's.
    let (status, v) = call(
        &ext,
        &token,
        "GET",
        &format!("/v1/events?user={carol}"),
        None,
    )
    .await;
    assert_eq!((status, code(&v)), (403, "forbidden"), "{v}");
    let (status, v) = call(
        &ext,
        &token,
        "GET",
        &format!("/v1/events?domain={DOMAIN}"),
        None,
    )
    .await;
    assert_eq!((status, code(&v)), (403, "forbidden"), "{v}");

    // The list never shows a secret.
    let (status, list) = call(&ext, API_KEY, "GET", "/v1/tokens", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["tokens"][0]["id"], id);
    assert!(!list.to_string().contains(token.split('.').nth(1).unwrap()));
    assert!(
        !ext.log().contains(token.split('.').nth(1).unwrap()),
        "the secret was logged"
    );

    // After a restart the token still works.
    ext.terminate().await;
    ext.restart().await;
    ext.wait_privileged(1).await;
    assert_eq!(
        put(&ext, &token, &alice).await.0,
        200,
        "minted token after a restart"
    );

    // Revoked: refused at once, in both dialects.
    let (status, _) = call(&ext, API_KEY, "DELETE", &format!("/v1/tokens/{id}"), None).await;
    assert_eq!(status, 204);
    assert_eq!(put(&ext, &token, &alice).await.0, 403);
    assert_eq!(tigase(&ext, &token, &alice).await.0, 403);
    let (status, v) = call(
        &ext,
        &token,
        "PUT",
        &format!("/_matrix/client/v3/presence/@alice:{DOMAIN}/status"),
        Some(json!({"presence": "online"})),
    )
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (401, Some("M_UNKNOWN_TOKEN")),
        "{v}"
    );
    let (status, _) = call(&ext, API_KEY, "DELETE", &format!("/v1/tokens/{id}"), None).await;
    assert_eq!(status, 404);
}

/// Rate limits: a burst over the limit gets 429 with `Retry-After` in each dialect; within the
/// limit nothing is refused; refusals are counted by key name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits() {
    let server = world().await;
    let ext = start(&server, |c| {
        c.replace("\nrate_per_sec = 1000000", "\nrate_per_sec = 5")
            .replace("\nrate_burst = 1000000", "\nrate_burst = 10")
    })
    .await;
    let alice = format!("alice@{DOMAIN}");
    // Within the limit: 10 at once, then 5 per second.
    for _ in 0..10 {
        assert_eq!(put(&ext, TEAM_KEY, &alice).await.0, 200);
    }
    let (status, v) = put(&ext, TEAM_KEY, &alice).await;
    assert_eq!((status, code(&v)), (429, "rate_limited"), "{v}");
    let (status, body) = request(
        ext.http,
        "POST",
        &format!("/rest/user/{alice}/status"),
        &[("Api-Key", TEAM_KEY), ("Content-Type", "application/json")],
        b"{}",
    )
    .await;
    assert_eq!(status, 429, "{body}");
    // Retry-After is in the head: ask again with a raw request to see it.
    let raw = format!(
        "PUT /v1/users/{alice}/status HTTP/1.1\r\nHost: t\r\nConnection: close\r\nApi-Key: {TEAM_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 20\r\n\r\n{{\"presence\":\"away\"}}"
    );
    let tigase_raw = format!(
        "POST /rest/user/{alice}/status HTTP/1.1\r\nHost: t\r\nConnection: close\r\nApi-Key: {TEAM_KEY}\r\n\
         Content-Type: application/xml\r\nContent-Length: 10\r\n\r\n<command/>"
    );
    let matrix_raw = format!(
        "PUT /_matrix/client/v3/presence/@alice:{DOMAIN}/status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
         Authorization: Bearer {TEAM_KEY}\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n\
         {{\"presence\":\"online\"}}"
    );
    for (dialect, raw, body) in [
        ("v1", raw, "\"code\":\"rate_limited\""),
        ("tigase", tigase_raw, "<code>rate_limited</code>"),
        ("matrix", matrix_raw, "\"errcode\":\"M_LIMIT_EXCEEDED\""),
    ] {
        let answer = raw_head(ext.http, raw.as_bytes()).await;
        let lower = answer.to_ascii_lowercase();
        assert!(lower.starts_with("http/1.1 429"), "{dialect}: {answer}");
        assert!(lower.contains("retry-after: 1"), "{dialect}: {answer}");
        assert!(answer.contains(body), "{dialect}: {answer}");
    }
    // Another key has its own bucket.
    assert_eq!(put(&ext, API_KEY, &alice).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..5 {
        assert_eq!(put(&ext, TEAM_KEY, &alice).await.0, 200, "refilled at 5/s");
    }
    let (_, metrics) = request(ext.http, "GET", "/metrics", &[], b"").await;
    assert!(
        metrics.contains("extpresence_http_rate_limited_total{key=\"team\"} 5"),
        "{metrics}"
    );
}

async fn raw_head(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

/// A client from `source` (127.0.0.2 is another address on lo: Linux routes all of 127/8 there).
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// Failed authentications are limited per client address, in every dialect at once: wrong keys
/// from one address get 429 (with `Retry-After`, in the dialect's format) after the bound, also
/// with a correct key then, while the admin's key from another address still works; successful
/// requests are not charged; the refused address is logged once (for fail2ban) and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_limited_per_address() {
    let server = world().await;
    let ext = start(&server, |c| c).await;
    let alice = format!("alice@{DOMAIN}");
    let base = format!("http://{}", ext.http);
    let attacker = client_from("127.0.0.1");
    let admin = client_from("127.0.0.2");
    let put_as = |c: &reqwest::Client, key: &str| {
        c.put(format!("{base}/v1/users/{alice}/status"))
            .bearer_auth(key)
            .header("Content-Type", "application/json")
            .body(json!({"presence": "away"}).to_string())
            .send()
    };
    // Successes are not charged: many, then the whole budget of failures is still there.
    for _ in 0..30 {
        assert_eq!(put_as(&attacker, API_KEY).await.unwrap().status(), 200);
    }
    // Ten wrong keys, spread over the dialects: each refused as wrong.
    let matrix = format!("{base}/_matrix/client/v3/presence/@alice:{DOMAIN}/status");
    for i in 0..10 {
        let key = format!("wrong-{i}");
        let r = match i % 4 {
            0 => put_as(&attacker, &key).await.unwrap(),
            1 => attacker
                .post(format!("{base}/rest/user/{alice}/status"))
                .header("Api-Key", &key)
                .header("Content-Type", "application/json")
                .body(json!({"show": "dnd"}).to_string())
                .send()
                .await
                .unwrap(),
            2 => attacker
                .put(&matrix)
                .bearer_auth(&key)
                .header("Content-Type", "application/json")
                .body(json!({"presence": "online"}).to_string())
                .send()
                .await
                .unwrap(),
            _ => attacker
                .post(format!(
                    "{base}/Agent/Xmpp/PresenceProbe?api-key={key}&user={alice}"
                ))
                .header("Content-Type", "application/json")
                .body(json!({"to": alice}).to_string())
                .send()
                .await
                .unwrap(),
        };
        assert!(
            matches!(r.status().as_u16(), 401 | 403),
            "wrong key {i}: {}",
            r.status()
        );
    }
    // Over the bound: 429 with Retry-After in each dialect, also for the right key.
    let r = put_as(&attacker, "wrong-again").await.unwrap();
    assert_eq!(r.status(), 429);
    let wait = common::retry_after(&r);
    assert!((1..=6).contains(&wait), "Retry-After {wait}");
    assert_eq!(
        code(&serde_json::from_str(&r.text().await.unwrap()).unwrap()),
        "rate_limited"
    );
    let r = put_as(&attacker, API_KEY).await.unwrap();
    assert_eq!(
        r.status(),
        429,
        "guessing stops: the right key is refused too"
    );
    let r = attacker
        .put(&matrix)
        .bearer_auth("wrong")
        .header("Content-Type", "application/json")
        .body(json!({"presence": "online"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["errcode"], "M_LIMIT_EXCEEDED", "{v}");
    assert!(v["retry_after_ms"].as_u64().unwrap() > 0, "{v}");
    let r = attacker
        .post(format!("{base}/rest/user/{alice}/status"))
        .header("Api-Key", "wrong")
        .header("Content-Type", "application/xml")
        .body("<command/>")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("<code>rate_limited</code>"));

    // The admin, from another address, is not affected.
    assert_eq!(put_as(&admin, API_KEY).await.unwrap().status(), 200);

    // Counted, and logged once (not once per refusal) in a line fail2ban can match.
    let (_, metrics) = request(ext.http, "GET", "/metrics", &[], b"").await;
    assert!(
        metrics.contains("extpresence_auth_failures_total{reason=\"wrong_key\"} 10\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("extpresence_auth_failures_total{reason=\"peer_limited\"} 4\n"),
        "{metrics}"
    );
    let log = ext.log();
    assert_eq!(
        log.matches("too many failed authentications from 127.0.0.1; ")
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains("from 127.0.0.2"), "{log}");
    // The README's fail2ban filter matches that line, with the address where <HOST> is.
    let filter = common::readme_code("## Access: keys, tokens, rate limits", "ini", 1);
    let failregex = filter
        .lines()
        .find_map(|l| l.strip_prefix("failregex = "))
        .expect("a failregex in the README's filter");
    let (before, after) = failregex.split_once("<HOST>").unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("{before}127.0.0.1{after}"))),
        "{failregex:?} matches no line: {log}"
    );
}

/// A base64 key (with `+`, `/`, `=`) in `?api-key=`: percent-encoded it works, in `/v1` and the
/// Tigase dialect; with a raw `+` (a space once decoded) it is refused 403 `invalid_api_key`
/// with a message saying to percent-encode the `+` as `%2B`; in a header it works as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base64_key_in_the_query_is_percent_encoded() {
    const B64_KEY: &str = "q6+Zk0/vT1xy+Vb8pLm3Ww==";
    let server = world().await;
    let ext = start(&server, |c| {
        c.replace(
            "[http]\n",
            &format!(
                "[[http.keys]]\nkey = \"{B64_KEY}\"\nscope = \"admin\"\naccess = \"read-write\"\n\
                 name = \"b64\"\n\n[http]\n"
            ),
        )
    })
    .await;
    let alice = format!("alice@{DOMAIN}");
    let json_body = [("Content-Type", "application/json")];
    let encoded = B64_KEY
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let (status, text) = request(
        ext.http,
        "PUT",
        &format!("/v1/users/{alice}/status?api-key={encoded}"),
        &json_body,
        br#"{"presence": "away"}"#,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, text) = request(
        ext.http,
        "POST",
        &format!(
            "/rest/user/{alice}/status?api-key={}",
            B64_KEY.replace('+', "%2B")
        ),
        &json_body,
        br#"{"show": "dnd"}"#,
    )
    .await;
    assert_eq!(status, 200, "only the '+' needs encoding: {text}");

    let (status, text) = request(
        ext.http,
        "GET",
        &format!("/v1/users/{alice}/status?api-key={B64_KEY}"),
        &[],
        b"",
    )
    .await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((status, code(&v)), (403, "invalid_api_key"), "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("a '+' in a query must be percent-encoded as %2B"),
        "{v}"
    );
    assert!(!message.contains("Zk0"), "the key is not echoed: {v}");
    // A wrong key with no space is refused without the hint.
    let (status, text) = request(
        ext.http,
        "GET",
        &format!("/v1/users/{alice}/status?api-key=nope"),
        &[],
        b"",
    )
    .await;
    assert!(status == 403 && !text.contains("%2B"), "{text}");
    let (status, text) = request(
        ext.http,
        "GET",
        &format!("/v1/users/{alice}/status"),
        &[("Api-Key", B64_KEY)],
        b"",
    )
    .await;
    assert_eq!(status, 200, "{text}");
}
