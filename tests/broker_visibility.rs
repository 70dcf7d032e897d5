//! Read visibility: a topic whose visibility is `durable` never lets a consumer read a record that
//! a power cut can take back. The broker runs with `--fsync never`, so nothing flushes on its own:
//! the test holds the flusher back and decides, with durable produces, when records become
//! durable.
#![cfg(feature = "broker")]

mod common;

use std::time::{Duration, Instant};

use common::{one_record, TestBroker};
use levee::client::{Client, ClientConfig};
use levee::protocol::{Acks, TopicConfig, Visibility};

fn create(client: &Client, name: &str, visibility: Option<Visibility>) {
    client
        .create_topic(
            name,
            TopicConfig {
                partitions: 1,
                retention_bytes: None,
                retention_ms: None,
                visibility,
                ..Default::default()
            },
        )
        .unwrap();
}

/// Offsets a fetch from `offset` returns, and the `next` it reports.
fn fetch(client: &Client, topic: &str, offset: u64, wait_ms: u32) -> (Vec<u64>, u64) {
    let f = client.fetch(topic, 0, offset, 1 << 20, wait_ms).unwrap();
    let offsets = f.records().map(|r| r.unwrap().offset()).collect();
    (offsets, f.next())
}

#[test]
fn given_durable_visibility_when_records_are_not_flushed_should_never_serve_them() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &["--fsync", "never"]);
    let client = Client::connect(&broker.addr.to_string(), ClientConfig::default()).unwrap();
    create(&client, "d", Some(Visibility::Durable));
    create(&client, "w", None);
    let record = one_record("r");
    for topic in ["d", "w"] {
        for _ in 0..10 {
            client
                .produce_run(topic, 0, &record, Acks::Written)
                .unwrap();
        }
    }
    // The written topic shows everything; the durable one nothing, and says where it ends.
    assert_eq!(fetch(&client, "w", 0, 0).0.len(), 10);
    assert_eq!(fetch(&client, "d", 0, 0), (vec![], 0));
    let described = client.describe_topic("d").unwrap();
    assert_eq!(described.config.visibility, Some(Visibility::Durable));
    assert_eq!(
        (
            described.partitions[0].next,
            described.partitions[0].durable
        ),
        (10, 0)
    );

    // A long poll on the durable topic is answered when a flush makes records durable.
    let poller = {
        let addr = broker.addr.to_string();
        std::thread::spawn(move || {
            let client = Client::connect(&addr, ClientConfig::default()).unwrap();
            let started = Instant::now();
            let (offsets, next) = fetch(&client, "d", 0, 20_000);
            (offsets, next, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    client.produce_run("d", 0, &record, Acks::Durable).unwrap();
    let (offsets, next, waited) = poller.join().unwrap();
    assert_eq!(offsets, (0..11).collect::<Vec<_>>());
    assert_eq!(next, 11);
    assert!(waited < Duration::from_secs(15), "waited {waited:?}");

    // Never above the durable offset, while written and durable appends interleave.
    let mut read_to = 11;
    for i in 0..200 {
        let acks = if i % 7 == 0 {
            Acks::Durable
        } else {
            Acks::Written
        };
        client.produce_run("d", 0, &record, acks).unwrap();
        let (offsets, _) = fetch(&client, "d", read_to, 0);
        let durable = client.describe_topic("d").unwrap().partitions[0].durable;
        for o in &offsets {
            assert!(
                *o < durable,
                "served offset {o} at or above durable {durable}"
            );
        }
        read_to += offsets.len() as u64;
    }
    assert!(read_to > 11, "durable appends made records visible");
}

#[test]
fn given_fsync_always_when_a_topic_is_created_should_default_to_durable_visibility() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &["--fsync", "always"]);
    let client = Client::connect(&broker.addr.to_string(), ClientConfig::default()).unwrap();
    create(&client, "a", None);
    assert_eq!(
        client.describe_topic("a").unwrap().config.visibility,
        Some(Visibility::Durable)
    );
    client
        .alter_topic(
            "a",
            &levee::protocol::TopicChange {
                visibility: Some(Visibility::Written),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        client.describe_topic("a").unwrap().config.visibility,
        Some(Visibility::Written)
    );
}
