//! Hostile traffic against a broker running as its own process: every attack the server-core
//! issue lists, each followed by the same check. A well-behaved client on another connection must
//! still produce and fetch with a p99 round trip within 2× of its figure before any attack, and the
//! broker's anonymous memory (`RssAnon`, from /proc) must stay within `memory_bytes_max` plus the
//! constant tuning.md documents (`RSS_CONSTANT_BYTES` here).
//!
//! The machine is shared and noisy, so each p99 is the best of three rounds of 200 round trips,
//! and figures below `P99_FLOOR` count as the floor: a 2× rule on a 150 µs p99 would otherwise
//! fail on a scheduling hiccup, not on the broker.
#![cfg(feature = "broker")]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{create, one_record, Raw, TestBroker};
use levee::protocol::{
    self, Acks, ErrorCode, FetchBlock, FetchRequest, Request, Response, TopicConfig,
};
use proptest::prelude::*;

/// The tests of this file measure latency: they run one at a time, not beside each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The broker's budget in these tests.
const MEMORY_BYTES_MAX: u64 = 256 << 20;
/// What the broker holds besides the budget: runtime, io_uring memory, thread stacks, catalog,
/// open partitions (tuning.md, "Memory").
const RSS_CONSTANT_BYTES: u64 = 96 << 20;
/// p99 figures below this count as this (see the module doc).
const P99_FLOOR: Duration = Duration::from_millis(2);

fn broker_args() -> Vec<String> {
    [
        "--memory-bytes-max",
        &MEMORY_BYTES_MAX.to_string(),
        "--connections-max",
        "10200",
        "--frame-read-timeout-ms",
        "4000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start(dir: &std::path::Path) -> TestBroker {
    let args = broker_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TestBroker::start(dir, &args)
}

/// The well-behaved client: produce one record, fetch it back, on its own connection.
struct Probe {
    raw: Raw,
    next: u64,
    cid: u32,
}

impl Probe {
    fn new(addr: SocketAddr) -> Probe {
        let mut raw = Raw::connect(addr);
        create(&mut raw, "probe", 1);
        Probe {
            raw,
            next: 0,
            cid: 100,
        }
    }

    fn round_trip(&mut self) -> Duration {
        let started = Instant::now();
        self.cid += 2;
        let mut out = Vec::new();
        let run = one_record("probe");
        protocol::encode_produce(
            &mut out,
            self.cid,
            Acks::Written,
            5000,
            &[("probe", 0, &run)],
        )
        .unwrap();
        self.raw.send(&out);
        let frame = self.raw.recv().expect("produce response");
        let (_, body) = protocol::decode_response(&frame).unwrap();
        let Some(Response::Produce(r)) = body else {
            panic!("probe produce failed: {}", protocol::error_message(&frame))
        };
        assert_eq!(r[0].error, ErrorCode::None);
        assert_eq!(r[0].base_offset, self.next);
        let fetch = Request::Fetch(FetchRequest {
            max_wait_ms: 1000,
            min_bytes: 1,
            max_bytes: 4096,
            blocks: vec![FetchBlock {
                topic: "probe".into(),
                partition: 0,
                offset: self.next,
                max_bytes: 4096,
            }],
        });
        let (_, body, _) = self.raw.call(self.cid + 1, &fetch);
        let Some(Response::Fetch(r)) = body else {
            panic!("probe fetch failed")
        };
        assert_eq!((r[0].error, r[0].run.len()), (ErrorCode::None, run.len()));
        self.next += 1;
        started.elapsed()
    }

    /// The best p99 of three rounds of 200 round trips.
    fn p99(&mut self) -> Duration {
        (0..3)
            .map(|_| {
                let mut times: Vec<Duration> = (0..200).map(|_| self.round_trip()).collect();
                times.sort();
                times[times.len() * 99 / 100]
            })
            .min()
            .expect("three rounds")
    }
}

/// After an attack: the probe's p99 within 2× of `before`, memory within the budget.
fn check(what: &str, broker: &TestBroker, probe: &mut Probe, before: Duration) {
    let rss = broker.rss_anon_bytes();
    assert!(
        rss <= MEMORY_BYTES_MAX + RSS_CONSTANT_BYTES,
        "{what}: RssAnon {} MiB over the budget {} MiB + {} MiB",
        rss >> 20,
        MEMORY_BYTES_MAX >> 20,
        RSS_CONSTANT_BYTES >> 20
    );
    // A burst of noise from the rest of the machine must not fail the test; a broker that stalls
    // fails every attempt.
    let limit = 2 * before.max(P99_FLOOR);
    let mut after = probe.p99();
    for _ in 0..3 {
        if after <= limit {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        after = after.min(probe.p99());
    }
    assert!(
        after <= limit,
        "{what}: probe p99 {after:?}, more than 2x its {before:?} before the attacks"
    );
    eprintln!(
        "{what}: probe p99 {after:?} (before {before:?}), RssAnon {} MiB",
        rss >> 20
    );
}

/// Open connections over all shards, from the metrics.
fn open_connections(broker: &TestBroker) -> u64 {
    broker
        .http_get("/metrics")
        .lines()
        .filter(|l| l.starts_with("levee_connections{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn encode(cid: u32, request: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    protocol::encode_request(&mut out, cid, request).unwrap();
    out
}

fn fill(raw: &mut Raw, topic: &str, bytes: usize) {
    let mut batch = Vec::new();
    let mut i = 0;
    while batch.len() < bytes {
        batch.extend_from_slice(&one_record(&format!("{i:01000}")));
        i += 1;
    }
    let mut out = Vec::new();
    protocol::encode_produce(&mut out, 7, Acks::Written, 5000, &[(topic, 0, &batch)]).unwrap();
    raw.send(&out);
    let frame = raw.recv().unwrap();
    let (_, body) = protocol::decode_response(&frame).unwrap();
    assert!(matches!(body, Some(Response::Produce(r)) if r[0].error == ErrorCode::None));
}

/// Raises this process's open-file limit to its hard limit (10 000 idle connections).
fn raise_open_files() -> u64 {
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        lim.rlim_cur
    }
}

#[test]
fn given_hostile_clients_when_attacking_should_keep_serving_others_within_memory() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    let mut probe = Probe::new(broker.addr);
    let mut raw = Raw::connect(broker.addr);
    create(&mut raw, "big", 1);
    fill(&mut raw, "big", 1_200_000);
    let before = probe.p99();
    eprintln!("before the attacks: probe p99 {before:?}");

    // 1. One Fetch naming the same 1.2 MB partition 4,500 times, every max_bytes = u32::MAX.
    let blocks = vec![
        FetchBlock {
            topic: "big".into(),
            partition: 0,
            offset: 0,
            max_bytes: u32::MAX,
        };
        4500
    ];
    let (h, _, frame) = raw.call(
        10,
        &Request::Fetch(FetchRequest {
            max_wait_ms: 0,
            min_bytes: 1,
            max_bytes: u32::MAX,
            blocks,
        }),
    );
    assert_eq!(h.error_code, ErrorCode::None);
    assert!(frame.len() <= protocol::FRAME_SIZE_MAX);
    check(
        "a 4,500-block fetch of u32::MAX bytes each",
        &broker,
        &mut probe,
        before,
    );

    // 2. Connections that send only a header claiming a 64 MiB frame: 16, then 300, held open.
    let mut claimers = Vec::new();
    for n in [16, 300] {
        while claimers.len() < n {
            let mut s = TcpStream::connect(broker.addr).unwrap();
            let mut header = Vec::new();
            header.extend_from_slice(&((64u32 << 20) - 4).to_le_bytes());
            header.extend_from_slice(&[7, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
            s.write_all(&header).unwrap();
            claimers.push(s);
        }
        std::thread::sleep(Duration::from_millis(300));
        check(
            &format!("{n} connections claiming 64 MiB frames"),
            &broker,
            &mut probe,
            before,
        );
    }
    // They are closed once frame_read_timeout_ms passes.
    std::thread::sleep(Duration::from_millis(4500));
    for s in &mut claimers {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 64];
        assert!(
            matches!(s.read(&mut b), Ok(0) | Err(_)),
            "a frame that never arrives closes its connection"
        );
    }
    drop(claimers);

    // 4. A client that never reads its responses: 3,000 pipelined 1 MiB fetches, unread.
    let mut deaf = TcpStream::connect(broker.addr).unwrap();
    deaf.set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let fetch = |cid| {
        encode(
            cid,
            &Request::Fetch(FetchRequest {
                max_wait_ms: 0,
                min_bytes: 1,
                max_bytes: 1 << 20,
                blocks: vec![FetchBlock {
                    topic: "big".into(),
                    partition: 0,
                    offset: 0,
                    max_bytes: 1 << 20,
                }],
            }),
        )
    };
    let mut sent = 0;
    for cid in 0..3000 {
        if deaf.write_all(&fetch(cid)).is_err() {
            break;
        }
        sent += 1;
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(sent > 0);
    check(
        "a client that never reads its responses",
        &broker,
        &mut probe,
        before,
    );
    drop(deaf);

    // 4. Clients that trickle a frame in, one byte every 500 ms (a 16-byte frame would take 8 s):
    // measured while they trickle, then closed once frame_read_timeout_ms (4 s) passes.
    let trickling: Vec<std::thread::JoinHandle<bool>> = (0..20)
        .map(|_| {
            let addr = broker.addr;
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let frame = encode(1, &Request::ListTopics { internal: false });
                let started = Instant::now();
                for byte in frame.iter().cycle() {
                    if s.write_all(&[*byte]).is_err() {
                        return true;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                    if started.elapsed() > Duration::from_secs(15) {
                        return false;
                    }
                }
                false
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    check(
        "20 clients trickling a byte every 500 ms",
        &broker,
        &mut probe,
        before,
    );
    for t in trickling {
        assert!(t.join().unwrap(), "a trickling client was never closed");
    }

    // 5. A topic of 4,096 partitions, described at once; then create/delete while probing.
    let (h, _, _) = raw.call(
        11,
        &Request::CreateTopic {
            name: "wide".into(),
            config: TopicConfig {
                partitions: 4096,
                retention_bytes: None,
                retention_ms: None,
                visibility: None,
                ..Default::default()
            },
        },
    );
    assert_eq!(h.error_code, ErrorCode::None);
    let started = Instant::now();
    let (h, body, _) = raw.call(
        12,
        &Request::DescribeTopic {
            name: "wide".into(),
        },
    );
    assert_eq!(h.error_code, ErrorCode::None);
    assert!(
        matches!(body, Some(Response::DescribeTopic { partitions, .. }) if partitions.len() == 4096)
    );
    let described_in = started.elapsed();
    assert!(
        described_in < Duration::from_secs(5),
        "DescribeTopic took {described_in:?}"
    );
    let addr = broker.addr;
    let storm = std::thread::spawn(move || {
        let mut admin = Raw::connect(addr);
        let until = Instant::now() + Duration::from_secs(3);
        let mut n = 0;
        while Instant::now() < until {
            let name = format!("storm{n}");
            let (h, _, _) = admin.call(
                1,
                &Request::CreateTopic {
                    name: name.clone(),
                    config: TopicConfig {
                        partitions: 64,
                        retention_bytes: None,
                        retention_ms: None,
                        visibility: None,
                        ..Default::default()
                    },
                },
            );
            assert_eq!(h.error_code, ErrorCode::None);
            let (h, _, _) = admin.call(2, &Request::DeleteTopic { name });
            assert_eq!(h.error_code, ErrorCode::None);
            n += 1;
            // Paced: the point is catalog changes in flight, not a third busy thread on a
            // 2-core machine.
            std::thread::sleep(Duration::from_millis(10));
        }
        n
    });
    check("creating and deleting topics", &broker, &mut probe, before);
    assert!(storm.join().unwrap() > 0);

    // 1,000,000 repeated names in one Metadata request: refused before they are decoded.
    let started = Instant::now();
    let (h, _, _) = raw.call(
        13,
        &Request::Metadata {
            topics: vec!["big".into(); 1_000_000],
        },
    );
    assert_eq!(h.error_code, ErrorCode::LimitExceeded);
    assert!(started.elapsed() < Duration::from_secs(5));
    check(
        "a Metadata request naming 1,000,000 topics",
        &broker,
        &mut probe,
        before,
    );

    // A 100,000-block long-poll Fetch, several of them waiting at once.
    let mut pollers = Vec::new();
    for cid in 0..4 {
        let mut p = Raw::connect(broker.addr);
        let blocks = vec![
            FetchBlock {
                topic: "wide".into(),
                partition: 7,
                offset: 0,
                max_bytes: 1024,
            };
            100_000
        ];
        p.send(&encode(
            cid,
            &Request::Fetch(FetchRequest {
                max_wait_ms: 3000,
                min_bytes: 1,
                max_bytes: 1 << 20,
                blocks,
            }),
        ));
        pollers.push(p);
    }
    check("four 100,000-block long polls", &broker, &mut probe, before);
    for mut p in pollers {
        let frame = p.recv().expect("the long polls end with an answer");
        let (h, _) = protocol::decode_response(&frame).unwrap();
        assert_eq!(h.error_code, ErrorCode::None);
    }

    // 10,000 idle connections, held open.
    let limit = raise_open_files();
    assert!(
        limit > 10_100,
        "the test needs 10 100 open files, has {limit}"
    );
    let idle: Vec<TcpStream> = (0..10_000)
        .map(|_| TcpStream::connect(broker.addr).expect("idle connection"))
        .collect();
    // connect() returns once the kernel queued the connection; wait until the broker has
    // accepted them all, so the check measures them held, not being accepted.
    let deadline = Instant::now() + Duration::from_secs(60);
    while open_connections(&broker) < 10_000 {
        assert!(
            Instant::now() < deadline,
            "the broker did not accept 10,000 connections"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    check("10,000 idle connections", &broker, &mut probe, before);
    drop(idle);
}

fn garbage_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Anything at all.
        proptest::collection::vec(any::<u8>(), 0..512),
        // A delimited frame of a known api with a random body.
        (
            0u16..12,
            0u16..3,
            proptest::collection::vec(any::<u8>(), 0..400)
        )
            .prop_map(|(key, version, body)| {
                let mut f = Vec::new();
                f.extend_from_slice(&((12 + body.len()) as u32).to_le_bytes());
                f.extend_from_slice(&key.to_le_bytes());
                f.extend_from_slice(&version.to_le_bytes());
                f.extend_from_slice(&9u32.to_le_bytes());
                f.extend_from_slice(&0u32.to_le_bytes());
                f.extend_from_slice(&body);
                f
            }),
    ]
}

#[test]
fn given_random_garbage_frames_when_sent_should_answer_or_close_and_keep_serving() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path());
    let mut probe = Probe::new(broker.addr);
    let before = probe.p99();
    let addr = broker.addr;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &proptest::collection::vec(garbage_frame(), 1..6),
            |frames| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                for f in &frames {
                    if s.write_all(f).is_err() {
                        break;
                    }
                }
                // Whatever comes back is whole frames or nothing; the broker may close.
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
                Ok(())
            },
        )
        .unwrap();
    check("random garbage frames", &broker, &mut probe, before);
    let health = broker.http_get("/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
}
