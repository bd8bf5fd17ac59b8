//! Shared integration-test harness: the names every test uses (domain, component, secret,
//! password), free loopback ports, and re-exports of the pieces:
//!
//! - `prosody.rs`: a throwaway Prosody 0.12 server ([`Prosody`]);
//! - `client.rs`: real XMPP users ([`TestClient`]) and roster helpers ([`subscribe_mutual`],
//!   [`subscribe_one_way`]);
//! - `ejabberd.rs`: a throwaway ejabberd 23.01 server;
//! - `server.rs`: one handle over both, so the suite runs every scenario on each;
//! - `ext.rs`: the `extpresence` binary under test and a raw HTTP client;
//! - `proxy.rs`: a TCP proxy on the component link, to cut it while the server stays up, and
//!   one that trickles an HTTP answer a byte at a time;
//! - `tmpfs.rs`: a small tmpfs to fill, for the full-disk tests;
//! - `tigase_double.rs`: a double of Tigase's component listener and session manager (Tigase
//!   cannot be installed here), for `backend = "tigase"`.
//!
//! Each test crate (and the demo example) uses a different subset of this module, hence
//! `dead_code` and `unused_imports` are allowed here.

#![allow(dead_code, unused_imports, unused_macros)]

/// Run every scenario (an `async fn(Kind)` of the test crate) on each server:
/// `prosody::<scenario>` and `ejabberd::<scenario>` (the crate imports `Kind`).
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        mod prosody {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Prosody).await
                }
            )*
        }
        mod ejabberd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Ejabberd).await
                }
            )*
        }
    };
}

mod client;
pub mod ejabberd;
pub mod ext;
mod prosody;
pub mod proxy;
pub mod server;
pub mod tigase_double;
pub mod tmpfs;

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

pub use client::{login_stream, subscribe_mutual, subscribe_one_way, TestClient};
pub use prosody::Prosody;

/// The VirtualHost every test user lives on.
pub const DOMAIN: &str = "localhost";
/// The XEP-0114 component JID.
pub const COMPONENT: &str = "status.localhost";
/// The component's shared secret.
pub const SECRET: &str = "test-component-secret";
/// Every test user's password.
pub const PASSWORD: &str = "pass";

/// A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, drop the listener).
/// Never hands out the same port twice within one test process.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no fresh free port on 127.0.0.1 after 100 tries");
}

/// A server of `kind` with `users` registered, alice and bob mutual contacts (made by real
/// clients, then logged out), and extpresence connected and privileged.
pub struct World {
    /// The XMPP server.
    pub server: server::Server,
    /// extpresence.
    pub ext: ext::Ext,
}

/// Make alice and bob mutual contacts on `server` with real clients, then log them out.
pub async fn alice_and_bob_mutual(server: &server::Server) {
    let port = server.c2s_port();
    let mut alice = TestClient::connect(port, "alice", true).await;
    let mut bob = TestClient::connect(port, "bob", true).await;
    subscribe_mutual(&mut alice, &mut bob).await;
    alice.disconnect().await;
    bob.disconnect().await;
}

/// Mint a token for `user` with `access` through `POST /v1/tokens` (the test's admin key).
pub async fn mint_token(ext: &ext::Ext, user: &str, access: &str) -> String {
    let (code, text) = ext::request(
        ext.http,
        "POST",
        "/v1/tokens",
        &[
            ("Api-Key", ext::API_KEY),
            ("Content-Type", "application/json"),
        ],
        serde_json::json!({"user": user, "access": access})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(code, 201, "{text}");
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// An available presence with `show`, status text and priority.
pub fn presence(
    show: Option<xmpp_parsers::presence::Show>,
    status: &str,
    priority: i8,
) -> xmpp_parsers::presence::Presence {
    let mut p = xmpp_parsers::presence::Presence::available();
    p.show = show;
    p.priority = xmpp_parsers::presence::Priority(priority);
    p.statuses.insert(
        xmpp_parsers::message::Lang(String::new()),
        status.to_string(),
    );
    p
}

/// Register alice and bob on `prosody` and make them mutual contacts (both then log out).
pub async fn alice_and_bob_contacts(prosody: &Prosody) {
    prosody.register(&["alice", "bob"]).await;
    let mut alice = TestClient::connect(prosody.c2s_port, "alice", true).await;
    let mut bob = TestClient::connect(prosody.c2s_port, "bob", true).await;
    subscribe_mutual(&mut alice, &mut bob).await;
    alice.disconnect().await;
    bob.disconnect().await;
}

/// Start a [`World`].
pub async fn world(kind: server::Kind, users: &[&str]) -> World {
    let server = server::Server::start(kind).await;
    server.register(users).await;
    alice_and_bob_mutual(&server).await;
    let mut ext = ext::Ext::start(server.component_port(), DOMAIN, COMPONENT, SECRET).await;
    ext.wait_privileged(1).await;
    World { server, ext }
}

/// A JSON call with the test key: the status and the answer parsed (panics if it is not JSON).
pub async fn call_json(
    ext: &ext::Ext,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut headers = vec![("Api-Key", ext::API_KEY)];
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    let (code, text) = ext::request(ext.http, method, path, &headers, body.as_bytes()).await;
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
    (code, v)
}

/// The seconds of an answer's `Retry-After` (it must have one).
pub fn retry_after(r: &reqwest::Response) -> u64 {
    let v = r.headers().get("retry-after").expect("a Retry-After");
    v.to_str().unwrap().parse().expect("Retry-After in seconds")
}

/// `POST /v1/statuses` with `updates` (the admin key): the answer must be 200; each item's result.
pub async fn bulk_results(ext: &ext::Ext, updates: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let body = serde_json::json!({ "updates": updates });
    let (code, v) = call_json(ext, "POST", "/v1/statuses", Some(body)).await;
    assert_eq!(code, 200, "{v}");
    v["results"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no results: {v}"))
}

/// `POST /v1/statuses` with `updates` (the admin key); every item must be ok.
pub async fn bulk(ext: &ext::Ext, updates: &[serde_json::Value]) {
    let results = bulk_results(ext, updates).await;
    assert!(results.iter().all(|r| r["ok"] == true), "{results:?}");
}

/// Run a README `sh` block with `bash -euo pipefail` (it must succeed) and parse each non-empty
/// line of its output as JSON.
pub async fn run_sh_json(script: &str) -> Vec<serde_json::Value> {
    let out = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .output()
        .await
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The `nth` (1-based) code block in `lang` of the README section titled `title`, as written.
pub fn readme_code(title: &str, lang: &str, nth: usize) -> String {
    let readme = include_str!("../../README.md");
    let section = &readme[readme
        .find(title)
        .unwrap_or_else(|| panic!("README section {title}"))..];
    section
        .split(&format!("```{lang}\n"))
        .nth(nth)
        .and_then(|b| b.split("```").next())
        .unwrap_or_else(|| panic!("{lang} block {nth} of {title}"))
        .to_string()
}
