//! The flood shield, daemon side (issue 6): the policy engine ([`policy`]) and the userspace
//! enforcement used when XDP is off ([`limiter`]).
pub mod feed;
pub mod limiter;
pub mod policy;
pub mod runtime;

pub use limiter::{Drops, Limits, Peer, UserShield, Verdict, classify};
pub use policy::{
    Allow, Block, BlockReason, Event, Observation, Policy, PolicyConfig, PolicyError,
    ScannerPatterns, Source, Threshold,
};
pub use runtime::{Shield, ShieldPorts, xdp_config};
