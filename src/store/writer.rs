//! The one redb group-commit writer, used by the status store (`store/mod.rs`) and the webhook
//! outbox (`webhooks/outbox.rs`).
//!
//! A writer thread takes operations from a channel in the order they were sent and commits
//! whatever has queued up in one transaction (group commit, fsync'd by redb's default
//! durability), at most a batch's weight per transaction. Only after the commit is the batch
//! handed back to its owner ([`Committer::settle`]), which acknowledges or applies it: whoever
//! waits for an operation learns of it only once it is durable.
//!
//! A failed commit (disk full, I/O error) closes the database (redb refuses every later write on
//! a database that saw an I/O error) and is recorded in [`Health`] (for `/readyz` and
//! `/metrics`); the next commit reopens it first (redb checks and, if needed, repairs the file).
//! The owner decides what happens to the failed batch: give it up (the status store fails its
//! writes, then probes every [`RETRY_EVERY`] while idle), or retry it every [`RETRY_EVERY`] (the
//! outbox). The first commit that succeeds again ends the failure. Failures are logged at ERROR
//! once per `REPORT_EVERY` at most, also when a nearly full disk makes commits fail and
//! succeed in turn; everything else at DEBUG, and the recovery at INFO.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::Database;
use tracing::{debug, error, info};

/// How often a failed database is reopened and tried again (a probe, or the failed batch).
pub const RETRY_EVERY: Duration = Duration::from_secs(1);
/// At most one ERROR line about failing commits per this period.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Whether a writer can commit, shared by its thread and whoever reports it (`/readyz`,
/// `/metrics`).
#[derive(Debug, Default)]
pub struct Health {
    /// Why the last commit (or reopen) failed; `None` while commits succeed.
    failure: Mutex<Option<String>>,
    /// Commits (or reopens before one) that failed, since start.
    pub failed_commits: AtomicU64,
}

impl Health {
    /// Why the writer cannot commit, or `None` when it can.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Record a failed commit (`Some`, counted) or a successful one (`None`); the failure
    /// recorded before.
    pub fn set_failure(&self, why: Option<String>) -> Option<String> {
        if why.is_some() {
            self.failed_commits.fetch_add(1, Relaxed);
        }
        std::mem::replace(
            &mut *self.failure.lock().unwrap_or_else(|e| e.into_inner()),
            why,
        )
    }

    /// Commits that failed since start.
    pub fn failed_commits(&self) -> u64 {
        self.failed_commits.load(Relaxed)
    }
}

/// Opens (or creates) the database file.
pub type Opener = fn(&Path) -> Result<Database, redb::Error>;

/// The writer's database: closed by a failed commit, reopened by the next one. Readers (the
/// outbox's senders) take a clone for one read.
#[derive(Debug)]
pub struct Db {
    /// The file, to reopen it.
    path: PathBuf,
    /// How to reopen it.
    open: Opener,
    /// The open database; `None` after a failure until it is reopened.
    db: Mutex<Option<Arc<Database>>>,
}

impl Db {
    /// The database `db`, opened from `path`; `open` reopens it after a failure.
    pub fn new(path: &Path, db: Database, open: Opener) -> Db {
        Db {
            path: path.to_path_buf(),
            open,
            db: Mutex::new(Some(Arc::new(db))),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open database, or `None` while a failed one waits to be reopened.
    pub fn get(&self) -> Option<Arc<Database>> {
        self.db.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Close the database (it closes when the last reader lets it go); the next commit reopens
    /// it.
    pub fn close(&self) {
        *self.db.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The open database, reopened first if a failure closed it.
    fn open(&self) -> Result<Arc<Database>, String> {
        let mut db = self.db.lock().unwrap_or_else(|e| e.into_inner());
        if db.is_none() {
            *db = Some(Arc::new(
                (self.open)(&self.path).map_err(|e| format!("reopening: {e}"))?,
            ));
        }
        Ok(db.clone().expect("just opened"))
    }
}

/// What the writer does after a batch is settled.
pub enum Next<Op> {
    /// Take the next batch.
    Go,
    /// Try this batch again after [`RETRY_EVERY`] (what has queued since joins it).
    Retry(Vec<Op>),
    /// End the writer.
    Stop,
    /// End the writer; the batch and what is still queued go to [`Committer::abandon`].
    Abandon(Vec<Op>),
}

/// What a writer commits: its operations, their transaction, and what follows a commit.
pub trait Committer: Send + 'static {
    /// An operation sent to the writer.
    type Op: Send + 'static;
    /// What a successful commit hands to [`Committer::settle`].
    type Output;
    /// Whether a failing writer probes the database every [`RETRY_EVERY`] while no operation
    /// comes ([`Committer::probe`]).
    const PROBES: bool = false;

    /// How much of a batch's [`Writer`] `max_batch` the operation takes.
    fn weight(_op: &Self::Op) -> usize {
        1
    }

    /// Commit `batch` in one transaction.
    fn commit(&mut self, db: &Database, batch: &[Self::Op]) -> Result<Self::Output, redb::Error>;

    /// After the commit of `batch` succeeded or failed (the failure already recorded and
    /// reported): acknowledge or apply it, and say what comes next.
    fn settle(
        &mut self,
        batch: Vec<Self::Op>,
        result: Result<Self::Output, &str>,
    ) -> Next<Self::Op>;

    /// A commit that succeeds only if the database can really commit again.
    fn probe(&mut self, _db: &Database) -> Result<(), redb::Error> {
        Ok(())
    }

    /// The writer ends after `error` ([`Next::Abandon`]): the operations not committed.
    fn abandon(&mut self, _ops: Vec<Self::Op>, _error: &str) {}
}

/// The log lines of one writer (what is failing, for whom).
#[derive(Debug)]
pub struct Texts {
    /// ERROR, at most once per `REPORT_EVERY`: commits fail.
    pub failing: &'static str,
    /// DEBUG: still failing (within the report period).
    pub still_failing: &'static str,
    /// INFO: commits again after failures that were all reported.
    pub again: &'static str,
    /// DEBUG: commits again (after failures not all reported: a flapping disk).
    pub again_quiet: &'static str,
}

/// The writer thread's state.
pub struct Writer<C: Committer> {
    /// The owner's operations.
    committer: C,
    db: Arc<Db>,
    health: Arc<Health>,
    texts: &'static Texts,
    /// Most weight committed in one transaction (an operation is never split).
    max_batch: usize,
    /// When the last ERROR line about failing commits was written, and the failures since: a
    /// database that flaps (a nearly full disk: some commits fit, some do not) is reported once
    /// per `REPORT_EVERY`, not once per flap.
    reported: Option<Instant>,
    failures_since_report: u64,
}

impl<C: Committer> Writer<C> {
    /// Start the writer thread `name`; it ends when every sender is gone or `settle` says so.
    pub fn spawn(
        name: &str,
        committer: C,
        db: Arc<Db>,
        health: Arc<Health>,
        texts: &'static Texts,
        max_batch: usize,
    ) -> std::io::Result<std_mpsc::Sender<C::Op>> {
        let (tx, rx) = std_mpsc::channel();
        let writer = Writer {
            committer,
            db,
            health,
            texts,
            max_batch,
            reported: None,
            failures_since_report: 0,
        };
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || writer.run(rx))?;
        Ok(tx)
    }

    fn run(mut self, rx: std_mpsc::Receiver<C::Op>) {
        let mut batch: Vec<C::Op> = Vec::new();
        // An operation taken from the channel that did not fit the last batch.
        let mut next: Option<C::Op> = None;
        loop {
            if batch.is_empty() {
                let first = if let Some(op) = next.take() {
                    op
                } else if C::PROBES && self.health.failure().is_some() {
                    match rx.recv_timeout(RETRY_EVERY) {
                        Ok(op) => op,
                        Err(std_mpsc::RecvTimeoutError::Timeout) => {
                            let probe = self.db.open().and_then(|db| {
                                self.committer.probe(&db).map_err(|e| e.to_string())
                            });
                            self.report(probe.as_ref().map(|_| ()).map_err(String::as_str), 0);
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
                batch.push(first);
            }
            let mut size: usize = batch.iter().map(C::weight).sum();
            while size < self.max_batch {
                let op = match next.take() {
                    Some(op) => op,
                    None => match rx.try_recv() {
                        Ok(op) => op,
                        Err(_) => break,
                    },
                };
                let weight = C::weight(&op);
                if size + weight > self.max_batch {
                    next = Some(op);
                    break;
                }
                size += weight;
                batch.push(op);
            }
            let result = self.db.open().and_then(|db| {
                self.committer
                    .commit(&db, &batch)
                    .map_err(|e| e.to_string())
            });
            self.report(
                result.as_ref().map(|_| ()).map_err(String::as_str),
                batch.len(),
            );
            let batch_done = std::mem::take(&mut batch);
            let error = result.as_ref().err().cloned();
            let then = match result {
                Ok(out) => self.committer.settle(batch_done, Ok(out)),
                Err(e) => self.committer.settle(batch_done, Err(&e)),
            };
            match then {
                Next::Go => {}
                Next::Retry(again) => {
                    batch = again;
                    std::thread::sleep(RETRY_EVERY);
                }
                Next::Stop => return,
                Next::Abandon(mut ops) => {
                    ops.extend(next.take());
                    ops.extend(rx.try_iter());
                    self.committer
                        .abandon(ops, error.as_deref().unwrap_or_default());
                    return;
                }
            }
        }
        // Every sender is gone: the database closes when the last reader lets it go.
    }

    /// Record the outcome of a commit of `ops` operations (0: a probe): a failure closes the
    /// database (redb refuses every later write on it) and is logged at ERROR once per report
    /// period; the first success after failures is logged too. Nothing is logged per operation.
    fn report(&mut self, result: Result<(), &str>, ops: usize) {
        let texts = self.texts;
        let path = self.db.path().display();
        match result {
            Ok(()) => {
                if let Some(was) = self.health.set_failure(None) {
                    // Once per report period too (a flapping disk would write one per flap).
                    if self.failures_since_report == 0 {
                        info!(path = %path, after = %was, "{}", texts.again);
                    } else {
                        debug!(after = %was, "{}", texts.again_quiet);
                    }
                }
            }
            Err(e) => {
                self.health.set_failure(Some(e.to_string()));
                self.db.close();
                self.failures_since_report += 1;
                if self.reported.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
                    error!(
                        path = %path,
                        error = %e,
                        writes = ops,
                        failures = self.failures_since_report,
                        "{}",
                        texts.failing
                    );
                    self.reported = Some(Instant::now());
                    self.failures_since_report = 0;
                } else {
                    debug!(error = %e, writes = ops, "{}", texts.still_failing);
                }
            }
        }
    }
}
