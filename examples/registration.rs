//! The registration story, end to end.
//!
//! The sign-up handler publishes `user.registered` once and returns as soon as the event is
//! durably enqueued (its latency is printed). Two teams consume every event at their own pace,
//! each as its own consumer group: `sms` (two workers) sends a welcome SMS, `gift` (one worker)
//! grants a sign-up gift. Failures are injected: the SMS gateway times out once on user-3 (retried,
//! then sent), rejects user-7's number every time (three deliveries, then the dead-letter topic),
//! and the gift inventory is locked twice for user-11 (sent on the third delivery). A month later a
//! third team, `analytics`, subscribes and reads every event without the producer changing.
//!
//! ```text
//! cargo run --example registration                          # starts a broker of its own
//! LEVEE_BROKER=127.0.0.1:7070 cargo run --example registration   # or uses a running one
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use levee::client::{
    Client, ClientConfig, ConsumedRecord, ConsumerConfig, GroupConsumerConfig, ProducerConfig,
    ProducerRecord,
};
use levee::protocol::{Acks, NackOutcome, TopicConfig};

const USERS: usize = 20;
const RETRY_AFTER: Duration = Duration::from_millis(300);

/// What happened to one event in one group.
#[derive(Default, Clone)]
struct Fate {
    /// The errors of the failed deliveries, in order.
    failures: Vec<String>,
    /// `Some(delivery)` once handled.
    done: Option<u32>,
    dead: bool,
}

impl Fate {
    fn finished(&self) -> bool {
        self.done.is_some() || self.dead
    }

    fn describe(&self, verb: &str) -> String {
        let retries = match self.failures.as_slice() {
            [] => String::new(),
            f => {
                // Repeated errors once, with a count.
                let mut distinct: Vec<(String, usize)> = Vec::new();
                for e in f {
                    match distinct.last_mut() {
                        Some((last, n)) if last == e => *n += 1,
                        _ => distinct.push((e.clone(), 1)),
                    }
                }
                let said: Vec<String> = distinct
                    .into_iter()
                    .map(|(e, n)| if n == 1 { e } else { format!("{e} ×{n}") })
                    .collect();
                format!(
                    " after {} ({})",
                    plural(f.len(), "failure"),
                    said.join("; ")
                )
            }
        };
        match (self.done, self.dead) {
            (_, true) => format!("DEAD LETTER{retries}"),
            (Some(d), _) => format!("{verb} on delivery {d}{retries}"),
            (None, _) => format!("unfinished{retries}"),
        }
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

type Fates = Arc<Mutex<BTreeMap<String, Fate>>>;

/// The injected failures: what a team's side effect does on a given delivery.
fn side_effect(group: &str, user: &str, delivery: u32) -> Result<(), String> {
    match (group, user, delivery) {
        ("sms", "user-3", 1) => Err("SMS gateway timed out".into()),
        ("sms", "user-7", _) => Err("SMS gateway rejected the number".into()),
        ("gift", "user-11", 1 | 2) => Err("gift inventory locked".into()),
        _ => Ok(()),
    }
}

/// One worker of `group`: processes, nacks failures, commits after each batch.
fn worker(
    addr: String,
    group: String,
    topic: String,
    fates: Fates,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let client = Client::connect(&addr, ClientConfig::default())?;
    let mut config = GroupConsumerConfig::new(&group, [&topic]);
    config.session_timeout_ms = 6_000;
    config.heartbeat_interval_ms = 500;
    config.max_wait_ms = 100;
    let mut consumer = client.group_consumer(config)?;
    let team = group.split('-').next().unwrap_or_default().to_string();
    while !stop.load(Ordering::Relaxed) {
        let records = consumer.poll(Duration::from_millis(100))?;
        for r in &records {
            let user = String::from_utf8_lossy(&r.value).into_owned();
            let delivery = r.delivery();
            match side_effect(&team, &user, delivery) {
                Ok(()) => fates.lock().unwrap().entry(user).or_default().done = Some(delivery),
                Err(e) => {
                    let outcome = consumer.nack(r, RETRY_AFTER, &e)?;
                    let mut fates = fates.lock().unwrap();
                    let fate = fates.entry(user).or_default();
                    fate.failures.push(e);
                    fate.dead = outcome == NackOutcome::DeadLettered;
                }
            }
        }
        if !records.is_empty() {
            consumer.commit()?;
        }
    }
    consumer.close()?;
    Ok(())
}

fn header(r: &ConsumedRecord, name: &str) -> String {
    r.header(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    // A broker of our own, unless one is named.
    let _dir;
    let _broker;
    let (addr, suffix) = match std::env::var("LEVEE_BROKER") {
        Ok(addr) => {
            // Names of their own on a shared broker: a run never reads another run's events.
            let run = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis();
            (addr, format!("-{run}"))
        }
        Err(_) => {
            _dir = tempfile::tempdir()?;
            let config = levee::config::BrokerConfig {
                data_dir: _dir.path().to_owned(),
                listen: "127.0.0.1:0".parse()?,
                metrics_listen: "127.0.0.1:0".parse()?,
                shards: 2,
                pin_cpus: false,
                log_level: "warn".into(),
                ..levee::config::BrokerConfig::default()
            };
            let broker = levee::server::Broker::start(config).context("starting a broker")?;
            let addr = broker.listen.to_string();
            _broker = broker;
            (addr, String::new())
        }
    };
    let topic = format!("user.registered{suffix}");
    let client = Client::connect(&addr, ClientConfig::default())?;
    client.create_topic(
        &topic,
        TopicConfig {
            partitions: 4,
            retention_bytes: None,
            retention_ms: None,
            visibility: None,
            ..Default::default()
        },
    )?;
    println!("broker {addr}; topic {topic} (4 partitions)\n");

    // The teams start first, as they would in production.
    let stop = Arc::new(AtomicBool::new(false));
    let mut fates: BTreeMap<&str, Fates> = BTreeMap::new();
    let mut workers = Vec::new();
    for (team, count) in [("sms", 2), ("gift", 1)] {
        let f: Fates = Arc::default();
        fates.insert(team, f.clone());
        for _ in 0..count {
            let (addr, group, topic, f, stop) = (
                addr.clone(),
                format!("{team}{suffix}"),
                topic.clone(),
                f.clone(),
                stop.clone(),
            );
            workers.push(std::thread::spawn(move || {
                worker(addr, group, topic, f, stop)
            }));
        }
    }

    // The sign-up handler: one durable, idempotent enqueue per registration, then return.
    let producer = client.producer(ProducerConfig {
        acks: Acks::Durable,
        linger_ms: 0,
        idempotent: true,
        ..ProducerConfig::default()
    })?;
    let mut latency = Histogram::<u64>::new(3)?;
    let mut handler_us = BTreeMap::new();
    println!("sign-up handler (returns after the durable enqueue):");
    for i in 0..USERS {
        let user = format!("user-{i}");
        let started = Instant::now();
        let meta = producer
            .send(ProducerRecord::new(&topic, user.clone()).with_key(user.clone().into_bytes()))
            .wait()?;
        let us = started.elapsed().as_micros() as u64;
        latency.record(us)?;
        handler_us.insert(user.clone(), us);
        println!(
            "  {user:<8} enqueued at partition {} offset {} in {us} µs",
            meta.partition,
            meta.offset.unwrap_or_default()
        );
    }
    producer.close();
    println!(
        "  handler latency: p50 {} µs, p99 {} µs, max {} µs\n",
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99),
        latency.max()
    );

    // Wait until both teams have a final fate for every event.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let finished = fates.values().all(|f| {
            let f = f.lock().unwrap();
            f.len() == USERS && f.values().all(Fate::finished)
        });
        if finished {
            break;
        }
        if Instant::now() > deadline {
            bail!("the teams did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }

    println!("what happened to every event:");
    println!("  {:<8} {:>9}  {:<58} gift", "event", "handler", "sms");
    let (sms, gift) = (fates["sms"].lock().unwrap(), fates["gift"].lock().unwrap());
    for i in 0..USERS {
        let user = format!("user-{i}");
        println!(
            "  {user:<8} {:>6} µs  {:<58} {}",
            handler_us[&user],
            sms[&user].describe("sent"),
            gift[&user].describe("granted")
        );
    }

    // The dead letter, with its origin and history in headers.
    let dlq = format!("__dlq.sms{suffix}");
    let mut parked = client.consumer(ConsumerConfig {
        max_wait_ms: 100,
        ..ConsumerConfig::new(&dlq)
    })?;
    println!("\ndead letters of group sms{suffix} (topic {dlq}):");
    let mut found = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while found == 0 && Instant::now() < deadline {
        for r in parked.poll(Duration::from_millis(100))? {
            found += 1;
            println!(
                "  {} from {}/{} offset {}: {} deliveries, last error \"{}\"",
                String::from_utf8_lossy(&r.value),
                header(&r, "levee.topic"),
                header(&r, "levee.partition"),
                header(&r, "levee.offset"),
                header(&r, "levee.deliveries"),
                header(&r, "levee.error"),
            );
        }
    }
    println!("  (replay them to that group with `levee dlq replay sms{suffix}`)");

    // A month later: a new team subscribes; the producer does not change a line.
    let mut config = GroupConsumerConfig::new(format!("analytics{suffix}"), [&topic]);
    config.max_wait_ms = 100;
    let mut analytics = client.group_consumer(config)?;
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen < USERS && Instant::now() < deadline {
        seen += analytics.poll(Duration::from_millis(100))?.len();
    }
    analytics.commit()?;
    analytics.close()?;
    println!("\nanalytics subscribed afterwards and read {seen} of {USERS} events from the start");
    if found != 1 || seen != USERS {
        bail!("expected one dead letter and {USERS} events for analytics");
    }
    Ok(())
}
