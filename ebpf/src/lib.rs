//! Shared pieces of sipveil's XDP programs (the bins `sipveil` and `sv-lab`): packet header views,
//! bounds-checked packet access, incremental checksums and the shield's SIP method classes.
//!
//! `edge/` also lists this crate as a build-dependency so cargo rebuilds the objects when these
//! sources change; that builds the library for the host as well, so nothing here may need the BPF
//! target. Every function is `#[inline(always)]`: BPF-to-BPF calls cost more than the code.
#![no_std]

pub mod csum;
pub mod packet;
pub mod sipclass;
