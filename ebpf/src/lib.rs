//! The programs are binaries (`src/main.rs`); this empty library lets `edge/` list the crate as a
//! build-dependency so cargo rebuilds the object when its sources change.
#![no_std]
