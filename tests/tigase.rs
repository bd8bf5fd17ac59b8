//! Tier: one server, a double of Tigase (Tigase cannot be installed here).
//!
//! `backend = "tigase"` against a double of Tigase's session manager (Tigase cannot be installed
//! here; see `tests/common/tigase_double.rs` for what the double is built from).
//!
//! `double::…` unit-tests the double's rules (what it answers, what it refuses), so the backend
//! tests below cannot pass against a double that accepts what Tigase refuses. The other tests run
//! the real `extpresence` binary against the double over TCP.

mod common;

use std::time::{Duration, Instant};

use common::ext::{request, Ext, API_KEY};
use common::tigase_double::{
    bare, CheckOutcome, DoubleConfig, Presence, Reply, SessionManager, TigaseDouble,
};
use common::{COMPONENT, DOMAIN, SECRET};
use sha1::{Digest, Sha1};

const WAIT: Duration = Duration::from_secs(15);
const XML_ON_PHONE: &str = "<command><available>true</available><priority>-1</priority>\
    <show>xa</show><status>On the phone</status></command>";
const READY: &str = "Tigase session mode: link up";

/// The sender extpresence must use for `user@DOMAIN/resource`: the component with the hex SHA-1
/// of the full JID as resource.
fn sender(user: &str, resource: &str) -> String {
    let digest = Sha1::digest(format!("{user}@{DOMAIN}/{resource}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{COMPONENT}/{hex}")
}

fn alice() -> String {
    bare("alice", DOMAIN)
}

/// Wait (bounded) until the process logged `needle` at least `n` times.
async fn wait_log_count(ext: &Ext, needle: &str, n: usize) {
    let ok = tokio::time::timeout(WAIT, async {
        while ext.log().matches(needle).count() < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        ok.is_ok(),
        "extpresence logged {needle:?} fewer than {n} times; log:\n{}",
        ext.log()
    );
}

/// The double, and extpresence in Tigase mode connected to it and ready.
async fn setup(timeout_secs: u64, cfg: impl FnOnce(&mut DoubleConfig)) -> (TigaseDouble, Ext) {
    let mut config = DoubleConfig::new(COMPONENT, SECRET, DOMAIN);
    cfg(&mut config);
    let double = TigaseDouble::start(config).await;
    let ext = start_ext(&double, timeout_secs).await;
    (double, ext)
}

async fn start_ext(double: &TigaseDouble, timeout_secs: u64) -> Ext {
    let before = double.handshakes();
    let ext = Ext::start_with(double.port, DOMAIN, COMPONENT, SECRET, |c| {
        format!(
            "{}\n[tigase]\ntimeout_secs = {timeout_secs}\n",
            c.replace("domains =", "backend = \"tigase\"\ndomains =")
        )
    })
    .await;
    double.wait_handshakes(before + 1).await;
    wait_log_count(&ext, READY, 1).await;
    ext
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn no_violations(double: &TigaseDouble) {
    let core = double.core();
    assert!(
        core.violations.is_empty(),
        "extpresence sent what Tigase would not expect: {:#?}",
        core.violations
    );
}

/// Set, update, clear, clear again: what Tigase answers each time and what it broadcasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_update_clear() {
    let (double, ext) = setup(5, |_| {}).await;
    let path = format!("/rest/user/alice@{DOMAIN}/status");

    let body = ext.post_ok(&path, "application/xml", XML_ON_PHONE).await;
    assert_eq!(
        body,
        format!(
            "<status><user>alice@{DOMAIN}/tigase-external</user><available>true</available>\
             <priority>-1</priority><show>xa</show><status>On the phone</status>\
             <success>true</success></status>"
        )
    );
    {
        let core = double.core();
        let s = core
            .session(&alice(), "tigase-external")
            .expect("a session");
        assert_eq!(s.sender, sender("alice", "tigase-external"));
        assert_eq!(
            s.presence,
            Presence {
                priority: -1,
                show: Some("xa".into()),
                status: Some("On the phone".into())
            }
        );
        let c = core.commands.last().unwrap();
        assert_eq!(c.to, format!("sess-man@{DOMAIN}"));
        assert_eq!(
            c.jid.as_deref(),
            Some(&*format!("alice@{DOMAIN}/tigase-external"))
        );
        assert_eq!(c.reply, Reply::Result);
    }

    // An update: Tigase applies it and answers nothing; extpresence must not wait for an answer.
    let started = Instant::now();
    let body = ext
        .post_ok(
            &path,
            "application/json",
            r#"{"show": "dnd", "status": "In a call", "priority": -5}"#,
        )
        .await;
    assert_eq!(json(&body)["status"]["success"], true, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "an update waited {:?} for an answer Tigase never sends",
        started.elapsed()
    );
    double
        .wait_until("the update applied", WAIT, |c| {
            c.session(&alice(), "tigase-external")
                .is_some_and(|s| s.presence.show.as_deref() == Some("dnd"))
        })
        .await;
    {
        let core = double.core();
        let s = core.session(&alice(), "tigase-external").unwrap();
        assert_eq!(s.presence.priority, -5);
        assert_eq!(s.presence.status.as_deref(), Some("In a call"));
        let c = core.commands.last().unwrap();
        assert_eq!(c.from, sender("alice", "tigase-external"));
        assert_eq!(c.reply, Reply::Nothing);
        assert_eq!(core.sessions().len(), 1);
    }

    // Clear: from the same sender, answered with a result, broadcast as unavailable.
    let body = ext
        .post_ok(&path, "application/json", r#"{"available": "false"}"#)
        .await;
    assert_eq!(
        json(&body),
        serde_json::json!({"status": {"user": format!("alice@{DOMAIN}/tigase-external"),
            "available": "false", "success": true}})
    );
    {
        let core = double.core();
        assert!(core.sessions().is_empty(), "{:?}", core.sessions());
        let last = core.broadcasts.last().unwrap();
        assert_eq!(
            (last.resource.as_str(), &last.presence),
            ("tigase-external", &None)
        );
        let c = core.commands.last().unwrap();
        assert_eq!(
            (c.from.as_str(), &c.reply),
            (&*sender("alice", "tigase-external"), &Reply::Result)
        );
    }

    // Clearing what Tigase does not hold: item-not-found, reported as success false.
    let (code, body) = ext
        .post(
            &path,
            "application/xml",
            "<command><available>false</available></command>",
        )
        .await;
    assert_eq!(code, 502, "{body}");
    assert!(
        body.contains("<success>false</success><reason>")
            && body
                .contains("item-not-found: The user resource you want to remove does not exist."),
        "{body}"
    );
    no_violations(&double);
}

/// An untrusted component is refused (`forbidden`): success false with the reason, nothing
/// broadcast. The status stays held: once the admin trusts the component and restarts Tigase,
/// it is asserted without being posted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_is_refused_then_asserted_after_the_fix() {
    let (double, mut ext) = setup(2, |c| c.trusted.clear()).await;
    let (code, body) = ext
        .post(
            &format!("/rest/user/alice@{DOMAIN}/status"),
            "application/json",
            r#"{"show": "away", "status": "Lunch"}"#,
        )
        .await;
    assert_eq!(code, 502, "{body}");
    let v = json(&body);
    assert_eq!(v["status"]["success"], false, "{body}");
    let reason = v["status"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("forbidden: Only trusted entity can do it."),
        "{body}"
    );
    {
        let core = double.core();
        assert!(core.sessions().is_empty());
        assert!(core.broadcasts.is_empty(), "{:?}", core.broadcasts);
        assert_eq!(
            core.commands.last().unwrap().reply,
            Reply::Error("forbidden".into())
        );
    }
    ext.wait_log(&format!("trusted = [ '{COMPONENT}' ]")).await;

    double.core().set_trusted(vec![COMPONENT.to_string()]);
    double.restart();
    double.wait_handshakes(2).await;
    double
        .wait_until("the held status asserted after the fix", WAIT, |c| {
            c.session(&alice(), "tigase-external").is_some_and(|s| {
                s.presence.show.as_deref() == Some("away")
                    && s.presence.status.as_deref() == Some("Lunch")
            })
        })
        .await;
    assert_eq!(ext.terminate().await, Some(0));
    no_violations(&double);
}

/// A session manager that does not answer: success false with the timeout as reason, within
/// about the timeout; when it answers again, the next request succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_times_out() {
    let (double, ext) = setup(1, |_| {}).await;
    double.set_silent(true);
    let started = Instant::now();
    let (code, body) = ext
        .post(
            &format!("/rest/user/alice@{DOMAIN}/status/phone"),
            "application/xml",
            XML_ON_PHONE,
        )
        .await;
    let elapsed = started.elapsed();
    assert_eq!(code, 504, "{body}");
    assert!(
        body.contains(
            "<success>false</success><reason>no answer from the XMPP server within 1s</reason>"
        ),
        "{body}"
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "answered after {elapsed:?} with a 1 s timeout"
    );
    assert!(double.core().sessions().is_empty());

    double.set_silent(false);
    ext.post_ok(
        &format!("/rest/user/alice@{DOMAIN}/status/phone"),
        "application/xml",
        XML_ON_PHONE,
    )
    .await;
    assert!(double.core().session(&alice(), "phone").is_some());
    no_violations(&double);
}

/// Tigase checks a session when another session of the user opens, and when the user logs in
/// with a real client; extpresence answers, so its sessions stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_checks_are_answered() {
    let (double, ext) = setup(2, |c| c.check_timeout = Duration::from_secs(1)).await;
    for resource in ["tigase-external", "phone"] {
        ext.post_ok(
            &format!("/rest/user/alice@{DOMAIN}/status/{resource}"),
            "application/json",
            r#"{"show": "xa"}"#,
        )
        .await;
    }
    // Opening alice/phone checked alice/tigase-external (SessionManager.registerNewSession).
    {
        let core = double.core();
        assert_eq!(core.checks.len(), 1, "{:?}", core.checks);
        assert_eq!(core.checks[0].to, sender("alice", "tigase-external"));
    }
    let ids = double.login_elsewhere(&alice()).await;
    assert_eq!(ids.len(), 2);
    double
        .wait_until("every check answered with a result", WAIT, |c| {
            c.checks.len() == 3 && c.checks.iter().all(|k| k.outcome == CheckOutcome::Alive)
        })
        .await;
    // Past the check timeout the sessions are still there.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    double.core().expire(tokio::time::Instant::now());
    assert_eq!(double.core().sessions().len(), 2);
    no_violations(&double);
}

/// Every CHECK_USER_CONNECTION addressed to us gets a result, as the issue asks — also for a
/// session left in Tigase by an extpresence that was killed and replaced by one with an empty
/// store (a restart with its store reloads and re-asserts instead): the session stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_of_a_leftover_session_is_answered() {
    let (double, ext) = setup(2, |_| {}).await;
    ext.post_ok(
        &format!("/rest/user/alice@{DOMAIN}/status"),
        "application/xml",
        XML_ON_PHONE,
    )
    .await;
    drop(ext); // SIGKILL: no unavailable sent
    let ext = start_ext(&double, 2).await;
    assert!(double.core().session(&alice(), "tigase-external").is_some());
    let ids = double.login_elsewhere(&alice()).await;
    assert_eq!(ids.len(), 1);
    double
        .wait_until("the check answered", WAIT, |c| {
            c.checks
                .last()
                .is_some_and(|k| k.outcome == CheckOutcome::Alive)
        })
        .await;
    assert!(double.core().session(&alice(), "tigase-external").is_some());
    drop(ext);
    no_violations(&double);
}

/// The same leftover, met by a new status for the same resource before any check: Tigase takes
/// the open as a silent update of the leftover, so the request times out; extpresence then closes
/// the session from the same sender (a result: there was one) and opens it again, after which
/// the resource behaves normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_session_met_by_an_open_is_recovered() {
    let (double, ext) = setup(1, |_| {}).await;
    let path = format!("/rest/user/alice@{DOMAIN}/status");
    ext.post_ok(&path, "application/xml", XML_ON_PHONE).await;
    drop(ext); // SIGKILL: the session stays in Tigase
    let ext = start_ext(&double, 1).await;
    let before = double.core().commands.len();

    let (code, body) = ext
        .post(&path, "application/json", r#"{"show": "dnd"}"#)
        .await;
    assert_eq!(code, 504, "{body}");
    double
        .wait_until("closed and opened again", WAIT, |c| {
            let replies: Vec<(Option<&str>, &Reply)> = c.commands[before..]
                .iter()
                .map(|k| (k.available.as_deref(), &k.reply))
                .collect();
            replies
                == [
                    (Some("true"), &Reply::Nothing),
                    (Some("false"), &Reply::Result),
                    (Some("true"), &Reply::Result),
                ]
        })
        .await;
    assert_eq!(
        double
            .core()
            .session(&alice(), "tigase-external")
            .map(|s| s.presence.show),
        Some(Some("dnd".to_string()))
    );
    let started = Instant::now();
    ext.post_ok(&path, "application/json", r#"{"show": "away"}"#)
        .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    no_violations(&double);
}

/// Tigase keeps no session across its restart: every held status is asserted again. A drop of
/// only the link keeps them, and the assertion is a silent update. A change made while the
/// link is down answers 503 and is asserted when the link is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_reasserts_everything_held() {
    let (double, ext) = setup(1, |_| {}).await;
    let set = |user: &'static str, resource: &'static str, body: &'static str| {
        let ext = &ext;
        async move {
            let (code, answer) = ext
                .post(
                    &format!("/rest/user/{user}@{DOMAIN}/status/{resource}"),
                    "application/json",
                    body,
                )
                .await;
            (code, answer)
        }
    };
    assert_eq!(
        set(
            "alice",
            "tigase-external",
            r#"{"show": "xa", "status": "On the phone"}"#
        )
        .await
        .0,
        200
    );
    assert_eq!(set("bob", "phone", r#"{"show": "dnd"}"#).await.0, 200);
    let expected = |c: &SessionManager| {
        c.sessions().len() == 2
            && c.session(&alice(), "tigase-external").is_some_and(|s| {
                s.presence.show.as_deref() == Some("xa")
                    && s.presence.status.as_deref() == Some("On the phone")
                    && s.sender == sender("alice", "tigase-external")
            })
            && c.session(&bare("bob", DOMAIN), "phone").is_some_and(|s| {
                s.presence.show.as_deref() == Some("dnd") && s.presence.priority == -1
            })
    };

    // Tigase restarts: sessions gone; extpresence reconnects and opens them again.
    double.restart();
    assert!(double.core().sessions().is_empty());
    double.wait_handshakes(2).await;
    double
        .wait_until("both sessions opened again", WAIT, expected)
        .await;

    // Only the link drops: Tigase keeps the sessions; the re-assertion updates them silently.
    let commands = double.core().commands.len();
    double.drop_connection();
    double.wait_handshakes(3).await;
    wait_log_count(&ext, READY, 3).await;
    double
        .wait_until("both re-asserted as updates", WAIT, |c| {
            c.commands.len() >= commands + 2
                && c.commands[commands..]
                    .iter()
                    .all(|k| k.reply == Reply::Nothing)
        })
        .await;
    assert!(expected(&double.core()));

    // A change while Tigase is unreachable: 503, held, asserted when it is back.
    double.set_refusing(true);
    double.drop_connection();
    wait_log_count(&ext, "Tigase session mode: link down", 3).await;
    let (code, body) = set("carol", "desk", r#"{"show": "away"}"#).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        json(&body)["status"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("link is down")),
        "{body}"
    );
    double.set_refusing(false);
    double
        .wait_until("carol's status asserted after the outage", WAIT, |c| {
            c.session(&bare("carol", DOMAIN), "desk")
                .is_some_and(|s| s.presence.show.as_deref() == Some("away"))
        })
        .await;
    assert_eq!(double.core().sessions().len(), 3);
    no_violations(&double);
}

/// A clear posted while Tigase restarts waits for the link and is sent when it is back; Tigase
/// has lost the session by then (`item-not-found`), which is what was asked: success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_during_a_tigase_restart_succeeds() {
    let (double, ext) = setup(3, |_| {}).await;
    let path = format!("/rest/user/alice@{DOMAIN}/status");
    ext.post_ok(&path, "application/xml", XML_ON_PHONE).await;
    double.set_refusing(true);
    double.restart();
    wait_log_count(&ext, "Tigase session mode: link down", 1).await;
    let commands = double.core().commands.len();
    let (answer, ()) = tokio::join!(
        ext.post(&path, "application/json", r#"{"available": false}"#),
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            double.set_refusing(false);
        }
    );
    assert_eq!(answer.0, 200, "{}", answer.1);
    let core = double.core();
    assert!(core.sessions().is_empty());
    let sent: Vec<_> = core.commands[commands..]
        .iter()
        .map(|c| (c.available.as_deref(), c.reply.clone()))
        .collect();
    assert_eq!(
        sent,
        [(Some("false"), Reply::Error("item-not-found".into()))]
    );
    assert!(core.violations.is_empty(), "{:?}", core.violations);
}

/// SIGTERM closes every session (available=false from each session's own sender), then exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_session() {
    let (double, mut ext) = setup(2, |_| {}).await;
    for resource in ["tigase-external", "phone"] {
        ext.post_ok(
            &format!("/rest/user/alice@{DOMAIN}/status/{resource}"),
            "application/json",
            r#"{"show": "away"}"#,
        )
        .await;
    }
    assert_eq!(double.core().sessions().len(), 2);
    assert_eq!(ext.terminate().await, Some(0));
    let core = double.core();
    assert!(core.sessions().is_empty(), "{:?}", core.sessions());
    let closes: Vec<_> = core
        .commands
        .iter()
        .filter(|c| c.available.as_deref() == Some("false"))
        .collect();
    assert_eq!(closes.len(), 2, "{:?}", core.commands);
    assert!(closes.iter().all(|c| c.reply == Reply::Result));
    let mut senders: Vec<_> = closes.iter().map(|c| c.from.clone()).collect();
    senders.sort();
    let mut expected = vec![sender("alice", "tigase-external"), sender("alice", "phone")];
    expected.sort();
    assert_eq!(senders, expected);
    assert!(core.violations.is_empty(), "{:?}", core.violations);
}

/// A wrong secret: Tigase stops the connection without a stream error; extpresence reports a
/// refused handshake (without logging the secret) and keeps retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_reported() {
    let double = TigaseDouble::start(DoubleConfig::new(COMPONENT, SECRET, DOMAIN)).await;
    let ext = Ext::start_with(double.port, DOMAIN, COMPONENT, "not-the-secret", |c| {
        c.replace("domains =", "backend = \"tigase\"\ndomains =")
    })
    .await;
    wait_log_count(&ext, "refused the component handshake", 2).await;
    assert_eq!(double.handshakes(), 0);
    let log = ext.log();
    assert!(
        !log.contains("not-the-secret"),
        "the secret was logged:\n{log}"
    );
    assert!(!log.contains(READY), "{log}");
}

/// The double's rules, each traced to Tigase's source (see the double's module doc).
mod double {
    use super::common::tigase_double::{
        handshake_ok, CheckOutcome, DoubleConfig, Presence, SessionManager, NS_COMPONENT,
    };
    use minidom::Element;
    use tokio::time::Instant;
    use xmpp_parsers::component::Handshake;

    const SM: &str = "sess-man@example.com";
    const A: &str = "status.example.com/aaaa";
    const B: &str = "status.example.com/bbbb";

    fn sm() -> SessionManager {
        SessionManager::new(DoubleConfig::new(
            "status.example.com",
            "s3cret",
            "example.com",
        ))
    }

    /// A USER_STATUS iq; `fields` are (var, value), `var` None for a field without one.
    fn us(
        id: &str,
        from: &str,
        to: &str,
        fields: &[(Option<&str>, &str)],
        presence: &str,
    ) -> Element {
        let fields: String = fields
            .iter()
            .map(|(var, value)| match var {
                Some(v) => format!("<field var='{v}'><value>{value}</value></field>"),
                None => format!("<field><value>{value}</value></field>"),
            })
            .collect();
        format!(
            "<iq xmlns='{NS_COMPONENT}' type='set' id='{id}' from='{from}' to='{to}'>\
             <command xmlns='http://jabber.org/protocol/commands' node='USER_STATUS'>\
             <x xmlns='jabber:x:data' type='submit'>{fields}</x>{presence}</command></iq>"
        )
        .parse()
        .unwrap()
    }

    fn open(id: &str, from: &str, jid: &str, presence: &str) -> Element {
        us(
            id,
            from,
            SM,
            &[(Some("jid"), jid), (Some("available"), "true")],
            presence,
        )
    }

    fn close(id: &str, from: &str, jid: &str) -> Element {
        us(
            id,
            from,
            SM,
            &[(Some("jid"), jid), (Some("available"), "false")],
            "",
        )
    }

    const AWAY: &str =
        "<presence xmlns='jabber:client'><priority>-1</priority><show>away</show><status>Lunch</status></presence>";

    /// (type, condition) of a reply.
    fn kind(el: &Element) -> (String, Option<String>) {
        let condition = el.get_child("error", NS_COMPONENT).and_then(|e| {
            e.children()
                .find(|c| c.name() != "text")
                .map(|c| c.name().to_string())
        });
        (el.attr("type").unwrap_or_default().to_string(), condition)
    }

    fn error_text(el: &Element) -> String {
        el.get_child("error", NS_COMPONENT)
            .and_then(|e| e.children().find(|c| c.name() == "text"))
            .map(Element::text)
            .unwrap_or_default()
    }

    #[test]
    fn handshake_needs_the_secret() {
        let good = Element::from(Handshake::from_stream_id_and_password(
            "id1".into(),
            "s3cret",
        ));
        let bad = Element::from(Handshake::from_stream_id_and_password(
            "id1".into(),
            "guess",
        ));
        assert!(handshake_ok(&good, "id1", "s3cret"));
        assert!(
            !handshake_ok(&good, "id2", "s3cret"),
            "bound to the stream id"
        );
        assert!(!handshake_ok(&bad, "id1", "s3cret"));
        assert!(!handshake_ok(
            &Element::from(Handshake::new()),
            "id1",
            "s3cret"
        ));
    }

    #[test]
    fn open_update_close() {
        let mut s = sm();
        let now = Instant::now();
        let out = s.handle(&open("1", A, "alice@example.com/ext", AWAY), now);
        assert_eq!(out.len(), 1);
        assert_eq!(kind(&out[0]), ("result".into(), None));
        assert_eq!(
            (out[0].attr("from"), out[0].attr("to"), out[0].attr("id")),
            (Some(SM), Some(A), Some("1"))
        );
        let session = s.session("alice@example.com", "ext").unwrap();
        assert_eq!(
            session.presence,
            Presence {
                priority: -1,
                show: Some("away".into()),
                status: Some("Lunch".into())
            }
        );
        // Update of an existing session: applied, not answered.
        let dnd =
            "<presence xmlns='jabber:client'><priority>-2</priority><show>dnd</show></presence>";
        assert!(s
            .handle(&open("2", A, "alice@example.com/ext", dnd), now)
            .is_empty());
        let session = s.session("alice@example.com", "ext").unwrap();
        assert_eq!(
            session.presence,
            Presence {
                priority: -2,
                show: Some("dnd".into()),
                status: None
            }
        );
        assert_eq!(s.broadcasts.len(), 2);
        // Close: result and an unavailable broadcast.
        let out = s.handle(&close("3", A, "alice@example.com/ext"), now);
        assert_eq!(kind(&out[0]), ("result".into(), None));
        assert!(s.sessions().is_empty());
        assert_eq!(s.broadcasts.last().unwrap().presence, None);
        // Nothing left to close.
        let out = s.handle(&close("4", A, "alice@example.com/ext"), now);
        assert_eq!(
            kind(&out[0]),
            ("error".into(), Some("item-not-found".into()))
        );
        assert_eq!(
            error_text(&out[0]),
            "The user resource you want to remove does not exist."
        );
        assert_eq!(
            out[0]
                .get_child("error", NS_COMPONENT)
                .unwrap()
                .attr("type"),
            Some("cancel")
        );
        assert!(s.violations.is_empty(), "{:?}", s.violations);
    }

    #[test]
    fn untrusted_sender_is_forbidden() {
        let mut cfg = DoubleConfig::new("status.example.com", "s3cret", "example.com");
        cfg.trusted.clear();
        let mut s = SessionManager::new(cfg);
        let out = s.handle(&open("1", A, "alice@example.com/ext", AWAY), Instant::now());
        assert_eq!(kind(&out[0]), ("error".into(), Some("forbidden".into())));
        assert_eq!(error_text(&out[0]), "Only trusted entity can do it.");
        let error = out[0].get_child("error", NS_COMPONENT).unwrap();
        assert_eq!(
            (error.attr("type"), error.attr("code")),
            (Some("auth"), Some("403"))
        );
        // The original command comes back with the error (includeOriginalXML).
        assert!(out[0].has_child("command", "http://jabber.org/protocol/commands"));
        assert!(s.sessions().is_empty() && s.broadcasts.is_empty());
        // Closing is refused the same way (the trust check comes first).
        let out = s.handle(&close("2", A, "alice@example.com/ext"), Instant::now());
        assert_eq!(kind(&out[0]).1.as_deref(), Some("forbidden"));

        // Trusted: by domain (the component) or by bare JID; another domain is not.
        let mut s = sm();
        let out = s.handle(
            &open("3", "evil.example.org/x", "alice@example.com/ext", AWAY),
            Instant::now(),
        );
        assert_eq!(kind(&out[0]).1.as_deref(), Some("forbidden"));
        s.set_trusted(vec!["bot@evil.example.org".into()]);
        let out = s.handle(
            &open("4", "bot@evil.example.org/x", "alice@example.com/ext", AWAY),
            Instant::now(),
        );
        assert_eq!(kind(&out[0]).0, "result");
    }

    #[test]
    fn only_the_session_manager_takes_commands() {
        let mut s = sm();
        let jid = [(Some("jid"), "alice@example.com/ext")];
        for to in [
            "alice@example.com",
            "sess-man@other.example.net",
            "muc.example.com",
            "sess-man@example.com/r",
        ] {
            let out = s.handle(&us("1", A, to, &jid, AWAY), Instant::now());
            assert_eq!(
                kind(&out[0]).1.as_deref(),
                Some("service-unavailable"),
                "to={to}"
            );
        }
        assert!(s.sessions().is_empty());
        // The bare served domain is the session manager too (isLocalDomain).
        let out = s.handle(&us("2", A, "example.com", &jid, AWAY), Instant::now());
        assert_eq!(kind(&out[0]).0, "result");
    }

    #[test]
    fn bad_forms_are_undefined_conditions() {
        let mut s = sm();
        let cases: [&[(Option<&str>, &str)]; 3] = [
            &[(Some("available"), "true")], // no jid
            &[(Some("jid"), "not a jid@@"), (Some("available"), "true")],
            &[(None, "x"), (Some("jid"), "alice@example.com/ext")], // a field without var
        ];
        for fields in cases {
            let out = s.handle(&us("1", A, SM, fields, AWAY), Instant::now());
            assert_eq!(
                kind(&out[0]).1.as_deref(),
                Some("undefined-condition"),
                "{fields:?}"
            );
            // Tigase's Authorization.UNDEFINED_CONDITION writes this type, which no XMPP parser
            // accepts: the component sees no answer.
            assert_eq!(
                out[0]
                    .get_child("error", NS_COMPONENT)
                    .unwrap()
                    .attr("type"),
                Some("[undefined]")
            );
            assert!(error_text(&out[0]).starts_with("Unexpected error occured during the request:"));
        }
        // The field lookup fails before the trust check.
        let mut cfg = DoubleConfig::new("status.example.com", "s3cret", "example.com");
        cfg.trusted.clear();
        let mut untrusted = SessionManager::new(cfg);
        let out = untrusted.handle(&us("2", A, SM, &[(None, "x")], ""), Instant::now());
        assert_eq!(kind(&out[0]).1.as_deref(), Some("undefined-condition"));
        assert!(s.sessions().is_empty());
    }

    #[test]
    fn close_must_come_from_the_opener() {
        let mut s = sm();
        let now = Instant::now();
        s.handle(&open("1", A, "alice@example.com/ext", AWAY), now);
        let out = s.handle(&close("2", B, "alice@example.com/ext"), now);
        assert_eq!(kind(&out[0]).1.as_deref(), Some("item-not-found"));
        assert!(s.session("alice@example.com", "ext").is_some());
        // And an update from another sender opens a second session rather than updating.
        let out = s.handle(&open("3", B, "alice@example.com/other", AWAY), now);
        assert!(out
            .iter()
            .any(|e| e.attr("id") == Some("3") && e.attr("type") == Some("result")));
        assert_eq!(s.sessions().len(), 2);
    }

    #[test]
    fn available_field_and_defaults() {
        let mut s = sm();
        let now = Instant::now();
        // No `available`: true. No <presence/>: Tigase's default, priority -1.
        let out = s.handle(
            &us("1", A, SM, &[(Some("jid"), "alice@example.com/ext")], ""),
            now,
        );
        assert_eq!(kind(&out[0]).0, "result");
        assert_eq!(
            s.session("alice@example.com", "ext")
                .unwrap()
                .presence
                .priority,
            -1
        );
        // "FALSE" closes (equalsIgnoreCase).
        let out = s.handle(
            &us(
                "2",
                A,
                SM,
                &[
                    (Some("jid"), "alice@example.com/ext"),
                    (Some("available"), "FALSE"),
                ],
                "",
            ),
            now,
        );
        assert_eq!(kind(&out[0]).0, "result");
        assert!(s.sessions().is_empty());
        // A jid without resource gets a generated one.
        s.handle(&open("3", A, "alice@example.com", AWAY), now);
        assert!(s.sessions()[0].resource.starts_with("random-"));
    }

    #[test]
    fn what_tigase_does_not_refuse() {
        let mut s = sm();
        let now = Instant::now();
        // A domain Tigase does not serve, a priority >= 0: accepted by Tigase, so by the double.
        let out = s.handle(&open("1", A, "mallory@elsewhere.org/x", AWAY), now);
        assert_eq!(kind(&out[0]).0, "result");
        let p5 = "<presence xmlns='jabber:client'><priority>5</priority></presence>";
        let out = s.handle(&open("2", B, "alice@example.com/x", p5), now);
        assert_eq!(kind(&out[0]).0, "result");
        assert_eq!(
            s.session("alice@example.com", "x")
                .unwrap()
                .presence
                .priority,
            5
        );
    }

    #[test]
    fn silence_swallows_commands() {
        let mut s = sm();
        s.silent = true;
        assert!(s
            .handle(&open("1", A, "alice@example.com/ext", AWAY), Instant::now())
            .is_empty());
        assert!(s.sessions().is_empty() && s.broadcasts.is_empty());
    }

    #[test]
    fn checks_keep_or_close_sessions() {
        let mut cfg = DoubleConfig::new("status.example.com", "s3cret", "example.com");
        cfg.check_timeout = std::time::Duration::from_secs(30);
        let mut s = SessionManager::new(cfg);
        let t0 = Instant::now();
        s.handle(&open("1", A, "alice@example.com/one", AWAY), t0);
        // A second session of alice: the first is checked before the result (registerNewSession).
        let out = s.handle(&open("2", B, "alice@example.com/two", AWAY), t0);
        assert_eq!(out.len(), 2);
        let check = &out[0];
        assert_eq!(
            (check.attr("type"), check.attr("from"), check.attr("to")),
            (Some("get"), Some(SM), Some(A))
        );
        let command = check
            .get_child("command", "http://jabber.org/protocol/commands")
            .unwrap();
        assert_eq!(command.attr("node"), Some("CHECK_USER_CONNECTION"));
        assert!(String::from(command).contains("<value>alice@example.com</value>"));
        assert_eq!(kind(&out[1]).0, "result");
        let id = check.attr("id").unwrap().to_string();

        // An answer not addressed to sess-man does not count (matched by to + id).
        let wrong: Element = format!(
            "<iq xmlns='{NS_COMPONENT}' type='result' id='{id}' from='{A}' to='example.com'/>"
        )
        .parse()
        .unwrap();
        s.handle(&wrong, t0);
        assert_eq!(s.checks[0].outcome, CheckOutcome::Pending);
        assert_eq!(s.violations.len(), 1);
        let right: Element =
            format!("<iq xmlns='{NS_COMPONENT}' type='result' id='{id}' from='{A}' to='{SM}'/>")
                .parse()
                .unwrap();
        s.handle(&right, t0);
        assert_eq!(s.checks[0].outcome, CheckOutcome::Alive);

        // An error closes the session.
        let c = s.check(A, t0).unwrap();
        let err: Element = format!(
            "<iq xmlns='{NS_COMPONENT}' type='error' id='{}' from='{A}' to='{SM}'>\
             <error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>",
            c.attr("id").unwrap()
        )
        .parse()
        .unwrap();
        s.handle(&err, t0);
        assert!(s.session("alice@example.com", "one").is_none());

        // No answer within the timeout closes it too.
        let checks = s.login_elsewhere("alice@example.com", t0);
        assert_eq!(checks.len(), 1);
        assert_eq!(
            s.next_expiry(),
            Some(t0 + std::time::Duration::from_secs(30))
        );
        s.expire(t0 + std::time::Duration::from_secs(29));
        assert!(s.session("alice@example.com", "two").is_some());
        s.expire(t0 + std::time::Duration::from_secs(30));
        assert!(s.sessions().is_empty());
        assert_eq!(s.checks.last().unwrap().outcome, CheckOutcome::TimedOut);
        // A check goes only to a session that exists.
        assert!(s.check(A, t0).is_none());
    }

    #[test]
    fn restart_forgets_sessions() {
        let mut s = sm();
        s.handle(&open("1", A, "alice@example.com/ext", AWAY), Instant::now());
        s.restart();
        assert!(s.sessions().is_empty());
        // Closing after the restart: nothing to close.
        let out = s.handle(&close("2", A, "alice@example.com/ext"), Instant::now());
        assert_eq!(kind(&out[0]).1.as_deref(), Some("item-not-found"));
    }

    #[test]
    fn pings_are_answered_and_strays_recorded() {
        let mut s = sm();
        let ping: Element = format!(
            "<iq xmlns='{NS_COMPONENT}' type='get' id='p1' from='status.example.com' to='example.com'><ping xmlns='urn:xmpp:ping'/></iq>"
        )
        .parse()
        .unwrap();
        let out = s.handle(&ping, Instant::now());
        assert_eq!(kind(&out[0]).0, "result");
        let presence: Element = format!(
            "<presence xmlns='{NS_COMPONENT}' from='alice@example.com/x' to='bob@example.com'/>"
        )
        .parse()
        .unwrap();
        assert!(s.handle(&presence, Instant::now()).is_empty());
        assert_eq!(s.violations.len(), 1);
    }
}

/// The Agent API calls act through rosters and stanzas in a user's name, which Tigase's
/// USER_STATUS sessions do not give: not offered (404 with the reason), never a fake answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_calls_are_not_offered() {
    let (_double, ext) = setup(5, |_| {}).await;
    for (call, body) in [
        ("PresenceProbe", format!(r#"{{"to":"bob@{DOMAIN}"}}"#)),
        (
            "SendPresenceSubscription",
            format!(r#"{{"to":"bob@{DOMAIN}"}}"#),
        ),
        ("GetRoster", "{}".to_string()),
    ] {
        let (code, text) = request(
            ext.http,
            "POST",
            &format!("/Agent/Xmpp/{call}?user=alice@{DOMAIN}"),
            &[("Api-Key", API_KEY), ("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await;
        assert_eq!(code, 404, "{call}: {text}");
        assert!(
            text.contains("not offered with this backend"),
            "{call}: {text}"
        );
    }
}
