//! Micro benchmarks live in benches/benches.
