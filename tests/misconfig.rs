//! Tier: one real server (Prosody, with real XMPP clients).
//!
//! What an admin sees when the server side is set up wrong, and that an idle link stays up: the
//! real binary against a real Prosody whose config lacks one line, checking the log names the fix.

mod common;

use std::time::Duration;

use common::ext::Ext;
use common::{subscribe_mutual, Prosody, TestClient, COMPONENT, DOMAIN, SECRET};

/// alice and bob are mutual contacts on `prosody`; extpresence runs against it.
async fn with_contacts(prosody: &Prosody) {
    prosody.register(&["alice", "bob"]).await;
    let mut alice = TestClient::connect(prosody.c2s_port, "alice", true).await;
    let mut bob = TestClient::connect(prosody.c2s_port, "bob", true).await;
    subscribe_mutual(&mut alice, &mut bob).await;
    alice.disconnect().await;
    bob.disconnect().await;
}

/// Without `validate_from_addresses = false` Prosody closes the stream with `invalid-from` on the
/// first presence; extpresence logs the server's text and the fix, and keeps the status held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_from_names_the_fix() {
    let prosody = Prosody::start_with(|c| c.replace("validate_from_addresses = false", "")).await;
    with_contacts(&prosody).await;
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
