//! `cargo xtask …`: the project's automation (see README.md).
#[expect(
    dead_code,
    reason = "shared with the SIP end-to-end tests, which use the in-memory bundle"
)]
mod certs;
mod cmd;
mod demo;
#[path = "../../loadtest/src/lab.rs"]
#[expect(
    dead_code,
    reason = "the lab module is shared with tests and benches; xtask uses part of it"
)]
mod lab;
mod metal;
mod setup;
mod test;
mod workspace;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "sipveil automation")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the project needs (Debian packages, nightly + rust-src, bpf-linker, cargo-fuzz).
    Setup,
    /// Setup, then build the workspace in release mode (the eBPF objects are embedded in `sipveil`).
    Build,
    /// The lab namespaces of docs/contracts.md.
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
    /// Bare metal: build and run `sipveil run` on an interface (foreground; Ctrl-C stops the
    /// daemon, the XDP program stays attached until `cargo xtask unload`).
    Run {
        #[arg(long)]
        iface: String,
        /// Configuration file (default: one written for IFACE with its first IPv4 address).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Bare metal: detach and unpin (`sipveil unload`).
    Unload {
        /// Only this interface's link (default: everything of the instance).
        #[arg(long)]
        iface: Option<String>,
        #[arg(long, default_value = "default")]
        instance: String,
    },
    /// Lab up, daemon with XDP, a callee registers a nickname, an anonymous caller calls it
    /// through the edge, RTP both ways, hang up, summary with the leak audit; lab torn down after.
    Demo {
        /// The nickname the callee registers in open.lab.
        #[arg(long, default_value = "sunny")]
        nickname: String,
        /// Seconds of RTP.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Leave the lab up at the end.
        #[arg(long)]
        keep_lab: bool,
    },
    /// A throwaway CA and an edge certificate for the lab (SANs: edge.lab, open.lab, auth.lab,
    /// closed.lab, 198.18.1.1, 198.18.0.1, 127.0.0.1): OUT/ca.pem, OUT/edge.pem (chain),
    /// OUT/edge.key. Never for production.
    Certs {
        #[arg(long, default_value = certs::DEFAULT_CERT_DIR)]
        out: PathBuf,
    },
    /// Build in release mode and run a benchmark harness: `bench register ARGS` runs
    /// `sv-bench-register ARGS`, `bench calls ARGS` runs `sv-bench-calls ARGS` (`--quick` for a
    /// smoke run), `bench flood [--quick]` runs `sv-bench-flood` (goodput under a SIP flood,
    /// sipveil's XDP shield vs Kamailio pike), `bench ARGS` otherwise runs the relay harness `sv-bench-relay`.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The whole check as CI runs it: setup, fmt, clippy, tests, bounded fuzzing; prints
    /// `N passed, N failed, N skipped`.
    Test,
}

#[derive(Subcommand)]
enum LabAction {
    /// Build the lab (a no-op when a lab of that shape is up; another shape is replaced).
    Up {
        #[arg(long, default_value = "two-arm")]
        shape: lab::Shape,
        /// A `sipveil` binary to attach the peers' XDP program with (default: build it).
        #[arg(long)]
        sipveil: Option<PathBuf>,
    },
    /// Delete the lab namespaces and the lab's pins.
    Down,
    /// Show what exists of the lab.
    Status,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::ensure(setup::Needs::BuildAndFuzz),
        Task::Build => {
            setup::ensure(setup::Needs::Build)?;
            // The default members: the eBPF crate builds only for bpfel-unknown-none, through
            // edge/build.rs (its object is embedded in `sipveil`); `--workspace` would build its
            // binaries for the host too, which cannot link (their own panic handler).
            cmd::run(workspace::cargo().args(["build", "--release"]))
        }
        Task::Lab { action } => lab_command(action),
        Task::Run { iface, config } => metal::run(&iface, config),
        Task::Unload { iface, instance } => metal::unload(iface.as_deref(), &instance),
        Task::Demo {
            nickname,
            seconds,
            keep_lab,
        } => demo::run_demo(demo::Options {
            nickname,
            seconds,
            keep_lab,
        }),
        Task::Certs { out } => write_certs(&out),
        Task::Bench { args } => match args.split_first() {
            Some((first, rest)) if first == "register" => {
                metal::bench_harness("sv-bench-register", rest)
            }
            Some((first, rest)) if first == "calls" => metal::bench_harness("sv-bench-calls", rest),
            Some((first, rest)) if first == "flood" => metal::bench_harness("sv-bench-flood", rest),
            _ => metal::bench_harness("sv-bench-relay", &args),
        },
        Task::Test => test::run(),
    }
}

fn write_certs(out: &std::path::Path) -> Result<()> {
    use anyhow::Context;
    let bundle = certs::generate(&certs::EDGE_SANS).context("generating the certificates")?;
    let files =
        certs::write(&bundle, out).with_context(|| format!("writing into {}", out.display()))?;
    println!(
        "certs: CA {}, edge certificate {} (SANs: {}), key {}",
        files.ca.display(),
        files.cert.display(),
        certs::EDGE_SANS.join(", "),
        files.key.display()
    );
    Ok(())
}

fn lab_command(action: LabAction) -> Result<()> {
    match action {
        LabAction::Up { shape, sipveil } => {
            let sipveil = match sipveil {
                Some(path) => path,
                None => workspace::release_binaries()?.sipveil,
            };
            let outcome = lab::Lab::up(shape, &sipveil)?;
            print!("{}", lab::Lab::status()?);
            println!("lab {shape}: {outcome:?}");
        }
        LabAction::Down => {
            lab::Lab::down()?;
            println!("lab: down");
        }
        LabAction::Status => print!("{}", lab::Lab::status()?),
    }
    Ok(())
}
