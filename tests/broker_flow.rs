//! Flow control against a real broker process: a flash-sale flood into a topic whose only group
//! consumes slowly, under each backlog policy. Under `block` the producers are slowed (throttled)
//! and every acknowledged message is consumed exactly once; under `reject` they see `QueueFull`
//! and exactly the acknowledged messages are consumed; under `drop-oldest` nothing is refused
//! and what is lost is the oldest. The broker's anonymous memory stays within
//! `memory_bytes_max` throughout, and a second topic on the same shards keeps being served (its
//! figures are printed; speed is judged in loadtest, not here).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestBroker;
use levee::client::{
    Client, ClientConfig, ClientError, GroupConsumerConfig, ProducerConfig, ProducerRecord,
};
use levee::protocol::{Acks, Backlog, BacklogPolicy, ErrorCode, TopicChange, TopicConfig};

const PARTITIONS: u32 = 4;
const BACKLOG: u64 = 2_000;
const MEMORY_MAX: u64 = 96 << 20;
/// How long the producers flood.
const FLOOD: Duration = Duration::from_secs(4);

fn start(dir: &std::path::Path) -> TestBroker {
    let memory = MEMORY_MAX.to_string();
    TestBroker::start(
        dir,
        &[
            "--memory-bytes-max",
            &memory,
            // Small segments: retention and drop-oldest work in whole segments.
            "--segment-bytes",
            "262144",
            "--record-bytes-max",
            "65536",
            "--retention-check-ms",
            "100",
        ],
    )
}

fn create(client: &Client, name: &str, policy: Option<BacklogPolicy>) {
    client
        .create_topic(
            name,
            TopicConfig {
                partitions: PARTITIONS,
                // Under block and reject: retention that would delete what the slow group has
                // not read, were it not for the policy. Under drop-oldest only the policy drops.
                retention_bytes: match policy {
                    Some(BacklogPolicy::Block | BacklogPolicy::Reject) => Some(1),
                    _ => None,
                },
                backlog: Backlog {
                    messages_max: policy.map(|_| BACKLOG),
                    bytes_max: None,
                    policy,
                },
                ..TopicConfig::default()
            },
        )
        .unwrap();
}

/// What the producers saw.
#[derive(Default)]
struct Sent {
    acked: Vec<String>,
    refused: u64,
    other: u64,
}

/// Producers push as fast as the broker lets them for `FLOOD`, each with its own prefix.
fn flood(addr: &str, topic: &str, producers: usize) -> Sent {
    let sent = Arc::new(Mutex::new(Sent::default()));
    let threads: Vec<_> = (0..producers)
        .map(|t| {
            let (addr, topic, sent) = (addr.to_string(), topic.to_string(), sent.clone());
            std::thread::spawn(move || {
                let client = Client::connect(&addr, ClientConfig::default()).unwrap();
                let producer = client
                    .producer(ProducerConfig {
                        acks: Acks::Written,
                        buffer_bytes: 4 << 20,
                        batch_bytes: 64 << 10,
                        ..ProducerConfig::default()
                    })
                    .unwrap();
                let end = Instant::now() + FLOOD;
                let mut pending = Vec::new();
                let mut i = 0u64;
                while Instant::now() < end {
                    let value = format!("p{t}-{i:08}");
                    pending.push((
                        value.clone(),
                        producer.send(ProducerRecord::new(&topic, value)),
                    ));
                    i += 1;
                    if pending.len() >= 1_000 {
                        settle(&sent, &mut pending);
                    }
                }
                settle(&sent, &mut pending);
                producer.close();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    Arc::try_unwrap(sent).ok().unwrap().into_inner().unwrap()
}

fn settle(sent: &Mutex<Sent>, pending: &mut Vec<(String, levee::client::SendFuture)>) {
    let mut s = sent.lock().unwrap();
    for (value, f) in pending.drain(..) {
        match f.wait() {
            Ok(_) => s.acked.push(value),
            Err(e) if e.code() == Some(ErrorCode::QueueFull) => s.refused += 1,
            Err(ClientError::Throttled { .. }) => s.refused += 1,
            Err(e) => {
                eprintln!("send failed: {e}");
                s.other += 1;
            }
        }
    }
}

/// A slow worker of group `db`: `per_batch` pause after each poll, commits after each batch.
fn slow_group(
    addr: &str,
    topic: &str,
    stop: Arc<AtomicBool>,
    per_batch: Duration,
) -> std::thread::JoinHandle<HashMap<String, u32>> {
    let (addr, topic) = (addr.to_string(), topic.to_string());
    std::thread::spawn(move || {
        let client = Client::connect(&addr, ClientConfig::default()).unwrap();
        let mut config = GroupConsumerConfig::new("db", [&topic]);
        config.max_wait_ms = 50;
        config.fetch_max_bytes = 16 << 10;
        let mut consumer = client.group_consumer(config).unwrap();
        let mut seen: HashMap<String, u32> = HashMap::new();
        let mut last: HashMap<u32, u64> = HashMap::new();
        let mut quiet_since = Instant::now();
        loop {
            let records = consumer.poll(Duration::from_millis(50)).unwrap();
            if records.is_empty() {
                if stop.load(Ordering::Relaxed) && quiet_since.elapsed() > Duration::from_secs(2) {
                    break;
                }
                continue;
            }
            quiet_since = Instant::now();
            for r in &records {
                // Within a partition the group reads forward only, whatever was dropped.
                if let Some(before) = last.insert(r.partition, r.offset) {
                    assert!(
                        r.offset > before,
                        "partition {} went from {before} to {}",
                        r.partition,
                        r.offset
                    );
                }
                *seen
                    .entry(String::from_utf8(r.value.clone()).unwrap())
                    .or_default() += 1;
            }
            std::thread::sleep(per_batch);
            consumer.commit().unwrap();
        }
        consumer.close().unwrap();
        seen
    })
}

/// Samples the broker's RssAnon until `stop`; returns the highest.
fn watch_memory(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut max = 0;
        while !stop.load(Ordering::Relaxed) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let kb: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("RssAnon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0);
            max = max.max(kb << 10);
            std::thread::sleep(Duration::from_millis(20));
        }
        max
    })
}

/// A producer on another topic of the same shards, one message at a time: acknowledged count
/// and the slowest acknowledgement.
fn steady(
    addr: &str,
    topic: &str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, Duration)> {
    let (addr, topic) = (addr.to_string(), topic.to_string());
    std::thread::spawn(move || {
        let client = Client::connect(&addr, ClientConfig::default()).unwrap();
        let producer = client
            .producer(ProducerConfig {
                acks: Acks::Written,
                linger_ms: 0,
                ..ProducerConfig::default()
            })
            .unwrap();
        let (mut n, mut worst) = (0u64, Duration::ZERO);
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            producer
                .send(ProducerRecord::new(&topic, "tick"))
                .wait()
                .unwrap();
            worst = worst.max(t.elapsed());
            n += 1;
        }
        (n, worst)
    })
}

fn metric(broker: &TestBroker, name: &str) -> u64 {
    broker
        .http_get("/metrics")
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Runs a flood under `policy` and returns what was sent and what the group saw.
struct Run {
    sent: Sent,
    seen: HashMap<String, u32>,
    broker: TestBroker,
    _dir: tempfile::TempDir,
}

fn run(policy: BacklogPolicy) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    let addr = broker.addr.to_string();
    let client = Client::connect(&addr, ClientConfig::default()).unwrap();
    create(&client, "sale", Some(policy));
    create(&client, "other", None);
    let stop = Arc::new(AtomicBool::new(false));
    let memory = watch_memory(broker.pid(), stop.clone());
    // Alone first: the other topic's pace without a flood.
    let alone_stop = Arc::new(AtomicBool::new(false));
    let alone = steady(&addr, "other", alone_stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    alone_stop.store(true, Ordering::Relaxed);
    let (alone_n, alone_worst) = alone.join().unwrap();

    let group_stop = Arc::new(AtomicBool::new(false));
    let group = slow_group(&addr, "sale", group_stop.clone(), Duration::from_millis(5));
    let beside_stop = Arc::new(AtomicBool::new(false));
    let beside = steady(&addr, "other", beside_stop.clone());
    let started = Instant::now();
    let sent = flood(&addr, "sale", 2);
    let flood_s = started.elapsed().as_secs_f64();
    beside_stop.store(true, Ordering::Relaxed);
    let (beside_n, beside_worst) = beside.join().unwrap();
    group_stop.store(true, Ordering::Relaxed);
    let seen = group.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let rss_max = memory.join().unwrap();
    eprintln!(
        "flood ({}): {} acknowledged, {} refused, {} failed otherwise in {flood_s:.1} s; group saw {}; \
         broker RssAnon max {} MiB (memory_bytes_max {} MiB); other topic alone {alone_n}/s worst {alone_worst:?}, \
         during the flood {:.0}/s worst {beside_worst:?}",
        policy.name(),
        sent.acked.len(),
        sent.refused,
        sent.other,
        seen.len(),
        rss_max >> 20,
        MEMORY_MAX >> 20,
        beside_n as f64 / flood_s,
    );
    assert!(rss_max > 0, "RssAnon was read");
    assert!(
        rss_max <= MEMORY_MAX,
        "RssAnon {} over memory_bytes_max",
        rss_max
    );
    assert!(beside_n > 0, "the other topic was served during the flood");
    assert_eq!(sent.other, 0, "no send failed except by the policy");
    Run {
        sent,
        seen,
        broker,
        _dir: dir,
    }
}

#[test]
fn given_a_block_backlog_a_flood_should_be_throttled_and_every_acknowledged_message_consumed_once()
{
    let r = run(BacklogPolicy::Block);
    assert_eq!(r.sent.refused, 0, "block waits, it does not refuse");
    assert!(
        metric(&r.broker, "levee_backlog_throttled_total") > 0,
        "producers were throttled"
    );
    let twice: Vec<_> = r.seen.iter().filter(|(_, &n)| n > 1).take(5).collect();
    assert!(twice.is_empty(), "consumed twice: {twice:?}");
    let missing: Vec<_> = r
        .sent
        .acked
        .iter()
        .filter(|v| !r.seen.contains_key(*v))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged and never consumed (retention or loss): {missing:?}"
    );
    assert_eq!(r.seen.len(), r.sent.acked.len());
}

#[test]
fn given_a_reject_backlog_a_flood_should_see_queue_full_and_consume_exactly_what_was_acknowledged()
{
    let r = run(BacklogPolicy::Reject);
    assert!(r.sent.refused > 0, "producers saw QueueFull");
    assert!(metric(&r.broker, "levee_backlog_rejected_total") > 0);
    let mut acked = r.sent.acked.clone();
    acked.sort();
    let mut seen: Vec<String> = r.seen.keys().cloned().collect();
    seen.sort();
    assert_eq!(
        seen, acked,
        "exactly the acknowledged messages, none refused"
    );
    assert!(r.seen.values().all(|&n| n == 1), "each once");
}

#[test]
fn given_a_drop_oldest_backlog_a_flood_should_refuse_nothing_and_lose_only_the_oldest() {
    let r = run(BacklogPolicy::DropOldest);
    assert_eq!(r.sent.refused, 0);
    assert!(
        metric(&r.broker, "levee_backlog_dropped_segments_total") > 0,
        "segments were dropped"
    );
    assert!(
        r.seen.len() < r.sent.acked.len(),
        "the slow group lost some"
    );
    // What each producer's messages the group saw is, per producer, a run that ends with the
    // newest: once a message was seen, every later one of that producer was seen too, except
    // within the partitions where the group was overtaken. So check the newest ones survived.
    let mut newest: BTreeMap<&str, &str> = BTreeMap::new();
    for v in &r.sent.acked {
        let p = v.split('-').next().unwrap();
        let e = newest.entry(p).or_insert(v);
        if v.as_str() > *e {
            *e = v;
        }
    }
    for (_, v) in newest {
        assert!(r.seen.contains_key(v), "the newest message {v} survived");
    }
}

#[test]
fn given_a_topic_alter_the_backlog_policy_should_apply_without_a_restart_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = start(dir.path());
    let addr = broker.addr.to_string();
    let client = Client::connect(&addr, ClientConfig::default()).unwrap();
    create(&client, "q", None);
    // A group that committed nothing yet: the backlog counts from the log start.
    let produce = |n: usize| -> Vec<Result<(), ClientError>> {
        let producer = client
            .producer(ProducerConfig {
                acks: Acks::Written,
                linger_ms: 0,
                retries: 0,
                max_block_ms: 300,
                ..ProducerConfig::default()
            })
            .unwrap();
        let out = (0..n)
            .map(|i| {
                producer
                    .send(ProducerRecord::new("q", format!("m{i}")).with_partition(0))
                    .wait()
                    .map(drop)
            })
            .collect();
        producer.close();
        out
    };
    assert!(produce(5).iter().all(Result::is_ok));
    client
        .alter_topic(
            "q",
            &TopicChange {
                backlog: Backlog {
                    messages_max: Some(5),
                    bytes_max: None,
                    policy: Some(BacklogPolicy::Reject),
                },
                ..TopicChange::default()
            },
        )
        .unwrap();
    let refused = produce(1);
    assert_eq!(
        refused[0].as_ref().unwrap_err().code(),
        Some(ErrorCode::QueueFull)
    );
    drop(client);
    assert!(broker.stop());
    let broker = start(dir.path());
    let client = Client::connect(&broker.addr.to_string(), ClientConfig::default()).unwrap();
    let d = client.describe_topic("q").unwrap();
    assert_eq!(d.config.backlog.messages_max, Some(5));
    assert_eq!(d.config.backlog.policy, Some(BacklogPolicy::Reject));
    // Block: the send waits up to max_block_ms, then fails with the typed throttle.
    client
        .alter_topic(
            "q",
            &TopicChange {
                backlog: Backlog {
                    policy: Some(BacklogPolicy::Block),
                    ..Backlog::default()
                },
                ..TopicChange::default()
            },
        )
        .unwrap();
    let producer = client
        .producer(ProducerConfig {
            acks: Acks::Written,
            linger_ms: 0,
            max_block_ms: 300,
            ..ProducerConfig::default()
        })
        .unwrap();
    let t = Instant::now();
    let blocked = producer
        .send(ProducerRecord::new("q", "late").with_partition(0))
        .wait();
    assert!(
        matches!(blocked, Err(ClientError::Throttled { .. })),
        "{blocked:?}"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "the send waited for room"
    );
    producer.close();
}

#[test]
fn given_a_worker_that_does_not_commit_its_polls_should_stop_taking_work_at_max_uncommitted() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    let addr = broker.addr.to_string();
    let client = Client::connect(&addr, ClientConfig::default()).unwrap();
    create(&client, "jobs", None);
    let producer = client.producer(ProducerConfig::default()).unwrap();
    for i in 0..200 {
        producer.send(ProducerRecord::new("jobs", format!("j{i}")).with_partition(0));
    }
    producer.close();
    let mut config = GroupConsumerConfig::new("w", ["jobs"]);
    config.max_uncommitted = 50;
    // One fetch brings all 200: the poll must still hand out no more than the bound.
    config.max_wait_ms = 50;
    let mut worker = client.group_consumer(config).unwrap();
    let mut offsets = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while offsets.len() < 50 && Instant::now() < deadline {
        let records = worker.poll(Duration::from_millis(100)).unwrap();
        offsets.extend(records.iter().map(|r| r.offset));
    }
    assert_eq!(offsets, (0..50).collect::<Vec<u64>>(), "exactly the bound");
    for _ in 0..3 {
        assert!(
            worker.poll(Duration::from_millis(100)).unwrap().is_empty(),
            "no more work before a commit"
        );
    }
    worker.commit().unwrap();
    // What the bound held back is fetched again: nothing skipped.
    let mut next = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while next.len() < 50 && Instant::now() < deadline {
        let records = worker.poll(Duration::from_millis(200)).unwrap();
        next.extend(records.iter().map(|r| r.offset));
    }
    assert_eq!(
        next,
        (50..100).collect::<Vec<u64>>(),
        "work again after the commit"
    );
    worker.close().unwrap();
}

#[test]
fn given_a_deleted_topic_its_commits_should_not_hold_back_a_topic_created_again_under_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = start(dir.path());
    let client = Client::connect(&broker.addr.to_string(), ClientConfig::default()).unwrap();
    let one = |client: &Client, bound: Option<u64>| {
        client
            .create_topic(
                "reborn",
                TopicConfig {
                    partitions: 1,
                    backlog: Backlog {
                        messages_max: bound,
                        bytes_max: None,
                        policy: bound.map(|_| BacklogPolicy::Reject),
                    },
                    ..TopicConfig::default()
                },
            )
            .unwrap()
    };
    let produce = |client: &Client, n: u64| -> (u64, u64) {
        let producer = client
            .producer(ProducerConfig {
                linger_ms: 0,
                ..ProducerConfig::default()
            })
            .unwrap();
        let (mut ok, mut full) = (0, 0);
        for i in 0..n {
            match producer
                .send(ProducerRecord::new("reborn", format!("m{i}")).with_partition(0))
                .wait()
            {
                Ok(_) => ok += 1,
                Err(e) if e.code() == Some(ErrorCode::QueueFull) => full += 1,
                Err(e) => panic!("send: {e}"),
            }
        }
        producer.close();
        (ok, full)
    };
    let committed = |client: &Client| {
        client
            .fetch_offsets("old-readers", &[("reborn".to_string(), 0)])
            .unwrap()
            .first()
            .and_then(|o| o.offset)
    };
    one(&client, None);
    produce(&client, 100);
    client
        .commit_offsets(&levee::protocol::OffsetCommitRequest {
            group: "old-readers".into(),
            member_id: String::new(),
            generation: 0,
            offsets: vec![levee::protocol::CommitOffset {
                topic: "reborn".into(),
                partition: 0,
                offset: 100,
                metadata: String::new(),
            }],
        })
        .unwrap();
    assert_eq!(committed(&client), Some(100));
    client.delete_topic("reborn").unwrap();
    assert_eq!(committed(&client), None, "the commits went with the topic");
    // Created again with a bound of 10: a stale floor at 100 would let 100 more in.
    one(&client, Some(10));
    assert_eq!(
        produce(&client, 15),
        (10, 5),
        "bounded from the new log's start"
    );
    // And after a restart, replaying the offsets log brings nothing back.
    assert!(broker.stop());
    broker = start(dir.path());
    let client = Client::connect(&broker.addr.to_string(), ClientConfig::default()).unwrap();
    assert_eq!(committed(&client), None, "nothing came back at the restart");
    assert_eq!(
        produce(&client, 1),
        (0, 1),
        "still full: no floor came back"
    );
}
