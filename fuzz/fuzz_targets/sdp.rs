//! SDP: parsing never panics; accepted input prints back byte-identical; a privacy rewrite
//! prints something that re-parses to an equal description.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sipveil_sip::sdp::{ICE_ATTRIBUTES, OriginRewrite, SessionDescription};

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let Ok(mut sdp) = SessionDescription::parse(body.clone()) else {
        return;
    };
    assert_eq!(
        sdp.to_bytes(),
        body,
        "unmodified SDP must print byte-identical"
    );
    // Read every typed view once: they must not panic on accepted input.
    let _ = (
        sdp.origin(),
        sdp.session_name(),
        sdp.connection(),
        sdp.direction(),
    );
    let _ = (
        sdp.timings().count(),
        sdp.bandwidths().count(),
        sdp.attributes().count(),
    );
    for media in sdp.media() {
        let _ = (
            media.port(),
            media.port_count(),
            media.proto(),
            media.formats().count(),
        );
        let _ = (
            media.rtcp(),
            media.rtcp_mux(),
            media.direction(),
            media.connection(),
        );
    }

    let address = std::net::IpAddr::from([198, 18, 1, 1]);
    let rewrite = OriginRewrite {
        username: b"-",
        session_id: b"1",
        session_version: None,
        address,
    };
    assert!(
        sdp.rewrite_origin(&rewrite).is_ok(),
        "a valid origin rewrite is accepted"
    );
    assert!(
        sdp.set_session_name(b"-").is_ok(),
        "a valid session name is accepted"
    );
    sdp.set_all_connection_addresses(address);
    sdp.drop_attributes(ICE_ATTRIBUTES);
    sdp.retain_lines(|l| b"vosctbma".contains(&l.kind()));
    for (i, media) in sdp.media_mut().enumerate() {
        let port = 40_000u16.wrapping_add(2 * i as u16);
        media.set_port(port);
        media.rewrite_rtcp(port.wrapping_add(1), Some(address));
    }
    let printed = sdp.to_bytes();
    assert_eq!(printed.len(), sdp.encoded_len());
    let reparsed = match SessionDescription::parse(printed.clone()) {
        Ok(reparsed) => reparsed,
        Err(e) => panic!("rewritten SDP does not re-parse: {e}"),
    };
    assert_eq!(
        reparsed, sdp,
        "print(rewrite(parse(x))) re-parses to an equal description"
    );
    assert_eq!(reparsed.to_bytes(), printed);
});
