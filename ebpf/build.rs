use which::which;

/// Re-run when bpf-linker changes (aya-template does the same): a rebuilt linker must rebuild us.
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
