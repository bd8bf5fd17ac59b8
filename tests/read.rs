//! Tier: several real things (Prosody and ejabberd, XMPP clients, the httpx-sse client library).
//!
//! The read side against real Prosody and ejabberd with real XMPP clients: observed sessions,
//! the aggregated presence, contacts, and the event stream read by a real SSE client library
//! (httpx-sse, from `target/venv`).
//!
//! alice and bob are mutual contacts; carol is in alice's roster without a subscription.

#[macro_use]
mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::ext::{request, Ext, API_KEY};
use common::server::{Kind, Server};
use common::{subscribe_mutual, TestClient, COMPONENT, DOMAIN, SECRET};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::presence::{Presence, Show, Type as PresenceType};
use xmpp_parsers::roster::{Group, Item, Roster, Subscription};

const WAIT: Duration = Duration::from_secs(10);

use common::{call_json as call, presence, world};

async fn get_presence(ext: &Ext, user: &str) -> Value {
    let (code, v) = call(
        ext,
        "GET",
        &format!("/v1/users/{user}@{DOMAIN}/presence"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{v}");
    v
}

/// Poll `GET user` until `pred` holds (bounded), returning the last answer.
async fn presence_until(ext: &Ext, user: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = get_presence(ext, user).await;
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{user}: never {what}; last: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Scenario 1: bob's session as the server announces it: dnd "busy" at priority 5, then away,
/// then logged out by `unavailable` → offline with `last_active_ago` close to the time since.
async fn session_observed(kind: Kind) {
    let w = world(kind, &["alice", "bob"]).await;
    let port = w.server.c2s_port();
    let mut bob = TestClient::connect_as(port, "bob", Some("desk"), false).await;
    bob.send(presence(Some(Show::Dnd), "busy", 5)).await;
    let v = presence_until(&w.ext, "bob", "dnd", |v| v["presence"] == "dnd").await;
    assert_eq!(v["status"], "busy", "{v}");
    assert_eq!(v["currently_active"], true, "{v}");
    assert_eq!(v["user"], format!("bob@{DOMAIN}"));
    let r = &v["resources"][0];
    assert_eq!(r["resource"], "desk", "{v}");
    assert_eq!(r["origin"], "session", "{v}");
    assert_eq!(r["priority"], 5, "{v}");
    assert!(r["since"].is_string(), "{v}");
    assert!(v["last_active_ago"].as_u64().unwrap() < 5000, "{v}");
    // Prosody announces every session and logout; ejabberd 23.01 neither announces the sessions
    // online at connect nor a stream closed without `unavailable` (README "What the server tells").
    assert_eq!(v["complete"], kind == Kind::Prosody, "{v}");

    bob.send(presence(Some(Show::Away), "back soon", 5)).await;
    presence_until(&w.ext, "bob", "away", |v| {
        v["presence"] == "away" && v["status"] == "back soon"
    })
    .await;

    bob.send(Presence::new(PresenceType::Unavailable)).await;
    let gone = Instant::now();
    let v = presence_until(&w.ext, "bob", "offline", |v| v["presence"] == "offline").await;
    assert_eq!(v["currently_active"], false, "{v}");
    assert_eq!(v["resources"], json!([]), "{v}");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let v = get_presence(&w.ext, "bob").await;
    let ago = v["last_active_ago"]
        .as_u64()
        .expect("last_active_ago known");
    let since = gone.elapsed().as_millis() as u64;
    assert!(
        ago <= since + 200 && ago + 1000 >= since,
        "last_active_ago {ago} ms, logged out {since} ms ago: {v}"
    );
    bob.disconnect().await;
}

/// Scenario 1b: bob ends his session without `unavailable`: by closing the XML stream, and by
/// dropping the TCP connection. Prosody tells (offline); ejabberd 23.01 does not (the session
/// stays, `complete: false`), as measured.
async fn session_closed_without_unavailable(kind: Kind) {
    let w = world(kind, &["alice", "bob"]).await;
    let port = w.server.c2s_port();
    for (how, resource) in [("stream close", "closing"), ("TCP drop", "dropping")] {
        let mut bob = TestClient::connect_as(port, "bob", Some(resource), false).await;
        bob.send(presence(None, how, 1)).await;
        presence_until(&w.ext, "bob", "online", |v| {
            v["resources"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["resource"] == resource))
        })
        .await;
        if how == "stream close" {
            bob.disconnect().await;
        } else {
            bob.abort().await;
        }
        match kind {
            Kind::Prosody => {
                let v = presence_until(&w.ext, "bob", "without the session", |v| {
                    v["resources"]
                        .as_array()
                        .is_some_and(|r| !r.iter().any(|r| r["resource"] == resource))
                })
                .await;
                assert_eq!(v["complete"], true, "{how}: {v}");
                assert!(v["last_active_ago"].as_u64().unwrap() < 5000, "{v}");
            }
            Kind::Ejabberd => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let v = get_presence(&w.ext, "bob").await;
                assert!(
                    v["resources"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|r| r["resource"] == resource)),
                    "{how}: ejabberd 23.01 was measured not to tell; did it now? {v}"
                );
                assert_eq!(v["complete"], false, "{how}: {v}");
            }
        }
    }
}

/// Scenario 2: alice holds a synthetic dnd (priority -1) and has a real session online at
/// priority 0: the aggregate is her session; `resources` lists both with their origins.
async fn aggregate_session_and_synthetic(kind: Kind) {
    let w = world(kind, &["alice", "bob"]).await;
    let (code, v) = call(
        &w.ext,
        "PUT",
        &format!("/v1/users/alice@{DOMAIN}/status"),
        Some(json!({"presence": "dnd", "status": "On a call", "source": "pbx"})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let v = get_presence(&w.ext, "alice").await;
    assert_eq!(
        (&v["presence"], &v["status"]),
        (&json!("dnd"), &json!("On a call")),
        "{v}"
    );
    assert_eq!(v["currently_active"], false, "{v}");
    let r = &v["resources"][0];
    assert_eq!(r["origin"], "extpresence", "{v}");
    assert_eq!(r["sources"], json!(["pbx"]), "{v}");
    assert_eq!(r["priority"], -1, "{v}");

    let mut alice =
        TestClient::connect_as(w.server.c2s_port(), "alice", Some("laptop"), false).await;
    alice.send(presence(None, "at my desk", 0)).await;
    let v = presence_until(&w.ext, "alice", "online", |v| v["presence"] == "online").await;
    assert_eq!(v["status"], "at my desk", "{v}");
    assert_eq!(v["currently_active"], true, "{v}");
    let origins: Vec<(&str, &str)> = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["resource"].as_str().unwrap(),
                r["origin"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        origins,
        [("laptop", "session"), ("tigase-external", "extpresence")],
        "{v}"
    );
    // The query endpoint answers the same objects.
    let (code, q) = call(
        &w.ext,
        "POST",
        "/v1/presence/query",
        Some(json!({"users": [format!("alice@{DOMAIN}"), format!("nobody@{DOMAIN}")]})),
    )
    .await;
    assert_eq!(code, 200, "{q}");
    assert_eq!(q["presence"][0]["presence"], "online", "{q}");
    assert_eq!(q["presence"][1]["presence"], "offline", "{q}");
    assert_eq!(q["presence"][1]["resources"], json!([]), "{q}");
    let (code, e) = call(
        &w.ext,
        "POST",
        "/v1/presence/query",
        Some(json!({"users": ["alice@elsewhere.example"]})),
    )
    .await;
    assert_eq!(
        (code, &e["error"]["code"]),
        (403, &json!("domain_not_served")),
        "{e}"
    );
    alice.disconnect().await;
}

/// alice puts carol in her roster ("Carol", group "Friends") without a subscription.
async fn add_carol(alice: &mut TestClient) {
    let item = Item {
        jid: format!("carol@{DOMAIN}").parse().unwrap(),
        name: Some("Carol".into()),
        subscription: Subscription::None,
        ask: Default::default(),
        groups: vec![Group("Friends".into())],
        approved: None,
    };
    let set = Iq::from_set(
        "add-carol",
        Roster {
            ver: None,
            items: vec![item],
        },
    );
    alice.send(set).await;
}

/// Scenario 3: alice's contacts: bob (both) with his presence as alice sees it; carol (in the
/// roster, no subscription) without.
async fn contacts(kind: Kind) {
    let w = world(kind, &["alice", "bob", "carol"]).await;
    let port = w.server.c2s_port();
    let mut alice = TestClient::connect(port, "alice", false).await;
    add_carol(&mut alice).await;
    let mut bob = TestClient::connect_as(port, "bob", Some("phone"), false).await;
    bob.send(presence(Some(Show::Xa), "gone fishing", 0)).await;
    let mut carol = TestClient::connect(port, "carol", false).await;
    carol.send(presence(None, "carol is here", 0)).await;
    presence_until(&w.ext, "bob", "xa", |v| v["presence"] == "xa").await;
    presence_until(&w.ext, "carol", "online", |v| v["presence"] == "online").await;

    let deadline = Instant::now() + WAIT;
    let v = loop {
        let (code, v) = call(
            &w.ext,
            "GET",
            &format!("/v1/users/alice@{DOMAIN}/contacts"),
            None,
        )
        .await;
        assert_eq!(code, 200, "{v}");
        if v["contacts"].as_array().is_some_and(|c| c.len() == 2) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "carol never in alice's roster: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let find = |jid: &str| {
        v["contacts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["jid"] == format!("{jid}@{DOMAIN}"))
            .unwrap_or_else(|| panic!("{jid} not in {v}"))
            .clone()
    };
    let b = find("bob");
    assert_eq!(b["subscription"], "both", "{v}");
    assert_eq!(b["presence"]["presence"], "xa", "{v}");
    assert_eq!(b["presence"]["status"], "gone fishing", "{v}");
    assert!(b["presence"]["received"].is_string(), "{v}");
    assert_eq!(b["presence"]["resources"][0]["resource"], "phone", "{v}");
    let c = find("carol");
    assert_eq!(c["subscription"], "none", "{v}");
    assert_eq!(c["name"], "Carol", "{v}");
    assert_eq!(c["groups"], json!(["Friends"]), "{v}");
    assert!(
        c.get("presence").is_none(),
        "carol's presence is not alice's to see: {v}"
    );
    for c in [alice, bob, carol] {
        c.disconnect().await;
    }
}

/// ejabberd with `[observe] ejabberd_api`: its admin API (mod_http_api `connected_users_info`)
/// fills both gaps: a session online before extpresence connected is known, and sessions ended
/// without `unavailable` (stream close, TCP drop) go; `complete` is true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_admin_api_closes_the_gaps() {
    let e = common::ejabberd::Ejabberd::start_with_session_api(DOMAIN, COMPONENT, SECRET).await;
    e.register(&["alice", "bob"], common::PASSWORD).await;
    let api = e.api_port.expect("API port");
    let mut early = TestClient::connect_as(e.c2s_port, "bob", Some("early"), false).await;
    early.send(presence(Some(Show::Dnd), "busy", 5)).await;
    let mut ext = Ext::start_with(e.component_port, DOMAIN, COMPONENT, SECRET, |c| {
        format!("{c}\n[observe]\nejabberd_api = \"http://127.0.0.1:{api}/api\"\nejabberd_api_poll_secs = 1\n")
    })
    .await;
    ext.wait_privileged(1).await;
    let v = presence_until(&ext, "bob", "known from the API", |v| {
        v["presence"] == "dnd" && v["complete"] == true
    })
    .await;
    assert_eq!(v["status"], "busy", "{v}");
    assert_eq!(v["resources"][0]["resource"], "early", "{v}");
    assert_eq!(v["resources"][0]["priority"], 5, "{v}");

    // A stream closed without `unavailable`, then a dropped connection: gone within a poll.
    early.disconnect().await;
    let closed = Instant::now();
    let v = presence_until(&ext, "bob", "offline after the stream close", |v| {
        v["presence"] == "offline"
    })
    .await;
    assert_eq!(v["complete"], true, "{v}");
    eprintln!("stream close noticed after {:?}", closed.elapsed());
    let mut late = TestClient::connect_as(e.c2s_port, "bob", Some("late"), false).await;
    late.send(presence(None, "here", 0)).await;
    presence_until(&ext, "bob", "online", |v| v["presence"] == "online").await;
    late.abort().await;
    presence_until(&ext, "bob", "offline after the TCP drop", |v| {
        v["presence"] == "offline"
    })
    .await;
    assert!(
        ext.log().contains("observed sessions complete"),
        "{}",
        ext.log()
    );
    ext.terminate().await;
}

/// An SSE subscriber: tests/python/sse_client.py (httpx-sse) as a child process.
struct Subscriber {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Subscriber {
    async fn connect(ext: &Ext, query: &str, last_event_id: Option<&str>) -> Subscriber {
        Subscriber::connect_as(ext, API_KEY, query, last_event_id).await
    }

    /// [`connect`](Self::connect) with credential `key`.
    async fn connect_as(
        ext: &Ext,
        key: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Subscriber {
        let python = concat!(env!("CARGO_MANIFEST_DIR"), "/target/venv/bin/python");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/sse_client.py");
        assert!(
            std::path::Path::new(python).exists(),
            "{python} is missing: run scripts/install-deps.sh (the test command does)"
        );
        let mut cmd = tokio::process::Command::new(python);
        cmd.arg(script)
            .arg(format!("http://{}/v1/events{query}", ext.http))
            .arg(key)
            .args(last_event_id)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("run sse_client.py");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut s = Subscriber { child, lines };
        let first = s.line().await;
        assert_eq!(first, "connected", "SSE client did not connect");
        s
    }

    async fn line(&mut self) -> String {
        match tokio::time::timeout(WAIT, self.lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            other => panic!("SSE client: no line within {WAIT:?}: {other:?}"),
        }
    }

    async fn event(&mut self) -> Value {
        let l = self.line().await;
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("SSE client line {l:?}: {e}"))
    }

    /// Nothing more arrives within `window`.
    async fn quiet(&mut self, window: Duration) {
        if let Ok(l) = tokio::time::timeout(window, self.lines.next_line()).await {
            panic!("SSE client: unexpected {l:?}");
        }
    }

    async fn close(mut self) {
        drop(self.child.stdin.take());
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
    }
}

/// Scenario 4: a subscriber filtered on alice sees, in order: a /v1 set, its expiry, (not bob's
/// login), a Tigase-dialect clear. Resuming with `Last-Event-ID` gives exactly the missed
/// events; resuming after a restart of extpresence gives `reset`.
async fn event_stream(kind: Kind) {
    let mut w = world(kind, &["alice", "bob"]).await;
    let alice = format!("alice@{DOMAIN}");
    let filter = format!("?user={alice}");
    // Held before the subscriber connects: what the Tigase-dialect clear removes at the end.
    w.ext
        .post_ok(
            &format!("/rest/user/{alice}/status"),
            "application/json",
            r#"{"show": "chat"}"#,
        )
        .await;
    let mut sse = Subscriber::connect(&w.ext, &filter, None).await;

    let (code, v) = call(
        &w.ext,
        "PUT",
        &format!("/v1/users/{alice}/status"),
        Some(json!({"presence": "away", "status": "Lunch", "source": "calendar", "expires_in": 2})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    let set = sse.event().await;
    assert_eq!(set["event"], "presence", "{set}");
    assert_eq!(set["data"]["cause"], "status", "{set}");
    assert_eq!(set["data"]["user"], alice, "{set}");
    assert_eq!(set["data"]["presence"], "away", "{set}");
    assert!(set["data"]["at"].is_string(), "{set}");

    let expiry = sse.event().await;
    assert_eq!(expiry["data"]["cause"], "expiry", "{expiry}");
    assert_eq!(expiry["data"]["presence"], "chat", "{expiry}");

    let bob = TestClient::connect(w.server.c2s_port(), "bob", true).await;
    presence_until(&w.ext, "bob", "online", |v| v["presence"] == "online").await;

    w.ext
        .post_ok(
            &format!("/rest/user/{alice}/status"),
            "application/json",
            r#"{"available": false}"#,
        )
        .await;
    let clear = sse.event().await;
    assert_eq!(clear["data"]["cause"], "status", "{clear}");
    assert_eq!(
        clear["data"]["user"], alice,
        "bob's login passed the filter? {clear}"
    );
    assert_eq!(clear["data"]["presence"], "offline", "{clear}");
    sse.quiet(Duration::from_millis(500)).await;

    let ids: Vec<u64> = [&set, &expiry, &clear]
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids not increasing: {ids:?}"
    );
    sse.close().await;

    // Resume after the first: exactly the two missed events.
    let mut again = Subscriber::connect(&w.ext, &filter, Some(&ids[0].to_string())).await;
    assert_eq!(again.event().await, expiry);
    assert_eq!(again.event().await, clear);
    again.quiet(Duration::from_millis(500)).await;
    again.close().await;

    // After a restart the buffer is gone: reset, then live events go on.
    w.ext.terminate().await;
    w.ext.restart().await;
    w.ext.wait_privileged(1).await;
    let mut after = Subscriber::connect(&w.ext, &filter, Some(&ids[2].to_string())).await;
    let reset = after.event().await;
    assert_eq!(reset["event"], "reset", "{reset}");
    call(
        &w.ext,
        "PUT",
        &format!("/v1/users/{alice}/status"),
        Some(json!({"presence": "dnd"})),
    )
    .await;
    let next = after.event().await;
    assert_eq!(next["data"]["presence"], "dnd", "{next}");
    let id: u64 = next["id"].as_str().unwrap().parse().unwrap();
    assert!(
        id > ids[2],
        "ids must keep increasing across a restart: {id} after {}",
        ids[2]
    );
    after.close().await;
    bob.disconnect().await;
}

/// A token's public id (`ept_<id>.<secret>`).
fn token_id(token: &str) -> &str {
    token
        .strip_prefix("ept_")
        .and_then(|t| t.split_once('.'))
        .expect("a token")
        .0
}

/// A user token's open event stream ends as soon as the token is revoked, and when it expires
/// (at the expiry time, with no event to wake it), and delivers nothing after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_or_expired_token_ends_its_event_stream() {
    let mut w = world(Kind::Prosody, &["alice", "bob"]).await;
    let alice = format!("alice@{DOMAIN}");
    let set = |status: &'static str| {
        let ext = &w.ext;
        let alice = alice.clone();
        async move {
            let (code, v) = call(
                ext,
                "PUT",
                &format!("/v1/users/{alice}/status"),
                Some(json!({"presence": "away", "status": status})),
            )
            .await;
            assert_eq!(code, 200, "{v}");
        }
    };

    // Revoked: the stream (alice and her contacts, no filter) ends at once.
    let token = common::mint_token(&w.ext, &alice, "read").await;
    let mut sse = Subscriber::connect_as(&w.ext, &token, "", None).await;
    set("before revocation").await;
    assert_eq!(sse.event().await["data"]["status"], "before revocation");
    let (code, text) = request(
        w.ext.http,
        "DELETE",
        &format!("/v1/tokens/{}", token_id(&token)),
        &[("Api-Key", API_KEY)],
        b"",
    )
    .await;
    assert_eq!(code, 204, "{text}");
    let revoked = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(2), sse.line())
        .await
        .expect("the revoked token's stream still open after 2 s");
    assert_eq!(end, "end", "delivered after revocation");
    eprintln!("stream ended {:?} after the revocation", revoked.elapsed());
    sse.close().await;

    // Expired: minted for 3 s; the stream ends at the expiry, though nothing happens then.
    let (code, text) = request(
        w.ext.http,
        "POST",
        "/v1/tokens",
        &[("Api-Key", API_KEY), ("Content-Type", "application/json")],
        json!({"user": alice, "access": "read", "expires_in": 3})
            .to_string()
            .as_bytes(),
    )
    .await;
    let minted = Instant::now();
    assert_eq!(code, 201, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let token = v["token"].as_str().unwrap();
    let mut sse = Subscriber::connect_as(&w.ext, token, "", None).await;
    set("before expiry").await;
    assert_eq!(sse.event().await["data"]["status"], "before expiry");
    let end = sse.line().await;
    let took = minted.elapsed();
    assert_eq!(end, "end", "delivered before the expiry ended the stream");
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_millis(4500),
        "the stream of a token minted for 3 s ended after {took:?}"
    );
    sse.close().await;
    w.ext.terminate().await;
}

/// One stream follows at most 10,000 users. A user token with no filter follows its user and
/// the contacts it sees: alice with 10,000 contacts (10,001 users) is refused with 400
/// `too_many_users`, not served a stream that silently misses some. (`?user=` cannot name that
/// many: the request target is limited to 64 KiB; 2,000 are served.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_follows_at_most_10000_users() {
    let prosody = common::Prosody::start().await;
    prosody.register(&["alice"]).await;
    // alice's roster as Prosody stores it (internal storage), read through XEP-0356.
    let mut roster =
        String::from("return {\n[false] = { [\"version\"] = 1; [\"pending\"] = {}; };\n");
    for i in 0..10_000 {
        roster.push_str(&format!(
            "[\"c{i}@{DOMAIN}\"] = {{ [\"subscription\"] = \"both\"; [\"groups\"] = {{}}; }};\n"
        ));
    }
    roster.push_str("};\n");
    let dir = prosody.dir.path().join(format!("data/{DOMAIN}/roster"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("alice.dat"), roster).unwrap();
    let mut ext = Ext::start(prosody.component_port, DOMAIN, COMPONENT, SECRET).await;
    ext.wait_privileged(1).await;

    let token = common::mint_token(&ext, &format!("alice@{DOMAIN}"), "read").await;
    let (code, text) = request(ext.http, "GET", "/v1/events", &[("Api-Key", &token)], b"").await;
    assert_eq!(code, 400, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "too_many_users", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("10001"),
        "{v}"
    );

    let users: Vec<String> = (0..2000).map(|i| format!("user=u{i}@{DOMAIN}")).collect();
    let mut s = raw_subscribe(ext.http, &format!("?{}", users.join("&")), None).await;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let head = tokio::time::timeout(WAIT, async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(head.is_ok(), "no answer");
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    drop(s);
    ext.terminate().await;
}

/// An open event stream is a request in flight, not an idle connection: more sockets that never
/// send anything than the connection cap (8 here) do not close it; they are the ones closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_outlives_silent_sockets_over_the_cap() {
    let server = Server::start(Kind::Prosody).await;
    server.register(&["alice"]).await;
    let mut ext = Ext::start_with(server.component_port(), DOMAIN, COMPONENT, SECRET, |c| {
        c.replace("[http]\n", "[http]\nmax_connections = 8\n")
    })
    .await;
    ext.wait_privileged(1).await;
    let alice = format!("alice@{DOMAIN}");
    let mut stream = raw_subscribe(ext.http, &format!("?user={alice}"), None).await;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut read_until = async |s: &mut TcpStream, needle: &[u8], got: &mut Vec<u8>| {
        tokio::time::timeout(WAIT, async {
            while !got.windows(needle.len()).any(|w| w == needle) {
                let n = s.read(&mut buf).await.expect("read");
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(got));
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{:?} never came", String::from_utf8_lossy(needle)))
    };
    read_until(&mut stream, b"\r\n\r\n", &mut got).await;
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );

    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(ext.http).await.expect("connect"));
    }
    // The first silent socket is closed to make room (EOF or reset, no data).
    let mut first = silent.remove(0);
    let mut byte = [0u8; 1];
    match tokio::time::timeout(WAIT, first.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        other => panic!("the first silent socket was not closed: {other:?}"),
    }
    assert!(
        metric(
            &ext,
            "extpresence_http_connection_cap_total{event=\"evicted\"}"
        )
        .await
            >= 12.0
    );
    // The stream is open and delivers.
    let (code, v) = call(
        &ext,
        "PUT",
        &format!("/v1/users/{alice}/status"),
        Some(json!({"presence": "away", "status": "still streaming"})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    read_until(&mut stream, b"still streaming", &mut got).await;
    drop(silent);
    ext.terminate().await;
}

/// Open an event stream on a raw socket (for many subscribers; the library client is above).
async fn raw_subscribe(
    addr: std::net::SocketAddr,
    query: &str,
    recv_buffer: Option<u32>,
) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let mut s = socket.connect(addr).await.expect("connect");
    s.write_all(
        format!("GET /v1/events{query} HTTP/1.1\r\nHost: t\r\nApi-Key: {API_KEY}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    s
}

/// Scenario 5: 1,000 subscribers, one of which never reads. A flood of 20,000 events later, the
/// 999 others and alice's contact get alice's next change at once; the stuck one, when it reads
/// at last, finds `event: reset` and the end of the stream, not the whole flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_subscriber_is_reset_and_slows_nobody() {
    // 1,000 sockets here and there: raise this process's descriptor limit (root, as in CI).
    let me = std::process::id().to_string();
    let raised = std::process::Command::new("prlimit")
        .args(["--pid", &me, "--nofile=8192:8192"])
        .status()
        .expect("run prlimit");
    assert!(
        raised.success(),
        "prlimit --pid {me} failed (the tests run as root)"
    );
    let server = Server::start(Kind::Prosody).await;
    let users: Vec<String> = ["alice", "bob"].iter().map(|s| s.to_string()).collect();
    server.register(&["alice", "bob"]).await;
    let port = server.c2s_port();
    let mut alice = TestClient::connect(port, "alice", true).await;
    let mut bob = TestClient::connect(port, "bob", true).await;
    subscribe_mutual(&mut alice, &mut bob).await;
    alice.disconnect().await;
    drop(users);
    let mut ext = Ext::start_launched(
        server.component_port(),
        DOMAIN,
        COMPONENT,
        SECRET,
        |c| c.replace("[http]\n", "[http]\nmax_connections = 2000\n"),
        Vec::new(),
        vec!["prlimit".into(), "--nofile=4096:4096".into()],
    )
    .await;
    ext.wait_privileged(1).await;
    let addr = ext.http;
    let alice_jid = format!("alice@{DOMAIN}");

    let stuck = raw_subscribe(addr, "", Some(4096)).await;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut readers = Vec::new();
    for chunk in (0..999).collect::<Vec<_>>().chunks(50) {
        for _ in chunk {
            let mut s = raw_subscribe(addr, &format!("?user={alice_jid}"), None).await;
            let seen = seen_tx.clone();
            readers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            got.extend_from_slice(&buf[..n]);
                            if got.windows(12).any(|w| w == b"final change") {
                                let _ = seen.send(Instant::now());
                                return;
                            }
                        }
                    }
                }
            }));
        }
    }
    drop(seen_tx);
    // Every subscriber is registered with the hub before the flood.
    let deadline = Instant::now() + WAIT;
    while metric(&ext, "extpresence_event_subscribers").await < 1000.0 {
        assert!(
            Instant::now() < deadline,
            "1,000 subscribers never connected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The flood: 20 bulk commits of 1,000 changes each (other users than alice).
    for round in 0..20 {
        let updates: Vec<Value> = (0..1000)
            .map(|i| json!({"user": format!("u{i}@{DOMAIN}"), "presence": "away", "status": format!("round {round}")}))
            .collect();
        let (code, v) = call(
            &ext,
            "POST",
            "/v1/statuses",
            Some(json!({"updates": updates})),
        )
        .await;
        assert_eq!(code, 200, "{v}");
    }
    let started = Instant::now();
    let (code, v) = call(
        &ext,
        "PUT",
        &format!("/v1/users/{alice_jid}/status"),
        Some(json!({"presence": "dnd", "status": "final change"})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    bob.expect_presence(WAIT, |p| p.statuses.values().any(|s| s == "final change"))
        .await;
    let to_contact = started.elapsed();
    let mut n = 0;
    let mut last = started;
    while let Ok(Some(at)) = tokio::time::timeout(WAIT, seen_rx.recv()).await {
        n += 1;
        last = last.max(at);
    }
    assert_eq!(n, 999, "not every reading subscriber got alice's change");
    let to_all = last - started;
    eprintln!(
        "alice's change after the flood: contact {to_contact:?}, all 999 subscribers {to_all:?}"
    );
    assert!(to_all < Duration::from_secs(10), "{to_all:?}");

    // The stuck one reads at last: the start of the flood, then `reset`, then the end.
    let mut stuck = stuck;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stuck.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stuck subscriber's stream did not end");
    let text = String::from_utf8_lossy(&got);
    let events = text.matches("event: presence").count();
    assert!(
        text.contains("event: reset"),
        "no reset in {} bytes",
        got.len()
    );
    assert!(
        events < 20_000,
        "the stuck subscriber got the whole flood ({events} events)"
    );
    assert!(
        !text.contains("final change"),
        "the stuck subscriber was not cut off"
    );
    eprintln!("stuck subscriber: {events} events, then reset");
    for r in readers {
        r.abort();
    }
    bob.disconnect().await;
    ext.terminate().await;
}

/// The `sh` blocks of the README section `title`, with the address, key and domain substituted.
fn readme_block(title: &str, nth: usize, ext: &Ext) -> String {
    common::readme_code(title, "sh", nth)
        .replace("http://127.0.0.1:8080", &format!("http://{}", ext.http))
        .replace("KEY", API_KEY)
        .replace("example.com", DOMAIN)
}

/// The README's read-side examples, run as written against the real service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_examples_work() {
    let w = world(Kind::Prosody, &["alice", "bob", "carol"]).await;
    let port = w.server.c2s_port();
    let mut alice = TestClient::connect_as(port, "alice", Some("laptop"), false).await;
    alice.send(presence(None, "at my desk", 0)).await;
    add_carol(&mut alice).await;
    let mut bob = TestClient::connect_as(port, "bob", Some("phone"), false).await;
    bob.send(presence(Some(Show::Xa), "gone fishing", 0)).await;
    call(
        &w.ext,
        "PUT",
        &format!("/v1/users/alice@{DOMAIN}/status"),
        Some(json!({"presence": "dnd", "status": "On a call", "source": "pbx"})),
    )
    .await;
    presence_until(&w.ext, "bob", "xa", |v| v["presence"] == "xa").await;
    presence_until(&w.ext, "alice", "online", |v| v["presence"] == "online").await;

    let title = "## Reading presence, contacts and events (`/v1`)";
    let script = readme_block(title, 1, &w.ext).replace("curl ", "curl -sS -w '\\n' ");
    let answers = common::run_sh_json(&script).await;
    assert_eq!(answers.len(), 3, "{answers:?}");
    let a = &answers[0];
    assert_eq!(
        (&a["presence"], &a["status"]),
        (&json!("online"), &json!("at my desk")),
        "{a}"
    );
    assert_eq!(a["resources"][1]["sources"], json!(["pbx"]), "{a}");
    assert_eq!(answers[1]["presence"][1]["presence"], "xa", "{answers:?}");
    let contacts = answers[2]["contacts"].as_array().expect("contacts");
    assert!(
        contacts
            .iter()
            .any(|c| c["jid"] == format!("bob@{DOMAIN}")
                && c["presence"]["status"] == "gone fishing"),
        "{answers:?}"
    );

    // The event stream example, cut after 3 s, while alice's status changes.
    let script = readme_block(title, 2, &w.ext).replace("curl -N ", "curl -sS -N --max-time 3 ");
    let sse = tokio::process::Command::new("bash")
        .args(["-uo", "pipefail", "-c", &script])
        .output();
    let change = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        call(
            &w.ext,
            "PUT",
            &format!("/v1/users/alice@{DOMAIN}/status"),
            Some(json!({"presence": "away", "status": "Lunch", "source": "calendar"})),
        )
        .await
    };
    let (out, (code, _)) = tokio::join!(sse, change);
    assert_eq!(code, 200);
    let text = String::from_utf8_lossy(&out.expect("bash").stdout).to_string();
    assert!(text.contains("event: presence"), "{text}");
    assert!(text.contains("\"cause\":\"status\""), "{text}");
    assert!(
        text.contains("Lunch") || text.contains("at my desk"),
        "{text}"
    );
    alice.disconnect().await;
    bob.disconnect().await;
}

async fn metric(ext: &Ext, name: &str) -> f64 {
    let (code, text) = request(ext.http, "GET", "/metrics", &[], b"").await;
    assert_eq!(code, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

scenarios!(
    session_observed,
    session_closed_without_unavailable,
    aggregate_session_and_synthetic,
    contacts,
    event_stream,
);

/// `POST /v1/presence/query` names each user once (19 KB naming alice 1,000 times answered
/// 215 MB): a repeat is refused with 400 `duplicate_user`. Its answer is at most 8 MiB: 1,000
/// users with two statuses of 1,024 four-byte characters each (about 12 MB) are refused with 400
/// `answer_too_large`; 100 of them are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_query_names_each_user_once_and_is_bounded() {
    let server = Server::start(Kind::Prosody).await;
    server.register(&["alice", "bob"]).await;
    let mut ext = Ext::start(server.component_port(), DOMAIN, COMPONENT, SECRET).await;
    ext.wait_privileged(1).await;
    let alice = format!("alice@{DOMAIN}");
    let bob = format!("bob@{DOMAIN}");
    let (code, v) = call(
        &ext,
        "POST",
        "/v1/presence/query",
        Some(json!({"users": [alice, bob, alice]})),
    )
    .await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (400, Some("duplicate_user")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("users[2] repeats users[0]"),
        "{v}"
    );
    let (code, v) = call(
        &ext,
        "POST",
        "/v1/presence/query",
        Some(json!({"users": vec![alice.clone(); 1000]})),
    )
    .await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (400, Some("duplicate_user")),
        "{v}"
    );

    let text = "\u{1F600}".repeat(1024);
    let items: Vec<Value> = (0..1000)
        .flat_map(|i| {
            let text = text.clone();
            (0..2).map(move |r| {
                json!({"user": format!("u{i}@{DOMAIN}"), "presence": "away",
                       "status": text, "resource": format!("r{r}")})
            })
        })
        .collect();
    for chunk in items.chunks(200) {
        common::bulk(&ext, chunk).await;
    }
    let users: Vec<String> = (0..1000).map(|i| format!("u{i}@{DOMAIN}")).collect();
    let (code, v) = call(
        &ext,
        "POST",
        "/v1/presence/query",
        Some(json!({ "users": users })),
    )
    .await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (400, Some("answer_too_large")),
        "{}",
        v.to_string().chars().take(300).collect::<String>()
    );
    let (code, v) = call(
        &ext,
        "POST",
        "/v1/presence/query",
        Some(json!({ "users": users[..100] })),
    )
    .await;
    assert_eq!(code, 200);
    let presence = v["presence"].as_array().unwrap();
    assert_eq!(presence.len(), 100);
    assert_eq!(presence[99]["status"], text.as_str());
    ext.terminate().await;
}
