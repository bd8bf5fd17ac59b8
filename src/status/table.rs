//! [`StatusTable`]: the shared handle over every held status.
//!
//! A dashmap keyed by the user's bare JID, holding that user's synthetic resources. Each entry
//! carries a sequence number (bumped on every change) and the sequence number last delivered, so the
//! delivery backend can coalesce bursts and know what still has to go out. A cleared resource stays
//! as a tombstone (`status: None`) until its `unavailable` has been delivered. The table is the
//! only writer to the durable [`Store`]: a change is queued to the store while the entry is locked
//! (so the store sees changes of one resource in the order the table made them), and `set`/`clear`
//! return only once it is committed; then the change is announced on the channel the delivery
//! backend listens to. No map guard is ever held across `.await`.
//!
//! Beside each user's resources the table keeps the delivery backend's cached copy of the user's
//! roster ([`StatusTable::roster`]): one slot per user instead of a second map keyed by the same
//! JID, which matters at a million held users (see BENCHMARKS.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use jid::{BareJid, ResourcePart};
use tokio::sync::mpsc;

use super::Status;
use crate::store::{Pending, Record, Store, StoreError};

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

/// Everything the table keeps for one user (one dashmap slot: key + 32 bytes).
#[derive(Debug, Default)]
struct UserEntry {
    /// The user's synthetic resources, sized exactly: most users have one, and a `Vec` would
    /// reserve room for four (measured: 288 of ~650 MB with 1,000,000 users).
    held: Box<[Held]>,
    /// The roster the delivery backend last fetched for this user (the contacts that receive the
    /// user's presence). Cached here rather than in a map of its own so that the user's JID is
    /// stored once, and the cache goes when the user does.
    roster: Option<Arc<[BareJid]>>,
}

impl UserEntry {
    fn position(&self, resource: &str) -> Option<usize> {
        self.held
            .iter()
            .position(|h| h.resource.as_str() == resource)
    }

    fn push(&mut self, held: Held) {
        let mut v = std::mem::take(&mut self.held).into_vec();
        v.push(held);
        self.held = v.into_boxed_slice();
    }

    fn remove(&mut self, pos: usize) {
        let mut v = std::mem::take(&mut self.held).into_vec();
        v.remove(pos);
        self.held = v.into_boxed_slice();
    }
}

#[derive(Debug)]
struct Inner {
    map: DashMap<BareJid, UserEntry>,
    seq: AtomicU64,
    changes: mpsc::UnboundedSender<Change>,
    /// The durable copy; `None` keeps statuses in memory only (unit tests, benchmarks' sink).
    store: Option<Store>,
}

/// Cheap-to-clone handle over the held statuses.
#[derive(Debug, Clone)]
pub struct StatusTable {
    inner: Arc<Inner>,
}

impl StatusTable {
    /// A table holding `records` (reloaded from `store`), and the receiver of its change
    /// notifications. Reloaded entries count as never delivered, so they are replayed.
    pub fn new(
        store: Option<Store>,
        records: Vec<Record>,
    ) -> (StatusTable, mpsc::UnboundedReceiver<Change>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let map: DashMap<BareJid, UserEntry> = DashMap::with_capacity(records.len());
        let mut seq = 0;
        for (jid, status) in records {
            seq += 1;
            let resource = jid.resource().to_owned();
            map.entry(jid.into_bare()).or_default().push(Held {
                resource,
                status,
                seq,
                delivered: 0,
            });
        }
        let table = StatusTable {
            inner: Arc::new(Inner {
                map,
                seq: AtomicU64::new(seq),
                changes: tx,
                store,
            }),
        };
        (table, rx)
    }

    /// A table in memory only, without a store.
    pub fn in_memory() -> (StatusTable, mpsc::UnboundedReceiver<Change>) {
        StatusTable::new(None, Vec::new())
    }

    async fn write(
        &self,
        user: &BareJid,
        resource: &ResourcePart,
        status: Option<Status>,
    ) -> Result<u64, StoreError> {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let pending = {
            // Look up before inserting: `entry` needs an owned key, i.e. a copy of the JID.
            let mut entry = match self.inner.map.get_mut(user) {
                Some(e) => e,
                None => self.inner.map.entry(user.clone()).or_default(),
            };
            let pending = match &self.inner.store {
                Some(store) => store.put(&user.with_resource(resource), status.as_ref()),
                None => Pending::done(),
            };
            match entry.position(resource.as_str()) {
                Some(pos) => {
                    let h = &mut entry.held[pos];
                    h.status = status;
                    h.seq = seq;
                }
                None => entry.push(Held {
                    resource: resource.clone(),
                    status,
                    seq,
                    delivered: 0,
                }),
            }
            pending
        };
        pending.durable().await?;
        // The receiver only goes away at shutdown; then nothing needs to be announced.
        let _ = self.inner.changes.send(user.clone());
        Ok(seq)
    }

    /// Hold `status` for `user/resource`, replacing any previous one; returns once the change is
    /// durable, with its sequence number.
    pub async fn set(
        &self,
        user: &BareJid,
        resource: &ResourcePart,
        status: Status,
    ) -> Result<u64, StoreError> {
        self.write(user, resource, Some(status)).await
    }

    /// Clear `user/resource`: it stays (also in the store) as a tombstone until its
    /// `unavailable` is delivered; returns once the change is durable.
    pub async fn clear(&self, user: &BareJid, resource: &ResourcePart) -> Result<u64, StoreError> {
        self.write(user, resource, None).await
    }

    /// Every entry of `user` (available ones and tombstones).
    pub fn entries(&self, user: &BareJid) -> Vec<Held> {
        self.inner
            .map
            .get(user)
            .map(|e| e.held.to_vec())
            .unwrap_or_default()
    }

    /// The entry of `user/resource`, if any.
    pub fn get(&self, user: &BareJid, resource: &ResourcePart) -> Option<Held> {
        let e = self.inner.map.get(user)?;
        e.held.iter().find(|h| &h.resource == resource).cloned()
    }

    /// Whether `user/resource` is one of our synthetic resources (available or being cleared).
    pub fn contains(&self, user: &BareJid, resource: &str) -> bool {
        self.inner
            .map
            .get(user)
            .is_some_and(|e| e.position(resource).is_some())
    }

    /// Count every entry as never delivered (after a reconnect: the server forgot what it had).
    pub fn forget_deliveries(&self) {
        for mut e in self.inner.map.iter_mut() {
            for h in e.held.iter_mut() {
                h.delivered = 0;
            }
        }
    }

    /// Every user with at least one entry.
    pub fn users(&self) -> Vec<BareJid> {
        self.inner.map.iter().map(|e| e.key().clone()).collect()
    }

    /// The roster cached for `user` by [`replace_roster`](Self::replace_roster), if any.
    pub fn roster(&self, user: &BareJid) -> Option<Arc<[BareJid]>> {
        self.inner.map.get(user).and_then(|e| e.roster.clone())
    }

    /// Cache `roster` for `user` and return the one cached before. Nothing is cached for a user
    /// the table does not hold (the roster is dropped and `None` returned).
    pub fn replace_roster(&self, user: &BareJid, roster: Arc<[BareJid]>) -> Option<Arc<[BareJid]>> {
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
                    if h.status.is_none() {
                        if let Some(store) = &self.inner.store {
                            store.delete(&user.with_resource(resource));
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

    /// Number of held resources (tombstones included).
    pub fn len(&self) -> usize {
        self.inner.map.iter().map(|e| e.value().held.len()).sum()
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

    #[tokio::test]
    async fn set_clear_deliver() {
        let (t, mut rx) = StatusTable::in_memory();
        let alice = BareJid::new("alice@example.com").unwrap();
        let r = ResourcePart::new("tigase-external").unwrap().into_owned();
        let s1 = t.set(&alice, &r, st("a")).await.unwrap();
        let s2 = t.set(&alice, &r, st("b")).await.unwrap();
        assert!(s2 > s1);
        assert_eq!(rx.try_recv().unwrap(), alice);
        assert_eq!(t.get(&alice, &r).unwrap().status, Some(st("b")));
        // An old delivery does not mark the newer change.
        t.mark_delivered(&alice, &r, s1);
        assert_eq!(t.get(&alice, &r).unwrap().delivered, 0);
        t.mark_delivered(&alice, &r, s2);
        assert_eq!(t.get(&alice, &r).unwrap().delivered, s2);
        let s3 = t.clear(&alice, &r).await.unwrap();
        assert!(t.contains(&alice, "tigase-external"));
        assert_eq!(t.len(), 1);
        t.mark_delivered(&alice, &r, s3);
        assert!(t.get(&alice, &r).is_none());
        assert!(t.is_empty());
    }

    #[tokio::test]
    async fn reload_from_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let alice = BareJid::new("alice@example.com").unwrap();
        let r1 = ResourcePart::new("tigase-external").unwrap().into_owned();
        let r2 = ResourcePart::new("phone").unwrap().into_owned();
        {
            let (store, _) = Store::open(&path).unwrap();
            let (t, _rx) = StatusTable::new(Some(store), Vec::new());
            t.set(&alice, &r1, st("kept")).await.unwrap();
            let seq = t.clear(&alice, &r2).await.unwrap();
            t.set(&alice, &r2, st("x")).await.unwrap();
            // An outdated delivery mark does not drop the newer value.
            t.mark_delivered(&alice, &r2, seq);
            t.clear(&alice, &r2).await.unwrap();
        }
        let records = loop {
            if let Ok((_, r)) = Store::open(&path) {
                break r;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let (t, _rx) = StatusTable::new(None, records);
        assert_eq!(t.get(&alice, &r1).unwrap().status, Some(st("kept")));
        let tomb = t.get(&alice, &r2).unwrap();
        assert_eq!((tomb.status, tomb.delivered), (None, 0));
    }
}
