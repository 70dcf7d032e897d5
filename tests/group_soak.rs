//! A consumer-group soak against a real broker: 4 member processes share 16 partitions while a
//! producer runs, and members are killed with SIGKILL and restarted at random for
//! `LEVEE_SOAK_SECS` seconds (default 60). Afterwards: every acknowledged message was processed
//! at least once; the group's committed offsets never went backwards (sampled every 50 ms);
//! and the messages processed twice are counted, and are no more than the messages members
//! processed without a commit covering them (killed before committing, or fenced by a
//! rebalance), which is what at-least-once allows.
//!
//! Members are this test binary run again (`soak_member`, ignored unless the parent starts it),
//! so a kill is a real process death: no LeaveGroup, no last commit. A member prints one
//! `@R <partition> <offset> <value>` line per message it processed, then commits, then prints
//! `@C` when the commit succeeded or `@F` when it was refused.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestBroker;
use levee::client::{
    Client, ClientConfig, GroupConsumerConfig, ProducerConfig, ProducerRecord, ResetPolicy,
};
use levee::protocol::{Acks, ErrorCode, TopicConfig};
use rand::{Rng, SeedableRng};

const TOPIC: &str = "signups";
const GROUP: &str = "sms";
const PARTITIONS: u32 = 16;
const MEMBERS: usize = 4;
/// Messages produced per second (bounded: the machine is shared).
const RATE: u64 = 1_000;
const MEMBER_ENV: &str = "LEVEE_SOAK_MEMBER";

/// What the member processes printed, merged.
#[derive(Default)]
struct Log {
    /// Times each value was processed.
    processed: HashMap<String, u32>,
    /// Messages processed that no successful commit covered.
    uncommitted: u64,
    commits: u64,
    refused: u64,
}

struct Member {
    child: Child,
    reader: std::thread::JoinHandle<()>,
}

fn spawn_member(addr: &str, log: &Arc<Mutex<Log>>) -> Member {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "soak_member",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MEMBER_ENV, addr)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn member");
    let stdout = child.stdout.take().unwrap();
    let log = log.clone();
    let reader = std::thread::spawn(move || {
        // Lines of the batch being processed, until its C or F.
        let mut batch: Vec<String> = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut log = log.lock().unwrap();
            // The harness starts the first line with `test soak_member ... `: markers are
            // found anywhere in a line.
            if let Some((_, rest)) = line.split_once("@R ") {
                let value = rest.splitn(3, ' ').nth(2).unwrap_or_default().to_string();
                *log.processed.entry(value.clone()).or_default() += 1;
                batch.push(value);
            } else if line.ends_with("@C") {
                log.commits += 1;
                batch.clear();
            } else if line.ends_with("@F") {
                log.refused += 1;
                log.uncommitted += batch.len() as u64;
                batch.clear();
            }
        }
        // Killed (or done) with a batch printed and not committed.
        log.lock().unwrap().uncommitted += batch.len() as u64;
    });
    Member { child, reader }
}

impl Member {
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
    }
}

/// The member process: joins, processes, commits; until killed (or 10 minutes, so an orphan
/// cannot outlive a crashed parent for long).
#[test]
#[ignore = "a member process of the soak test below; runs only when that test starts it"]
fn soak_member() {
    let Ok(addr) = std::env::var(MEMBER_ENV) else {
        return;
    };
    let client = Client::connect(&addr, ClientConfig::default()).unwrap();
    let mut config = GroupConsumerConfig::new(GROUP, [TOPIC]);
    config.session_timeout_ms = 2_000;
    config.heartbeat_interval_ms = 300;
    config.reset = ResetPolicy::Earliest;
    let mut consumer = client.group_consumer(config).unwrap();
    let out = std::io::stdout();
    let until = Instant::now() + Duration::from_secs(600);
    while Instant::now() < until {
        let records = match consumer.poll(Duration::from_millis(100)) {
            Ok(r) => r,
            Err(_) => continue,
        };
        if records.is_empty() {
            continue;
        }
        let mut o = out.lock();
        for r in &records {
            let value = String::from_utf8_lossy(&r.value);
            writeln!(o, "@R {} {} {value}", r.partition, r.offset).unwrap();
        }
        o.flush().unwrap();
        drop(o);
        // The work a real consumer does before committing: a kill lands in it now and then.
        std::thread::sleep(Duration::from_millis(20));
        let verdict = if consumer.commit().is_ok() {
            "@C"
        } else {
            "@F"
        };
        let mut o = out.lock();
        writeln!(o, "{verdict}").unwrap();
        o.flush().unwrap();
    }
}

#[test]
fn given_members_killed_at_random_while_producing_every_acknowledged_message_should_be_processed() {
    let secs: u64 = std::env::var("LEVEE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("LEVEE_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("soak: {secs} s, seed {seed} (LEVEE_SOAK_SECS, LEVEE_SOAK_SEED)");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let addr = broker.addr.to_string();
    let client = Client::connect(&addr, ClientConfig::default()).unwrap();
    client
        .create_topic(
            TOPIC,
            TopicConfig {
                partitions: PARTITIONS,
                retention_bytes: None,
                retention_ms: None,
                visibility: None,
                ..Default::default()
            },
        )
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    // The producer: RATE messages a second, keyed so all partitions get some.
    let producing = {
        let (addr, stop) = (addr.clone(), stop.clone());
        std::thread::spawn(move || {
            let client = Client::connect(&addr, ClientConfig::default()).unwrap();
            let producer = client
                .producer(ProducerConfig {
                    acks: Acks::Durable,
                    ..ProducerConfig::default()
                })
                .unwrap();
            let started = Instant::now();
            let mut pending = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = started.elapsed().as_millis() as u64 * RATE / 1000;
                while i < due {
                    let value = format!("user-{i}");
                    pending.push((
                        value.clone(),
                        producer.send(
                            ProducerRecord::new(TOPIC, value).with_key(i.to_le_bytes().to_vec()),
                        ),
                    ));
                    i += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            producer.flush();
            let acked: Vec<String> = pending
                .into_iter()
                .filter_map(|(v, f)| f.wait().ok().map(|_| v))
                .collect();
            producer.close();
            (i, acked)
        })
    };
    // The watcher: committed offsets, sampled, must never go backwards.
    let backwards = Arc::new(Mutex::new(Vec::<String>::new()));
    let watching = {
        let (addr, stop, backwards) = (addr.clone(), stop.clone(), backwards.clone());
        std::thread::spawn(move || {
            let client = Client::connect(&addr, ClientConfig::default()).unwrap();
            let mut last: BTreeMap<u32, u64> = BTreeMap::new();
            let mut samples = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(offsets) = client.fetch_offsets(GROUP, &[]) {
                    samples += 1;
                    for o in offsets {
                        let (ErrorCode::None, Some(offset)) = (o.error, o.offset) else {
                            continue;
                        };
                        let before = last.insert(o.partition, offset).unwrap_or(0);
                        if offset < before {
                            backwards.lock().unwrap().push(format!(
                                "partition {} went from {before} to {offset}",
                                o.partition
                            ));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            samples
        })
    };

    let log = Arc::new(Mutex::new(Log::default()));
    let mut members: Vec<Option<Member>> = (0..MEMBERS)
        .map(|_| Some(spawn_member(&addr, &log)))
        .collect();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut kills = 0u32;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(rng.gen_range(1_000..3_000)));
        let victim = rng.gen_range(0..MEMBERS);
        if let Some(m) = members[victim].take() {
            m.kill();
            kills += 1;
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..1_500)));
        members[victim] = Some(spawn_member(&addr, &log));
    }
    stop.store(true, Ordering::Relaxed);
    let (produced, acked) = producing.join().unwrap();
    let samples = watching.join().unwrap();

    // Drain: the surviving members process what is left.
    let deadline = Instant::now() + Duration::from_secs(90);
    let missing = loop {
        let missing = {
            let log = log.lock().unwrap();
            acked
                .iter()
                .filter(|v| !log.processed.contains_key(*v))
                .count()
        };
        if missing == 0 || Instant::now() >= deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Let in-flight batches settle into the log before counting.
    std::thread::sleep(Duration::from_millis(500));
    for m in members.into_iter().flatten() {
        m.kill();
    }
    let log = log.lock().unwrap();
    let twice: u64 = log
        .processed
        .values()
        .map(|&n| u64::from(n.saturating_sub(1)))
        .sum();
    // Straight to the process's stderr, past the test harness's capture: CI logs show it.
    let _ = writeln!(
        std::io::stderr(),
        "group soak: {secs} s, {kills} kills, {produced} produced, {} acknowledged, {} processed, \
         {twice} processed more than once, {} processed without a commit covering them, \
         {} commits, {} refused (fenced), {samples} offset samples",
        acked.len(),
        log.processed.len(),
        log.uncommitted,
        log.commits,
        log.refused
    );
    if missing > 0 {
        let missing: std::collections::HashSet<&String> = acked
            .iter()
            .filter(|v| !log.processed.contains_key(*v))
            .collect();
        let mut plain = client
            .consumer(levee::client::ConsumerConfig {
                max_wait_ms: 50,
                ..levee::client::ConsumerConfig::new(TOPIC)
            })
            .unwrap();
        let mut at = Vec::new();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until && at.len() < missing.len() {
            for r in plain.poll(Duration::from_millis(50)).unwrap() {
                let v = String::from_utf8_lossy(&r.value).into_owned();
                if missing.contains(&v) {
                    at.push(format!("{v}@{}/{}", r.partition, r.offset));
                }
            }
        }
        let committed = client.fetch_offsets(GROUP, &[]).unwrap();
        let described = client.describe_group(GROUP).unwrap();
        panic!(
            "{} acknowledged messages never processed: {at:?}; committed {:?}; group {described:?}",
            missing.len(),
            committed
                .iter()
                .map(|o| (o.partition, o.offset))
                .collect::<Vec<_>>()
        );
    }
    assert!(
        backwards.lock().unwrap().is_empty(),
        "committed offsets went backwards: {:?}",
        backwards.lock().unwrap()
    );
    assert!(
        twice <= log.uncommitted,
        "{twice} duplicates, but only {} messages were processed without a commit",
        log.uncommitted
    );
    assert!(kills > 0 && samples > 0);
}
