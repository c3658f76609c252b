//! The XDP data plane: embedded objects, loading, attaching, pinning, map control.
pub mod lab;
pub mod loader;
pub mod objects;
pub mod shield;

pub use loader::{
    AttachMode, AttachedInterface, Dataplane, DataplaneError, DataplaneOptions, UnloadReport,
    pin_dir, read_pinned_counters, read_pinned_flow_count, unload,
};
pub use shield::ShieldMaps;
