//! Property: a header field that is not on the allowlist never reaches the
//! other party, whatever its name (unknown `X-...` or any token) or value,
//! in any message of a call (INVITE, provisional and final responses,
//! ACK, re-INVITE, INFO, BYE, in both directions).

#[expect(dead_code, reason = "this file audits headers only, not identifiers")]
mod common;

use bytes::Bytes;
use common::*;
use proptest::prelude::*;
use sipveil_b2bua::{CallerIdentity, PrivacyPolicy};
use sipveil_sip::{Header, HeaderName, Request, Response};

const MARK: &str = "Qz9MarkQz9";

fn add_req(mut r: Request, name: &HeaderName, value: &str) -> Request {
    let h = Header::new(name.clone(), value.as_bytes()).expect("header");
    r.headers_mut().push(h);
    r
}

fn add_resp(mut r: Response, name: &HeaderName, value: &str) -> Response {
    let h = Header::new(name.clone(), value.as_bytes()).expect("header");
    r.headers_mut().push(h);
    r
}

/// A whole call with `name: value` added to every message either party
/// sends; returns (caller inbox, callee inbox).
fn call_with(name: &HeaderName, value: &str) -> (Vec<Bytes>, Vec<Bytes>) {
    let mut w = World::new(PrivacyPolicy::default());
    let invite = add_req(caller_invite(None), name, value);
    let (call, _) = w.start(invite, CallerIdentity::Anonymous, vec![target(1, "b1")]);
    assert!(call.is_some());
    let inv = w.last_to_b(0, "INVITE");
    w.b_responds(
        0,
        add_resp(callee_response(1, &inv, 180, None), name, value),
    );
    w.b_responds(
        0,
        add_resp(
            callee_response(1, &inv, 200, Some(callee_sdp(1, 1, 20000))),
            name,
            value,
        ),
    );
    let tag = String::from_utf8(w.last_response_a().to_tag().expect("tag").to_vec()).expect("utf8");
    w.caller_sends(add_req(
        caller_in_dialog("ACK", &tag, 31337, None),
        name,
        value,
    ));
    w.caller_sends(add_req(
        caller_in_dialog("INVITE", &tag, 31338, Some(caller_sdp(2, 16002, ""))),
        name,
        value,
    ));
    let re = w.last_to_b(0, "INVITE");
    w.b_responds(
        0,
        add_resp(
            callee_response(1, &re, 200, Some(callee_sdp(1, 2, 20002))),
            name,
            value,
        ),
    );
    w.caller_sends(add_req(
        caller_in_dialog("ACK", &tag, 31338, None),
        name,
        value,
    ));
    w.caller_sends(add_req(
        caller_in_dialog("INFO", &tag, 31339, None),
        name,
        value,
    ));
    let info = w.last_to_b(0, "INFO");
    w.b_responds(
        0,
        add_resp(callee_response(1, &info, 200, None), name, value),
    );
    let cid = String::from_utf8(inv.call_id().expect("cid").to_vec()).expect("utf8");
    let from = String::from_utf8(
        inv.headers()
            .get_value(&HeaderName::From)
            .expect("from")
            .to_vec(),
    )
    .expect("utf8");
    w.callee_sends(
        0,
        add_req(callee_in_dialog(1, "BYE", &from, &cid, 900), name, value),
    );
    let bye = w.last_to_a("BYE");
    w.a_responds(add_resp(caller_response(&bye, 200, None), name, value));
    assert_eq!(w.map.stats().calls, 0, "call completed");
    let b = w.inbox.b.iter().map(|(_, b)| b.clone()).collect();
    (w.inbox.a, b)
}

fn crossed(inbox: &[Bytes]) -> bool {
    inbox.iter().any(|m| {
        m.windows(MARK.len())
            .any(|x| x.eq_ignore_ascii_case(MARK.as_bytes()))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn unknown_header_names_never_cross(
        name in "[A-Za-z][A-Za-z0-9.!%*_+`'~-]{0,30}",
        before in "[ -~]{0,20}",
        after in "[ -~]{0,20}",
    ) {
        let hn = HeaderName::from_bytes(Bytes::from(name));
        prop_assume!(matches!(hn, HeaderName::Other(_)));
        let value = format!("{before}{MARK}{after}");
        let (a, b) = call_with(&hn, value.trim());
        prop_assert!(!crossed(&a), "reached the caller");
        prop_assert!(!crossed(&b), "reached the callee");
    }

    #[test]
    fn known_headers_off_the_allowlist_never_cross(
        index in 0usize..KNOWN_OFF_LIST.len(),
        before in "[ -~]{0,20}",
    ) {
        let hn = HeaderName::from_static(KNOWN_OFF_LIST[index]);
        let value = format!("{before}{MARK}");
        let (a, b) = call_with(&hn, value.trim());
        prop_assert!(!crossed(&a), "{} reached the caller", KNOWN_OFF_LIST[index]);
        prop_assert!(!crossed(&b), "{} reached the callee", KNOWN_OFF_LIST[index]);
    }
}

/// Known header fields whose values the parser does not validate and that
/// are not on the default allowlist.
const KNOWN_OFF_LIST: &[&str] = &[
    "Subject",
    "Warning",
    "Organization",
    "Date",
    "Call-Info",
    "Alert-Info",
    "Error-Info",
    "History-Info",
    "Diversion",
    "Remote-Party-ID",
    "Referred-By",
    "Refer-To",
    "Reply-To",
    "In-Reply-To",
    "Replaces",
    "P-Access-Network-Info",
    "P-Charging-Vector",
    "P-Visited-Network-ID",
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Timestamp",
    "Retry-After",
    "Accept-Language",
    "Accept-Encoding",
    "Accept-Contact",
    "Reject-Contact",
    "Request-Disposition",
    "Identity",
    "Identity-Info",
    "Reason",
    "MIME-Version",
    "Content-Disposition",
    "Content-Language",
    "SIP-ETag",
    "SIP-If-Match",
    "Flow-Timer",
    "Path",
    "Service-Route",
    "Authorization",
    "Proxy-Authorization",
    "User-Agent",
    "Server",
    "Allow-Events",
    "Min-Expires",
    "Authentication-Info",
];

#[test]
fn the_harness_detects_a_crossing_header() {
    // Guard against a vacuous property: an allowlisted header does cross.
    let (a, b) = call_with(&HeaderName::Priority, MARK);
    assert!(crossed(&a) && crossed(&b));
}
