//! [`StatusTable`]: the shared handle over every held status.
//!
//! A dashmap keyed by the user's bare JID, holding that user's synthetic resources. Each entry
//! carries a sequence number (bumped on every change) and the sequence number last delivered, so the
//! delivery backend can coalesce bursts and know what still has to go out. A cleared resource stays
//! as a tombstone (`status: None`) until its `unavailable` has been delivered.
//!
//! The table is the only writer to the durable [`Store`], and it holds only what the store has
//! committed: a change is numbered and queued to the store under one lock (so the store commits
//! changes in the order of their numbers), and applied to the map by the store's acknowledgement
//! once its commit succeeded — also when the request that made it has gone away meanwhile. A
//! change whose commit failed leaves no trace: not in the map, not on the wire, not in the
//! metrics. `set`/`clear` return once the change is committed and applied.
//!
//! Changes are announced to the delivery backend through [`Changes`]: a user is queued at most
//! once until the backend has taken it (a flag in the user's slot), so what waits for a slow or
//! blocked backend is bounded by the number of users, whatever the rate of updates. Users whose
//! roster the backend has cached go to a lane of their own that the backend reads first: an
//! ordinary update of a known user does not wait behind a flood of new users whose rosters must
//! be fetched. No map guard is ever held across `.await`.
//!
//! Beside each user's resources the table keeps the delivery backend's cached copy of the user's
//! roster ([`StatusTable::roster`]): one slot per user instead of a second map keyed by the same
//! JID, which matters at a million held users (see BENCHMARKS.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use jid::{BareJid, ResourcePart};
use tokio::sync::{mpsc, oneshot};

use super::Status;
use crate::store::{Record, Store, StoreError};

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

/// The delivery backend's end of the change notifications (see the module doc): each user at
/// most once until received, users with a cached roster first.
#[derive(Debug)]
pub struct Changes {
    table: StatusTable,
    /// Users whose roster is cached: deliverable at once.
    known: mpsc::UnboundedReceiver<Change>,
    /// Users whose roster is still to be fetched.
    new: mpsc::UnboundedReceiver<Change>,
}

impl Changes {
    /// The next user whose entries changed since the backend last took that user; `None` once
    /// the table is gone. Cancel-safe.
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

/// Everything the table keeps for one user (one dashmap slot: key + 40 bytes).
#[derive(Debug, Default)]
struct UserEntry {
    /// The user's synthetic resources, sized exactly: most users have one, and a `Vec` would
    /// reserve room for four (measured: 288 of ~650 MB with 1,000,000 users).
    held: Box<[Held]>,
    /// The roster the delivery backend last fetched for this user (the contacts that receive the
    /// user's presence). Cached here rather than in a map of its own so that the user's JID is
    /// stored once, and the cache goes when the user does.
    roster: Option<Arc<[BareJid]>>,
    /// The user is in a [`Changes`] queue and not yet taken by the backend.
    queued: bool,
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
    /// Numbering a change and queueing it to the store happen under this lock, so the store
    /// commits (and acknowledges) changes in the order of their sequence numbers.
    order: Mutex<()>,
    /// Lane of [`Changes`] for users with a cached roster.
    known: mpsc::UnboundedSender<Change>,
    /// Lane of [`Changes`] for the others.
    new: mpsc::UnboundedSender<Change>,
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
    pub fn new(store: Option<Store>, records: Vec<Record>) -> (StatusTable, Changes) {
        let (known_tx, known) = mpsc::unbounded_channel();
        let (new_tx, new) = mpsc::unbounded_channel();
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
                order: Mutex::new(()),
                known: known_tx,
                new: new_tx,
                store,
            }),
        };
        let changes = Changes {
            table: table.clone(),
            known,
            new,
        };
        (table, changes)
    }

    /// A table in memory only, without a store.
    pub fn in_memory() -> (StatusTable, Changes) {
        StatusTable::new(None, Vec::new())
    }

    /// Why the store cannot commit, while it cannot (`None`: it can, or there is no store).
    pub fn store_failure(&self) -> Option<String> {
        self.inner.store.as_ref().and_then(Store::failure)
    }

    /// Store commits that failed since start.
    pub fn store_failed_commits(&self) -> u64 {
        self.inner.store.as_ref().map_or(0, Store::failed_commits)
    }

    fn next_seq(&self) -> u64 {
        self.inner.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Put a committed change into the map (unless a later one is there already) and announce it.
    fn apply(&self, user: &BareJid, resource: &ResourcePart, status: Option<Status>, seq: u64) {
        // Look up before inserting: `entry` needs an owned key, i.e. a copy of the JID.
        let mut entry = match self.inner.map.get_mut(user) {
            Some(e) => e,
            None => self.inner.map.entry(user.clone()).or_default(),
        };
        match entry.position(resource.as_str()) {
            Some(pos) => {
                let h = &mut entry.held[pos];
                if h.seq > seq {
                    return;
                }
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

    async fn write(
        &self,
        user: &BareJid,
        resource: &ResourcePart,
        status: Option<Status>,
    ) -> Result<u64, StoreError> {
        let Some(store) = &self.inner.store else {
            let seq = self.next_seq();
            self.apply(user, resource, status, seq);
            return Ok(seq);
        };
        let (tx, rx) = oneshot::channel();
        {
            let _order = self.inner.order.lock().unwrap_or_else(|e| e.into_inner());
            let seq = self.next_seq();
            let (table, user, resource) = (self.clone(), user.clone(), resource.clone());
            let full = user.with_resource(&resource);
            let stored = status.clone();
            store.put_then(
                &full,
                stored.as_ref(),
                Box::new(move |result| {
                    if result.is_ok() {
                        table.apply(&user, &resource, status, seq);
                    }
                    let _ = tx.send(result.map(|()| seq));
                }),
            );
        }
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Hold `status` for `user/resource`, replacing any previous one; returns once the change is
    /// durable and applied, with its sequence number. On an error nothing changed.
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
        t.replace_roster(&alice, Arc::from(vec![bob.clone()]));
        t.set(&alice, &r, st("c")).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), alice, "known users first");
        assert_eq!(rx.recv().await.unwrap(), bob);
        let s3 = t.clear(&alice, &r).await.unwrap();
        assert!(t.contains(&alice, "tigase-external"));
        assert_eq!(t.len(), 2);
        t.mark_delivered(&alice, &r, s3);
        assert!(t.get(&alice, &r).is_none());
        assert_eq!(t.users(), vec![bob]);
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
