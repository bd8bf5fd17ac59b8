//! [`StatusTable`]: the shared handle over every held status.
//!
//! A dashmap keyed by the user's bare JID, one slot per user (what a slot holds, and which of a
//! resource's sources wins, is `held.rs`). This file has the handle and the state it shares, its
//! loading from the store's records, the application of a committed edit to the map, and the
//! reads of what is held. The table's other jobs are files beside it: `commit.rs` (numbering
//! edits and committing them through the store), `expiry.rs` (the deadline heap and its task),
//! `lanes.rs` (the change lanes to the delivery backend, delivery bookkeeping, the roster
//! cache). No map guard is ever held across `.await`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, OnceLock};

use dashmap::DashMap;
use jid::{BareJid, ResourcePart};
use tokio::sync::{mpsc, Notify};

use super::commit::{Applied, Edit};
use super::expiry::Deadline;
use super::held::{Entry, Held, ResourceStatus, Slot, Sources, UserEntry};
use super::lanes::{Change, Changes};
use crate::base::clock::now_ms;
use crate::model::Source;
use crate::store::{Record, Store, Write};

/// The table's state, shared by every handle; each file of `status/` serves its part of it.
#[derive(Debug)]
pub(super) struct Inner {
    pub(super) map: DashMap<BareJid, UserEntry>,
    pub(super) seq: AtomicU64,
    /// Numbering changes and queueing them to the store happen under this lock, so the store
    /// commits (and acknowledges, and the table applies) changes in the order of their numbers.
    pub(super) order: Mutex<()>,
    /// Lane of [`Changes`] for users with a cached roster.
    pub(super) known: mpsc::UnboundedSender<Change>,
    /// Lane of [`Changes`] for the others.
    pub(super) new: mpsc::UnboundedSender<Change>,
    /// Every expiry, earliest first (stale ones are skipped when due).
    pub(super) deadlines: Mutex<BinaryHeap<Reverse<Deadline>>>,
    /// Wakes the expiry task when an earlier deadline arrives.
    pub(super) deadline_added: Notify,
    /// Source statuses held with an expiry. The heap also holds stale deadlines (of statuses set
    /// again or cleared); it is rebuilt from the map when it grows well beyond this, so a feeder
    /// that refreshes long expiries does not make it grow without bound.
    pub(super) expiring: AtomicUsize,
    /// The durable copy; `None` keeps statuses in memory only (unit tests, benchmarks' sink).
    pub(super) store: Option<Store>,
    /// Told of every applied edit that changed what is held (the event hub).
    pub(super) observer: OnceLock<Observer>,
}

/// What the table tells its observer: the user whose held statuses an edit changed, and whether
/// the edit was an expiry. Called on the store's writer thread: it must be quick.
pub type ObserverFn = Box<dyn Fn(&BareJid, bool) + Send + Sync>;

pub(super) struct Observer(ObserverFn);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// Cheap-to-clone handle over the held statuses.
#[derive(Debug, Clone)]
pub struct StatusTable {
    pub(super) inner: Arc<Inner>,
}

impl StatusTable {
    /// A table holding `records` (reloaded from `store`), and the receiver of its change
    /// notifications. Reloaded entries count as never delivered, so they are replayed. Sources
    /// whose expiry passed while nobody ran are dropped now (and from the store), so their
    /// removal, not their status, is what gets replayed.
    pub fn new(store: Option<Store>, records: Vec<Record>) -> (StatusTable, Changes) {
        let (known_tx, known) = mpsc::unbounded_channel();
        let (new_tx, new) = mpsc::unbounded_channel();
        let now = now_ms();
        let map: DashMap<BareJid, UserEntry> = DashMap::new();
        let mut deadlines = BinaryHeap::new();
        let mut expired = Vec::new();
        // Tombstones keep the number of the change that made them (their removal names it), so
        // numbering continues above the largest.
        let mut seq = records
            .iter()
            .filter_map(|r| match r {
                Record::Tombstone(_, n) => Some(*n),
                Record::Source(..) => None,
            })
            .max()
            .unwrap_or(0);
        for record in records {
            let (jid, source, tombstone) = match record {
                Record::Source(jid, source, s) => (jid, Some((source, s)), 0),
                Record::Tombstone(jid, n) => (jid, None, n),
            };
            let resource = jid.resource().to_owned();
            // The key reuses the record's JID allocation (a copy per record, freed at once, left a
            // hole per user behind in the allocator: P4 holds a million).
            let mut u = map.entry(jid.into_bare()).or_default();
            let user = |u: &dashmap::mapref::one::RefMut<'_, BareJid, UserEntry>| u.key().clone();
            let pos = match u.position(resource.as_str()) {
                Some(pos) => pos,
                None => {
                    seq += 1;
                    u.push(Slot {
                        resource: resource.clone(),
                        sources: Sources::Many(Box::new([])),
                        seq,
                        delivered: 0,
                    });
                    u.held.len() - 1
                }
            };
            let Some((source, s)) = source else {
                // (A tombstone's key sorts before its resource's sources: a stale one is seen
                // first, and the sources then make it irrelevant.)
                if tombstone > 0 {
                    u.held[pos].seq = tombstone;
                }
                continue;
            };
            if let Some(at) = s.expires_at.filter(|at| *at <= now) {
                let jid = user(&u).with_resource(&resource);
                expired.push(Write::Expire(jid, source, at, u.held[pos].seq));
                continue;
            }
            let e = Entry::new(source, s.status, s.updated_at, s.expires_at);
            // The held status uses its source's name (see `Source`).
            source.retain();
            if e.expires_at != 0 {
                deadlines.push(Reverse(Deadline {
                    at: e.expires_at,
                    user: user(&u),
                    resource,
                    source,
                }));
            }
            let slot = &mut u.held[pos];
            if slot.sources.as_slice().is_empty() {
                slot.sources = Sources::One(e);
            } else {
                let mut v = std::mem::replace(&mut slot.sources, Sources::Many(Box::new([])))
                    .as_slice()
                    .to_vec();
                v.push(e);
                v.sort_by_key(|e| e.updated_secs);
                slot.sources = Sources::from_vec(v);
            }
        }
        if let (Some(store), false) = (&store, expired.is_empty()) {
            // Durable removal of what expired while nobody ran; if it fails it is done again at
            // the next start (the tombstones in memory deliver the removal meanwhile).
            store.write_then(expired, Box::new(|_| {}));
        }
        let table = StatusTable {
            inner: Arc::new(Inner {
                map,
                seq: AtomicU64::new(seq),
                order: Mutex::new(()),
                known: known_tx,
                new: new_tx,
                expiring: AtomicUsize::new(deadlines.len()),
                deadlines: Mutex::new(deadlines),
                deadline_added: Notify::new(),
                store,
                observer: OnceLock::new(),
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

    /// Tell `observer` of every applied edit that changes what is held (set, clear, expiry),
    /// from now on. Once only: a second observer is ignored.
    pub fn set_observer(&self, observer: ObserverFn) {
        let _ = self.inner.observer.set(Observer(observer));
    }

    /// Why the store cannot commit, while it cannot (`None`: it can, or there is no store).
    pub fn store_failure(&self) -> Option<String> {
        self.inner.store.as_ref().and_then(Store::failure)
    }

    /// Store commits that failed since start.
    pub fn store_failed_commits(&self) -> u64 {
        self.inner.store.as_ref().map_or(0, Store::failed_commits)
    }

    /// Apply a committed edit (numbered `seq`, made at `now`) to the map, and announce it if the
    /// effective status changed.
    pub(super) fn apply(
        &self,
        user: &BareJid,
        resource: &ResourcePart,
        edit: Edit,
        seq: u64,
        now: u64,
    ) -> Applied {
        // Look up before inserting: `entry` needs an owned key, i.e. a copy of the JID.
        let mut entry = match self.inner.map.get_mut(user) {
            Some(e) => e,
            None => {
                if matches!(edit, Edit::Expire(..)) {
                    return Applied {
                        seq: 0,
                        effective: None,
                        changed: false,
                    };
                }
                self.inner.map.entry(user.clone()).or_default()
            }
        };
        let pos = match entry.position(resource.as_str()) {
            Some(pos) => pos,
            None if matches!(edit, Edit::Expire(..)) => {
                return Applied {
                    seq: 0,
                    effective: None,
                    changed: false,
                }
            }
            None => {
                // A new resource: announced whatever the edit (a clear of a resource never
                // held still sends `unavailable`, as a clear always did).
                entry.push(Slot {
                    resource: resource.clone(),
                    sources: Sources::Many(Box::new([])),
                    seq: 0,
                    delivered: 0,
                });
                entry.held.len() - 1
            }
        };
        let slot = &mut entry.held[pos];
        let before = slot.effective().cloned();
        let expiring = |s: &Slot| {
            s.sources
                .as_slice()
                .iter()
                .filter(|e| e.expires_at != 0)
                .count()
        };
        let expiring_before = expiring(slot);
        let mut sources = slot.sources.as_slice().to_vec();
        let sources_before: Vec<Source> = sources.iter().map(|e| e.source).collect();
        let mut deadline = None;
        // A set by the source that wins afterwards counts as a change even when nothing differs:
        // a repeated update is sent again (and is a retry on Tigase), as one source's updates
        // always were; only changes of a losing source send nothing.
        let set_by = match &edit {
            Edit::Set { source, .. } => Some(*source),
            _ => None,
        };
        let is_expiry = matches!(edit, Edit::Expire(..));
        let count_before = sources.len();
        match edit {
            Edit::Set {
                source,
                status,
                expires_at,
            } => {
                sources.retain(|e| e.source != source);
                sources.push(Entry::new(source, status, now, expires_at));
                deadline = expires_at.map(|at| (at, source));
            }
            Edit::Clear(source) => sources.retain(|e| e.source != source),
            Edit::ClearAll => sources.clear(),
            Edit::Expire(source, at) => {
                sources.retain(|e| e.source != source || e.expires_at != at)
            }
        }
        let touched = set_by.is_some() || sources.len() != count_before;
        // Count the uses of source names: a source that came to the resource uses its name, one
        // that left gives it back (a name no status uses can be reclaimed).
        for s in &sources_before {
            if !sources.iter().any(|e| e.source == *s) {
                s.release();
            }
        }
        if let Some(s) = set_by.filter(|s| !sources_before.contains(s)) {
            s.retain();
        }
        slot.sources = Sources::from_vec(sources);
        let expiring_after = expiring(slot);
        self.count_expiring(expiring_before, expiring_after);
        let after = slot.effective().cloned();
        let changed = slot.seq == 0
            || set_by.is_some_and(|s| after.as_ref().is_some_and(|a| a.source == s))
            || match (&before, &after) {
                (None, None) => false,
                (Some(b), Some(a)) => !b.same_status(a),
                _ => true,
            };
        if changed {
            slot.seq = seq;
        }
        let applied = Applied {
            seq: slot.seq,
            effective: after.as_ref().map(Entry::view),
            changed,
        };
        if changed {
            self.announce(&mut entry, user);
        }
        drop(entry);
        if touched {
            if let Some(observer) = self.inner.observer.get() {
                (observer.0)(user, is_expiry);
            }
        }
        if let Some((at, source)) = deadline {
            self.add_deadline(Deadline {
                at,
                user: user.clone(),
                resource: resource.clone(),
                source,
            });
        }
        applied
    }

    /// Every entry of `user` (available ones and tombstones), as the delivery backend sees them.
    pub fn entries(&self, user: &BareJid) -> Vec<Held> {
        self.inner
            .map
            .get(user)
            .map(|e| e.held.iter().map(Slot::held).collect())
            .unwrap_or_default()
    }

    /// Everything held for `user`, per resource with every source.
    pub fn statuses(&self, user: &BareJid) -> Vec<ResourceStatus> {
        self.inner
            .map
            .get(user)
            .map(|e| e.held.iter().map(Slot::view).collect())
            .unwrap_or_default()
    }

    /// The entry of `user/resource`, if any.
    pub fn get(&self, user: &BareJid, resource: &ResourcePart) -> Option<Held> {
        let e = self.inner.map.get(user)?;
        e.held
            .iter()
            .find(|h| &h.resource == resource)
            .map(Slot::held)
    }

    /// Every user with at least one entry.
    pub fn users(&self) -> Vec<BareJid> {
        self.inner.map.iter().map(|e| e.key().clone()).collect()
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
    use crate::model::Show;
    use crate::status::tests::{set, st, with};

    #[tokio::test]
    async fn sources_combine_by_restrictiveness_then_recency() {
        let (t, mut rx) = StatusTable::in_memory();
        let alice = BareJid::new("alice@example.com").unwrap();
        let r = ResourcePart::new("phone").unwrap().into_owned();
        let call = with(Some(Show::Dnd), "On a call");
        let meeting = with(Some(Show::Away), "In a meeting");
        let a = t
            .write(&alice, &r, set("pbx", call.clone(), None))
            .await
            .unwrap();
        rx.recv().await.unwrap();
        let b = t
            .write(&alice, &r, set("calendar", meeting.clone(), None))
            .await
            .unwrap();
        // The losing source changed: same effective status, same sequence number, no notice.
        assert_eq!(b.seq, a.seq);
        assert_eq!(b.effective.as_ref().unwrap().status, call);
        assert_eq!(b.effective.unwrap().source.as_str(), "pbx");
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), rx.recv())
                .await
                .is_err()
        );
        let c = t
            .write(&alice, &r, Edit::Clear(Source::parse("pbx").unwrap()))
            .await
            .unwrap();
        assert!(c.seq > b.seq);
        assert_eq!(c.effective.unwrap().status, meeting);
        // A tie goes to the most recent update.
        let other = with(Some(Show::Away), "Out for lunch");
        let d = t
            .write(&alice, &r, set("bot", other.clone(), None))
            .await
            .unwrap();
        assert_eq!(d.effective.unwrap().status, other);
        let view = &t.statuses(&alice)[0];
        assert_eq!(view.sources.len(), 2);
        let e = t.write(&alice, &r, Edit::ClearAll).await.unwrap();
        assert_eq!(e.effective, None);
        assert_eq!(t.get(&alice, &r).unwrap().status, None);
    }

    /// A source's name is in use while a held status has it: a clear, an expiry or a clear of
    /// every source gives it back (so it can be reclaimed); a set by another source keeps it.
    #[tokio::test]
    async fn held_statuses_count_the_uses_of_source_names() {
        let (t, _rx) = StatusTable::in_memory();
        let alice = BareJid::new("alice@example.com").unwrap();
        let bob = BareJid::new("bob@example.com").unwrap();
        let r = ResourcePart::new("phone").unwrap().into_owned();
        let set_by = |name: &str| {
            let lease = Source::acquire(name, Some("unit test")).unwrap();
            let edit = Edit::Set {
                source: lease.get(),
                status: st("x"),
                expires_at: None,
            };
            (lease, edit)
        };
        let (lease, edit) = set_by("table-use-1");
        t.write(&alice, &r, edit).await.unwrap();
        let (lease2, edit) = set_by("table-use-1");
        t.write(&bob, &r, edit).await.unwrap();
        drop((lease, lease2));
        assert!(Source::in_use("table-use-1"), "held by two statuses");
        let s = Source::acquire("table-use-1", None).unwrap().get();
        t.write(&alice, &r, Edit::Clear(s)).await.unwrap();
        assert!(Source::in_use("table-use-1"), "still bob's");
        t.write(&bob, &r, Edit::ClearAll).await.unwrap();
        assert!(!Source::in_use("table-use-1"), "no status uses it");
        // A set again of the same source keeps one use.
        let (lease, edit) = set_by("table-use-2");
        t.write(&alice, &r, edit.clone()).await.unwrap();
        t.write(&alice, &r, edit).await.unwrap();
        drop(lease);
        let s = Source::acquire("table-use-2", None).unwrap().get();
        t.write(&alice, &r, Edit::Clear(s)).await.unwrap();
        assert!(!Source::in_use("table-use-2"));
    }
    #[tokio::test]
    async fn reload_from_store_drops_what_expired_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let alice = BareJid::new("alice@example.com").unwrap();
        let r1 = ResourcePart::new("tigase-external").unwrap().into_owned();
        let r2 = ResourcePart::new("phone").unwrap().into_owned();
        let r3 = ResourcePart::new("desk").unwrap().into_owned();
        {
            let (store, _) = Store::open(&path).unwrap();
            let (t, _rx) = StatusTable::new(Some(store), Vec::new());
            t.set(&alice, &r1, st("kept")).await.unwrap();
            let seq = t.clear(&alice, &r2).await.unwrap();
            t.set(&alice, &r2, st("x")).await.unwrap();
            // An outdated delivery mark does not drop the newer value.
            t.mark_delivered(&alice, &r2, seq);
            t.clear(&alice, &r2).await.unwrap();
            t.write(
                &alice,
                &r3,
                set("calendar", st("gone"), Some(now_ms() + 100)),
            )
            .await
            .unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let records = loop {
            if let Ok((_, r)) = Store::open(&path) {
                break r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let (t, _rx) = StatusTable::new(None, records);
        assert_eq!(t.get(&alice, &r1).unwrap().status, Some(st("kept")));
        let tomb = t.get(&alice, &r2).unwrap();
        assert_eq!((tomb.status, tomb.delivered), (None, 0));
        let expired = t.get(&alice, &r3).unwrap();
        assert_eq!(
            expired.status, None,
            "expired while down: replayed as a removal"
        );
    }
}
