//! The Kafka listener against a real broker, spoken to with the `kafka-protocol` crate (client
//! side): ApiVersions with its fallback, Metadata naming each shard as a broker, Produce of
//! compressed batches to each partition's leader, Fetch and ListOffsets, Levee's own client
//! reading what Kafka wrote and the reverse, bad input refused without harm, and the classic
//! group protocol (member-id round trip, leader's assignment passed through, fencing).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::TestBroker;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::{
    fetch_request, list_offsets_request, metadata_request, produce_request, ApiKey,
    ApiVersionsRequest, ApiVersionsResponse, FetchRequest, FetchResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse,
    RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use levee::client::{Client, ClientConfig, ConsumerConfig, ProducerConfig, ProducerRecord};
use levee::protocol::TopicConfig;

const WAIT: Duration = Duration::from_secs(10);

/// A blocking Kafka connection that sends one request and reads its response.
struct Kafka {
    stream: TcpStream,
    cid: i32,
}

impl Kafka {
    fn connect(addr: SocketAddr) -> Kafka {
        let stream = TcpStream::connect(addr).expect("connect to the kafka listener");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Kafka { stream, cid: 0 }
    }

    fn send<R: Encodable>(&mut self, api: ApiKey, version: i16, body: &R) -> i32 {
        self.cid += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = api as i16;
        header.request_api_version = version;
        header.correlation_id = self.cid;
        header.client_id = Some(StrBytes::from_static_str("kafka-test"));
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0; 4]);
        header
            .encode(&mut buf, api.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf).unwrap();
        self.cid
    }

    /// The next response frame (after its length), or `None` when the broker closed.
    fn frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).ok()?;
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut frame).ok()?;
        Some(Bytes::from(frame))
    }

    fn call<R: Encodable, S: Decodable>(&mut self, api: ApiKey, version: i16, body: &R) -> S {
        let cid = self.send(api, version, body);
        self.response(api, version, cid)
    }

    fn response<S: Decodable>(&mut self, api: ApiKey, version: i16, cid: i32) -> S {
        let mut frame = self.frame().expect("a response");
        let header =
            ResponseHeader::decode(&mut frame, api.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, cid);
        S::decode(&mut frame, version).unwrap()
    }
}

fn start(dir: &std::path::Path) -> (TestBroker, Client) {
    let broker = TestBroker::start(dir, &["--kafka-listen", "127.0.0.1:0"]);
    let client = Client::connect(&broker.addr.to_string(), ClientConfig::default()).unwrap();
    (broker, client)
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn record(i: i64, key: Option<&[u8]>, value: &[u8]) -> Record {
    let mut headers = IndexMap::new();
    headers.insert(
        StrBytes::from_string(format!("h{i}")),
        Some(Bytes::copy_from_slice(format!("v{i}").as_bytes())),
    );
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: i,
        sequence: -1,
        timestamp: 1_700_000_000_000 + i,
        key: key.map(Bytes::copy_from_slice),
        value: Some(Bytes::copy_from_slice(value)),
        headers,
    }
}

fn batch(compression: Compression, records: &[Record]) -> Bytes {
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    out.freeze()
}

fn produce_request(topic: &str, partition: i32, acks: i16, records: Bytes) -> ProduceRequest {
    let mut p = produce_request::PartitionProduceData::default();
    p.index = partition;
    p.records = Some(records);
    let mut t = produce_request::TopicProduceData::default();
    t.name = name(topic);
    t.partition_data = vec![p];
    let mut r = ProduceRequest::default();
    r.acks = acks;
    r.timeout_ms = 10_000;
    r.topic_data = vec![t];
    r
}

fn fetch_request(topic: &str, partition: i32, offset: i64) -> FetchRequest {
    let mut p = fetch_request::FetchPartition::default();
    p.partition = partition;
    p.fetch_offset = offset;
    p.partition_max_bytes = 1 << 20;
    let mut t = fetch_request::FetchTopic::default();
    t.topic = name(topic);
    t.partitions = vec![p];
    let mut r = FetchRequest::default();
    r.max_wait_ms = 500;
    r.min_bytes = 1;
    r.max_bytes = 4 << 20;
    r.topics = vec![t];
    r
}

/// Every record a Fetch of `partition` from `offset` returns.
fn fetch_all(k: &mut Kafka, topic: &str, partition: i32, offset: i64) -> Vec<Record> {
    let r: FetchResponse = k.call(ApiKey::Fetch, 12, &fetch_request(topic, partition, offset));
    let part = &r.responses[0].partitions[0];
    assert_eq!(part.error_code, 0, "fetch error");
    let mut bytes = part.records.clone().unwrap_or_default();
    RecordBatchDecoder::decode_all(&mut bytes)
        .unwrap()
        .into_iter()
        .flat_map(|s| s.records)
        .collect()
}

fn metadata(k: &mut Kafka, topic: &str) -> MetadataResponse {
    let mut t = metadata_request::MetadataRequestTopic::default();
    t.name = Some(name(topic));
    let mut r = MetadataRequest::default();
    r.topics = Some(vec![t]);
    k.call(ApiKey::Metadata, 12, &r)
}

/// The Kafka address of `partition`'s leader, from Metadata.
fn leader(m: &MetadataResponse, partition: i32) -> SocketAddr {
    let p = m.topics[0]
        .partitions
        .iter()
        .find(|p| p.partition_index == partition)
        .expect("partition in metadata");
    let b = m
        .brokers
        .iter()
        .find(|b| b.node_id == p.leader_id)
        .expect("leader among the brokers");
    format!("{}:{}", b.host.as_str(), b.port).parse().unwrap()
}

#[test]
fn given_api_versions_when_asked_at_a_newer_version_should_answer_v0_with_the_supported_range() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, _) = start(dir.path());
    let mut k = Kafka::connect(broker.kafka.expect("kafka address in the ready line"));
    let r: ApiVersionsResponse = k.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(r.error_code, 0);
    let produce = r
        .api_keys
        .iter()
        .find(|a| a.api_key == ApiKey::Produce as i16)
        .unwrap();
    assert_eq!((produce.min_version, produce.max_version), (0, 9));
    // Version 99: an UNSUPPORTED_VERSION answer with a v0 body, and the connection stays open.
    // (Written by hand: the codec cannot encode a version it does not know.) Header v1: api
    // key, version, correlation id, null client id; the body is never read.
    let cid = 77i32;
    let mut raw = vec![0, 0, 0, 10, 0, 18, 0, 99];
    raw.extend_from_slice(&cid.to_be_bytes());
    raw.extend_from_slice(&[0xff, 0xff]);
    k.stream.write_all(&raw).unwrap();
    let mut frame = k.frame().unwrap();
    assert_eq!(
        ResponseHeader::decode(&mut frame, 0)
            .unwrap()
            .correlation_id,
        cid
    );
    let v0 = ApiVersionsResponse::decode(&mut frame, 0).unwrap();
    assert_eq!(v0.error_code, 35);
    assert!(v0
        .api_keys
        .iter()
        .any(|a| a.api_key == ApiKey::Fetch as i16));
    let again: ApiVersionsResponse = k.call(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default());
    assert_eq!(again.error_code, 0);
}

#[test]
fn given_compressed_batches_when_produced_to_each_leader_should_fetch_them_back_and_levee_reads_them(
) {
    let dir = tempfile::tempdir().unwrap();
    let (broker, client) = start(dir.path());
    client
        .create_topic(
            "k-orders",
            TopicConfig {
                partitions: 4,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    let mut boot = Kafka::connect(broker.kafka.unwrap());
    let m = metadata(&mut boot, "k-orders");
    assert_eq!(m.brokers.len(), 2, "one Kafka broker per shard");
    assert_eq!(m.topics[0].error_code, 0);
    assert_eq!(m.topics[0].partitions.len(), 4);
    let compressions = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];
    for partition in 0..4 {
        let mut k = Kafka::connect(leader(&m, partition));
        let mut next = 0;
        for c in compressions {
            let records = [
                record(0, Some(format!("key-{partition}").as_bytes()), b"first"),
                record(1, None, b""),
                record(2, Some(b""), &[0xff, 0, 1]),
            ];
            let r: ProduceResponse = k.call(
                ApiKey::Produce,
                9,
                &produce_request("k-orders", partition, -1, batch(c, &records)),
            );
            let p = &r.responses[0].partition_responses[0];
            assert_eq!(p.error_code, 0, "{c:?}");
            assert_eq!(p.base_offset, next);
            next += 3;
        }
        let got = fetch_all(&mut k, "k-orders", partition, 0);
        assert_eq!(got.len(), 15);
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.offset, i as i64);
        }
        assert_eq!(
            got[0].key.as_deref(),
            Some(format!("key-{partition}").as_bytes())
        );
        assert_eq!(got[1].key, None);
        assert_eq!(got[2].key.as_deref(), Some(&b""[..]));
        assert_eq!(got[2].value.as_deref(), Some(&[0xff, 0, 1][..]));
        assert_eq!(got[0].timestamp, 1_700_000_000_000);
        assert_eq!(
            got[0].headers.get(&StrBytes::from_static_str("h0")),
            Some(&Some(Bytes::from_static(b"v0")))
        );
        let mut lo = list_offsets_request::ListOffsetsPartition::default();
        lo.partition_index = partition;
        lo.timestamp = -2;
        let mut hi = lo.clone();
        hi.timestamp = -1;
        let mut t = list_offsets_request::ListOffsetsTopic::default();
        t.name = name("k-orders");
        t.partitions = vec![lo, hi];
        let mut req = ListOffsetsRequest::default();
        req.topics = vec![t];
        let offs: ListOffsetsResponse = k.call(ApiKey::ListOffsets, 7, &req);
        let o: Vec<_> = offs.topics[0]
            .partitions
            .iter()
            .map(|p| (p.error_code, p.offset))
            .collect();
        assert_eq!(o, vec![(0, 0), (0, 15)]);
    }

    // Levee's own client reads the same records, byte for byte.
    let mut consumer = client
        .consumer(ConsumerConfig {
            partitions: Some(vec![1]),
            ..ConsumerConfig::new("k-orders")
        })
        .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < 15 && Instant::now() < deadline {
        seen.extend(consumer.poll(Duration::from_millis(200)).unwrap());
    }
    assert_eq!(seen.len(), 15);
    assert_eq!(seen[0].key.as_deref(), Some(&b"key-1"[..]));
    assert_eq!(seen[0].value, b"first");
    assert_eq!(seen[0].producer_timestamp_ms, 1_700_000_000_000);
    assert_eq!(seen[0].headers, vec![("h0".to_string(), b"v0".to_vec())]);
    assert_eq!(seen[2].value, vec![0xff, 0, 1]);
}

#[test]
fn given_levee_records_when_fetched_through_kafka_should_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, client) = start(dir.path());
    client
        .create_topic("from-levee", TopicConfig::default())
        .unwrap();
    let producer = client.producer(ProducerConfig::default()).unwrap();
    for i in 0..5u8 {
        producer
            .send(
                ProducerRecord::new("from-levee", vec![i; 3])
                    .with_partition(0)
                    .with_key(vec![b'k', i])
                    .with_header("n", vec![i]),
            )
            .wait()
            .unwrap();
    }
    producer.close();
    let mut boot = Kafka::connect(broker.kafka.unwrap());
    let m = metadata(&mut boot, "from-levee");
    let mut k = Kafka::connect(leader(&m, 0));
    let got = fetch_all(&mut k, "from-levee", 0, 2);
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].offset, 2);
    assert_eq!(got[0].key.as_deref(), Some(&[b'k', 2][..]));
    assert_eq!(got[0].value.as_deref(), Some(&[2u8, 2, 2][..]));
    assert_eq!(
        got[0].headers.get(&StrBytes::from_static_str("n")),
        Some(&Some(Bytes::from_static(&[2])))
    );
}

#[test]
fn given_bad_input_when_sent_should_refuse_it_and_serve_others() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, client) = start(dir.path());
    client
        .create_topic("guarded", TopicConfig::default())
        .unwrap();
    let mut boot = Kafka::connect(broker.kafka.unwrap());
    let m = metadata(&mut boot, "guarded");
    let addr = leader(&m, 0);

    // A batch with a flipped byte fails its CRC: CORRUPT_MESSAGE, nothing stored.
    let mut k = Kafka::connect(addr);
    let mut bad = batch(Compression::None, &[record(0, None, b"payload")]).to_vec();
    let at = bad.len() - 3;
    bad[at] ^= 0x55;
    let r: ProduceResponse = k.call(
        ApiKey::Produce,
        9,
        &produce_request("guarded", 0, -1, Bytes::from(bad)),
    );
    assert_eq!(r.responses[0].partition_responses[0].error_code, 2);
    // A record count no batch could hold is refused before anything is allocated for it.
    let mut huge = batch(Compression::Gzip, &[record(0, None, b"x")]).to_vec();
    huge[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
    let r: ProduceResponse = k.call(
        ApiKey::Produce,
        9,
        &produce_request("guarded", 0, -1, Bytes::from(huge)),
    );
    assert_eq!(r.responses[0].partition_responses[0].error_code, 18);
    // An unknown topic.
    let r: ProduceResponse = k.call(
        ApiKey::Produce,
        9,
        &produce_request(
            "nowhere",
            0,
            -1,
            batch(Compression::None, &[record(0, None, b"x")]),
        ),
    );
    assert_eq!(r.responses[0].partition_responses[0].error_code, 3);
    // acks=0: no response; the next request's answer is the next one on the wire.
    k.send(
        ApiKey::Produce,
        9,
        &produce_request(
            "guarded",
            0,
            0,
            batch(Compression::None, &[record(0, None, b"quiet")]),
        ),
    );
    let got = fetch_all(&mut k, "guarded", 0, 0);
    assert_eq!(got.len(), 1, "only the acks=0 record was stored");
    assert_eq!(got[0].value.as_deref(), Some(&b"quiet"[..]));

    // Connections that claim 60 MiB frames and send a few bytes hold no more than a chunk each:
    // nobody else waits for memory (the broker's budget is 512 MiB; these claim 600 MiB).
    let claims: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&(60i32 << 20).to_be_bytes()).unwrap();
            s.write_all(&[0, 18, 0, 3]).unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut other = Kafka::connect(addr);
    let r: ApiVersionsResponse = other.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(r.error_code, 0);
    drop(claims);

    // Garbage closes only its own connection.
    let mut garbage = TcpStream::connect(addr).unwrap();
    garbage.set_read_timeout(Some(WAIT)).unwrap();
    garbage
        .write_all(&[0, 0, 0, 12, 0x7f, 0x7f, 0, 1, 0, 0, 0, 1, 9, 9, 9, 9])
        .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(garbage.read(&mut buf).unwrap_or(0), 0, "closed");
    let mut huge_frame = TcpStream::connect(addr).unwrap();
    huge_frame.set_read_timeout(Some(WAIT)).unwrap();
    huge_frame.write_all(&i32::MAX.to_be_bytes()).unwrap();
    assert_eq!(huge_frame.read(&mut buf).unwrap_or(0), 0, "closed");
    let r: ApiVersionsResponse = k.call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    assert_eq!(r.error_code, 0);
    assert_eq!(fetch_all(&mut k, "guarded", 0, 0).len(), 1);
}

#[test]
fn given_an_idempotent_kafka_producer_when_a_batch_is_resent_should_store_it_once() {
    use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};
    let dir = tempfile::tempdir().unwrap();
    let (broker, client) = start(dir.path());
    client
        .create_topic("exactly", TopicConfig::default())
        .unwrap();
    let mut boot = Kafka::connect(broker.kafka.unwrap());
    let mut idempotent = InitProducerIdRequest::default();
    idempotent.transactional_id = None;
    idempotent.producer_id = (-1).into();
    idempotent.producer_epoch = -1;
    let init: InitProducerIdResponse = boot.call(ApiKey::InitProducerId, 4, &idempotent);
    assert_eq!(init.error_code, 0);
    assert!(init.producer_id.0 > 0);
    assert_eq!(init.producer_epoch, 0);
    let numbered = |first_sequence: i32, values: &[&[u8]]| {
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let mut r = record(i as i64, None, v);
                r.producer_id = init.producer_id.0;
                r.producer_epoch = 0;
                r.sequence = first_sequence + i as i32;
                r
            })
            .collect();
        batch(Compression::Lz4, &records)
    };
    let m = metadata(&mut boot, "exactly");
    let mut k = Kafka::connect(leader(&m, 0));
    let first = numbered(0, &[b"a", b"b"]);
    for _ in 0..2 {
        // The second send is a resend (its answer was "lost"): the same offsets, stored once.
        let r: ProduceResponse = k.call(
            ApiKey::Produce,
            9,
            &produce_request("exactly", 0, -1, first.clone()),
        );
        let p = &r.responses[0].partition_responses[0];
        assert_eq!((p.error_code, p.base_offset), (0, 0));
    }
    let r: ProduceResponse = k.call(
        ApiKey::Produce,
        9,
        &produce_request("exactly", 0, -1, numbered(2, &[b"c"])),
    );
    assert_eq!(r.responses[0].partition_responses[0].base_offset, 2);
    // A gap in the sequence is refused.
    let r: ProduceResponse = k.call(
        ApiKey::Produce,
        9,
        &produce_request("exactly", 0, -1, numbered(9, &[b"z"])),
    );
    assert_eq!(r.responses[0].partition_responses[0].error_code, 45);
    let values: Vec<_> = fetch_all(&mut k, "exactly", 0, 0)
        .into_iter()
        .map(|r| r.value.unwrap())
        .collect();
    assert_eq!(values, vec![&b"a"[..], &b"b"[..], &b"c"[..]]);

    // Transactions are not supported: a transactional id is refused with a clear code.
    let mut txn = InitProducerIdRequest::default();
    txn.transactional_id = Some(StrBytes::from_static_str("txn-1").into());
    let refused: InitProducerIdResponse = boot.call(ApiKey::InitProducerId, 4, &txn);
    assert_eq!(refused.error_code, 53);
    assert_eq!(refused.producer_id.0, -1);
}

#[test]
fn given_create_and_delete_topics_when_sent_should_manage_levee_topics() {
    use kafka_protocol::messages::{
        create_topics_request, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
        DeleteTopicsResponse,
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::start(
        dir.path(),
        &[
            "--kafka-listen",
            "127.0.0.1:0",
            "--kafka-auto-create-topics",
        ],
    );
    let client = Client::connect(&broker.addr.to_string(), ClientConfig::default()).unwrap();
    let mut k = Kafka::connect(broker.kafka.unwrap());
    let creatable = |name: &str, partitions: i32, replication: i16| {
        let mut t = create_topics_request::CreatableTopic::default();
        t.name = self::name(name);
        t.num_partitions = partitions;
        t.replication_factor = replication;
        t
    };
    let mut retention = creatable("made-by-kafka", 3, -1);
    let mut c = create_topics_request::CreatableTopicConfig::default();
    c.name = StrBytes::from_static_str("retention.ms");
    c.value = Some(StrBytes::from_static_str("3600000"));
    retention.configs = vec![c];
    let mut r = CreateTopicsRequest::default();
    r.timeout_ms = 10_000;
    r.topics = vec![
        retention,
        creatable("made-by-kafka", 1, 1),
        creatable("replicated", 1, 3),
        creatable("bad name!", 1, 1),
    ];
    let created: CreateTopicsResponse = k.call(ApiKey::CreateTopics, 7, &r);
    let codes: Vec<i16> = created.topics.iter().map(|t| t.error_code).collect();
    assert_eq!(codes, vec![0, 36, 38, 17]);
    assert_eq!(created.topics[0].num_partitions, 3);
    let described = client.describe_topic("made-by-kafka").unwrap();
    assert_eq!(described.config.partitions, 3);
    assert_eq!(described.config.retention_ms, Some(3_600_000));

    // Metadata may create a topic when the broker allows it and the request asks.
    let mut t = metadata_request::MetadataRequestTopic::default();
    t.name = Some(name("auto-made"));
    let mut m = MetadataRequest::default();
    m.topics = Some(vec![t]);
    m.allow_auto_topic_creation = true;
    let md: MetadataResponse = k.call(ApiKey::Metadata, 12, &m);
    assert_eq!(md.topics[0].error_code, 0);
    assert_eq!(md.topics[0].partitions.len(), 1);

    let mut d = DeleteTopicsRequest::default();
    d.timeout_ms = 10_000;
    d.topic_names = vec![name("made-by-kafka"), name("never-was")];
    let deleted: DeleteTopicsResponse = k.call(ApiKey::DeleteTopics, 5, &d);
    let codes: Vec<i16> = deleted.responses.iter().map(|t| t.error_code).collect();
    assert_eq!(codes, vec![0, 3]);
    assert!(client.describe_topic("made-by-kafka").is_err());
}

#[test]
fn given_auto_creation_off_when_metadata_names_a_missing_topic_should_not_create_it() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, client) = start(dir.path());
    let mut k = Kafka::connect(broker.kafka.unwrap());
    let mut t = metadata_request::MetadataRequestTopic::default();
    t.name = Some(name("not-made"));
    let mut m = MetadataRequest::default();
    m.topics = Some(vec![t]);
    m.allow_auto_topic_creation = true;
    let md: MetadataResponse = k.call(ApiKey::Metadata, 12, &m);
    assert_eq!(md.topics[0].error_code, 3);
    assert!(client.describe_topic("not-made").is_err());
}

#[test]
fn given_a_consumer_without_membership_when_it_commits_should_fetch_the_offsets_and_metadata_back()
{
    use kafka_protocol::messages::{
        offset_commit_request, offset_fetch_request, FindCoordinatorRequest,
        FindCoordinatorResponse, GroupId, OffsetCommitRequest, OffsetCommitResponse,
        OffsetFetchRequest, OffsetFetchResponse,
    };
    let dir = tempfile::tempdir().unwrap();
    let (broker, client) = start(dir.path());
    client
        .create_topic(
            "tracked",
            TopicConfig {
                partitions: 2,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    let mut boot = Kafka::connect(broker.kafka.unwrap());
    let m = metadata(&mut boot, "tracked");

    // The coordinator is one of the brokers Metadata names.
    let mut fc = FindCoordinatorRequest::default();
    fc.key = StrBytes::from_static_str("billing");
    let found: FindCoordinatorResponse = boot.call(ApiKey::FindCoordinator, 3, &fc);
    assert_eq!(found.error_code, 0);
    assert!(m
        .brokers
        .iter()
        .any(|b| b.node_id == found.node_id && b.port == found.port && b.host == found.host));
    let mut txn = FindCoordinatorRequest::default();
    txn.key = StrBytes::from_static_str("txn");
    txn.key_type = 1;
    let refused: FindCoordinatorResponse = boot.call(ApiKey::FindCoordinator, 3, &txn);
    assert_eq!(refused.error_code, 15);

    let mut k = Kafka::connect(
        format!("{}:{}", found.host.as_str(), found.port)
            .parse()
            .unwrap(),
    );
    let commit = |member: &str, generation: i32| {
        let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
        p.partition_index = 1;
        p.committed_offset = 42;
        p.committed_metadata = Some(StrBytes::from_static_str("worker-7"));
        let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
        t.name = name("tracked");
        t.partitions = vec![p];
        let mut r = OffsetCommitRequest::default();
        r.group_id = GroupId(StrBytes::from_static_str("billing"));
        r.generation_id_or_member_epoch = generation;
        r.member_id = StrBytes::from_string(member.to_string());
        r.topics = vec![t];
        r
    };
    let r: OffsetCommitResponse = k.call(ApiKey::OffsetCommit, 8, &commit("", -1));
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    // A member id this broker never gave out.
    let r: OffsetCommitResponse = k.call(ApiKey::OffsetCommit, 8, &commit("stranger", 3));
    assert_eq!(r.topics[0].partitions[0].error_code, 25);

    let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
    t.name = name("tracked");
    t.partition_indexes = vec![0, 1];
    let mut f = OffsetFetchRequest::default();
    f.group_id = GroupId(StrBytes::from_static_str("billing"));
    f.topics = Some(vec![t]);
    let got: OffsetFetchResponse = k.call(ApiKey::OffsetFetch, 7, &f);
    assert_eq!(got.error_code, 0);
    let mut parts: Vec<_> = got.topics[0]
        .partitions
        .iter()
        .map(|p| {
            (
                p.partition_index,
                p.committed_offset,
                p.metadata.as_ref().map(|m| m.as_str().to_string()),
            )
        })
        .collect();
    parts.sort();
    assert_eq!(
        parts,
        vec![
            (0, -1, Some(String::new())),
            (1, 42, Some("worker-7".to_string()))
        ]
    );
    // Levee's own client sees the same commit.
    let levee = client
        .fetch_offsets("billing", &[("tracked".to_string(), 1)])
        .unwrap();
    assert_eq!(levee[0].offset, Some(42));
}

/// One Kafka group member over its own connection to the coordinator.
mod member {
    use super::*;
    use kafka_protocol::messages::{
        join_group_request::JoinGroupRequestProtocol,
        sync_group_request::SyncGroupRequestAssignment, GroupId, HeartbeatRequest,
        HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
        LeaveGroupResponse, SyncGroupRequest, SyncGroupResponse,
    };

    pub fn join(k: &mut Kafka, group: &str, member: &str, protocols: &[&str]) -> JoinGroupResponse {
        let mut r = JoinGroupRequest::default();
        r.group_id = GroupId(StrBytes::from_string(group.to_string()));
        r.session_timeout_ms = 10_000;
        r.rebalance_timeout_ms = 10_000;
        r.member_id = StrBytes::from_string(member.to_string());
        r.protocol_type = StrBytes::from_static_str("consumer");
        r.protocols = protocols
            .iter()
            .map(|p| {
                let mut jp = JoinGroupRequestProtocol::default();
                jp.name = StrBytes::from_string(p.to_string());
                jp.metadata = Bytes::from(format!("{p}-meta"));
                jp
            })
            .collect();
        k.call(ApiKey::JoinGroup, 7, &r)
    }

    /// Joins through the member-id round trip; returns the settled generation.
    pub fn join_new(k: &mut Kafka, group: &str, protocols: &[&str]) -> JoinGroupResponse {
        let first = join(k, group, "", protocols);
        assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED");
        let id = first.member_id.to_string();
        let settled = join(k, group, &id, protocols);
        assert_eq!(settled.error_code, 0);
        assert_eq!(settled.member_id.as_str(), id);
        settled
    }

    pub fn sync(
        k: &mut Kafka,
        group: &str,
        member: &str,
        generation: i32,
        assignments: &[(&str, &[u8])],
    ) -> SyncGroupResponse {
        let mut r = SyncGroupRequest::default();
        r.group_id = GroupId(StrBytes::from_string(group.to_string()));
        r.generation_id = generation;
        r.member_id = StrBytes::from_string(member.to_string());
        r.protocol_type = Some(StrBytes::from_static_str("consumer"));
        r.assignments = assignments
            .iter()
            .map(|(m, a)| {
                let mut s = SyncGroupRequestAssignment::default();
                s.member_id = StrBytes::from_string(m.to_string());
                s.assignment = Bytes::copy_from_slice(a);
                s
            })
            .collect();
        k.call(ApiKey::SyncGroup, 5, &r)
    }

    pub fn heartbeat(k: &mut Kafka, group: &str, member: &str, generation: i32) -> i16 {
        let mut r = HeartbeatRequest::default();
        r.group_id = GroupId(StrBytes::from_string(group.to_string()));
        r.member_id = StrBytes::from_string(member.to_string());
        r.generation_id = generation;
        let resp: HeartbeatResponse = k.call(ApiKey::Heartbeat, 4, &r);
        resp.error_code
    }

    pub fn leave(k: &mut Kafka, group: &str, member: &str) -> i16 {
        let mut r = LeaveGroupRequest::default();
        r.group_id = GroupId(StrBytes::from_string(group.to_string()));
        r.member_id = StrBytes::from_string(member.to_string());
        let resp: LeaveGroupResponse = k.call(ApiKey::LeaveGroup, 1, &r);
        resp.error_code
    }
}

#[test]
fn given_two_kafka_members_should_settle_one_generation_pass_the_leaders_assignment_and_fence_the_stale(
) {
    use kafka_protocol::messages::{
        offset_commit_request, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
        OffsetCommitRequest, OffsetCommitResponse,
    };
    let dir = tempfile::tempdir().unwrap();
    let (broker, client) = start(dir.path());
    client
        .create_topic(
            "jobs",
            TopicConfig {
                partitions: 2,
                ..TopicConfig::default()
            },
        )
        .unwrap();
    let mut boot = Kafka::connect(broker.kafka.unwrap());
    let mut fc = FindCoordinatorRequest::default();
    fc.key = StrBytes::from_static_str("workers");
    let found: FindCoordinatorResponse = boot.call(ApiKey::FindCoordinator, 3, &fc);
    let coordinator: SocketAddr = format!("{}:{}", found.host.as_str(), found.port)
        .parse()
        .unwrap();

    // Both join at once (a join is a long poll: each on its own connection and thread).
    let joins: Vec<_> = [&["range", "roundrobin"][..], &["roundrobin", "range"][..]]
        .into_iter()
        .map(|protocols| {
            std::thread::spawn(move || {
                let mut k = Kafka::connect(coordinator);
                let j = member::join_new(&mut k, "workers", protocols);
                (k, j)
            })
        })
        .collect();
    let mut members: Vec<_> = joins.into_iter().map(|t| t.join().unwrap()).collect();
    let generation = members[0].1.generation_id;
    assert!(generation >= 1);
    assert!(members.iter().all(|(_, j)| j.generation_id == generation));
    // One vote each: the tie goes to the earlier name.
    assert!(members
        .iter()
        .all(|(_, j)| j.protocol_name.as_ref().map(|p| p.as_str()) == Some("range")));
    members.sort_by_key(|(_, j)| j.leader != j.member_id);
    let ((mut lk, lj), (mut fk, fj)) = {
        let mut it = members.into_iter();
        (it.next().unwrap(), it.next().unwrap())
    };
    let (leader, follower) = (lj.member_id.to_string(), fj.member_id.to_string());
    assert_eq!(lj.members.len(), 2, "the leader sees every member");
    assert!(fj.members.is_empty());
    assert!(lj
        .members
        .iter()
        .any(|m| m.member_id.as_str() == follower && &m.metadata[..] == b"range-meta"));

    // The follower's sync waits for the leader's, which hands in both assignments.
    let waiting = std::thread::spawn(move || {
        let s = member::sync(&mut fk, "workers", &follower, generation, &[]);
        (fk, follower, s)
    });
    std::thread::sleep(Duration::from_millis(200));
    let mine = member::sync(
        &mut lk,
        "workers",
        &leader,
        generation,
        &[(&leader, b"L"), (&fj.member_id.to_string(), b"F")],
    );
    assert_eq!((mine.error_code, &mine.assignment[..]), (0, &b"L"[..]));
    let (mut fk, follower, theirs) = waiting.join().unwrap();
    assert_eq!((theirs.error_code, &theirs.assignment[..]), (0, &b"F"[..]));
    assert_eq!(
        member::heartbeat(&mut fk, "workers", &follower, generation),
        0
    );

    // Commits: the current generation's go through, a stale generation's are fenced.
    let commit = |member: &str, generation: i32| {
        let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
        p.partition_index = 0;
        p.committed_offset = 7;
        let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
        t.name = name("jobs");
        t.partitions = vec![p];
        let mut r = OffsetCommitRequest::default();
        r.group_id = GroupId(StrBytes::from_static_str("workers"));
        r.generation_id_or_member_epoch = generation;
        r.member_id = StrBytes::from_string(member.to_string());
        r.topics = vec![t];
        r
    };
    let ok: OffsetCommitResponse = lk.call(ApiKey::OffsetCommit, 8, &commit(&leader, generation));
    assert_eq!(ok.topics[0].partitions[0].error_code, 0);
    let stale: OffsetCommitResponse =
        lk.call(ApiKey::OffsetCommit, 8, &commit(&leader, generation - 1));
    assert_eq!(
        stale.topics[0].partitions[0].error_code, 22,
        "ILLEGAL_GENERATION"
    );
    let described = client.describe_group("workers").unwrap();
    assert_eq!(described.members.len(), 2);
    assert_eq!(described.partitions[0].committed, Some(7));

    // A Levee member cannot join a group of Kafka members.
    let levee = client.join_group(&levee::protocol::JoinGroupRequest {
        group: "workers".into(),
        member_id: String::new(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        topics: vec!["jobs".into()],
    });
    let refused = levee
        .expect_err("a Levee member joined a Kafka group")
        .to_string();
    assert!(refused.contains("another protocol"), "{refused}");

    // The follower leaves: the leader learns it from its heartbeat and joins alone.
    assert_eq!(member::leave(&mut fk, "workers", &follower), 0);
    assert_eq!(
        member::heartbeat(&mut lk, "workers", &leader, generation),
        27
    );
    let alone = member::join(&mut lk, "workers", &leader, &["range"]);
    assert_eq!(alone.error_code, 0);
    assert_eq!(alone.generation_id, generation + 1);
    assert_eq!(alone.members.len(), 1);
    // An id the group never handed out is an unknown member.
    let stranger = member::join(&mut fk, "workers", "made-up", &["range"]);
    assert_eq!(stranger.error_code, 25, "UNKNOWN_MEMBER_ID");
}
