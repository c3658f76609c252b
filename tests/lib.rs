//! Integration tests live in tests/tests.

/// BPF_PROG_TEST_RUN fixtures for the XDP programs (netns with routes, private bpffs, frames,
/// checksums, counters). Kept beside the tests that use it; `benches/` uses it too.
#[path = "tests/xdp_support/mod.rs"]
pub mod xdp;
