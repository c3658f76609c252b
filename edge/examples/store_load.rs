//! Store micro-benchmark: the registrar store alone (binding log + checkpoints) under a paced
//! load of single-binding submissions from a few threads, as the SIP workers submit them, with
//! one flush (an eventfd write, like the worker wake-up) per thread per group.
//!
//! ```text
//! cargo run --release -p sipveil-edge --example store_load -- [--rate 2000] [--secs 10]
//!     [--threads 2] [--interval-ms 5] [--group 20] [--dir /var/tmp/sipveil-store-load]
//! ```
//!
//! Prints the CPU time of the committer (`sipveil-store`) and checkpoint (`sipveil-ckpt`)
//! threads per submission (from `/proc/self/task/<tid>/schedstat`), the group size, how often a
//! submitter woke the committer, and submit → durable latency. Bounded: at most 120 s and
//! 200 000 submissions/s; the store files are removed at the end.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sipveil_edge::store::{Flush, Store, StoreOp};

struct Args {
    rate: u64,
    secs: u64,
    threads: u64,
    interval_ms: u64,
    group: usize,
    dir: PathBuf,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        rate: 2000,
        secs: 10,
        threads: 2,
        interval_ms: 5,
        group: 20,
        dir: PathBuf::from("/var/tmp/sipveil-store-load"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        let num = || v.parse::<u64>().map_err(|e| format!("{k} {v}: {e}"));
        match k.as_str() {
            "--rate" => a.rate = num()?.clamp(1, 200_000),
            "--secs" => a.secs = num()?.clamp(1, 120),
            "--threads" => a.threads = num()?.clamp(1, 16),
            "--interval-ms" => a.interval_ms = num()?.min(1000),
            "--group" => a.group = usize::try_from(num()?).map_err(|e| e.to_string())?,
            "--dir" => a.dir = PathBuf::from(v),
            _ => return Err(format!("unknown option {k}")),
        }
    }
    Ok(a)
}

/// Nanoseconds on CPU of every thread of this process, by name.
fn thread_cpu() -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in dir.flatten() {
        let p = t.path();
        let name = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        *out.entry(name.trim().to_string()).or_default() += ns;
    }
    out
}

fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd has no memory preconditions; a non-negative result is a new descriptor
    // that we own from here on.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn remove_store(db: &Path) {
    for suffix in ["", ".wal0", ".wal1"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse()?;
    std::fs::create_dir_all(&args.dir)?;
    let db = args.dir.join("store.redb");
    remove_store(&db);
    let mut store = Store::open(&db)?;
    store.set_min_commit_interval(Duration::from_millis(args.interval_ms), args.group);
    let committer = store.try_start(4096, 16384)?;

    let per_thread = args.rate * args.secs / args.threads;
    let period = Duration::from_nanos(1_000_000_000 * args.threads / args.rate);
    let acked = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<u32>::with_capacity(
        usize::try_from(args.rate * args.secs).unwrap_or(0),
    )));
    let before = thread_cpu();
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..args.threads {
        let committer = committer.clone();
        let acked = acked.clone();
        let latencies = latencies.clone();
        let efd = Arc::new(eventfd()?);
        handles.push(
            std::thread::Builder::new()
                .name(format!("submit-{t}"))
                .spawn(move || {
                    let wake = efd.clone();
                    let flush: Flush = Arc::new(move || {
                        let one: u64 = 1;
                        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
                        unsafe {
                            libc::write(wake.as_raw_fd(), (&raw const one).cast(), 8);
                        }
                    });
                    let mut refused = 0u64;
                    for i in 0..per_thread {
                        let at = started + period * u32::try_from(i).unwrap_or(u32::MAX);
                        if let Some(d) = at.checked_duration_since(Instant::now()) {
                            std::thread::sleep(d);
                        }
                        let key = format!("sip:user{t}-{i}@open.example").into_bytes();
                        let ops = vec![StoreOp::Put {
                            key,
                            value: vec![0x5a; 200],
                        }];
                        let acked = acked.clone();
                        let latencies = latencies.clone();
                        let sent = Instant::now();
                        let done = Box::new(move |r: Result<(), _>| {
                            if r.is_ok() {
                                acked.fetch_add(1, Ordering::Relaxed);
                                let us =
                                    u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
                                if let Ok(mut l) = latencies.lock() {
                                    l.push(us);
                                }
                            }
                        });
                        if committer
                            .submit_with_flush(ops, done, Some(flush.clone()))
                            .is_err()
                        {
                            refused += 1;
                        }
                    }
                    // This thread's own CPU time, read before it ends.
                    let cpu = std::fs::read_to_string("/proc/thread-self/schedstat")
                        .ok()
                        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                        .unwrap_or(0);
                    (refused, cpu)
                })?,
        );
    }
    let mut refused = 0;
    let mut submit_cpu = 0;
    for h in handles {
        let (r, cpu) = h.join().map_err(|_| "submitter panicked")?;
        refused += r;
        submit_cpu += cpu;
    }
    // Let the last group land before reading the CPU counters.
    let deadline = Instant::now() + Duration::from_secs(5);
    while acked.load(Ordering::Relaxed) + refused
        < args.rate * args.secs / args.threads * args.threads
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let wall = started.elapsed();
    let after = thread_cpu();
    let stats = committer.stats();
    committer.shutdown();

    let n = acked.load(Ordering::Relaxed);
    let per = |name: &str| {
        let d = after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
        d as f64 / 1000.0 / n.max(1) as f64
    };
    let mut lat = latencies.lock().map_err(|_| "poisoned")?.clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "store_load: {n} acked, {refused} refused in {:.2} s ({} threads, {}/s, window {} ms / {})",
        wall.as_secs_f64(),
        args.threads,
        args.rate,
        args.interval_ms,
        args.group
    );
    println!(
        "  cpu us/submission: sipveil-store {:.2}, sipveil-ckpt {:.2}, submitters (whole run) {:.2}",
        per("sipveil-store"),
        per("sipveil-ckpt"),
        submit_cpu as f64 / 1000.0 / n.max(1) as f64
    );
    println!(
        "  groups {} ({:.1} submissions each), committer wake-ups by submitters {}, checkpoints {}",
        stats.batches,
        stats.submissions as f64 / stats.batches.max(1) as f64,
        stats.wakeups,
        stats.checkpoints
    );
    println!(
        "  submit -> durable us p50 {} p99 {} p99.9 {} max {}",
        pct(0.5),
        pct(0.99),
        pct(0.999),
        lat.last().copied().unwrap_or(0)
    );
    remove_store(&db);
    Ok(())
}
