//! Demo: a throwaway Prosody on loopback, extpresence against it, alice's status set over the
//! native API with an expiry, bob's real XMPP client receiving it, `extpresence get` showing it,
//! `extpresence watch` printing the events, and the expiry arriving. Run with
//! `bash scripts/demo.sh` (`--keep`: keep running until Ctrl-C to try things by hand).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

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
    println!(
        "   status page: http://{}/  (sign in with the key {API_KEY})",
        ext.http
    );

    let alice = format!("alice@{DOMAIN}");
    let bin = common::ext::binary();
    let url = format!("http://{}", ext.http);
    println!("4. extpresence watch --user {alice}   (the event stream, one line per event)");
    let mut watch = tokio::process::Command::new(&bin)
        .args(["--url", &url, "watch", "--user", &alice])
        .env("EXTPRESENCE_KEY", API_KEY)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("extpresence watch");
    let mut watched = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = watched.next_line().await {
            println!("   watch | {line}");
        }
    });

    // Until the stream is open (the hub counts its subscribers in /metrics).
    for _ in 0..100 {
        let (_, metrics) = common::ext::request(ext.http, "GET", "/metrics", &[], b"").await;
        if metrics.contains("extpresence_event_subscribers 1\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body =
        r#"{"presence": "away", "status": "On the phone", "source": "pbx", "expires_in": 10}"#;
    println!(
        "5. curl -X PUT -H 'Api-Key: {API_KEY}' -H 'Content-Type: application/json' \\\n      \
         {url}/v1/users/{alice}/status -d '{body}'"
    );
    let (code, response) = common::ext::request(
        ext.http,
        "PUT",
        &format!("/v1/users/{alice}/status"),
        &[("Api-Key", API_KEY), ("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await;
    println!("   HTTP {code}: {response}");

    println!("6. bob's client (logged in as {}) receives:", bob.jid);
    let p = bob
        .expect_presence(Duration::from_secs(10), |p| {
            p.type_ == PresenceType::None
                && p.from
                    .as_ref()
                    .is_some_and(|f| f.to_string() == format!("{alice}/tigase-external"))
        })
        .await;
    println!(
        "   presence from {} show={:?} status={:?} priority={}",
        p.from.as_ref().unwrap(),
        p.show,
        p.statuses.values().next(),
        p.priority.0
    );

    println!("7. extpresence get {alice}");
    let out = tokio::process::Command::new(&bin)
        .args(["--url", &url, "get", &alice])
        .env("EXTPRESENCE_KEY", API_KEY)
        .output()
        .await
        .expect("extpresence get");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("   {line}");
    }

    println!("8. the status expires 10 s after it was set: bob sees it go");
    let p = bob
        .expect_presence(Duration::from_secs(20), |p| {
            p.type_ == PresenceType::Unavailable
                && p.from
                    .as_ref()
                    .is_some_and(|f| f.to_string() == format!("{alice}/tigase-external"))
        })
        .await;
    println!("   bob got unavailable from {}", p.from.as_ref().unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;

    if std::env::args().any(|a| a == "--keep") {
        println!(
            "\nextpresence keeps running until Ctrl-C. Try:\n  \
             export EXTPRESENCE_URL={url} EXTPRESENCE_KEY={API_KEY}\n  \
             {bin} set {alice} dnd \"In a meeting\" --expires 2m\n  \
             {bin} get {alice}\n  \
             curl -H 'Api-Key: {API_KEY}' {url}/v1/users/{alice}/presence\n\
             and open {url}/ in a browser (key {API_KEY}).\n\
             bob's client prints what it receives:",
            bin = bin.display()
        );
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                p = bob.expect_presence(Duration::from_secs(86_400), |_| true) => {
                    println!(
                        "   bob received: from {} type={:?} show={:?} status={:?}",
                        p.from.map(|f| f.to_string()).unwrap_or_default(),
                        p.type_,
                        p.show,
                        p.statuses.values().next()
                    );
                }
            }
        }
    }
    drop(watch);

    println!("9. SIGTERM to extpresence");
    let code = ext.terminate().await;
    println!("   extpresence exited with {code:?}");
    println!("demo finished: Prosody's temp dir is removed");
}
