use which::which;

/// Re-run when bpf-linker changes (aya-template does the same): a rebuilt linker must rebuild us.
///
/// Link options for the BPF target:
/// - `--disable-expand-memcpy-in-order`: with bpf-linker's default in-order memcpy expansion, LLVM
///   sets the inline memset limit to 0, and every zeroed stack struct becomes a call to an
///   out-of-line byte loop.
///
/// Tried and rejected (measured/verified on this kernel): `+allows-misaligned-mem-access` turns the
/// byte-wise packet field loads into single loads, but LLVM then also merges stack stores into
/// misaligned wide stores, which the verifier always rejects for the stack; `+alu32` made LLVM
/// materialise every condition as a 0/1 value first (more instructions).
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
    }
}
