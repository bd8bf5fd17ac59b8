//! Delivery: turning table changes into stanzas, and telling the HTTP layer what became of them.
//!
//! Two backends, chosen by `[xmpp] backend`:
//! - `fanout` (Prosody, ejabberd): the component reads rosters through XEP-0356 and sends one
//!   directed presence per subscribed contact. The server acknowledges none of it, so a change is a
//!   success as soon as it is held: it reaches contacts whenever the link allows.
//! - `tigase`: the server itself holds a synthetic session per user+resource (the `USER_STATUS`
//!   command) and answers the commands that open and close one, so a change is a success only
//!   once the server has taken it; [`Delivery::confirm`] waits for that.

pub mod fanout;
pub mod tigase;

use std::time::Duration;

use jid::{BareJid, ResourcePart};

/// The HTTP layer's view of the delivery backend: what became of a change.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// Fan-out: holding a change is success.
    Fanout,
    /// Tigase session mode: the server's answer decides.
    Tigase(tigase::Handle),
}

/// Why a change did not take effect on the server (yet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The server answered with an error (condition and text, e.g. `forbidden: Only trusted
    /// entity can do it.`).
    #[error("the XMPP server refused it: {0}")]
    Refused(String),
    /// The server did not answer in time.
    #[error("no answer from the XMPP server within {0:?}")]
    Timeout(Duration),
    /// The component link is down; the change is held and sent when it is back.
    #[error(
        "the XMPP link is down; the change is held and sent to the server when the link is back"
    )]
    LinkDown,
}

impl Delivery {
    /// Wait until change `seq` of `user/resource` (as returned by the table) has taken effect on
    /// the server, or say why not. Bounded: never longer than about twice the Tigase timeout.
    pub async fn confirm(
        &self,
        user: &BareJid,
        resource: &ResourcePart,
        seq: u64,
    ) -> Result<(), DeliveryError> {
        match self {
            Delivery::Fanout => Ok(()),
            Delivery::Tigase(handle) => handle.confirm(user, resource, seq).await,
        }
    }
}
