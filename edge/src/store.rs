//! Durable registrar storage: an append-only binding log in front of a redb checkpoint, written
//! by one group-commit thread.
//!
//! The registrar hands us [`StoreOp`]s; the SIP service must answer 200 OK only after they are
//! durable. [`Committer::submit`] queues the ops; the committer thread gathers whatever is queued
//! (up to `max_batch` ops; with [`Store::set_min_commit_interval`] it also waits, boundedly, for
//! the group to grow), writes the group as **one checksummed record with one `pwrite`** to a
//! preallocated, zero-filled log file opened `O_DIRECT|O_DSYNC` (buffered `O_DSYNC` on a file
//! system without direct I/O), and only once that write returned runs
//! each submission's `done` callback, then each distinct `flush` once
//! ([`Committer::submit_with_flush`]: one worker wake-up per group). Groups are written and
//! acknowledged strictly in order by the one thread, so what survives a crash is always a prefix
//! of what was submitted, covering everything acknowledged.
//!
//! Why redb, and why a log in front of it. redb is the database of record: pure Rust (no C/C++
//! to build or link), ACID with copy-on-write B-trees and checksummed commits, no server, actively
//! maintained with a stable file format. sled is an unmaintained beta; RocksDB drags in a heavy
//! C++ build and tuning surface for a few thousand small keys; SQLite would do, but through C and
//! FFI. But a durable redb commit costs ~250–500 µs of CPU whatever it holds (page copies,
//! checksums, ~6 `pwrite`s and an `fdatasync` that journals metadata), which at 10 bindings per
//! commit was the largest single share of a REGISTER's CPU. The log record costs one write.
//!
//! Checkpoints: a second thread (`sipveil-ckpt`) applies the acknowledged groups to redb in large
//! batches — one durable transaction per checkpoint (every [`CHECKPOINT_INTERVAL`] by default, or
//! when a log file fills), which also records the highest log sequence number it covers
//! (`log_applied_seq` in the meta table). The log is two files, `<db>.wal0` and `<db>.wal1`; the
//! writer fills one while the other's records are being checkpointed, and reuses a file only once
//! the checkpoint covering it is durable. [`Store::open`] replays every whole log record above the
//! checkpoint into redb (stopping at the first torn record or gap in the sequence), so
//! [`Store::load`] sees everything that was acknowledged. Log format: `store/log.rs`.

mod handoff;
mod log;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender};
use redb::{Database, Durability, ReadableTable, TableDefinition, TableError};

use handoff::{Handoff, Next, Plan, Refused};

pub use log::DEFAULT_LOG_BYTES;
pub use sipveil_registrar::StoreOp;

/// The layout version this build writes and reads. Version 2 added the binding log and
/// [`APPLIED_SEQ_KEY`]; a version-1 file (no log) is upgraded in place. A file with a higher
/// version was written by a newer sipveil and is refused rather than misread.
pub const FORMAT_VERSION: u64 = 2;
/// Table holding `format_version` (and, later, other layout facts).
pub const META_TABLE: &str = "meta";
/// Key of the layout version in [`META_TABLE`].
pub const FORMAT_KEY: &str = "format_version";
/// Key in [`META_TABLE`] of the highest log sequence number the checkpoint covers.
pub const APPLIED_SEQ_KEY: &str = "log_applied_seq";
/// Table of registrar records: key and value bytes are the registrar's business.
pub const BINDINGS_TABLE: &str = "bindings";
/// Default time between checkpoints while groups arrive (see [`Store::set_checkpoint_interval`]).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

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
    #[error("store {}: log {}: {what}: {source}", path.display(), log.display())]
    Log {
        path: PathBuf,
        log: PathBuf,
        what: &'static str,
        source: Arc<std::io::Error>,
    },
}

impl StoreError {
    fn log(path: &Path, log: &Path, what: &'static str, e: std::io::Error) -> StoreError {
        StoreError::Log {
            path: path.to_path_buf(),
            log: log.to_path_buf(),
            what,
            source: Arc::new(e),
        }
    }

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
    /// Committed groups (each one log record, one synchronous write).
    pub batches: u64,
    /// Operations in committed transactions.
    pub ops: u64,
    /// Submissions in committed transactions.
    pub submissions: u64,
    /// Transactions that failed; their submissions got `Err`.
    pub failed_batches: u64,
    /// Time spent encoding and writing groups (including the sync), summed over committed groups.
    pub commit_time_total: Duration,
    /// The longest single group write.
    pub commit_time_max: Duration,
    /// Durable redb checkpoints (each one fsynced transaction holding many groups).
    pub checkpoints: u64,
    /// Operations applied to redb by checkpoints.
    pub checkpoint_ops: u64,
    /// Time spent in checkpoints, summed.
    pub checkpoint_time_total: Duration,
    /// Submissions waiting in the queue when the stats were read.
    pub queued: usize,
    /// Times a submitter woke the committer thread (the first submission into an empty queue
    /// while it slept, or the one that made a held group `enough`); every other submission only
    /// queues.
    pub wakeups: u64,
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
    logs: [LogFile; 2],
    next_seq: u64,
    checkpoint_interval: Duration,
}

/// One of the two log files, opened `O_DIRECT|O_DSYNC` (or buffered `O_DSYNC`, see `log::prepare`).
struct LogFile {
    file: File,
    path: PathBuf,
    size: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (or creates) the database at `path` and its log files `<path>.wal0` and
    /// `<path>.wal1` ([`DEFAULT_LOG_BYTES`] each), creating missing parent directories, checks the
    /// format version and replays the log into the database.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with_log_size(path, DEFAULT_LOG_BYTES)
    }

    /// [`Store::open`] with log files of `log_bytes` each (rounded up to 4 KiB, at least 64 KiB).
    /// A log file of another size is replayed, then recreated at this size.
    pub fn open_with_log_size(path: &Path, log_bytes: u64) -> Result<Store, StoreError> {
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
        let next_seq = replay(&db, path)?;
        let size = log::align_up(log_bytes.max(64 << 10));
        let [p0, p1] = log::paths(path);
        let prepare = |p: PathBuf| {
            log::prepare(&p, size)
                .map(|file| LogFile {
                    file,
                    path: p.clone(),
                    size,
                })
                .map_err(|e| StoreError::log(path, &p, "prepare", e))
        };
        let logs = [prepare(p0)?, prepare(p1)?];
        Ok(Store {
            db,
            path: owned,
            observer: None,
            min_commit_interval: Duration::ZERO,
            enough: usize::MAX,
            logs,
            next_seq,
            checkpoint_interval: CHECKPOINT_INTERVAL,
        })
    }

    /// How long acknowledged groups may stay in the log only before a checkpoint applies them to
    /// redb (default [`CHECKPOINT_INTERVAL`]); a full log file starts one sooner. Longer means fewer,
    /// larger redb transactions (less CPU per binding) and a longer replay after a crash. Set it
    /// before [`Store::start`]; raised to at least 1 ms.
    pub fn set_checkpoint_interval(&mut self, interval: Duration) {
        self.checkpoint_interval = interval.max(Duration::from_millis(1));
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
    /// The duration is that of the group's log write (encoding and the synchronous `pwrite`).
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
        let handoff: Arc<Queue> = Arc::new(Handoff::new(queue, self.enough));
        let stats = Arc::new(Mutex::new(CommitStats::default()));
        let path: Arc<Path> = Arc::from(self.path.as_path());
        // At most one checkpoint runs and at most one more waits (the writer blocks before
        // handing over a second): the channel stays tiny.
        let (cp_tx, cp_rx) = channel::unbounded::<CheckpointJob>();
        let cp_handoff = handoff.clone();
        let checkpointer = Checkpointer {
            db: self.db,
            path: path.clone(),
            stats: stats.clone(),
        };
        let cp_thread = std::thread::Builder::new()
            .name("sipveil-ckpt".into())
            .spawn(move || checkpointer.run(&cp_rx, &cp_handoff))
            .map_err(|e| StoreError::Thread {
                path: self.path.clone(),
                source: Arc::new(e),
            })?;
        let log = LogWriter {
            logs: self.logs,
            current: 0,
            offset: 0,
            next_seq: self.next_seq,
            buf: Vec::new(),
            aligned: log::Aligned::default(),
            pending: Vec::new(),
            pending_since: None,
            other_busy: false,
            cp_tx: Some(cp_tx),
            handoff: handoff.clone(),
            cp_thread: Some(cp_thread),
            broken: None,
            interval: self.checkpoint_interval,
            path: path.clone(),
            stats: stats.clone(),
        };
        let worker = Worker {
            log,
            handoff: handoff.clone(),
            max_batch: max_batch.max(1),
            stats: stats.clone(),
            observer: self.observer,
            min_commit_interval: self.min_commit_interval,
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
                handoff,
                stats,
                path,
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
        // Version 1 had no log: nothing to replay, and the only change is the version key.
        Some(1) => set_format_version(db, path),
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
        None => set_format_version(db, path),
    }
}

/// Writes [`FORMAT_VERSION`] and makes sure both tables exist, durably.
fn set_format_version(db: &Database, path: &Path) -> Result<(), StoreError> {
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

/// Replays the log records above the checkpoint into `db` (stopping at the first gap), then
/// records in the meta table that everything up to the highest sequence number of any whole
/// record in either file (chained or stale) is covered, so that stale records after a torn one can
/// never be mistaken for new ones. Returns the next sequence number to write.
fn replay(db: &Database, path: &Path) -> Result<u64, StoreError> {
    let applied = {
        let txn = db
            .begin_read()
            .map_err(|e| StoreError::db(path, "begin read", e))?;
        let meta = txn
            .open_table(META)
            .map_err(|e| StoreError::db(path, "open meta table", e))?;
        meta.get(APPLIED_SEQ_KEY)
            .map_err(|e| StoreError::db(path, "read log position", e))?
            .map_or(0, |v| v.value())
    };
    let mut records = Vec::new();
    let mut highest = applied;
    for p in log::paths(path) {
        let file = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::log(path, &p, "open for replay", e)),
        };
        // One read of the file serves both the chain and the highest sequence number.
        let data = log::read_all(&file).map_err(|e| StoreError::log(path, &p, "replay", e))?;
        records.extend(log::scan(&data).map_err(|e| StoreError::log(path, &p, "replay", e))?);
        highest = highest.max(log::highest_seq(&data));
    }
    records.retain(|(s, _)| *s > applied);
    records.sort_unstable_by_key(|(s, _)| *s);
    let mut expect = applied.saturating_add(1);
    let mut replayed = 0usize;
    for (s, _) in &records {
        if *s != expect {
            break;
        }
        expect = expect.saturating_add(1);
        replayed += 1;
    }
    if replayed > 0 || highest > applied {
        if replayed < records.len() {
            tracing::warn!(
                "store {}: the log has {} record(s) after a gap at sequence {expect}; they were \
                 never acknowledged and are dropped",
                path.display(),
                records.len() - replayed
            );
        }
        let ops = records
            .iter()
            .take(replayed)
            .flat_map(|(_, ops)| ops.iter());
        commit_ops(db, path, ops, highest)?;
        tracing::info!(
            "store {}: replayed {replayed} log record(s) up to sequence {}",
            path.display(),
            expect.saturating_sub(1)
        );
    }
    Ok(highest.saturating_add(1))
}

/// Applies `ops` in order and sets the checkpoint's log position, in one durable transaction.
fn commit_ops<'a>(
    db: &Database,
    path: &Path,
    ops: impl Iterator<Item = &'a StoreOp>,
    applied_seq: u64,
) -> Result<(), StoreError> {
    let mut txn = db
        .begin_write()
        .map_err(|e| StoreError::db(path, "begin write", e))?;
    txn.set_durability(Durability::Immediate);
    {
        let mut table = txn
            .open_table(BINDINGS)
            .map_err(|e| StoreError::db(path, "open bindings table", e))?;
        for op in ops {
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
        let mut meta = txn
            .open_table(META)
            .map_err(|e| StoreError::db(path, "open meta table", e))?;
        meta.insert(APPLIED_SEQ_KEY, applied_seq)
            .map_err(|e| StoreError::db(path, "write log position", e))?;
    }
    txn.commit().map_err(|e| StoreError::db(path, "commit", e))
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

/// The queue between the submitters, the committer thread and the checkpointer.
type Queue = Handoff<Job, Result<(), StoreError>>;

struct Worker {
    log: LogWriter,
    handoff: Arc<Queue>,
    max_batch: usize,
    stats: Arc<Mutex<CommitStats>>,
    observer: Option<CommitObserver>,
    min_commit_interval: Duration,
}

impl Worker {
    fn run(mut self) {
        let mut batch: Vec<Job> = Vec::new();
        // When the previous commit started, if it held more than one submission: one alone means
        // REGISTERs arrive further apart than a commit takes, and waiting would only add latency.
        let mut last_commit: Option<Instant> = None;
        loop {
            // Coalesce: hold what is queued until the minimum interval since the previous commit
            // has passed or enough submissions wait (the submitter that makes it enough wakes
            // us; no other does). With groups in the log that redb does not hold yet, wake up in
            // time to hand them to a checkpoint even if nothing else arrives — unless the other
            // file's checkpoint still runs: then its result wakes us, not a timer.
            let plan = Plan {
                hold_until: last_commit.map(|t| t + self.min_commit_interval),
                timer: if self.log.other_busy {
                    None
                } else {
                    self.log.checkpoint_due()
                },
                max_weight: self.max_batch,
            };
            match self.handoff.next(plan, &mut batch, |j| j.ops.len()) {
                Next::Batch => {
                    let ops = batch.iter().map(|j| j.ops.len()).sum();
                    last_commit = (batch.len() > 1).then(Instant::now);
                    self.commit(&mut batch, ops);
                    self.log.maybe_checkpoint();
                }
                got @ (Next::Checkpoint(_) | Next::CheckpointerGone) => {
                    self.log.checkpoint_result(got);
                    self.log.maybe_checkpoint();
                }
                Next::Timer => self.log.maybe_checkpoint(),
                // Stopping and everything queued is committed.
                Next::Closed => break,
            }
        }
        // Everything acknowledged goes into redb before the thread ends, so a clean shutdown
        // leaves a database that needs no replay.
        self.log.finish();
        // Nothing can be queued once closed; anything left gets `Done::drop` (Stopped).
        drop(self.handoff.drain_closed());
    }

    fn commit(&mut self, batch: &mut Vec<Job>, ops: usize) {
        let started = Instant::now();
        let result = self.log.write_group(batch);
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
}

/// Acknowledged groups on their way into redb: the ops of one log file, and the highest sequence
/// number they cover.
struct CheckpointJob {
    ops: Vec<StoreOp>,
    seq: u64,
}

/// Owns the database while the committer runs; applies each [`CheckpointJob`] in one durable
/// transaction and reports the result.
struct Checkpointer {
    db: Database,
    path: Arc<Path>,
    stats: Arc<Mutex<CommitStats>>,
}

impl Checkpointer {
    fn run(self, rx: &Receiver<CheckpointJob>, handoff: &Queue) {
        /// Tells the committer when this thread ends, also by a panic.
        struct Gone<'a>(&'a Queue);
        impl Drop for Gone<'_> {
            fn drop(&mut self) {
                self.0.checkpointer_gone();
            }
        }
        let _gone = Gone(handoff);
        lower_priority();
        for job in rx {
            let started = Instant::now();
            let result = commit_ops(&self.db, &self.path, job.ops.iter(), job.seq);
            let took = started.elapsed();
            if result.is_ok() {
                let mut s = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
                s.checkpoints += 1;
                s.checkpoint_ops += job.ops.len() as u64;
                s.checkpoint_time_total += took;
            }
            handoff.report(result);
        }
        // Dropping the database here closes the file before the committer thread ends.
    }
}

/// Nice 10 for the calling thread: a checkpoint is a burst of redb work (milliseconds) that no
/// acknowledgement waits for, so on a busy machine it should yield to the SIP workers and the
/// group writer; at nice 10 it still gets about a tenth of a contended CPU, enough to keep up.
fn lower_priority() {
    // SAFETY: gettid has no preconditions; setpriority only changes the nice value of the thread
    // with that id (ours) and reports failure through its return value, which we only log.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, u32::try_from(tid).unwrap_or(0), 10)
    };
    if rc != 0 {
        tracing::debug!(
            "store checkpoint thread: setpriority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The writing side of the log, on the committer thread.
struct LogWriter {
    logs: [LogFile; 2],
    /// The file being written.
    current: usize,
    /// Where the next record goes in it.
    offset: u64,
    next_seq: u64,
    buf: Vec<u8>,
    /// `buf` at an aligned address for direct I/O.
    aligned: log::Aligned,
    /// Ops of the records in the current file that no checkpoint has been handed yet.
    pending: Vec<StoreOp>,
    /// When the first of them was written.
    pending_since: Option<Instant>,
    /// A checkpoint of the other file's records is running: that file may not be reused yet.
    other_busy: bool,
    cp_tx: Option<Sender<CheckpointJob>>,
    /// Where the checkpointer's results arrive.
    handoff: Arc<Queue>,
    cp_thread: Option<JoinHandle<()>>,
    /// A checkpoint failed: the log files can no longer be reused, so once the current one is full
    /// every later group fails with this (what was acknowledged stays in the log for the replay).
    broken: Option<StoreError>,
    interval: Duration,
    path: Arc<Path>,
    stats: Arc<Mutex<CommitStats>>,
}

impl LogWriter {
    /// Writes the batch's ops as one record, synchronously. On success the ops move to `pending`.
    fn write_group(&mut self, batch: &mut [Job]) -> Result<(), StoreError> {
        log::encode(
            self.next_seq,
            batch.iter().flat_map(|j| j.ops.iter()),
            &mut self.buf,
        );
        let len = self.buf.len() as u64;
        let size = self.logs[self.current].size;
        if len > size {
            return Err(StoreError::log(
                &self.path,
                &self.logs[self.current].path,
                "write",
                std::io::Error::other(format!(
                    "a group of {len} bytes does not fit in a log file of {size} bytes"
                )),
            ));
        }
        if self.offset + len > size {
            self.rotate(true)?;
        }
        let log = &self.logs[self.current];
        log.file
            .write_all_at(self.aligned.copy_of(&self.buf), self.offset)
            .map_err(|e| StoreError::log(&self.path, &log.path, "write", e))?;
        self.offset += len;
        self.next_seq += 1;
        for job in batch.iter_mut() {
            self.pending.append(&mut job.ops);
        }
        self.pending_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// When the pending groups should be handed to a checkpoint, if there are any.
    fn checkpoint_due(&self) -> Option<Instant> {
        if self.broken.is_some() {
            return None;
        }
        self.pending_since.map(|t| t + self.interval)
    }

    /// Hands the pending groups to a checkpoint if they have waited long enough and the other
    /// file is free (never blocks).
    fn maybe_checkpoint(&mut self) {
        self.poll(false);
        if !self.other_busy
            && self.broken.is_none()
            && self
                .checkpoint_due()
                .is_some_and(|due| Instant::now() >= due)
        {
            // Cannot fail: the other file is free and nothing is broken.
            let _ = self.rotate(false);
        }
    }

    /// Collects a finished checkpoint, waiting for it if `block`.
    fn poll(&mut self, block: bool) {
        // After a failed checkpoint nothing more will come: never wait for it.
        if !self.other_busy || self.broken.is_some() {
            return;
        }
        if let Some(got) = self.handoff.checkpoint(block) {
            self.checkpoint_result(got);
        }
    }

    /// Takes in what the checkpointer reported (`Next::Checkpoint` or `Next::CheckpointerGone`).
    fn checkpoint_result(&mut self, got: Next<Result<(), StoreError>>) {
        match got {
            Next::Checkpoint(Ok(())) => self.other_busy = false,
            Next::Checkpoint(Err(e)) => {
                tracing::error!("{e}");
                self.broken = Some(e);
            }
            Next::CheckpointerGone => {
                self.broken.get_or_insert_with(|| StoreError::Stopped {
                    path: self.path.to_path_buf(),
                });
            }
            Next::Batch | Next::Timer | Next::Closed => {}
        }
    }

    /// Hands the current file's pending groups to a checkpoint and switches to the other file,
    /// first waiting (if `wait`) for the checkpoint that still covers it.
    fn rotate(&mut self, wait: bool) -> Result<(), StoreError> {
        if wait {
            self.poll(true);
        }
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        if self.other_busy {
            return Err(StoreError::Stopped {
                path: self.path.to_path_buf(),
            });
        }
        if !self.pending.is_empty() {
            let job = CheckpointJob {
                ops: std::mem::take(&mut self.pending),
                seq: self.next_seq - 1,
            };
            let sent = self.cp_tx.as_ref().is_some_and(|tx| tx.send(job).is_ok());
            if !sent {
                let e = StoreError::Stopped {
                    path: self.path.to_path_buf(),
                };
                self.broken = Some(e.clone());
                return Err(e);
            }
            self.other_busy = true;
        }
        self.pending_since = None;
        self.current ^= 1;
        self.offset = 0;
        Ok(())
    }

    /// Checkpoints whatever is pending, waits for every checkpoint and stops the checkpointer.
    fn finish(&mut self) {
        self.poll(true);
        if self.broken.is_none() && !self.pending.is_empty() {
            let _ = self.rotate(false);
            self.poll(true);
        }
        self.cp_tx = None;
        if let Some(t) = self.cp_thread.take()
            && t.join().is_err()
        {
            tracing::error!(
                "store {}: the checkpoint thread panicked",
                self.path.display()
            );
        }
        let s = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        tracing::debug!(
            "store {}: {} groups, {} checkpoints",
            self.path.display(),
            s.batches,
            s.checkpoints
        );
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
    handoff: Arc<Queue>,
    stats: Arc<Mutex<CommitStats>>,
    path: Arc<Path>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    /// Asks the thread to commit everything queued and exit, then waits for it — except when
    /// called on the committer thread itself (from a `done` callback), where it only asks.
    fn shutdown(&self) {
        self.handoff.request_stop();
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
        match self.inner.handoff.push(job) {
            Ok(()) => Ok(()),
            Err(Refused::Full(job)) => {
                job.done.defuse();
                Err(Busy::QueueFull)
            }
            Err(Refused::Closed(job)) => {
                job.done.defuse();
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
        s.queued = self.inner.handoff.len();
        s.wakeups = self.inner.handoff.wakeups();
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
