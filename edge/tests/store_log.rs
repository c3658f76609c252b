//! The binding log under damage: torn and truncated records end the replay at the last whole
//! one, records after a torn one are never resurrected by later writes, and a small log wraps
//! through redb checkpoints without losing anything. A clean shutdown checkpoints everything into
//! redb, so the log is left holding unapplied records the way a crash leaves it: a child process
//! (this test binary, re-executed with `--exact log_writer_child`) writes and acknowledges its
//! groups, then exits without shutting the committer down. No root needed.
mod store_support;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crossbeam::channel;
use sipveil_edge::store::{Busy, Committer, Store, StoreError, StoreOp};
use store_support::{TempDir, delete, put};

const HANG: Duration = Duration::from_secs(60);
/// Records start at multiples of this (the log's alignment).
const PAGE: u64 = 4096;
const DB_ENV: &str = "SIPVEIL_STORE_LOG_DB";
const MODE_ENV: &str = "SIPVEIL_STORE_LOG_MODE";
/// A value that makes a record of seven pages.
fn big_value() -> String {
    "b".repeat(6 * PAGE as usize + 100)
}

fn wal0(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".wal0");
    PathBuf::from(s)
}

fn load_map(path: &Path) -> BTreeMap<String, String> {
    let store = Store::open(path).unwrap_or_else(|e| panic!("{e}"));
    store
        .load()
        .expect("load")
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k).expect("utf8 key"),
                String::from_utf8(v).expect("utf8 value"),
            )
        })
        .collect()
}

/// Submits `ops` and waits for its acknowledgement.
fn commit(committer: &Committer, ops: Vec<StoreOp>) {
    let (tx, rx) = channel::bounded::<Result<(), StoreError>>(1);
    committer
        .submit(
            ops,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .expect("queue has room");
    rx.recv_timeout(HANG)
        .expect("acknowledged")
        .expect("commit ok");
}

/// The child side: acknowledged groups that only the log holds, then an exit without shutdown
/// (no final checkpoint), as after a crash. Without the environment variables it does nothing.
#[test]
#[ignore = "helper process of the replay tests; runs only when they re-execute it"]
fn log_writer_child() {
    let (Ok(db), Ok(mode)) = (std::env::var(DB_ENV), std::env::var(MODE_ENV)) else {
        println!(
            "SKIPPED: log_writer_child is the child of the store_log replay tests and does \
             nothing on its own"
        );
        return;
    };
    let mut store = Store::open(Path::new(&db)).unwrap_or_else(|e| panic!("{e}"));
    // No checkpoint before the exit: everything stays in the log only.
    store.set_checkpoint_interval(Duration::from_secs(3600));
    let committer = store.start(64, 64);
    match mode.as_str() {
        "ten" => {
            for i in 0..10 {
                commit(&committer, vec![put(&format!("k{i}"), "v")]);
            }
        }
        "big" => commit(&committer, vec![put("big", &big_value())]),
        other => panic!("unknown mode {other}"),
    }
    let s = committer.stats();
    assert_eq!(s.checkpoints, 0, "nothing was checkpointed: {s:?}");
    // Ends the process with the committer still running: no final checkpoint.
    std::process::exit(0);
}

/// Runs [`log_writer_child`] in `mode` against `path` and waits for it.
fn run_child(path: &Path, mode: &str) {
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new(exe)
        .args([
            "--exact",
            "log_writer_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DB_ENV, path)
        .env(MODE_ENV, mode)
        .output()
        .expect("run child");
    assert!(
        out.status.success(),
        "child {mode} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Ten submissions, one log record each, at pages 0..10 of `<db>.wal0` (sequence numbers 1..=10),
/// left unapplied in the log.
fn ten_records(path: &Path) {
    run_child(path, "ten");
}

fn keys(map: &BTreeMap<String, String>) -> Vec<&str> {
    map.keys().map(String::as_str).collect()
}

#[test]
fn a_torn_record_ends_the_replay_and_what_follows_stays_dead() {
    let dir = TempDir::new("torn");
    let path = dir.path().join("r.redb");
    ten_records(&path);
    // Flip one payload byte of record 7 (k6): its checksum fails, as after a torn write.
    let log = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(wal0(&path))
        .expect("open log");
    let at = 6 * PAGE + 24;
    let mut byte = [0u8; 1];
    log.read_exact_at(&mut byte, at).expect("read");
    byte[0] ^= 0xff;
    log.write_all_at(&byte, at).expect("write");
    drop(log);
    let got = load_map(&path);
    assert_eq!(keys(&got), ["k0", "k1", "k2", "k3", "k4", "k5"]);

    // A new group of seven pages starts at page 0 again, so the next record boundary is page 7,
    // where the stale, whole record 8 (k7) still lies. It must not be taken for the next record
    // when the new record is replayed after another crash.
    run_child(&path, "big");
    let big = big_value();
    let got = load_map(&path);
    assert_eq!(
        keys(&got),
        ["big", "k0", "k1", "k2", "k3", "k4", "k5"],
        "k6..k9 were never acknowledged after the reopen and stay gone"
    );
    assert_eq!(got.get("big").map(String::len), Some(big.len()));
}

#[test]
fn a_truncated_log_replays_its_whole_records_and_is_rebuilt() {
    let dir = TempDir::new("trunc");
    let path = dir.path().join("r.redb");
    ten_records(&path);
    // Cut record 5 (k4) inside its header, and zero the tail of record 4 (k3) from inside its
    // payload on, as a write that reached the disk only in part.
    let log = std::fs::OpenOptions::new()
        .write(true)
        .open(wal0(&path))
        .expect("open log");
    log.set_len(4 * PAGE + 10).expect("truncate");
    log.write_all_at(&[0u8; 2048], 3 * PAGE + 24)
        .expect("zero a tail");
    drop(log);
    let got = load_map(&path);
    assert_eq!(keys(&got), ["k0", "k1", "k2"]);
    // The log file is back at full size and takes writes.
    let committer = Store::open(&path)
        .unwrap_or_else(|e| panic!("{e}"))
        .start(64, 64);
    commit(&committer, vec![put("after", "1")]);
    committer.shutdown();
    assert_eq!(
        std::fs::metadata(wal0(&path)).expect("stat").len(),
        sipveil_edge::store::DEFAULT_LOG_BYTES
    );
    assert_eq!(keys(&load_map(&path)), ["after", "k0", "k1", "k2"]);
}

#[test]
fn a_small_log_wraps_through_checkpoints_without_loss() {
    let dir = TempDir::new("wrap");
    let path = dir.path().join("r.redb");
    // 16 pages per file: the writer leaves a file after at most 16 records.
    let log_bytes = 16 * PAGE;
    let (threads, per_thread) = (4usize, 150usize);
    {
        let committer = Store::open_with_log_size(&path, log_bytes)
            .unwrap_or_else(|e| panic!("{e}"))
            .start(8, 64);
        let (tx, rx) = channel::unbounded();
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let committer = committer.clone();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut i = 0;
                    while i < per_thread {
                        let tx = tx.clone();
                        // A value of 3000 bytes: at most one submission per page.
                        let mut ops = vec![
                            put(&format!("t{t}-{i}"), &"x".repeat(3000)),
                            put(&format!("t{t}-last"), &i.to_string()),
                            put(&format!("t{t}-scratch{i}"), "s"),
                        ];
                        if i > 0 {
                            ops.push(delete(&format!("t{t}-scratch{}", i - 1)));
                        }
                        match committer.submit(
                            ops,
                            Box::new(move |r| {
                                let _ = tx.send(r);
                            }),
                        ) {
                            Ok(()) => i += 1,
                            Err(Busy::QueueFull) => std::thread::yield_now(),
                            Err(Busy::Stopped) => panic!("stopped"),
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("submitter");
        }
        for _ in 0..threads * per_thread {
            rx.recv_timeout(HANG)
                .expect("acknowledged")
                .expect("commit ok");
        }
        let s = committer.stats();
        assert_eq!(s.submissions, (threads * per_thread) as u64);
        assert_eq!(s.failed_batches, 0);
        // A group holds at most 3 submissions (max_batch 8 ops, 4 ops each), under 4 pages: 600 submissions fill the
        // 16-page files many times over.
        assert!(s.checkpoints >= 4, "the log wrapped: {s:?}");
        committer.shutdown();
    }
    // Reopen with the default size: the small files are replayed, then rebuilt.
    let got = load_map(&path);
    for t in 0..threads {
        for i in 0..per_thread {
            assert!(got.contains_key(&format!("t{t}-{i}")), "t{t}-{i} durable");
        }
        assert_eq!(
            got.get(&format!("t{t}-last")).map(String::as_str),
            Some((per_thread - 1).to_string().as_str()),
            "the last write of each thread wins"
        );
        let scratch: Vec<&String> = got
            .keys()
            .filter(|k| k.starts_with(&format!("t{t}-scratch")))
            .collect();
        assert_eq!(
            scratch,
            [&format!("t{t}-scratch{}", per_thread - 1)],
            "each delete applied after the put it follows"
        );
    }
}

#[test]
fn an_idle_committer_still_checkpoints_what_the_log_holds() {
    let dir = TempDir::new("idle");
    let path = dir.path().join("r.redb");
    let mut store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
    store.set_checkpoint_interval(Duration::from_millis(20));
    let committer = store.start(64, 64);
    // Two groups, the second after the first's checkpoint could have started: the committer
    // must notice both become due without further submissions.
    commit(&committer, vec![put("a", "1")]);
    std::thread::sleep(Duration::from_millis(30));
    commit(&committer, vec![put("b", "2")]);
    let waited = std::time::Instant::now();
    while committer.stats().checkpoint_ops < 2 {
        assert!(
            waited.elapsed() < HANG,
            "no checkpoint while idle: {:?}",
            committer.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = committer.stats();
    assert_eq!(s.checkpoint_ops, 2, "{s:?}");
    assert!(s.checkpoints >= 1, "{s:?}");
    committer.shutdown();
    assert_eq!(keys(&load_map(&path)), ["a", "b"]);
}
