//! Hostile and broken input: every bad frame gets a typed error response or a closed connection,
//! the broker keeps serving other clients, and nothing stored is affected.
#![cfg(feature = "broker")]

mod common;

use std::io::Write;
use std::net::Shutdown;

use common::{Raw, TestBroker};
use levee::protocol::{
    self, Acks, ErrorCode, FetchBlock, FetchRequest, Request, Response, TopicConfig,
};
use levee::record::{self, Message, Records};
use rand::{Rng, SeedableRng};

fn records(n: u64) -> Vec<u8> {
    let mut run = Vec::new();
    for i in 0..n {
        let m = Message {
            value: format!("good-{i}").into_bytes(),
            ..Message::default()
        };
        record::encode(&m, &mut run).unwrap();
    }
    run
}

fn produce(raw: &mut Raw, cid: u32, run: &[u8]) -> (ErrorCode, u64) {
    let mut out = Vec::new();
    protocol::encode_produce(&mut out, cid, Acks::Written, 5000, &[("t", 0, run)]).unwrap();
    raw.send(&out);
    let frame = raw.recv().expect("produce response");
    let (h, body) = protocol::decode_response(&frame).unwrap();
    assert_eq!(h.correlation_id, cid);
    let Some(Response::Produce(r)) = body else {
        panic!("not a produce response: {h:?}")
    };
    (r[0].error, r[0].base_offset)
}

/// Fetches partition 0 of `t` from offset 0 and returns the values stored.
fn stored_values(raw: &mut Raw) -> Vec<String> {
    let req = Request::Fetch(FetchRequest {
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: 1 << 20,
        blocks: vec![FetchBlock {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
        }],
    });
    let (h, body, frame) = raw.call(99, &req);
    assert_eq!(h.error_code, ErrorCode::None);
    let Some(Response::Fetch(r)) = body else {
        panic!("not fetch")
    };
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(&frame[r[0].run.clone()]);
    Records::new(&aligned, 1 << 20)
        .map(|r| {
            let r = r.expect("served records pass their CRC");
            String::from_utf8(r.message().unwrap().value.to_vec()).unwrap()
        })
        .collect()
}

fn expect_error_then_open(raw: &mut Raw, frame: &[u8], code: ErrorCode) {
    raw.send(frame);
    let resp = raw.recv().expect("an error response");
    let (h, _) = protocol::decode_response(&resp).unwrap();
    assert_eq!(h.error_code, code);
    assert!(
        !protocol::error_message(&resp).is_empty(),
        "errors carry a message"
    );
    // The connection goes on.
    let (h, _, _) = raw.call(
        1000,
        &Request::ApiVersions {
            client_id: "after".into(),
        },
    );
    assert_eq!(h.error_code, ErrorCode::None);
}

#[test]
fn given_hostile_frames_when_sent_should_answer_typed_or_close_and_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = TestBroker::start(dir.path(), &[]);
    let mut good = Raw::connect(broker.addr);
    let (h, _, _) = good.call(
        1,
        &Request::CreateTopic {
            name: "t".into(),
            config: TopicConfig {
                partitions: 1,
                retention_bytes: None,
                retention_ms: None,
                visibility: None,
                ..Default::default()
            },
        },
    );
    assert_eq!(h.error_code, ErrorCode::None);
    assert_eq!(produce(&mut good, 2, &records(3)), (ErrorCode::None, 0));

    // Random bytes: an error response or a closed connection, never a hang or a crash.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    for _ in 0..20 {
        let mut raw = Raw::connect(broker.addr);
        let n = rng.gen_range(1..2000);
        let junk: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
        raw.send(&junk);
        raw.stream.shutdown(Shutdown::Write).unwrap();
        while let Some(frame) = raw.recv() {
            let (h, _) = protocol::decode_response(&frame).expect("well-formed error response");
            assert_ne!(h.error_code, ErrorCode::None);
        }
    }

    // A frame claiming 4 GiB: refused from its size field, before any allocation, then closed.
    let mut raw = Raw::connect(broker.addr);
    let mut huge = vec![0xff, 0xff, 0xff, 0xff];
    huge.extend_from_slice(&[8, 0, 0, 0, 42, 0, 0, 0, 0, 0, 0, 0]);
    raw.send(&huge);
    let resp = raw.recv().expect("frame-too-large response");
    let (h, _) = protocol::decode_response(&resp).unwrap();
    assert_eq!(
        (h.error_code, h.correlation_id),
        (ErrorCode::FrameTooLarge, 42)
    );
    assert!(
        raw.recv().is_none(),
        "the connection is closed after an undelimitable frame"
    );

    // Unknown api key and unsupported version: typed errors, connection stays open.
    let mut raw = Raw::connect(broker.addr);
    let mut frame = Vec::new();
    protocol::encode_request(&mut frame, 5, &Request::ListTopics { internal: false }).unwrap();
    frame[4] = 250;
    expect_error_then_open(&mut raw, &frame, ErrorCode::UnknownApiKey);
    protocol::encode_request(&mut frame, 6, &Request::ListTopics { internal: false }).unwrap();
    frame[6] = 9;
    expect_error_then_open(&mut raw, &frame, ErrorCode::UnsupportedVersion);
    // A body that does not decode (a string running past the frame).
    protocol::encode_request(&mut frame, 7, &Request::DescribeTopic { name: "t".into() }).unwrap();
    frame[16] = 200;
    expect_error_then_open(&mut raw, &frame, ErrorCode::InvalidRequest);

    // A truncated frame followed by EOF: closed without a response.
    let mut raw = Raw::connect(broker.addr);
    protocol::encode_request(&mut frame, 8, &Request::ListTopics { internal: false }).unwrap();
    let mut cut = frame.clone();
    cut[0] = 100;
    raw.stream.write_all(&cut).unwrap();
    raw.stream.shutdown(Shutdown::Write).unwrap();
    assert!(raw.recv().is_none());

    // A record whose CRC does not match: typed per-partition error, nothing of the batch stored.
    let mut bad = records(2);
    bad[record::HEADER_LEN + 1] ^= 0x55;
    assert_eq!(produce(&mut good, 9, &bad).0, ErrorCode::CorruptRecord);
    // A valid CRC over bytes that are not an archive is refused as well.
    let mut forged = vec![0u8; record::HEADER_LEN];
    let garbage = [0xffu8; 32];
    forged.extend_from_slice(&garbage);
    forged[0..4].copy_from_slice(&record::archive_crc(&garbage).to_le_bytes());
    forged[4..8].copy_from_slice(&(garbage.len() as u32).to_le_bytes());
    forged[24] = record::RECORD_VERSION; // a well-formed header, so the archive check is what refuses
    assert_eq!(produce(&mut good, 10, &forged).0, ErrorCode::CorruptRecord);
    // A record claiming a format version this broker does not know.
    let mut future = records(1);
    future[24] = 9;
    assert_eq!(produce(&mut good, 13, &future).0, ErrorCode::CorruptRecord);
    // Unknown topic: typed, named.
    let mut out = Vec::new();
    protocol::encode_produce(
        &mut out,
        11,
        Acks::Written,
        1000,
        &[("missing", 0, &records(1))],
    )
    .unwrap();
    good.send(&out);
    let (_, body) = protocol::decode_response(&good.recv().unwrap()).unwrap();
    let Some(Response::Produce(r)) = body else {
        panic!()
    };
    assert_eq!(r[0].error, ErrorCode::UnknownTopic);

    // A fetch of thousands of blocks cannot build an unbounded response: past the byte budget,
    // blocks come back with offsets but no records.
    let many = Request::Fetch(FetchRequest {
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: 100,
        blocks: (0..5000)
            .map(|_| FetchBlock {
                topic: "t".into(),
                partition: 0,
                offset: 0,
                max_bytes: 1 << 20,
            })
            .collect(),
    });
    let (h, body, _) = good.call(14, &many);
    assert_eq!(h.error_code, ErrorCode::None);
    let Some(Response::Fetch(r)) = body else {
        panic!("not fetch")
    };
    assert_eq!(r.len(), 5000);
    assert!(
        !r[0].run.is_empty(),
        "the first block gets at least one record"
    );
    assert!(r[1..].iter().all(|b| b.run.is_empty() && b.next == 3));

    // Through all of it the first client was served, and the stored data is exactly what it wrote.
    assert_eq!(stored_values(&mut good), vec!["good-0", "good-1", "good-2"]);
    assert_eq!(produce(&mut good, 12, &records(1)), (ErrorCode::None, 3));
    assert!(broker.stop(), "graceful shutdown exits 0");
}

#[test]
fn given_running_broker_when_second_starts_on_same_dir_should_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = TestBroker::start(dir.path(), &[]);
    let second = TestBroker::try_start(dir.path(), &[]);
    let err = second.err().expect("second broker must not start");
    assert!(err.contains("locked by another running broker"), "{err}");
    assert!(first.stop());
}
