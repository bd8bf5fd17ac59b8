//! The delivery backend's side of the table: the change lanes, delivery bookkeeping and the
//! roster cache.
//!
//! Changes are announced to the delivery backend through [`Changes`]: a user is queued at most
//! once until the backend has taken it (a flag in the user's slot), so what waits for a slow or
//! blocked backend is bounded by the number of users, whatever the rate of updates. Users whose
//! roster the backend has cached go to a lane of their own that the backend reads first: an
//! ordinary update of a known user does not wait behind a flood of new users whose rosters must
//! be fetched. The backend records what reached contacts ([`StatusTable::mark_delivered`]); a
//! delivered tombstone is forgotten.
//!
//! Beside each user's resources the table keeps the delivery backend's cached copy of the user's
//! roster ([`StatusTable::roster`]): one slot per user instead of a second map keyed by the same
//! JID, which matters at a million held users (see BENCHMARKS.md).

use std::sync::Arc;

use jid::{BareJid, ResourcePart};
use tokio::sync::mpsc;

use super::held::UserEntry;
use super::StatusTable;

/// A change notification: the user whose entries changed.
pub type Change = BareJid;

/// A cached roster: the contacts that receive a user's presence. A thin pointer (8 bytes, not the
/// 16 of an `Arc<[_]>`): it sits in every user's slot, and P4 holds a million.
pub type Roster = Arc<Box<[BareJid]>>;

/// The delivery backend's end of the change notifications (see the module doc): each user at
/// most once until received, users with a cached roster first.
#[derive(Debug)]
pub struct Changes {
    pub(super) table: StatusTable,
    /// Users whose roster is cached: deliverable at once.
    pub(super) known: mpsc::UnboundedReceiver<Change>,
    /// Users whose roster is still to be fetched.
    pub(super) new: mpsc::UnboundedReceiver<Change>,
}

impl Changes {
    /// The next user whose entries changed since the backend last took that user. Cancel-safe.
    /// (It waits for ever when nothing changes: backends stop on their control channel.)
    pub async fn recv(&mut self) -> Option<Change> {
        let user = tokio::select! {
            biased;
            Some(u) = self.known.recv() => u,
            Some(u) = self.new.recv() => u,
            else => return None,
        };
        if let Some(mut e) = self.table.inner.map.get_mut(&user) {
            e.queued = false;
        }
        Some(user)
    }
}
impl StatusTable {
    /// Queue `user` (whose `entry` just changed) in its lane, unless it waits there already.
    pub(super) fn announce(&self, entry: &mut UserEntry, user: &BareJid) {
        if !entry.queued {
            entry.queued = true;
            let lane = if entry.roster.is_some() {
                &self.inner.known
            } else {
                &self.inner.new
            };
            // The receiver only goes away at shutdown; then nothing needs to be announced.
            let _ = lane.send(user.clone());
        }
    }

    /// Count every entry as never delivered (after a reconnect: the server forgot what it had).
    pub fn forget_deliveries(&self) {
        for mut e in self.inner.map.iter_mut() {
            for h in e.held.iter_mut() {
                h.delivered = 0;
            }
        }
    }

    /// The roster cached for `user` by [`replace_roster`](Self::replace_roster), if any.
    pub fn roster(&self, user: &BareJid) -> Option<Roster> {
        self.inner.map.get(user).and_then(|e| e.roster.clone())
    }

    /// Cache `roster` for `user` and return the one cached before. Nothing is cached for a user
    /// the table does not hold (the roster is dropped and `None` returned).
    pub fn replace_roster(&self, user: &BareJid, roster: Roster) -> Option<Roster> {
        let mut e = self.inner.map.get_mut(user)?;
        e.roster.replace(roster)
    }

    /// Record that change `seq` of `user/resource` reached contacts. A delivered tombstone is
    /// forgotten (with the user and its cached roster once nothing else is held); a newer
    /// change since `seq` is left alone.
    pub fn mark_delivered(&self, user: &BareJid, resource: &ResourcePart, seq: u64) {
        let mut forget_user = false;
        if let Some(mut entry) = self.inner.map.get_mut(user) {
            if let Some(pos) = entry.position(resource.as_str()) {
                let h = &mut entry.held[pos];
                if h.seq == seq {
                    if h.sources.as_slice().is_empty() {
                        if let Some(store) = &self.inner.store {
                            store.delete(&user.with_resource(resource), seq);
                        }
                        entry.remove(pos);
                        forget_user = entry.held.is_empty();
                    } else {
                        h.delivered = seq;
                    }
                }
            }
        }
        if forget_user {
            self.inner.map.remove_if(user, |_, e| e.held.is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::tests::st;

    #[tokio::test]
    async fn set_clear_deliver() {
        let (t, mut rx) = StatusTable::in_memory();
        let alice = BareJid::new("alice@example.com").unwrap();
        let r = ResourcePart::new("tigase-external").unwrap().into_owned();
        let s1 = t.set(&alice, &r, st("a")).await.unwrap();
        let s2 = t.set(&alice, &r, st("b")).await.unwrap();
        assert!(s2 > s1);
        // Two changes before the backend looked: one notification.
        assert_eq!(rx.recv().await.unwrap(), alice);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), rx.recv())
                .await
                .is_err(),
            "notifications of one user are coalesced"
        );
        assert_eq!(t.get(&alice, &r).unwrap().status, Some(st("b")));
        // An old delivery does not mark the newer change.
        t.mark_delivered(&alice, &r, s1);
        assert_eq!(t.get(&alice, &r).unwrap().delivered, 0);
        t.mark_delivered(&alice, &r, s2);
        assert_eq!(t.get(&alice, &r).unwrap().delivered, s2);
        // Once taken, the next change is announced again; with a cached roster in the first lane.
        let bob = BareJid::new("bob@example.com").unwrap();
        t.set(&bob, &r, st("new user")).await.unwrap();
        t.replace_roster(&alice, Arc::new(vec![bob.clone()].into_boxed_slice()));
        t.set(&alice, &r, st("c")).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), alice, "known users first");
        assert_eq!(rx.recv().await.unwrap(), bob);
        let s3 = t.clear(&alice, &r).await.unwrap();
        assert_eq!(t.get(&alice, &r).unwrap().status, None);
        assert_eq!(t.len(), 2);
        t.mark_delivered(&alice, &r, s3);
        assert!(t.get(&alice, &r).is_none());
        assert_eq!(t.users(), vec![bob]);
    }
}
