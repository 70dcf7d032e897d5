//! End to end through the client library and the CLI against a real broker process.
#![cfg(feature = "broker")]

mod common;

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use common::TestBroker;
use levee::client::{
    Client, ClientConfig, ClientError, ConsumerConfig, ProducerConfig, ProducerRecord, ResetPolicy,
    StartFrom,
};
use levee::protocol::{Acks, TopicConfig};

const MESSAGES: u64 = 1_000_000;
const PARTITIONS: u32 = 8;

/// The 100-byte value of the `k`-th message of partition `p`.
fn value(p: u32, k: u64) -> Vec<u8> {
    let mut v = format!("p{p}-k{k}-").into_bytes();
    v.resize(100, b'.');
    v
}

/// Reads every partition from the start and checks each record is the next one of its partition.
fn consume_all(client: &Client) {
    let mut consumer = client.consumer(ConsumerConfig::new("flood")).unwrap();
    let mut next = vec![0u64; PARTITIONS as usize];
    let mut total = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while total < MESSAGES {
        assert!(
            Instant::now() < deadline,
            "consumed only {total} of {MESSAGES}"
        );
        for r in consumer.poll(Duration::from_millis(500)).unwrap() {
            let k = next[r.partition as usize];
            assert_eq!(r.offset, k, "partition {} out of order", r.partition);
            assert_eq!(
                r.value,
                value(r.partition, k),
                "content of {}/{}",
                r.partition,
                k
            );
            next[r.partition as usize] += 1;
            total += 1;
        }
    }
    assert_eq!(next.iter().sum::<u64>(), MESSAGES);
    assert!(next.iter().all(|&n| n == MESSAGES / PARTITIONS as u64));
}

#[test]
fn given_a_million_messages_over_8_partitions_when_read_back_and_after_restart_should_match() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = TestBroker::start(dir.path(), &[]);
    let client = Client::connect(&broker.addr.to_string(), ClientConfig::default()).unwrap();
    client
        .create_topic(
            "flood",
            TopicConfig {
                partitions: PARTITIONS,
                retention_bytes: None,
                retention_ms: None,
                visibility: None,
                ..Default::default()
            },
        )
        .unwrap();
    let producer = client
        .producer(ProducerConfig {
            acks: Acks::Written,
            max_in_flight: 1,
            ..ProducerConfig::default()
        })
        .unwrap();
    let mut pending = VecDeque::new();
    for i in 0..MESSAGES {
        let p = (i % PARTITIONS as u64) as u32;
        let k = i / PARTITIONS as u64;
        pending.push_back((
            p,
            k,
            producer.send(ProducerRecord::new("flood", value(p, k)).with_partition(p)),
        ));
        if pending.len() > 100_000 {
            let (p, k, f) = pending.pop_front().unwrap();
            let m = f.wait().unwrap();
            assert_eq!((m.partition, m.offset), (p, Some(k)));
        }
    }
    producer.flush();
    for (p, k, f) in pending {
        let m = f.wait().unwrap();
        assert_eq!((m.partition, m.offset), (p, Some(k)));
    }
    producer.close();
    consume_all(&client);
    drop(client);

    assert!(broker.stop(), "graceful shutdown");
    let broker = TestBroker::start(dir.path(), &[]);
    let client = Client::connect(&broker.addr.to_string(), ClientConfig::default()).unwrap();
    consume_all(&client);
}

#[test]
fn given_deleted_offsets_when_consuming_should_apply_the_reset_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, client) = fill_with_retention(dir.path(), "100", "r", 1, 5000);
    // Retention keeps only the active segment: offset 0 is gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.describe_topic("r").unwrap().partitions[0].earliest == 0 {
        assert!(Instant::now() < deadline, "retention did not run");
        std::thread::sleep(Duration::from_millis(50));
    }
    let earliest = client.describe_topic("r").unwrap().partitions[0].earliest;

    let mut config = ConsumerConfig::new("r");
    config.start = StartFrom::Offset(0);
    config.reset = ResetPolicy::Error;
    let mut strict = client.consumer(config.clone()).unwrap();
    match strict.poll(Duration::from_secs(1)) {
        Err(ClientError::OffsetOutOfRange {
            requested: 0,
            earliest: e,
            ..
        }) => assert_eq!(e, earliest),
        other => panic!("expected OffsetOutOfRange, got {other:?}"),
    }
    config.reset = ResetPolicy::Earliest;
    let mut lenient = client.consumer(config).unwrap();
    let got = lenient.poll(Duration::from_secs(5)).unwrap();
    assert_eq!(got.first().map(|r| r.offset), Some(earliest));
}

/// A broker with 1 MiB segments and retention run every `retention_check_ms`, and a one-partition
/// `topic` keeping `retention_bytes`, into which `count` messages of 1000 bytes were produced.
fn fill_with_retention(
    dir: &Path,
    retention_check_ms: &str,
    topic: &str,
    retention_bytes: u64,
    count: u32,
) -> (TestBroker, Client) {
    let broker = TestBroker::start(
        dir,
        &[
            "--segment-bytes",
            "1048576",
            "--record-bytes-max",
            "65536",
            "--retention-check-ms",
            retention_check_ms,
        ],
    );
    let client = Client::connect(&broker.addr.to_string(), ClientConfig::default()).unwrap();
    client
        .create_topic(
            topic,
            TopicConfig {
                partitions: 1,
                retention_bytes: Some(retention_bytes),
                retention_ms: None,
                visibility: None,
                ..Default::default()
            },
        )
        .unwrap();
    let producer = client
        .producer(ProducerConfig {
            acks: Acks::Written,
            ..ProducerConfig::default()
        })
        .unwrap();
    for i in 0..count {
        producer.send(ProducerRecord::new(topic, vec![(i % 251) as u8; 1000]).with_partition(0));
    }
    producer.flush();
    (broker, client)
}

/// Retention runs at every roll too, not only on its timer: a partition under sustained load
/// retires its oldest segment as it starts a new one (and reuses the file).
#[test]
fn given_retention_bytes_when_segments_roll_should_retire_before_the_retention_tick() {
    let dir = tempfile::tempdir().unwrap();
    let (_broker, client) = fill_with_retention(dir.path(), "3600000", "roll", 2 << 20, 8000);
    let p = &client.describe_topic("roll").unwrap().partitions[0];
    assert_eq!(p.next, 8000);
    assert!(p.earliest > 0, "nothing retired by the rolls: {p:?}");
    // Over the limit by less than one segment: the one whose roll retires the next.
    assert!(p.size_bytes <= 3 << 20, "{p:?}");
    let mut config = ConsumerConfig::new("roll");
    config.start = StartFrom::Earliest;
    let mut consumer = client.consumer(config).unwrap();
    let got = consumer.poll(Duration::from_secs(5)).unwrap();
    assert_eq!(got.first().map(|r| r.offset), Some(p.earliest));
}

fn levee(broker: &TestBroker, args: &[&str], stdin: &str) -> (i32, String, String) {
    common::levee_cli(broker, args, stdin, &[])
}

#[test]
fn given_the_cli_when_piping_lines_in_and_out_should_roundtrip_and_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let (code, _, err) = levee(&broker, &["topic", "create", "t"], "");
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = levee(&broker, &["produce", "t"], "a\nb\n");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("produced 2 of 2"),
        "one-line summary on stderr: {err}"
    );
    let (code, out, err) = levee(
        &broker,
        &["consume", "t", "--from", "earliest", "--count", "2"],
        "",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "a\nb\n");

    let (code, out, _) = levee(
        &broker,
        &[
            "consume",
            "t",
            "--from",
            "earliest",
            "--timeout-ms",
            "500",
            "--format",
            "json",
        ],
        "",
    );
    assert_eq!(code, 0);
    assert!(out
        .lines()
        .next()
        .unwrap()
        .starts_with("{\"partition\":0,\"offset\":0,\"timestamp_ms\":"));
    assert!(out
        .lines()
        .next()
        .unwrap()
        .ends_with(",\"key\":null,\"value\":\"a\"}"));

    let (code, _, err) = levee(&broker, &["produce", "nope"], "x\n");
    assert_eq!(code, 1);
    assert!(err.starts_with("error:") && err.contains("'nope'"), "{err}");
    assert_eq!(
        err.lines().count(),
        1,
        "one error line, no backtrace: {err}"
    );

    let (code, _, err) = levee(&broker, &["produce", "t", "--acks", "sometimes"], "");
    assert_eq!(code, 2, "usage error: {err}");
}

#[test]
fn given_a_tokio_application_when_producing_should_await_acknowledgements() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let client = Client::connect(&broker.addr.to_string(), ClientConfig::default()).unwrap();
    client
        .create_topic(
            "async",
            TopicConfig {
                partitions: 2,
                retention_bytes: None,
                retention_ms: None,
                visibility: None,
                ..Default::default()
            },
        )
        .unwrap();
    let producer = client.producer(ProducerConfig::default()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let offsets = runtime.block_on(async {
        let mut offsets = Vec::new();
        for i in 0..10u32 {
            // The send future is runtime-agnostic: awaited here on tokio's executor.
            let m = producer
                .send(ProducerRecord::new("async", format!("v{i}")).with_partition(i % 2))
                .await
                .unwrap();
            offsets.push((m.partition, m.offset));
        }
        offsets
    });
    assert_eq!(offsets[0], (0, Some(0)));
    assert_eq!(offsets[9], (1, Some(4)));
}

#[test]
fn given_a_broker_restart_when_the_same_client_continues_should_reconnect_and_refresh_metadata() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed bootstrap port, so the client can find the restarted broker; shard ports change.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut broker = TestBroker::start(dir.path(), &["--listen", &listen]);
    let client = Client::connect(&listen, ClientConfig::default()).unwrap();
    client
        .create_topic(
            "again",
            TopicConfig {
                partitions: 2,
                retention_bytes: None,
                retention_ms: None,
                visibility: None,
                ..Default::default()
            },
        )
        .unwrap();
    let before = client.metadata(&["again"]).unwrap().shards;
    let producer = client.producer(ProducerConfig::default()).unwrap();
    producer
        .send(ProducerRecord::new("again", "before").with_partition(1))
        .wait()
        .unwrap();
    assert!(broker.stop());

    let _broker = TestBroker::start(dir.path(), &["--listen", &listen]);
    // The producer's next send rides over the restart: reconnect, new metadata, retry.
    let m = producer
        .send(ProducerRecord::new("again", "after").with_partition(1))
        .wait()
        .unwrap();
    assert_eq!(m.offset, Some(1));
    let after = client.metadata(&["again"]).unwrap().shards;
    assert_ne!(
        before, after,
        "shard ports are OS-assigned and change on restart"
    );
    let fetched = client.fetch("again", 1, 0, 1 << 20, 0).unwrap();
    let values: Vec<Vec<u8>> = fetched
        .records()
        .map(|r| r.unwrap().message().unwrap().value.to_vec())
        .collect();
    assert_eq!(values, vec![b"before".to_vec(), b"after".to_vec()]);
}
