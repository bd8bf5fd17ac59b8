//! The durable copy of the status table (redb, crash-safe, one file under `[store] path`).
//!
//! The store keeps model values and knows nothing of HTTP or XMPP; the [`StatusTable`] is its only
//! writer. Writes go to one writer thread through a channel in the order the table made them; the
//! thread commits whatever has queued up in one transaction (group commit, fsync'd by redb's
//! default durability) and only then acknowledges each write (a callback run on the writer
//! thread, in commit order), so a caller that awaited its acknowledgement knows the change
//! survives a crash. [`Store::open`] returns everything held, for the table to reload at start.
//!
//! A failed commit (disk full, I/O error) fails every write of its batch and leaves no trace of
//! them. redb refuses all later writes on a database that saw an I/O error, so the writer closes
//! it, reports the failure once ([`Store::failure`] for `/readyz` and `/metrics`, one ERROR line),
//! and reopens it (redb checks and, if needed, repairs the file) before the next batch, and every
//! second while idle, with a probe commit; the first commit that succeeds again ends the failure.
//! Everything committed before the failure is still there: redb commits are atomic.
//!
//! Record: key = the full JID `user@domain/resource`; value = `[kind][priority][show][status…]`
//! with kind 1 = available, 2 = cleared (a tombstone kept until its `unavailable` went out).
//!
//! [`StatusTable`]: crate::status::StatusTable

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jid::FullJid;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;
use tracing::{debug, error, info};

use crate::status::{Show, Status};

const STATUSES: TableDefinition<&str, &[u8]> = TableDefinition::new("statuses");
/// Scratch table of the probe commit that checks a failed store can commit again.
const PROBE: TableDefinition<&str, &[u8]> = TableDefinition::new("probe");
/// How often a failed store is reopened and probed while no write comes.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Encoding of a tombstone record.
const TOMBSTONE: [u8; 3] = [2, 0, 0];
/// redb's page cache. Its default (1 GiB) kept every page read at start in memory: 134 MB of
/// RSS with 1,000,000 records, for pages that are read once (the whole table is in memory anyway).
const CACHE_BYTES: usize = 16 << 20;
/// Most writes committed in one transaction.
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

/// One held record as stored: `None` is a tombstone.
pub type Record = (FullJid, Option<Status>);

/// What is run on the writer thread once a write's commit succeeded or failed.
pub type Ack = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

enum Op {
    Put(String, Vec<u8>, Ack),
    /// Remove a delivered tombstone, unless a later write has replaced it in the meantime.
    Delete(String),
}

/// Whether the store can commit, shared by the writer thread and the handles.
#[derive(Debug, Default)]
struct Health {
    /// Why the last commit (or reopen) failed; `None` while commits succeed.
    failure: Mutex<Option<String>>,
    /// Commits (or reopens before one) that failed, since start.
    failed_commits: AtomicU64,
}

/// Handle to the writer thread.
#[derive(Debug, Clone)]
pub struct Store {
    ops: std_mpsc::Sender<Op>,
    health: Arc<Health>,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Put(k, ..) => write!(f, "Put({k})"),
            Op::Delete(k) => write!(f, "Delete({k})"),
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

fn encode(status: Option<&Status>) -> Vec<u8> {
    match status {
        None => TOMBSTONE.to_vec(),
        Some(s) => {
            let show = match s.show {
                None => 0,
                Some(Show::Chat) => 1,
                Some(Show::Away) => 2,
                Some(Show::Xa) => 3,
                Some(Show::Dnd) => 4,
            };
            let text = s.text.as_deref().unwrap_or("");
            let mut v = Vec::with_capacity(3 + text.len());
            v.extend_from_slice(&[1, s.priority as u8, show]);
            v.extend_from_slice(text.as_bytes());
            v
        }
    }
}

fn decode(bytes: &[u8]) -> Result<Option<Status>, String> {
    match bytes {
        [2, ..] => Ok(None),
        [1, priority, show, text @ ..] => {
            let show = match show {
                0 => None,
                1 => Some(Show::Chat),
                2 => Some(Show::Away),
                3 => Some(Show::Xa),
                4 => Some(Show::Dnd),
                other => return Err(format!("unknown show code {other}")),
            };
            let text = std::str::from_utf8(text).map_err(|e| e.to_string())?;
            // Only checked text is ever stored; a record that fails the check is damaged, and
            // its text would corrupt the XML stream every time it is replayed.
            crate::status::validate_text(text).map_err(|e| e.to_string())?;
            Ok(Some(Status {
                show,
                text: (!text.is_empty()).then(|| text.to_string()),
                priority: *priority as i8,
            }))
        }
        _ => Err("unknown record kind".into()),
    }
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
        let db = open_db(path).map_err(open_err)?;

        let mut records = Vec::new();
        {
            let read = db.begin_read().map_err(|e| open_err(e.to_string()))?;
            let table = read
                .open_table(STATUSES)
                .map_err(|e| open_err(e.to_string()))?;
            for row in table.iter().map_err(|e| open_err(e.to_string()))? {
                let (k, v) = row.map_err(|e| open_err(e.to_string()))?;
                let key = k.value();
                let jid =
                    FullJid::new(key).map_err(|e| open_err(format!("bad key {key:?}: {e}")))?;
                let status =
                    decode(v.value()).map_err(|e| open_err(format!("bad record {key:?}: {e}")))?;
                records.push((jid, status));
            }
        }
        info!(path = %path.display(), records = records.len(), "status store open");

        let (tx, rx) = std_mpsc::channel();
        let health = Arc::new(Health::default());
        let writer_health = health.clone();
        let writer_path = path.to_path_buf();
        std::thread::Builder::new()
            .name("extpresence-store".into())
            .spawn(move || {
                Writer {
                    db: Some(db),
                    path: writer_path,
                    health: writer_health,
                }
                .run(rx)
            })
            .map_err(|e| open_err(e.to_string()))?;
        Ok((Store { ops: tx, health }, records))
    }

    /// Queue `jid` ← `status` (`None`: tombstone); `ack` runs on the writer thread once the
    /// commit succeeded or failed. Acks run in the order the writes were queued, and each runs
    /// whether or not anybody still waits for the write.
    pub fn put_then(&self, jid: &FullJid, status: Option<&Status>, ack: Ack) {
        if let Err(std_mpsc::SendError(Op::Put(_, _, ack))) =
            self.ops
                .send(Op::Put(jid.as_str().to_owned(), encode(status), ack))
        {
            ack(Err(StoreError::Closed));
        }
    }

    /// Queue `jid` ← `status` (`None`: tombstone); await the result to know it is durable.
    pub fn put(&self, jid: &FullJid, status: Option<&Status>) -> Pending {
        let (tx, rx) = oneshot::channel();
        self.put_then(
            jid,
            status,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        Pending(Some(rx))
    }

    /// Queue the removal of `jid` if it is still a tombstone (a later write that replaced it
    /// stays); nobody waits for it.
    pub fn delete(&self, jid: &FullJid) {
        let _ = self.ops.send(Op::Delete(jid.as_str().to_owned()));
    }

    /// Why the store cannot commit, while it cannot (`None` when the last commit succeeded).
    pub fn failure(&self) -> Option<String> {
        self.health
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Commits that failed since start.
    pub fn failed_commits(&self) -> u64 {
        self.health.failed_commits.load(Ordering::Relaxed)
    }
}

/// Open (or create) the database and make sure its tables exist, so reads of a fresh store work.
fn open_db(path: &Path) -> Result<Database, String> {
    let db = redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| e.to_string())?;
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.open_table(STATUSES).map_err(|e| e.to_string())?;
    txn.commit().map_err(|e| e.to_string())?;
    Ok(db)
}

/// The writer thread's state.
struct Writer {
    /// The open database; `None` after a failed commit until it is reopened.
    db: Option<Database>,
    /// The file, to reopen it.
    path: PathBuf,
    health: Arc<Health>,
}

impl Writer {
    fn run(mut self, rx: std_mpsc::Receiver<Op>) {
        loop {
            let first = if self.failing() {
                match rx.recv_timeout(PROBE_EVERY) {
                    Ok(op) => op,
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {
                        let probe = self.database().and_then(probe);
                        self.settle(probe.as_ref().map(|_| ()), 0);
                        continue;
                    }
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(op) => op,
                    Err(_) => break,
                }
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let result = self.database().and_then(|db| commit(db, &batch));
            self.settle(result.as_ref().map(|_| ()), batch.len());
            for op in batch {
                if let Op::Put(_, _, ack) = op {
                    ack(match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(StoreError::Commit(e.clone())),
                    });
                }
            }
        }
        // Every Store handle is gone: the database is closed on drop.
    }

    fn failing(&self) -> bool {
        self.health
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The open database, reopened first if a failure closed it.
    fn database(&mut self) -> Result<&Database, String> {
        if self.db.is_none() {
            self.db = Some(open_db(&self.path).map_err(|e| format!("reopening: {e}"))?);
        }
        Ok(self.db.as_ref().expect("just opened"))
    }

    /// Record the outcome of a commit of `writes` writes (0: a probe): the first failure is
    /// logged at ERROR and closes the database (redb refuses every later write on it); the
    /// first success after failures is logged too. Nothing is logged per failed request.
    fn settle(&mut self, result: Result<(), &String>, writes: usize) {
        let mut failure = self
            .health
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                if let Some(was) = failure.take() {
                    info!(path = %self.path.display(), after = %was, "status store commits again; writes are accepted");
                }
            }
            Err(e) => {
                self.health.failed_commits.fetch_add(1, Ordering::Relaxed);
                self.db = None;
                if failure.is_none() {
                    error!(
                        path = %self.path.display(),
                        error = %e,
                        writes,
                        "status store cannot commit: updates are refused with 503 and /readyz \
                         answers 503 until it can; it is reopened and retried every second"
                    );
                } else {
                    debug!(error = %e, writes, "status store still cannot commit");
                }
                *failure = Some(e.clone());
            }
        }
    }
}

fn commit(db: &Database, batch: &[Op]) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(STATUSES).map_err(|e| e.to_string())?;
        for op in batch {
            match op {
                Op::Put(k, v, _) => {
                    table
                        .insert(k.as_str(), v.as_slice())
                        .map_err(|e| e.to_string())?;
                }
                Op::Delete(k) => {
                    let tombstone = table
                        .get(k.as_str())
                        .map_err(|e| e.to_string())?
                        .is_some_and(|v| v.value() == TOMBSTONE);
                    if tombstone {
                        table.remove(k.as_str()).map_err(|e| e.to_string())?;
                    }
                }
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

/// A commit that writes (and removes) a page-sized record: succeeds only if the store can
/// really commit again (an empty commit could succeed on a full disk).
fn probe(db: &Database) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(PROBE).map_err(|e| e.to_string())?;
        table
            .insert("probe", [0u8; 4096].as_slice())
            .map_err(|e| e.to_string())?;
        table.remove("probe").map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip() {
        for s in [
            None,
            Some(Status {
                show: Some(Show::Dnd),
                text: Some("Im Gespräch".into()),
                priority: -128,
            }),
            Some(Status {
                show: None,
                text: None,
                priority: 5,
            }),
        ] {
            assert_eq!(decode(&encode(s.as_ref())).unwrap(), s);
        }
        assert!(decode(&[9]).is_err());
        assert!(decode(&[1, 0, 7]).is_err());
        assert!(
            decode(&[1, 0, 0, b'a', 1, b'b']).is_err(),
            "control character"
        );
    }

    #[tokio::test]
    async fn durable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let a = FullJid::new("alice@example.com/tigase-external").unwrap();
        let b = FullJid::new("bob@example.com/phone").unwrap();
        let st = Status {
            show: Some(Show::Xa),
            text: Some("On the phone".into()),
            priority: -1,
        };
        {
            let (store, records) = Store::open(&path).unwrap();
            assert!(records.is_empty());
            store.put(&a, Some(&st)).durable().await.unwrap();
            store.put(&b, None).durable().await.unwrap();
            store.delete(&b);
            store.put(&a, Some(&st)).durable().await.unwrap(); // orders after the delete
        }
        // The writer thread closes the database when the last handle is gone.
        let mut records = None;
        for _ in 0..100 {
            match Store::open(&path) {
                Ok((_, r)) => {
                    records = Some(r);
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        assert_eq!(records.unwrap(), vec![(a, Some(st))]);
    }
}
