//! The durable copy of the status table (redb, crash-safe, one file under `[store] path`).
//!
//! The store keeps model values (`model/`) and knows nothing of the layers above it (the table,
//! HTTP, XMPP); the status table (`status::StatusTable`, which imports the store) is its only
//! writer. Writes go to one writer thread ([`writer`], the group-commit writer also used by the
//! webhook outbox) through a channel in the order the table made them; the thread commits whatever has queued up in one transaction (group commit, fsync'd by redb's
//! default durability) and only then acknowledges each write (a callback run on the writer
//! thread, in commit order), so a caller that awaited its acknowledgement knows the change
//! survives a crash. [`Store::open`] returns everything held, for the table to reload at start.
//!
//! A failed commit (disk full, I/O error) fails every write of its batch and leaves no trace of
//! them. redb refuses all later writes on a database that saw an I/O error, so the writer closes
//! it, reports the failure ([`Store::failure`] for `/readyz` and `/metrics`, one ERROR line per
//! 10 s at most, also when a nearly full disk makes commits fail and succeed in turn),
//! and reopens it (redb checks and, if needed, repairs the file) before the next batch, and every
//! second while idle, with a probe commit; the first commit that succeeds again ends the failure.
//! Everything committed before the failure is still there: redb commits are atomic.
//!
//! # Format 2 (written by this version)
//! Table `statuses`:
//! - one record per held source: key `user@domain/resource` NUL `source`, value
//!   `[3][priority][show][updated_at: u64 LE ms][expires_at: u64 LE ms, 0 = never][status text…]`;
//! - a resource whose `unavailable` is still to be delivered has a tombstone: key
//!   `user@domain/resource`, value `[2][0][0][seq: u64 LE]`, the number of the change that made
//!   it (so removing a delivered tombstone never removes a newer one). A tombstone beside sources
//!   of the same resource is stale (the resource was set again) and ignored.
//!
//! Side tables, each a map of string keys to records the owning module encodes (as JSON) and
//! reads back at start ([`Store::take`]); added within format 2: a store without one has nothing
//! in it, and an older release ignores it.
//! - `tokens`: per-user API tokens (key: the token's public id; value: its record, holding only
//!   the SHA-256 of the secret; `access/tokens.rs`);
//! - `subscriptions`: subscription requests sent in a user's name, held until sent and then
//!   while their approval is watched (key: `user` NUL `contact`; `agent/`).
//!
//! Table `meta`: `format` = 2 (u32 LE). A store without it was written by format 1 (one record per
//! resource: key `user@domain/resource`, value `[1][priority][show][text…]` or a tombstone); it is
//! upgraded in one transaction when opened, every status becoming source `default`. A store of a
//! newer format is refused, never misread.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use jid::FullJid;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::oneshot;
use tracing::info;

use crate::base::clock::now_ms;
use crate::model::{Show, Source, Status};
use writer::{Committer, Db, Health, Next, Texts, Writer};

pub mod writer;

const STATUSES: TableDefinition<&str, &[u8]> = TableDefinition::new("statuses");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const SUBSCRIPTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("subscriptions");
/// The format this version writes (see the module doc).
pub const FORMAT: u32 = 2;
/// Separates the resource's full JID from the source in a source record's key (NUL is in no JID).
const SOURCE_SEPARATOR: char = '\0';
/// Scratch table of the probe commit that checks a failed store can commit again.
const PROBE: TableDefinition<&str, &[u8]> = TableDefinition::new("probe");
/// Encoding of a tombstone record of format 1 (and the start of one of format 2, which adds the
/// number of the change that made it).
const TOMBSTONE: [u8; 3] = [2, 0, 0];

/// A tombstone made by change `seq`.
fn tombstone(seq: u64) -> Vec<u8> {
    let mut v = TOMBSTONE.to_vec();
    v.extend_from_slice(&seq.to_le_bytes());
    v
}

/// The change number of a stored tombstone (0 for a format-1 one), or `None` if `value` is none.
fn tombstone_seq(value: &[u8]) -> Option<u64> {
    match value {
        [2, 0, 0] => Some(0),
        [2, 0, 0, seq @ ..] => Some(u64::from_le_bytes(seq.try_into().ok()?)),
        _ => None,
    }
}
/// redb's page cache. Its default (1 GiB) kept every page read at start in memory: 134 MB of
/// RSS with 1,000,000 records, for pages that are read once (the whole table is in memory anyway).
const CACHE_BYTES: usize = 16 << 20;
/// Most writes committed in one transaction (a batch of the API is never split).
const MAX_BATCH: usize = 4096;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or reading the database failed.
    #[error("cannot open the status store {path}: {message}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A commit failed; the write is not durable.
    #[error("the status store could not commit: {0}")]
    Commit(String),
    /// The writer thread is gone (shutting down).
    #[error("the status store is closed")]
    Closed,
}

/// Why a record cannot be read (a damaged record).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The show code is none of the known ones.
    #[error("unknown show code {0}")]
    UnknownShow(u8),
    /// The status text is not UTF-8.
    #[error(transparent)]
    NotUtf8(#[from] std::str::Utf8Error),
    /// The status text fails the model's check.
    #[error(transparent)]
    BadText(#[from] crate::model::InvalidStatus),
    /// A record under a source key that is not a format-2 source record.
    #[error("not a format-2 source record")]
    NotSource,
    /// A record of an unknown kind.
    #[error("unknown record kind")]
    UnknownKind,
}

/// Why a store file cannot be read or upgraded (also the webhook outbox's `written_format`).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// redb failed.
    #[error(transparent)]
    Redb(#[from] redb::Error),
    /// `meta.format` is not 4 bytes.
    #[error("damaged meta.format")]
    DamagedFormat,
    /// A record's key is not a full JID.
    #[error("bad key {0:?}: {1}")]
    BadKey(String, jid::Error),
    /// A record cannot be read.
    #[error("bad record {0:?}: {1}")]
    BadRecord(String, RecordError),
}

macro_rules! redb_into_file_error {
    ($($t:ty),*) => {$(
        impl From<$t> for FileError {
            fn from(e: $t) -> FileError {
                FileError::Redb(e.into())
            }
        }
    )*};
}
redb_into_file_error!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// What a source holds, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSource {
    /// The status.
    pub status: Status,
    /// When it was set (ms since the Unix epoch).
    pub updated_at: u64,
    /// When it ends by itself (ms since the Unix epoch).
    pub expires_at: Option<u64>,
}

/// One record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A held source of a resource.
    Source(FullJid, Source, StoredSource),
    /// A resource whose `unavailable` is still to be delivered, made by change `seq` (0: by the
    /// previous release).
    Tombstone(FullJid, u64),
}

/// One change of the durable state; the writes of one call are committed in one transaction.
/// The `u64` of the removals is the change's number, kept in the tombstone they leave.
#[derive(Debug, Clone)]
pub enum Write {
    /// Hold `source`'s status for the resource (replacing it).
    Set(FullJid, Source, StoredSource),
    /// Remove `source` from the resource, and mark the resource for `unavailable` (a tombstone,
    /// ignored while other sources remain).
    Clear(FullJid, Source, u64),
    /// Like `Clear`, but only if the stored status still has this expiry (the second number; a
    /// later set stays).
    Expire(FullJid, Source, u64, u64),
    /// Remove every source of the resource, and mark it for `unavailable`.
    ClearAll(FullJid, u64),
    /// Keep a record in a side table (key, encoded record), replacing one with the same key.
    Put(Side, String, Vec<u8>),
    /// Remove a record from a side table.
    Remove(Side, String),
}

/// The side tables (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Per-user API tokens.
    Tokens,
    /// Subscription requests sent in a user's name.
    Subscriptions,
}

impl Side {
    const ALL: [Side; 2] = [Side::Tokens, Side::Subscriptions];

    fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Side::Tokens => TOKENS,
            Side::Subscriptions => SUBSCRIPTIONS,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What is run on the writer thread once a write's commit succeeded or failed.
pub type Ack = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

enum Op {
    Writes(Vec<Write>, Ack),
    /// Remove the tombstone made by change `seq` (delivered), unless a later change has
    /// replaced it in the meantime.
    Delete(String, u64),
}

/// A side table's record as stored: its key and its encoded record.
pub type SideRecord = (String, Vec<u8>);

/// Handle to the writer thread.
#[derive(Debug, Clone)]
pub struct Store {
    ops: std_mpsc::Sender<Op>,
    health: Arc<Health>,
    /// The side tables' records read at open, until taken (by [`Side::index`]).
    sides: Arc<Mutex<[Vec<SideRecord>; 2]>>,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Writes(w, _) => write!(f, "Writes({w:?})"),
            Op::Delete(k, seq) => write!(f, "Delete({k}, {seq})"),
        }
    }
}

/// A pending durable write: await it before acknowledging the change.
pub struct Pending(Option<oneshot::Receiver<Result<(), StoreError>>>);

impl Pending {
    /// A write that needs no waiting (no store configured).
    pub fn done() -> Pending {
        Pending(None)
    }

    /// Wait until the write is committed.
    pub async fn durable(self) -> Result<(), StoreError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => rx.await.unwrap_or(Err(StoreError::Closed)),
        }
    }
}

fn show_code(show: Option<Show>) -> u8 {
    match show {
        None => 0,
        Some(Show::Chat) => 1,
        Some(Show::Away) => 2,
        Some(Show::Xa) => 3,
        Some(Show::Dnd) => 4,
    }
}

fn show_of(code: u8) -> Result<Option<Show>, RecordError> {
    Ok(match code {
        0 => None,
        1 => Some(Show::Chat),
        2 => Some(Show::Away),
        3 => Some(Show::Xa),
        4 => Some(Show::Dnd),
        other => return Err(RecordError::UnknownShow(other)),
    })
}

fn source_key(jid: &FullJid, source: Source) -> String {
    format!("{jid}{SOURCE_SEPARATOR}{source}")
}

fn encode(stored: &StoredSource) -> Vec<u8> {
    let s = &stored.status;
    let text = s.text.as_deref().unwrap_or("");
    let mut v = Vec::with_capacity(19 + text.len());
    v.extend_from_slice(&[3, s.priority as u8, show_code(s.show)]);
    v.extend_from_slice(&stored.updated_at.to_le_bytes());
    v.extend_from_slice(&stored.expires_at.unwrap_or(0).to_le_bytes());
    v.extend_from_slice(text.as_bytes());
    v
}

fn text_of(bytes: &[u8]) -> Result<Option<String>, RecordError> {
    let text = std::str::from_utf8(bytes)?;
    // Only checked text is ever stored; a record that fails the check is damaged, and its text
    // would corrupt the XML stream every time it is replayed.
    crate::model::validate_stored_text(text)?;
    Ok((!text.is_empty()).then(|| text.to_string()))
}

/// A source record (format 2).
fn decode(bytes: &[u8]) -> Result<StoredSource, RecordError> {
    match bytes {
        [3, priority, show, rest @ ..] if rest.len() >= 16 => {
            let (updated, rest) = rest.split_at(8);
            let (expires, text) = rest.split_at(8);
            let expires = u64::from_le_bytes(expires.try_into().expect("8 bytes"));
            Ok(StoredSource {
                status: Status {
                    show: show_of(*show)?,
                    text: text_of(text)?,
                    priority: *priority as i8,
                },
                updated_at: u64::from_le_bytes(updated.try_into().expect("8 bytes")),
                expires_at: (expires != 0).then_some(expires),
            })
        }
        _ => Err(RecordError::NotSource),
    }
}

/// A format-1 record of an available resource: the status, as source `default` set now.
fn decode_v1(bytes: &[u8], now: u64) -> Result<StoredSource, RecordError> {
    match bytes {
        [1, priority, show, text @ ..] => Ok(StoredSource {
            status: Status {
                show: show_of(*show)?,
                text: text_of(text)?,
                priority: *priority as i8,
            },
            updated_at: now,
            expires_at: None,
        }),
        _ => Err(RecordError::UnknownKind),
    }
}

/// `meta.format` as stored, read without writing (`None`: no meta table or no format in it).
/// Also the webhook outbox's (`webhooks/outbox.rs`), which versions its file the same way.
pub(crate) fn written_format(db: &Database) -> Result<Option<u32>, FileError> {
    let read = db.begin_read()?;
    let meta = match read.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Some(v) = meta.get("format")? else {
        return Ok(None);
    };
    let bytes: [u8; 4] = v.value().try_into().map_err(|_| FileError::DamagedFormat)?;
    Ok(Some(u32::from_le_bytes(bytes)))
}

/// The format a store was written in: `meta.format`, or 1 for a store without it (a store
/// without either table is new: this version's).
fn format_of(txn: &redb::WriteTransaction) -> Result<u32, FileError> {
    let meta = txn.open_table(META)?;
    if let Some(v) = meta.get("format")? {
        let bytes: [u8; 4] = v.value().try_into().map_err(|_| FileError::DamagedFormat)?;
        return Ok(u32::from_le_bytes(bytes));
    }
    let statuses = txn.open_table(STATUSES)?;
    let empty = statuses.is_empty()?;
    Ok(if empty { FORMAT } else { 1 })
}

/// Upgrade a format-1 store to format 2 in `txn`: every available resource becomes source
/// `default`; tombstones stay. Returns how many records were rewritten.
fn upgrade_from_1(txn: &redb::WriteTransaction) -> Result<usize, FileError> {
    let mut table = txn.open_table(STATUSES)?;
    let mut old = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        if v.value().first() == Some(&1) {
            old.push((k.value().to_string(), v.value().to_vec()));
        }
    }
    let now = now_ms();
    for (key, value) in &old {
        let jid = FullJid::new(key).map_err(|e| FileError::BadKey(key.clone(), e))?;
        let stored = decode_v1(value, now).map_err(|e| FileError::BadRecord(key.clone(), e))?;
        table.insert(
            source_key(&jid, Source::DEFAULT).as_str(),
            encode(&stored).as_slice(),
        )?;
        table.remove(key.as_str())?;
    }
    Ok(old.len())
}

impl Store {
    /// Open (or create) the store at `path`, read every record, and start the writer thread.
    pub fn open(path: &Path) -> Result<(Store, Vec<Record>), StoreError> {
        let open_err = |message: String| StoreError::Open {
            path: path.to_path_buf(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        }
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| open_err(e.to_string()))?;
        // A store of a newer format is refused before anything is written to it.
        if let Some(newer) = written_format(&db)
            .map_err(|e| open_err(e.to_string()))?
            .filter(|f| *f > FORMAT)
        {
            return Err(open_err(format!(
                "the store is in format {newer}, newer than the format {FORMAT} this \
                 extpresence reads: run the newer extpresence that wrote it, or restore a \
                 backup (nothing was changed)"
            )));
        }
        let txn = db.begin_write().map_err(|e| open_err(e.to_string()))?;
        txn.open_table(STATUSES)
            .map_err(|e| open_err(e.to_string()))?;
        match format_of(&txn).map_err(|e| open_err(e.to_string()))? {
            FORMAT => {}
            1 => {
                let n = upgrade_from_1(&txn).map_err(|e| open_err(e.to_string()))?;
                info!(path = %path.display(), statuses = n, "status store upgraded from format 1 to {FORMAT}");
            }
            newer => {
                return Err(open_err(format!(
                    "the store is in format {newer}, newer than the format {FORMAT} this \
                     extpresence reads: run the newer extpresence that wrote it, or restore a \
                     backup (nothing was changed)"
                )))
            }
        }
        {
            let mut meta = txn.open_table(META).map_err(|e| open_err(e.to_string()))?;
            meta.insert("format", FORMAT.to_le_bytes().as_slice())
                .map_err(|e| open_err(e.to_string()))?;
        }
        txn.commit().map_err(|e| open_err(e.to_string()))?;

        let mut records = Vec::new();
        {
            let read = db.begin_read().map_err(|e| open_err(e.to_string()))?;
            let table = read
                .open_table(STATUSES)
                .map_err(|e| open_err(e.to_string()))?;
            for row in table.iter().map_err(|e| open_err(e.to_string()))? {
                let (k, v) = row.map_err(|e| open_err(e.to_string()))?;
                let key = k.value();
                let bad = |e: String| open_err(format!("bad record {key:?}: {e}"));
                let record = match key.split_once(SOURCE_SEPARATOR) {
                    Some((jid, source)) => Record::Source(
                        FullJid::new(jid).map_err(|e| bad(e.to_string()))?,
                        Source::load(source).map_err(|e| bad(e.to_string()))?,
                        decode(v.value()).map_err(|e| bad(e.to_string()))?,
                    ),
                    None => match tombstone_seq(v.value()) {
                        Some(seq) => Record::Tombstone(
                            FullJid::new(key).map_err(|e| bad(e.to_string()))?,
                            seq,
                        ),
                        None => return Err(bad("unknown record kind".into())),
                    },
                };
                records.push(record);
            }
        }
        let mut sides: [Vec<SideRecord>; 2] = Default::default();
        {
            let read = db.begin_read().map_err(|e| open_err(e.to_string()))?;
            for side in Side::ALL {
                match read.open_table(side.table()) {
                    Ok(table) => {
                        for row in table.iter().map_err(|e| open_err(e.to_string()))? {
                            let (k, v) = row.map_err(|e| open_err(e.to_string()))?;
                            sides[side.index()].push((k.value().to_string(), v.value().to_vec()));
                        }
                    }
                    Err(redb::TableError::TableDoesNotExist(_)) => {}
                    Err(e) => return Err(open_err(e.to_string())),
                }
            }
        }
        info!(
            path = %path.display(),
            records = records.len(),
            tokens = sides[Side::Tokens.index()].len(),
            subscriptions = sides[Side::Subscriptions.index()].len(),
            "status store open"
        );

        let health = Arc::new(Health::default());
        let tx = Writer::spawn(
            "extpresence-store",
            StatusCommitter,
            Arc::new(Db::new(path, db, open_db)),
            health.clone(),
            &TEXTS,
            MAX_BATCH,
        )
        .map_err(|e| open_err(e.to_string()))?;
        Ok((
            Store {
                ops: tx,
                health,
                sides: Arc::new(Mutex::new(sides)),
            },
            records,
        ))
    }

    /// Queue `writes`, committed together in one transaction; `ack` runs on the writer thread
    /// once the commit succeeded or failed. Acks run in the order the writes were queued, and
    /// each runs whether or not anybody still waits for the write.
    pub fn write_then(&self, writes: Vec<Write>, ack: Ack) {
        if let Err(std_mpsc::SendError(Op::Writes(_, ack))) = self.ops.send(Op::Writes(writes, ack))
        {
            ack(Err(StoreError::Closed));
        }
    }

    /// Queue `writes` (one transaction); await the result to know they are durable.
    pub fn write(&self, writes: Vec<Write>) -> Pending {
        let (tx, rx) = oneshot::channel();
        self.write_then(
            writes,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        Pending(Some(rx))
    }

    /// Queue the removal of `jid`'s tombstone made by change `seq` (a later one stays); nobody
    /// waits for it. A tombstone of the previous release (number 0) goes with any number.
    pub fn delete(&self, jid: &FullJid, seq: u64) {
        let _ = self.ops.send(Op::Delete(jid.as_str().to_owned(), seq));
    }

    /// The records of side table `side` read at open (once; later calls get none).
    pub fn take(&self, side: Side) -> Vec<SideRecord> {
        std::mem::take(&mut self.sides.lock().unwrap_or_else(|e| e.into_inner())[side.index()])
    }

    /// Why the store cannot commit, while it cannot (`None` when the last commit succeeded).
    pub fn failure(&self) -> Option<String> {
        self.health.failure()
    }

    /// Commits that failed since start.
    pub fn failed_commits(&self) -> u64 {
        self.health.failed_commits()
    }
}

/// Open (or create) the database and make sure its tables exist, so reads of a fresh store work.
fn open_db(path: &Path) -> Result<Database, redb::Error> {
    let db = redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)?;
    let txn = db.begin_write()?;
    txn.open_table(STATUSES)?;
    txn.commit()?;
    Ok(db)
}

/// The log lines of the status store's writer.
static TEXTS: Texts = Texts {
    failing: "status store cannot commit: updates are refused with 503 and /readyz answers 503 \
              until it can; it is reopened and retried every second (failures since the last \
              such line: extpresence_store_failed_commits_total)",
    still_failing: "status store still cannot commit",
    again: "status store commits again; writes are accepted",
    again_quiet: "status store commits again",
};

/// The status store's side of the writer: its transaction, and the acknowledgements.
struct StatusCommitter;

impl Committer for StatusCommitter {
    type Op = Op;
    type Output = ();
    const PROBES: bool = true;

    fn weight(op: &Op) -> usize {
        match op {
            Op::Writes(w, _) => w.len().max(1),
            Op::Delete(..) => 1,
        }
    }

    fn commit(&mut self, db: &Database, batch: &[Op]) -> Result<(), redb::Error> {
        commit(db, batch)
    }

    /// Acknowledge every write of the batch; a failed one leaves no trace and is not retried.
    fn settle(&mut self, batch: Vec<Op>, result: Result<(), &str>) -> Next<Op> {
        for op in batch {
            if let Op::Writes(_, ack) = op {
                ack(result.map_err(|e| StoreError::Commit(e.to_string())));
            }
        }
        Next::Go
    }

    fn probe(&mut self, db: &Database) -> Result<(), redb::Error> {
        probe(db)
    }
}

fn commit(db: &Database, batch: &[Op]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(STATUSES)?;
        let mut sides = [txn.open_table(TOKENS)?, txn.open_table(SUBSCRIPTIONS)?];
        for op in batch {
            match op {
                Op::Writes(writes, _) => {
                    for w in writes {
                        match w {
                            Write::Set(jid, source, stored) => {
                                table.insert(
                                    source_key(jid, *source).as_str(),
                                    encode(stored).as_slice(),
                                )?;
                            }
                            Write::Clear(jid, source, seq) => {
                                table.remove(source_key(jid, *source).as_str())?;
                                table.insert(jid.as_str(), tombstone(*seq).as_slice())?;
                            }
                            Write::Expire(jid, source, at, seq) => {
                                let key = source_key(jid, *source);
                                let due = table
                                    .get(key.as_str())?
                                    .and_then(|v| decode(v.value()).ok())
                                    .is_some_and(|s| s.expires_at == Some(*at));
                                if due {
                                    table.remove(key.as_str())?;
                                    table.insert(jid.as_str(), tombstone(*seq).as_slice())?;
                                }
                            }
                            Write::Put(side, key, record) => {
                                sides[side.index()].insert(key.as_str(), record.as_slice())?;
                            }
                            Write::Remove(side, key) => {
                                sides[side.index()].remove(key.as_str())?;
                            }
                            Write::ClearAll(jid, seq) => {
                                let start = format!("{jid}{SOURCE_SEPARATOR}");
                                let end = format!("{jid}\u{1}");
                                table.retain_in(start.as_str()..end.as_str(), |_, _| false)?;
                                table.insert(jid.as_str(), tombstone(*seq).as_slice())?;
                            }
                        }
                    }
                }
                Op::Delete(k, seq) => {
                    let same = table
                        .get(k.as_str())?
                        .and_then(|v| tombstone_seq(v.value()))
                        .is_some_and(|stored| stored == *seq || stored == 0);
                    if same {
                        table.remove(k.as_str())?;
                    }
                }
            }
        }
    }
    Ok(txn.commit()?)
}

/// A commit that writes (and removes) a page-sized record: succeeds only if the store can
/// really commit again (an empty commit could succeed on a full disk).
fn probe(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(PROBE)?;
        table.insert("probe", [0u8; 4096].as_slice())?;
        table.remove("probe")?;
    }
    Ok(txn.commit()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stored(show: Option<Show>, text: Option<&str>, priority: i8) -> StoredSource {
        StoredSource {
            status: Status {
                show,
                text: text.map(str::to_string),
                priority,
            },
            updated_at: 1_700_000_000_123,
            expires_at: None,
        }
    }

    #[test]
    fn records_roundtrip() {
        let mut expiring = stored(Some(Show::Dnd), Some("Im Gespräch"), -128);
        expiring.expires_at = Some(1_800_000_000_000);
        for s in [expiring, stored(None, None, 5)] {
            assert_eq!(decode(&encode(&s)).unwrap(), s);
        }
        assert!(decode(&[9]).is_err());
        assert!(decode(&[3, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        let mut bad = encode(&stored(None, Some("a"), 0));
        bad.push(1);
        assert!(decode(&bad).is_err(), "control character");
    }

    async fn reopen(path: &Path) -> Vec<Record> {
        // The writer thread closes the database when the last handle is gone.
        for _ in 0..100 {
            match Store::open(path) {
                Ok((_, r)) => return r,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        panic!("store still locked");
    }

    #[tokio::test]
    async fn durable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let a = FullJid::new("alice@example.com/tigase-external").unwrap();
        let b = FullJid::new("bob@example.com/phone").unwrap();
        let pbx = Source::parse("pbx").unwrap();
        let st = stored(Some(Show::Xa), Some("On the phone"), -1);
        let mut expiring = stored(Some(Show::Dnd), None, -1);
        expiring.expires_at = Some(5);
        {
            let (store, records) = Store::open(&path).unwrap();
            assert!(records.is_empty());
            store
                .write(vec![
                    Write::Set(a.clone(), Source::DEFAULT, st.clone()),
                    Write::Set(a.clone(), pbx, expiring.clone()),
                    Write::Set(b.clone(), pbx, st.clone()),
                ])
                .durable()
                .await
                .unwrap();
            // An expiry that no longer matches leaves the status; a clear leaves a tombstone.
            store
                .write(vec![
                    Write::Expire(a.clone(), pbx, 6, 10),
                    Write::Clear(b.clone(), pbx, 11),
                ])
                .durable()
                .await
                .unwrap();
            store.delete(&b, 11);
            store
                .write(vec![Write::ClearAll(a.clone(), 12)])
                .durable()
                .await
                .unwrap();
            // The removal of an older, delivered tombstone leaves the newer one.
            store.delete(&a, 9);
            store
                .write(vec![Write::Set(a.clone(), pbx, st.clone())])
                .durable()
                .await
                .unwrap();
        }
        assert_eq!(
            reopen(&path).await,
            vec![
                Record::Tombstone(a.clone(), 12),
                Record::Source(a.clone(), pbx, st.clone()),
            ]
        );
    }

    #[tokio::test]
    async fn format_1_is_upgraded_and_newer_formats_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let a = FullJid::new("alice@example.com/tigase-external").unwrap();
        let b = FullJid::new("bob@example.com/phone").unwrap();
        {
            // A format-1 store as the previous release wrote it: no meta table.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(STATUSES).unwrap();
                t.insert(a.as_str(), b"\x01\xff\x03two\r\nlines".as_slice())
                    .unwrap();
                t.insert(b.as_str(), TOMBSTONE.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let records = reopen(&path).await;
        assert_eq!(records.len(), 2);
        assert_eq!(records[1], Record::Tombstone(b.clone(), 0));
        let Record::Source(jid, source, s) = &records[0] else {
            panic!("{records:?}")
        };
        assert_eq!((jid, *source), (&a, Source::DEFAULT));
        assert_eq!(
            s.status,
            Status {
                show: Some(Show::Xa),
                text: Some("two\r\nlines".into()),
                priority: -1
            }
        );
        // Opened again: already format 2, the same records.
        assert_eq!(reopen(&path).await, records);
        {
            let db = loop {
                match Database::create(&path) {
                    Ok(db) => break db,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            };
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("format", 3u32.to_le_bytes().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let e = Store::open(&path).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("format 3, newer than the format 2"), "{e}");
    }
}
