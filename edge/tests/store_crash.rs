//! `kill -9` durability: a child process (this test binary, re-executed with
//! `--exact crash_writer_child`) writes through the committer and prints `acked N` from each
//! `done`; the parent kills it with SIGKILL mid-stream, reopens the store and checks that every
//! acknowledged submission is there. No root needed.
mod store_support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam::channel;
use sipveil_edge::store::{Busy, Store};
use store_support::{TempDir, delete, put};

const DB_ENV: &str = "SIPVEIL_STORE_CRASH_DB";
const ROUND_ENV: &str = "SIPVEIL_STORE_CRASH_ROUND";
/// Bounds on the child, so a parent that never kills it cannot leave it running.
const CHILD_MAX_SUBMISSIONS: u64 = 2_000_000;
const CHILD_MAX_SECS: u64 = 120;
/// Parent gives up (and fails) if the child prints nothing for this long. Not a timing assertion.
const HANG: Duration = Duration::from_secs(60);

/// Submission `i` of round `r` writes:
/// - `r{r}-k{i}` = `v{i}` (must survive once acked),
/// - `r{r}-last` = `i`,
/// - `r{r}-scratch{i}`, and deletes `r{r}-scratch{i-1}`.
///
/// With one submitting thread, queue order is `i` order, and commits are a prefix: after a crash
/// the store must hold exactly submissions `0..=last` — all `k`, one `scratch` (that of `last`) —
/// and `last` must be at least every acknowledged `i`.
fn ops(round: u32, i: u64) -> Vec<sipveil_edge::store::StoreOp> {
    let mut ops = vec![
        put(&format!("r{round}-k{i}"), &format!("v{i}")),
        put(&format!("r{round}-last"), &i.to_string()),
        put(&format!("r{round}-scratch{i}"), "x"),
    ];
    if i > 0 {
        ops.push(delete(&format!("r{round}-scratch{}", i - 1)));
    }
    ops
}

/// The child side. Without the environment variables it is not a test of its own.
#[test]
#[ignore = "helper process of kill9_loses_no_acknowledged_write; runs only when that test re-executes it"]
fn crash_writer_child() {
    let (Ok(db), Ok(round)) = (std::env::var(DB_ENV), std::env::var(ROUND_ENV)) else {
        println!(
            "SKIPPED: crash_writer_child is the child of kill9_loses_no_acknowledged_write and does \
             nothing on its own"
        );
        return;
    };
    let round: u32 = round.parse().expect("round number");
    let store = Store::open(Path::new(&db)).unwrap_or_else(|e| panic!("{e}"));
    let committer = store.start(512, 4096);
    let started = Instant::now();
    let mut i = 0u64;
    while i < CHILD_MAX_SUBMISSIONS && started.elapsed().as_secs() < CHILD_MAX_SECS {
        let done = Box::new(move |r: Result<(), _>| {
            if let Err(e) = r {
                panic!("commit failed: {e}");
            }
            // Straight to fd 1, past libtest's output capture, flushed before the next commit
            // can start.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "acked {i}");
            let _ = out.flush();
        });
        match committer.submit(ops(round, i), done) {
            Ok(()) => i += 1,
            Err(Busy::QueueFull) => std::thread::yield_now(),
            Err(Busy::Stopped) => panic!("committer stopped"),
        }
    }
    committer.shutdown();
}

fn check_round(path: &Path, round: u32, acked: &[u64]) {
    let store = Store::open(path).unwrap_or_else(|e| panic!("reopen after kill -9: {e}"));
    let got: BTreeMap<String, String> = store
        .load()
        .unwrap_or_else(|e| panic!("load after kill -9: {e}"))
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k).expect("utf-8 key"),
                String::from_utf8(v).expect("utf-8 value"),
            )
        })
        .collect();
    let max = acked.iter().copied().max().expect("some acks");
    for &i in acked {
        let key = format!("r{round}-k{i}");
        assert_eq!(
            got.get(&key).map(String::as_str),
            Some(format!("v{i}").as_str()),
            "round {round}: acknowledged {key} lost"
        );
    }
    let last: u64 = got
        .get(&format!("r{round}-last"))
        .expect("last key present")
        .parse()
        .expect("number");
    assert!(
        last >= max,
        "round {round}: last = {last} but submission {max} was acknowledged"
    );
    let prefix = format!("r{round}-");
    let mut want: BTreeMap<String, String> = (0..=last)
        .map(|i| (format!("r{round}-k{i}"), format!("v{i}")))
        .collect();
    want.insert(format!("r{round}-last"), last.to_string());
    want.insert(format!("r{round}-scratch{last}"), "x".to_string());
    let this_round: BTreeMap<String, String> = got
        .into_iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .collect();
    if this_round != want {
        let extra: Vec<_> = this_round
            .keys()
            .filter(|k| !want.contains_key(*k))
            .collect();
        let missing: Vec<_> = want
            .keys()
            .filter(|k| !this_round.contains_key(*k))
            .collect();
        panic!(
            "round {round}: the store is not the prefix 0..={last} of the submissions; \
             missing {missing:?}, extra {extra:?}"
        );
    }
}

#[test]
fn kill9_loses_no_acknowledged_write() {
    let dir = TempDir::new("crash");
    let path = dir.path().join("registrar.redb");
    let exe = std::env::current_exe().expect("current_exe");
    for (round, kill_after) in [(0u32, 300usize), (1, 700), (2, 1500)] {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_writer_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DB_ENV, &path)
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = channel::unbounded::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut acked = Vec::new();
        let parse = |line: &str, acked: &mut Vec<u64>| {
            if let Some(n) = line.strip_prefix("acked ") {
                acked.push(n.trim().parse::<u64>().expect("ack number"));
            }
        };
        while acked.len() < kill_after {
            match rx.recv_timeout(HANG) {
                Ok(line) => parse(&line, &mut acked),
                Err(_) => {
                    let _ = child.kill();
                    let out = child.wait_with_output().expect("wait child");
                    panic!(
                        "round {round}: child stopped or stalled after {} acks: {}",
                        acked.len(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        // SIGKILL: no destructor, no shutdown, no flush.
        child.kill().expect("kill -9 child");
        let status = child.wait().expect("wait child");
        assert!(!status.success(), "the child was killed, not finished");
        // Acks printed before the kill are still in the pipe: they count too.
        reader.join().expect("reader thread");
        while let Ok(line) = rx.try_recv() {
            parse(&line, &mut acked);
        }
        println!(
            "round {round}: killed after {} acknowledged submissions",
            acked.len()
        );
        check_round(&path, round, &acked);
    }
    // Earlier rounds are still intact after later crashes.
    let store = Store::open(&path).expect("final reopen");
    let all = store.load().expect("load");
    for round in 0..3 {
        assert!(
            all.iter()
                .any(|(k, _)| k == format!("r{round}-k0").as_bytes()),
            "round {round} data kept"
        );
    }
}
