//! Demo: a throwaway Prosody on loopback, extpresence against it, alice's status set over HTTP,
//! and bob's real XMPP client receiving it. Run with `bash scripts/demo.sh`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::ext::{Ext, API_KEY};
use common::{subscribe_mutual, Prosody, TestClient, COMPONENT, DOMAIN, SECRET};
use xmpp_parsers::presence::Type as PresenceType;

#[tokio::main]
async fn main() {
    println!("1. starting a throwaway Prosody on 127.0.0.1 (temp dir, free ports)");
    let prosody = Prosody::start().await;
    prosody.register(&["alice", "bob"]).await;
    println!(
        "   c2s on 127.0.0.1:{}, component listener on 127.0.0.1:{}",
        prosody.c2s_port, prosody.component_port
    );

    println!("2. alice and bob become contacts (real clients exchange subscribe/subscribed)");
    let mut alice = TestClient::connect(prosody.c2s_port, "alice", true).await;
    let mut bob = TestClient::connect(prosody.c2s_port, "bob", true).await;
    subscribe_mutual(&mut alice, &mut bob).await;
    alice.disconnect().await;
    bob.drain();

    println!("3. starting extpresence as component {COMPONENT}");
    let mut ext = Ext::start(prosody.component_port, DOMAIN, COMPONENT, SECRET).await;
    ext.wait_privileged(1).await;
    println!("   HTTP API on http://{}", ext.http);

    let url = format!(
        "http://{}/rest/user/alice@{DOMAIN}/status?api-key={API_KEY}",
        ext.http
    );
    let body = "<command><available>true</available><priority>-1</priority><show>xa</show><status>On the phone</status></command>";
    println!("4. curl -X POST -H 'Content-Type: application/xml' '{url}' -d '{body}'");
    let (code, response) = ext
        .post(
            &format!("/rest/user/alice@{DOMAIN}/status"),
            "application/xml",
            body,
        )
        .await;
    println!("   HTTP {code}: {response}");

    println!("5. bob's client (logged in as {}) receives:", bob.jid);
    let p = bob
        .expect_presence(Duration::from_secs(10), |p| {
            p.type_ == PresenceType::None
                && p.from
                    .as_ref()
                    .is_some_and(|f| f.to_string() == format!("alice@{DOMAIN}/tigase-external"))
        })
        .await;
    println!(
        "   presence from {} show={:?} status={:?} priority={}",
        p.from.as_ref().unwrap(),
        p.show,
        p.statuses.values().next(),
        p.priority.0
    );

    println!("6. SIGTERM to extpresence: bob sees alice/tigase-external go unavailable");
    let code = ext.terminate().await;
    let p = bob
        .expect_presence(Duration::from_secs(10), |p| {
            p.type_ == PresenceType::Unavailable
                && p.from
                    .as_ref()
                    .is_some_and(|f| f.to_string() == format!("alice@{DOMAIN}/tigase-external"))
        })
        .await;
    println!(
        "   extpresence exited with {code:?}; bob got unavailable from {}",
        p.from.unwrap()
    );
    println!("demo finished: Prosody's temp dir is removed");
}
