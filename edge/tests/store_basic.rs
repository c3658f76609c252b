//! The registrar store: round trips, ordering, group commit, backpressure, shutdown, open errors.
//! No root needed (one case needs a non-root user and says SKIPPED as root).
mod store_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam::channel::{self, Receiver, Sender};
use sipveil_edge::store::{Busy, Committer, FORMAT_VERSION, Flush, Store, StoreError, StoreOp};
use store_support::{TempDir, delete, put};

/// Generous bound so a broken committer fails the test instead of hanging it; never a timing
/// assertion.
const HANG: Duration = Duration::from_secs(60);

type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

fn open(path: &Path) -> Store {
    Store::open(path).unwrap_or_else(|e| panic!("{e}"))
}

fn load_map(path: &Path) -> BTreeMap<String, String> {
    let store = open(path);
    store
        .load()
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k).expect("test keys are UTF-8"),
                String::from_utf8(v).expect("test values are UTF-8"),
            )
        })
        .collect()
}

/// A `done` that reports `(tag, result)` on `tx`.
fn report(tx: &Sender<(usize, Result<(), StoreError>)>, tag: usize) -> Done {
    let tx = tx.clone();
    Box::new(move |r| {
        let _ = tx.send((tag, r));
    })
}

/// Collects `n` completions, failing on any error.
fn expect_ok(rx: &Receiver<(usize, Result<(), StoreError>)>, n: usize) -> Vec<usize> {
    (0..n)
        .map(|i| {
            let (tag, r) = rx
                .recv_timeout(HANG)
                .unwrap_or_else(|_| panic!("completion {i} of {n} never came"));
            if let Err(e) = r {
                panic!("submission {tag} failed: {e}");
            }
            tag
        })
        .collect()
}

/// Holds the committer thread inside the first submission's `done` until the returned sender is
/// used (or dropped). Returns once the thread is parked there, so everything submitted afterwards
/// is queued, not yet committed.
fn hold(committer: &Committer) -> Sender<()> {
    let (release_tx, release_rx) = channel::bounded::<()>(1);
    let (parked_tx, parked_rx) = channel::bounded::<()>(1);
    committer
        .submit(
            vec![put("gate", "held")],
            Box::new(move |r| {
                assert!(r.is_ok(), "gate commit failed: {r:?}");
                let _ = parked_tx.send(());
                let _ = release_rx.recv_timeout(HANG);
            }),
        )
        .expect("the queue is empty");
    parked_rx
        .recv_timeout(HANG)
        .expect("the committer never ran the gate's callback");
    release_tx
}

#[test]
fn round_trip_across_reopen() {
    let dir = TempDir::new("roundtrip");
    // A missing parent directory is created.
    let path = dir.path().join("var/lib/sipveil/registrar.redb");
    {
        let store = open(&path);
        assert!(store.load().expect("load").is_empty(), "fresh store");
        let committer = store.start(64, 64);
        let (tx, rx) = channel::unbounded();
        committer
            .submit(
                vec![put("alice", "1"), put("bob", "2"), put("carol", "3")],
                report(&tx, 0),
            )
            .expect("submit");
        committer
            .submit(vec![delete("bob"), put("dave", "4")], report(&tx, 1))
            .expect("submit");
        committer
            .submit(vec![delete("nobody")], report(&tx, 2))
            .expect("deleting a missing key is fine");
        assert_eq!(expect_ok(&rx, 3), vec![0, 1, 2]);
        // Dropping the last Committer waits for the thread, which closes the database.
    }
    let want: BTreeMap<String, String> = [("alice", "1"), ("carol", "3"), ("dave", "4")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(load_map(&path), want);
    // And again after a second reopen with more writes.
    {
        let committer = open(&path).start(8, 8);
        let (tx, rx) = channel::unbounded();
        committer
            .submit(vec![put("alice", "10"), delete("carol")], report(&tx, 0))
            .expect("submit");
        expect_ok(&rx, 1);
        committer.shutdown();
    }
    let got = load_map(&path);
    assert_eq!(got.get("alice").map(String::as_str), Some("10"));
    assert_eq!(got.get("carol"), None);
    assert_eq!(got.get("dave").map(String::as_str), Some("4"));
}

#[test]
fn ops_on_one_key_apply_in_submission_order() {
    let dir = TempDir::new("order");
    let path = dir.path().join("r.redb");

    // Within one submission.
    {
        let committer = open(&path).start(1, 16);
        let (tx, rx) = channel::unbounded();
        committer
            .submit(
                vec![
                    put("a", "1"),
                    delete("a"),
                    put("a", "2"),
                    put("b", "1"),
                    delete("b"),
                ],
                report(&tx, 0),
            )
            .expect("submit");
        expect_ok(&rx, 1);
    }
    let got = load_map(&path);
    assert_eq!(got.get("a").map(String::as_str), Some("2"));
    assert_eq!(got.get("b"), None);

    // Across batches: max_batch 1 makes every submission its own transaction.
    let n = 199; // the last one (198) is a put
    {
        let committer = open(&path).start(1, n + 1);
        let (tx, rx) = channel::unbounded();
        for i in 0..n {
            let ops = if i % 10 == 9 {
                vec![delete("k")]
            } else {
                vec![put("k", &i.to_string())]
            };
            committer.submit(ops, report(&tx, i)).expect("submit");
        }
        assert_eq!(
            expect_ok(&rx, n),
            (0..n).collect::<Vec<_>>(),
            "completions in submission order"
        );
        let s = committer.stats();
        assert_eq!(
            s.batches, n as u64,
            "max_batch 1: one transaction per submission"
        );
        assert_eq!(s.ops, n as u64);
    }
    assert_eq!(load_map(&path).get("k").map(String::as_str), Some("198"));

    // Inside one large batch, submissions still apply in order.
    {
        let committer = open(&path).start(10_000, 1000);
        let release = hold(&committer);
        let (tx, rx) = channel::unbounded();
        for i in 0..500 {
            let ops = match i % 3 {
                0 => vec![put("m", &i.to_string())],
                1 => vec![delete("m")],
                _ => vec![put("m", &format!("{i}")), put("m", &format!("{i}b"))],
            };
            committer.submit(ops, report(&tx, i)).expect("submit");
        }
        drop(release);
        assert_eq!(expect_ok(&rx, 500), (0..500).collect::<Vec<_>>());
        assert_eq!(
            committer.stats().batches,
            2,
            "the gate's transaction, then all 500 queued submissions in one"
        );
    }
    // i = 499: 499 % 3 == 1 → delete; 498 % 3 == 0 → put 498 before it.
    assert_eq!(load_map(&path).get("m"), None);
}

#[test]
fn group_commit_puts_many_ops_in_one_transaction() {
    let dir = TempDir::new("group");
    let path = dir.path().join("r.redb");
    let (threads, per_thread, max_batch) = (4usize, 500usize, 256usize);
    {
        let committer = open(&path).start(max_batch, threads * per_thread);
        // Holding the thread makes the batching deterministic: all 2000 submissions are queued
        // before the first of them can be committed.
        let release = hold(&committer);
        let (tx, rx) = channel::unbounded();
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let committer = committer.clone();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        let key = format!("t{t}-{i}");
                        committer
                            .submit(vec![put(&key, &key)], report(&tx, t * per_thread + i))
                            .expect("the queue holds every submission");
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("submitter thread");
        }
        drop(release);
        let mut tags = expect_ok(&rx, threads * per_thread);
        tags.sort_unstable();
        assert_eq!(tags, (0..threads * per_thread).collect::<Vec<_>>());

        let s = committer.stats();
        let ops = (threads * per_thread) as u64 + 1;
        assert_eq!(s.ops, ops);
        assert_eq!(s.submissions, ops);
        assert_eq!(s.failed_batches, 0);
        assert!(s.batches < s.ops, "group commit: {s:?}");
        assert_eq!(
            s.batches,
            1 + (threads * per_thread).div_ceil(max_batch) as u64,
            "the gate, then full batches of {max_batch}: {s:?}"
        );
        assert!(s.commit_time_max <= s.commit_time_total);
        assert_eq!(s.queued, 0);
    }
    let got = load_map(&path);
    for t in 0..threads {
        for i in 0..per_thread {
            let key = format!("t{t}-{i}");
            assert_eq!(got.get(&key), Some(&key), "{key} durable");
        }
    }
}

#[test]
fn full_queue_answers_busy_and_does_not_call_done() {
    let dir = TempDir::new("busy");
    let committer = open(&dir.path().join("r.redb")).start(16, 1);
    let release = hold(&committer);
    let (tx, rx) = channel::unbounded();
    // The thread is parked in the gate's callback: the one queue slot takes one submission.
    committer
        .submit(vec![put("queued", "1")], report(&tx, 1))
        .expect("one slot free");
    assert_eq!(committer.stats().queued, 1);
    let refused = committer.submit(vec![put("refused", "1")], report(&tx, 2));
    assert_eq!(refused, Err(Busy::QueueFull));
    let clone = committer.clone();
    assert_eq!(
        clone.submit(vec![put("refused2", "1")], report(&tx, 3)),
        Err(Busy::QueueFull),
        "clones share the queue"
    );
    drop(release);
    assert_eq!(expect_ok(&rx, 1), vec![1]);
    // Once drained, submissions are accepted again.
    committer
        .submit(vec![put("later", "1")], report(&tx, 4))
        .expect("queue drained");
    assert_eq!(expect_ok(&rx, 1), vec![4]);
    committer.shutdown();
    drop(tx);
    assert!(
        rx.recv_timeout(HANG).is_err(),
        "refused submissions' callbacks were dropped uncalled"
    );
    let got = load_map(&dir.path().join("r.redb"));
    assert!(got.contains_key("queued") && got.contains_key("later"));
    assert!(!got.contains_key("refused") && !got.contains_key("refused2"));
}

#[test]
fn shutdown_commits_what_is_queued_then_refuses() {
    let dir = TempDir::new("shutdown");
    let path = dir.path().join("r.redb");
    let committer = open(&path).start(32, 1000);
    let release = hold(&committer);
    let (tx, rx) = channel::unbounded();
    for i in 0..300 {
        committer
            .submit(vec![put(&format!("k{i}"), "v")], report(&tx, i))
            .expect("submit");
    }
    // shutdown() blocks until the queue is committed; it runs on another thread because this one
    // still has to release the gate.
    let stopper = {
        let committer = committer.clone();
        std::thread::spawn(move || committer.shutdown())
    };
    drop(release);
    stopper.join().expect("shutdown thread");
    assert_eq!(expect_ok(&rx, 300), (0..300).collect::<Vec<_>>());
    assert_eq!(
        committer.submit(vec![put("late", "v")], report(&tx, 999)),
        Err(Busy::Stopped)
    );
    committer.shutdown(); // idempotent
    // The thread closed the database although `committer` is still alive.
    let got = load_map(&path);
    assert_eq!(got.len(), 301, "300 keys and the gate");
    assert!(!got.contains_key("late"));
}

#[test]
fn shutdown_from_a_callback_does_not_deadlock() {
    let dir = TempDir::new("selfstop");
    let path = dir.path().join("r.redb");
    let committer = open(&path).start(4, 16);
    let (tx, rx) = channel::unbounded();
    let inner = committer.clone();
    let tx2 = tx.clone();
    committer
        .submit(
            vec![put("a", "1")],
            Box::new(move |r| {
                inner.shutdown();
                // Dropped here, so the test thread's drop below is the last one and joins.
                drop(inner);
                let _ = tx2.send((0, r));
            }),
        )
        .expect("submit");
    assert_eq!(expect_ok(&rx, 1), vec![0]);
    drop(committer); // joins the (stopping) thread
    assert_eq!(load_map(&path).get("a").map(String::as_str), Some("1"));
}

#[test]
fn a_panicking_callback_does_not_stop_the_committer() {
    let dir = TempDir::new("panic");
    let path = dir.path().join("r.redb");
    let committer = open(&path).start(4, 16);
    committer
        .submit(
            vec![put("a", "1")],
            Box::new(|_| panic!("callback panic (expected by this test)")),
        )
        .expect("submit");
    let (tx, rx) = channel::unbounded();
    committer
        .submit(vec![put("b", "2")], report(&tx, 1))
        .expect("submit");
    assert_eq!(expect_ok(&rx, 1), vec![1]);
    assert_eq!(committer.stats().ops, 2);
    drop(committer);
    let got = load_map(&path);
    assert_eq!(got.len(), 2);
}

#[test]
fn commit_observer_sees_every_commit() {
    let dir = TempDir::new("observer");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut store = open(&dir.path().join("r.redb"));
    let seen2 = seen.clone();
    store.on_commit(move |ops, took| seen2.lock().expect("lock").push((ops, took)));
    let committer = store.start(100, 100);
    let release = hold(&committer);
    let (tx, rx) = channel::unbounded();
    for i in 0..10 {
        committer
            .submit(
                vec![put(&format!("k{i}"), "v"), delete("x")],
                report(&tx, i),
            )
            .expect("submit");
    }
    drop(release);
    expect_ok(&rx, 10);
    let s = committer.stats();
    committer.shutdown();
    let seen = seen.lock().expect("lock");
    assert_eq!(
        seen.iter().map(|(ops, _)| *ops).collect::<Vec<_>>(),
        vec![1, 20]
    );
    assert_eq!(s.batches, 2);
    assert_eq!(s.ops, 21);
    assert_eq!(
        seen.iter().map(|(_, d)| *d).sum::<Duration>(),
        s.commit_time_total
    );
}

#[test]
fn flush_runs_once_per_commit_after_that_commits_callbacks() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = TempDir::new("flush");
    let committer = open(&dir.path().join("r.redb")).start(1000, 1000);
    let release = hold(&committer);
    // Each flush reports how many `done`s of its group had run when it was called.
    let (ftx, frx) = channel::unbounded::<(&'static str, usize)>();
    let done_a = Arc::new(AtomicUsize::new(0));
    let done_b = Arc::new(AtomicUsize::new(0));
    let flush = |name: &'static str, count: &Arc<AtomicUsize>| -> Flush {
        let (ftx, count) = (ftx.clone(), count.clone());
        Arc::new(move || {
            let _ = ftx.send((name, count.load(Ordering::SeqCst)));
        })
    };
    let (flush_a, flush_b) = (flush("a", &done_a), flush("b", &done_b));
    let (tx, rx) = channel::unbounded();
    let counted = |count: &Arc<AtomicUsize>, tag: usize| -> Done {
        let (count, tx) = (count.clone(), tx.clone());
        Box::new(move |r| {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = tx.send((tag, r));
        })
    };
    for i in 0..10 {
        committer
            .submit_with_flush(
                vec![put(&format!("a{i}"), "v")],
                counted(&done_a, i),
                Some(flush_a.clone()),
            )
            .expect("submit");
    }
    for i in 0..5 {
        committer
            .submit_with_flush(
                vec![put(&format!("b{i}"), "v")],
                counted(&done_b, 100 + i),
                Some(flush_b.clone()),
            )
            .expect("submit");
    }
    for i in 0..3 {
        committer
            .submit_with_flush(vec![put(&format!("c{i}"), "v")], report(&tx, 200 + i), None)
            .expect("submit");
    }
    drop(release);
    expect_ok(&rx, 18);
    let mut flushes = vec![
        frx.recv_timeout(HANG).expect("first flush"),
        frx.recv_timeout(HANG).expect("second flush"),
    ];
    flushes.sort_unstable();
    // One commit held all 18: each flush ran once, after all ten (five) of its callbacks.
    assert_eq!(flushes, vec![("a", 10), ("b", 5)]);
    assert_eq!(committer.stats().batches, 2, "the gate, then one commit");

    // A later commit flushes again, and only the flush its submissions named.
    committer
        .submit_with_flush(vec![put("a10", "v")], counted(&done_a, 10), Some(flush_a))
        .expect("submit");
    expect_ok(&rx, 1);
    assert_eq!(frx.recv_timeout(HANG).expect("third flush"), ("a", 11));
    committer.shutdown();
    assert!(frx.try_recv().is_err(), "no flush without a commit");
}

#[test]
fn a_single_submission_after_a_commit_of_one_is_not_held_back() {
    let dir = TempDir::new("single");
    let mut store = open(&dir.path().join("r.redb"));
    // If a commit of one made the next submission wait out this interval, the second completion
    // would not come within HANG and the test fails.
    store.set_min_commit_interval(Duration::from_secs(3600), 1000);
    let committer = store.start(1000, 1000);
    let (tx, rx) = channel::unbounded();
    for i in 0..3 {
        committer
            .submit(vec![put(&format!("k{i}"), "v")], report(&tx, i))
            .expect("submit");
        expect_ok(&rx, 1);
    }
    assert_eq!(committer.stats().batches, 3);
    committer.shutdown();
}

#[test]
fn min_commit_interval_gathers_what_arrives_meanwhile_and_shutdown_commits_it() {
    let dir = TempDir::new("interval");
    let path = dir.path().join("r.redb");
    let mut store = open(&path);
    // Far longer than queueing 50 submissions takes on any machine: they all arrive while the
    // committer waits out the interval after the first commit.
    store.set_min_commit_interval(Duration::from_secs(3), 1000);
    let committer = store.start(1000, 1000);
    let (tx, rx) = channel::unbounded();
    // The gate's commit holds one submission, so the next is committed at once: two queued
    // behind the gate make a commit of two, which is what makes the committer coalesce.
    let release = hold(&committer);
    for i in 51..=52 {
        committer
            .submit(vec![put(&format!("k{i}"), "v")], report(&tx, i))
            .expect("submit");
    }
    drop(release);
    expect_ok(&rx, 2);
    for i in 1..=50 {
        committer
            .submit(vec![put(&format!("k{i}"), "v")], report(&tx, i))
            .expect("submit");
    }
    // Shutdown during the wait still commits everything queued (and waits for it).
    committer.shutdown();
    let mut tags = expect_ok(&rx, 50);
    tags.sort_unstable();
    assert_eq!(tags, (1..=50).collect::<Vec<_>>());
    let s = committer.stats();
    assert_eq!(
        (s.batches, s.ops),
        (3, 53),
        "the gate, the pair, the fifty: {s:?}"
    );
    drop(committer);
    let got = load_map(&path);
    assert_eq!(got.len(), 53);
}

#[test]
fn enough_waiting_submissions_end_the_coalescing_wait() {
    let dir = TempDir::new("enough");
    let mut store = open(&dir.path().join("r.redb"));
    // An interval far beyond HANG: if reaching `enough` did not end the wait, the completions
    // below would never come within HANG and the test fails.
    store.set_min_commit_interval(Duration::from_secs(3600), 10);
    let committer = store.start(1000, 1000);
    let (tx, rx) = channel::unbounded();
    // A commit of two (behind the gate) makes the committer coalesce from then on.
    let release = hold(&committer);
    for i in 100..102 {
        committer
            .submit(vec![put(&format!("k{i}"), "v")], report(&tx, i))
            .expect("submit");
    }
    drop(release);
    expect_ok(&rx, 2);
    for round in 0..3 {
        for i in 0..10 {
            let tag = 1 + round * 10 + i;
            committer
                .submit(vec![put(&format!("k{tag}"), "v")], report(&tx, tag))
                .expect("submit");
        }
        // Ten waiting: committed without waiting out the interval.
        expect_ok(&rx, 10);
    }
    let s = committer.stats();
    assert_eq!(s.ops, 33);
    assert!(s.batches >= 5, "{s:?}");
    committer.shutdown();
}

fn open_err(path: &Path) -> StoreError {
    match Store::open(path) {
        Ok(_) => panic!("opening {} should fail", path.display()),
        Err(e) => e,
    }
}

fn assert_names(e: &StoreError, path: &Path) {
    let msg = e.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error should name {}: {msg}",
        path.display()
    );
}

#[test]
fn open_refuses_a_directory() {
    let dir = TempDir::new("isdir");
    let e = open_err(dir.path());
    assert!(matches!(e, StoreError::IsDirectory { .. }), "{e:?}");
    assert_names(&e, dir.path());
}

#[test]
fn open_reports_an_uncreatable_parent() {
    let dir = TempDir::new("parent");
    // A regular file where a directory is needed: fails for root too.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").expect("write");
    let path = file.join("sub/registrar.redb");
    let e = open_err(&path);
    assert!(matches!(e, StoreError::CreateDir { .. }), "{e:?}");
    assert_names(&e, &path);

    // A file system where nobody may create directories (procfs), root included.
    let path = Path::new("/proc/sipveil-no-such-dir/registrar.redb");
    let e = open_err(path);
    assert!(matches!(e, StoreError::CreateDir { .. }), "{e:?}");
    assert_names(&e, path);
}

#[test]
fn open_reports_an_unwritable_directory() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        println!(
            "SKIPPED: open_reports_an_unwritable_directory: root ignores directory permissions \
             (open_reports_an_uncreatable_parent covers the root case)"
        );
        return;
    }
    let dir = TempDir::new("readonly");
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).expect("mkdir");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).expect("chmod");
    let path = ro.join("registrar.redb");
    let e = open_err(&path);
    assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
    assert_names(&e, &path);
    let path = ro.join("sub/registrar.redb");
    let e = open_err(&path);
    assert!(matches!(e, StoreError::CreateDir { .. }), "{e:?}");
    assert_names(&e, &path);
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o700)).expect("chmod back");
}

#[test]
fn open_refuses_a_file_that_is_not_a_database() {
    let dir = TempDir::new("garbage");
    let path = dir.path().join("registrar.redb");
    std::fs::write(&path, vec![b'#'; 8192]).expect("write");
    let e = open_err(&path);
    assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
    assert_names(&e, &path);
}

#[test]
fn open_refuses_a_database_already_open() {
    let dir = TempDir::new("twice");
    let path = dir.path().join("registrar.redb");
    let first = open(&path);
    let e = open_err(&path);
    assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
    assert_names(&e, &path);
    // Also while the committer holds it.
    let committer = first.start(1, 1);
    let e = open_err(&path);
    assert_names(&e, &path);
    committer.shutdown();
    open(&path);
}

#[test]
fn open_refuses_a_newer_format_and_foreign_files() {
    let dir = TempDir::new("version");
    let path = dir.path().join("registrar.redb");
    drop(open(&path));
    let meta: redb::TableDefinition<&str, u64> =
        redb::TableDefinition::new(sipveil_edge::store::META_TABLE);
    let set_version = |v: u64| {
        let db = redb::Database::create(&path).expect("redb open");
        let txn = db.begin_write().expect("begin");
        txn.open_table(meta)
            .expect("meta table")
            .insert(sipveil_edge::store::FORMAT_KEY, v)
            .expect("insert");
        txn.commit().expect("commit");
    };
    set_version(FORMAT_VERSION + 1);
    let e = open_err(&path);
    match &e {
        StoreError::NewerFormat {
            found, supported, ..
        } => {
            assert_eq!((*found, *supported), (FORMAT_VERSION + 1, FORMAT_VERSION));
        }
        other => panic!("expected NewerFormat, got {other:?}"),
    }
    assert_names(&e, &path);
    assert!(e.to_string().contains("newer"), "{e}");
    set_version(FORMAT_VERSION);
    drop(open(&path));
    // A version-1 file (before the binding log) is upgraded in place, its records kept.
    {
        let committer = open(&path).start(1, 1);
        let (tx, rx) = channel::unbounded();
        committer
            .submit(vec![put("kept", "1")], report(&tx, 0))
            .expect("submit");
        expect_ok(&rx, 1);
        committer.shutdown();
    }
    set_version(1);
    assert_eq!(load_map(&path).get("kept").map(String::as_str), Some("1"));
    {
        let db = redb::Database::create(&path).expect("redb open");
        let txn = db.begin_read().expect("begin");
        let v = txn
            .open_table(meta)
            .expect("meta table")
            .get(sipveil_edge::store::FORMAT_KEY)
            .expect("read")
            .map(|v| v.value());
        assert_eq!(v, Some(FORMAT_VERSION), "upgraded to the current version");
    }

    // A redb file of something else.
    let other = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&other).expect("redb open");
        let txn = db.begin_write().expect("begin");
        let t: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("someone-else");
        txn.open_table(t)
            .expect("table")
            .insert(1, 2)
            .expect("insert");
        txn.commit().expect("commit");
    }
    let e = open_err(&other);
    assert!(matches!(e, StoreError::Foreign { .. }), "{e:?}");
    assert_names(&e, &other);
}

#[test]
fn binary_keys_and_values_round_trip() {
    let dir = TempDir::new("binary");
    let path = dir.path().join("r.redb");
    let key: Vec<u8> = (0..=255u8).collect();
    let value: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    {
        let committer = open(&path).start(4, 4);
        let (tx, rx) = channel::unbounded();
        committer
            .submit(
                vec![
                    StoreOp::Put {
                        key: key.clone(),
                        value: value.clone(),
                    },
                    StoreOp::Put {
                        key: b"aor\0binding".to_vec(),
                        value: Vec::new(),
                    },
                ],
                report(&tx, 0),
            )
            .expect("submit");
        expect_ok(&rx, 1);
    }
    let all = open(&path).load().expect("load");
    assert_eq!(all.len(), 2);
    assert!(all.contains(&(key, value)));
    assert!(all.contains(&(b"aor\0binding".to_vec(), Vec::new())));
}
