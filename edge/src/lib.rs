//! The sipveil daemon as a library: the binary (`src/main.rs`), the tests and the benches use it.
pub mod dataplane;
