//! The XMPP side: the supervised component link and the stanzas that cross it.
//!
//! `link` owns the one XEP-0114 connection (handshake, keepalive, reconnect with backoff);
//! `stanzas` builds and parses everything we send and receive; `check` makes one test connection
//! (`check-config --connect`).

pub mod check;
pub mod link;
pub mod stanzas;

pub use link::{LinkConfig, LinkEvent, LinkHandle, LinkState};
pub use stanzas::Outbound;
