//! `kafka-throughput`: what the Kafka listener costs against Levee's own protocol, on the same
//! shape in the same run.
//!
//! One broker (started with `--kafka-listen`), two one-partition topics. The same records —
//! `--messages` values of `--message-bytes`, in batches of about `--batch-bytes` — are produced
//! once through Levee's protocol (pre-encoded record runs, `Client::produce_start`) and once
//! through the Kafka protocol (pre-encoded uncompressed RecordBatch v2, Produce v9), each with
//! `--in-flight` requests outstanding, to the partition's owner shard; then each topic is read
//! back from offset 0 with 1 MiB fetches (Levee Fetch; Kafka Fetch v12). Payload MB/s of each,
//! and the Kafka/Levee ratios. Client-side encoding is done before the clock starts, on both
//! sides, so the figures are the broker's (and the socket's): decoding and translating the Kafka
//! batch, re-encoding fetched records as a Kafka batch.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::{
    fetch_request, metadata_request, produce_request, ApiKey, FetchRequest, FetchResponse,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use levee::client::{Client, ClientConfig, ConsumerConfig, StartFrom};
use levee::protocol::{Acks, TopicConfig};
use levee::record::{self, Message};
use serde::Serialize;

use crate::broker::{Broker, BrokerArgs};
use crate::common::{self, unique_topic, AcksArg};
use crate::report;

/// What `kafka-throughput` takes.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct KafkaThroughputArgs {
    /// Records produced and read back on each protocol.
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    /// Bytes of each record's value.
    #[arg(long, default_value_t = 1024)]
    pub message_bytes: usize,
    /// Bytes of values per produce request (one batch).
    #[arg(long, default_value_t = 1 << 20)]
    pub batch_bytes: usize,
    /// Produce requests outstanding at once.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// `written` (Kafka acks=1) or `durable` (acks=all).
    #[arg(long, value_enum, default_value = "written")]
    pub acks: AcksArg,
    /// Write the results as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    #[command(flatten)]
    #[serde(skip)]
    pub broker: BrokerArgs,
}

/// MB/s of payload (values) each way on each protocol.
#[derive(Debug, Serialize)]
pub struct KafkaThroughputResults {
    pub levee_produce_mb_s: f64,
    pub kafka_produce_mb_s: f64,
    pub kafka_over_levee_produce: Option<f64>,
    pub levee_fetch_mb_s: f64,
    pub kafka_fetch_mb_s: f64,
    pub kafka_over_levee_fetch: Option<f64>,
}

pub fn run(args: KafkaThroughputArgs) -> anyhow::Result<()> {
    ensure!(
        args.messages > 0 && args.message_bytes > 0 && args.in_flight > 0,
        "--messages, --message-bytes and --in-flight must be at least 1"
    );
    ensure!(
        args.broker.broker.is_none(),
        "kafka-throughput starts its own broker (it needs --kafka-listen)"
    );
    let mut broker_args = args.broker.clone();
    broker_args
        .broker_args
        .extend(["--kafka-listen".to_string(), "127.0.0.1:0".to_string()]);
    let broker = Broker::start(&broker_args)?;
    let kafka_addr = broker
        .kafka
        .clone()
        .context("the broker printed no kafka= address")?;
    let client = Client::connect(&broker.addr, ClientConfig::default())?;
    let (levee_topic, kafka_topic) = (unique_topic("kafka-levee"), unique_topic("kafka-kafka"));
    for t in [&levee_topic, &kafka_topic] {
        client.create_topic(t, TopicConfig::default())?;
    }
    let per_batch = (args.batch_bytes / args.message_bytes).max(1) as u64;
    let batches = args.messages.div_ceil(per_batch);
    let total = batches * per_batch;
    let payload = total * args.message_bytes as u64;
    eprintln!(
        "kafka-throughput: {total} records of {} B in {batches} batches of {per_batch}, {} in flight, acks {:?}",
        args.message_bytes, args.in_flight, args.acks
    );
    let value: Vec<u8> = (0..args.message_bytes).map(|i| (i % 251) as u8).collect();

    // Levee's protocol: one pre-encoded run, sent `batches` times (offsets are the broker's).
    let mut run = Vec::new();
    for _ in 0..per_batch {
        record::encode(
            &Message {
                value: value.clone(),
                ..Message::default()
            },
            &mut run,
        )?;
    }
    let acks: Acks = args.acks.into();
    let addrs = common::partition_addrs(&client, &broker.addr, &levee_topic)?;
    let owner = common::connections_for(&addrs, &[0])?
        .remove(&0)
        .context("no connection to partition 0's shard")?;
    let block = [(levee_topic.as_str(), 0u32, run.as_slice())];
    let started = Instant::now();
    let mut pending = VecDeque::new();
    for _ in 0..batches {
        if pending.len() >= args.in_flight {
            wait_levee(pending.pop_front())?;
        }
        pending.push_back(owner.produce(acks, 30_000, &block)?);
    }
    while let Some(p) = pending.pop_front() {
        wait_levee(Some(p))?;
    }
    let levee_produce = started.elapsed();

    // The Kafka protocol: one pre-encoded Produce v9 frame, its correlation id patched per send.
    let mut boot = KafkaConn::connect(&kafka_addr)?;
    let leader = boot.leader(&kafka_topic)?;
    let mut conn = KafkaConn::connect(&leader)?;
    let records: Vec<Record> = (0..per_batch as i64)
        .map(|i| kafka_record(i, &value))
        .collect();
    let mut batch = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut batch,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )?;
    let frame = conn.frame(
        ApiKey::Produce,
        9,
        &produce(&kafka_topic, acks, batch.freeze()),
    )?;
    let started = Instant::now();
    let mut outstanding = 0usize;
    for i in 0..batches {
        if outstanding >= args.in_flight {
            check_produce(conn.response(ApiKey::Produce, 9)?)?;
            outstanding -= 1;
        }
        let mut f = frame.clone();
        f[8..12].copy_from_slice(&(i as i32).to_be_bytes());
        conn.stream.write_all(&f)?;
        outstanding += 1;
    }
    for _ in 0..outstanding {
        check_produce(conn.response(ApiKey::Produce, 9)?)?;
    }
    let kafka_produce = started.elapsed();

    // Read back: Levee's consumer (records checked in place) and Kafka Fetch v12 (batches
    // counted from their headers).
    let started = Instant::now();
    let mut consumer = client.consumer(ConsumerConfig {
        start: StartFrom::Earliest,
        fetch_max_bytes: 1 << 20,
        ..ConsumerConfig::new(levee_topic.as_str())
    })?;
    let mut read = 0u64;
    let deadline = started + Duration::from_secs(300);
    while read < total {
        ensure!(
            Instant::now() < deadline,
            "Levee fetch: {read} of {total} after 300 s"
        );
        for f in consumer.poll_fetched(Duration::from_millis(500))? {
            for r in f.records() {
                r?;
                read += 1;
            }
        }
    }
    let levee_fetch = started.elapsed();
    let started = Instant::now();
    let mut offset = 0i64;
    while (offset as u64) < total {
        ensure!(
            Instant::now() < deadline + Duration::from_secs(300),
            "Kafka fetch: {offset} of {total}"
        );
        offset = conn.fetch(&kafka_topic, offset)?;
    }
    let kafka_fetch = started.elapsed();

    let mb_s = |d: Duration| report::mb_s(payload, d);
    let results = KafkaThroughputResults {
        levee_produce_mb_s: mb_s(levee_produce),
        kafka_produce_mb_s: mb_s(kafka_produce),
        kafka_over_levee_produce: report::ratio(mb_s(kafka_produce), mb_s(levee_produce)),
        levee_fetch_mb_s: mb_s(levee_fetch),
        kafka_fetch_mb_s: mb_s(kafka_fetch),
        kafka_over_levee_fetch: report::ratio(mb_s(kafka_fetch), mb_s(levee_fetch)),
    };
    println!(
        "produce  levee {:>8.1} MB/s  kafka {:>8.1} MB/s  kafka/levee {:.2}",
        results.levee_produce_mb_s,
        results.kafka_produce_mb_s,
        results.kafka_over_levee_produce.unwrap_or(0.0)
    );
    println!(
        "fetch    levee {:>8.1} MB/s  kafka {:>8.1} MB/s  kafka/levee {:.2}",
        results.levee_fetch_mb_s,
        results.kafka_fetch_mb_s,
        results.kafka_over_levee_fetch.unwrap_or(0.0)
    );
    if let Some(path) = &args.json {
        report::write_json(
            path,
            &report::Report {
                scenario: "kafka-throughput",
                config: &args,
                results: &results,
            },
        )?;
    }
    for t in [&levee_topic, &kafka_topic] {
        client.delete_topic(t)?;
    }
    broker.stop()
}

fn wait_levee(p: Option<Option<levee::client::ResponseFuture>>) -> anyhow::Result<()> {
    if let Some(Some(f)) = p {
        let frame = f.wait()?;
        let h = frame.header();
        ensure!(
            h.error_code == levee::protocol::ErrorCode::None,
            "Levee produce failed: {:?}",
            h.error_code
        );
    }
    Ok(())
}

fn check_produce(r: ProduceResponse) -> anyhow::Result<()> {
    for t in &r.responses {
        for p in &t.partition_responses {
            if p.error_code != 0 {
                bail!("Kafka produce failed with code {}", p.error_code);
            }
        }
    }
    Ok(())
}

fn kafka_record(i: i64, value: &[u8]) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: i,
        // Sequences along the offsets keep every record in one batch (see the encoder).
        sequence: (i - 1) as i32,
        timestamp: 0,
        key: None,
        value: Some(Bytes::copy_from_slice(value)),
        headers: IndexMap::new(),
    }
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn produce(topic: &str, acks: Acks, records: Bytes) -> ProduceRequest {
    let mut p = produce_request::PartitionProduceData::default();
    p.index = 0;
    p.records = Some(records);
    let mut t = produce_request::TopicProduceData::default();
    t.name = name(topic);
    t.partition_data = vec![p];
    let mut r = ProduceRequest::default();
    r.acks = match acks {
        Acks::Durable => -1,
        Acks::Written => 1,
        Acks::None => 0,
    };
    r.timeout_ms = 30_000;
    r.topic_data = vec![t];
    r
}

/// A blocking Kafka connection.
struct KafkaConn {
    stream: TcpStream,
}

impl KafkaConn {
    fn connect(addr: &str) -> anyhow::Result<KafkaConn> {
        let stream = TcpStream::connect(addr).with_context(|| format!("cannot reach {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(KafkaConn { stream })
    }

    /// A whole request frame (length included), correlation id 0.
    fn frame<R: Encodable>(&self, api: ApiKey, version: i16, body: &R) -> anyhow::Result<Vec<u8>> {
        let mut header = RequestHeader::default();
        header.request_api_key = api as i16;
        header.request_api_version = version;
        header.client_id = Some(StrBytes::from_static_str("levee-loadtest"));
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0; 4]);
        header.encode(&mut buf, api.request_header_version(version))?;
        body.encode(&mut buf, version)?;
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        Ok(buf.to_vec())
    }

    fn response<S: Decodable>(&mut self, api: ApiKey, version: i16) -> anyhow::Result<S> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut frame)?;
        let mut frame = Bytes::from(frame);
        ResponseHeader::decode(&mut frame, api.response_header_version(version))?;
        S::decode(&mut frame, version)
    }

    fn call<R: Encodable, S: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &R,
    ) -> anyhow::Result<S> {
        let f = self.frame(api, version, body)?;
        self.stream.write_all(&f)?;
        self.response(api, version)
    }

    /// The Kafka address of partition 0's leader.
    fn leader(&mut self, topic: &str) -> anyhow::Result<String> {
        let mut t = metadata_request::MetadataRequestTopic::default();
        t.name = Some(name(topic));
        let mut r = MetadataRequest::default();
        r.topics = Some(vec![t]);
        let m: MetadataResponse = self.call(ApiKey::Metadata, 12, &r)?;
        let leader = m
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .context("no partition in Metadata")?
            .leader_id;
        let b = m
            .brokers
            .iter()
            .find(|b| b.node_id == leader)
            .context("leader not among the brokers")?;
        Ok(format!("{}:{}", b.host.as_str(), b.port))
    }

    /// One Fetch v12 of partition 0 from `offset`; the offset after the last record returned.
    fn fetch(&mut self, topic: &str, offset: i64) -> anyhow::Result<i64> {
        let mut p = fetch_request::FetchPartition::default();
        p.fetch_offset = offset;
        p.partition_max_bytes = 1 << 20;
        let mut t = fetch_request::FetchTopic::default();
        t.topic = name(topic);
        t.partitions = vec![p];
        let mut r = FetchRequest::default();
        r.max_wait_ms = 500;
        r.min_bytes = 1;
        r.max_bytes = 1 << 20;
        r.topics = vec![t];
        let resp: FetchResponse = self.call(ApiKey::Fetch, 12, &r)?;
        let part = resp
            .responses
            .first()
            .and_then(|t| t.partitions.first())
            .context("no partition in the Fetch response")?;
        ensure!(
            part.error_code == 0,
            "Kafka fetch failed with code {}",
            part.error_code
        );
        let mut records = part.records.clone().unwrap_or_default();
        let mut next = offset;
        for b in RecordBatchDecoder::decode_batch_info(&mut records)? {
            next = next.max(b.min_offset + i64::from(b.record_count));
        }
        Ok(next)
    }
}
