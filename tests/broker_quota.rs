//! Quotas against a real broker: a 10 MB/s produce quota on one client id that spreads its load
//! over every shard holds to 0.7–1.1× over a 5 s window, with throttles seen by the client, while
//! another client id is not slowed; a fetch quota paces a consumer; `levee quota` sets, lists
//! and deletes, and quotas survive a restart; `levee stats` prints the tables.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{levee_cli, TestBroker};
use levee::client::{
    Client, ClientConfig, ConsumerConfig, ProducerConfig, ProducerRecord, StartFrom,
};
use levee::protocol::{Acks, QuotaEntity, QuotaLimits, TopicConfig};

const QUOTA: u64 = 10_000_000;
const WINDOW: Duration = Duration::from_secs(5);
const WARMUP: Duration = Duration::from_secs(1);

fn client(broker: &TestBroker, id: &str) -> Client {
    connect(broker.addr, id)
}

fn connect(addr: std::net::SocketAddr, id: &str) -> Client {
    Client::connect(
        &addr.to_string(),
        ClientConfig {
            client_id: id.into(),
            ..ClientConfig::default()
        },
    )
    .unwrap()
}

fn topic(admin: &Client, name: &str, partitions: u32) {
    admin
        .create_topic(
            name,
            TopicConfig {
                partitions,
                ..TopicConfig::default()
            },
        )
        .unwrap();
}

/// Bytes stored in `topic`, read live from its shards.
fn stored(admin: &Client, topic: &str) -> u64 {
    let d = admin.describe_topic(topic).unwrap();
    d.partitions.iter().map(|p| p.size_bytes).sum()
}

/// A producer of client id `id` pushing 8 KiB values round-robin over every partition of `topic`
/// until `stop`; returns how many times it was throttled.
fn push(addr: std::net::SocketAddr, id: &str, topic: &str, stop: Arc<AtomicBool>) -> u64 {
    let c = connect(addr, id);
    let producer = c
        .producer(ProducerConfig {
            acks: Acks::Written,
            batch_bytes: 128 << 10,
            buffer_bytes: 2 << 20,
            max_block_ms: 60_000,
            ..ProducerConfig::default()
        })
        .unwrap();
    let value = vec![b'q'; 8 << 10];
    let mut pending = std::collections::VecDeque::new();
    let mut failed = 0;
    while !stop.load(Ordering::Relaxed) {
        pending.push_back(producer.send(ProducerRecord::new(topic, value.clone())));
        if pending.len() > 256 {
            if let Some(f) = pending.pop_front() {
                failed += u64::from(f.wait().is_err());
            }
        }
    }
    for f in pending {
        failed += u64::from(f.wait().is_err());
    }
    producer.close();
    assert_eq!(failed, 0, "{id}: sends failed");
    producer.throttle_count()
}

#[test]
fn given_a_produce_quota_on_one_client_id_over_all_shards_it_should_hold_and_spare_others() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let admin = client(&broker, "admin");
    // Four partitions: two on each shard, so the greedy client writes through both.
    topic(&admin, "limited", 4);
    topic(&admin, "free", 4);
    let d = admin.describe_topic("limited").unwrap();
    let shards: std::collections::BTreeSet<u16> = d.partitions.iter().map(|p| p.shard).collect();
    assert_eq!(shards.len(), 2, "the topic spans both shards");
    admin
        .set_quota(
            &QuotaEntity::Client("greedy".into()),
            &QuotaLimits {
                produce_bytes: Some(QUOTA),
                ..QuotaLimits::default()
            },
        )
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let run = |id: &'static str, t: &'static str| {
        let (stop, addr) = (stop.clone(), broker.addr);
        std::thread::spawn(move || push(addr, id, t, stop))
    };
    let greedy = run("greedy", "limited");
    let calm = run("calm", "free");
    std::thread::sleep(WARMUP);
    let (g0, c0, t0) = (
        stored(&admin, "limited"),
        stored(&admin, "free"),
        Instant::now(),
    );
    std::thread::sleep(WINDOW);
    let (g1, c1, took) = (
        stored(&admin, "limited"),
        stored(&admin, "free"),
        t0.elapsed(),
    );
    stop.store(true, Ordering::Relaxed);
    let greedy_throttles = greedy.join().unwrap();
    let calm_throttles = calm.join().unwrap();

    let greedy_rate = (g1 - g0) as f64 / took.as_secs_f64();
    let calm_rate = (c1 - c0) as f64 / took.as_secs_f64();
    let ratio = greedy_rate / QUOTA as f64;
    eprintln!(
        "quota {QUOTA} B/s: greedy {greedy_rate:.0} B/s ({ratio:.3}x, {greedy_throttles} throttles), \
         calm {calm_rate:.0} B/s ({:.2}x the quota, {calm_throttles} throttles) over {took:?}",
        calm_rate / QUOTA as f64
    );
    assert!(
        (0.7..=1.1).contains(&ratio),
        "greedy ran at {ratio:.3}x its quota"
    );
    assert!(greedy_throttles > 0, "the greedy client saw no throttle");
    assert_eq!(calm_throttles, 0, "the other client id was throttled");
    assert!(
        calm_rate > 0.0,
        "the other client id made no progress while the greedy one was throttled"
    );
    let stats = admin.stats().unwrap();
    let throttled: u64 = stats.shards.iter().map(|s| s.quota_throttled).sum();
    assert!(
        throttled >= greedy_throttles,
        "{throttled} < {greedy_throttles}"
    );
}

#[test]
fn given_a_fetch_quota_a_consumer_should_be_paced_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let admin = client(&broker, "admin");
    topic(&admin, "reads", 2);
    let producer = admin.producer(ProducerConfig::default()).unwrap();
    let value = vec![b'r'; 4 << 10];
    let futures: Vec<_> = (0..500)
        .map(|_| producer.send(ProducerRecord::new("reads", value.clone())))
        .collect();
    for f in futures {
        f.wait().unwrap();
    }
    producer.close();
    let total = stored(&admin, "reads");
    // A quarter of what is stored per second: reading it all takes about 4 s (less the burst).
    let rate = total / 4;
    admin
        .set_quota(
            &QuotaEntity::Client("slow-reader".into()),
            &QuotaLimits {
                fetch_bytes: Some(rate),
                ..QuotaLimits::default()
            },
        )
        .unwrap();
    let reader = client(&broker, "slow-reader");
    let mut consumer = reader
        .consumer(ConsumerConfig {
            start: StartFrom::Earliest,
            fetch_max_bytes: 256 << 10,
            ..ConsumerConfig::new("reads")
        })
        .unwrap();
    let start = Instant::now();
    let mut got = 0;
    while got < 500 && start.elapsed() < Duration::from_secs(30) {
        got += consumer.poll(Duration::from_millis(500)).unwrap().len();
    }
    let took = start.elapsed();
    eprintln!("read {total} B under a {rate} B/s fetch quota in {took:?}");
    assert_eq!(got, 500, "every message was read, in time");
    assert!(
        took >= Duration::from_millis(2_500),
        "the fetch quota did not pace the consumer: {took:?}"
    );
    let stats = admin.stats().unwrap();
    assert!(stats.shards.iter().map(|s| s.quota_throttled).sum::<u64>() > 0);
}

#[test]
fn quota_cli_should_set_list_delete_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = TestBroker::start(dir.path(), &[]);
    let (code, _, err) = levee_cli(
        &broker,
        &[
            "quota",
            "set",
            "--client",
            "web 1",
            "--produce-bytes-per-sec",
            "1000000",
            "--fetch-messages-per-sec",
            "500",
        ],
        "",
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = levee_cli(
        &broker,
        &[
            "quota",
            "set",
            "--topic",
            "orders",
            "--produce-messages-per-sec",
            "20",
        ],
        "",
        &[],
    );
    assert_eq!(code, 0, "{err}");
    // Merged: the produce rate stays, the fetch rate changes.
    let (code, _, err) = levee_cli(
        &broker,
        &[
            "quota",
            "set",
            "--client",
            "web 1",
            "--fetch-messages-per-sec",
            "600",
        ],
        "",
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let expected = "client\tweb 1\t1000000\t-\t-\t600\ntopic\torders\t-\t20\t-\t-\n";
    let (code, out, err) = levee_cli(&broker, &["quota", "list"], "", &[]);
    assert_eq!((code, out.as_str()), (0, expected), "{err}");

    // Usage errors exit 2; a missing quota exits 1 with an error line.
    for bad in [
        &["quota", "set", "--client", "x"][..],
        &["quota", "set", "--produce-bytes-per-sec", "1"][..],
        &[
            "quota",
            "set",
            "--client",
            "x",
            "--topic",
            "y",
            "--produce-bytes-per-sec",
            "1",
        ][..],
        &[
            "quota",
            "set",
            "--client",
            "x",
            "--produce-bytes-per-sec",
            "0",
        ][..],
    ] {
        let (code, _, err) = levee_cli(&broker, bad, "", &[]);
        assert_eq!(code, 2, "{bad:?}: {err}");
    }
    let (code, _, err) = levee_cli(&broker, &["quota", "delete", "--client", "nobody"], "", &[]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error:"), "{err}");

    assert!(broker.stop());
    let broker = TestBroker::start(dir.path(), &[]);
    let (code, out, err) = levee_cli(&broker, &["quota", "list"], "", &[]);
    assert_eq!(
        (code, out.as_str()),
        (0, expected),
        "kept across a restart: {err}"
    );
    let (code, _, err) = levee_cli(&broker, &["quota", "delete", "--topic", "orders"], "", &[]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = levee_cli(&broker, &["quota", "list"], "", &[]);
    assert_eq!(out, "client\tweb 1\t1000000\t-\t-\t600\n");
}

#[test]
fn stats_cli_should_print_shards_topics_and_group_lag() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let admin = client(&broker, "admin");
    topic(&admin, "orders", 1);
    let producer = admin.producer(ProducerConfig::default()).unwrap();
    for i in 0..10 {
        producer
            .send(ProducerRecord::new("orders", format!("o{i}")).with_partition(0))
            .wait()
            .unwrap();
    }
    producer.close();
    let (code, _, err) = levee_cli(
        &broker,
        &[
            "consume", "orders", "--group", "billing", "--from", "earliest", "--count", "4",
        ],
        "",
        &[],
    );
    assert_eq!(code, 0, "{err}");
    // Snapshots of partitions are published every 500 ms; the two samples are 300 ms apart.
    std::thread::sleep(Duration::from_millis(700));
    let (code, out, err) = levee_cli(&broker, &["stats", "--interval-ms", "300"], "", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("broker: up "), "{out}");
    assert!(
        out.contains("SHARD") && out.contains("QUOTA-THROTTLED"),
        "{out}"
    );
    let row = |prefix: &str| {
        out.lines()
            .find(|l| {
                l.split_whitespace()
                    .collect::<Vec<_>>()
                    .starts_with(&prefix.split(' ').collect::<Vec<_>>())
            })
            .unwrap_or_else(|| panic!("no row '{prefix}' in\n{out}"))
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    // TOPIC PARTITION START END ...
    assert_eq!(row("orders 0")[3], "10", "{out}");
    // GROUP TOPIC PARTITION COMMITTED LAG
    let g = row("billing orders 0");
    assert_eq!((g[3].as_str(), g[4].as_str()), ("4", "6"), "{out}");
    assert!(
        !out.contains("__"),
        "internal topics hidden by default: {out}"
    );
    let (code, out, _) = levee_cli(
        &broker,
        &[
            "stats",
            "--watch",
            "--count",
            "2",
            "--interval-ms",
            "100",
            "--internal",
        ],
        "",
        &[],
    );
    assert_eq!(code, 0);
    assert_eq!(
        out.matches("\x1b[H\x1b[2J").count(),
        2,
        "redrawn in place twice"
    );
    assert!(out.contains("__"), "internal topics shown with --internal");
}

#[test]
fn given_a_produce_quota_fire_and_forget_sends_should_be_slowed_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let admin = client(&broker, "admin");
    topic(&admin, "fire", 1);
    let rate = 1_000_000;
    admin
        .set_quota(
            &QuotaEntity::Client("fire-and-forget".into()),
            &QuotaLimits {
                produce_bytes: Some(rate),
                ..QuotaLimits::default()
            },
        )
        .unwrap();
    let c = client(&broker, "fire-and-forget");
    let producer = c
        .producer(ProducerConfig {
            acks: Acks::None,
            ..ProducerConfig::default()
        })
        .unwrap();
    let start = Instant::now();
    let n = 400u64;
    for i in 0..n {
        // About 10 KB each: 4 MB in all, four seconds' worth of quota.
        let value = format!("{i:06}{}", "f".repeat(10_000));
        producer.send(ProducerRecord::new("fire", value).with_partition(0));
    }
    producer.close();
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin.describe_topic("fire").unwrap().partitions[0].next < n && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = start.elapsed();
    let stored = stored(&admin, "fire");
    eprintln!("{stored} B fired under a {rate} B/s quota stored in {took:?}");
    assert_eq!(
        admin.describe_topic("fire").unwrap().partitions[0].next,
        n,
        "nothing lost"
    );
    assert!(
        took >= Duration::from_millis(2_500),
        "not slowed to the quota: {took:?}"
    );
    // In order and whole: the held requests kept their place.
    let mut values = Vec::new();
    while (values.len() as u64) < n {
        let fetched = admin
            .fetch("fire", 0, values.len() as u64, 1 << 20, 0)
            .unwrap();
        for r in fetched.records() {
            let r = r.unwrap();
            let m = r.message().unwrap();
            values.push(
                std::str::from_utf8(&m.value[..6])
                    .unwrap()
                    .parse::<u64>()
                    .unwrap(),
            );
        }
    }
    assert_eq!(values, (0..n).collect::<Vec<u64>>(), "out of order or lost");
}
