//! Tier: several real things (Prosody and ejabberd, with its admin API, XMPP clients).
//!
//! The Waher Agent API calls (seeds 000 and 001) against real Prosody and ejabberd with real XMPP
//! clients: PresenceProbe answered from the read side, the automatic subscription request (once
//! per hour), SendPresenceSubscription with custom XML and the user's side completed where the
//! server allows (Prosody: privileged roster set; ejabberd 23.01: only with its admin API), the
//! roster calls, and every refusal.
//!
//! alice and bob are mutual contacts; carol and dave are strangers to alice.

#[macro_use]
mod common;

use std::time::Duration;

use common::ejabberd::Ejabberd;
use common::ext::{request, Ext, API_KEY};
use common::server::{Kind, Server};
use common::{mint_token, presence, TestClient, COMPONENT, DOMAIN, SECRET};
use minidom::Element;
use serde_json::{json, Value};
use tokio::time::Instant;
use xmpp_parsers::presence::{Presence, Show, Type as PresenceType};
use xmpp_parsers::roster::Subscription;

const NS: &str = "https://waher.se/Schema/BrokerAgent.xsd";
const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Prosody,
    /// ejabberd 23.01 without its admin API: the user's side stays as it is.
    Ejabberd,
    /// ejabberd 23.01 with `[ejabberd] api_url` (etc/ejabberd/extpresence-api.yml).
    EjabberdApi,
}

async fn start(setup: Setup) -> (Server, Ext) {
    let (server, api) = match setup {
        Setup::Prosody => (Server::start(Kind::Prosody).await, None),
        Setup::Ejabberd => (Server::start(Kind::Ejabberd).await, None),
        Setup::EjabberdApi => {
            let e = Ejabberd::start_with_session_api(DOMAIN, COMPONENT, SECRET).await;
            let api = e.api_port;
            (Server::Ejabberd(e), api)
        }
    };
    server.register(&["alice", "bob", "carol", "dave"]).await;
    common::alice_and_bob_mutual(&server).await;
    let mut ext = Ext::start_with(
        server.component_port(),
        DOMAIN,
        COMPONENT,
        SECRET,
        |c| match api {
            Some(port) => format!("{c}\n[ejabberd]\napi_url = \"http://127.0.0.1:{port}/api\"\n"),
            None => c,
        },
    )
    .await;
    ext.wait_privileged(1).await;
    (server, ext)
}

/// An answer: status, Content-Type, body.
struct Answer {
    code: u16,
    content_type: String,
    /// The `Extpresence-Complete` header (probes).
    complete: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.code, self.body))
    }

    fn xml(&self) -> Element {
        self.body
            .parse()
            .unwrap_or_else(|e| panic!("not XML ({e}): {} {}", self.code, self.body))
    }

    fn is_text_error(&self, code: u16) -> bool {
        self.code == code && self.content_type.starts_with("text/plain")
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}] {}", self.code, self.content_type, self.body)
    }
}

/// POST `/Agent/Xmpp/{call}{query}` with `headers` (the credential among them) and `body`.
async fn post(ext: &Ext, call: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let client = reqwest::Client::new();
    let mut req = client.post(format!("http://{}/Agent/Xmpp/{call}", ext.http));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.body(body.to_string()).send().await.expect("HTTP");
    let code = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let complete = r
        .headers()
        .get("extpresence-complete")
        .map(|v| v.to_str().unwrap().to_string());
    Answer {
        code,
        content_type,
        complete,
        body: r.text().await.unwrap(),
    }
}

/// A JSON call with `token`.
async fn call(ext: &Ext, token: &str, name: &str, body: Value) -> Answer {
    let bearer = format!("Bearer {token}");
    post(
        ext,
        name,
        &[
            ("Authorization", bearer.as_str()),
            ("Content-Type", "application/json"),
        ],
        &body.to_string(),
    )
    .await
}

/// Repeat `name` until `done` holds (bounded).
async fn call_until(
    ext: &Ext,
    token: &str,
    name: &str,
    body: Value,
    what: &str,
    done: impl Fn(&Answer) -> bool,
) -> Answer {
    let deadline = Instant::now() + WAIT;
    loop {
        let a = call(ext, token, name, body.clone()).await;
        if done(&a) {
            return a;
        }
        assert!(Instant::now() < deadline, "{what}: last answer {a:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn ms_of(rfc3339: &str) -> u64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339:?}: {e}"))
        .timestamp_millis() as u64
}

fn xml_lang(el: &Element) -> Option<String> {
    el.attrs()
        .iter()
        .find(|((ns, name), _)| {
            ns.as_str() == "http://www.w3.org/XML/1998/namespace" && name.as_str() == "lang"
        })
        .map(|(_, v)| v.clone())
}

/// Points 1–3 of the issue on one server setup.
async fn scenario(setup: Setup) {
    let (server, mut ext) = start(setup).await;
    let port = server.c2s_port();
    let token = mint_token(&ext, "alice@localhost", "read-write").await;

    // 1. bob online dnd "busy": alice's token probes bob.
    let mut bob = TestClient::connect(port, "bob", false).await;
    let sent_at = now_ms();
    bob.send(presence(Some(Show::Dnd), "busy", 5)).await;
    let a = call_until(
        &ext,
        &token,
        "PresenceProbe",
        json!({"to": "bob@localhost"}),
        "bob's dnd presence",
        |a| a.code == 200 && a.json()["Stanza"]["show"]["value"] == "dnd",
    )
    .await;
    assert!(a.content_type.starts_with("application/json"), "{a:?}");
    // Whether the server tells every session: Prosody does, ejabberd 23.01 alone does not.
    match setup {
        Setup::Prosody => assert_eq!(a.complete.as_deref(), Some("true")),
        Setup::Ejabberd => assert_eq!(a.complete.as_deref(), Some("false")),
        Setup::EjabberdApi => assert!(a.complete.is_some()),
    }
    let v = a.json();
    assert_eq!(v["jid"], bob.jid.to_string(), "{v}");
    assert_eq!(v["type"], "", "{v}");
    let received = ms_of(v["received"].as_str().unwrap());
    assert!(
        received + 50 >= sent_at && received <= sent_at + 1000,
        "received {received} vs sent {sent_at}: {v}"
    );
    let stanza = &v["Stanza"];
    assert_eq!(stanza["__name"], "presence", "{v}");
    assert_eq!(stanza["__ns"], "jabber:client", "{v}");
    assert_eq!(stanza["from"], bob.jid.to_string(), "{v}");
    assert_eq!(stanza["to"], "alice@localhost", "{v}");
    assert_eq!(
        stanza["status"],
        json!({"__name": "status", "__ns": "jabber:client", "value": "busy"}),
        "{v}"
    );
    assert_eq!(stanza["priority"]["value"], "5", "{v}");
    // The XML form, as the seed shows it.
    let bearer = format!("Bearer {token}");
    let a = post(
        &ext,
        "PresenceProbe",
        &[
            ("Authorization", bearer.as_str()),
            ("Content-Type", "text/xml"),
        ],
        &format!("<PresenceProbe xmlns=\"{NS}\" to=\"bob@localhost\"/>"),
    )
    .await;
    assert_eq!(a.code, 200, "{a:?}");
    assert!(a.content_type.starts_with("text/xml"), "{a:?}");
    let root = a.xml();
    assert!(root.is("ProbeResult", NS), "{a:?}");
    assert_eq!(root.attr("jid"), Some(bob.jid.as_str()), "{a:?}");
    assert_eq!(root.attr("type"), Some(""), "{a:?}");
    assert_eq!(root.attr("received").map(ms_of), Some(received), "{a:?}");
    let p = root
        .get_child("Stanza", NS)
        .and_then(|s| s.get_child("presence", "jabber:client"))
        .unwrap_or_else(|| panic!("no Stanza/presence: {a:?}"));
    assert_eq!(
        p.get_child("show", "jabber:client").map(Element::text),
        Some("dnd".into())
    );
    // JSON asked, XML accepted.
    let a = post(
        &ext,
        "PresenceProbe",
        &[
            ("Authorization", bearer.as_str()),
            ("Content-Type", "application/json"),
            ("Accept", "application/xml"),
        ],
        r#"{"to":"bob@localhost"}"#,
    )
    .await;
    assert!(
        a.code == 200 && a.content_type.starts_with("application/xml"),
        "{a:?}"
    );
    assert!(a.xml().is("ProbeResult", NS));
    // bob goes offline.
    bob.send(Presence::new(PresenceType::Unavailable)).await;
    let bob_jid = bob.jid.to_string();
    bob.disconnect().await;
    let a = call_until(
        &ext,
        &token,
        "PresenceProbe",
        json!({"to": "bob@localhost"}),
        "bob offline",
        |a| a.code == 200 && a.json()["type"] == "unavailable",
    )
    .await;
    let v = a.json();
    assert_eq!(v["jid"], bob_jid, "{v}");
    assert_eq!(v["Stanza"]["type"], "unavailable", "{v}");

    // 2. carol: no subscription → 403, and carol gets a request in alice's name, once an hour.
    let mut carol = TestClient::connect(port, "carol", true).await;
    carol.drain();
    let a = call(
        &ext,
        &token,
        "PresenceProbe",
        json!({"to": "carol@localhost"}),
    )
    .await;
    assert!(a.is_text_error(403), "{a:?}");
    assert!(a.body.contains("was sent"), "{a:?}");
    let alice_bare = "alice@localhost";
    carol
        .expect_presence(WAIT, |p| {
            p.type_ == PresenceType::Subscribe
                && p.from.as_ref().is_some_and(|f| f.to_string() == alice_bare)
        })
        .await;
    let a = call(
        &ext,
        &token,
        "PresenceProbe",
        json!({"to": "carol@localhost"}),
    )
    .await;
    assert!(a.is_text_error(403), "{a:?}");
    assert!(a.body.contains("none was sent now"), "{a:?}");
    let again = carol.presences_within(Duration::from_secs(2)).await;
    assert!(
        !again.iter().any(|p| p.type_ == PresenceType::Subscribe),
        "a second request within the hour: {again:?}"
    );
    carol.disconnect().await;

    // 3. SendPresenceSubscription to dave with custom XML, language and id.
    let mut dave = TestClient::connect(port, "dave", true).await;
    let mut alice = TestClient::connect(port, "alice", true).await;
    dave.drain();
    let a = call(
        &ext,
        &token,
        "SendPresenceSubscription",
        json!({
            "to": "dave@localhost",
            "customXml": "<hello xmlns='urn:example:hi'>Hi dave</hello>",
            "language": "sv",
            "id": "sub-1",
        }),
    )
    .await;
    assert_eq!(a.code, 200, "{a:?}");
    let v = a.json();
    assert_eq!(v["sent"], true, "{v}");
    assert_eq!(v["id"], "sub-1", "{v}");
    let item = &v["RosterItem"];
    assert_eq!(item["bareJid"], "dave@localhost", "{v}");
    assert_eq!(item["pendingSubscription"], true, "{v}");
    assert_eq!(item["status"], "none", "{v}");
    assert_eq!(item["Groups"], json!([]), "{v}");
    dave.expect_presence(WAIT, |p| {
        p.type_ == PresenceType::Subscribe && p.id.as_deref() == Some("sub-1")
    })
    .await;
    let raw = dave
        .raw_presences()
        .into_iter()
        .find(|p| p.attr("id") == Some("sub-1"))
        .expect("the raw subscribe");
    assert_eq!(raw.attr("from"), Some(alice_bare), "{}", String::from(&raw));
    assert_eq!(
        xml_lang(&raw).as_deref(),
        Some("sv"),
        "{}",
        String::from(&raw)
    );
    let hello = raw
        .get_child("hello", "urn:example:hi")
        .unwrap_or_else(|| panic!("no custom XML: {}", String::from(&raw)));
    assert_eq!(hello.text(), "Hi dave");
    // The user's side: on Prosody (and ejabberd with its admin API) dave is in alice's roster.
    let completes = setup != Setup::Ejabberd;
    let item = call(
        &ext,
        &token,
        "GetRosterItem",
        json!({"bareJid": "dave@localhost"}),
    )
    .await;
    if completes {
        assert_eq!(item.code, 200, "{item:?}");
        assert_eq!(item.json()["pendingSubscription"], true, "{item:?}");
        assert_eq!(item.json()["status"], "none", "{item:?}");
    } else {
        assert!(item.is_text_error(404), "{item:?}");
    }
    // dave approves.
    let mut ok = Presence::new(PresenceType::Subscribed);
    ok.to = Some("alice@localhost".parse().unwrap());
    dave.send(ok).await;
    if completes {
        let a = call_until(
            &ext,
            &token,
            "GetRosterItem",
            json!({"bareJid": "dave@localhost"}),
            "alice's item for dave becomes `to`",
            |a| a.code == 200 && a.json()["status"] == "to",
        )
        .await;
        assert_eq!(a.json()["pendingSubscription"], false, "{a:?}");
        // alice's own client: the roster, and dave's presence (the probe in alice's name).
        alice
            .expect_presence(WAIT, |p| {
                p.type_ == PresenceType::None
                    && p.from
                        .as_ref()
                        .is_some_and(|f| f.to_bare().to_string() == "dave@localhost")
            })
            .await;
        let roster = alice.roster().await;
        let d = roster
            .items
            .iter()
            .find(|i| i.jid.to_string() == "dave@localhost")
            .unwrap_or_else(|| panic!("dave not in alice's roster: {roster:?}"));
        assert_eq!(d.subscription, Subscription::To);
        // And now alice may probe dave.
        let a = call(
            &ext,
            &token,
            "PresenceProbe",
            json!({"to": "dave@localhost"}),
        )
        .await;
        assert_eq!(a.code, 200, "{a:?}");
        assert_eq!(a.json()["type"], "", "{a:?}");
    } else {
        ext.wait_log("the contact approved the subscription request")
            .await;
        ext.wait_log("the approval could not be recorded in the user's roster")
            .await;
        let roster = alice.roster().await;
        assert!(
            !roster
                .items
                .iter()
                .any(|i| i.jid.to_string() == "dave@localhost"),
            "ejabberd 23.01 without its admin API: alice's side stays as it is: {roster:?}"
        );
        let a = call(
            &ext,
            &token,
            "GetRosterItem",
            json!({"bareJid": "dave@localhost"}),
        )
        .await;
        assert!(a.is_text_error(404), "{a:?}");
    }

    // The roster calls.
    let a = call(&ext, &token, "GetRoster", json!({})).await;
    assert_eq!(a.code, 200, "{a:?}");
    let items = a.json()["RosterItems"].as_array().unwrap().clone();
    let bob_item = items
        .iter()
        .find(|i| i["bareJid"] == "bob@localhost")
        .unwrap_or_else(|| panic!("{a:?}"));
    assert_eq!(bob_item["status"], "both");
    assert_eq!(bob_item["pendingSubscription"], false);
    if completes {
        // carol (asked automatically, not approved) is there too, still pending.
        assert_eq!(items.len(), 3, "{a:?}");
        let carol = items
            .iter()
            .find(|i| i["bareJid"] == "carol@localhost")
            .unwrap_or_else(|| panic!("{a:?}"));
        assert_eq!(carol["pendingSubscription"], true, "{a:?}");
        assert_eq!(carol["status"], "none", "{a:?}");
    } else {
        assert_eq!(items.len(), 1, "{a:?}");
    }
    let a = call(
        &ext,
        &token,
        "GetRoster",
        json!({"offset": 0, "maxCount": 1}),
    )
    .await;
    assert_eq!(
        a.json()["RosterItems"].as_array().unwrap().len(),
        1,
        "{a:?}"
    );
    let a = post(
        &ext,
        "GetRoster",
        &[
            ("Authorization", bearer.as_str()),
            ("Content-Type", "application/xml"),
        ],
        &format!("<GetRoster xmlns='{NS}'/>"),
    )
    .await;
    assert_eq!(a.code, 200, "{a:?}");
    let root = a.xml();
    assert!(root.is("Roster", NS), "{a:?}");
    let list = root.get_child("RosterItems", NS).expect("RosterItems");
    let bob_xml = list
        .children()
        .find(|i| i.attr("bareJid") == Some("bob@localhost"))
        .unwrap_or_else(|| panic!("{a:?}"));
    assert!(bob_xml.is("Item", NS));
    assert_eq!(bob_xml.attr("status"), Some("both"));
    assert_eq!(bob_xml.attr("pendingSubscription"), Some("false"));
    assert!(bob_xml.get_child("Groups", NS).is_some(), "{a:?}");

    for c in [alice, dave] {
        c.disconnect().await;
    }
    ext.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_agent_calls() {
    scenario(Setup::Prosody).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_agent_calls() {
    scenario(Setup::Ejabberd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejabberd_agent_calls_with_admin_api() {
    scenario(Setup::EjabberdApi).await;
}

/// One refusal: what, the call, the headers, the body, the status, a part of the message.
type Case<'a> = (
    &'a str,
    &'a str,
    Vec<(&'a str, &'a str)>,
    String,
    u16,
    &'a str,
);

/// Point 4: every refusal, in the Agent API's plain-text form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals() {
    let (server, mut ext) = start(Setup::Prosody).await;
    let alice = mint_token(&ext, "alice@localhost", "read-write").await;
    let reader = mint_token(&ext, "alice@localhost", "read").await;
    let alice_b = format!("Bearer {alice}");
    let reader_b = format!("Bearer {reader}");
    let admin_b = format!("Bearer {API_KEY}");
    let json_ct = ("Content-Type", "application/json");
    let probe = r#"{"to":"bob@localhost"}"#;
    let big = format!("<x xmlns='urn:x'>{}</x>", "a".repeat(5000));
    let sub = |xml: &str| json!({"to": "carol@localhost", "customXml": xml}).to_string();
    let cases: Vec<Case> = vec![
        (
            "no token",
            "PresenceProbe",
            vec![json_ct],
            probe.into(),
            401,
            "API key",
        ),
        (
            "a wrong token",
            "PresenceProbe",
            vec![json_ct, ("Authorization", "Bearer nope")],
            probe.into(),
            401,
            "not valid",
        ),
        (
            "bad JSON",
            "PresenceProbe",
            vec![json_ct, ("Authorization", &alice_b)],
            "{\"to\":".into(),
            400,
            "malformed JSON",
        ),
        (
            "an unknown JSON field",
            "PresenceProbe",
            vec![json_ct, ("Authorization", &alice_b)],
            r#"{"to":"bob@localhost","x":1}"#.into(),
            400,
            "unknown field",
        ),
        (
            "bad XML",
            "PresenceProbe",
            vec![("Content-Type", "text/xml"), ("Authorization", &alice_b)],
            format!("<PresenceProbe xmlns='{NS}' to='bob@localhost'>"),
            400,
            "malformed XML",
        ),
        (
            "XML after the root",
            "PresenceProbe",
            vec![("Content-Type", "text/xml"), ("Authorization", &alice_b)],
            format!("<PresenceProbe xmlns='{NS}' to='bob@localhost'/><x/>"),
            400,
            "exactly one element",
        ),
        (
            "XML in another namespace",
            "PresenceProbe",
            vec![("Content-Type", "text/xml"), ("Authorization", &alice_b)],
            "<PresenceProbe to='bob@localhost'/>".into(),
            400,
            "the root must be",
        ),
        (
            "a bad JID",
            "PresenceProbe",
            vec![json_ct, ("Authorization", &alice_b)],
            r#"{"to":"@@"}"#.into(),
            400,
            "not a valid JID",
        ),
        (
            "a probe of oneself",
            "PresenceProbe",
            vec![json_ct, ("Authorization", &alice_b)],
            r#"{"to":"alice@localhost"}"#.into(),
            400,
            "own presence",
        ),
        (
            "an id XML cannot carry",
            "SendPresenceSubscription",
            vec![json_ct, ("Authorization", &alice_b)],
            json!({"to": "carol@localhost", "id": "a\u{fffe}"}).to_string(),
            400,
            "U+FFFE",
        ),
        (
            "a declaration of the xml prefix",
            "SendPresenceSubscription",
            vec![json_ct, ("Authorization", &alice_b)],
            sub("<a xmlns='urn:a' xmlns:xml='http://www.w3.org/XML/1998/namespace'/>"),
            400,
            "reserved prefixes",
        ),
        (
            "an unsupported Accept",
            "PresenceProbe",
            vec![
                json_ct,
                ("Authorization", &alice_b),
                ("Accept", "image/png"),
            ],
            probe.into(),
            406,
            "Not acceptable",
        ),
        (
            "an unsupported Content-Type",
            "PresenceProbe",
            vec![("Content-Type", "text/plain"), ("Authorization", &alice_b)],
            probe.into(),
            406,
            "not supported",
        ),
        (
            "another user's name",
            "PresenceProbe",
            vec![json_ct, ("Authorization", &alice_b)],
            probe.into(),
            403,
            "may not act for bob@localhost",
        ),
        (
            "a DOCTYPE in customXml",
            "SendPresenceSubscription",
            vec![json_ct, ("Authorization", &alice_b)],
            sub("<!DOCTYPE x [<!ENTITY e 'boom'>]><x>&e;</x>"),
            400,
            "DOCTYPE",
        ),
        (
            "an oversized customXml",
            "SendPresenceSubscription",
            vec![json_ct, ("Authorization", &alice_b)],
            sub(&big),
            400,
            "at most 4096",
        ),
        (
            "customXml that is not XML",
            "SendPresenceSubscription",
            vec![json_ct, ("Authorization", &alice_b)],
            sub("<a><b></a>"),
            400,
            "customXml",
        ),
        (
            "a read-only token subscribing",
            "SendPresenceSubscription",
            vec![json_ct, ("Authorization", &reader_b)],
            sub("<a xmlns='urn:a'/>"),
            403,
            "write",
        ),
        (
            "a foreign domain",
            "PresenceProbe",
            vec![json_ct, ("Authorization", &admin_b)],
            probe.into(),
            403,
            "not served",
        ),
        (
            "an admin key without ?user=",
            "PresenceProbe",
            vec![json_ct, ("Authorization", &admin_b)],
            probe.into(),
            400,
            "?user=",
        ),
        (
            "accepting in alice's name",
            "SendSubscriptionAccepted",
            vec![json_ct, ("Authorization", &alice_b)],
            probe.into(),
            404,
            "only the other side",
        ),
        (
            "declining in alice's name",
            "SendSubscriptionDeclined",
            vec![json_ct, ("Authorization", &alice_b)],
            probe.into(),
            404,
            "only the other side",
        ),
        (
            "cancelling in alice's name",
            "SendPresenceUnsubscription",
            vec![json_ct, ("Authorization", &alice_b)],
            probe.into(),
            404,
            "only the other side",
        ),
        (
            "editing alice's roster",
            "RemoveRosterItem",
            vec![json_ct, ("Authorization", &alice_b)],
            r#"{"bareJid":"bob@localhost"}"#.into(),
            404,
            "Not offered",
        ),
        (
            "an unknown call",
            "Nonsense",
            vec![json_ct, ("Authorization", &alice_b)],
            "{}".into(),
            404,
            "Not found",
        ),
        (
            "a contact not in the roster",
            "GetRosterItem",
            vec![json_ct, ("Authorization", &alice_b)],
            r#"{"bareJid":"nobody@localhost"}"#.into(),
            404,
            "not in alice@localhost's roster",
        ),
    ];
    for (what, name, headers, body, code, needle) in &cases {
        // Query strings for the cases that need them.
        let name = match *what {
            "another user's name" => format!("{name}?user=bob@localhost"),
            "a foreign domain" => format!("{name}?user=alice@elsewhere.example"),
            _ => name.to_string(),
        };
        let a = post(&ext, &name, headers, body).await;
        assert!(a.is_text_error(*code), "{what}: {a:?}");
        assert!(a.body.contains(needle), "{what}: {needle:?} not in {a:?}");
    }
    // GET is not a call: 405 with Allow.
    let r = reqwest::Client::new()
        .get(format!("http://{}/Agent/Xmpp/PresenceProbe", ext.http))
        .header("Authorization", &alice_b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    // An admin key acting for alice works.
    let a = post(
        &ext,
        "GetRoster?user=alice@localhost",
        &[json_ct, ("Authorization", &admin_b)],
        "{}",
    )
    .await;
    assert_eq!(a.code, 200, "{a:?}");
    drop(server);
    ext.terminate().await;
}

/// Issue 19: hostile subscription requests, in JSON and in XML, each refused with 400 before
/// anything is held or sent: customXml in a reserved namespace or declaring a reserved prefix
/// (minidom's writer panicked on it: JSON answered 200 `"sent": true` with nothing sent, XML
/// closed the connection without an answer), duplicate attributes (the last one won), stanzas and
/// origin or time claims at any depth, and a domain or a full JID as `to`. Nothing reaches the
/// contact, nothing panics, and the process keeps serving: a valid request afterwards goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_subscription_requests_refused() {
    let (server, mut ext) = start(Setup::Prosody).await;
    let token = mint_token(&ext, "alice@localhost", "read-write").await;
    let bearer = format!("Bearer {token}");
    let xml_headers = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "text/xml"),
    ];
    let mut carol = TestClient::connect(server.c2s_port(), "carol", true).await;
    carol.drain();
    let refused_xml: &[(&str, &str)] = &[
        ("<a xmlns='http://www.w3.org/2000/xmlns/'/>", "reserved"),
        ("<p:a xmlns:p='http://www.w3.org/2000/xmlns/'/>", "reserved"),
        ("<a xmlns='urn:a'><b xmlns='http://www.w3.org/2000/xmlns/'/></a>", "reserved"),
        ("<a xmlns='urn:a' xmlns:xmlns='urn:b'/>", "reserved"),
        ("<a xmlns='urn:a' xmlns:xml='urn:b'/>", "reserved"),
        ("<a xmlns='urn:a' xmlns:p='http://www.w3.org/XML/1998/namespace'/>", "reserved"),
        ("<a xmlns='urn:a' b='1' b='2'/>", "duplicate attribute"),
        ("<a xmlns='urn:a' xmlns='urn:b'/>", "duplicate attribute"),
        ("<a xmlns='urn:a' xmlns:p='urn:x' xmlns:q='urn:x' p:b='1' q:b='2'/>", "duplicate attribute"),
        ("<presence xmlns='jabber:client' type='subscribed'/>", "is not allowed"),
        ("<x xmlns='urn:x'><y><message xmlns='jabber:client' from='bob@localhost'/></y></x>", "is not allowed"),
        ("<x xmlns='urn:x'><iq xmlns='jabber:server' type='set'/></x>", "is not allowed"),
        (
            "<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='urn:x' from='bob@localhost'/></forwarded>",
            "is not allowed",
        ),
        ("<delay xmlns='urn:xmpp:delay' from='localhost' stamp='2002-09-10T23:08:25Z'/>", "is not allowed"),
        ("<x xmlns='jabber:x:delay' stamp='20020910T23:08:25'/>", "is not allowed"),
        ("<a xmlns='urn:a'><received xmlns='urn:xmpp:carbons:2'/></a>", "is not allowed"),
        ("<privilege xmlns='urn:xmpp:privilege:2'/>", "is not allowed"),
        ("<addresses xmlns='http://jabber.org/protocol/address'/>", "is not allowed"),
        ("<stanza-id xmlns='urn:xmpp:sid:0' by='localhost' id='1'/>", "is not allowed"),
    ];
    for (xml, needle) in refused_xml {
        let a = call(
            &ext,
            &token,
            "SendPresenceSubscription",
            json!({"to": "carol@localhost", "customXml": xml}),
        )
        .await;
        assert!(a.is_text_error(400), "JSON {xml}: {a:?}");
        assert!(
            a.body.contains(needle),
            "JSON {xml}: {needle:?} not in {a:?}"
        );
        let body = format!(
            "<SendPresenceSubscription xmlns='{NS}' to='carol@localhost'>{xml}</SendPresenceSubscription>"
        );
        let a = post(&ext, "SendPresenceSubscription", &xml_headers, &body).await;
        assert!(a.is_text_error(400), "XML {xml}: {a:?}");
        assert!(
            a.body.contains(needle),
            "XML {xml}: {needle:?} not in {a:?}"
        );
    }
    // Without a namespace, JSON's customXml is in jabber:client (in XML it is in the Agent API's).
    let a = call(
        &ext,
        &token,
        "SendPresenceSubscription",
        json!({"to": "carol@localhost", "customXml": "<status>hi</status>"}),
    )
    .await;
    assert!(a.is_text_error(400), "{a:?}");
    assert!(a.body.contains("jabber:client is not allowed"), "{a:?}");
    // A duplicate attribute in the Agent API's own XML: refused, not "the last one wins".
    for body in [
        format!("<PresenceProbe xmlns='{NS}' to='bob@localhost' to='carol@localhost'/>"),
        format!(
            "<SendPresenceSubscription xmlns='{NS}' to='dave@localhost' to='carol@localhost'/>"
        ),
        format!("<GetRosterItem xmlns='{NS}' bareJid='bob@localhost' bareJid='carol@localhost'/>"),
    ] {
        let call = body[1..].split(' ').next().unwrap();
        let a = post(&ext, call, &xml_headers, &body).await;
        assert!(a.is_text_error(400), "{body}: {a:?}");
        assert!(
            a.body.contains("malformed XML body: duplicate attribute"),
            "{body}: {a:?}"
        );
    }
    // A domain (the server's own) or a full JID as `to`.
    for (to, needle) in [
        ("localhost", "is a domain"),
        ("conference.localhost", "is a domain"),
        ("carol@localhost/phone", "has a resource"),
    ] {
        for name in ["SendPresenceSubscription", "PresenceProbe"] {
            let a = call(&ext, &token, name, json!({ "to": to })).await;
            assert!(a.is_text_error(400), "{name} JSON to {to}: {a:?}");
            assert!(a.body.contains(needle), "{name} to {to}: {a:?}");
            let body = format!("<{name} xmlns='{NS}' to='{to}'/>");
            let a = post(&ext, name, &xml_headers, &body).await;
            assert!(a.is_text_error(400), "{name} XML to {to}: {a:?}");
            assert!(a.body.contains(needle), "{name} to {to}: {a:?}");
        }
    }
    let got = carol.presences_within(Duration::from_secs(2)).await;
    assert!(
        !got.iter().any(|p| p.type_ == PresenceType::Subscribe),
        "a refused request reached carol: {got:?}"
    );
    // Still serving, and a valid request goes out.
    let a = call(
        &ext,
        &token,
        "SendPresenceSubscription",
        json!({
            "to": "carol@localhost",
            "customXml": "<nick xmlns='http://jabber.org/protocol/nick'>Alice</nick>",
            "id": "after-the-refusals",
        }),
    )
    .await;
    assert_eq!(a.code, 200, "{a:?}");
    assert_eq!(a.json()["sent"], true, "{a:?}");
    carol
        .expect_presence(WAIT, |p| {
            p.type_ == PresenceType::Subscribe && p.id.as_deref() == Some("after-the-refusals")
        })
        .await;
    assert!(!ext.log().contains("panicked"), "{}", ext.log());
    carol.disconnect().await;
    drop(server);
    ext.terminate().await;
}

/// A subscription request acknowledged while the server is down is held, survives a restart of
/// extpresence, and is sent once the link is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_request_is_durable() {
    let (mut server, mut ext) = start(Setup::Prosody).await;
    let token = mint_token(&ext, "alice@localhost", "read-write").await;
    server.stop().await;
    let a = call(
        &ext,
        &token,
        "SendPresenceSubscription",
        json!({"to": "carol@localhost", "id": "held-1"}),
    )
    .await;
    assert_eq!(a.code, 200, "{a:?}");
    assert_eq!(a.json()["sent"], false, "the link is down: {a:?}");
    assert_eq!(a.json()["RosterItem"]["pendingSubscription"], true, "{a:?}");
    let (_, metrics) = request(ext.http, "GET", "/metrics", &[], b"").await;
    assert!(
        metrics.contains("extpresence_agent_subscription_requests 1"),
        "{metrics}"
    );
    ext.terminate().await;
    ext.restart().await;
    server.start_again().await;
    ext.wait_privileged(1).await;
    ext.wait_log("subscription request sent in the user's name")
        .await;
    // Prosody holds it for carol, who gets it at login.
    let mut carol = TestClient::connect(server.c2s_port(), "carol", true).await;
    carol
        .expect_presence(WAIT, |p| {
            p.type_ == PresenceType::Subscribe
                && p.from
                    .as_ref()
                    .is_some_and(|f| f.to_string() == "alice@localhost")
        })
        .await;
    carol.disconnect().await;
    ext.terminate().await;
}

/// The README's Agent API examples, run as written against the real service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_agent_examples_work() {
    let (server, mut ext) = start(Setup::Prosody).await;
    let token = mint_token(&ext, "alice@localhost", "read-write").await;
    let mut bob = TestClient::connect_as(server.c2s_port(), "bob", Some("laptop"), false).await;
    bob.send(presence(Some(Show::Dnd), "busy", 0)).await;
    call_until(
        &ext,
        &token,
        "PresenceProbe",
        json!({"to": "bob@localhost"}),
        "bob's presence",
        |a| a.code == 200,
    )
    .await;
    let title = "## Acting in a user's name (Waher Agent API calls)";
    let script = common::readme_code(title, "sh", 1)
        .replace("http://127.0.0.1:8080", &format!("http://{}", ext.http))
        .replace("TOKEN", &token)
        .replace("example.com", DOMAIN)
        .replace("curl ", "curl -sS -w '\\n' ");
    let out = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .output()
        .await
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    let json = |i: usize| -> Value {
        serde_json::from_str(lines[i]).unwrap_or_else(|e| panic!("{e}: {}", lines[i]))
    };
    let probe = json(0);
    assert_eq!(probe["jid"], "bob@localhost/laptop", "{probe}");
    assert_eq!(probe["Stanza"]["show"]["value"], "dnd", "{probe}");
    let xml: Element = lines[1].parse().expect("XML");
    assert!(xml.is("ProbeResult", NS), "{}", lines[1]);
    let sub = json(2);
    assert_eq!(sub["RosterItem"]["bareJid"], "carol@localhost", "{sub}");
    assert_eq!(sub["RosterItem"]["pendingSubscription"], true, "{sub}");
    assert!(json(3)["RosterItems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["bareJid"] == "bob@localhost" && i["status"] == "both"));
    assert_eq!(json(4)["bareJid"], "bob@localhost");
    bob.disconnect().await;
    ext.terminate().await;
}
