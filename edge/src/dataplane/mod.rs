//! The XDP data plane: embedded objects, loading, attaching, pinning, map control.
pub mod objects;
