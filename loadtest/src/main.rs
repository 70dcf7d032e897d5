//! `levee-loadtest`: drives a Levee broker with a scenario and reports what it measured next to
//! the machine's own limits, measured in the same run.
//!
//! Scenarios:
//! - `throughput`: produce and consume MB/s and msgs/s, ack latency per batch; with `--baseline`,
//!   a raw TCP sink and source built on the same runtime and the same client socket.
//! - `flash-sale`: a burst of buy requests drained by a pool of workers at the pace the stock
//!   allows, on Levee, Redis Streams or NATS JetStream (`--target`), with a plot of the shaved peak.
//! - `registration`: a sign-up's side effects (SMS, gift, retried on failures) done in the request
//!   against through Levee with two groups and dead letters, latency the user sees side by side.
//! - `kafka-throughput`: produce and fetch MB/s through the Kafka listener and through Levee's
//!   own protocol, same records, same run.
//! - `latency`: open-loop single messages at a fixed rate, ack and end-to-end latency measured
//!   from each message's scheduled send time; or one in flight (`--one-in-flight`), compared with
//!   a 64-byte TCP ping-pong (`--baseline`).
//!
//! Both start their own broker (the `levee` binary next to this one, or `$LEVEE_BIN`) in a
//! temporary data dir on an OS-assigned port, and stop it with SIGTERM at the end; `--broker ADDR`
//! measures a running one instead. loadtest/README.md has the commands and what they mean.

mod baseline;
mod broker;
mod common;
mod flash_sale;
mod kafka;
mod latency;
mod plot;
mod registration;
mod report;
mod target;
mod throughput;

use clap::{Parser, Subcommand};

/// Load-test driver for Levee.
#[derive(Debug, Parser)]
#[command(name = "levee-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Produce and consume throughput, optionally against raw TCP baselines.
    Throughput(throughput::ThroughputArgs),
    /// Open-loop (or one-in-flight) single-message latency, optionally against a TCP ping-pong.
    Latency(latency::LatencyArgs),
    /// A flash sale: a burst of orders shaved by a pool of workers, on Levee, Redis or NATS.
    FlashSale(Box<flash_sale::FlashSaleArgs>),
    /// Sign-up side effects done synchronously against through Levee with two groups.
    Registration(Box<registration::RegistrationArgs>),
    /// Produce and fetch MB/s through the Kafka listener against Levee's own protocol.
    KafkaThroughput(Box<kafka::KafkaThroughputArgs>),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Throughput(args) => throughput::run(args),
        Scenario::Latency(args) => latency::run(args),
        Scenario::FlashSale(args) => flash_sale::run(*args),
        Scenario::Registration(args) => registration::run(*args),
        Scenario::KafkaThroughput(args) => kafka::run(*args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
