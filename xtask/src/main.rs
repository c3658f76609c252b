//! `cargo xtask …`: the project's automation (see README.md).
mod cmd;
#[path = "../../loadtest/src/lab.rs"]
#[expect(
    dead_code,
    reason = "the lab module is shared with tests and benches; xtask uses part of it"
)]
mod lab;
mod setup;
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
    /// The lab namespaces of docs/contracts.md.
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
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
        Task::Lab { action } => lab_command(action),
    }
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
