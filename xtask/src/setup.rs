//! `cargo xtask setup`: installs everything the project builds and runs with, idempotently.
//!
//! Fast path: one `dpkg-query`, a few `rustup` queries and `bpf-linker --version`; nothing is
//! installed or downloaded when all is present. Every other command that needs the toolchain or
//! the lab tools calls [`ensure`] first.

use crate::cmd::{output, run, succeeds};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages the project uses, and what for.
const PACKAGES: &[(&str, &str)] = &[
    ("build-essential", "C linker and libc headers for cargo"),
    ("pkg-config", "build scripts that look for system libraries"),
    ("iproute2", "lab namespaces and veth pairs (`ip`)"),
    ("ethtool", "lab: checksum offload off on veths"),
    ("tcpdump", "captures while debugging the lab"),
    ("tshark", "decoding SIP/RTP captures"),
    ("sip-tester", "SIPp scenarios (loadtest, tests)"),
    (
        "socat",
        "tests: TLS bridge for SIPp (Debian's SIPp is built without OpenSSL, so no `-t l1`)",
    ),
    (
        "rtpengine-daemon",
        "the peer the relay benchmark compares against",
    ),
    ("kamailio", "the SIP proxy peer in comparisons"),
    ("baresip", "a real SIP client for end-to-end tests"),
    ("bpftool", "inspecting loaded programs and maps"),
    ("linux-perf", "profiling benchmarks"),
];

/// Where bpf-linker finds the nightly toolchain's LLVM; its binary keeps an rpath to `lib/` here.
const LLVM_PREFIX: &str = "/opt/sipveil/llvm";

/// What [`ensure`] must cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Needs {
    /// Packages, Rust toolchains, bpf-linker.
    Build,
    /// [`Needs::Build`] plus cargo-fuzz.
    BuildAndFuzz,
}

/// Installs what is missing; prints each action. Safe to run any number of times.
pub fn ensure(needs: Needs) -> Result<()> {
    packages()?;
    rust_components()?;
    bpf_linker()?;
    if needs == Needs::BuildAndFuzz {
        cargo_fuzz()?;
    }
    lab_certs()?;
    Ok(())
}

/// The lab configurations (edge/lab*.toml) read their TLS certificate and key from
/// [`crate::certs::DEFAULT_CERT_DIR`], which lives on tmpfs: make them when they are missing
/// (never replaced when present; `cargo xtask certs` makes new ones).
fn lab_certs() -> Result<()> {
    let dir = Path::new(crate::certs::DEFAULT_CERT_DIR);
    let present = ["ca.pem", "edge.pem", "edge.key"]
        .iter()
        .all(|name| dir.join(name).is_file());
    if present {
        println!("setup: lab certificates present in {}", dir.display());
        return Ok(());
    }
    let bundle = crate::certs::generate(&crate::certs::EDGE_SANS)
        .context("generating the lab certificates")?;
    match crate::certs::write(&bundle, dir) {
        Ok(files) => {
            println!(
                "setup: made a throwaway CA and edge certificate for the lab: {}, {}, {}",
                files.ca.display(),
                files.cert.display(),
                files.key.display()
            );
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            println!(
                "setup: cannot write {} ({error}): run `cargo xtask certs` as root before the lab",
                dir.display()
            );
            Ok(())
        }
        Err(error) => Err(error).with_context(|| format!("writing into {}", dir.display())),
    }
}

fn package_installed(name: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]))
        .map(|status| status.contains("install ok installed"))
        .unwrap_or(false)
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !package_installed(name))
        .collect();
    if missing.is_empty() {
        println!("setup: Debian packages present");
        return Ok(());
    }
    println!("setup: installing Debian packages: {}", missing.join(" "));
    for (name, why) in PACKAGES.iter().filter(|(name, _)| missing.contains(name)) {
        println!("setup:   {name}: {why}");
    }
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))?;
    Ok(())
}

fn rustup_lines(args: &[&str]) -> Result<Vec<String>> {
    Ok(output(Command::new("rustup").args(args))?
        .lines()
        .map(str::to_owned)
        .collect())
}

fn rust_components() -> Result<()> {
    let toolchains = rustup_lines(&["toolchain", "list"])?;
    if !toolchains.iter().any(|line| line.starts_with("nightly-")) {
        println!("setup: installing the nightly toolchain (eBPF builds need it)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let nightly = rustup_lines(&["component", "list", "--installed", "--toolchain", "nightly"])?;
    if !nightly.iter().any(|line| line.starts_with("rust-src")) {
        println!("setup: adding rust-src to nightly (-Z build-std=core for bpfel-unknown-none)");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    // `cargo xtask test` runs fmt and clippy with the default toolchain.
    let default = rustup_lines(&["component", "list", "--installed"])?;
    for component in ["rustfmt", "clippy"] {
        if !default.iter().any(|line| line.starts_with(component)) {
            println!("setup: adding {component} to the default toolchain");
            run(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    println!("setup: Rust toolchains present (stable default, nightly with rust-src)");
    Ok(())
}

fn cargo_home_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin").join(name)
}

fn bpf_linker_works() -> bool {
    succeeds(Command::new("bpf-linker").arg("--version"))
        || succeeds(Command::new(cargo_home_bin("bpf-linker")).arg("--version"))
}

/// The nightly toolchain's libLLVM files (`libLLVM.so.22.1-rust-…`, `libLLVM-22-rust-….so`).
fn nightly_libllvm() -> Result<Vec<PathBuf>> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let path = entry?.path();
        let is_llvm = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("libLLVM"));
        if is_llvm {
            found.push(path);
        }
    }
    if found.is_empty() {
        bail!(
            "no libLLVM* in {}: is the nightly toolchain complete?",
            lib.display()
        );
    }
    found.sort();
    Ok(found)
}

/// The LLVM major version in a name like `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn llvm_major(libs: &[PathBuf]) -> Option<u32> {
    libs.iter().find_map(|path| {
        let name = path.file_name()?.to_str()?;
        let version = name
            .strip_prefix("libLLVM.so.")
            .or_else(|| name.strip_prefix("libLLVM-"))?;
        let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}

/// Links every nightly libLLVM file into `LLVM_PREFIX/lib` under its own name (bpf-linker is
/// linked against the versioned soname) and as `libLLVM.so` (what its build script looks for).
fn link_libllvm(libs: &[PathBuf]) -> Result<()> {
    let dir = Path::new(LLVM_PREFIX).join("lib");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let soname = libs
        .iter()
        .find(|path| path.to_string_lossy().contains("libLLVM.so."))
        .unwrap_or(&libs[0]);
    let mut links: Vec<(PathBuf, &PathBuf)> = libs
        .iter()
        .filter_map(|lib| lib.file_name().map(|name| (dir.join(name), lib)))
        .collect();
    links.push((dir.join("libLLVM.so"), soname));
    for (link, target) in links {
        if std::fs::read_link(&link).is_ok_and(|current| &current == target) {
            continue;
        }
        println!("setup: ln -sf {} {}", target.display(), link.display());
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        std::os::unix::fs::symlink(target, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    if bpf_linker_works() {
        println!("setup: bpf-linker works");
        return Ok(());
    }
    let libs = nightly_libllvm()?;
    link_libllvm(&libs)?;
    // An installed bpf-linker that only lost its LLVM library works again now.
    if bpf_linker_works() {
        println!("setup: bpf-linker works (after linking the nightly libLLVM)");
        return Ok(());
    }
    let major = llvm_major(&libs).context("cannot tell the nightly toolchain's LLVM version")?;
    println!("setup: building bpf-linker against the nightly toolchain's LLVM {major}");
    run(Command::new("cargo")
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .args(["install", "--force", "bpf-linker", "--no-default-features"])
        .args(["--features", &format!("llvm-{major}")]))?;
    if !bpf_linker_works() {
        bail!("bpf-linker was installed but `bpf-linker --version` still fails");
    }
    Ok(())
}

fn cargo_fuzz() -> Result<()> {
    if succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        println!("setup: cargo-fuzz present");
        return Ok(());
    }
    println!("setup: installing cargo-fuzz (the bounded fuzz run of `cargo xtask test`)");
    run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_reads_both_library_names() {
        let versioned = [PathBuf::from("/x/libLLVM.so.22.1-rust-1.97.0-nightly")];
        assert_eq!(llvm_major(&versioned), Some(22));
        let dashed = [PathBuf::from("/x/libLLVM-21-rust-1.96.0-nightly.so")];
        assert_eq!(llvm_major(&dashed), Some(21));
        assert_eq!(llvm_major(&[PathBuf::from("/x/libLLVM.so")]), None);
    }
}
