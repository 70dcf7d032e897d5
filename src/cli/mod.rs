//! Command-line interface (CONTRACT.md, "CLI"): `serve` runs the broker; every other command is a
//! client of a running broker (`--broker`, env `LEVEE_BROKER`).
//!
//! This module parses and prints; the work is the library's.

mod consume;
mod dlq;
mod group;
mod produce;
mod quota;
#[cfg(feature = "broker")]
mod serve;
mod stats;
mod topic;

use anyhow::Context;

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
    Serve(Box<serve::ServeArgs>),
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Produce one message per stdin line.
    Produce(produce::ProduceArgs),
    /// Print messages, one per line.
    Consume(consume::ConsumeArgs),
    /// List, describe, reset and delete consumer groups.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// List and replay dead letters.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Set, list and delete rate limits on client ids and topics.
    #[command(subcommand)]
    Quota(quota::QuotaCommand),
    /// Shards, topics, groups with lag, rates, throttles and memory, as tables.
    Stats(stats::StatsArgs),
}

/// Exits with a usage error (code 2) for a combination of flags clap cannot check.
fn usage_error(message: &str) -> ! {
    use clap::CommandFactory;
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, message)
        .exit()
}

/// Fails, naming the topic, unless it exists and has `partition` (when given): before any line is
/// read or any message printed.
fn check_partition(
    client: &levee::client::Client,
    topic: &str,
    partition: Option<u32>,
) -> anyhow::Result<()> {
    let partitions = client.partition_count(topic)?;
    if let Some(p) = partition.filter(|&p| p >= partitions) {
        anyhow::bail!("topic '{topic}' has {partitions} partitions, no partition {p}");
    }
    Ok(())
}

fn connect(broker: &str) -> anyhow::Result<levee::client::Client> {
    levee::client::Client::connect(broker, levee::client::ClientConfig::default()).with_context(
        || format!("cannot reach the broker at {broker} (set --broker or LEVEE_BROKER)"),
    )
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        #[cfg(feature = "broker")]
        Command::Serve(args) => serve::run(*args),
        Command::Topic(c) => topic::run(&connect(&cli.broker)?, c),
        Command::Produce(a) => produce::run(&connect(&cli.broker)?, a),
        Command::Consume(a) => consume::run(&connect(&cli.broker)?, a),
        Command::Group(c) => group::run(&connect(&cli.broker)?, c),
        Command::Dlq(c) => dlq::run(&connect(&cli.broker)?, c),
        Command::Quota(c) => quota::run(&connect(&cli.broker)?, c),
        Command::Stats(a) => stats::run(&connect(&cli.broker)?, a),
    }
}
