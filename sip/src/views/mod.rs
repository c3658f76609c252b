//! Typed views over raw header values, built on demand from slices of the
//! message (no copies; only list-returning helpers allocate a `Vec`).

mod auth;
mod misc;
mod name_addr;
mod via;

pub use auth::{Auth, AuthParams};
pub(crate) use misc::check_call_id;
pub use misc::{
    CSeq, MediaType, Privacy, ProductItem, parse_allow, parse_call_id, parse_content_length,
    parse_expires, parse_max_forwards, parse_products, parse_token_list,
};
pub use name_addr::{Contact, NameAddr, parse_delta_seconds, parse_qvalue};
pub(crate) use via::scan as scan_via;
pub use via::{Transport, Via};
