/// Builds the XDP object (`ebpf/`) for bpfel-unknown-none and leaves it in OUT_DIR for
/// `include_bytes_aligned!`. Needs nightly with rust-src and bpf-linker: `cargo xtask setup`.
fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root_dir = format!("{manifest_dir}/../ebpf");
    let package = aya_build::Package {
        name: "sipveil-ebpf",
        root_dir: &root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
