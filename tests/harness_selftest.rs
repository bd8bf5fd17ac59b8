//! Tier: one real server (Prosody, with real XMPP clients).
//!
//! Self-test of the Prosody harness in `tests/common/`: a real Prosody starts, four users
//! register, real clients build the rosters the other tests rely on (alice and bob `both`, dave
//! subscribed to alice), presence flows between contacts and not to strangers, the server
//! restarts on the same ports and data, and dropping it leaves no process behind.
//!
//! This file owns only these checks; the harness itself lives in `tests/common/`.

mod common;

use std::time::Duration;

use common::{subscribe_mutual, subscribe_one_way, Prosody, TestClient, DOMAIN};
use xmpp_parsers::presence::{Presence, Show, Type as PresenceType};
use xmpp_parsers::roster::{Roster, Subscription};

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_secs(1);

fn subscription(roster: &Roster, user: &str) -> Option<Subscription> {
    roster
        .items
        .iter()
        .find(|i| i.jid.as_str() == format!("{user}@{DOMAIN}"))
        .map(|i| i.subscription.clone())
}

fn from_alice(p: &Presence) -> bool {
    p.from
        .as_ref()
        .is_some_and(|j| j.to_bare().as_str() == format!("alice@{DOMAIN}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rosters_presence_and_restart() {
    let mut prosody = Prosody::start().await;
    assert_ne!(prosody.c2s_port, prosody.component_port);
    prosody.register(&["alice", "bob", "carol", "dave"]).await;

    let mut alice = TestClient::connect(prosody.c2s_port, "alice", true).await;
    let mut bob = TestClient::connect(prosody.c2s_port, "bob", true).await;
    let mut carol = TestClient::connect(prosody.c2s_port, "carol", true).await;
    let mut dave = TestClient::connect(prosody.c2s_port, "dave", true).await;
    assert_eq!(alice.jid.to_bare().as_str(), format!("alice@{DOMAIN}"));

    subscribe_mutual(&mut alice, &mut bob).await;
    subscribe_one_way(&mut dave, &mut alice).await;

    let roster = alice.roster().await;
    assert_eq!(
        subscription(&roster, "bob"),
        Some(Subscription::Both),
        "{roster:?}"
    );
    assert_eq!(
        subscription(&roster, "dave"),
        Some(Subscription::From),
        "{roster:?}"
    );
    assert_eq!(subscription(&roster, "carol"), None, "{roster:?}");
    let roster = bob.roster().await;
    assert_eq!(
        subscription(&roster, "alice"),
        Some(Subscription::Both),
        "{roster:?}"
    );
    let roster = dave.roster().await;
    assert_eq!(
        subscription(&roster, "alice"),
        Some(Subscription::To),
        "{roster:?}"
    );

    // Presence broadcast reaches the contacts (parsed as real presences) and not the stranger.
    bob.drain();
    dave.drain();
    carol.drain();
    let mut p = Presence::available();
    p.show = Some(Show::Away);
    p.set_status("en", "harness self-test");
    alice.send(p).await;
    for contact in [&mut bob, &mut dave] {
        let got = contact
            .expect_presence(WAIT, |p| from_alice(p) && p.show == Some(Show::Away))
            .await;
        assert_eq!(
            got.statuses.values().next().map(String::as_str),
            Some("harness self-test")
        );
    }
    let seen = carol.presences_within(QUIET).await;
    assert!(!seen.iter().any(from_alice), "carol saw alice: {seen:?}");

    // Leaving is seen as unavailable by the contacts.
    alice.disconnect().await;
    bob.expect_presence(WAIT, |p| {
        from_alice(p) && p.type_ == PresenceType::Unavailable
    })
    .await;
    drop(carol);
    drop(dave);

    // Restart on the same ports and data: accounts and rosters survive, clients log in again.
    let (c2s, component) = (prosody.c2s_port, prosody.component_port);
    prosody.stop().await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", c2s))
            .await
            .is_err(),
        "c2s port still open after stop"
    );
    prosody.start_again().await;
    assert_eq!((prosody.c2s_port, prosody.component_port), (c2s, component));
    let mut alice = TestClient::connect(prosody.c2s_port, "alice", false).await;
    let roster = alice.roster().await;
    assert_eq!(
        subscription(&roster, "bob"),
        Some(Subscription::Both),
        "{roster:?}"
    );
    assert_eq!(
        subscription(&roster, "dave"),
        Some(Subscription::From),
        "{roster:?}"
    );
    alice.disconnect().await;
    drop(bob);
    assert!(
        prosody.log().contains("Shutdown complete"),
        "{}",
        prosody.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_leaves_no_process() {
    let prosody = Prosody::start().await;
    let pid = prosody.pid().expect("running");
    let dir = prosody.dir.path().to_path_buf();
    let port = prosody.c2s_port;
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(prosody);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "Prosody pid {pid} still exists (zombie or alive) after drop"
    );
    assert!(!dir.exists(), "temp dir {} left behind", dir.display());
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err());
}
