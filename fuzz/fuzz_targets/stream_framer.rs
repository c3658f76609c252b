//! A byte stream cut into chunks: the framer never panics, yields the same events whether
//! the stream arrives in one piece or in chunks, and every framed message re-parses from
//! its printed form to an equal message.
//!
//! Input layout: the first byte seeds the chunk sizes (1..=64 bytes, varying), the rest is
//! the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipveil_sip::{Limits, StreamEvent, StreamFramer};

mod common;

/// What a framer produced, comparable: events in order, then whether it failed.
#[derive(Debug, PartialEq)]
enum Seen {
    Message(Vec<u8>),
    Ping,
    Pong,
    Error,
}

fn drain(framer: &mut StreamFramer, seen: &mut Vec<Seen>) {
    // Each poll consumes input or reports; bound the loop anyway.
    for _ in 0..100_000 {
        match framer.poll() {
            None => return,
            Some(Ok(StreamEvent::Message(m))) => {
                common::assert_print_reparses(&m);
                seen.push(Seen::Message(m.to_bytes().to_vec()));
                common::assert_mutation_reparses(m);
            }
            Some(Ok(StreamEvent::Ping)) => seen.push(Seen::Ping),
            Some(Ok(StreamEvent::Pong)) => seen.push(Seen::Pong),
            Some(Err(_)) => seen.push(Seen::Error),
        }
    }
    panic!("poll kept returning events without consuming input");
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let limits = Limits::default();

    let mut whole = StreamFramer::new(limits);
    let mut seen_whole = Vec::new();
    whole.push(stream);
    drain(&mut whole, &mut seen_whole);

    let mut chunked = StreamFramer::new(limits);
    let mut seen_chunked = Vec::new();
    let mut rest = stream;
    let mut size = usize::from(seed % 64) + 1;
    while !rest.is_empty() && !chunked.is_failed() {
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        chunked.push(chunk);
        drain(&mut chunked, &mut seen_chunked);
        rest = tail;
        size = (size * 7 + 3) % 64 + 1;
    }

    assert_eq!(
        seen_whole, seen_chunked,
        "chunking changed what the framer saw"
    );
    assert_eq!(whole.is_failed(), chunked.is_failed());
    if !whole.is_failed() {
        assert_eq!(whole.buffered(), chunked.buffered(), "different leftovers");
    }
});
