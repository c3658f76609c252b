//! `cargo xtask …`: the project's automation (see README.md).
mod cmd;
mod setup;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::ensure(setup::Needs::BuildAndFuzz),
    }
}
