//! What each client-side flow-control knob does, measured: tuning.md's "Flow control" quotes
//! this example's output.
//!
//! A topic with a `block` backlog of 2 000 messages per partition and one group member that
//! drains it at about 3 000 messages/s (it sleeps 25 ms after each poll of at most 100 records,
//! then commits). A producer offers 30 000 messages of 256 bytes as fast as `send` returns:
//!
//! - `max_block_ms` 60 000 (the default) against 300: how many sends fail with `Throttled`
//!   instead of waiting, and how long the run takes;
//! - `buffer_bytes` 64 MiB (the default) against 256 KiB: how long the caller is held inside
//!   `send` (the flood waits in the caller's thread instead of the producer's buffer);
//!
//! and a group member that polls for 2 s without committing, with `max_uncommitted` 100 000 (the
//! default) against 500: how many records it takes in hand that nothing has committed.
//!
//! ```text
//! cargo run --release --example flow_knobs
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use levee::client::{
    Client, ClientConfig, ClientError, GroupConsumerConfig, ProducerConfig, ProducerRecord,
};
use levee::protocol::{Acks, Backlog, BacklogPolicy, TopicConfig};

const MESSAGES: usize = 30_000;
const VALUE_BYTES: usize = 256;
const BACKLOG: u64 = 2_000;

fn bounded_topic(client: &Client, name: &str) -> anyhow::Result<()> {
    client.create_topic(
        name,
        TopicConfig {
            partitions: 1,
            backlog: Backlog {
                messages_max: Some(BACKLOG),
                bytes_max: None,
                policy: Some(BacklogPolicy::Block),
            },
            ..TopicConfig::default()
        },
    )?;
    Ok(())
}

/// A group member that drains `topic` at its own pace until `stop`.
fn slow_worker(addr: String, topic: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let client = Client::connect(&addr, ClientConfig::default()).expect("connect");
        let mut member = client
            .group_consumer(GroupConsumerConfig {
                fetch_max_bytes: 100 * 300,
                max_wait_ms: 100,
                ..GroupConsumerConfig::new(format!("{topic}-workers"), [topic.as_str()])
            })
            .expect("join");
        while !stop.load(Ordering::Relaxed) {
            if let Ok(records) = member.poll(Duration::from_millis(200)) {
                if !records.is_empty() {
                    std::thread::sleep(Duration::from_millis(25));
                    let _ = member.commit();
                }
            }
        }
        let _ = member.close();
    })
}

struct Offered {
    acked: usize,
    throttled: usize,
    failed: usize,
    in_send: Duration,
    longest_send: Duration,
    took: Duration,
}

/// Offers `MESSAGES` to `topic` as fast as `send` returns.
fn offer(addr: &str, topic: &str, config: ProducerConfig) -> anyhow::Result<Offered> {
    let client = Client::connect(addr, ClientConfig::default())?;
    let producer = client.producer(config)?;
    let value = vec![b'v'; VALUE_BYTES];
    let start = Instant::now();
    let mut futures = Vec::with_capacity(MESSAGES);
    let (mut in_send, mut longest_send) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..MESSAGES {
        let t = Instant::now();
        futures.push(producer.send(ProducerRecord::new(topic, value.clone())));
        let held = t.elapsed();
        in_send += held;
        longest_send = longest_send.max(held);
    }
    let mut o = Offered {
        acked: 0,
        throttled: 0,
        failed: 0,
        in_send,
        longest_send,
        took: Duration::ZERO,
    };
    for f in futures {
        match f.wait() {
            Ok(_) => o.acked += 1,
            Err(ClientError::Throttled { .. }) => o.throttled += 1,
            Err(_) => o.failed += 1,
        }
    }
    o.took = start.elapsed();
    producer.close();
    Ok(o)
}

fn run_producer_case(addr: &str, name: &str, config: ProducerConfig) -> anyhow::Result<()> {
    let client = Client::connect(addr, ClientConfig::default())?;
    let topic: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    bounded_topic(&client, &topic)?;
    let stop = Arc::new(AtomicBool::new(false));
    let worker = slow_worker(addr.to_string(), topic.clone(), stop.clone());
    let o = offer(addr, &topic, config)?;
    stop.store(true, Ordering::Relaxed);
    worker.join().ok();
    println!(
        "{name:<28} acked {:>6}  failed Throttled {:>6}  failed otherwise {:>3}  run {:>5.1} s  caller held in send {:>5.1} s (longest {:>6.0} ms)",
        o.acked,
        o.throttled,
        o.failed,
        o.took.as_secs_f64(),
        o.in_send.as_secs_f64(),
        o.longest_send.as_secs_f64() * 1e3
    );
    Ok(())
}

fn run_uncommitted_case(addr: &str, bound: u64) -> anyhow::Result<()> {
    let client = Client::connect(addr, ClientConfig::default())?;
    let topic = format!("in-hand-{bound}");
    client.create_topic(&topic, TopicConfig::default())?;
    let producer = client.producer(ProducerConfig::default())?;
    let value = vec![b'w'; VALUE_BYTES];
    let futures: Vec<_> = (0..MESSAGES)
        .map(|_| producer.send(ProducerRecord::new(&topic, value.clone())))
        .collect();
    for f in futures {
        f.wait().context("filling the topic")?;
    }
    producer.close();
    let mut member = client.group_consumer(GroupConsumerConfig {
        max_uncommitted: bound,
        ..GroupConsumerConfig::new(format!("{topic}-workers"), [topic.as_str()])
    })?;
    let end = Instant::now() + Duration::from_secs(2);
    let mut in_hand = 0;
    while Instant::now() < end {
        in_hand += member.poll(Duration::from_millis(200))?.len();
    }
    member.close()?;
    println!(
        "max_uncommitted {bound:<7} records taken in 2 s without a commit: {in_hand} of {MESSAGES} stored"
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = levee::config::BrokerConfig {
        data_dir: dir.path().to_owned(),
        listen: "127.0.0.1:0".parse()?,
        metrics_listen: "127.0.0.1:0".parse()?,
        shards: 2,
        pin_cpus: false,
        log_level: "warn".into(),
        ..levee::config::BrokerConfig::default()
    };
    let broker = levee::server::Broker::start(config).context("starting a broker")?;
    let addr = broker.listen.to_string();
    println!(
        "{MESSAGES} messages of {VALUE_BYTES} B offered to a `block` backlog of {BACKLOG}, drained at ~3 000/s:"
    );
    let base = ProducerConfig {
        acks: Acks::Written,
        ..ProducerConfig::default()
    };
    run_producer_case(&addr, "max_block_ms=60000", base.clone())?;
    run_producer_case(
        &addr,
        "max_block_ms=300",
        ProducerConfig {
            max_block_ms: 300,
            ..base.clone()
        },
    )?;
    run_producer_case(
        &addr,
        "buffer_bytes=256KiB",
        ProducerConfig {
            buffer_bytes: 256 << 10,
            batch_bytes: 64 << 10,
            ..base
        },
    )?;
    println!();
    run_uncommitted_case(&addr, 100_000)?;
    run_uncommitted_case(&addr, 500)?;
    drop(broker);
    Ok(())
}
