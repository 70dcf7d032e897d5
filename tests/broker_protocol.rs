//! Protocol behaviour of a real broker: pipelining, long-poll, metadata and restart.
#![cfg(feature = "broker")]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{create, one_record, Raw, TestBroker};
use levee::protocol::{
    self, Acks, ErrorCode, FetchBlock, FetchRequest, ListOffsetsBlock, OffsetSpec, Request,
    Response,
};

#[test]
fn given_1000_requests_in_flight_on_one_connection_should_match_every_correlation_id() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let mut raw = Raw::connect(broker.addr);
    create(&mut raw, "pipe", 4);
    // Write all 1000 requests before reading any response: produces to every partition (some
    // forwarded to the other shard) mixed with offset lookups.
    let mut all = Vec::new();
    let mut frame = Vec::new();
    for cid in 0..1000u32 {
        if cid % 2 == 0 {
            let run = one_record(&format!("m{cid}"));
            protocol::encode_produce(
                &mut frame,
                cid,
                Acks::Written,
                5000,
                &[("pipe", (cid / 2) % 4, &run)],
            )
            .unwrap();
        } else {
            protocol::encode_request(
                &mut frame,
                cid,
                &Request::ListOffsets(vec![ListOffsetsBlock {
                    topic: "pipe".into(),
                    partition: cid % 4,
                    spec: OffsetSpec::Latest,
                }]),
            )
            .unwrap();
        }
        all.extend_from_slice(&frame);
    }
    let mut writer = raw.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        writer.write_all(&all).unwrap();
    });
    let mut seen = HashSet::new();
    let mut offsets_per_partition = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..1000 {
        let frame = raw.recv().expect("a response for every request");
        let (h, body) = protocol::decode_response(&frame).unwrap();
        assert_eq!(h.error_code, ErrorCode::None);
        assert!(
            seen.insert(h.correlation_id),
            "duplicate correlation id {}",
            h.correlation_id
        );
        if let Some(Response::Produce(r)) = body {
            assert_eq!(r[0].error, ErrorCode::None);
            assert_eq!(r[0].partition, (h.correlation_id / 2) % 4);
            offsets_per_partition[r[0].partition as usize]
                .push((h.correlation_id, r[0].base_offset));
        }
    }
    sender.join().unwrap();
    assert_eq!(seen, (0..1000u32).collect::<HashSet<u32>>());
    // Pipelined produces to one partition were appended in the order they were sent.
    for per in &mut offsets_per_partition {
        per.sort();
        let offsets: Vec<u64> = per.iter().map(|(_, o)| *o).collect();
        assert_eq!(offsets, (0..125).collect::<Vec<u64>>());
    }
}

#[test]
fn given_long_poll_on_empty_partition_when_message_arrives_should_return_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let mut admin = Raw::connect(broker.addr);
    create(&mut admin, "lp", 2);
    for partition in 0..2 {
        // Partition 0 and 1 live on different shards: one poll is local, one is forwarded.
        let addr = broker.addr;
        let poller = std::thread::spawn(move || {
            let mut raw = Raw::connect(addr);
            let started = Instant::now();
            let (h, body, _) = raw.call(
                7,
                &Request::Fetch(FetchRequest {
                    max_wait_ms: 10_000,
                    min_bytes: 1,
                    max_bytes: 1 << 20,
                    blocks: vec![FetchBlock {
                        topic: "lp".into(),
                        partition,
                        offset: 0,
                        max_bytes: 1 << 20,
                    }],
                }),
            );
            assert_eq!(h.error_code, ErrorCode::None);
            let Some(Response::Fetch(r)) = body else {
                panic!("not fetch")
            };
            (Instant::now(), started, r[0].run.len())
        });
        std::thread::sleep(Duration::from_millis(1500));
        let sent = Instant::now();
        let mut frame = Vec::new();
        protocol::encode_produce(
            &mut frame,
            3,
            Acks::Written,
            5000,
            &[("lp", partition, &one_record("wake"))],
        )
        .unwrap();
        admin.send(&frame);
        admin.recv().unwrap();
        let (returned, started, bytes) = poller.join().unwrap();
        assert!(bytes > 0, "the poll returns the new record");
        assert!(
            returned.duration_since(started) >= Duration::from_millis(1400),
            "it did wait"
        );
        assert!(
            returned.saturating_duration_since(sent) < Duration::from_secs(1),
            "returned {:?} after the message arrived",
            returned.saturating_duration_since(sent)
        );
    }
}

#[test]
fn given_topics_and_data_when_broker_restarts_should_keep_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = TestBroker::start(dir.path(), &[]);
    let mut raw = Raw::connect(broker.addr);
    create(&mut raw, "keep", 3);
    let mut frame = Vec::new();
    for p in 0..3 {
        protocol::encode_produce(
            &mut frame,
            2,
            Acks::Durable,
            5000,
            &[("keep", p, &one_record("x"))],
        )
        .unwrap();
        raw.send(&frame);
        raw.recv().unwrap();
    }
    let (_, body, _) = raw.call(3, &Request::Metadata { topics: vec![] });
    let Some(Response::Metadata { shards, topics }) = body else {
        panic!()
    };
    assert_eq!(shards.len(), 2);
    assert_eq!(topics[0].partitions.len(), 3);
    drop(raw);
    assert!(broker.stop());

    let broker = TestBroker::start(dir.path(), &[]);
    let mut raw = Raw::connect(broker.addr);
    let (_, body, _) = raw.call(
        4,
        &Request::DescribeTopic {
            name: "keep".into(),
        },
    );
    let Some(Response::DescribeTopic { partitions, .. }) = body else {
        panic!()
    };
    assert_eq!(
        partitions.iter().map(|p| p.next).collect::<Vec<_>>(),
        vec![1, 1, 1]
    );
    assert!(partitions.iter().all(|p| p.durable == 1));
}
