//! The idempotent producer against a real broker process: batches whose acknowledgement was
//! lost are resent and stored once, in order, with the offsets they were first given; also when
//! the broker dies between storing a batch and answering it, and the resend reaches the
//! restarted broker. A plain producer under the same failure stores duplicates, which shows the
//! failure is real.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::TestBroker;
use levee::client::{
    Client, ClientConfig, ConsumerConfig, ProducerConfig, ProducerRecord, RecordMetadata,
};
use levee::protocol::{Acks, TopicConfig};

const TOPIC: &str = "orders";

fn client(addr: &str) -> Client {
    let config = ClientConfig {
        // The broker holds a lost acknowledgement for 5 s: the client gives up long before.
        request_timeout_ms: 500,
        ..ClientConfig::default()
    };
    Client::connect(addr, config).unwrap()
}

fn producer(client: &Client, idempotent: bool) -> levee::client::Producer {
    client
        .producer(ProducerConfig {
            acks: Acks::Durable,
            linger_ms: 0,
            // Two records a batch: many batches, several in flight.
            batch_bytes: 256,
            max_in_flight: 5,
            retries: 30,
            retry_backoff_ms: 20,
            request_timeout_ms: 500,
            idempotent,
            ..ProducerConfig::default()
        })
        .unwrap()
}

fn create(client: &Client) {
    client
        .create_topic(
            TOPIC,
            TopicConfig {
                partitions: 1,
                retention_bytes: None,
                retention_ms: None,
                visibility: None,
                ..Default::default()
            },
        )
        .unwrap();
}

/// Every value of the partition, in offset order.
fn read_all(client: &Client, expected: usize) -> Vec<(u64, String)> {
    let mut consumer = client
        .consumer(ConsumerConfig {
            max_wait_ms: 50,
            ..ConsumerConfig::new(TOPIC)
        })
        .unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    // Reads past `expected` for a while, so that duplicates stored at the end show up.
    let mut quiet_until = None;
    while Instant::now() < deadline {
        let got = consumer.poll(Duration::from_millis(50)).unwrap();
        for r in got {
            out.push((r.offset, String::from_utf8(r.value).unwrap()));
        }
        if out.len() >= expected {
            let until =
                *quiet_until.get_or_insert_with(|| Instant::now() + Duration::from_millis(300));
            if Instant::now() >= until {
                break;
            }
        }
    }
    out
}

fn send_all(producer: &levee::client::Producer, n: usize) -> Vec<RecordMetadata> {
    let sends: Vec<_> = (0..n)
        .map(|i| {
            producer.send(ProducerRecord::new(TOPIC, format!("order-{i:04}")).with_partition(0))
        })
        .collect();
    sends.into_iter().map(|s| s.wait().expect("send")).collect()
}

/// Asserts the log holds `order-0000..n` once each, in order, at the offsets the sends reported.
fn assert_once_in_order(stored: &[(u64, String)], acked: &[RecordMetadata], n: usize) {
    let values: Vec<&str> = stored.iter().map(|(_, v)| v.as_str()).collect();
    let expected: Vec<String> = (0..n).map(|i| format!("order-{i:04}")).collect();
    assert_eq!(values, expected, "each record once, in send order");
    let at: BTreeMap<&str, u64> = stored.iter().map(|(o, v)| (v.as_str(), *o)).collect();
    for (i, meta) in acked.iter().enumerate() {
        let offset = meta.offset.unwrap_or_else(|| {
            panic!(
                "an idempotent send reports its offset: record {i} of {:?}",
                acked.iter().map(|m| m.offset).collect::<Vec<_>>()
            )
        });
        assert_eq!(
            Some(&offset),
            at.get(expected[i].as_str()),
            "offset reported for record {i}"
        );
    }
}

/// Sends `N` records through a broker that loses every 4th Produce answer; returns what the
/// partition holds and what the sends reported.
fn with_lost_acks(idempotent: bool) -> (Vec<(u64, String)>, Vec<RecordMetadata>) {
    let dir = tempfile::tempdir().unwrap();
    let broker =
        TestBroker::start_with_env(dir.path(), &[], &[("LEVEE_FAILPOINTS", "produce-lose-ack")]);
    let client = client(&broker.addr.to_string());
    create(&client);
    let producer = producer(&client, idempotent);
    let acked = send_all(&producer, N);
    producer.close();
    (read_all(&client, N), acked)
}

const N: usize = 40;

#[test]
fn given_lost_acknowledgements_an_idempotent_producer_should_store_each_batch_once_in_order() {
    let (stored, acked) = with_lost_acks(true);
    assert_once_in_order(&stored, &acked, N);
}

#[test]
fn given_lost_acknowledgements_a_plain_producer_should_store_duplicates() {
    // The control: the same failure without idempotence duplicates batches, so the test above
    // would fail if the broker did not drop the resends.
    let (stored, _) = with_lost_acks(false);
    assert!(
        stored.len() > N,
        "lost acknowledgements made the plain producer resend stored batches ({} stored)",
        stored.len()
    );
}

#[test]
fn given_a_crash_before_the_ack_an_idempotent_resend_to_the_restarted_broker_should_be_stored_once()
{
    let dir = tempfile::tempdir().unwrap();
    let mut broker = TestBroker::start_with_env(
        dir.path(),
        &[],
        &[("LEVEE_FAILPOINTS", "produce-crash-before-ack")],
    );
    let addr = broker.addr.to_string();
    let client = client(&addr);
    create(&client);
    // The topic is created: the 3rd Produce request kills the broker after storing it.
    const N: usize = 12;
    let producer = producer(&client, true);
    let sender = std::thread::spawn(move || {
        let acked = send_all(&producer, N);
        producer.close();
        acked
    });
    // Killed by SIGABRT: no exit code.
    assert_eq!(
        broker.wait_exit(Duration::from_secs(30)),
        Some(-1),
        "the failpoint aborts the broker"
    );
    // Same data, same bootstrap address: the producer's resend reaches the new broker.
    let _restarted = TestBroker::start(dir.path(), &["--listen", &addr]);
    let acked = sender.join().unwrap();
    let stored = read_all(&client, N);
    assert_once_in_order(&stored, &acked, N);
}
