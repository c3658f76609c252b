//! SIP parsing throughput, sipveil against rsip in the same run.
//!
//! `cargo bench -p sipveil-benches --bench sip_parse`
//!
//! For a REGISTER, an INVITE with SDP and a 200 OK with SDP, four operations each:
//! `parse`, `parse_validate` (sipveil: the datagram parse plus `Message::validate`, the full
//! header checks; rsip: its parse, which has no validation step), `parse_print` (forwarding an
//! unmodified message) and `parse_rewrite_print` (the privacy rewrite, see `common/mod.rs`).
//! At the end the binary prints two tables:
//!
//! 1. criterion's mean wall-clock time per message for both parsers and the ratio;
//! 2. an interleaved comparison: batches of sipveil and rsip alternate, each batch timed with
//!    the thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`), and the median batch gives messages
//!    per second per core. On a shared machine this is the more trustworthy ratio: both sides
//!    see the same load, and time spent descheduled is not counted.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, Throughput};
use sipveil_benches::messages::ALL;

mod common;

type Operation = (&'static str, fn(&bytes::Bytes), fn(&bytes::Bytes));

/// sipveil's datagram parse followed by the full header checks that it leaves to
/// `Message::validate` (see the `sipveil-sip` crate docs).
fn sipveil_parse_validate(b: &bytes::Bytes) -> sipveil_sip::Message {
    let message = common::sipveil::parse(b);
    message
        .validate(&sipveil_sip::Limits::default())
        .expect("benchmark message validates");
    message
}

const OPERATIONS: &[Operation] = &[
    (
        "parse",
        |b| drop(black_box(common::sipveil::parse(b))),
        |b| drop(black_box(common::rsip::parse(b))),
    ),
    (
        "parse_validate",
        |b| drop(black_box(sipveil_parse_validate(b))),
        |b| drop(black_box(common::rsip::parse(b))),
    ),
    (
        "parse_print",
        |b| drop(black_box(common::sipveil::parse_print(b))),
        |b| drop(black_box(common::rsip::parse_print(b))),
    ),
    (
        "parse_rewrite_print",
        |b| drop(black_box(common::sipveil::parse_rewrite_print(b))),
        |b| drop(black_box(common::rsip::parse_rewrite_print(b))),
    ),
];

fn output_directory() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("criterion")
}

fn benchmark(c: &mut Criterion) {
    for (operation, sipveil, rsip) in OPERATIONS {
        for (name, message) in ALL {
            let buf = common::datagram(message);
            let mut group = c.benchmark_group(format!("{operation}-{name}"));
            group.throughput(Throughput::Elements(1));
            group.bench_function("sipveil", |b| b.iter(|| sipveil(black_box(&buf))));
            group.bench_function("rsip", |b| b.iter(|| rsip(black_box(&buf))));
            group.finish();
        }
    }
}

/// Mean time per iteration in nanoseconds from criterion's `estimates.json`, when this run
/// wrote it (not a stale file from an earlier run).
fn mean_ns(dir: &std::path::Path, group: &str, function: &str, since: SystemTime) -> Option<f64> {
    let path = dir.join(group).join(function).join("new/estimates.json");
    if std::fs::metadata(&path).ok()?.modified().ok()? < since {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("mean")?.get("point_estimate")?.as_f64()
}

fn print_ratios(dir: &std::path::Path, since: SystemTime) {
    println!();
    println!("SIP parser, messages per second per core (mean), sipveil vs rsip:");
    println!(
        "{:<22} {:<11} {:>14} {:>14} {:>14}",
        "operation", "message", "sipveil msg/s", "rsip msg/s", "sipveil/rsip"
    );
    for (operation, _, _) in OPERATIONS {
        for (name, _) in ALL {
            let group = format!("{operation}-{name}");
            match (
                mean_ns(dir, &group, "sipveil", since),
                mean_ns(dir, &group, "rsip", since),
            ) {
                (Some(ours), Some(theirs)) if ours > 0.0 && theirs > 0.0 => println!(
                    "{operation:<22} {name:<11} {:>14.0} {:>14.0} {:>13.1}x",
                    1e9 / ours,
                    1e9 / theirs,
                    theirs / ours
                ),
                _ => println!("{operation:<22} {name:<11} (not measured in this run)"),
            }
        }
    }
}

/// This thread's CPU time.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

const BATCH: u32 = 300;
const ROUNDS: usize = 25;

/// Median CPU nanoseconds per call for `a` and `b`, measured in alternating batches.
fn interleaved(buf: &bytes::Bytes, a: fn(&bytes::Bytes), b: fn(&bytes::Bytes)) -> (f64, f64) {
    let batch = |f: fn(&bytes::Bytes)| {
        let start = thread_cpu_time();
        for _ in 0..BATCH {
            f(black_box(buf));
        }
        (thread_cpu_time() - start).as_nanos() as f64 / f64::from(BATCH)
    };
    // Warm up both.
    batch(a);
    batch(b);
    let (mut xs, mut ys) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
    for _ in 0..ROUNDS {
        xs.push(batch(a));
        ys.push(batch(b));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (median(&mut xs), median(&mut ys))
}

fn print_interleaved() {
    println!();
    println!(
        "Interleaved, thread CPU time, median of {ROUNDS} batches of {BATCH} (messages per second per core):"
    );
    println!(
        "{:<22} {:<11} {:>14} {:>14} {:>14}",
        "operation", "message", "sipveil msg/s", "rsip msg/s", "sipveil/rsip"
    );
    for (operation, sipveil, rsip) in OPERATIONS {
        for (name, message) in ALL {
            let buf = common::datagram(message);
            let (ours, theirs) = interleaved(&buf, *sipveil, *rsip);
            println!(
                "{operation:<22} {name:<11} {:>14.0} {:>14.0} {:>13.1}x",
                1e9 / ours,
                1e9 / theirs,
                theirs / ours
            );
        }
    }
}

fn main() {
    // `cargo test --benches` runs this binary without `--bench`: criterion then runs each
    // benchmark once as a smoke test, and the tables below are skipped.
    let measuring = std::env::args().any(|a| a == "--bench");
    let started = SystemTime::now();
    let dir = output_directory();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .output_directory(&dir)
        .configure_from_args();
    benchmark(&mut criterion);
    criterion.final_summary();
    if measuring {
        print_ratios(&dir, started);
        print_interleaved();
    }
}
