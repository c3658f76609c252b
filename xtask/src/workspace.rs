//! The workspace: where it is, building its binaries, and where cargo puts them.

use crate::cmd::{output, run};
use crate::setup;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (xtask lives in `<root>/xtask`).
pub fn root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// A `cargo` command that runs in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// cargo's target directory for this workspace (honours CARGO_TARGET_DIR and config).
pub fn target_dir() -> Result<PathBuf> {
    let metadata = output(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let metadata: serde_json::Value =
        serde_json::from_str(&metadata).context("parsing cargo metadata")?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

/// The release binaries the lab, the demo and the benchmarks run.
pub struct Binaries {
    /// The daemon (`edge/`).
    pub sipveil: PathBuf,
    /// The RTP generator/receiver (`loadtest/`).
    pub sv_rtp: PathBuf,
}

/// `cargo` arguments that build the daemon and the load tools in release mode.
pub const RELEASE_BINARIES: [&str; 7] = [
    "build",
    "--release",
    "-p",
    "sipveil-edge",
    "-p",
    "sipveil-loadtest",
    "--bins",
];

/// Runs setup (fast when all is present), builds the daemon and the load tools in release mode
/// and returns their paths.
pub fn release_binaries() -> Result<Binaries> {
    setup::ensure(setup::Needs::Build)?;
    run(cargo().args(RELEASE_BINARIES))?;
    let dir = target_dir()?.join("release");
    let binaries = Binaries {
        sipveil: dir.join("sipveil"),
        sv_rtp: dir.join("sv-rtp"),
    };
    if !binaries.sipveil.exists() {
        bail!("{} was not built", binaries.sipveil.display());
    }
    Ok(binaries)
}
