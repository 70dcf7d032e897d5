//! Delivery guarantees against a real broker process: delayed delivery (never early, on time,
//! once, across kill -9), and retries with dead letters for a consumer group (exactly
//! `max_deliveries` deliveries of a failing message, the others once, replay to that group only).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{levee_cli, TestBroker};
use levee::client::{
    Client, ClientConfig, ConsumedRecord, ConsumerConfig, GroupConsumer, GroupConsumerConfig,
    ProducerConfig, ProducerRecord,
};
use levee::protocol::{Acks, NackOutcome, TopicConfig};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn topic(client: &Client, name: &str, partitions: u32) {
    client
        .create_topic(
            name,
            TopicConfig {
                partitions,
                retention_bytes: None,
                retention_ms: None,
                visibility: None,
                ..Default::default()
            },
        )
        .expect("create topic");
}

fn connect(broker: &TestBroker) -> Client {
    Client::connect(&broker.addr.to_string(), ClientConfig::default()).unwrap()
}

/// Reads `topic` from the start until `until` passes, recording when each value first arrived
/// (ms since the epoch) and how often it arrived.
fn watch(client: &Client, topic: &str, until: Instant) -> BTreeMap<String, (i64, usize)> {
    let mut consumer = client
        .consumer(ConsumerConfig {
            max_wait_ms: 20,
            ..ConsumerConfig::new(topic)
        })
        .unwrap();
    let mut seen: BTreeMap<String, (i64, usize)> = BTreeMap::new();
    while Instant::now() < until {
        for r in consumer.poll(Duration::from_millis(20)).unwrap() {
            let v = String::from_utf8(r.value).unwrap();
            let at = now_ms();
            seen.entry(v).or_insert((at, 0)).1 += 1;
        }
    }
    seen
}

#[test]
fn given_a_delayed_message_should_not_be_fetched_early_nor_hold_up_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let client = connect(&broker);
    topic(&client, "reminders", 1);
    let producer = client.producer(ProducerConfig::default()).unwrap();
    let sent_at = now_ms();
    producer
        .send(ProducerRecord::new("reminders", "later").with_delay(Duration::from_secs(2)))
        .wait()
        .expect("scheduled");
    for i in 0..10 {
        producer
            .send(ProducerRecord::new("reminders", format!("now-{i}")))
            .wait()
            .unwrap();
    }
    let seen = watch(
        &client,
        "reminders",
        Instant::now() + Duration::from_secs(4),
    );
    let (at, times) = seen["later"];
    assert!(
        at >= sent_at + 2_000,
        "delivered {} ms early",
        sent_at + 2_000 - at
    );
    assert!(
        at <= sent_at + 4_000,
        "delivered {} ms after sending",
        at - sent_at
    );
    assert_eq!(times, 1);
    for i in 0..10 {
        let (at, times) = seen[&format!("now-{i}")];
        assert!(
            at < sent_at + 2_000,
            "an undelayed message waited for the delayed one"
        );
        assert_eq!(times, 1);
    }
    // The delayed record comes after the ones produced meanwhile.
    let mut consumer = client.consumer(ConsumerConfig::new("reminders")).unwrap();
    let order: Vec<String> = consumer
        .poll(Duration::from_secs(1))
        .unwrap()
        .into_iter()
        .map(|r| String::from_utf8(r.value).unwrap())
        .collect();
    assert_eq!(order.last().map(String::as_str), Some("later"));
    producer.close();
}

#[test]
fn given_delayed_messages_when_the_broker_is_killed_should_deliver_each_once_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let client = connect(&broker);
    topic(&client, "d", 2);
    let producer = client.producer(ProducerConfig::default()).unwrap();
    let sent_at = now_ms();
    for i in 0..6u32 {
        producer
            .send(
                ProducerRecord::new("d", format!("delayed-{i}"))
                    .with_partition(i % 2)
                    .with_delay(Duration::from_millis(2_000)),
            )
            .wait()
            .expect("scheduled durably");
    }
    producer.close();
    drop(client);
    std::thread::sleep(Duration::from_millis(500));
    drop(broker); // kill -9 before they are due
    let broker = TestBroker::start(dir.path(), &[]);
    let client = connect(&broker);
    let seen = watch(&client, "d", Instant::now() + Duration::from_millis(4_000));
    assert_eq!(seen.len(), 6, "{seen:?}");
    for (v, (at, times)) in &seen {
        assert_eq!(*times, 1, "{v} delivered {times} times");
        assert!(*at >= sent_at + 2_000, "{v} early");
        assert!(
            *at <= sent_at + 4_000 + 1_000,
            "{v} late by {} ms",
            at - sent_at
        );
    }
}

#[test]
fn given_a_crash_between_delivery_and_its_record_should_not_deliver_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = TestBroker::start_with_env(
        dir.path(),
        &[],
        &[("LEVEE_FAILPOINTS", "delay-crash-after-deliver")],
    );
    let client = connect(&broker);
    topic(&client, "d", 1);
    let producer = client.producer(ProducerConfig::default()).unwrap();
    producer
        .send(ProducerRecord::new("d", "once").with_delay(Duration::from_millis(300)))
        .wait()
        .unwrap();
    drop(producer);
    drop(client);
    // The scheduler delivers, then the failpoint aborts the process.
    assert!(
        broker.wait_exit(Duration::from_secs(10)).is_some(),
        "the failpoint ended the broker"
    );
    let broker = TestBroker::start(dir.path(), &[]);
    let client = connect(&broker);
    let seen = watch(&client, "d", Instant::now() + Duration::from_millis(1_500));
    assert_eq!(seen.len(), 1);
    assert_eq!(seen["once"].1, 1, "delivered again after the crash");
}

fn member(addr: &str, group: &str, topic: &str) -> GroupConsumer {
    let client = Client::connect(addr, ClientConfig::default()).unwrap();
    client
        .group_consumer(GroupConsumerConfig {
            session_timeout_ms: 3_000,
            heartbeat_interval_ms: 100,
            max_wait_ms: 50,
            ..GroupConsumerConfig::new(group, [topic])
        })
        .unwrap()
}

/// Polls until `quiet` passes with nothing new, handing each record to `handle`.
fn drain(
    m: &mut GroupConsumer,
    quiet: Duration,
    mut handle: impl FnMut(&mut GroupConsumer, &ConsumedRecord),
) {
    let mut last = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while last.elapsed() < quiet {
        assert!(Instant::now() < deadline, "still receiving after 60 s");
        let got = m.poll(Duration::from_millis(50)).unwrap();
        if !got.is_empty() {
            last = Instant::now();
        }
        for r in &got {
            handle(m, r);
        }
        m.commit().unwrap();
    }
}

#[test]
fn given_a_message_that_always_fails_should_be_delivered_max_deliveries_times_then_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let addr = broker.addr.to_string();
    let client = connect(&broker);
    topic(&client, "signups", 3);
    let producer = client.producer(ProducerConfig::default()).unwrap();
    for i in 0..30 {
        producer
            .send(ProducerRecord::new("signups", format!("user-{i}")).with_header("app", "x"))
            .wait()
            .unwrap();
    }
    producer.close();

    let mut sms = member(&addr, "sms", "signups");
    let mut deliveries: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut outcomes = Vec::new();
    drain(&mut sms, Duration::from_millis(1_500), |m, r| {
        let v = String::from_utf8(r.value.clone()).unwrap();
        deliveries.entry(v.clone()).or_default().push(r.delivery());
        if v == "user-7" {
            assert_eq!(r.origin().0, "signups");
            assert_eq!(
                r.header("app"),
                Some(&b"x"[..]),
                "application headers survive"
            );
            outcomes.push(m.nack(r, Duration::from_millis(100), "smtp down").unwrap());
        }
    });
    assert_eq!(deliveries.len(), 30);
    assert_eq!(
        deliveries["user-7"],
        vec![1, 2, 3],
        "exactly max_deliveries deliveries"
    );
    assert_eq!(
        outcomes,
        vec![
            NackOutcome::Retry,
            NackOutcome::Retry,
            NackOutcome::DeadLettered
        ]
    );
    for (v, d) in &deliveries {
        if v != "user-7" {
            assert_eq!(d, &vec![1], "{v} processed once");
        }
    }
    // The dead letter, with its origin and history in headers.
    let mut dlq = client.consumer(ConsumerConfig::new("__dlq.sms")).unwrap();
    let letters = dlq.poll(Duration::from_secs(2)).unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.value, b"user-7");
    let h = |k: &str| String::from_utf8(letter.header(k).unwrap().to_vec()).unwrap();
    assert_eq!(h("levee.topic"), "signups");
    assert_eq!(h("levee.deliveries"), "3");
    assert_eq!(h("levee.error"), "smtp down");
    let (_, p, o) = letter.origin();
    let original = client.fetch("signups", p, o, 1 << 16, 0).unwrap();
    let first = original.records().next().unwrap().unwrap();
    assert_eq!(first.offset(), o);
    assert_eq!(&*first.message().unwrap().value, b"user-7");

    // Another group on the same topic sees every message once and none of sms's retries.
    let mut gift = member(&addr, "gift", "signups");
    let mut gifts: BTreeMap<String, usize> = BTreeMap::new();
    drain(&mut gift, Duration::from_millis(1_000), |_, r| {
        *gifts
            .entry(String::from_utf8(r.value.clone()).unwrap())
            .or_default() += 1;
    });
    assert_eq!(gifts.len(), 30);
    assert!(gifts.values().all(|&n| n == 1));

    // Replay gives it back to sms only.
    let (code, out, err) = levee_cli(&broker, &["dlq", "list"], "", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l == "sms\t1\t1"), "{out}");
    let (code, out, err) = levee_cli(&broker, &["dlq", "replay", "sms"], "", &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replayed 1"), "{out}");
    let mut again = Vec::new();
    drain(&mut sms, Duration::from_millis(1_500), |_, r| {
        again.push((String::from_utf8(r.value.clone()).unwrap(), r.delivery()));
    });
    assert_eq!(again, vec![("user-7".to_string(), 1)]);
    let mut none = Vec::new();
    drain(&mut gift, Duration::from_millis(500), |_, r| {
        none.push(r.offset)
    });
    assert!(none.is_empty(), "the other group got a replayed letter");
    let (code, out, _) = levee_cli(&broker, &["dlq", "list"], "", &[]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l == "sms\t1\t0"), "{out}");
    let (code, _, _) = levee_cli(&broker, &["dlq", "replay", "nobody"], "", &[]);
    assert_eq!(code, 1);
}

#[test]
fn given_bad_delayed_sends_should_answer_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &["--delay-max-ms", "60000"]);
    let client = connect(&broker);
    topic(&client, "t", 1);
    let run = common::one_record("x");
    let far = client
        .produce_delayed("t", 0, &run, now_ms() + 120_000, Acks::Durable)
        .unwrap_err();
    assert_eq!(
        far.code(),
        Some(levee::protocol::ErrorCode::InvalidRequest),
        "{far}"
    );
    let unknown = client
        .produce_delayed("nope", 0, &run, now_ms(), Acks::Durable)
        .unwrap_err();
    assert_eq!(
        unknown.code(),
        Some(levee::protocol::ErrorCode::UnknownTopic),
        "{unknown}"
    );
    let internal = client
        .produce_delayed("__delays", 0, &run, now_ms(), Acks::Durable)
        .unwrap_err();
    assert_eq!(
        internal.code(),
        Some(levee::protocol::ErrorCode::InvalidTopicName),
        "{internal}"
    );
    let corrupt = client
        .produce_delayed("t", 0, &[7u8; 64], now_ms(), Acks::Durable)
        .unwrap_err();
    assert_eq!(
        corrupt.code(),
        Some(levee::protocol::ErrorCode::InvalidRequest),
        "{corrupt}"
    );
    // A time in the past means now.
    let ok = client
        .produce_delayed("t", 0, &run, 0, Acks::Durable)
        .unwrap()
        .unwrap();
    assert!(ok.due_ms >= now_ms() - 5_000);
    let seen = watch(&client, "t", Instant::now() + Duration::from_millis(500));
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from(["x".to_string()])
    );
}

#[test]
fn given_a_tokio_application_should_send_idempotently_and_delayed_and_work_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let addr = broker.addr.to_string();
    let client = connect(&broker);
    topic(&client, "jobs", 2);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let seen = runtime.block_on(async move {
        // Send futures are awaited on tokio's executor.
        let producer = client
            .producer(ProducerConfig {
                idempotent: true,
                ..ProducerConfig::default()
            })
            .unwrap();
        let now = producer
            .send(ProducerRecord::new("jobs", "now"))
            .await
            .unwrap();
        assert!(now.offset.is_some());
        let later = producer
            .send(ProducerRecord::new("jobs", "later").with_delay(Duration::from_millis(300)))
            .await
            .unwrap();
        assert_eq!(
            later.offset, None,
            "a delayed record gets its offset when delivered"
        );
        producer.close();
        // The group consumer blocks: it runs on tokio's blocking pool.
        tokio::task::spawn_blocking(move || {
            let mut m = member(&addr, "workers", "jobs");
            let mut seen = Vec::new();
            drain(&mut m, Duration::from_millis(1_500), |m, r| {
                let v = String::from_utf8(r.value.clone()).unwrap();
                seen.push((v.clone(), r.delivery()));
                if v == "now" && r.delivery() == 1 {
                    m.nack(r, Duration::from_millis(100), "try again").unwrap();
                }
            });
            m.close().unwrap();
            seen
        })
        .await
        .unwrap()
    });
    let mut seen = seen;
    seen.sort();
    assert_eq!(
        seen,
        vec![("later".into(), 1), ("now".into(), 1), ("now".into(), 2)]
    );
}
