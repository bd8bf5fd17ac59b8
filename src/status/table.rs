//! [`StatusTable`]: the shared handle over every held status.
//!
//! A dashmap keyed by the user's bare JID, holding that user's synthetic resources, and per
//! resource the status of each source that speaks for it. What the delivery backend sees of a
//! resource ([`Held`]) is its effective status (see the `model` module doc). Each resource
//! carries a sequence number, bumped when its effective status changes or its winning source sets
//! it again (a change of a losing source sends nothing), and the sequence number last delivered,
//! so the delivery backend can coalesce bursts and know what still has to go out. A resource whose
//! last source went stays as a tombstone (`status: None`) until its `unavailable` has been
//! delivered.
//!
//! Expiry: every source status with an expiry has a deadline in one heap, served by one task
//! ([`StatusTable::run_expiry`]); a due deadline removes the source through the store like a
//! clear (only if it still has that expiry). Deadlines that passed while extpresence was down are
//! applied when the table is loaded, before anything is replayed.
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

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use jid::{BareJid, FullJid, ResourcePart};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::base::clock::now_ms;
use crate::model::{restrictiveness, Show, Source, Status};
use crate::store::{Record, Store, StoreError, StoredSource, Write};

/// One synthetic resource of a user as the delivery backend sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The resource (e.g. `tigase-external`).
    pub resource: ResourcePart,
    /// The effective status, or `None` for a resource whose `unavailable` is still to be
    /// delivered.
    pub status: Option<Status>,
    /// Sequence number of the last change of the effective status.
    pub seq: u64,
    /// Sequence number last delivered to contacts (0: never).
    pub delivered: u64,
}

/// One source's status of a resource, as held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStatus {
    /// Who set it.
    pub source: Source,
    /// The status.
    pub status: Status,
    /// When it was set (ms since the Unix epoch).
    pub updated_at: u64,
    /// When it ends by itself (ms since the Unix epoch).
    pub expires_at: Option<u64>,
}

/// Everything held for one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceStatus {
    /// The resource.
    pub resource: ResourcePart,
    /// What contacts see; `None` while the resource's `unavailable` is being delivered.
    pub effective: Option<SourceStatus>,
    /// Every source, most recently updated last.
    pub sources: Vec<SourceStatus>,
}

/// A change of one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Hold `status` for `source` (replacing its previous one), until `expires_at` if given (ms
    /// since the Unix epoch).
    Set {
        /// Who sets it.
        source: Source,
        /// The status.
        status: Status,
        /// When it ends by itself.
        expires_at: Option<u64>,
    },
    /// Remove `source`'s status.
    Clear(Source),
    /// Remove every source's status.
    ClearAll,
    /// Remove `source`'s status if it still expires at this moment (the expiry task's edit).
    Expire(Source, u64),
}

/// What an edit left of its resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The resource's sequence number after the edit (the edit's own if it changed the
    /// effective status).
    pub seq: u64,
    /// The effective status after the edit; `None` when no source is left.
    pub effective: Option<SourceStatus>,
    /// Whether the edit changed what contacts see (else nothing is sent for it).
    pub changed: bool,
}

/// A change notification: the user whose entries changed.
pub type Change = BareJid;

/// A cached roster: the contacts that receive a user's presence. A thin pointer (8 bytes, not the
/// 16 of an `Arc<[_]>`): it sits in every user's slot, and P4 holds a million.
pub type Roster = Arc<Box<[BareJid]>>;

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

/// One source's status, packed into 32 bytes: a million of them are held at once (BENCHMARKS.md,
/// P4).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    text: Option<Box<str>>,
    /// 0: never (ms since the Unix epoch: expiry is kept to the millisecond).
    expires_at: u64,
    /// Seconds since the Unix epoch (the store keeps milliseconds; ties between sources set in
    /// the same second go to the later one by their order).
    updated_secs: u32,
    show: Option<Show>,
    priority: i8,
    source: Source,
}

impl Entry {
    fn new(source: Source, status: Status, updated_at: u64, expires_at: Option<u64>) -> Entry {
        Entry {
            text: status.text.map(String::into_boxed_str),
            updated_secs: u32::try_from(updated_at / 1000).unwrap_or(u32::MAX),
            expires_at: expires_at.unwrap_or(0),
            show: status.show,
            priority: status.priority,
            source,
        }
    }

    fn status(&self) -> Status {
        Status {
            show: self.show,
            text: self.text.as_deref().map(str::to_string),
            priority: self.priority,
        }
    }

    fn view(&self) -> SourceStatus {
        SourceStatus {
            source: self.source,
            status: self.status(),
            updated_at: u64::from(self.updated_secs) * 1000,
            expires_at: (self.expires_at != 0).then_some(self.expires_at),
        }
    }

    fn same_status(&self, other: &Entry) -> bool {
        self.show == other.show && self.priority == other.priority && self.text == other.text
    }
}

/// The sources of a resource: most resources have one, held inline.
#[derive(Debug)]
enum Sources {
    One(Entry),
    Many(Box<[Entry]>),
}

impl Sources {
    fn as_slice(&self) -> &[Entry] {
        match self {
            Sources::One(e) => std::slice::from_ref(e),
            Sources::Many(v) => v,
        }
    }

    fn from_vec(mut v: Vec<Entry>) -> Sources {
        if v.len() == 1 {
            Sources::One(v.pop().expect("one"))
        } else {
            Sources::Many(v.into_boxed_slice())
        }
    }
}

/// One resource of a user.
#[derive(Debug)]
struct Slot {
    resource: ResourcePart,
    sources: Sources,
    seq: u64,
    delivered: u64,
}

impl Slot {
    /// The winning source: the most restrictive, then the most recent (the later in the list).
    fn effective(&self) -> Option<&Entry> {
        self.sources
            .as_slice()
            .iter()
            .enumerate()
            .max_by_key(|(i, e)| (restrictiveness(e.show), e.updated_secs, *i))
            .map(|(_, e)| e)
    }

    fn held(&self) -> Held {
        Held {
            resource: self.resource.clone(),
            status: self.effective().map(Entry::status),
            seq: self.seq,
            delivered: self.delivered,
        }
    }

    fn view(&self) -> ResourceStatus {
        ResourceStatus {
            resource: self.resource.clone(),
            effective: self.effective().map(Entry::view),
            sources: self.sources.as_slice().iter().map(Entry::view).collect(),
        }
    }
}

/// Everything the table keeps for one user (one dashmap slot).
#[derive(Debug, Default)]
struct UserEntry {
    /// The user's synthetic resources, sized exactly: most users have one, and a `Vec` would
    /// reserve room for four (measured: 288 of ~650 MB with 1,000,000 users).
    held: Box<[Slot]>,
    /// The roster the delivery backend last fetched for this user (the contacts that receive the
    /// user's presence). Cached here rather than in a map of its own so that the user's JID is
    /// stored once, and the cache goes when the user does.
    roster: Option<Roster>,
    /// The user is in a [`Changes`] queue and not yet taken by the backend.
    queued: bool,
}

impl UserEntry {
    fn position(&self, resource: &str) -> Option<usize> {
        self.held
            .iter()
            .position(|h| h.resource.as_str() == resource)
    }

    fn push(&mut self, slot: Slot) {
        let mut v = std::mem::take(&mut self.held).into_vec();
        v.push(slot);
        self.held = v.into_boxed_slice();
    }

    fn remove(&mut self, pos: usize) {
        let mut v = std::mem::take(&mut self.held).into_vec();
        v.remove(pos);
        self.held = v.into_boxed_slice();
    }
}

/// A source status's expiry, waiting in the heap.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Deadline {
    at: u64,
    user: BareJid,
    resource: ResourcePart,
    source: Source,
}

#[derive(Debug)]
struct Inner {
    map: DashMap<BareJid, UserEntry>,
    seq: AtomicU64,
    /// Numbering changes and queueing them to the store happen under this lock, so the store
    /// commits (and acknowledges, and the table applies) changes in the order of their numbers.
    order: Mutex<()>,
    /// Lane of [`Changes`] for users with a cached roster.
    known: mpsc::UnboundedSender<Change>,
    /// Lane of [`Changes`] for the others.
    new: mpsc::UnboundedSender<Change>,
    /// Every expiry, earliest first (stale ones are skipped when due).
    deadlines: Mutex<BinaryHeap<Reverse<Deadline>>>,
    /// Wakes the expiry task when an earlier deadline arrives.
    deadline_added: Notify,
    /// Source statuses held with an expiry. The heap also holds stale deadlines (of statuses set
    /// again or cleared); it is rebuilt from the map when it grows well beyond this, so a feeder
    /// that refreshes long expiries does not make it grow without bound.
    expiring: AtomicUsize,
    /// The durable copy; `None` keeps statuses in memory only (unit tests, benchmarks' sink).
    store: Option<Store>,
    /// Told of every applied edit that changed what is held (the event hub).
    observer: OnceLock<Observer>,
}

/// What the table tells its observer: the user whose held statuses an edit changed, and whether
/// the edit was an expiry. Called on the store's writer thread: it must be quick.
pub type ObserverFn = Box<dyn Fn(&BareJid, bool) + Send + Sync>;

struct Observer(ObserverFn);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// Cheap-to-clone handle over the held statuses.
#[derive(Debug, Clone)]
pub struct StatusTable {
    inner: Arc<Inner>,
}

/// Most expiries written in one store transaction.
const EXPIRY_BATCH: usize = 4096;
/// After a failed expiry write, the next try comes this much later.
const EXPIRY_RETRY: Duration = Duration::from_secs(1);

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
    fn apply(
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
        if expiring_after > expiring_before {
            self.inner
                .expiring
                .fetch_add(expiring_after - expiring_before, Ordering::Relaxed);
        } else {
            self.inner
                .expiring
                .fetch_sub(expiring_before - expiring_after, Ordering::Relaxed);
        }
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
        if changed && !entry.queued {
            entry.queued = true;
            let lane = if entry.roster.is_some() {
                &self.inner.known
            } else {
                &self.inner.new
            };
            // The receiver only goes away at shutdown; then nothing needs to be announced.
            let _ = lane.send(user.clone());
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

    fn add_deadline(&self, d: Deadline) {
        let mut heap = self
            .inner
            .deadlines
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if heap.len() > 2 * self.live_deadlines() + 1024 {
            // Mostly stale deadlines: keep only those of statuses still held with that expiry.
            let mut kept = std::mem::take(&mut *heap).into_vec();
            kept.retain(|Reverse(old)| {
                self.expires_at(&old.user, &old.resource, old.source) == Some(old.at)
            });
            *heap = BinaryHeap::from(kept);
        }
        let earliest = heap.peek().is_none_or(|Reverse(first)| d.at < first.at);
        heap.push(Reverse(d));
        drop(heap);
        if earliest {
            self.inner.deadline_added.notify_one();
        }
    }

    /// Make `edits` durable (all in one store transaction) and apply them, in order; returns
    /// once they are committed and applied, what each left. On an error nothing changed.
    pub async fn write_many(
        &self,
        edits: Vec<(BareJid, ResourcePart, Edit)>,
    ) -> Result<Vec<Applied>, StoreError> {
        let now = now_ms();
        let (tx, rx) = oneshot::channel();
        {
            let _order = self.inner.order.lock().unwrap_or_else(|e| e.into_inner());
            let first = self
                .inner
                .seq
                .fetch_add(edits.len() as u64, Ordering::Relaxed)
                + 1;
            let table = self.clone();
            let apply = move |edits: Vec<(BareJid, ResourcePart, Edit)>| -> Vec<Applied> {
                edits
                    .into_iter()
                    .enumerate()
                    .map(|(i, (u, r, e))| table.apply(&u, &r, e, first + i as u64, now))
                    .collect()
            };
            match &self.inner.store {
                None => {
                    let _ = tx.send(Ok(apply(edits)));
                }
                Some(store) => {
                    let writes = edits
                        .iter()
                        .enumerate()
                        .map(|(i, (u, r, e))| durable(u.with_resource(r), e, now, first + i as u64))
                        .collect();
                    store.write_then(
                        writes,
                        Box::new(move |result| {
                            let _ = tx.send(result.map(|()| apply(edits)));
                        }),
                    );
                }
            }
        }
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    /// [`write_many`](Self::write_many) of one edit.
    pub async fn write(
        &self,
        user: &BareJid,
        resource: &ResourcePart,
        edit: Edit,
    ) -> Result<Applied, StoreError> {
        let mut applied = self
            .write_many(vec![(user.clone(), resource.clone(), edit)])
            .await?;
        Ok(applied.pop().expect("one edit, one result"))
    }

    /// Hold `status` for `user/resource` as source `default` (the Tigase dialect), replacing its
    /// previous one; returns once durable and applied, with the resource's sequence number.
    pub async fn set(
        &self,
        user: &BareJid,
        resource: &ResourcePart,
        status: Status,
    ) -> Result<u64, StoreError> {
        let edit = Edit::Set {
            source: Source::DEFAULT,
            status,
            expires_at: None,
        };
        Ok(self.write(user, resource, edit).await?.seq)
    }

    /// Clear source `default` of `user/resource`; when no source is left, the resource stays (also
    /// in the store) as a tombstone until its `unavailable` is delivered.
    pub async fn clear(&self, user: &BareJid, resource: &ResourcePart) -> Result<u64, StoreError> {
        Ok(self
            .write(user, resource, Edit::Clear(Source::DEFAULT))
            .await?
            .seq)
    }

    /// Number of source statuses with an expiry (the live deadlines).
    fn live_deadlines(&self) -> usize {
        self.inner.expiring.load(Ordering::Relaxed)
    }

    /// Remove source statuses as their deadlines come, until the table is gone: one task for
    /// every deadline. Expiries due together are written in one store transaction.
    pub async fn run_expiry(self) {
        loop {
            let next = self
                .inner
                .deadlines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .peek()
                .map(|Reverse(d)| d.at);
            let notified = self.inner.deadline_added.notified();
            match next {
                None => notified.await,
                Some(at) => {
                    let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                    if !wait.is_zero() {
                        tokio::select! {
                            _ = notified => continue,
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
            let due: Vec<Deadline> = {
                let now = now_ms();
                let mut heap = self
                    .inner
                    .deadlines
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let mut due = Vec::new();
                while due.len() < EXPIRY_BATCH && heap.peek().is_some_and(|Reverse(d)| d.at <= now)
                {
                    due.push(heap.pop().expect("peeked").0);
                }
                due
            };
            // Skip deadlines a later set or clear made stale.
            let due: Vec<Deadline> = due
                .into_iter()
                .filter(|d| self.expires_at(&d.user, &d.resource, d.source) == Some(d.at))
                .collect();
            if due.is_empty() {
                continue;
            }
            let edits = due
                .iter()
                .map(|d| {
                    (
                        d.user.clone(),
                        d.resource.clone(),
                        Edit::Expire(d.source, d.at),
                    )
                })
                .collect();
            // Not awaited here: the next batch is queued to the store at once (the writer commits
            // them back to back), so many expiries due together are not delayed by a commit
            // each. A batch whose commit fails comes due again a bit later.
            let table = self.clone();
            tokio::spawn(async move {
                if table.write_many(edits).await.is_err() {
                    tokio::time::sleep(EXPIRY_RETRY).await;
                    for d in due {
                        table.add_deadline(d);
                    }
                }
            });
        }
    }

    /// The expiry of `source`'s status of `user/resource`, if it has one.
    fn expires_at(&self, user: &BareJid, resource: &ResourcePart, source: Source) -> Option<u64> {
        let e = self.inner.map.get(user)?;
        let slot = e.held.iter().find(|s| &s.resource == resource)?;
        let entry = slot
            .sources
            .as_slice()
            .iter()
            .find(|e| e.source == source)?;
        (entry.expires_at != 0).then_some(entry.expires_at)
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

    /// Number of held resources (tombstones included).
    pub fn len(&self) -> usize {
        self.inner.map.iter().map(|e| e.value().held.len()).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.inner.map.is_empty()
    }

    /// Deadlines waiting (stale ones included until they come up).
    pub fn deadlines(&self) -> usize {
        self.inner
            .deadlines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// The durable form of an edit of `jid` made at `now`, numbered `seq`.
fn durable(jid: FullJid, edit: &Edit, now: u64, seq: u64) -> Write {
    match edit {
        Edit::Set {
            source,
            status,
            expires_at,
        } => Write::Set(
            jid,
            *source,
            StoredSource {
                status: status.clone(),
                updated_at: now,
                expires_at: *expires_at,
            },
        ),
        Edit::Clear(source) => Write::Clear(jid, *source, seq),
        Edit::ClearAll => Write::ClearAll(jid, seq),
        Edit::Expire(source, at) => Write::Expire(jid, *source, *at, seq),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Show;

    fn st(text: &str) -> Status {
        Status {
            show: Some(Show::Away),
            text: Some(text.into()),
            priority: -1,
        }
    }

    fn with(show: Option<Show>, text: &str) -> Status {
        Status {
            show,
            text: Some(text.into()),
            priority: -1,
        }
    }

    fn set(source: &str, status: Status, expires_at: Option<u64>) -> Edit {
        Edit::Set {
            source: Source::parse(source).unwrap(),
            status,
            expires_at,
        }
    }

    #[test]
    fn held_status_sizes() {
        // P4 holds a million of these: keep them as small as the single-status table was.
        assert_eq!(std::mem::size_of::<Entry>(), 32);
        assert!(
            std::mem::size_of::<Slot>() <= 72,
            "{}",
            std::mem::size_of::<Slot>()
        );
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
    async fn expiry_removes_only_the_status_it_belongs_to() {
        let (t, _rx) = StatusTable::in_memory();
        let alice = BareJid::new("alice@example.com").unwrap();
        let r = ResourcePart::new("phone").unwrap().into_owned();
        let soon = now_ms() + 150;
        t.write(&alice, &r, set("calendar", st("meeting"), Some(soon)))
            .await
            .unwrap();
        t.write(&alice, &r, set("pbx", st("call"), Some(soon)))
            .await
            .unwrap();
        // pbx is set again without expiry: its old deadline is stale.
        t.write(&alice, &r, set("pbx", st("call"), None))
            .await
            .unwrap();
        assert_eq!(t.deadlines(), 2);
        let task = tokio::spawn(t.clone().run_expiry());
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        let view = &t.statuses(&alice)[0];
        assert_eq!(view.sources.len(), 1, "{view:?}");
        assert_eq!(view.sources[0].source.as_str(), "pbx");
        assert_eq!(t.deadlines(), 0);
        task.abort();
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
