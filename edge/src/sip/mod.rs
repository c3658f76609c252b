//! The daemon's SIP side: the io_uring transport pool and the transaction user (registrar, OPTIONS,
//! later the privacy B2BUA) that runs on it.
pub mod service;
pub mod transport;
