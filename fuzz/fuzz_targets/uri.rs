//! One URI: parsing never panics; an accepted URI prints as its input and print(parse(x))
//! re-parses to an equal URI; a SIP URI is equivalent to itself (RFC 3261 section 19.1.4).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sipveil_sip::{Scheme, Uri};

fn parts(u: &Uri) -> impl PartialEq + std::fmt::Debug {
    (
        u.scheme().clone(),
        u.user().cloned(),
        u.password().cloned(),
        u.host().cloned(),
        u.host_raw().clone(),
        u.port(),
        u.params()
            .iter()
            .map(|p| (p.name, p.value))
            .collect::<Vec<_>>(),
        u.headers().cloned(),
    )
}

fuzz_target!(|data: &[u8]| {
    let input = Bytes::copy_from_slice(data);
    let Ok(uri) = Uri::parse(input.clone()) else {
        return;
    };
    assert_eq!(uri.as_bytes(), &input, "a parsed URI prints as its input");
    let reparsed = match Uri::parse(uri.as_bytes().clone()) {
        Ok(u) => u,
        Err(e) => panic!("printed URI does not re-parse: {e:?}"),
    };
    assert_eq!(parts(&uri), parts(&reparsed));
    let _ = uri.user_unescaped();
    if matches!(uri.scheme(), Scheme::Sip | Scheme::Sips) {
        assert!(
            uri.equivalent(&reparsed),
            "a SIP URI is equivalent to itself"
        );
    }
});
