//! One UDP datagram: parsing never panics; an accepted message prints back byte-identical
//! while unmodified, and print(parse(x)) re-parses to an equal message, also after the
//! privacy-style edits.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sipveil_sip::{Limits, parse_datagram};

mod common;

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    let Ok(message) = parse_datagram(input.clone(), &Limits::default()) else {
        return;
    };
    // Reading the typed core fields must not panic either.
    let _ = (message.call_id(), message.cseq(), message.top_via());
    common::assert_print_reparses(&message);
    common::assert_mutation_reparses(message);
});
