//! Client tests against a fake broker: a `TcpListener` on 127.0.0.1 that decodes requests with the
//! real codec, answers ApiVersions and Metadata itself, and hands everything else to the test's
//! handler. Every wait in these tests is bounded.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;

use rkyv::util::AlignedVec;

use crate::protocol::FetchBlock;

use super::*;
use crate::protocol::{
    decode_request, encode_error, encode_fetch_response, encode_response, frame_len, FetchResult,
    ListOffsetsResult, ProduceResult, RequestHeader, FRAME_SIZE_MAX,
};
use crate::record::{Message, Records};

/// Upper bound on any single wait in a test.
const TEST_WAIT: Duration = Duration::from_secs(10);

/// What the handler wants done with the connection after a request.
enum Flow {
    Continue,
    Close,
}

/// One accepted connection, as the handler sees it.
struct FakeConn {
    stream: TcpStream,
    /// Frames a handler chose to hold back (to answer later, out of order).
    held: Vec<Vec<u8>>,
}

impl FakeConn {
    fn send(&mut self, frame: &[u8]) {
        // The client may already be gone; that is the test's business, not the fake's.
        let _ = self.stream.write_all(frame);
    }
}

/// A request the fake received, with the record count of each Produce block.
#[derive(Debug, Clone)]
struct Logged {
    request: Request,
    version: u16,
    records_per_block: Vec<usize>,
}

type Handler = dyn Fn(&mut FakeConn, RequestHeader, &Request, &[u8]) -> Flow + Send + Sync;

struct FakeBroker {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Logged>>>,
}

/// `(api_key, min, max)` a fake broker advertises: every api at version 0, as a first broker.
fn v0_apis() -> Vec<(u16, u16, u16)> {
    ApiKey::ALL.iter().map(|&k| (k as u16, 0, 0)).collect()
}

impl FakeBroker {
    /// Starts a fake broker whose topics are `(name, partitions)`, every partition on shard 0,
    /// which listens on the same port as the bootstrap address.
    fn start(
        topics: &[(&str, u32)],
        handler: impl Fn(&mut FakeConn, RequestHeader, &Request, &[u8]) -> Flow + Send + Sync + 'static,
    ) -> FakeBroker {
        Self::start_with_apis(topics, v0_apis(), handler)
    }

    /// As [`FakeBroker::start`], advertising `apis` in ApiVersions.
    fn start_with_apis(
        topics: &[(&str, u32)],
        apis: Vec<(u16, u16, u16)>,
        handler: impl Fn(&mut FakeConn, RequestHeader, &Request, &[u8]) -> Flow + Send + Sync + 'static,
    ) -> FakeBroker {
        let apis = Arc::new(apis);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let topics: Arc<Vec<(String, u32)>> =
            Arc::new(topics.iter().map(|&(t, p)| (t.to_string(), p)).collect());
        let handler: Arc<Handler> = Arc::new(handler);
        let log = Arc::new(Mutex::new(Vec::new()));
        let for_accept = log.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (topics, handler, log, apis) = (
                    topics.clone(),
                    handler.clone(),
                    for_accept.clone(),
                    apis.clone(),
                );
                thread::spawn(move || serve(stream, addr.port(), &topics, &apis, &*handler, &log));
            }
        });
        FakeBroker { addr, log }
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }

    fn logged(&self) -> Vec<Logged> {
        lock(&self.log).clone()
    }

    fn produces(&self) -> Vec<(Acks, Vec<usize>)> {
        self.logged()
            .into_iter()
            .filter_map(|l| match l.request {
                Request::Produce(p) => Some((p.acks, l.records_per_block)),
                _ => None,
            })
            .collect()
    }

    /// Waits (bounded) until `n` requests matching `pred` were received.
    fn wait_for(&self, n: usize, pred: impl Fn(&Request) -> bool) {
        let deadline = Instant::now() + TEST_WAIT;
        while self.logged().iter().filter(|l| pred(&l.request)).count() < n {
            assert!(
                Instant::now() < deadline,
                "fake broker never saw the request"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

fn serve(
    stream: TcpStream,
    port: u16,
    topics: &[(String, u32)],
    apis: &[(u16, u16, u16)],
    handler: &Handler,
    log: &Mutex<Vec<Logged>>,
) {
    // A fake thread must end even if a test leaks its client.
    let _ = stream.set_read_timeout(Some(TEST_WAIT));
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let mut conn = FakeConn {
        stream: writer,
        held: Vec::new(),
    };
    let mut reader = stream;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let len = loop {
            match frame_len(&buf, FRAME_SIZE_MAX) {
                Ok(Some(len)) => break len,
                Ok(None) => match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                },
                Err(_) => return,
            }
        };
        let mut frame = AlignedVec::<16>::new();
        frame.extend_from_slice(&buf[..len]);
        buf.drain(..len);
        let Ok((header, request)) = decode_request(&frame) else {
            return;
        };
        let records_per_block = match &request {
            Request::Produce(p) => p
                .blocks
                .iter()
                .map(|b| Records::new(&frame[b.run.clone()], 1 << 20).count())
                .collect(),
            _ => Vec::new(),
        };
        lock(log).push(Logged {
            request: request.clone(),
            version: header.api_version,
            records_per_block,
        });
        let cid = header.correlation_id;
        let mut out = Vec::new();
        match &request {
            Request::ApiVersions { .. } => {
                let body = Response::ApiVersions {
                    apis: apis.to_vec(),
                    broker: "fake 0".into(),
                };
                encode_response(&mut out, ApiKey::ApiVersions, cid, &body).unwrap();
                conn.send(&out);
            }
            Request::Metadata { topics: asked } => {
                let shards = vec![ShardAddr {
                    shard: 0,
                    host: "0.0.0.0".into(),
                    port,
                }];
                let metadata = |name: &str| {
                    let known = topics.iter().find(|(t, _)| t == name);
                    TopicMetadata {
                        name: name.to_string(),
                        error: if known.is_some() {
                            ErrorCode::None
                        } else {
                            ErrorCode::UnknownTopic
                        },
                        partitions: (0..known.map_or(0, |(_, p)| *p)).map(|p| (p, 0)).collect(),
                    }
                };
                let topics = if asked.is_empty() {
                    topics.iter().map(|(t, _)| metadata(t)).collect()
                } else {
                    asked.iter().map(|t| metadata(t)).collect()
                };
                encode_response(
                    &mut out,
                    ApiKey::Metadata,
                    cid,
                    &Response::Metadata { shards, topics },
                )
                .unwrap();
                conn.send(&out);
            }
            _ => {
                if let Flow::Close = handler(&mut conn, header, &request, &frame) {
                    let _ = conn.stream.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    }
}

fn test_config() -> ClientConfig {
    ClientConfig {
        request_timeout_ms: 5_000,
        connect_timeout_ms: 2_000,
        retry_backoff_ms: 10,
        ..ClientConfig::default()
    }
}

fn produce_reply(cid: u32, topic: &str, partition: u32, error: ErrorCode, base: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let results = vec![ProduceResult {
        topic: topic.to_string(),
        partition,
        error,
        base_offset: base,
        timestamp_ms: 1_700_000_000_000,
        throttle_ms: 0,
    }];
    // Versions 0 to 2 share this body, and the fake brokers advertise no more than 2.
    crate::protocol::encode_response_at(
        &mut out,
        ApiKey::Produce,
        2,
        cid,
        &Response::Produce(results),
    )
    .unwrap();
    out
}

fn fetch_reply(
    cid: u32,
    block: &FetchBlock,
    error: ErrorCode,
    earliest: u64,
    next: u64,
    run: &[u8],
) -> Vec<u8> {
    let mut head = Vec::new();
    let results = [FetchResult {
        topic: block.topic.clone(),
        partition: block.partition,
        error,
        earliest,
        next,
        throttle_ms: 0,
        run: 0..run.len(),
    }];
    // The fake broker advertises version 0 of Fetch, so the client asked at version 0.
    let splits = encode_fetch_response(&mut head, 0, cid, &results).unwrap();
    let mut frame = head[..splits[0]].to_vec();
    frame.extend_from_slice(run);
    frame.extend_from_slice(&head[splits[0]..]);
    frame
}

/// Stored records with offsets `offsets`, valued `v{offset}`, keyed `k{offset}`.
fn stored_run(offsets: Range<u64>) -> Vec<u8> {
    let mut run = Vec::new();
    for o in offsets {
        let start = run.len();
        let message = Message {
            timestamp_ms: 5,
            key: Some(format!("k{o}").into_bytes()),
            value: format!("v{o}").into_bytes(),
            headers: vec![record::Header {
                key: "h".into(),
                value: b"x".to_vec(),
            }],
            ..Message::default()
        };
        record::encode(&message, &mut run).expect("encode");
        record::stamp_header(&mut run[start..], o, 1_000 + o as i64);
    }
    run
}

fn is_produce(r: &Request) -> bool {
    matches!(r, Request::Produce(_))
}

#[test]
fn given_fnv1a_test_vectors_when_partitioning_should_match_reference_hash() {
    // Reference FNV-1a 64 values: "" -> cbf29ce484222325, "a" -> af63dc4c8601ec8c,
    // "foobar" -> 85944171f73967e8.
    let big = u32::MAX;
    assert_eq!(
        partition_for_key(b"", big),
        (0xcbf29ce484222325u64 % u64::from(big)) as u32
    );
    assert_eq!(
        partition_for_key(b"a", big),
        (0xaf63dc4c8601ec8cu64 % u64::from(big)) as u32
    );
    assert_eq!(
        partition_for_key(b"foobar", 10),
        (0x85944171f73967e8u64 % 10) as u32
    );
    assert_eq!(partition_for_key(b"anything", 0), 0);
}

#[test]
fn given_out_of_order_responses_when_pipelined_should_match_by_correlation_id() {
    let broker = FakeBroker::start(&[], |conn, header, request, _| {
        if let Request::DescribeTopic { name } = request {
            let mut out = Vec::new();
            let body = Response::DescribeTopic {
                name: name.clone(),
                config: TopicConfig {
                    partitions: 1,
                    retention_bytes: None,
                    retention_ms: None,
                    visibility: None,
                    ..Default::default()
                },
                partitions: vec![],
            };
            encode_response(
                &mut out,
                ApiKey::DescribeTopic,
                header.correlation_id,
                &body,
            )
            .unwrap();
            conn.held.push(out);
            // Answer only once all three are in flight, newest first.
            if conn.held.len() == 3 {
                while let Some(frame) = conn.held.pop() {
                    conn.send(&frame);
                }
            }
        }
        Flow::Continue
    });
    let conn = Connection::connect(&broker.addr(), &test_config()).expect("connect");
    let futures: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            let request = Request::DescribeTopic {
                name: name.to_string(),
            };
            conn.request(&request).expect("send")
        })
        .collect();
    assert_eq!(conn.in_flight(), 3);
    for (mut future, expected) in futures.into_iter().zip(["a", "b", "c"]) {
        let response = future.wait_timeout(TEST_WAIT).expect("response").decode();
        match response.expect("decode") {
            Response::DescribeTopic { name, .. } => assert_eq!(name, expected),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(conn.in_flight(), 0);
}

#[test]
fn given_pending_requests_when_broker_disconnects_should_fail_all_with_disconnected() {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let broker = FakeBroker::start(&[], move |_, _, request, _| {
        if matches!(request, Request::ListTopics { .. })
            && counter.fetch_add(1, Ordering::SeqCst) == 1
        {
            return Flow::Close;
        }
        Flow::Continue
    });
    let conn = Connection::connect(&broker.addr(), &test_config()).expect("connect");
    let mut first = conn
        .request(&Request::ListTopics { internal: false })
        .expect("send");
    let mut second = conn
        .request(&Request::ListTopics { internal: false })
        .expect("send");
    for future in [&mut first, &mut second] {
        match future.wait_timeout(TEST_WAIT) {
            Err(ClientError::Disconnected { .. }) => {}
            other => panic!("expected Disconnected, got {other:?}"),
        }
    }
    assert!(conn.is_dead());
    assert_eq!(conn.in_flight(), 0);
    assert!(matches!(
        conn.request(&Request::ListTopics { internal: false }),
        Err(ClientError::Disconnected { .. })
    ));
}

#[test]
fn given_full_window_when_requesting_should_block_until_a_slot_frees() {
    // The broker never answers: the window fills and stays full.
    let broker = FakeBroker::start(&[], |_, _, _, _| Flow::Continue);
    let config = ClientConfig {
        in_flight_max: 2,
        ..test_config()
    };
    let conn = Arc::new(Connection::connect(&broker.addr(), &config).expect("connect"));
    let _a = conn
        .request(&Request::ListTopics { internal: false })
        .expect("send");
    let _b = conn
        .request(&Request::ListTopics { internal: false })
        .expect("send");
    let (tx, rx) = mpsc::channel();
    let third = conn.clone();
    let blocked = thread::spawn(move || {
        let _ = tx.send(
            third
                .request(&Request::ListTopics { internal: false })
                .map(drop),
        );
    });
    // Still blocked after a while: the window holds.
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    assert_eq!(conn.in_flight(), 2);
    conn.close();
    let result = rx.recv_timeout(TEST_WAIT).expect("blocked sender woke up");
    assert!(matches!(result, Err(ClientError::Disconnected { .. })));
    blocked.join().expect("join");
}

#[test]
fn given_acks_none_when_producing_should_register_no_pending_entry() {
    // Answers only ListTopics; never answers a Produce (a real broker sends nothing for acks=none).
    let broker = FakeBroker::start(&[("t", 1)], |conn, header, request, _| {
        if matches!(request, Request::ListTopics { .. }) {
            let mut out = Vec::new();
            let body = Response::ListTopics(vec![("t".into(), 1)]);
            encode_response(&mut out, ApiKey::ListTopics, header.correlation_id, &body).unwrap();
            conn.send(&out);
        }
        Flow::Continue
    });
    let conn = Connection::connect(&broker.addr(), &test_config()).expect("connect");
    let run = stored_run(0..2);
    let sent = conn
        .produce(Acks::None, 1000, &[("t", 0, &run)])
        .expect("written");
    assert!(sent.is_none());
    assert_eq!(conn.in_flight(), 0);
    broker.wait_for(1, is_produce);
    assert_eq!(broker.produces(), vec![(Acks::None, vec![2])]);
    // The connection is not confused by the missing response.
    let mut list = conn
        .request(&Request::ListTopics { internal: false })
        .expect("send");
    assert!(list.wait_timeout(TEST_WAIT).is_ok());

    // Through the producer: the send completes with no offset.
    let client = Client::connect(&broker.addr(), test_config()).expect("client");
    let producer = client
        .producer(ProducerConfig {
            acks: Acks::None,
            ..ProducerConfig::default()
        })
        .expect("producer");
    let mut send = producer.send(ProducerRecord::new("t", b"fire".to_vec()).with_partition(0));
    let meta = send.wait_timeout(TEST_WAIT).expect("sent");
    assert_eq!(meta.offset, None);
    assert_eq!(meta.timestamp_ms, None);
    broker.wait_for(2, is_produce);
    producer.close();
}

#[test]
fn given_sends_with_callbacks_when_acknowledged_should_call_each_once_with_its_offset() {
    let broker = FakeBroker::start(&[("orders", 1)], |conn, header, request, _| {
        if let Request::Produce(p) = request {
            let b = &p.blocks[0];
            conn.send(&produce_reply(
                header.correlation_id,
                &b.topic,
                b.partition,
                ErrorCode::None,
                40,
            ));
        }
        Flow::Continue
    });
    let client = Client::connect(&broker.addr(), test_config()).expect("client");
    let producer = client
        .producer(ProducerConfig {
            linger_ms: 200,
            ..ProducerConfig::default()
        })
        .expect("producer");
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..3u64 {
        let tx = tx.clone();
        producer
            .send(ProducerRecord::new("orders", format!("m{i}")).with_partition(0))
            .on_complete(move |r| {
                let _ = tx.send((i, r.map(|m| m.offset)));
            });
    }
    drop(tx);
    let mut got: Vec<(u64, Option<u64>)> = rx
        .iter()
        .map(|(i, r)| (i, r.expect("acknowledged")))
        .collect();
    got.sort();
    assert_eq!(got, vec![(0, Some(40)), (1, Some(41)), (2, Some(42))]);
    producer.close();
}

#[test]
fn given_sends_within_linger_when_batched_should_share_one_produce_request() {
    let broker = FakeBroker::start(&[("orders", 2)], |conn, header, request, _| {
        if let Request::Produce(p) = request {
            let b = &p.blocks[0];
            conn.send(&produce_reply(
                header.correlation_id,
                &b.topic,
                b.partition,
                ErrorCode::None,
                100,
            ));
        }
        Flow::Continue
    });
    let client = Client::connect(&broker.addr(), test_config()).expect("client");
    let producer = client
        .producer(ProducerConfig {
            linger_ms: 300,
            ..ProducerConfig::default()
        })
        .expect("producer");
    let sends: Vec<_> = (0..3)
        .map(|i| {
            let record = ProducerRecord::new("orders", format!("m{i}")).with_partition(1);
            producer.send(record)
        })
        .collect();
    let mut offsets = Vec::new();
    for mut send in sends {
        let meta = send.wait_timeout(TEST_WAIT).expect("acknowledged");
        assert_eq!((meta.topic.as_str(), meta.partition), ("orders", 1));
        assert_eq!(meta.timestamp_ms, Some(1_700_000_000_000));
        offsets.push(meta.offset);
    }
    assert_eq!(offsets, vec![Some(100), Some(101), Some(102)]);
    assert_eq!(broker.produces(), vec![(Acks::Durable, vec![3])]);
    producer.close();
    assert!(matches!(
        producer
            .send(ProducerRecord::new("orders", b"late".to_vec()))
            .wait(),
        Err(ClientError::Closed)
    ));
}

#[test]
fn given_no_free_slot_when_linger_is_zero_should_gather_the_waiting_records_into_one_batch() {
    // The first batch's answer is held until the test opens the gate, so the partition's only
    // slot stays taken while nine more records arrive.
    let gate = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let for_handler = gate.clone();
    let broker = FakeBroker::start(&[("t", 1)], move |conn, header, request, _| {
        if let Request::Produce(_) = request {
            let deadline = Instant::now() + TEST_WAIT;
            while !for_handler.load(Ordering::Acquire) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            let reply = produce_reply(header.correlation_id, "t", 0, ErrorCode::None, 0);
            conn.send(&reply);
        }
        Flow::Continue
    });
    let client = Client::connect(&broker.addr(), test_config()).expect("client");
    let producer = client
        .producer(ProducerConfig {
            linger_ms: 0,
            max_in_flight: 1,
            ..ProducerConfig::default()
        })
        .expect("producer");
    let mut sends = vec![producer.send(ProducerRecord::new("t", b"first".to_vec()))];
    broker.wait_for(1, is_produce);
    for i in 0..9 {
        sends.push(producer.send(ProducerRecord::new("t", format!("waiting {i}"))));
    }
    gate.store(true, Ordering::Release);
    for mut send in sends {
        send.wait_timeout(TEST_WAIT).expect("acknowledged");
    }
    assert_eq!(
        broker.produces(),
        vec![(Acks::Durable, vec![1]), (Acks::Durable, vec![9])]
    );
    producer.close();
}

#[test]
fn given_keyed_records_when_sent_should_land_on_the_hashed_partition() {
    let broker = FakeBroker::start(&[("keys", 5)], |conn, header, request, _| {
        if let Request::Produce(p) = request {
            let b = &p.blocks[0];
            let reply = produce_reply(
                header.correlation_id,
                &b.topic,
                b.partition,
                ErrorCode::None,
                0,
            );
            conn.send(&reply);
        }
        Flow::Continue
    });
    let client = Client::connect(&broker.addr(), test_config()).expect("client");
    let producer = client
        .producer(ProducerConfig {
            linger_ms: 0,
            ..ProducerConfig::default()
        })
        .expect("producer");
    for key in ["alice", "bob", "carol"] {
        let record = ProducerRecord::new("keys", b"v".to_vec()).with_key(key.as_bytes().to_vec());
        let meta = producer.send(record).wait_timeout(TEST_WAIT).expect("sent");
        assert_eq!(meta.partition, partition_for_key(key.as_bytes(), 5));
    }
    producer.close();
}

#[test]
fn given_retriable_error_when_producing_should_retry_and_succeed() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let broker = FakeBroker::start(&[("t", 1)], move |conn, header, request, _| {
        if let Request::Produce(p) = request {
            let b = &p.blocks[0];
            let code = if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                ErrorCode::Busy
            } else {
                ErrorCode::None
            };
            conn.send(&produce_reply(
                header.correlation_id,
                &b.topic,
                b.partition,
                code,
                7,
            ));
        }
        Flow::Continue
    });
    let client = Client::connect(&broker.addr(), test_config()).expect("client");
    let producer = client
        .producer(ProducerConfig {
            retry_backoff_ms: 10,
            ..ProducerConfig::default()
        })
        .expect("producer");
    let mut send = producer.send(ProducerRecord::new("t", b"x".to_vec()).with_partition(0));
    let meta = send.wait_timeout(TEST_WAIT).expect("retried to success");
    assert_eq!(meta.offset, Some(7));
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    producer.close();
}

#[test]
fn given_non_retriable_error_when_producing_should_fail_without_retry() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let broker = FakeBroker::start(&[("t", 1)], move |conn, header, request, _| {
        if let Request::Produce(_) = request {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut out = Vec::new();
            let (cid, code) = (header.correlation_id, ErrorCode::CorruptRecord);
            encode_error(&mut out, ApiKey::Produce as u16, cid, code, "bad crc");
            conn.send(&out);
        }
        Flow::Continue
    });
    let client = Client::connect(&broker.addr(), test_config()).expect("client");
    let producer = client
        .producer(ProducerConfig::default())
        .expect("producer");
    let mut send = producer.send(ProducerRecord::new("t", b"x".to_vec()).with_partition(0));
    match send.wait_timeout(TEST_WAIT) {
        Err(ClientError::Broker { code, message }) => {
            assert_eq!(code, ErrorCode::CorruptRecord);
            assert_eq!(message, "bad crc");
        }
        other => panic!("expected a broker error, got {other:?}"),
    }
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    producer.close();
}

#[test]
fn given_full_buffer_when_sending_should_block_then_time_out() {
    // Produce responses come back only after a delay, so the buffer stays full meanwhile.
    let broker = FakeBroker::start(&[("t", 1)], |conn, header, request, _| {
        if let Request::Produce(p) = request {
            thread::sleep(Duration::from_millis(400));
            let b = &p.blocks[0];
            let reply = produce_reply(
                header.correlation_id,
                &b.topic,
                b.partition,
                ErrorCode::None,
                0,
            );
            conn.send(&reply);
        }
        Flow::Continue
    });
    let client = Client::connect(&broker.addr(), test_config()).expect("client");
    let producer = client
        .producer(ProducerConfig {
            linger_ms: 0,
            batch_bytes: 1024,
            buffer_bytes: 1024,
            max_block_ms: 100,
            ..ProducerConfig::default()
        })
        .expect("producer");
    let record = || ProducerRecord::new("t", vec![7u8; 200]).with_partition(0);
    let accepted: Vec<_> = (0..3).map(|_| producer.send(record())).collect();
    let started = Instant::now();
    let mut blocked = producer.send(record());
    match blocked.wait_timeout(TEST_WAIT) {
        Err(ClientError::Timeout { .. }) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(90));
    for mut send in accepted {
        assert!(send.wait_timeout(TEST_WAIT).is_ok());
    }
    // Space is back once the earlier records were acknowledged.
    assert!(producer.send(record()).wait_timeout(TEST_WAIT).is_ok());
    producer.close();
}

#[test]
fn given_flush_when_records_linger_should_send_and_wait_for_all() {
    let broker = FakeBroker::start(&[("t", 3)], |conn, header, request, _| {
        if let Request::Produce(p) = request {
            let b = &p.blocks[0];
            let reply = produce_reply(
                header.correlation_id,
                &b.topic,
                b.partition,
                ErrorCode::None,
                0,
            );
            conn.send(&reply);
        }
        Flow::Continue
    });
    let client = Client::connect(&broker.addr(), test_config()).expect("client");
    let producer = client
        .producer(ProducerConfig {
            linger_ms: 60_000,
            ..ProducerConfig::default()
        })
        .expect("producer");
    let sends: Vec<_> = (0..6)
        .map(|i| producer.send(ProducerRecord::new("t", format!("{i}"))))
        .collect();
    producer
        .flush_timeout(TEST_WAIT)
        .expect("flushed long before linger");
    for mut send in sends {
        assert!(
            send.wait_timeout(Duration::ZERO).is_ok(),
            "resolved by flush"
        );
    }
    producer.close();
}

/// A fake that serves a partition holding offsets 10 and 11.
fn fetch_handler(conn: &mut FakeConn, header: RequestHeader, request: &Request, _: &[u8]) -> Flow {
    let cid = header.correlation_id;
    match request {
        Request::Fetch(f) => {
            let b = &f.blocks[0];
            let reply = match b.offset {
                o if !(10..=12).contains(&o) => {
                    fetch_reply(cid, b, ErrorCode::OffsetOutOfRange, 10, 12, &[])
                }
                12 => fetch_reply(cid, b, ErrorCode::None, 10, 12, &[]),
                o => fetch_reply(cid, b, ErrorCode::None, 10, 12, &stored_run(o..12)),
            };
            conn.send(&reply);
        }
        Request::ListOffsets(blocks) => {
            let results = blocks
                .iter()
                .map(|b| ListOffsetsResult {
                    topic: b.topic.clone(),
                    partition: b.partition,
                    error: ErrorCode::None,
                    offset: if b.spec == OffsetSpec::Earliest {
                        10
                    } else {
                        12
                    },
                })
                .collect();
            let mut out = Vec::new();
            encode_response(
                &mut out,
                ApiKey::ListOffsets,
                cid,
                &Response::ListOffsets(results),
            )
            .unwrap();
            conn.send(&out);
        }
        _ => {}
    }
    Flow::Continue
}

#[test]
fn given_offset_out_of_range_when_polling_should_apply_reset_policy() {
    let broker = FakeBroker::start(&[("log", 1)], fetch_handler);
    let client = Client::connect(&broker.addr(), test_config()).expect("client");

    let mut consumer = client
        .consumer(ConsumerConfig {
            start: StartFrom::Offset(0),
            ..ConsumerConfig::new("log")
        })
        .expect("consumer");
    let records = consumer.poll(TEST_WAIT).expect("poll");
    let got: Vec<_> = records
        .iter()
        .map(|r| (r.offset, r.value.clone(), r.key.clone(), r.timestamp_ms))
        .collect();
    assert_eq!(
        got,
        vec![
            (10, b"v10".to_vec(), Some(b"k10".to_vec()), 1_010),
            (11, b"v11".to_vec(), Some(b"k11".to_vec()), 1_011)
        ]
    );
    assert_eq!(records[0].headers, vec![("h".to_string(), b"x".to_vec())]);
    assert_eq!(records[0].producer_timestamp_ms, 5);
    assert_eq!(consumer.position(0), Some(12));
    // At the end of the log the poll comes back empty when its time is up.
    assert!(consumer
        .poll(Duration::from_millis(50))
        .expect("poll")
        .is_empty());

    let mut strict = client
        .consumer(ConsumerConfig {
            start: StartFrom::Offset(0),
            reset: ResetPolicy::Error,
            ..ConsumerConfig::new("log")
        })
        .expect("consumer");
    match strict.poll(TEST_WAIT) {
        Err(ClientError::OffsetOutOfRange {
            partition: 0,
            requested: 0,
            earliest: 10,
            latest: 12,
            ..
        }) => {}
        other => panic!("expected OffsetOutOfRange, got {other:?}"),
    }
    assert_eq!(strict.position(0), Some(0));
}

#[test]
fn given_fetch_when_reading_records_should_expose_them_in_place() {
    let broker = FakeBroker::start(&[("log", 1)], fetch_handler);
    let client = Client::connect(&broker.addr(), test_config()).expect("client");
    let fetched = client.fetch("log", 0, 11, 1 << 20, 0).expect("fetch");
    assert_eq!((fetched.earliest(), fetched.next()), (10, 12));
    let records: Vec<_> = fetched.records().collect::<Result<_, _>>().expect("valid");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].offset(), 11);
    let message = records[0].message().expect("archive");
    assert_eq!(message.value.as_slice(), b"v11");
    assert_eq!(
        client
            .list_offsets("log", 0, OffsetSpec::Earliest)
            .expect("offsets"),
        10
    );
    assert!(matches!(
        client.fetch("log", 0, 99, 1 << 20, 0),
        Err(ClientError::OffsetOutOfRange {
            earliest: 10,
            latest: 12,
            ..
        })
    ));
}

#[test]
fn given_broker_drops_connection_when_fetching_should_reconnect_and_retry() {
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    let broker = FakeBroker::start(&[("log", 1)], move |conn, header, request, frame| {
        if matches!(request, Request::Fetch(_)) && counter.fetch_add(1, Ordering::SeqCst) == 0 {
            // As if the broker restarted under the first fetch.
            return Flow::Close;
        }
        fetch_handler(conn, header, request, frame)
    });
    let client = Client::connect(&broker.addr(), test_config()).expect("client");
    let fetched = client
        .fetch("log", 0, 10, 1 << 20, 0)
        .expect("retried fetch");
    assert_eq!(fetched.last_offset_plus_one().expect("valid"), Some(12));
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
}

#[test]
fn given_unknown_topic_when_sending_should_fail_with_broker_error() {
    let broker = FakeBroker::start(&[], |_, _, _, _| Flow::Continue);
    let client = Client::connect(&broker.addr(), test_config()).expect("client");
    let producer = client
        .producer(ProducerConfig::default())
        .expect("producer");
    match producer
        .send(ProducerRecord::new("nope", b"x".to_vec()))
        .wait_timeout(TEST_WAIT)
    {
        Err(ClientError::Broker { code, .. }) => assert_eq!(code, ErrorCode::UnknownTopic),
        other => panic!("expected UnknownTopic, got {other:?}"),
    }
    producer.close();
}

#[test]
fn given_connection_lost_under_a_batch_when_producing_should_reconnect_and_retry() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let broker = FakeBroker::start(&[("t", 1)], move |conn, header, request, _| {
        if let Request::Produce(p) = request {
            if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                return Flow::Close;
            }
            let b = &p.blocks[0];
            let reply = produce_reply(
                header.correlation_id,
                &b.topic,
                b.partition,
                ErrorCode::None,
                3,
            );
            conn.send(&reply);
        }
        Flow::Continue
    });
    let client = Client::connect(&broker.addr(), test_config()).expect("client");
    let producer = client
        .producer(ProducerConfig {
            retry_backoff_ms: 10,
            ..ProducerConfig::default()
        })
        .expect("producer");
    let record = ProducerRecord::new("t", b"x".to_vec()).with_partition(0);
    let meta = producer
        .send(record)
        .wait_timeout(TEST_WAIT)
        .expect("retried");
    assert_eq!(meta.offset, Some(3));
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    producer.close();
}

#[test]
fn given_several_blocks_when_producing_should_send_each_run_intact_from_the_callers_buffers() {
    // The runs are written with vectored I/O straight from the caller's buffers, spliced between
    // the request's own bytes: the broker must see exactly the frame `encode_produce` builds.
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let frames = seen.clone();
    let broker = FakeBroker::start(&[], move |_, _, request, frame| {
        if is_produce(request) {
            lock(&frames).push(frame.to_vec());
        }
        Flow::Continue
    });
    let conn = Connection::connect(&broker.addr(), &test_config()).expect("connect");
    let (a, b, c) = (stored_run(0..2), stored_run(10..13), stored_run(7..8));
    let blocks: [(&str, u32, &[u8]); 4] = [
        ("orders", 0, &a),
        ("orders", 3, &b),
        ("audit-log", 1, &[]),
        ("o", 2, &c),
    ];
    let sent = conn.produce(Acks::None, 1234, &blocks).expect("written");
    assert!(sent.is_none());
    broker.wait_for(1, is_produce);
    assert_eq!(broker.produces(), vec![(Acks::None, vec![2, 3, 0, 1])]);
    let mut expected = Vec::new();
    // The fake broker's first request gets correlation id 1 on a fresh connection.
    crate::protocol::encode_produce(&mut expected, 1, Acks::None, 1234, &blocks).unwrap();
    assert_eq!(lock(&seen).as_slice(), &[expected]);
}

/// A handler that acknowledges every Produce to `t`/0 at `base_offset`.
fn acking_produces(
    base_offset: u64,
) -> impl Fn(&mut FakeConn, RequestHeader, &Request, &[u8]) -> Flow + Send + Sync + 'static {
    move |conn, header, request, _| {
        if let Request::Produce(_) = request {
            let reply = produce_reply(header.correlation_id, "t", 0, ErrorCode::None, base_offset);
            conn.send(&reply);
        }
        Flow::Continue
    }
}

#[test]
fn given_an_older_broker_when_negotiating_should_use_its_versions_and_fail_only_apis_it_lacks() {
    // An older broker: everything at version 0, and no ListOffsets at all.
    let apis: Vec<(u16, u16, u16)> = v0_apis()
        .into_iter()
        .filter(|&(k, _, _)| k != ApiKey::ListOffsets as u16)
        .collect();
    let broker = FakeBroker::start_with_apis(&[("t", 1)], apis, acking_produces(7));
    let client = Client::connect(&broker.addr(), test_config()).unwrap();
    let outcome = client
        .produce_run("t", 0, &stored_run(0..1), Acks::Written)
        .unwrap();
    assert_eq!(outcome.map(|o| o.base_offset), Some(7));
    let e = client.list_offsets("t", 0, OffsetSpec::Latest).unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::UnsupportedVersion {
                api: ApiKey::ListOffsets,
                supported: None,
                ..
            }
        ),
        "{e:?}"
    );
    // Every request went out at the version the broker speaks, and no ListOffsets was sent.
    let logged = broker.logged();
    assert!(logged.iter().all(|l| l.version == 0), "{logged:?}");
    assert!(!logged
        .iter()
        .any(|l| matches!(l.request, Request::ListOffsets(_))));
}

#[test]
fn given_a_broker_with_version_1_when_negotiating_should_send_version_1() {
    let apis: Vec<(u16, u16, u16)> = ApiKey::ALL
        .iter()
        .map(|&k| (k as u16, 0, k.versions().1.min(1)))
        .collect();
    let broker = FakeBroker::start_with_apis(&[("t", 1)], apis, acking_produces(0));
    let client = Client::connect(&broker.addr(), test_config()).unwrap();
    client
        .produce_run("t", 0, &stored_run(0..1), Acks::Written)
        .unwrap();
    let versions: Vec<(ApiKey, u16)> = broker
        .logged()
        .iter()
        .map(|l| (l.request.api_key(), l.version))
        .collect();
    assert!(versions.contains(&(ApiKey::Produce, 1)), "{versions:?}");
    assert!(versions.contains(&(ApiKey::Metadata, 1)), "{versions:?}");
    assert!(versions.contains(&(ApiKey::ApiVersions, 0)), "{versions:?}");
}
