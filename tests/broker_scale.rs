//! Bounded cost per partition: 10,000 partitions (100 topics × 100) on a real broker process.
//!
//! Partitions open lazily and share the storage threads, so the broker starts in seconds with them
//! on disk, holds little memory and few threads, and a produce to every one of them succeeds.
//! The figures this test prints are in tuning.md ("Many partitions").
#![cfg(feature = "broker")]

mod common;

use std::time::{Duration, Instant};

use common::{create, one_record, Raw, TestBroker};
use levee::protocol::{self, Acks, ErrorCode, ListOffsetsBlock, OffsetSpec, Request, Response};

const TOPICS: u32 = 100;
const PARTITIONS: u32 = 100;
const SHARDS: usize = 2;

/// One Produce request per topic, a block for each of its partitions.
fn produce_everywhere(raw: &mut Raw, round: u32) {
    let record = one_record(&format!("round {round}"));
    for t in 0..TOPICS {
        let topic = format!("t{t:03}");
        let blocks: Vec<(&str, u32, &[u8])> = (0..PARTITIONS)
            .map(|p| (topic.as_str(), p, record.as_slice()))
            .collect();
        let mut out = Vec::new();
        protocol::encode_produce(&mut out, t, Acks::Written, 30_000, &blocks).unwrap();
        raw.send(&out);
        let frame = raw.recv().expect("produce response");
        let (_, body) = protocol::decode_response(&frame).unwrap();
        let Some(Response::Produce(results)) = body else {
            panic!("produce to {topic}: {}", protocol::error_message(&frame))
        };
        assert_eq!(results.len(), PARTITIONS as usize);
        for r in results {
            assert_eq!(r.error, ErrorCode::None, "{}/{}", r.topic, r.partition);
            assert_eq!(r.base_offset, round as u64, "{}/{}", r.topic, r.partition);
        }
    }
}

fn report(what: &str, broker: &TestBroker) -> (u64, usize) {
    let (rss, threads) = (broker.rss_anon_bytes(), broker.threads());
    eprintln!("{what}: RssAnon {} MiB, {threads} threads", rss >> 20);
    (rss, threads)
}

#[test]
fn given_10000_partitions_when_restarting_and_producing_should_stay_fast_and_small() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = TestBroker::start(dir.path(), &[]);
    let mut raw = Raw::connect(broker.addr);
    let started = Instant::now();
    for t in 0..TOPICS {
        create(&mut raw, &format!("t{t:03}"), PARTITIONS);
    }
    eprintln!(
        "created {} partitions in {:?}",
        TOPICS * PARTITIONS,
        started.elapsed()
    );
    let started = Instant::now();
    produce_everywhere(&mut raw, 0);
    eprintln!("first produce to every partition: {:?}", started.elapsed());
    let (rss, threads) = report("all partitions open", &broker);
    assert!(rss <= 1 << 30);
    assert!(threads <= SHARDS + 16, "{threads} threads");
    drop(raw);
    assert!(broker.stop());

    let started = Instant::now();
    let broker = TestBroker::start(dir.path(), &[]);
    let ready = started.elapsed();
    eprintln!("restart with 10,000 partitions on disk: ready in {ready:?}");
    assert!(ready <= Duration::from_secs(5), "start took {ready:?}");
    report("restarted, nothing open", &broker);
    let mut raw = Raw::connect(broker.addr);
    let started = Instant::now();
    produce_everywhere(&mut raw, 1);
    eprintln!(
        "produce to every partition after the restart: {:?}",
        started.elapsed()
    );
    let (rss, threads) = report("all partitions open again", &broker);
    assert!(rss <= 1 << 30);
    assert!(threads <= SHARDS + 16, "{threads} threads");
    // Every partition holds both records.
    let (_, body, _) = raw.call(
        1,
        &Request::ListOffsets(
            (0..TOPICS)
                .flat_map(|t| {
                    (0..PARTITIONS).map(move |p| ListOffsetsBlock {
                        topic: format!("t{t:03}"),
                        partition: p,
                        spec: OffsetSpec::Latest,
                    })
                })
                .collect(),
        ),
    );
    let Some(Response::ListOffsets(r)) = body else {
        panic!("list offsets")
    };
    assert!(r
        .iter()
        .all(|r| r.error == ErrorCode::None && r.offset == 2));
}
