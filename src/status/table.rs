//! [`StatusTable`]: the shared handle over every held status.
//!
//! A dashmap keyed by the user's bare JID, holding that user's synthetic resources. Each entry
//! carries a sequence number (bumped on every change) and the sequence number last delivered, so the
//! delivery backend can coalesce bursts and know what still has to go out. A cleared resource stays
//! as a tombstone (`status: None`) until its `unavailable` has been delivered. Every change is
//! announced on a channel the delivery backend listens to. No guard is ever held across `.await`:
//! every method is synchronous.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use jid::{BareJid, ResourcePart};
use tokio::sync::mpsc;

use super::Status;

/// One synthetic resource of a user as held by the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The resource (e.g. `tigase-external`).
    pub resource: ResourcePart,
    /// The status, or `None` for a cleared resource whose `unavailable` is still to be delivered.
    pub status: Option<Status>,
    /// Sequence number of the last change.
    pub seq: u64,
    /// Sequence number last delivered to contacts (0: never).
    pub delivered: u64,
}

/// A change notification: the user whose entries changed.
pub type Change = BareJid;

#[derive(Debug)]
struct Inner {
    map: DashMap<BareJid, Vec<Held>>,
    seq: AtomicU64,
    changes: mpsc::UnboundedSender<Change>,
}

/// Cheap-to-clone handle over the held statuses.
#[derive(Debug, Clone)]
pub struct StatusTable {
    inner: Arc<Inner>,
}

impl StatusTable {
    /// A new empty table and the receiver of its change notifications.
    pub fn new() -> (StatusTable, mpsc::UnboundedReceiver<Change>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let table = StatusTable {
            inner: Arc::new(Inner {
                map: DashMap::new(),
                seq: AtomicU64::new(0),
                changes: tx,
            }),
        };
        (table, rx)
    }

    fn write(&self, user: &BareJid, resource: &ResourcePart, status: Option<Status>) -> u64 {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut entries = self.inner.map.entry(user.clone()).or_default();
            match entries.iter_mut().find(|h| &h.resource == resource) {
                Some(h) => {
                    h.status = status;
                    h.seq = seq;
                }
                None => entries.push(Held {
                    resource: resource.clone(),
                    status,
                    seq,
                    delivered: 0,
                }),
            }
        }
        // The receiver only goes away at shutdown; then nothing needs to be announced.
        let _ = self.inner.changes.send(user.clone());
        seq
    }

    /// Hold `status` for `user/resource`, replacing any previous one. Returns the change's sequence number.
    pub fn set(&self, user: &BareJid, resource: &ResourcePart, status: Status) -> u64 {
        self.write(user, resource, Some(status))
    }

    /// Clear `user/resource`: it stays as a tombstone until its `unavailable` is delivered.
    pub fn clear(&self, user: &BareJid, resource: &ResourcePart) -> u64 {
        self.write(user, resource, None)
    }

    /// Every entry of `user` (available ones and tombstones).
    pub fn entries(&self, user: &BareJid) -> Vec<Held> {
        self.inner
            .map
            .get(user)
            .map(|e| e.value().clone())
            .unwrap_or_default()
    }

    /// The entry of `user/resource`, if any.
    pub fn get(&self, user: &BareJid, resource: &ResourcePart) -> Option<Held> {
        let entries = self.inner.map.get(user)?;
        entries.iter().find(|h| &h.resource == resource).cloned()
    }

    /// Whether `user/resource` is one of our synthetic resources (available or being cleared).
    pub fn contains(&self, user: &BareJid, resource: &str) -> bool {
        self.inner
            .map
            .get(user)
            .is_some_and(|e| e.iter().any(|h| h.resource.as_str() == resource))
    }

    /// Every user with at least one entry.
    pub fn users(&self) -> Vec<BareJid> {
        self.inner.map.iter().map(|e| e.key().clone()).collect()
    }

    /// Record that change `seq` of `user/resource` reached contacts. A delivered tombstone is
    /// forgotten; a newer change since `seq` is left alone.
    pub fn mark_delivered(&self, user: &BareJid, resource: &ResourcePart, seq: u64) {
        let mut forget_user = false;
        if let Some(mut entries) = self.inner.map.get_mut(user) {
            if let Some(pos) = entries.iter().position(|h| &h.resource == resource) {
                let h = &mut entries[pos];
                if h.seq == seq {
                    if h.status.is_none() {
                        entries.remove(pos);
                        forget_user = entries.is_empty();
                    } else {
                        h.delivered = seq;
                    }
                }
            }
        }
        if forget_user {
            self.inner.map.remove_if(user, |_, e| e.is_empty());
        }
    }

    /// Number of held resources (tombstones included).
    pub fn len(&self) -> usize {
        self.inner.map.iter().map(|e| e.value().len()).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.inner.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Show;

    fn st(text: &str) -> Status {
        Status {
            show: Some(Show::Away),
            text: Some(text.into()),
            priority: -1,
        }
    }

    #[test]
    fn set_clear_deliver() {
        let (t, mut rx) = StatusTable::new();
        let alice = BareJid::new("alice@example.com").unwrap();
        let r = ResourcePart::new("tigase-external").unwrap().into_owned();
        let s1 = t.set(&alice, &r, st("a"));
        let s2 = t.set(&alice, &r, st("b"));
        assert!(s2 > s1);
        assert_eq!(rx.try_recv().unwrap(), alice);
        assert_eq!(t.get(&alice, &r).unwrap().status, Some(st("b")));
        // An old delivery does not mark the newer change.
        t.mark_delivered(&alice, &r, s1);
        assert_eq!(t.get(&alice, &r).unwrap().delivered, 0);
        t.mark_delivered(&alice, &r, s2);
        assert_eq!(t.get(&alice, &r).unwrap().delivered, s2);
        let s3 = t.clear(&alice, &r);
        assert!(t.contains(&alice, "tigase-external"));
        assert_eq!(t.len(), 1);
        t.mark_delivered(&alice, &r, s3);
        assert!(t.get(&alice, &r).is_none());
        assert!(t.is_empty());
    }
}
