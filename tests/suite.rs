//! Tier: several real things (Prosody and ejabberd, XMPP clients).
//!
//! Black-box tests: the real `extpresence` binary against real Prosody 0.12 and ejabberd 23.01
//! (Debian packages), with real XMPP clients as contacts. Every scenario is one `async fn` taking
//! the server [`Kind`]; the `scenarios!` macro at the end runs each on both servers
//! (`prosody::…` and `ejabberd::…` test names).
//!
//! Users: alice and bob are mutual contacts (`both`); carol has no relation to alice; dave is
//! subscribed to alice (`from` on alice's side) and logs in late.

#[macro_use]
mod common;

use std::time::Duration;

use common::ext::{raw_request, request, Ext, API_KEY};
use common::proxy::LinkProxy;
use common::server::{Kind, Server};
use common::{subscribe_mutual, subscribe_one_way, TestClient, COMPONENT, DOMAIN, SECRET};
use xmpp_parsers::presence::{Presence, Show, Type as PresenceType};

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_secs(2);

/// A server with the four users and their rosters, and extpresence connected to it.
struct World {
    server: Server,
    ext: Ext,
    /// extpresence reaches the server's component port through this proxy.
    link: LinkProxy,
}

impl World {
    async fn client(&self, user: &str) -> TestClient {
        TestClient::connect(self.server.c2s_port(), user, true).await
    }
}

async fn world(kind: Kind) -> World {
    let server = Server::start(kind).await;
    server.register(&["alice", "bob", "carol", "dave"]).await;
    let port = server.c2s_port();
    let mut alice = TestClient::connect(port, "alice", true).await;
    let mut bob = TestClient::connect(port, "bob", true).await;
    let mut dave = TestClient::connect(port, "dave", true).await;
    subscribe_mutual(&mut alice, &mut bob).await;
    subscribe_one_way(&mut dave, &mut alice).await;
    dave.disconnect().await;
    alice.disconnect().await;
    bob.disconnect().await;
    let link = LinkProxy::start(server.component_port()).await;
    let mut ext = Ext::start(link.port, DOMAIN, COMPONENT, SECRET).await;
    ext.wait_privileged(1).await;
    World { server, ext, link }
}

fn alice(resource: &str) -> String {
    format!("alice@{DOMAIN}/{resource}")
}

fn from_is(p: &Presence, jid: &str) -> bool {
    p.from.as_ref().map(|j| j.to_string()).as_deref() == Some(jid)
}

/// `Some(is_full)` when `p` comes from alice (any resource, or her bare JID).
fn from_alice(p: &Presence) -> Option<bool> {
    let from = p.from.as_ref()?;
    (from.to_bare().as_str() == format!("alice@{DOMAIN}")).then(|| from.is_full())
}

fn status_text(p: &Presence) -> Option<&str> {
    p.statuses.values().next().map(String::as_str)
}

fn available_from(jid: String) -> Matcher {
    Box::new(move |p| from_is(p, &jid) && p.type_ == PresenceType::None)
}

fn unavailable_from(jid: String) -> Matcher {
    Box::new(move |p| from_is(p, &jid) && p.type_ == PresenceType::Unavailable)
}

/// alice gets `tigase-external` (xa, "On the phone") and `phone` (dnd); bob sees both.
async fn hold_two_resources(w: &World, bob: &mut TestClient) {
    let base = format!("/rest/user/alice@{DOMAIN}/status");
    assert_eq!(
        w.ext.post(&base, "application/xml", XML_ON_PHONE).await.0,
        200
    );
    let phone = format!("{base}/phone");
    assert_eq!(
        w.ext
            .post(&phone, "application/json", r#"{"show": "dnd"}"#)
            .await
            .0,
        200
    );
    expect_each(
        bob,
        [
            available_from(alice("tigase-external")),
            available_from(alice("phone")),
        ],
    )
    .await;
}

/// A test on a received presence.
type Matcher = Box<dyn Fn(&Presence) -> bool + Send>;

/// Wait until a presence matching each predicate has arrived, in any order.
async fn expect_each<const N: usize>(
    client: &mut TestClient,
    preds: [Matcher; N],
) -> [Presence; N] {
    let mut found: [Option<Presence>; N] = std::array::from_fn(|_| None);
    while found.iter().any(Option::is_none) {
        let p = client
            .expect_presence(WAIT, |p| {
                preds
                    .iter()
                    .zip(&found)
                    .any(|(pred, f)| f.is_none() && pred(p))
            })
            .await;
        let i = (0..N)
            .find(|&i| found[i].is_none() && preds[i](&p))
            .expect("matched one");
        found[i] = Some(p);
    }
    found.map(Option::unwrap)
}

const XML_ON_PHONE: &str = "<command>\n  <available>true</available>\n  <priority>-1</priority>\n  <show>xa</show>\n  <status>On the phone</status>\n</command>";

/// (a) XML POST: bob gets show, status and priority -1; carol gets nothing. The response has the
/// seed's shape.
async fn xml_set_reaches_contact_not_stranger(kind: Kind) {
    let w = world(kind).await;
    let mut bob = w.client("bob").await;
    let mut carol = w.client("carol").await;
    let body = w
        .ext
        .post_ok(
            &format!("/rest/user/alice@{DOMAIN}/status"),
            "application/xml",
            XML_ON_PHONE,
        )
        .await;
    assert_eq!(
        body,
        format!(
            "<status><user>{}</user><available>true</available><priority>-1</priority>\
             <show>xa</show><status>On the phone</status><success>true</success></status>",
            alice("tigase-external")
        )
    );
    let p = bob
        .expect_presence(WAIT, available_from(alice("tigase-external")))
        .await;
    assert_eq!(p.show, Some(Show::Xa));
    assert_eq!(status_text(&p), Some("On the phone"));
    assert_eq!(p.priority.0, -1);
    let seen = carol.presences_within(QUIET).await;
    assert!(
        !seen.iter().any(|p| from_alice(p).is_some()),
        "carol must not see alice: {seen:?}"
    );
}

/// (b) JSON POST to `/status/phone`: bob sees `alice@…/phone`; the response is the seed's JSON.
async fn json_set_with_resource(kind: Kind) {
    let w = world(kind).await;
    let mut bob = w.client("bob").await;
    let body = w
        .ext
        .post_ok(
            &format!("/rest/user/alice@{DOMAIN}/status/phone"),
            "application/json",
            r#"{"available": "true", "priority": "-1", "show": "dnd", "status": "In a call"}"#,
        )
        .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"status": {"user": alice("phone"), "available": "true",
            "priority": "-1", "show": "dnd", "status": "In a call", "success": true}})
    );
    let p = bob
        .expect_presence(WAIT, available_from(alice("phone")))
        .await;
    assert_eq!(p.show, Some(Show::Dnd));
    assert_eq!(status_text(&p), Some("In a call"));
    // JSON booleans and numbers work too.
    w.ext
        .post_ok(
            &format!("/rest/user/alice@{DOMAIN}/status/phone"),
            "application/json",
            r#"{"available": true, "priority": -7, "show": "away"}"#,
        )
        .await;
    let p = bob
        .expect_presence(WAIT, |p| {
            from_is(p, &alice("phone")) && p.show == Some(Show::Away)
        })
        .await;
    assert_eq!(p.priority.0, -7);
}

/// (c) dave logs in after the POST and receives alice's held presence at his full JID, after
/// Prosody's own "alice is unavailable" answer to his probe.
async fn late_login_receives_held_presence(kind: Kind) {
    let w = world(kind).await;
    w.ext
        .post_ok(
            &format!("/rest/user/alice@{DOMAIN}/status"),
            "application/xml",
            XML_ON_PHONE,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut dave = w.client("dave").await;
    let p = dave
        .expect_presence(WAIT, available_from(alice("tigase-external")))
        .await;
    assert_eq!(
        p.to.as_ref().map(|j| j.to_string()),
        Some(dave.jid.to_string())
    );
    assert_eq!(status_text(&p), Some("On the phone"));
    // Nothing after it says alice is gone.
    let later = dave.presences_within(QUIET).await;
    assert!(
        !later
            .iter()
            .any(|p| p.type_ == PresenceType::Unavailable && from_alice(p).is_some()),
        "an unavailable for alice came after the held presence: {later:?}"
    );
}

/// (d) `available=false`: bob receives `unavailable` for that resource, and the entry is forgotten
/// (a contact logging in later gets nothing).
async fn clear_sends_unavailable_and_forgets(kind: Kind) {
    let w = world(kind).await;
    let mut bob = w.client("bob").await;
    let path = format!("/rest/user/alice@{DOMAIN}/status");
    assert_eq!(
        w.ext.post(&path, "application/xml", XML_ON_PHONE).await.0,
        200
    );
    bob.expect_presence(WAIT, available_from(alice("tigase-external")))
        .await;
    let body = w
        .ext
        .post_ok(&path, "application/json", r#"{"available": "false"}"#)
        .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"]["available"], "false");
    assert_eq!(v["status"]["success"], true);
    bob.expect_presence(WAIT, unavailable_from(alice("tigase-external")))
        .await;
    let mut dave = w.client("dave").await;
    let seen = dave.presences_within(QUIET).await;
    assert!(
        !seen.iter().any(available_from(alice("tigase-external"))),
        "a cleared status was re-sent: {seen:?}"
    );
}

/// (e) Prosody restarts while a status is held, and another is set during the outage: extpresence
/// reconnects and bob, logged in again, sees both.
async fn server_restart_replays_everything(kind: Kind) {
    let mut w = world(kind).await;
    let mut bob = w.client("bob").await;
    let base = format!("/rest/user/alice@{DOMAIN}/status");
    assert_eq!(
        w.ext.post(&base, "application/xml", XML_ON_PHONE).await.0,
        200
    );
    bob.expect_presence(WAIT, available_from(alice("tigase-external")))
        .await;
    drop(bob);

    w.server.stop().await;
    let (code, body) = w
        .ext
        .post(
            &format!("{base}/desk"),
            "application/json",
            r#"{"show": "away", "status": "Set during the outage"}"#,
        )
        .await;
    assert_eq!(
        code, 200,
        "a status set while the link is down is held: {body}"
    );
    assert!(body.contains("\"success\":true"), "{body}");
    w.server.start_again().await;
    w.ext.wait_privileged(2).await;

    let mut bob = w.client("bob").await;
    let [external, desk] = expect_each(
        &mut bob,
        [
            available_from(alice("tigase-external")),
            available_from(alice("desk")),
        ],
    )
    .await;
    assert_eq!(status_text(&external), Some("On the phone"));
    assert_eq!(status_text(&desk), Some("Set during the outage"));
    assert!(
        w.ext.log().contains("XMPP component link failed")
            || w.ext.log().contains("XMPP component link still down"),
        "the outage was not noticed:\n{}",
        w.ext.log()
    );
}

/// (f) SIGTERM: bob receives `unavailable` for every held resource; the process exits 0.
async fn sigterm_sends_unavailable_for_every_resource(kind: Kind) {
    let mut w = world(kind).await;
    let mut bob = w.client("bob").await;
    hold_two_resources(&w, &mut bob).await;
    let code = w.ext.terminate().await;
    assert_eq!(code, Some(0), "exit status; log:\n{}", w.ext.log());
    expect_each(
        &mut bob,
        [
            unavailable_from(alice("tigase-external")),
            unavailable_from(alice("phone")),
        ],
    )
    .await;
}

/// A contact added to alice's roster after her first update is reached by the next one.
async fn new_contact_reached_by_next_update(kind: Kind) {
    let w = world(kind).await;
    let mut carol = w.client("carol").await;
    let base = format!("/rest/user/alice@{DOMAIN}/status");
    assert_eq!(
        w.ext.post(&base, "application/xml", XML_ON_PHONE).await.0,
        200
    );
    // alice logs in with a real client and accepts carol's subscription.
    let mut alice_client = w.client("alice").await;
    subscribe_one_way(&mut carol, &mut alice_client).await;
    alice_client.disconnect().await;
    carol.drain();
    assert_eq!(
        w.ext
            .post(
                &base,
                "application/json",
                r#"{"show": "chat", "status": "Back"}"#
            )
            .await
            .0,
        200
    );
    let p = carol
        .expect_presence(WAIT, |p| {
            from_is(p, &alice("tigase-external")) && p.show == Some(Show::Chat)
        })
        .await;
    assert_eq!(status_text(&p), Some("Back"));
}

/// (g) Every bad input gets its status code and a body in the request's format; afterwards a good
/// request still works and reaches bob (the XMPP stream is undisturbed).
async fn bad_inputs_are_refused_cleanly(kind: Kind) {
    let w = world(kind).await;
    let mut bob = w.client("bob").await;
    let addr = w.ext.http;
    let user = format!("/rest/user/alice@{DOMAIN}/status");
    let keyed = format!("{user}?api-key={API_KEY}");
    let json = [("Content-Type", "application/json")];
    let xml = [("Content-Type", "application/xml")];

    struct Case<'a> {
        name: &'a str,
        method: &'a str,
        path: String,
        headers: Vec<(&'a str, &'a str)>,
        body: Vec<u8>,
        want: u16,
        code: &'a str,
    }
    let case = |name,
                method,
                path: &str,
                headers: &[(&'static str, &'static str)],
                body: &str,
                want,
                code| Case {
        name,
        method,
        path: path.to_string(),
        headers: headers.to_vec(),
        body: body.as_bytes().to_vec(),
        want,
        code,
    };
    let long = "x".repeat(1025);
    let big = format!("{{\"status\": \"{}\"}}", "y".repeat(17 * 1024));
    let cases = vec![
        case("no key", "POST", &user, &json, "{}", 401, "missing_api_key"),
        case("wrong key", "POST", &format!("{user}?api-key=nope"), &json, "{}", 403, "invalid_api_key"),
        case("wrong bearer", "POST", &user, &[("Content-Type", "application/json"), ("Authorization", "Bearer nope")], "{}", 403, "invalid_api_key"),
        case("bad jid", "POST", &format!("/rest/user/not-a-jid/status?api-key={API_KEY}"), &json, "{}", 400, "invalid_jid"),
        case("bad jid 2", "POST", &format!("/rest/user/a@b@c/status?api-key={API_KEY}"), &json, "{}", 400, "invalid_jid"),
        case("foreign domain", "POST", &format!("/rest/user/alice@elsewhere.org/status?api-key={API_KEY}"), &json, "{}", 403, "domain_not_served"),
        case("bad show", "POST", &keyed, &json, r#"{"show": "busy"}"#, 400, "invalid_show"),
        case("bad show xml", "POST", &keyed, &xml, "<command><show>sleeping</show></command>", 400, "invalid_show"),
        case("priority not int", "POST", &keyed, &json, r#"{"priority": "high"}"#, 400, "invalid_priority"),
        case("priority float", "POST", &keyed, &json, r#"{"priority": -1.5}"#, 400, "invalid_priority"),
        case("priority range", "POST", &keyed, &json, r#"{"priority": "-129"}"#, 400, "invalid_priority"),
        case("priority non-negative", "POST", &keyed, &json, r#"{"priority": "0"}"#, 400, "invalid_priority"),
        case("control char", "POST", &keyed, &json, r#"{"status": "ring\u0007ring"}"#, 400, "invalid_status"),
        case("control char xml", "POST", &keyed, &xml, "<command><status>ring\u{1b}ring</status></command>", 400, "malformed_body"),
        case("status too long", "POST", &keyed, &json, &format!("{{\"status\": \"{long}\"}}"), 400, "invalid_status"),
        case("body too large", "POST", &keyed, &json, &big, 413, "body_too_large"),
        case("malformed xml", "POST", &keyed, &xml, "<command><show>xa</command>", 400, "malformed_body"),
        case("malformed json", "POST", &keyed, &json, r#"{"show": "xa""#, 400, "malformed_body"),
        case("doctype", "POST", &keyed, &xml, "<?xml version='1.0'?><!DOCTYPE command [<!ENTITY x 'xa'>]><command><show>&x;</show></command>", 400, "malformed_body"),
        case("entity ref", "POST", &keyed, &xml, "<command><show>&x;</show></command>", 400, "malformed_body"),
        case("wrong root", "POST", &keyed, &xml, "<presence><show>xa</show></presence>", 400, "malformed_body"),
        case("text/plain", "POST", &keyed, &[("Content-Type", "text/plain")], "xa", 415, "unsupported_media_type"),
        case("no content type", "POST", &keyed, &[], "{}", 415, "unsupported_media_type"),
        case("GET", "GET", &keyed, &json, "", 405, "method_not_allowed"),
        case("PUT", "PUT", &keyed, &json, "{}", 405, "method_not_allowed"),
        case("DELETE", "DELETE", &keyed, &json, "", 405, "method_not_allowed"),
        case("two roots", "POST", &keyed, &xml, "<command><show>xa</show></command><command><show>dnd</show></command>", 400, "malformed_body"),
        case("junk after root", "POST", &keyed, &xml, "<command/>\u{1}\u{2}<<<", 400, "malformed_body"),
        case("duplicate xml attribute", "POST", &keyed, &xml, "<command><show>xa</show><status lang='en' lang='de'>hi</status></command>", 400, "malformed_body"),
        case("duplicate xmlns", "POST", &keyed, &xml, "<command xmlns='urn:a' xmlns='urn:extpresence:tigase-command'><show>xa</show></command>", 400, "malformed_body"),
        case("reserved namespace xml", "POST", &keyed, &xml, "<command><show xmlns:p='http://www.w3.org/2000/xmlns/'>xa</show></command>", 400, "malformed_body"),
        case("duplicate json key", "POST", &keyed, &json, r#"{"show": "xa", "show": "dnd"}"#, 400, "malformed_body"),
        case("two json values", "POST", &keyed, &json, r#"{"show": "xa"} {"show": "dnd"}"#, 400, "malformed_body"),
        case("carriage return", "POST", &keyed, &json, r#"{"status": "line\r\nbreak"}"#, 400, "invalid_status"),
        case("path not utf-8", "POST", &format!("/rest/user/al%FFice@{DOMAIN}/status?api-key={API_KEY}"), &json, "{}", 400, "invalid_path"),
        case("key twice", "POST", &format!("{keyed}&api-key={API_KEY}"), &json, "{}", 400, "ambiguous_credentials"),
        case("empty key hides header", "POST", &format!("{user}?api-key="), &[("Content-Type", "application/json"), ("Api-Key", API_KEY)], "{}", 400, "ambiguous_credentials"),
        case("query and bearer", "POST", &keyed, &[("Content-Type", "application/json"), ("Authorization", "Bearer x")], "{}", 400, "ambiguous_credentials"),
    ];
    for c in &cases {
        let (status, body) = request(addr, c.method, &c.path, &c.headers, &c.body).await;
        assert_eq!(status, c.want, "{}: {body}", c.name);
        let is_xml = c.headers.iter().any(|(_, v)| v.contains("xml"));
        if is_xml {
            assert!(
                body.starts_with("<error>") && body.contains(&format!("<code>{}</code>", c.code)),
                "{}: {body}",
                c.name
            );
        } else {
            let v: serde_json::Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {body}", c.name));
            assert_eq!(v["error"]["code"], c.code, "{}: {body}", c.name);
            assert_eq!(v["error"]["status"], c.want, "{}: {body}", c.name);
        }
    }
    // Too large without Content-Length (chunked).
    let chunk = "z".repeat(8192);
    let mut raw = format!(
        "POST {keyed} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    for _ in 0..3 {
        raw.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    raw.push_str("0\r\n\r\n");
    let (status, body) = raw_request(addr, raw.as_bytes()).await;
    assert_eq!(status, 413, "chunked: {body}");

    // Nothing of the refused requests reached bob, and a good request still works.
    // (Prosody's own answer to bob's login probe, a bare `alice unavailable`, does not count.)
    let seen = bob.presences_within(Duration::from_millis(500)).await;
    assert!(
        !seen.iter().any(|p| from_alice(p) == Some(true)),
        "a refused request reached bob: {seen:?}"
    );
    w.ext.post_ok(&user, "application/xml", XML_ON_PHONE).await;
    let p = bob
        .expect_presence(WAIT, available_from(alice("tigase-external")))
        .await;
    assert_eq!(status_text(&p), Some("On the phone"));
    assert!(
        !w.ext.log().contains("XMPP component link failed"),
        "the XMPP link was disturbed:\n{}",
        w.ext.log()
    );
}

/// The component link drops while the server and bob stay up. A status updated and another
/// cleared during the outage are answered 2xx, reach nobody while the link is down, and reach bob
/// after the reconnect — on ejabberd, which announces no online users to a reconnecting
/// component, only through the replay to contacts' bare JIDs.
async fn link_drop_replays_to_online_contacts(kind: Kind) {
    let mut w = world(kind).await;
    let mut bob = w.client("bob").await;
    let base = format!("/rest/user/alice@{DOMAIN}/status");
    hold_two_resources(&w, &mut bob).await;

    w.link.cut();
    w.ext.wait_log("XMPP component link failed").await;
    w.ext
        .post_ok(
            &base,
            "application/json",
            r#"{"show": "chat", "status": "Back at my desk"}"#,
        )
        .await;
    w.ext
        .post_ok(
            &format!("{base}/phone"),
            "application/json",
            r#"{"available": false}"#,
        )
        .await;
    let during = bob.presences_within(Duration::from_millis(500)).await;
    assert!(
        !during
            .iter()
            .any(|p| from_is(p, &alice("tigase-external")) || from_is(p, &alice("phone"))),
        "something was delivered while the link was cut: {during:?}"
    );

    w.link.restore();
    w.ext.wait_privileged(2).await;
    let [external, _] = expect_each(
        &mut bob,
        [
            Box::new(|p: &Presence| {
                from_is(p, &alice("tigase-external")) && p.show == Some(Show::Chat)
            }),
            unavailable_from(alice("phone")),
        ],
    )
    .await;
    assert_eq!(status_text(&external), Some("Back at my desk"));
}

/// extpresence is killed (SIGKILL) and restarted: every acknowledged status comes back from the
/// store and reaches bob again; a resource cleared while the link was down, just before the kill,
/// still gets its `unavailable` out after the restart.
async fn crash_restart_replays_from_store(kind: Kind) {
    let mut w = world(kind).await;
    let mut bob = w.client("bob").await;
    let base = format!("/rest/user/alice@{DOMAIN}/status");
    hold_two_resources(&w, &mut bob).await;
    bob.drain();

    w.ext.kill().await;
    w.ext.restart().await;
    w.ext.wait_privileged(1).await;
    let [external, phone] = expect_each(
        &mut bob,
        [
            available_from(alice("tigase-external")),
            available_from(alice("phone")),
        ],
    )
    .await;
    assert_eq!(status_text(&external), Some("On the phone"));
    assert_eq!(phone.show, Some(Show::Dnd));

    w.link.cut();
    w.ext.wait_log("XMPP component link failed").await;
    w.ext
        .post_ok(
            &format!("{base}/phone"),
            "application/json",
            r#"{"available": false}"#,
        )
        .await;
    w.ext.kill().await;
    w.link.restore();
    bob.drain();
    w.ext.restart().await;
    let [_, external] = expect_each(
        &mut bob,
        [
            unavailable_from(alice("phone")),
            available_from(alice("tigase-external")),
        ],
    )
    .await;
    assert_eq!(status_text(&external), Some("On the phone"));
}

/// A status held for `bob@…/collide` does not hide bob's real session on that very resource:
/// when bob logs in as `bob@…/collide`, his session is greeted with alice's held presence like
/// any other (our own presences carry an id a real client cannot know; a presence without it is
/// a real session).
async fn held_resource_named_like_a_real_session(kind: Kind) {
    let w = world(kind).await;
    w.ext
        .post_ok(
            &format!("/rest/user/alice@{DOMAIN}/status"),
            "application/xml",
            XML_ON_PHONE,
        )
        .await;
    w.ext
        .post_ok(
            &format!("/rest/user/bob@{DOMAIN}/status/collide"),
            "application/json",
            r#"{"show": "dnd", "status": "held for bob"}"#,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut bob = TestClient::connect_as(w.server.c2s_port(), "bob", Some("collide"), true).await;
    assert_eq!(bob.jid.resource().as_str(), "collide");
    let p = bob
        .expect_presence(WAIT, available_from(alice("tigase-external")))
        .await;
    assert_eq!(status_text(&p), Some("On the phone"));
    assert_eq!(
        p.to.as_ref().map(|j| j.to_string()),
        Some(bob.jid.to_string()),
        "greeted at the real session's full JID"
    );
}

scenarios!(
    xml_set_reaches_contact_not_stranger,
    json_set_with_resource,
    late_login_receives_held_presence,
    clear_sends_unavailable_and_forgets,
    server_restart_replays_everything,
    sigterm_sends_unavailable_for_every_resource,
    new_contact_reached_by_next_update,
    bad_inputs_are_refused_cleanly,
    link_drop_replays_to_online_contacts,
    crash_restart_replays_from_store,
    held_resource_named_like_a_real_session,
);
