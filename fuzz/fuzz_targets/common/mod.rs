//! Structural comparison of parsed messages, shared by the message targets.

use sipveil_sip::{Header, HeaderName, Limits, Message, parse_datagram};

/// Start line, every header field (name and value, in order) and body equal.
pub fn same_message(a: &Message, b: &Message) -> bool {
    start_line(a) == start_line(b)
        && a.headers().len() == b.headers().len()
        && a.headers()
            .iter()
            .zip(b.headers().iter())
            .all(|(x, y)| x.name() == y.name() && x.value() == y.value())
        && a.body() == b.body()
}

fn start_line(m: &Message) -> &[u8] {
    match m {
        Message::Request(r) => r.start_line(),
        Message::Response(r) => r.start_line(),
    }
}

/// print(parse(x)) re-parses to an equal message, and printing is stable.
pub fn assert_print_reparses(message: &Message) {
    let printed = message.to_bytes();
    let mut written = Vec::new();
    message.write_to(&mut written);
    assert_eq!(written, printed, "write_to and to_bytes disagree");
    let reparsed = match parse_datagram(printed.clone(), &Limits::UNLIMITED) {
        Ok(m) => m,
        Err(e) => panic!("printed message does not re-parse: {e:?}\n{printed:?}"),
    };
    assert!(
        same_message(message, &reparsed),
        "re-parsed message differs\nprinted: {printed:?}"
    );
    assert_eq!(reparsed.to_bytes(), printed, "printing is not stable");
}

/// The privacy-style edits the B2BUA makes, then the print/re-parse invariant again.
pub fn assert_mutation_reparses(mut message: Message) {
    let headers = message.headers_mut();
    let call_id = Header::new(HeaderName::CallId, b"fuzz-5f3c9a1b@198.18.1.1");
    headers.set(call_id.expect("a valid Call-ID is accepted"));
    headers
        .push_top_via(b"SIP/2.0/UDP 198.18.1.1:5060;branch=z9hG4bKfuzz")
        .expect("a valid Via is accepted");
    headers.remove_all(&HeaderName::UserAgent);
    assert_print_reparses(&message);
}
