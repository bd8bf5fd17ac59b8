//! Shared integration-test harness: the names every test uses (domain, component, secret,
//! password), free loopback ports, and re-exports of the pieces:
//!
//! - `prosody.rs`: a throwaway Prosody 0.12 server ([`Prosody`]);
//! - `client.rs`: real XMPP users ([`TestClient`]) and roster helpers ([`subscribe_mutual`],
//!   [`subscribe_one_way`]);
//! - `ejabberd.rs`: a throwaway ejabberd 23.01 server;
//! - `server.rs`: one handle over both, so the suite runs every scenario on each;
//! - `ext.rs`: the `extpresence` binary under test and a raw HTTP client;
//! - `proxy.rs`: a TCP proxy on the component link, to cut it while the server stays up;
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
