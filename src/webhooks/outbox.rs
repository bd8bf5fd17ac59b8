//! The durable outbox: every event an endpoint is to receive, from the moment it is routed
//! until it is delivered or dropped, in a redb file beside the status store
//! (`<store.path>.webhooks`).
//!
//! One writer thread (the store's group-commit writer, `store::writer`) commits what is queued
//! in one transaction (group commit, fsync'd): the
//! events the router queued per endpoint since the last commit, and the removals the senders
//! ask for after each delivery. Only after an insert's commit does the endpoint's sender see the event
//! (it reads the outbox, never a copy in memory), so what was delivered was durable first, and
//! the outbox is the only queue: its memory use does not grow with an endpoint's backlog.
//! A removal that was not committed when the process stopped leaves the event in the outbox:
//! it is delivered again after the restart (at least once).
//!
//! Bounds (issue 19): an endpoint's backlog in the outbox holds at most its
//! `max_backlog_bytes` (a record's bytes, plus 8 for its key): each commit that goes beyond
//! drops the oldest first (counted as `reason="backlog"`, one ERROR line per endpoint per 10 s);
//! the sender skips what was dropped under it ([`Outbox::trimmed`]). Events older than
//! `max_age_secs` are dropped by the sender. The queue in memory in front of the writer (one
//! per endpoint) holds at most [`QUEUE_EVENTS`] events and the smaller of `max_backlog_bytes`
//! and [`QUEUE_BYTES`]; beyond it its oldest events are dropped: `reason="backlog"` when the
//! queue alone is over `max_backlog_bytes` (the next commit would drop them anyway),
//! `reason="disk"` otherwise (the outbox cannot commit, or not as fast). Memory does not grow
//! while the disk cannot take the events.
//!
//! A commit that fails (disk full, I/O error) is logged at ERROR (once per 10 s, also when a
//! nearly full disk makes commits fail and succeed in turn), shows in
//! `/readyz` and `/metrics` ([`OutboxHealth`]), the database is closed (redb refuses writes
//! after an I/O error) and reopened, and the same batch is retried every second (its events
//! back at the front of their queues, where the bound holds): what the bound keeps is not lost
//! while the process runs. At shutdown ([`Outbox::close`]) what is queued is committed;
//! if the disk still refuses it after [`CLOSE_TRIES`] tries it is counted as dropped
//! (`reason="disk"`) and logged: what was committed stays.
//!
//! # Format 1
//! - table `meta`: `format` = 1 (u32 LE); a file of a newer format is refused at start;
//! - a table `outbox/<endpoint name>` per endpoint: key the event id (u64, so iteration is in
//!   event order), value `[at: u64 LE ms][user length: u16 LE][user][data: the event's JSON]`.
//!   The table of an endpoint no longer configured is deleted at start; a table under an
//!   unnamed endpoint's former default name (its URL's host) is first moved to its new name.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};
use tokio::sync::{oneshot, watch};
use tracing::{error, info};

use super::stats::{DropReason, EndpointStats, OutboxHealth};
use crate::events::Event;
use crate::store::writer::{Committer, Db, Next, Texts, Writer};
use crate::store::{written_format, FileError};

/// The format this version writes (see the module doc).
pub const FORMAT: u32 = 1;
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Prefix of an endpoint's table name.
const TABLE_PREFIX: &str = "outbox/";
/// The outbox is read in order and written at the end: a small page cache is plenty.
const CACHE_BYTES: usize = 4 << 20;
/// Most operations committed in one transaction.
const MAX_BATCH: usize = 4096;
/// At most one ERROR line per endpoint about dropped events per this period (and one about
/// failing commits: `store::writer`).
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// Most events of one endpoint waiting in memory for a commit.
pub const QUEUE_EVENTS: u64 = 65_536;
/// Most bytes of one endpoint's events waiting in memory for a commit (or its
/// `max_backlog_bytes`, when smaller: more could not be kept anyway). A healthy disk commits a
/// burst long before; the events are shared by the endpoints they pass, so this is the bound
/// per endpoint, not a sum.
pub const QUEUE_BYTES: u64 = 64 << 20;
/// Commits tried at shutdown before what is queued is given up.
const CLOSE_TRIES: u32 = 3;

/// An endpoint as [`Outbox::open`] takes it.
#[derive(Debug)]
pub struct Endpoint {
    /// Its counters; their name is the endpoint's.
    pub stats: Arc<EndpointStats>,
    /// Its backlog's bound in bytes.
    pub max_bytes: u64,
    /// The name an outbox left by an older version may have for it (see the module doc).
    pub legacy_name: Option<String>,
}

/// The bytes an event takes in the outbox: its record and its key.
fn size_of(event: &Event) -> u64 {
    (10 + event.user.as_str().len() + event.data.len() + 8) as u64
}

/// One pending event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The event id (`webhook-id`).
    pub id: u64,
    /// The user whose presence changed.
    pub user: String,
    /// When it changed (ms since the Unix epoch): the body's `timestamp`, and the age `max_age`
    /// is measured from.
    pub at: u64,
    /// The event's JSON object.
    pub data: String,
}

fn encode(event: &Event) -> Vec<u8> {
    let user = event.user.as_str().as_bytes();
    let mut v = Vec::with_capacity(10 + user.len() + event.data.len());
    v.extend_from_slice(&event.at.to_le_bytes());
    v.extend_from_slice(&(user.len() as u16).to_le_bytes());
    v.extend_from_slice(user);
    v.extend_from_slice(event.data.as_bytes());
    v
}

/// Why an outbox record cannot be read (a damaged record).
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// Shorter than its lengths say.
    #[error("record too short")]
    TooShort,
    /// The user or the data is not UTF-8.
    #[error(transparent)]
    NotUtf8(#[from] std::str::Utf8Error),
}

/// Why the outbox cannot be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// Creating its directory or its writer thread failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// redb failed.
    #[error(transparent)]
    Redb(#[from] redb::Error),
    /// Its format cannot be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// Written by a newer version.
    #[error(
        "the webhook outbox is in format {0}, newer than the format {FORMAT} this extpresence \
         reads: run the newer extpresence that wrote it (nothing was changed)"
    )]
    Newer(u32),
    /// Closed by a failed commit, not yet reopened (by the writer).
    #[error("the webhook outbox is being reopened")]
    Reopening,
}

macro_rules! redb_into_outbox_error {
    ($($t:ty),*) => {$(
        impl From<$t> for OutboxError {
            fn from(e: $t) -> OutboxError {
                OutboxError::Redb(e.into())
            }
        }
    )*};
}
redb_into_outbox_error!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

fn decode(id: u64, bytes: &[u8]) -> Result<Entry, EntryError> {
    let (at, rest) = bytes.split_at_checked(8).ok_or(EntryError::TooShort)?;
    let (len, rest) = rest.split_at_checked(2).ok_or(EntryError::TooShort)?;
    let len = u16::from_le_bytes(len.try_into().expect("2 bytes")) as usize;
    let (user, data) = rest.split_at_checked(len).ok_or(EntryError::TooShort)?;
    let text = |b: &[u8]| std::str::from_utf8(b).map(str::to_string);
    Ok(Entry {
        id,
        user: text(user)?,
        at: u64::from_le_bytes(at.try_into().expect("8 bytes")),
        data: text(data)?,
    })
}

/// An endpoint as the outbox sees it.
#[derive(Debug)]
struct Slot {
    /// Its table's name, `outbox/<name>`.
    table: String,
    /// The highest event id committed to its table: its sender waits on this.
    committed: watch::Sender<u64>,
    /// Its counters (pending, dropped) and its disabled flag.
    stats: Arc<EndpointStats>,
    /// Its backlog's bound in bytes, and the bound of its queue in memory.
    max_bytes: u64,
    queue_bytes: u64,
    /// Events routed to it, not yet taken by the writer.
    queue: Mutex<Queue>,
    /// The highest id dropped for the backlog bound: its sender skips ids up to it.
    trimmed: std::sync::atomic::AtomicU64,
    /// Drops not yet logged, and when the last ERROR line about them was written.
    drop_log: Mutex<DropLog>,
}

#[derive(Debug, Default)]
struct Queue {
    events: std::collections::VecDeque<Arc<Event>>,
    /// Their bytes ([`size_of`]).
    bytes: u64,
}

#[derive(Debug, Default)]
struct DropLog {
    last: Option<Instant>,
    backlog: u64,
    disk: u64,
}

impl Slot {
    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Put `events` in the queue, at its end (new ones) or at its start (taken by the writer
    /// and not committed), then drop its oldest beyond the bound (see the module doc);
    /// `failing`: the outbox cannot commit now.
    fn enqueue(&self, events: impl IntoIterator<Item = Arc<Event>>, front: bool, failing: bool) {
        let mut q = self.lock_queue();
        let (mut added, mut added_bytes) = (0, 0);
        if front {
            let taken: Vec<Arc<Event>> = events.into_iter().collect();
            for e in taken.into_iter().rev() {
                q.bytes += size_of(&e);
                q.events.push_front(e);
            }
        } else {
            for e in events {
                let size = size_of(&e);
                q.bytes += size;
                q.events.push_back(e);
                added += 1;
                added_bytes += size;
            }
        }
        let too_many = q.events.len() as u64 > QUEUE_EVENTS;
        let (mut shed, mut shed_bytes) = (0, 0);
        // One event always stays (the backlog bound then decides).
        while q.events.len() > 1
            && (q.events.len() as u64 > QUEUE_EVENTS || q.bytes > self.queue_bytes)
        {
            let size = size_of(&q.events.pop_front().expect("not empty"));
            q.bytes -= size;
            shed += 1;
            shed_bytes += size;
        }
        drop(q);
        // The counters: queued now, plus what the writer took and has not committed.
        self.stats.queued.fetch_add(added, Relaxed);
        self.stats.queued_bytes.fetch_add(added_bytes, Relaxed);
        if shed > 0 {
            self.unqueue(shed, shed_bytes);
            let reason = if failing || too_many || self.queue_bytes < self.max_bytes {
                DropReason::Disk
            } else {
                DropReason::Backlog
            };
            self.dropped(reason, shed);
        }
    }

    /// Take what is queued (for a commit).
    fn take_queue(&self) -> Vec<Arc<Event>> {
        let mut q = self.lock_queue();
        q.bytes = 0;
        std::mem::take(&mut q.events).into()
    }

    /// `events` of `bytes` left memory (committed or dropped).
    fn unqueue(&self, events: u64, bytes: u64) {
        let _ = self
            .stats
            .queued
            .fetch_update(Relaxed, Relaxed, |q| Some(q.saturating_sub(events)));
        let _ = self
            .stats
            .queued_bytes
            .fetch_update(Relaxed, Relaxed, |q| Some(q.saturating_sub(bytes)));
    }

    /// Count `n` events dropped for `reason`; one ERROR line per [`REPORT_EVERY`] at most.
    fn dropped(&self, reason: DropReason, n: u64) {
        if n == 0 {
            return;
        }
        self.stats.count_drop(reason, n);
        let mut log = self.drop_log.lock().unwrap_or_else(|e| e.into_inner());
        match reason {
            DropReason::Backlog => log.backlog += n,
            DropReason::Disk => log.disk += n,
            DropReason::Age | DropReason::Disabled => return,
        }
        if log.last.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            error!(
                endpoint = %self.stats.name,
                backlog = log.backlog,
                disk = log.disk,
                max_backlog_bytes = self.max_bytes,
                "webhook events dropped (counted in extpresence_webhook_dropped_total): backlog = \
                 the oldest, beyond max_backlog_bytes (the endpoint fails or is too slow); disk = \
                 the outbox could not take them (its disk is full, failing or too slow)"
            );
            *log = DropLog {
                last: Some(Instant::now()),
                ..DropLog::default()
            };
        }
    }
}

impl Slot {
    fn definition(&self) -> TableDefinition<'_, u64, &'static [u8]> {
        TableDefinition::new(&self.table)
    }
}

enum Op {
    /// Events were queued (in the slots' queues; at most one `Wake` waits at a time).
    Wake,
    /// An endpoint is done with an event (delivered or dropped).
    Remove(usize, u64),
    /// Drop everything an endpoint has pending (it was disabled).
    Clear(usize),
    /// Answered once everything queued before it is committed; then the database is closed
    /// and the writer ends.
    Close(oneshot::Sender<()>),
}

#[derive(Debug)]
struct Shared {
    /// The database, closed by a failed commit until the writer reopens it. Readers hold a
    /// clone only for one read.
    db: Arc<Db>,
    slots: Vec<Slot>,
    /// Whether it can commit (for `/readyz`, `/metrics`).
    health: Arc<OutboxHealth>,
    /// Set by [`Outbox::close`]: a failing commit is then given up after [`CLOSE_TRIES`].
    closing: std::sync::atomic::AtomicBool,
    /// A [`Op::Wake`] is on its way to the writer (so that they do not pile up).
    woken: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn db(&self) -> Option<Arc<Database>> {
        self.db.get()
    }
}

/// Handle of the outbox: reads for the senders, writes queued to the writer thread.
#[derive(Debug, Clone)]
pub struct Outbox {
    ops: std_mpsc::Sender<Op>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Wake => f.write_str("Wake"),
            Op::Remove(slot, id) => write!(f, "Remove({slot}, {id})"),
            Op::Clear(slot) => write!(f, "Clear({slot})"),
            Op::Close(_) => f.write_str("Close"),
        }
    }
}

fn open_db(path: &Path) -> Result<Database, redb::Error> {
    Ok(redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)?)
}

impl Outbox {
    /// Open (or create) the outbox at `path` for these endpoints (in order), move the tables of
    /// renamed default names, delete those of endpoints no longer configured, count what each
    /// has pending, drop what is beyond its bound, and start the writer thread.
    pub fn open(
        path: &Path,
        endpoints: Vec<Endpoint>,
        health: Arc<OutboxHealth>,
    ) -> Result<Outbox, OutboxError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let db = open_db(path)?;
        if let Some(newer) = written_format(&db)?.filter(|f| *f > FORMAT) {
            return Err(OutboxError::Newer(newer));
        }
        let legacy: Vec<Option<String>> = endpoints
            .iter()
            .map(|e| e.legacy_name.as_ref().map(|n| format!("{TABLE_PREFIX}{n}")))
            .collect();
        let slots: Vec<Slot> = endpoints
            .into_iter()
            .map(|e| Slot {
                table: format!("{TABLE_PREFIX}{}", e.stats.name),
                committed: watch::Sender::new(0),
                max_bytes: e.max_bytes,
                queue_bytes: e.max_bytes.min(QUEUE_BYTES),
                queue: Default::default(),
                trimmed: Default::default(),
                drop_log: Default::default(),
                stats: e.stats,
            })
            .collect();
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert("format", FORMAT.to_le_bytes().as_slice())?;
        }
        let configured: HashSet<&str> = slots.iter().map(|s| s.table.as_str()).collect();
        let existing: HashSet<String> = txn.list_tables()?.map(|t| t.name().to_string()).collect();
        // An unnamed endpoint's default name was its URL's host before 0.2: its pending events
        // move to its new name (the first such endpoint takes them).
        for (slot, old) in slots.iter().zip(&legacy) {
            let Some(old) = old.as_deref() else { continue };
            if !existing.contains(old) || configured.contains(old) {
                continue;
            }
            let old_def: TableDefinition<u64, &[u8]> = TableDefinition::new(old);
            let moved = move_table(&txn, old_def, slot.definition())?;
            info!(
                endpoint = %slot.stats.name,
                former = &old[TABLE_PREFIX.len()..],
                moved,
                "webhook outbox of the endpoint's former default name taken over"
            );
        }
        let stale: Vec<String> = txn
            .list_tables()?
            .map(|t| t.name().to_string())
            .filter(|n| n.starts_with(TABLE_PREFIX) && !configured.contains(n.as_str()))
            .collect();
        for name in stale {
            let def: TableDefinition<u64, &[u8]> = TableDefinition::new(&name);
            let n = txn.open_table(def).and_then(|t| Ok(t.len()?))?;
            txn.delete_table(def)?;
            info!(
                endpoint = &name[TABLE_PREFIX.len()..],
                dropped = n,
                "webhook endpoint no longer configured: its pending events were dropped"
            );
        }
        let mut trimmed = vec![0; slots.len()];
        for (i, slot) in slots.iter().enumerate() {
            let mut table = txn.open_table(slot.definition())?;
            let mut bytes = 0u64;
            for row in table.iter()? {
                let (_, v) = row?;
                bytes += v.value().len() as u64 + 8;
            }
            let mut pending = table.len()?;
            let last = table.last()?.map(|(id, _)| id.value());
            if let Some(id) = last {
                slot.committed.send_replace(id);
            }
            // A bound lowered since, or an outbox of a version without bounds.
            while bytes > slot.max_bytes {
                let Some((id, v)) = table.pop_first()? else {
                    break;
                };
                bytes -= (v.value().len() as u64 + 8).min(bytes);
                pending -= 1;
                trimmed[i] += 1;
                slot.trimmed.store(id.value(), Relaxed);
            }
            slot.stats.pending.store(pending, Relaxed);
            slot.stats.backlog_bytes.store(bytes, Relaxed);
        }
        txn.commit()?;
        for (slot, n) in slots.iter().zip(trimmed) {
            slot.dropped(DropReason::Backlog, n);
        }
        for slot in &slots {
            let pending = slot.stats.pending.load(Relaxed);
            if pending > 0 {
                info!(endpoint = %slot.stats.name, pending, "webhook events pending from before the restart are delivered first");
            }
        }

        let db = Arc::new(Db::new(path, db, open_db));
        let shared = Arc::new(Shared {
            db: db.clone(),
            slots,
            health: health.clone(),
            closing: Default::default(),
            woken: Default::default(),
        });
        let committer = OutboxCommitter {
            shared: shared.clone(),
            inserts: Vec::new(),
            close_failures: 0,
        };
        let tx = Writer::spawn(
            "extpresence-webhooks",
            committer,
            db,
            health,
            &TEXTS,
            MAX_BATCH,
        )?;
        Ok(Outbox { ops: tx, shared })
    }

    /// Queue events for the outboxes of the endpoints (indices) they passed; the writer
    /// commits what is queued in one transaction. Beyond an endpoint's queue bound its oldest
    /// queued events are dropped (see the module doc).
    pub fn insert(&self, events: Vec<(usize, Arc<Event>)>) {
        if events.is_empty() {
            return;
        }
        let slots = &self.shared.slots;
        let failing = self.shared.health.failure().is_some();
        let mut per_slot: Vec<Vec<Arc<Event>>> = vec![Vec::new(); slots.len()];
        for (i, e) in events {
            per_slot[i].push(e);
        }
        for (slot, events) in slots.iter().zip(per_slot) {
            if !events.is_empty() {
                slot.enqueue(events, false, failing);
            }
        }
        if !self
            .shared
            .woken
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let _ = self.ops.send(Op::Wake);
        }
    }

    /// The highest id of `slot` dropped for the backlog bound: events up to it are gone.
    pub fn trimmed(&self, slot: usize) -> u64 {
        self.shared.slots[slot].trimmed.load(Relaxed)
    }

    /// Queue the removal of a delivered or dropped event.
    pub fn remove(&self, slot: usize, id: u64) {
        let _ = self.ops.send(Op::Remove(slot, id));
    }

    /// Queue the removal of everything `slot` has pending.
    pub fn clear(&self, slot: usize) {
        let _ = self.ops.send(Op::Clear(slot));
    }

    /// Commit everything queued so far, then close the database (the file can be opened again
    /// when this returns, if no read is running) and end the writer thread.
    pub async fn close(self) {
        self.shared.closing.store(true, Relaxed);
        let (tx, rx) = oneshot::channel();
        if self.ops.send(Op::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// The highest event id committed to `slot`'s outbox, to wait on.
    pub fn committed(&self, slot: usize) -> watch::Receiver<u64> {
        self.shared.slots[slot].committed.subscribe()
    }

    /// Up to `limit` events of `slot` with ids above `after`, in id order (blocking: call it
    /// from a blocking thread). A damaged record is logged, removed and skipped.
    pub fn read_after(
        &self,
        slot: usize,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Entry>, OutboxError> {
        let Some(after) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let db = self.shared.db().ok_or(OutboxError::Reopening)?;
        let read = db.begin_read()?;
        let table = match read.open_table(self.shared.slots[slot].definition()) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut entries = Vec::new();
        for row in table.range(after..)? {
            let (k, v) = row?;
            let id = k.value();
            match decode(id, v.value()) {
                Ok(entry) => entries.push(entry),
                Err(e) => {
                    error!(endpoint = %self.shared.slots[slot].stats.name, id, error = %e, "damaged record in the webhook outbox: removed");
                    self.remove(slot, id);
                }
            }
            if entries.len() >= limit {
                break;
            }
        }
        Ok(entries)
    }
}

/// Copy every row of `from` into `to` and delete `from`; the rows moved.
fn move_table(
    txn: &redb::WriteTransaction,
    from: TableDefinition<u64, &[u8]>,
    to: TableDefinition<u64, &[u8]>,
) -> Result<u64, redb::Error> {
    let mut moved = 0;
    {
        let old = txn.open_table(from)?;
        let mut new = txn.open_table(to)?;
        for row in old.iter()? {
            let (k, v) = row?;
            new.insert(k.value(), v.value())?;
            moved += 1;
        }
    }
    txn.delete_table(from)?;
    Ok(moved)
}

/// What a committed batch changes in the counters and the senders' view (per slot).
struct Effects {
    /// Events added, and the highest id added.
    added: Vec<(u64, u64)>,
    /// Events (and their bytes) that left the queue in memory: inserted or dropped.
    dequeued: Vec<(u64, u64)>,
    /// Events removed (delivered or dropped by the sender; ids no longer there do not count).
    removed: Vec<u64>,
    /// Events dropped because the endpoint is disabled (routed or cleared).
    disabled: Vec<u64>,
    /// Events dropped for the backlog bound, and the highest id dropped.
    trimmed: Vec<(u64, u64)>,
    /// The backlog's bytes after the commit.
    bytes: Vec<u64>,
    /// Slots cleared.
    cleared: Vec<bool>,
}

/// The log lines of the outbox's writer.
static TEXTS: Texts = Texts {
    failing: "the webhook outbox cannot commit; retrying every second (new events wait in \
              memory up to a bound, then are dropped; /readyz answers 503)",
    still_failing: "the webhook outbox still cannot commit",
    again: "the webhook outbox commits again",
    again_quiet: "the webhook outbox commits again",
};

/// The outbox's side of the writer (`store::writer`): the queued events and the operations of
/// a batch in one transaction, then the counters and the senders' view.
struct OutboxCommitter {
    shared: Arc<Shared>,
    /// The events taken from the slots' queues for the commit under way (per slot).
    inserts: Vec<Vec<Arc<Event>>>,
    /// Commits failed since [`Outbox::close`] asked to close.
    close_failures: u32,
}

impl Committer for OutboxCommitter {
    type Op = Op;
    type Output = Effects;

    fn commit(&mut self, db: &Database, batch: &[Op]) -> Result<Effects, redb::Error> {
        // Events queued from now on need a new wake-up.
        self.shared
            .woken
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.inserts = self.shared.slots.iter().map(Slot::take_queue).collect();
        self.write(db, batch)
    }

    fn settle(&mut self, batch: Vec<Op>, result: Result<Effects, &str>) -> Next<Op> {
        let inserts = std::mem::take(&mut self.inserts);
        match result {
            Ok(effects) => {
                if self.apply(effects, batch) {
                    Next::Stop
                } else {
                    Next::Go
                }
            }
            Err(_) => {
                // The events go back to the front of their queues, where the bound holds.
                for (slot, events) in self.shared.slots.iter().zip(inserts) {
                    slot.enqueue(events, true, true);
                }
                if self.shared.closing.load(Relaxed) {
                    self.close_failures += 1;
                    if self.close_failures >= CLOSE_TRIES {
                        return Next::Abandon(batch);
                    }
                }
                // Keep the batch and try again; the database is reopened first.
                Next::Retry(batch)
            }
        }
    }

    /// At shutdown, with the disk still refusing: count what is queued as dropped, log it,
    /// and answer the close.
    fn abandon(&mut self, batch: Vec<Op>, e: &str) {
        let slots = &self.shared.slots;
        for slot in slots {
            let n = slot.take_queue().len() as u64;
            slot.stats.queued.store(0, Relaxed);
            slot.stats.queued_bytes.store(0, Relaxed);
            if n > 0 {
                slot.stats.count_drop(DropReason::Disk, n);
                error!(
                    endpoint = %slot.stats.name,
                    lost = n,
                    error = %e,
                    "at shutdown the webhook outbox still cannot commit: these events are lost \
                     (what was committed before stays)"
                );
            }
        }
        self.shared.db.close();
        for op in batch {
            if let Op::Close(done) = op {
                let _ = done.send(());
            }
        }
    }
}

impl OutboxCommitter {
    /// The transaction: the taken events, the batch's operations, the backlog bound.
    fn write(&self, db: &Database, batch: &[Op]) -> Result<Effects, redb::Error> {
        let inserts = &self.inserts;
        let slots = &self.shared.slots;
        let n = slots.len();
        let mut fx = Effects {
            added: vec![(0, 0); n],
            dequeued: vec![(0, 0); n],
            removed: vec![0; n],
            disabled: vec![0; n],
            trimmed: vec![(0, 0); n],
            bytes: slots
                .iter()
                .map(|s| s.stats.backlog_bytes.load(Relaxed))
                .collect(),
            cleared: vec![false; n],
        };
        let txn = db.begin_write()?;
        {
            let mut tables = Vec::with_capacity(n);
            for slot in slots {
                tables.push(txn.open_table(slot.definition())?);
            }
            for (i, events) in inserts.iter().enumerate() {
                for event in events {
                    let size = size_of(event);
                    fx.dequeued[i].0 += 1;
                    fx.dequeued[i].1 += size;
                    if slots[i].stats.disabled.load(Relaxed) {
                        fx.disabled[i] += 1;
                        continue;
                    }
                    tables[i].insert(event.id, encode(event).as_slice())?;
                    let (count, max) = &mut fx.added[i];
                    *count += 1;
                    *max = (*max).max(event.id);
                    fx.bytes[i] += size;
                }
            }
            for op in batch {
                match op {
                    Op::Wake => {}
                    Op::Remove(i, id) => {
                        if let Some(v) = tables[*i].remove(id)? {
                            fx.removed[*i] += 1;
                            fx.bytes[*i] -= (v.value().len() as u64 + 8).min(fx.bytes[*i]);
                        }
                    }
                    Op::Clear(i) => {
                        fx.disabled[*i] += tables[*i].len()?;
                        tables[*i].retain(|_, _| false)?;
                        fx.added[*i].0 = 0;
                        fx.removed[*i] = 0;
                        fx.trimmed[*i].0 = 0;
                        fx.bytes[*i] = 0;
                        fx.cleared[*i] = true;
                    }
                    Op::Close(_) => {}
                }
            }
            // The backlog bound: the oldest go.
            for (i, slot) in slots.iter().enumerate() {
                while fx.bytes[i] > slot.max_bytes {
                    let Some((id, v)) = tables[i].pop_first()? else {
                        fx.bytes[i] = 0;
                        break;
                    };
                    fx.bytes[i] -= (v.value().len() as u64 + 8).min(fx.bytes[i]);
                    fx.trimmed[i].0 += 1;
                    fx.trimmed[i].1 = id.value();
                }
            }
        }
        txn.commit()?;
        Ok(fx)
    }

    /// Update the counters and wake the senders after a commit; `true` when asked to close
    /// (the database is closed then, and the writer ends).
    fn apply(&self, fx: Effects, batch: Vec<Op>) -> bool {
        for (i, slot) in self.shared.slots.iter().enumerate() {
            let stats = &slot.stats;
            let (events, bytes) = fx.dequeued[i];
            slot.unqueue(events, bytes);
            let (trimmed, floor) = fx.trimmed[i];
            if trimmed > 0 {
                slot.trimmed.fetch_max(floor, Relaxed);
            }
            let (added, max) = fx.added[i];
            let gone = fx.removed[i] + trimmed;
            let _ = stats.pending.fetch_update(Relaxed, Relaxed, |p| {
                let p = if fx.cleared[i] { 0 } else { p };
                Some((p + added).saturating_sub(gone))
            });
            stats.backlog_bytes.store(fx.bytes[i], Relaxed);
            if added > 0 {
                slot.committed.send_if_modified(|c| {
                    let newer = max > *c;
                    *c = (*c).max(max);
                    newer
                });
            }
            stats.count_drop(DropReason::Disabled, fx.disabled[i]);
            slot.dropped(DropReason::Backlog, trimmed);
        }
        let mut closed = false;
        for op in batch {
            if let Op::Close(done) = op {
                self.shared.db.close();
                let _ = done.send(());
                closed = true;
            }
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jid::BareJid;

    fn stats(name: &str) -> Arc<EndpointStats> {
        super::super::stats::WebhookMetrics::default().register(name)
    }

    /// Open with the default bound and no former names.
    fn open(path: &Path, stats: Vec<Arc<EndpointStats>>) -> Result<Outbox, OutboxError> {
        let endpoints = stats
            .into_iter()
            .map(|stats| Endpoint {
                stats,
                max_bytes: super::super::DEFAULT_MAX_BACKLOG,
                legacy_name: None,
            })
            .collect();
        Outbox::open(path, endpoints, Default::default())
    }

    pub(crate) fn event(id: u64, user: &str, at: u64) -> Arc<Event> {
        Arc::new(Event {
            id,
            user: BareJid::new(user).unwrap(),
            at,
            data: format!(r#"{{"user":"{user}","n":{id}}}"#).into(),
            sse_frame: Default::default(),
        })
    }

    fn ids(outbox: &Outbox, slot: usize) -> Vec<u64> {
        outbox
            .read_after(slot, 0, 1000)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect()
    }

    #[tokio::test]
    async fn survives_reopen_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/statuses.redb.webhooks");
        let a = stats("a");
        let outbox = open(&path, vec![a.clone(), stats("b")]).unwrap();
        let committed = outbox.committed(0);
        // Two batches; the second holds an id between those of the first (ids only ever grow,
        // but the order on disk must not depend on the order of insertion).
        outbox.insert(vec![
            (0, event(10, "alice@example.com", 1)),
            (1, event(10, "alice@example.com", 1)),
            (0, event(30, "bob@example.com", 3)),
        ]);
        outbox.insert(vec![(0, event(20, "alice@example.com", 2))]);
        outbox.remove(1, 10);
        outbox.close().await;
        assert_eq!(*committed.borrow(), 30);
        assert_eq!(a.pending.load(Relaxed), 3);

        let a = stats("a");
        let outbox = open(&path, vec![a.clone(), stats("b")]).unwrap();
        assert_eq!(ids(&outbox, 0), vec![10, 20, 30]);
        assert_eq!(ids(&outbox, 1), Vec::<u64>::new());
        assert_eq!(a.pending.load(Relaxed), 3);
        assert_eq!(*outbox.committed(0).borrow(), 30);
        let after = outbox.read_after(0, 10, 1).unwrap();
        assert_eq!(
            after,
            vec![Entry {
                id: 20,
                user: "alice@example.com".into(),
                at: 2,
                data: r#"{"user":"alice@example.com","n":20}"#.into()
            }]
        );
        outbox.close().await;

        // "b" is no longer configured: its table goes.
        let outbox = open(&path, vec![stats("a")]).unwrap();
        let db = outbox.shared.db().unwrap();
        let read = db.begin_read().unwrap();
        let names: Vec<String> = read
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_string())
            .collect();
        assert!(names.iter().any(|n| n == "outbox/a"), "{names:?}");
        assert!(!names.iter().any(|n| n == "outbox/b"), "{names:?}");
    }

    #[tokio::test]
    async fn clear_and_disabled_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w");
        let outbox = open(&path, vec![stats("a")]).unwrap();
        outbox.insert(vec![(0, event(1, "a@x", 1)), (0, event(2, "a@x", 2))]);
        outbox.close().await;
        let a = stats("a");
        let outbox = open(&path, vec![a.clone()]).unwrap();
        assert_eq!(a.pending.load(Relaxed), 2);
        a.disabled.store(true, Relaxed);
        outbox.clear(0);
        outbox.insert(vec![(0, event(3, "a@x", 3))]);
        outbox.close().await;
        assert_eq!(a.pending.load(Relaxed), 0);
        assert_eq!(a.dropped.load(Relaxed), 3);
        let outbox = open(&path, vec![stats("a")]).unwrap();
        assert_eq!(ids(&outbox, 0), Vec::<u64>::new());
    }

    /// Issue 19, defect 5: the backlog keeps at most `max_bytes`; beyond, the oldest go
    /// (counted, skipped by the sender), also at a start with a lowered bound.
    #[tokio::test]
    async fn backlog_bound_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w");
        let size = size_of(&event(1, "a@x", 1));
        let bounded = |stats: Arc<EndpointStats>, events: u64| Endpoint {
            stats,
            max_bytes: size * events,
            legacy_name: None,
        };
        let a = stats("a");
        let outbox = Outbox::open(&path, vec![bounded(a.clone(), 4)], Default::default()).unwrap();
        // One commit at a time (the queue in memory is bounded by max_bytes too).
        let mut committed = outbox.committed(0);
        for id in 1..=6 {
            outbox.insert(vec![(0, event(id, "a@x", id))]);
            committed.wait_for(|c| *c >= id).await.unwrap();
        }
        outbox.insert((7..=9).map(|id| (0, event(id, "a@x", id))).collect());
        committed.wait_for(|c| *c >= 9).await.unwrap();
        outbox.remove(0, 9);
        outbox.clone().close().await;
        assert_eq!(outbox.trimmed(0), 5);
        assert_eq!(a.dropped_for(DropReason::Backlog), 5);
        assert_eq!(a.dropped.load(Relaxed), 5);
        assert_eq!(a.pending.load(Relaxed), 3);
        assert_eq!(a.backlog_bytes.load(Relaxed), 3 * size);
        assert_eq!(a.queued.load(Relaxed), 0);
        assert_eq!(a.queued_bytes.load(Relaxed), 0);
        let outbox = open(&path, vec![stats("a")]).unwrap();
        assert_eq!(ids(&outbox, 0), vec![6, 7, 8]);
        outbox.close().await;

        // A lower bound at the next start.
        let a = stats("a");
        let outbox = Outbox::open(&path, vec![bounded(a.clone(), 2)], Default::default()).unwrap();
        assert_eq!(ids(&outbox, 0), vec![7, 8]);
        assert_eq!(outbox.trimmed(0), 6);
        assert_eq!(a.dropped_for(DropReason::Backlog), 1);
        assert_eq!(a.pending.load(Relaxed), 2);
        assert_eq!(a.backlog_bytes.load(Relaxed), 2 * size);
        outbox.close().await;
    }

    /// Issue 19, defect 9: the outbox of an unnamed endpoint under its former default name
    /// (the URL's host) is delivered under the new one.
    #[tokio::test]
    async fn former_default_name_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w");
        let outbox = open(&path, vec![stats("127.0.0.1"), stats("other")]).unwrap();
        outbox.insert(vec![(0, event(1, "a@x", 1)), (0, event(2, "a@x", 2))]);
        outbox.close().await;
        let renamed = |name: &str| Endpoint {
            stats: stats(name),
            max_bytes: super::super::DEFAULT_MAX_BACKLOG,
            legacy_name: Some("127.0.0.1".into()),
        };
        let a = renamed("127.0.0.1:8080/hooks/a");
        let pending = a.stats.clone();
        let outbox = Outbox::open(
            &path,
            vec![
                a,
                renamed("127.0.0.1:8080/hooks/b"),
                Endpoint {
                    stats: stats("other"),
                    max_bytes: super::super::DEFAULT_MAX_BACKLOG,
                    legacy_name: None,
                },
            ],
            Default::default(),
        )
        .unwrap();
        assert_eq!(ids(&outbox, 0), vec![1, 2]);
        assert_eq!(ids(&outbox, 1), Vec::<u64>::new());
        assert_eq!(pending.pending.load(Relaxed), 2);
        assert_eq!(*outbox.committed(0).borrow(), 2);
        outbox.close().await;
        let outbox = open(&path, vec![stats("127.0.0.1:8080/hooks/a")]).unwrap();
        assert_eq!(ids(&outbox, 0), vec![1, 2]);
        let db = outbox.shared.db().unwrap();
        let names: Vec<String> = db
            .begin_read()
            .unwrap()
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_string())
            .collect();
        assert!(!names.iter().any(|n| n == "outbox/127.0.0.1"), "{names:?}");
    }

    #[test]
    fn newer_format_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w");
        {
            let db = open_db(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("format", 2u32.to_le_bytes().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let e = open(&path, vec![stats("a")]).unwrap_err().to_string();
        assert!(e.contains("format 2"), "{e}");
    }

    #[test]
    fn damaged_record_is_an_error_not_a_panic() {
        assert!(decode(1, &[1, 2, 3]).is_err());
        let mut v = encode(&event(5, "a@x", 9));
        assert_eq!(decode(5, &v).unwrap().user, "a@x");
        v[8] = 200; // user length beyond the record
        assert!(decode(5, &v).is_err());
    }
}
