//! `levee produce TOPIC`: one message per stdin line; exit 0 only when every line was acknowledged.

use std::collections::VecDeque;
use std::io::BufRead;

use anyhow::bail;
use levee::client::{Client, ProducerConfig, ProducerRecord, SendFuture};
use levee::protocol::Acks;

/// Sends still unanswered before the reader waits for the oldest: bounds memory on a huge stdin.
const PENDING_MAX: usize = 65_536;

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// Topic to produce to.
    topic: String,
    /// Send every message to this partition (default: by key hash, else round-robin).
    #[arg(long)]
    partition: Option<u32>,
    /// The key is what precedes this separator on each line; lines without it have no key.
    #[arg(long)]
    key_separator: Option<String>,
    /// none | written | durable.
    #[arg(long, default_value = "durable", value_parser = parse_acks)]
    acks: Acks,
}

pub fn parse_acks(s: &str) -> Result<Acks, String> {
    match s {
        "none" => Ok(Acks::None),
        "written" => Ok(Acks::Written),
        "durable" => Ok(Acks::Durable),
        _ => Err(format!(
            "invalid acks '{s}': expected none, written or durable"
        )),
    }
}

pub fn run(client: &Client, args: ProduceArgs) -> anyhow::Result<()> {
    // Fail fast, naming the topic, rather than once per line.
    super::check_partition(client, &args.topic, args.partition)?;
    let producer = client.producer(ProducerConfig {
        acks: args.acks,
        ..ProducerConfig::default()
    })?;
    let mut pending: VecDeque<SendFuture> = VecDeque::new();
    let (mut sent, mut acked, mut failed) = (0u64, 0u64, 0u64);
    let mut first_error: Option<String> = None;
    let mut settle = |f: SendFuture, acked: &mut u64, failed: &mut u64| match f.wait() {
        Ok(_) => *acked += 1,
        Err(e) => {
            *failed += 1;
            first_error.get_or_insert_with(|| e.to_string());
        }
    };
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut record = match args
            .key_separator
            .as_deref()
            .and_then(|sep| line.split_once(sep))
        {
            Some((key, value)) => {
                ProducerRecord::new(&args.topic, value.as_bytes()).with_key(key.as_bytes())
            }
            None => ProducerRecord::new(&args.topic, line.as_bytes()),
        };
        if let Some(p) = args.partition {
            record = record.with_partition(p);
        }
        pending.push_back(producer.send(record));
        sent += 1;
        if pending.len() >= PENDING_MAX {
            if let Some(f) = pending.pop_front() {
                settle(f, &mut acked, &mut failed);
            }
        }
    }
    producer.flush();
    for f in pending {
        settle(f, &mut acked, &mut failed);
    }
    producer.close();
    eprintln!(
        "produced {acked} of {sent} message(s) to {}{}",
        args.topic,
        if failed > 0 {
            format!(", {failed} failed")
        } else {
            String::new()
        }
    );
    if failed > 0 {
        bail!(
            "{failed} message(s) not acknowledged: {}",
            first_error.unwrap_or_default()
        );
    }
    Ok(())
}
