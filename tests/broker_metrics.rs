//! `/metrics` against a real broker after a known workload: exact log end offsets, committed
//! offsets and lag; the output parses as Prometheus text; request and fsync histograms and the
//! per-shard liveness are there.

mod common;

use std::time::{Duration, Instant};

use common::TestBroker;
use levee::client::{Client, ClientConfig, ProducerConfig, ProducerRecord};
use levee::protocol::{Acks, CommitOffset, OffsetCommitRequest, TopicConfig};
use prometheus_parse::{Sample, Scrape, Value};

fn scrape(broker: &TestBroker) -> Scrape {
    let body = broker.http_get("/metrics");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("parses as Prometheus text")
}

/// A metric, its labels, its value.
type Expected = (&'static str, &'static [(&'static str, &'static str)], f64);

fn value(s: &Sample) -> f64 {
    match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        _ => f64::NAN,
    }
}

/// The value of `metric` with exactly these labels, if present.
fn find(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(value)
}

#[test]
fn given_a_known_workload_metrics_should_report_exact_offsets_commits_and_lag() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let client = Client::connect(&broker.addr.to_string(), ClientConfig::default()).unwrap();
    client
        .create_topic(
            "m",
            TopicConfig {
                partitions: 2,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    let producer = client
        .producer(ProducerConfig {
            acks: Acks::Durable,
            ..ProducerConfig::default()
        })
        .unwrap();
    let sends: Vec<_> = (0..17)
        .map(|i| {
            producer
                .send(ProducerRecord::new("m", format!("v{i}")).with_partition(u32::from(i >= 10)))
        })
        .collect();
    for s in sends {
        s.wait().unwrap();
    }
    producer.close();
    // Group g has no members: its offsets are committed as an administrator would.
    client
        .commit_offsets(&OffsetCommitRequest {
            group: "g".into(),
            member_id: String::new(),
            generation: 0,
            offsets: vec![
                CommitOffset {
                    topic: "m".into(),
                    partition: 0,
                    offset: 4,
                    metadata: String::new(),
                },
                CommitOffset {
                    topic: "m".into(),
                    partition: 1,
                    offset: 7,
                    metadata: String::new(),
                },
            ],
        })
        .unwrap();

    let expected: [Expected; 6] = [
        (
            "levee_partition_log_end_offset",
            &[("topic", "m"), ("partition", "0")],
            10.0,
        ),
        (
            "levee_partition_log_end_offset",
            &[("topic", "m"), ("partition", "1")],
            7.0,
        ),
        (
            "levee_group_committed_offset",
            &[("group", "g"), ("topic", "m"), ("partition", "0")],
            4.0,
        ),
        (
            "levee_group_committed_offset",
            &[("group", "g"), ("topic", "m"), ("partition", "1")],
            7.0,
        ),
        (
            "levee_group_lag",
            &[("group", "g"), ("topic", "m"), ("partition", "0")],
            6.0,
        ),
        (
            "levee_group_lag",
            &[("group", "g"), ("topic", "m"), ("partition", "1")],
            0.0,
        ),
    ];
    // Shards publish snapshots every 500 ms: the figures are exact once the next one is out.
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = scrape(&broker);
        let all = expected
            .iter()
            .all(|(m, labels, v)| find(&s, m, labels) == Some(*v));
        if all {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never matched: {:?}",
            expected
                .iter()
                .map(|(m, l, v)| (m, l, v, find(&s, m, l)))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        find(
            &s,
            "levee_partition_log_start_offset",
            &[("topic", "m"), ("partition", "0")]
        ),
        Some(0.0)
    );
    assert!(
        find(
            &s,
            "levee_partition_bytes",
            &[("topic", "m"), ("partition", "0")]
        )
        .unwrap()
            > 0.0
    );
    // Counters and histograms.
    let records_in: f64 = s
        .samples
        .iter()
        .filter(|x| x.metric == "levee_records_in_total")
        .map(value)
        .sum();
    assert!(records_in >= 17.0, "records in: {records_in}");
    let produce_latency = s.samples.iter().find(|x| {
        x.metric == "levee_request_duration_seconds" && x.labels.get("api") == Some("Produce")
    });
    match produce_latency.map(|x| &x.value) {
        Some(Value::Histogram(buckets)) => {
            assert!(
                buckets.last().unwrap().count >= 1.0,
                "produce requests observed"
            )
        }
        other => panic!("no produce latency histogram: {other:?}"),
    }
    match s
        .samples
        .iter()
        .find(|x| x.metric == "levee_fsync_duration_seconds")
        .map(|x| &x.value)
    {
        Some(Value::Histogram(buckets)) => {
            assert!(
                buckets.last().unwrap().count >= 1.0,
                "acks=durable made flushes"
            )
        }
        other => panic!("no fsync histogram: {other:?}"),
    }
    for shard in ["0", "1"] {
        assert_eq!(find(&s, "levee_shard_up", &[("shard", shard)]), Some(1.0));
    }
    assert!(
        s.docs.contains_key("levee_group_lag"),
        "HELP lines are there"
    );
}
