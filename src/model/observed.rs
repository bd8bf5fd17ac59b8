//! What the server tells of a JID: the presence one of its sessions announced ([`Announced`]),
//! and an item of a user's roster ([`RosterItem`]). Plain values: `xmpp/stanzas.rs` parses them
//! from stanzas, `observe/` keeps them, the dialects show them.

use jid::BareJid;

use super::Show;

/// A presence announced by the server for one full JID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announced {
    /// Available with this show, status text and priority, since (ms; the delay stamp of an
    /// announcement of an older presence, else now).
    Available {
        /// `<show/>`.
        show: Option<Show>,
        /// `<status/>`.
        status: Option<String>,
        /// `<priority/>`.
        priority: i8,
        /// Since when.
        since: u64,
        /// The presence's other children, as XML (the read model keeps at most
        /// `observe::MAX_EXTRA` bytes).
        extra: Option<String>,
    },
    /// Gone, with this status text (`None` also when we inferred it).
    Unavailable {
        /// `<status/>` of the `unavailable`.
        status: Option<String>,
    },
}

/// One roster item, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterItem {
    /// The contact.
    pub jid: BareJid,
    /// `none`, `to`, `from` or `both`.
    pub subscription: &'static str,
    /// The user asked for a subscription that is not approved yet (`ask='subscribe'`).
    pub asked: bool,
    /// The name the user gave the contact.
    pub name: Option<String>,
    /// The user's groups of the contact.
    pub groups: Vec<String>,
}

impl RosterItem {
    /// Whether the contact's presence reaches the user (subscription `to` or `both`).
    pub fn sees_contact(&self) -> bool {
        matches!(self.subscription, "to" | "both")
    }

    /// Whether the user's presence reaches the contact (subscription `from` or `both`).
    pub fn sees_user(&self) -> bool {
        matches!(self.subscription, "from" | "both")
    }
}
