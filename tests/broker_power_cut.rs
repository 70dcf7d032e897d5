//! Power cuts of a whole broker, through the simulated disk.
//!
//! The broker runs in this process with its partition logs on [`SimIo`]. Several connections
//! produce with `acks=durable` while the power is cut at a random moment: the disk a cut leaves is
//! every flushed byte plus a random choice of the pages written since (some dropped, some torn).
//! The broker is then restarted on what survived, and every record acknowledged before the cut
//! must read back, at its offset, with its content. Several cycles build on each other.
#![cfg(feature = "broker")]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use levee::client::{Client, ClientConfig};
use levee::config::{BrokerConfig, FsyncPolicy};
use levee::protocol::{Acks, TopicConfig};
use levee::record::{self, Message};
use levee::server::Broker;
use levee::storage::SimIo;
use rand::{Rng, SeedableRng};

const PARTITIONS: u32 = 4;
const PRODUCERS: usize = 4;
const CYCLES: usize = 6;

fn config(dir: &std::path::Path) -> BrokerConfig {
    BrokerConfig {
        data_dir: dir.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        shards: 2,
        pin_cpus: false,
        // Flushes come from durable acks, and from the interval for what is not acknowledged.
        fsync: FsyncPolicy::Interval(Duration::from_millis(50)),
        segment_bytes: 256 << 10,
        record_bytes_max: 64 << 10,
        ..BrokerConfig::default()
    }
}

/// `((partition, offset), value)` of every record acknowledged as durable, in the order the
/// acknowledgements arrived.
type Acked = Arc<Mutex<Vec<((u32, u64), Vec<u8>)>>>;

fn produce_until(addr: String, id: usize, cycle: usize, stop: Arc<AtomicBool>, acked: Acked) {
    let client = Client::connect(&addr, ClientConfig::default()).expect("connect");
    let mut i = 0u64;
    while !stop.load(Ordering::Acquire) {
        let partition = (i % PARTITIONS as u64) as u32;
        let count = 1 + (i % 5) as usize;
        let mut run = Vec::new();
        let mut values = Vec::new();
        for k in 0..count {
            let value = format!("c{cycle}-p{id}-{i}-{k}-{}", "x".repeat((i % 300) as usize));
            let m = Message {
                value: value.clone().into_bytes(),
                ..Message::default()
            };
            record::encode(&m, &mut run).unwrap();
            values.push(value.into_bytes());
        }
        match client.produce_run("cut", partition, &run, Acks::Durable) {
            Ok(Some(outcome)) => {
                let mut acked = acked.lock().unwrap();
                for (k, v) in values.into_iter().enumerate() {
                    acked.push(((partition, outcome.base_offset + k as u64), v));
                }
            }
            // The broker may be going down under us: whatever was not acknowledged is not owed.
            _ => return,
        }
        i += 1;
    }
}

/// Reads every partition from its start: `(partition, offset)` → value.
fn read_all(client: &Client) -> BTreeMap<(u32, u64), Vec<u8>> {
    let mut out = BTreeMap::new();
    for p in 0..PARTITIONS {
        let mut offset = 0;
        loop {
            let fetched = client.fetch("cut", p, offset, 1 << 20, 0).expect("fetch");
            if fetched.is_empty() {
                break;
            }
            for r in fetched.records() {
                let r = r.expect("served records pass their CRCs");
                let value = r.message().expect("a valid archive").value.to_vec();
                out.insert((p, r.offset()), value);
                offset = r.offset() + 1;
            }
        }
    }
    out
}

fn check(
    stored: &BTreeMap<(u32, u64), Vec<u8>>,
    owed: &BTreeMap<(u32, u64), Vec<u8>>,
    cycle: usize,
) {
    for (key, value) in owed {
        assert_eq!(
            stored.get(key),
            Some(value),
            "after cut {cycle}: acknowledged record {key:?} lost or changed"
        );
    }
}

#[test]
fn given_durable_acks_when_power_is_cut_at_random_should_read_back_every_acked_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x1e7ee);
    let acked: Acked = Arc::default();
    // Every record owed across the cycles so far.
    let mut owed: BTreeMap<(u32, u64), Vec<u8>> = BTreeMap::new();
    let mut io = SimIo::new();
    {
        let broker = Broker::start_with_io(config(dir.path()), io.clone()).expect("start");
        let client = Client::connect(&broker.listen.to_string(), ClientConfig::default()).unwrap();
        client
            .create_topic(
                "cut",
                TopicConfig {
                    partitions: PARTITIONS,
                    retention_bytes: None,
                    retention_ms: None,
                    visibility: None,
                    ..Default::default()
                },
            )
            .unwrap();
        broker.shutdown();
        broker.join();
    }
    for cycle in 0..CYCLES {
        let broker = Broker::start_with_io(config(dir.path()), io.clone()).expect("restart");
        let addr = broker.listen.to_string();
        let client = Client::connect(&addr, ClientConfig::default()).unwrap();
        check(&read_all(&client), &owed, cycle);
        let stop = Arc::new(AtomicBool::new(false));
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|id| {
                let (addr, stop, acked) = (addr.clone(), stop.clone(), acked.clone());
                std::thread::spawn(move || produce_until(addr, id, cycle, stop, acked))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..600)));
        // The cut: acknowledgements received before it starts are owed.
        let owed_now = acked.lock().unwrap().len();
        let mut pages = rand::rngs::SmallRng::seed_from_u64(rng.gen());
        let survived = io.crash(|_| match pages.gen_range(0..3) {
            0 => None,
            1 => Some(pages.gen_range(0..=4096)),
            _ => Some(4096),
        });
        stop.store(true, Ordering::Release);
        for p in producers {
            let _ = p.join();
        }
        // What was acknowledged after the cut began is not owed: the broker went on writing to
        // the disk as it was before the cut.
        let mut this_cycle = std::mem::take(&mut *acked.lock().unwrap());
        this_cycle.truncate(owed_now);
        eprintln!("cycle {cycle}: {} more records owed", this_cycle.len());
        owed.extend(this_cycle);
        broker.shutdown();
        broker.join();
        io = survived;
    }
    let broker = Broker::start_with_io(config(dir.path()), io).expect("final restart");
    let client = Client::connect(&broker.listen.to_string(), ClientConfig::default()).unwrap();
    check(&read_all(&client), &owed, CYCLES);
    assert!(
        owed.len() > 100,
        "the test produced too little: {}",
        owed.len()
    );
    broker.shutdown();
    broker.join();
}
