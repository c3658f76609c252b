//! Durable registrar storage: one redb file, written by one group-commit thread.
//!
//! Why redb: it is pure Rust (no C/C++ to build or link), ACID with copy-on-write B-trees and
//! checksummed commits, so a crash leaves either the old or the new commit and there is no
//! write-ahead log whose replay we would have to manage; it needs no server and is actively
//! maintained with a stable file format. sled is an unmaintained beta; RocksDB drags in a heavy C++
//! build and tuning surface for a few thousand small keys; SQLite would do, but through C and FFI.
//!
//! The registrar hands us [`StoreOp`]s; the SIP service must answer 200 OK only after the
//! transaction holding them is durable. [`Committer::submit`] queues the ops; the committer thread
//! gathers whatever is queued (up to `max_batch` ops), writes it in one transaction committed with
//! [`Durability::Immediate`] (fsync), and only then runs each submission's `done` callback, then
//! each distinct `flush` once ([`Committer::submit_with_flush`]: one worker wake-up per commit).
//! Many registrations thus share one fsync without any of them being acknowledged early. With
//! [`Store::set_min_commit_interval`] the thread also waits, boundedly, for a group to grow:
//! a commit costs about the same CPU whatever it holds.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender, TryRecvError, TrySendError};
use redb::{Database, Durability, ReadableTable, TableDefinition, TableError};

pub use sipveil_registrar::StoreOp;

/// The layout version this build writes and reads. A file with a higher version was written by a
/// newer sipveil and is refused rather than misread.
pub const FORMAT_VERSION: u64 = 1;
/// Table holding `format_version` (and, later, other layout facts).
pub const META_TABLE: &str = "meta";
/// Key of the layout version in [`META_TABLE`].
pub const FORMAT_KEY: &str = "format_version";
/// Table of registrar records: key and value bytes are the registrar's business.
pub const BINDINGS_TABLE: &str = "bindings";

const META: TableDefinition<&str, u64> = TableDefinition::new(META_TABLE);
const BINDINGS: TableDefinition<&[u8], &[u8]> = TableDefinition::new(BINDINGS_TABLE);

/// Errors of the store. Every variant names the database path. `Clone` because one failed
/// transaction is reported to every submission it held.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("store {}: cannot create directory {}: {source}", path.display(), dir.display())]
    CreateDir {
        path: PathBuf,
        dir: PathBuf,
        source: Arc<std::io::Error>,
    },
    #[error("store {}: is a directory; the database setting must name a file", path.display())]
    IsDirectory { path: PathBuf },
    #[error("store {}: cannot open the database: {source}", path.display())]
    Open {
        path: PathBuf,
        source: Arc<redb::DatabaseError>,
    },
    #[error(
        "store {}: format version {found} was written by a newer sipveil (this one reads version {supported}); \
         run the newer sipveil or point the database setting at another file",
        path.display()
    )]
    NewerFormat {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error(
        "store {}: format version {found} is not supported (this sipveil reads version {supported})",
        path.display()
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error("store {}: not a sipveil store (it has tables but no `{META_TABLE}` table)", path.display())]
    Foreign { path: PathBuf },
    #[error("store {}: {what}: {source}", path.display())]
    Db {
        path: PathBuf,
        what: &'static str,
        source: Arc<redb::Error>,
    },
    #[error("store {}: cannot start the committer thread: {source}", path.display())]
    Thread {
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    #[error("store {}: the committer stopped before these operations were committed", path.display())]
    Stopped { path: PathBuf },
}

impl StoreError {
    fn db(path: &Path, what: &'static str, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Db {
            path: path.to_path_buf(),
            what,
            source: Arc::new(e.into()),
        }
    }
}

/// Why [`Committer::submit`] refused: the caller keeps responsibility (the SIP service answers
/// 503 with Retry-After) and `done` will not be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    /// The bounded queue is full: the disk is behind the offered load.
    #[error("store queue full")]
    QueueFull,
    /// The committer was shut down.
    #[error("store committer stopped")]
    Stopped,
}

/// Counters of the committer thread, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Committed write transactions (each one fsync).
    pub batches: u64,
    /// Operations in committed transactions.
    pub ops: u64,
    /// Submissions in committed transactions.
    pub submissions: u64,
    /// Transactions that failed; their submissions got `Err`.
    pub failed_batches: u64,
    /// Time spent applying and committing (including fsync), summed over committed transactions.
    pub commit_time_total: Duration,
    /// The longest single commit.
    pub commit_time_max: Duration,
    /// Submissions waiting in the queue when the stats were read.
    pub queued: usize,
}

/// One stored record: (key, value), as the registrar encoded them.
pub type Record = (Vec<u8>, Vec<u8>);

type DoneFn = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// Runs once per commit, after the `done` callbacks of every submission in it that named this
/// flush (the SIP service wakes the worker owning those transactions: one wake-up per worker per
/// commit instead of one per REGISTER). Submissions share a flush by sharing the `Arc`.
pub type Flush = Arc<dyn Fn() + Send + Sync>;
type CommitObserver = Box<dyn Fn(usize, Duration) + Send>;

/// An open store, before its committer starts. Read it with [`Store::load`], then hand it to
/// [`Store::start`].
pub struct Store {
    db: Database,
    path: PathBuf,
    observer: Option<CommitObserver>,
    min_commit_interval: Duration,
    enough: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) the database at `path`, creating missing parent directories, and checks
    /// its format version.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let owned = path.to_path_buf();
        if path.is_dir() {
            return Err(StoreError::IsDirectory { path: owned });
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::CreateDir {
                path: owned.clone(),
                dir: dir.to_path_buf(),
                source: Arc::new(e),
            })?;
        }
        let db = Database::create(path).map_err(|e| StoreError::Open {
            path: owned.clone(),
            source: Arc::new(e),
        })?;
        check_format(&db, path)?;
        Ok(Store {
            db,
            path: owned,
            observer: None,
            min_commit_interval: Duration::ZERO,
            enough: usize::MAX,
        })
    }

    /// The path the store was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every record, in key order.
    pub fn load(&self) -> Result<Vec<Record>, StoreError> {
        let path = &self.path;
        let txn = self
            .db
            .begin_read()
            .map_err(|e| StoreError::db(path, "begin read", e))?;
        let table = txn
            .open_table(BINDINGS)
            .map_err(|e| StoreError::db(path, "open bindings table", e))?;
        let mut out = Vec::new();
        for entry in table
            .iter()
            .map_err(|e| StoreError::db(path, "read bindings", e))?
        {
            let (k, v) = entry.map_err(|e| StoreError::db(path, "read bindings", e))?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Calls `f(ops, commit_time)` on the committer thread after each successful commit (for
    /// `Metrics::store_commit`). Set it before [`Store::start`].
    pub fn on_commit(&mut self, f: impl Fn(usize, Duration) + Send + 'static) {
        self.observer = Some(Box::new(f));
    }

    /// Coalesces commits: a submission arriving less than `interval` after the previous commit
    /// started, when that commit held more than one submission (at lower load nothing would
    /// join it), waits, with whatever else arrives meanwhile, until `interval` has passed or
    /// `enough` submissions are waiting, whichever comes first. One commit costs about the same
    /// CPU and disk work whatever it holds, so at moderate load this makes groups larger (and the
    /// CPU per submission smaller) for at most `interval` more on an acknowledgement, while at
    /// high load groups reach `enough` quickly and nothing waits long; a submission after a quiet
    /// spell is committed at once. A zero interval (the default) commits as soon as the previous
    /// commit is done. Set it before [`Store::start`]; `enough` is raised to at least 1.
    pub fn set_min_commit_interval(&mut self, interval: Duration, enough: usize) {
        self.min_commit_interval = interval;
        self.enough = enough.max(1);
    }

    /// Starts the group-commit thread. `max_batch` bounds the operations gathered into one
    /// transaction (a submission is never split, so a transaction may exceed it by one submission);
    /// `queue` bounds the submissions waiting. Both are raised to at least 1.
    ///
    /// Panics only if the operating system cannot start a thread, like `std::thread::spawn`; use
    /// [`Store::try_start`] to get that as an error.
    pub fn start(self, max_batch: usize, queue: usize) -> Committer {
        match self.try_start(max_batch, queue) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Store::start`], reporting a failure to spawn the thread.
    pub fn try_start(self, max_batch: usize, queue: usize) -> Result<Committer, StoreError> {
        let (tx, rx) = channel::bounded(queue.max(1));
        let stats = Arc::new(Mutex::new(CommitStats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let path: Arc<Path> = Arc::from(self.path.as_path());
        let worker = Worker {
            db: self.db,
            path: path.clone(),
            rx,
            max_batch: max_batch.max(1),
            stats: stats.clone(),
            stop: stop.clone(),
            observer: self.observer,
            min_commit_interval: self.min_commit_interval,
            enough: self.enough,
        };
        let thread = std::thread::Builder::new()
            .name("sipveil-store".into())
            .spawn(move || worker.run())
            .map_err(|e| StoreError::Thread {
                path: self.path.clone(),
                source: Arc::new(e),
            })?;
        Ok(Committer {
            inner: Arc::new(Inner {
                tx,
                stats,
                stop,
                path,
                committer_thread: thread.thread().clone(),
                enough: self.enough,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }
}

/// Reads the format version; initialises a fresh file. Refuses newer, older and foreign files
/// without writing to them.
fn check_format(db: &Database, path: &Path) -> Result<(), StoreError> {
    let owned = || path.to_path_buf();
    let found = {
        let txn = db
            .begin_read()
            .map_err(|e| StoreError::db(path, "begin read", e))?;
        match txn.open_table(META) {
            Ok(meta) => meta
                .get(FORMAT_KEY)
                .map_err(|e| StoreError::db(path, "read format version", e))?
                .map(|v| v.value()),
            Err(TableError::TableDoesNotExist(_)) => {
                let mut tables = txn
                    .list_tables()
                    .map_err(|e| StoreError::db(path, "list tables", e))?;
                if tables.next().is_some() {
                    return Err(StoreError::Foreign { path: owned() });
                }
                None
            }
            Err(e) => return Err(StoreError::db(path, "open meta table", e)),
        }
    };
    match found {
        Some(v) if v == FORMAT_VERSION => Ok(()),
        Some(v) if v > FORMAT_VERSION => Err(StoreError::NewerFormat {
            path: owned(),
            found: v,
            supported: FORMAT_VERSION,
        }),
        Some(v) => Err(StoreError::UnsupportedFormat {
            path: owned(),
            found: v,
            supported: FORMAT_VERSION,
        }),
        None => {
            let mut txn = db
                .begin_write()
                .map_err(|e| StoreError::db(path, "begin write", e))?;
            txn.set_durability(Durability::Immediate);
            {
                let mut meta = txn
                    .open_table(META)
                    .map_err(|e| StoreError::db(path, "create meta table", e))?;
                meta.insert(FORMAT_KEY, FORMAT_VERSION)
                    .map_err(|e| StoreError::db(path, "write format version", e))?;
                txn.open_table(BINDINGS)
                    .map_err(|e| StoreError::db(path, "create bindings table", e))?;
            }
            txn.commit()
                .map_err(|e| StoreError::db(path, "commit new store", e))
        }
    }
}

/// A submission's callback. Runs exactly once: with the commit's result, or — if the submission is
/// dropped unprocessed (the committer stopped with it still queued) — with [`StoreError::Stopped`].
struct Done {
    f: Option<DoneFn>,
    path: Arc<Path>,
}

impl Done {
    fn call(mut self, result: Result<(), StoreError>) {
        if let Some(f) = self.f.take() {
            run_callback(f, result);
        }
    }

    /// Forgets the callback without calling it (`submit` returned `Err`).
    fn defuse(mut self) {
        self.f = None;
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(f) = self.f.take() {
            run_callback(
                f,
                Err(StoreError::Stopped {
                    path: self.path.to_path_buf(),
                }),
            );
        }
    }
}

/// A panicking callback must not take the committer (and every later registration) down with it.
fn run_callback(f: DoneFn, result: Result<(), StoreError>) {
    if catch_unwind(AssertUnwindSafe(move || f(result))).is_err() {
        tracing::error!("a store completion callback panicked");
    }
}

struct Job {
    ops: Vec<StoreOp>,
    done: Done,
    flush: Option<Flush>,
}

enum Msg {
    Job(Job),
    Stop,
}

struct Worker {
    db: Database,
    path: Arc<Path>,
    rx: Receiver<Msg>,
    max_batch: usize,
    stats: Arc<Mutex<CommitStats>>,
    stop: Arc<AtomicBool>,
    observer: Option<CommitObserver>,
    min_commit_interval: Duration,
    enough: usize,
}

impl Worker {
    fn run(self) {
        let mut batch: Vec<Job> = Vec::new();
        // Once stopping, never block again: commit what is queued, then leave.
        let mut stopping = false;
        // When the previous commit started, if it held more than one submission: one alone means
        // REGISTERs arrive further apart than a commit takes, and waiting would only add latency.
        let mut last_commit: Option<Instant> = None;
        loop {
            stopping |= self.stop.load(Ordering::Acquire);
            let mut ops = 0;
            if !stopping {
                match self.rx.recv() {
                    Ok(Msg::Job(job)) => {
                        ops += job.ops.len();
                        batch.push(job);
                    }
                    Ok(Msg::Stop) => stopping = true,
                    // Every Committer is gone and the queue is empty.
                    Err(_) => break,
                }
            }
            // Coalesce: hold the batch open until the minimum interval since the previous commit
            // has passed or enough submissions wait (the submitter that makes it enough unparks
            // us). Parking (not waiting on the channel) keeps senders from waking us per
            // submission; they find nobody waiting on the channel and just queue.
            if !stopping
                && ops < self.max_batch
                && let Some(due) = last_commit.map(|t| t + self.min_commit_interval)
            {
                loop {
                    let now = Instant::now();
                    if now >= due
                        || batch.len() + self.rx.len() >= self.enough
                        || self.stop.load(Ordering::Acquire)
                    {
                        break;
                    }
                    std::thread::park_timeout(due - now);
                }
            }
            while ops < self.max_batch {
                match self.rx.try_recv() {
                    Ok(Msg::Job(job)) => {
                        ops += job.ops.len();
                        batch.push(job);
                    }
                    Ok(Msg::Stop) => stopping = true,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            if batch.is_empty() {
                if stopping {
                    break;
                }
                continue;
            }
            last_commit = (batch.len() > 1).then(Instant::now);
            self.commit(&mut batch, ops);
        }
        // Dropping `self.rx` here hands any submission that raced with the stop to `Done::drop`.
    }

    fn commit(&self, batch: &mut Vec<Job>, ops: usize) {
        let started = Instant::now();
        let result = self.apply(batch);
        let took = started.elapsed();
        {
            let mut s = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
            if result.is_ok() {
                s.batches += 1;
                s.ops += ops as u64;
                s.submissions += batch.len() as u64;
                s.commit_time_total += took;
                s.commit_time_max = s.commit_time_max.max(took);
            } else {
                s.failed_batches += 1;
            }
        }
        match result {
            Ok(()) => {
                if let Some(observe) = &self.observer
                    && catch_unwind(AssertUnwindSafe(|| observe(ops, took))).is_err()
                {
                    tracing::error!("the store commit observer panicked");
                }
                finish(batch, |_| Ok(()));
            }
            Err(err) => {
                tracing::error!("{err}");
                finish(batch, |_| Err(err.clone()));
            }
        }
    }

    /// All operations of the batch, in submission order, in one fsynced transaction. A failure
    /// anywhere aborts the whole transaction (dropping it rolls back).
    fn apply(&self, batch: &[Job]) -> Result<(), StoreError> {
        let path = &*self.path;
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| StoreError::db(path, "begin write", e))?;
        txn.set_durability(Durability::Immediate);
        {
            let mut table = txn
                .open_table(BINDINGS)
                .map_err(|e| StoreError::db(path, "open bindings table", e))?;
            for op in batch.iter().flat_map(|job| job.ops.iter()) {
                match op {
                    StoreOp::Put { key, value } => {
                        table
                            .insert(key.as_slice(), value.as_slice())
                            .map_err(|e| StoreError::db(path, "write", e))?;
                    }
                    StoreOp::Delete { key } => {
                        table
                            .remove(key.as_slice())
                            .map_err(|e| StoreError::db(path, "delete", e))?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| StoreError::db(path, "commit", e))
    }
}

/// Runs every job's `done` with `result`, then each distinct flush once.
fn finish(batch: &mut Vec<Job>, result: impl Fn(&Job) -> Result<(), StoreError>) {
    let mut flushes: Vec<Flush> = Vec::new();
    for job in batch.drain(..) {
        let r = result(&job);
        let Job { done, flush, .. } = job;
        done.call(r);
        if let Some(f) = flush
            && !flushes.iter().any(|g| Arc::ptr_eq(g, &f))
        {
            flushes.push(f);
        }
    }
    for f in flushes {
        if catch_unwind(AssertUnwindSafe(|| f())).is_err() {
            tracing::error!("a store flush callback panicked");
        }
    }
}

struct Inner {
    tx: Sender<Msg>,
    stats: Arc<Mutex<CommitStats>>,
    stop: Arc<AtomicBool>,
    path: Arc<Path>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The committer thread, unparked when enough submissions wait (see `Worker::run`).
    committer_thread: std::thread::Thread,
    enough: usize,
}

impl Inner {
    /// Asks the thread to commit everything queued and exit, then waits for it — except when
    /// called on the committer thread itself (from a `done` callback), where it only asks.
    fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        self.committer_thread.unpark();
        let mut slot = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        let on_committer = slot
            .as_ref()
            .is_some_and(|h| h.thread().id() == std::thread::current().id());
        if on_committer {
            // The flag is seen after the current batch. The handle stays for whoever drops the
            // last Committer (or calls shutdown) on another thread, so that one still joins.
            return;
        }
        let Some(handle) = slot.take() else { return };
        drop(slot);
        // Wakes a thread blocked on an empty queue. Blocks while the queue is full, which is fine:
        // the thread is draining it. Fails only if the thread is already gone.
        let _ = self.tx.send(Msg::Stop);
        if handle.join().is_err() {
            tracing::error!(
                "store {}: the committer thread panicked",
                self.path.display()
            );
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Handle to the group-commit thread. Clones share the thread; when the last clone is dropped the
/// thread commits what is queued and exits, and the drop waits for it — unless that drop happens
/// inside a `done` callback (on the thread itself), which cannot wait for itself.
#[derive(Clone)]
pub struct Committer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl Committer {
    /// Queues `ops` (applied atomically, after everything submitted earlier). `done` runs on the
    /// committer thread once the transaction holding them is durable, or failed — exactly once.
    /// On `Err` the ops are not queued and `done` is never called.
    pub fn submit(
        &self,
        ops: Vec<StoreOp>,
        done: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
    ) -> Result<(), Busy> {
        self.submit_with_flush(ops, done, None)
    }

    /// [`Committer::submit`], and after the commit holding `ops` has run the `done` callbacks of
    /// all its submissions, `flush` runs once for all of those that passed the same `Arc`.
    /// A submission dropped unprocessed (the committer stopped) gets its `done` but no flush.
    pub fn submit_with_flush(
        &self,
        ops: Vec<StoreOp>,
        done: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
        flush: Option<Flush>,
    ) -> Result<(), Busy> {
        let job = Job {
            ops,
            done: Done {
                f: Some(done),
                path: self.inner.path.clone(),
            },
            flush,
        };
        match self.inner.tx.try_send(Msg::Job(job)) {
            Ok(()) => {
                // The committer holds one submission while it coalesces: with this one queued
                // there may be enough. A spurious unpark only makes it look again.
                if self.inner.tx.len() + 1 >= self.inner.enough {
                    self.inner.committer_thread.unpark();
                }
                Ok(())
            }
            Err(TrySendError::Full(msg)) => {
                defuse(msg);
                Err(Busy::QueueFull)
            }
            Err(TrySendError::Disconnected(msg)) => {
                defuse(msg);
                Err(Busy::Stopped)
            }
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> CommitStats {
        let mut s = *self
            .inner
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        s.queued = self.inner.tx.len();
        s
    }

    /// Commits everything submitted so far, stops the thread and waits for it (the daemon calls
    /// this on SIGTERM, so nothing it acknowledged is lost). Later `submit`s return
    /// `Err(Busy::Stopped)`; a submission racing with the stop gets `done(Err(Stopped))`, at the
    /// latest when the last `Committer` is dropped. Idempotent.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

fn defuse(msg: Msg) {
    if let Msg::Job(job) = msg {
        job.done.defuse();
    }
}
