//! The eBPF objects built by `build.rs` (aya-build) and embedded in the binary.

/// The entry program `sipveil_entry` and its maps (ebpf bin `sipveil`).
pub static ENTRY_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sipveil"));

/// Lab and benchmark helpers: `sv_pass`, `sv_ceiling`, `sv_sink`, `sv_gen` (ebpf bin `sv-lab`).
pub static LAB_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sv-lab"));
