//! Command-line interface (CONTRACT.md, "CLI"): `serve` runs the broker; every other command is a
//! client of a running broker (`--broker`, env `LEVEE_BROKER`).
//!
//! This module parses and prints; the work is the library's.

#[cfg(feature = "broker")]
mod serve;

use clap::{Parser, Subcommand};

/// Levee: a single-node message broker that takes a flood and releases it at the pace consumers hold.
#[derive(Debug, Parser)]
#[command(name = "levee", version, about, propagate_version = true)]
pub struct Cli {
    /// Broker address for client commands.
    #[arg(
        long,
        global = true,
        env = "LEVEE_BROKER",
        default_value = "127.0.0.1:7070"
    )]
    pub broker: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    #[cfg(feature = "broker")]
    Serve(serve::ServeArgs),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        #[cfg(feature = "broker")]
        Command::Serve(args) => serve::run(args),
    }
}
