//! Regression tests for what a client written from docs/protocol.md alone, and bad traffic, found
//! in the broker (the server-core issue, items 3 and 6 to 14). Each fails on the code before its
//! fix; the item each covers is in its name's comment.
#![cfg(feature = "broker")]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{create, levee_cli, one_record, Raw, TestBroker};
use levee::protocol::{
    self, Acks, ApiKey, ErrorCode, FetchBlock, FetchRequest, ListOffsetsBlock, OffsetSpec, Request,
    Response, TopicConfig, FRAME_SIZE_MAX,
};

fn produce(raw: &mut Raw, cid: u32, topic: &str, run: &[u8]) -> (ErrorCode, u64) {
    let mut out = Vec::new();
    protocol::encode_produce(&mut out, cid, Acks::Written, 5000, &[(topic, 0, run)]).unwrap();
    raw.send(&out);
    let frame = raw.recv().expect("produce response");
    let (h, body) = protocol::decode_response(&frame).unwrap();
    assert_eq!(h.correlation_id, cid);
    let Some(Response::Produce(r)) = body else {
        panic!(
            "not a produce response: {h:?} {}",
            protocol::error_message(&frame)
        )
    };
    (r[0].error, r[0].base_offset)
}

fn fetch_one(topic: &str, offset: u64, min_bytes: u32, max_wait_ms: u32) -> Request {
    Request::Fetch(FetchRequest {
        max_wait_ms,
        min_bytes,
        max_bytes: 1 << 20,
        blocks: vec![FetchBlock {
            topic: topic.into(),
            partition: 0,
            offset,
            max_bytes: 1 << 20,
        }],
    })
}

fn fetched_bytes(body: &Option<Response>) -> usize {
    match body {
        Some(Response::Fetch(r)) => r.iter().map(|b| b.run.len()).sum(),
        other => panic!("not a fetch response: {other:?}"),
    }
}

// Item 3: one damaged byte in topic.meta deleted the topic's whole directory at the next start.
#[test]
fn given_a_damaged_topic_meta_when_restarting_should_quarantine_the_topic_and_keep_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = TestBroker::start(dir.path(), &[]);
    let mut raw = Raw::connect(broker.addr);
    create(&mut raw, "orders", 1);
    create(&mut raw, "other", 1);
    assert_eq!(
        produce(&mut raw, 2, "orders", &one_record("acked")).0,
        ErrorCode::None
    );
    assert_eq!(
        produce(&mut raw, 3, "other", &one_record("kept")).0,
        ErrorCode::None
    );
    drop(raw);
    assert!(broker.stop());
    let topics = dir.path().join("topics");
    let orders = std::fs::read_dir(&topics)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("orders.")
        })
        .unwrap();
    let meta = orders.join("topic.meta");
    let text = std::fs::read_to_string(&meta).unwrap();
    std::fs::write(&meta, text.replace("partitions=1", "partitions#1")).unwrap();

    let broker = TestBroker::start(dir.path(), &[]);
    let aside = std::path::PathBuf::from(format!("{}.quarantined", orders.display()));
    assert!(aside.join("0").is_dir(), "the data is kept, moved aside");
    assert!(!orders.exists());
    let metrics = broker.http_get("/metrics");
    assert!(metrics.contains("levee_topics_quarantined 1"), "{metrics}");
    let mut raw = Raw::connect(broker.addr);
    let (_, body, _) = raw.call(4, &Request::ListTopics { internal: false });
    assert_eq!(body, Some(Response::ListTopics(vec![("other".into(), 1)])));
    let (_, body, _) = raw.call(5, &fetch_one("other", 0, 1, 0));
    assert!(
        fetched_bytes(&body) > 0,
        "other topics are served as before"
    );
}

// Item 6: a request whose reserved header field was not 0 got no answer at all, and a CreateTopic
// with reserved=1 silently created nothing.
#[test]
fn given_a_nonzero_reserved_field_when_requesting_should_answer_invalid_request() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let mut raw = Raw::connect(broker.addr);
    let mut frame = Vec::new();
    protocol::encode_request(
        &mut frame,
        77,
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
    )
    .unwrap();
    frame[12] = 1;
    raw.send(&frame);
    let resp = raw.recv().expect("an answer");
    let (h, _) = protocol::decode_response(&resp).unwrap();
    assert_eq!(
        (h.correlation_id, h.error_code),
        (77, ErrorCode::InvalidRequest)
    );
    assert!(protocol::error_message(&resp).contains("reserved"));
    let (_, body, _) = raw.call(78, &Request::ListTopics { internal: false });
    assert_eq!(body, Some(Response::ListTopics(vec![])));
}

// Item 7: Fetch ignored min_bytes once any record was available.
#[test]
fn given_fewer_bytes_than_min_bytes_when_fetching_should_wait_for_more() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let mut raw = Raw::connect(broker.addr);
    create(&mut raw, "t", 1);
    let record = one_record("x");
    assert_eq!(record.len(), 96);
    assert_eq!(produce(&mut raw, 2, "t", &record).0, ErrorCode::None);
    let started = Instant::now();
    let (_, body, _) = raw.call(3, &fetch_one("t", 0, 97, 800));
    assert_eq!(
        fetched_bytes(&body),
        96,
        "what is there comes back at the deadline"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "answered after {:?}, before max_wait_ms",
        started.elapsed()
    );
    // A second record completes min_bytes: the wait ends early.
    let mut waiting = Raw::connect(broker.addr);
    let mut out = Vec::new();
    protocol::encode_request(&mut out, 4, &fetch_one("t", 0, 2 * 96, 20_000)).unwrap();
    waiting.send(&out);
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(produce(&mut raw, 5, "t", &record).0, ErrorCode::None);
    let frame = waiting.recv().expect("fetch response");
    let (_, body) = protocol::decode_response(&frame).unwrap();
    assert_eq!(fetched_bytes(&body), 192);
    assert!(started.elapsed() < Duration::from_secs(10));
}

// Item 8: a long poll pending at SIGTERM was never answered, and shutdown took 10 s.
#[test]
fn given_a_pending_long_poll_when_the_broker_stops_should_answer_it_and_exit_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = TestBroker::start(dir.path(), &[]);
    let mut raw = Raw::connect(broker.addr);
    create(&mut raw, "t", 1);
    let mut out = Vec::new();
    protocol::encode_request(&mut out, 9, &fetch_one("t", 0, 1, 30_000)).unwrap();
    raw.send(&out);
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    broker.terminate();
    let frame = raw.recv().expect("the pending long poll is answered");
    let (h, body) = protocol::decode_response(&frame).unwrap();
    assert_eq!(h.correlation_id, 9);
    assert_eq!(fetched_bytes(&body), 0);
    assert_eq!(broker.wait_exit(Duration::from_secs(8)), Some(0));
    assert!(started.elapsed() < Duration::from_secs(8));
}

// Item 9: a record with archive_len 0 got CorruptRecord (6); the protocol says RecordTooLarge (7).
#[test]
fn given_an_empty_archive_when_producing_should_answer_record_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let mut raw = Raw::connect(broker.addr);
    create(&mut raw, "t", 1);
    let mut run = one_record("x");
    run[4..8].copy_from_slice(&0u32.to_le_bytes());
    assert_eq!(produce(&mut raw, 2, "t", &run).0, ErrorCode::RecordTooLarge);
}

// Item 10 (and attack 1): a Fetch naming one partition thousands of times with max_bytes =
// u32::MAX made a response over the frame limit (and, past 4 GiB, killed the shard).
#[test]
fn given_a_fetch_asking_for_more_than_a_frame_when_answered_should_stay_within_the_frame_limit() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &["--fetch-bytes-max", "8388608"]);
    let mut raw = Raw::connect(broker.addr);
    create(&mut raw, "t", 1);
    let mut batch = Vec::new();
    for i in 0..1000 {
        batch.extend_from_slice(&one_record(&format!("{i:01000}")));
    }
    assert_eq!(produce(&mut raw, 2, "t", &batch).0, ErrorCode::None);
    let req = Request::Fetch(FetchRequest {
        max_wait_ms: 0,
        min_bytes: 1,
        max_bytes: u32::MAX,
        blocks: vec![
            FetchBlock {
                topic: "t".into(),
                partition: 0,
                offset: 0,
                max_bytes: u32::MAX,
            };
            4500
        ],
    });
    let (h, body, frame) = raw.call(3, &req);
    assert_eq!(h.error_code, ErrorCode::None);
    assert!(frame.len() <= FRAME_SIZE_MAX);
    let bytes = fetched_bytes(&body);
    assert!(
        bytes <= 8 << 20,
        "records bounded by fetch_bytes_max: {bytes}"
    );
    assert!(bytes >= batch.len(), "the first block is served whole");
    // The shard still answers everyone.
    let (_, body, _) = Raw::connect(broker.addr).call(4, &fetch_one("t", 0, 1, 0));
    assert!(fetched_bytes(&body) > 0);
}

// Item 11: §6.10 gave a ListOffsets lookup as "19 + name bytes"; it is 15 + name.
#[test]
fn given_the_protocol_document_when_read_should_size_list_offsets_lookups_as_encoded() {
    let mut one = Vec::new();
    let mut two = Vec::new();
    let lookup = |topic: &str| ListOffsetsBlock {
        topic: topic.into(),
        partition: 0,
        spec: OffsetSpec::Latest,
    };
    protocol::encode_request(&mut one, 1, &Request::ListOffsets(vec![lookup("abc")])).unwrap();
    protocol::encode_request(
        &mut two,
        1,
        &Request::ListOffsets(vec![lookup("abc"), lookup("abc")]),
    )
    .unwrap();
    let per_lookup = two.len() - one.len();
    assert_eq!(per_lookup, 15 + 3);
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md")).unwrap();
    let section = &doc[doc.find("### 6.10 ListOffsets").unwrap()..];
    assert!(
        section.contains("lookups, each (15 + name bytes)"),
        "§6.10 must give the encoded size"
    );
}

// Item 12: retention 0 meant "unlimited" for serve and alter but "keep nothing" for create, and
// u64::MAX was stored literally by CreateTopic.
#[test]
fn given_retention_zero_or_max_anywhere_should_mean_unlimited_and_keep_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(
        dir.path(),
        &[
            "--segment-bytes",
            "1048576",
            "--record-bytes-max",
            "65536",
            "--retention-check-ms",
            "100",
        ],
    );
    let (code, _, err) = levee_cli(
        &broker,
        &["topic", "create", "zero", "--retention-bytes", "0"],
        "",
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let mut raw = Raw::connect(broker.addr);
    let (h, _, _) = raw.call(
        2,
        &Request::CreateTopic {
            name: "max".into(),
            config: TopicConfig {
                partitions: 1,
                retention_bytes: Some(u64::MAX),
                retention_ms: Some(0),
                visibility: None,
                ..Default::default()
            },
        },
    );
    assert_eq!(h.error_code, ErrorCode::None);
    for (i, topic) in ["zero", "max"].into_iter().enumerate() {
        let (_, body, _) = raw.call(3, &Request::DescribeTopic { name: topic.into() });
        let Some(Response::DescribeTopic { config, .. }) = body else {
            panic!("describe {topic}")
        };
        assert_eq!(config.retention_bytes, None, "{topic}");
        if i == 1 {
            assert_eq!(config.retention_ms, None, "{topic}");
        }
    }
    // Several segments' worth of records, then a few retention passes: nothing is deleted.
    let mut batch = Vec::new();
    for i in 0..400 {
        batch.extend_from_slice(&one_record(&format!("{i:01000}")));
    }
    for cid in 0..8 {
        assert_eq!(
            produce(&mut raw, 10 + cid, "zero", &batch).0,
            ErrorCode::None
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let (_, body, _) = raw.call(
        30,
        &Request::ListOffsets(vec![ListOffsetsBlock {
            topic: "zero".into(),
            partition: 0,
            spec: OffsetSpec::Earliest,
        }]),
    );
    let Some(Response::ListOffsets(r)) = body else {
        panic!("list offsets")
    };
    assert_eq!(r[0].offset, 0, "retention 0 kept everything");
    let (h, _, _) = raw.call(
        31,
        &Request::AlterTopic {
            name: "zero".into(),
            partitions: None,
            retention_bytes: Some(u64::MAX),
            retention_ms: None,
            visibility: None,
            backlog: Default::default(),
        },
    );
    assert_eq!(h.error_code, ErrorCode::None);
    let (_, body, _) = raw.call(
        32,
        &Request::DescribeTopic {
            name: "zero".into(),
        },
    );
    let Some(Response::DescribeTopic { config, .. }) = body else {
        panic!("describe")
    };
    assert_eq!(config.retention_bytes, None);
}

// Item 13: Busy (18) was documented but never sent: a connection over connections_max was closed
// without a frame.
#[test]
fn given_more_connections_than_allowed_when_one_more_asks_should_answer_busy() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &["--connections-max", "2"]);
    let mut a = Raw::connect(broker.addr);
    let mut b = Raw::connect(broker.addr);
    a.call(1, &Request::ListTopics { internal: false });
    b.call(1, &Request::ListTopics { internal: false });
    let mut c = Raw::connect(broker.addr);
    let mut out = Vec::new();
    protocol::encode_request(
        &mut out,
        5,
        &Request::ApiVersions {
            client_id: "third".into(),
        },
    )
    .unwrap();
    c.send(&out);
    let frame = c.recv().expect("a Busy answer before the close");
    let (h, _) = protocol::decode_response(&frame).unwrap();
    assert_eq!(
        (h.correlation_id, h.api_key, h.error_code),
        (5, ApiKey::ApiVersions as u16, ErrorCode::Busy)
    );
    assert!(c.recv().is_none(), "then the connection is closed");
    drop(a);
    // A freed slot is usable again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut d = Raw::connect(broker.addr);
        let mut out = Vec::new();
        protocol::encode_request(&mut out, 6, &Request::ListTopics { internal: false }).unwrap();
        d.send(&out);
        let frame = d.recv().expect("an answer");
        let (h, _) = protocol::decode_response(&frame).unwrap();
        if h.error_code == ErrorCode::None {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// Item 14: a panic exited with status 101; the contract allows 0, 1 and 2.
#[test]
fn given_a_panic_in_the_cli_when_run_should_exit_1_with_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &[]);
    let (code, _, err) = levee_cli(
        &broker,
        &["topic", "list"],
        "",
        &[("LEVEE_FAILPOINTS", "cli-panic")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("error: internal error: failpoint cli-panic"),
        "{err}"
    );
    assert!(
        !err.contains("RUST_BACKTRACE"),
        "never a backtrace hint: {err}"
    );
}

// Item 14, the broker: a request that panics is answered Internal and the broker goes on; a shard
// whose thread dies stops the broker with status 1 and one error line, never half-alive.
#[test]
fn given_panics_in_the_broker_should_isolate_requests_and_fail_stop_on_a_dead_shard() {
    let dir = tempfile::tempdir().unwrap();
    let broker =
        TestBroker::start_with_env(dir.path(), &[], &[("LEVEE_FAILPOINTS", "request-panic")]);
    let mut raw = Raw::connect(broker.addr);
    create(&mut raw, "t", 1);
    let (h, _, frame) = raw.call(2, &Request::DescribeTopic { name: "t".into() });
    assert_eq!(h.error_code, ErrorCode::Internal);
    assert!(protocol::error_message(&frame).contains("failpoint request-panic"));
    let (h, _, _) = raw.call(3, &Request::ListTopics { internal: false });
    assert_eq!(h.error_code, ErrorCode::None, "the connection goes on");
    assert!(broker
        .http_get("/metrics")
        .contains("levee_panics_total{shard="));

    let dir = tempfile::tempdir().unwrap();
    let mut broker =
        TestBroker::start_with_env(dir.path(), &[], &[("LEVEE_FAILPOINTS", "shard-panic")]);
    let mut raw = Raw::connect(broker.addr);
    create(&mut raw, "t", 1);
    let mut out = Vec::new();
    protocol::encode_request(&mut out, 2, &Request::DescribeTopic { name: "t".into() }).unwrap();
    raw.send(&out);
    assert_eq!(broker.wait_exit(Duration::from_secs(20)), Some(1));
}

// Item 4: idle_timeout_ms was a per-read timeout, so a client sending one byte a second was never
// closed. A frame must now arrive whole within frame_read_timeout_ms.
#[test]
fn given_a_frame_trickling_in_when_it_takes_too_long_should_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(dir.path(), &["--frame-read-timeout-ms", "1500"]);
    let mut slow = TcpStream::connect(broker.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = Vec::new();
    protocol::encode_request(&mut out, 1, &Request::ListTopics { internal: false }).unwrap();
    let started = Instant::now();
    let mut closed = false;
    for byte in out.iter().take(out.len() - 1) {
        if slow.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(400));
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let mut buf = [0u8; 1];
    let n = slow.read(&mut buf).unwrap_or(0);
    assert!(
        closed || n == 0,
        "the broker closed the trickling connection"
    );
    assert!(started.elapsed() < Duration::from_secs(9));
}

// Item 15: README.md, tuning.md and loadtest/README.md sent readers to files outside the
// repository; everything a user needs must be in it.
#[test]
fn given_the_user_docs_when_read_should_not_point_outside_the_repository() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut docs = vec![
        format!("{root}/README.md"),
        format!("{root}/tuning.md"),
        format!("{root}/loadtest/README.md"),
    ];
    for e in std::fs::read_dir(format!("{root}/docs")).unwrap() {
        docs.push(e.unwrap().path().display().to_string());
    }
    for doc in docs {
        let text = std::fs::read_to_string(&doc).unwrap();
        for outside in ["../shared", "/work/", "NOTES.md", "CONTRACT.md"] {
            assert!(!text.contains(outside), "{doc} points to {outside}");
        }
    }
}
