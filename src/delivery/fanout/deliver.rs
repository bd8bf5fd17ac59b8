//! Delivery: the held presences of users, as one directed presence per cached contact.
//!
//! [`Deliverer`] turns the table's entries into stanzas on the link: what changed since its
//! last delivery (marked delivered once sent), what a fresh roster adds or removes, every held
//! presence to a contact resource that comes online (greet), and `unavailable` for every held
//! resource on shutdown. It reads the rosters cached in the table and never fetches one.

use std::collections::HashSet;

use jid::{BareJid, FullJid};
use tracing::{debug, info, warn};

use crate::status::{Held, StatusTable};
use crate::xmpp::stanzas::{PresenceBatch, PresenceTemplate};
use crate::xmpp::LinkHandle;

/// Most presences in one batch to the link. The link's queue is bounded in commands, so this
/// bounds what it can hold (a user with thousands of contacts, a replay against a slow server).
const BATCH_MAX: usize = 32;

/// Sends held presences to contacts: the table (entries, cached rosters, delivery marks) and
/// the link.
pub(super) struct Deliverer {
    table: StatusTable,
    link: LinkHandle,
}

impl Deliverer {
    pub(super) fn new(table: StatusTable, link: LinkHandle) -> Self {
        Deliverer { table, link }
    }

    fn full(user: &BareJid, held: &Held) -> FullJid {
        user.with_resource(&held.resource)
    }

    /// One entry of `user`, rendered once: its presence, or `unavailable` for a tombstone.
    fn template(user: &BareJid, held: &Held) -> PresenceTemplate {
        PresenceTemplate::new(&Self::full(user, held), held.status.as_ref())
    }

    /// `unavailable` of one entry of `user`, whatever its status.
    fn unavailable(user: &BareJid, held: &Held) -> PresenceTemplate {
        PresenceTemplate::new(&Self::full(user, held), None)
    }

    /// Whether `user`'s roster is cached (a change can be delivered at once).
    pub(super) fn has_roster(&self, user: &BareJid) -> bool {
        self.table.roster(user).is_some()
    }

    /// Every entry counts as undelivered again (the replay after a connect).
    pub(super) fn forget_deliveries(&self) {
        self.table.forget_deliveries();
    }

    /// The users with held entries.
    pub(super) fn users(&self) -> Vec<BareJid> {
        self.table.users()
    }

    /// Send `template` to each of `to`, in batches of at most [`BATCH_MAX`].
    async fn send_to<'a>(
        &self,
        template: &PresenceTemplate,
        to: impl IntoIterator<Item = &'a BareJid>,
    ) {
        let mut batch = PresenceBatch::new();
        for jid in to {
            template.push_to(&mut batch, jid.as_str());
            if batch.len() >= BATCH_MAX {
                self.link.send_batch(std::mem::take(&mut batch)).await;
            }
        }
        self.link.send_batch(batch).await;
    }

    /// Deliver the entries of `user` changed since their last delivery to the cached contacts,
    /// and mark them delivered.
    pub(super) async fn deliver(&self, user: &BareJid) {
        let Some(contacts) = self.table.roster(user) else {
            return;
        };
        for held in self.table.entries(user) {
            if held.delivered == held.seq {
                continue;
            }
            self.send_to(&Self::template(user, &held), contacts.iter())
                .await;
            self.table.mark_delivered(user, &held.resource, held.seq);
        }
    }

    /// `user`'s roster was fetched again (`old` is the one cached before, if any; `new` is
    /// cached now): contacts gone get `unavailable`, new ones what the others already have, and
    /// whatever is not yet delivered goes to everyone.
    pub(super) async fn roster_changed(
        &self,
        user: &BareJid,
        old: Option<&HashSet<BareJid>>,
        new: &HashSet<BareJid>,
    ) {
        let entries = self.table.entries(user);
        if let Some(old) = old {
            // Contacts gone since the last fetch no longer see us; new ones get what the others
            // already have (after a reconnect nothing counts as delivered: all goes below).
            for held in entries.iter().filter(|h| h.status.is_some()) {
                self.send_to(&Self::unavailable(user, held), old.difference(new))
                    .await;
                if held.delivered == held.seq {
                    self.send_to(&Self::template(user, held), new.difference(old))
                        .await;
                }
            }
        }
        // Whatever is not yet delivered goes to everyone now.
        self.deliver(user).await;
    }

    /// A contact resource came online: send it every held presence of `users`, those it
    /// follows (the caller sends nothing before ready: the replay after connect reaches it
    /// through its bare JID).
    pub(super) async fn greet(&self, contact: &FullJid, users: Option<&HashSet<BareJid>>) {
        let Some(users) = users else {
            return;
        };
        let mut batch = PresenceBatch::new();
        for user in users {
            for held in self.table.entries(user) {
                if held.status.is_some() {
                    Self::template(user, &held).push_to(&mut batch, contact.as_str());
                    if batch.len() >= BATCH_MAX {
                        self.link.send_batch(std::mem::take(&mut batch)).await;
                    }
                }
            }
        }
        self.link.send_batch(batch).await;
        debug!(%contact, users = users.len(), "contact online: held presences sent");
    }

    /// Shutdown: `unavailable` for every held resource to its cached contacts, if the link is
    /// `up`.
    pub(super) async fn shutdown(&self, up: bool) {
        if !up {
            warn!("XMPP link is down: contacts keep seeing held statuses until the server notices");
            return;
        }
        let mut sent = 0usize;
        for user in self.table.users() {
            let Some(contacts) = self.table.roster(&user) else {
                continue;
            };
            for held in self.table.entries(&user) {
                if held.status.is_some() {
                    self.send_to(&Self::unavailable(&user, &held), contacts.iter())
                        .await;
                    sent += contacts.len();
                }
            }
        }
        info!(sent, "sent unavailable for held resources");
    }
}
