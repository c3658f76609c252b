//! Heap allocations per operation, sipveil against rsip, counted by a global allocator.
//!
//! `cargo bench -p sipveil-benches --bench sip_alloc`
//!
//! Prints, for each message and operation, the number of allocations (and bytes requested)
//! per operation. Forwarding an unmodified message (`parse` and `parse_print`) is meant not
//! to allocate in sipveil; the binary says NOT MET when it does, and exits non-zero then if
//! `SIPVEIL_ALLOC_STRICT=1` is set.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use sipveil_benches::messages::ALL;

mod common;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds the
// GlobalAlloc contract; the counters are plain atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same layout the caller gave us, caller upholds alloc's preconditions.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: as for alloc.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by System with `layout` (every allocation goes through
        // this allocator), caller upholds realloc's preconditions.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by System with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ROUNDS: u64 = 1000;

/// Allocations and bytes per call of `op`, averaged over ROUNDS calls (after one warm-up call).
fn measure(op: impl Fn()) -> (f64, f64) {
    op();
    let (a0, b0) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    for _ in 0..ROUNDS {
        op();
    }
    let (a1, b1) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    (
        (a1 - a0) as f64 / ROUNDS as f64,
        (b1 - b0) as f64 / ROUNDS as f64,
    )
}

fn main() {
    // `cargo test --benches` runs bench binaries with no `--bench` flag: nothing to measure.
    if !std::env::args().any(|a| a == "--bench") {
        println!("sip_alloc: run with `cargo bench -p sipveil-benches --bench sip_alloc`");
        return;
    }
    type Op = (&'static str, fn(&bytes::Bytes), fn(&bytes::Bytes));
    let operations: &[Op] = &[
        (
            "parse",
            |b| drop(black_box(common::sipveil::parse(b))),
            |b| drop(black_box(common::rsip::parse(b))),
        ),
        (
            "parse_validate",
            |b| {
                let message = common::sipveil::parse(b);
                message
                    .validate(&sipveil_sip::Limits::default())
                    .expect("benchmark message validates");
                drop(black_box(message))
            },
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
    println!("Heap allocations per operation (bytes requested per operation in parentheses):");
    println!(
        "{:<22} {:<11} {:>20} {:>20}",
        "operation", "message", "sipveil", "rsip"
    );
    let mut forwarding_allocates = false;
    for (operation, sipveil, rsip) in operations {
        for (name, message) in ALL {
            let buf = common::datagram(message);
            let (ours, our_bytes) = measure(|| sipveil(&buf));
            let (theirs, their_bytes) = measure(|| rsip(&buf));
            println!(
                "{operation:<22} {name:<11} {:>9.1} ({:>7.0} B) {:>9.1} ({:>7.0} B)",
                ours, our_bytes, theirs, their_bytes
            );
            if *operation != "parse_rewrite_print" && ours > 0.0 {
                forwarding_allocates = true;
            }
        }
    }
    // The SDP share of the rewrite: parse + privacy rewrite + print of the INVITE's body.
    let invite = common::datagram(sipveil_benches::messages::INVITE);
    let body = common::sipveil::parse(&invite).body().clone();
    let (sdp, sdp_bytes) = measure(|| drop(black_box(common::rewrite_sdp(body.clone()))));
    println!(
        "{:<22} {:<11} {:>9.1} ({:>7.0} B)",
        "sdp_rewrite_print", "invite_sdp", sdp, sdp_bytes
    );
    if forwarding_allocates {
        println!("\nNOT MET: parsing/forwarding an unmodified message allocates in sipveil");
        if std::env::var_os("SIPVEIL_ALLOC_STRICT").is_some_and(|v| v == "1") {
            std::process::exit(1);
        }
        return;
    }
    println!("\nOK: parsing and forwarding an unmodified message does not allocate in sipveil");
}
