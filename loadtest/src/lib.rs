//! Load generators and the relay benchmark harness.
//!
//! - [`rtp`]: the RTP packets `sv-rtp` sends (real RFC 3550 headers, a probe in the payload).
//! - [`sender`] / [`receiver`]: paced or flat-out multi-stream sending; per-stream accounting of
//!   loss, reordering, duplicates and one-way latency.
//! - [`stats`], [`hlog`]: the accounting rules and HdrHistogram interval logs.
//! - [`report`]: the JSON report of a run and the check that a run lost nothing.
//! - [`bencode`], [`rtpengine`]: rtpengine's ng control protocol (for the comparison runs).
//! - [`register`], [`register_client`], [`register_pcap`], [`sipp`], [`kamailio`]: the registrar
//!   benchmark (`sv-bench-register`): users and HA1s, a digest REGISTER client, SIPp's files,
//!   REGISTER timing from a capture, Kamailio; [`floor`]: the stateless responder whose figures
//!   bound what any registrar can show in the lab.
//! - [`lab`]: the lab namespaces of docs/contracts.md (std only; xtask includes it by path).

pub mod bench;
pub mod bencode;
pub mod calls;
pub mod clock;
pub mod flood;
pub mod floor;
pub mod hlog;
pub mod kamailio;
pub mod lab;
pub mod livegen;
pub mod net;
pub mod procs;
pub mod receiver;
pub mod register;
pub mod register_client;
pub mod register_pcap;
pub mod report;
pub mod rtp;
pub mod rtpengine;
pub mod sender;
pub mod sipp;
pub mod stats;
pub mod ua;
