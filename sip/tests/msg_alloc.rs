//! Counts heap allocations of parse and print (a counting global allocator;
//! counts, never times). One test function so no other test thread runs
//! inside the measured sections.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use sipveil_sip::{HeaderName, Limits, parse_datagram};

struct Counting;

thread_local! {
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: delegates every call to the system allocator unchanged; the
// thread-local counter has a const initialiser and no destructor, so
// touching it never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        COUNT.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        COUNT.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn count<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = COUNT.with(Cell::get);
    let r = f();
    (r, COUNT.with(Cell::get) - before)
}

const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
X-Unknown-Header: kept raw\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

#[test]
fn parse_and_print_allocation_counts() {
    let limits = Limits::default();

    // Static buffer: nothing (the header index is inline in the message).
    let (m, n) = count(|| parse_datagram(Bytes::from_static(INVITE), &limits));
    let m = m.expect("parse");
    assert_eq!(n, 0, "parse of a static buffer allocates nothing");
    // Nor does the full validation.
    let (ok, n) = count(|| m.validate(&limits));
    ok.expect("valid");
    assert_eq!(n, 0, "validate allocates nothing");

    // Printing an unchanged message allocates nothing.
    let (out, n) = count(|| m.to_bytes());
    assert_eq!(n, 0);
    assert_eq!(out, INVITE);

    // Typed views allocate nothing.
    let (_, n) = count(|| {
        let r = m.as_request().expect("request");
        let v = r.top_via().expect("via");
        let _ = (v.branch(), v.has_rport(), v.sent_by().len());
        let _ = (r.from_tag(), r.to_tag(), r.call_id(), r.cseq());
        let _ = r
            .headers()
            .get(&HeaderName::from_static("x-unknown-header"));
    });
    assert_eq!(n, 0, "typed views are slices");

    // A buffer received into a Vec: the `bytes` crate promotes it to a shared
    // buffer on the first slice (one allocation inside `bytes`).
    let v = INVITE.to_vec();
    let (m2, n) = count(|| parse_datagram(Bytes::from(v), &limits));
    m2.expect("parse");
    assert!(n <= 1, "parse of a Vec-backed buffer: {n} allocations");
    // An already shared buffer (what a receive path that clones hands over): nothing.
    let shared = Bytes::from(INVITE.to_vec());
    drop(shared.clone());
    let (m3, n3) = count(|| parse_datagram(shared.clone(), &limits).map(|m| m.to_bytes()));
    m3.expect("parse");
    assert_eq!(n3, 0, "parse + print of a shared buffer allocates nothing");

    // More header fields than the inline capacity spill to the heap once.
    let mut many = Vec::new();
    let split = INVITE.len() - b"Content-Length: 4\r\n\r\nv=0\n".len();
    many.extend_from_slice(&INVITE[..split]);
    for i in 0..40 {
        many.extend_from_slice(format!("X-Extra-{i}: {i}\r\n").as_bytes());
    }
    many.extend_from_slice(&INVITE[split..]);
    let many = Bytes::from_static(many.leak());
    let (m4, n4) = count(|| parse_datagram(many.clone(), &limits));
    let m4 = m4.expect("parse");
    assert_eq!(n4, 1, "over the inline capacity: one heap index");
    assert_eq!(m4.headers().len(), 50);
    assert_eq!(m4.to_bytes(), many);
    println!(
        "allocations: static parse 0, vec-backed parse {n}, unchanged print 0, views 0, 50 fields 1"
    );
}
