//! Bare metal: `cargo xtask run`, `unload` and `bench` on the host's own interfaces.

use crate::cmd::{output, run as run_cmd};
use crate::workspace::{release_binaries, target_dir};
use anyhow::{Context, Result, bail};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

/// Builds (release) and runs `sipveil run --config FILE` in the foreground.
pub fn run(iface: &str, config: Option<PathBuf>) -> Result<()> {
    let binaries = release_binaries()?;
    let config = match config {
        Some(config) => config,
        None => write_config(iface)?,
    };
    println!(
        "run: Ctrl-C stops the daemon; the XDP program and its flows stay until `cargo xtask unload`"
    );
    run_cmd(
        Command::new(&binaries.sipveil)
            .arg("run")
            .arg("--config")
            .arg(&config),
    )
}

/// `sipveil unload --instance INSTANCE [--iface IFACE]`.
pub fn unload(iface: Option<&str>, instance: &str) -> Result<()> {
    let binaries = release_binaries()?;
    let mut cmd = Command::new(&binaries.sipveil);
    cmd.args(["unload", "--instance", instance]);
    if let Some(iface) = iface {
        cmd.args(["--iface", iface]);
    }
    run_cmd(&mut cmd)
}

/// Builds (release) and runs the benchmark harness `name` (`sv-bench-relay`,
/// `sv-bench-register`) from the release directory with `args`.
pub fn bench_harness(name: &str, args: &[String]) -> Result<()> {
    let binaries = release_binaries()?;
    let harness = binaries
        .sv_rtp
        .parent()
        .context("no release directory")?
        .join(name);
    if !harness.exists() {
        bail!(
            "{} was not built (loadtest has no {name} yet)",
            harness.display()
        );
    }
    run_cmd(Command::new(harness).args(args))
}

/// The first IPv4 address of `iface`.
fn ipv4_of(iface: &str) -> Result<Ipv4Addr> {
    let text = output(Command::new("ip").args(["-o", "-4", "addr", "show", "dev", iface]))?;
    text.split_whitespace()
        .skip_while(|word| *word != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|addr| addr.parse().ok())
        .with_context(|| format!("{iface} has no IPv4 address: give a --config"))
}

/// A configuration for one interface: relay on its first IPv4 address, instance `default`.
fn write_config(iface: &str) -> Result<PathBuf> {
    let addr = ipv4_of(iface)?;
    let path = target_dir()?.join(format!("sipveil-{iface}.toml"));
    let text = format!(
        "# written by `cargo xtask run --iface {iface}`\n\
         [dataplane]\n\
         interfaces = [\"{iface}\"]\n\
         xdp = \"auto\"\n\
         instance = \"default\"\n\
         \n\
         [media]\n\
         port_min = 30000\n\
         port_max = 39999\n\
         addresses = [\"{addr}\"]\n"
    );
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("run: wrote {}", path.display());
    Ok(path)
}
