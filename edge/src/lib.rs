//! The daemon as a library: the binary (`src/main.rs`), the tests and the benches use it.
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod media;
pub mod metrics;
pub mod relay;
pub mod shield;
pub mod sip;
pub mod store;
pub mod sys;
pub(crate) mod uring_util;
