//! The Rust client: admin calls, a batching [`Producer`], a long-polling [`Consumer`], all over
//! plain `std::net` threads — no async runtime is required, and none is excluded.
//!
//! # Design
//!
//! **Connections are pipelined.** A [`Connection`] is one TCP stream with a writer mutex and a
//! reader thread. Any number of threads may send on it at once; each request is registered under a
//! fresh correlation id before its frame is written, and the reader thread hands each response to
//! the request with the same id, in whatever order the broker answers. At most
//! [`ClientConfig::in_flight_max`] requests are pending per connection: a sender that finds the
//! window full blocks until a response frees a slot. Every response is copied into its own 16-byte
//! aligned buffer, so fetched records are read in place ([`Fetched::records`]).
//!
//! **Requests go to the shard that owns the data.** The broker runs one shard per core, and each
//! shard listens on its own port (CONTRACT.md, "Addresses"). [`Client::connect`] does the
//! ApiVersions handshake on the bootstrap address, then fetches Metadata: the shard addresses and
//! which shard owns each partition. Produce, Fetch and ListOffsets go straight to the owning
//! shard's port over one connection per shard address, so the broker never hops between cores on
//! the data path; admin requests go to the bootstrap connection. Every request works on any
//! connection, so when a shard cannot be reached the client falls back to the bootstrap one.
//!
//! **Failures are typed and local.** A connection that breaks fails all its pending requests with
//! [`ClientError::Disconnected`] and is never reused. The next request opens a fresh connection and
//! refreshes metadata first (after a broker restart, shard ports may have changed). Requests that
//! are safe to repeat — Metadata, ListTopics, DescribeTopic, ListOffsets, Fetch — are retried after
//! reconnecting (and on retriable broker codes such as `ShuttingDown`), up to
//! [`ClientConfig::retries`] times with exponential backoff. Produce is retried
//! by the [`Producer`] (on retriable broker codes too); [`Client::produce_run`] does not retry, and
//! neither do CreateTopic, DeleteTopic and AlterTopic.
//!
//! **Futures without a runtime.** [`ResponseFuture`] and [`SendFuture`] implement
//! `std::future::Future`, so they can be awaited in tokio or any executor, and also have blocking
//! `wait` / `wait_timeout`. The admin, fetch and offset methods of [`Client`] block the calling
//! thread (inside an async runtime, call them from a blocking task).
//!
//! **Everything is bounded.** The in-flight window per connection, the producer's buffered bytes
//! and in-flight batches per partition, frame sizes, and every wait: a request that gets no answer
//! within `request_timeout_ms` (plus its own long-poll or durability wait) closes its connection,
//! since a broker that stops answering one request is not answering the others either.
//!
//! # Examples
//!
//! ```no_run
//! use levee::client::{Client, ClientConfig, ConsumerConfig, ProducerConfig, ProducerRecord};
//! use levee::protocol::TopicConfig;
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), levee::client::ClientError> {
//! let client = Client::connect("127.0.0.1:7070", ClientConfig::default())?;
//! client.create_topic(
//!     "orders",
//!     TopicConfig { partitions: 4, retention_bytes: None, retention_ms: None, visibility: None, ..Default::default() },
//! )?;
//!
//! let producer = client.producer(ProducerConfig::default())?;
//! let meta = producer.send(ProducerRecord::new("orders", b"hello".to_vec())).wait()?;
//! println!("stored at {}/{:?}", meta.partition, meta.offset);
//! producer.close();
//!
//! let mut consumer = client.consumer(ConsumerConfig::new("orders"))?;
//! for record in consumer.poll(Duration::from_secs(1))? {
//!     println!("{} {}: {:?}", record.partition, record.offset, record.value);
//! }
//! # Ok(())
//! # }
//! ```

mod admin;
mod connection;
mod consumer;
mod error;
mod group;
mod oneshot;
mod producer;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use connection::{Connection, ResponseFrame, ResponseFuture};
pub use consumer::{ConsumedRecord, Consumer, ConsumerConfig, ResetPolicy, StartFrom};
pub use error::ClientError;
pub use group::{CommittedOffset, GroupConsumer, GroupConsumerConfig};
pub use producer::{
    partition_for_key, Producer, ProducerConfig, ProducerRecord, RecordMetadata, SendFuture,
};

use crate::protocol::{
    self, Acks, ApiKey, ErrorCode, FetchRequest, ListOffsetsBlock, OffsetSpec,
    PartitionDescription, Request, Response, ShardAddr, TopicChange, TopicConfig, TopicMetadata,
};
use crate::record::{self, RecordError, RecordRef, Records};
use oneshot::lock;

/// The longest pause between two retries, whatever the backoff doubling reaches.
const RETRY_BACKOFF_MAX_MS: u64 = 5_000;

/// Connection and retry settings shared by everything built on a [`Client`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Sent in the ApiVersions handshake, for the broker's logs. Default `levee-rust`.
    pub client_id: String,
    /// Limit on opening one TCP connection. Default 5 000.
    pub connect_timeout_ms: u64,
    /// Limit on waiting for a response (a long-poll fetch or a durable produce adds its own wait),
    /// for a free in-flight slot, and for a socket write. Default 30 000.
    pub request_timeout_ms: u64,
    /// Largest response frame accepted, size field included; a larger one closes the connection.
    /// Default [`protocol::FRAME_SIZE_MAX`] (64 MiB), the broker's own default limit.
    pub frame_bytes_max: usize,
    /// Requests pending per connection before senders block. Default 1 024: enough to keep a
    /// shard's group commit fed by many producers' batches at once, while a pending entry costs
    /// only a few dozen bytes; the memory the responses can hold is bounded by the callers
    /// (the producer's buffer, the consumer's fetch size), not by this window.
    pub in_flight_max: usize,
    /// How often a request that is safe to repeat is retried after a broken or unreachable
    /// connection. Default 5.
    pub retries: u32,
    /// First pause before a retry; it doubles on each attempt, up to 5 s. Default 100.
    pub retry_backoff_ms: u64,
    /// Cached partition ownership older than this is fetched again before use. Default 60 000.
    pub metadata_max_age_ms: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            client_id: "levee-rust".into(),
            connect_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
            frame_bytes_max: protocol::FRAME_SIZE_MAX,
            in_flight_max: 1024,
            retries: 5,
            retry_backoff_ms: 100,
            metadata_max_age_ms: 60_000,
        }
    }
}

impl ClientConfig {
    fn validate(&self) -> Result<(), ClientError> {
        let bad = |field, reason: &str| {
            Err(ClientError::InvalidConfig {
                field,
                reason: reason.into(),
            })
        };
        if self.connect_timeout_ms == 0 {
            return bad("connect_timeout_ms", "must be at least 1");
        }
        if self.request_timeout_ms == 0 {
            return bad("request_timeout_ms", "must be at least 1");
        }
        if self.in_flight_max == 0 {
            return bad("in_flight_max", "must be at least 1");
        }
        if self.frame_bytes_max < 4096 || self.frame_bytes_max > u32::MAX as usize {
            return bad("frame_bytes_max", "must be between 4 KiB and 4 GiB");
        }
        if self.client_id.len() > 1024 {
            return bad("client_id", "must be at most 1024 bytes");
        }
        Ok(())
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u64 << attempt.saturating_sub(1).min(20);
        Duration::from_millis(
            self.retry_backoff_ms
                .saturating_mul(factor)
                .min(RETRY_BACKOFF_MAX_MS),
        )
    }
}

/// The name and partition count of one topic, from [`Client::list_topics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSummary {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: u32,
}

/// One topic in detail, from [`Client::describe_topic`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    /// Topic name.
    pub name: String,
    /// Partition count and retention.
    pub config: TopicConfig,
    /// Each partition's owner and offsets.
    pub partitions: Vec<PartitionDescription>,
}

/// Shard listeners and partition ownership, from [`Client::metadata`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMetadata {
    /// Every shard's listener, as the broker advertises it.
    pub shards: Vec<ShardAddr>,
    /// The topics asked about (all topics when none were named).
    pub topics: Vec<TopicMetadata>,
}

/// Where one produced batch landed, from [`Client::produce_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceOutcome {
    /// Offset of the batch's first record; the others follow consecutively.
    pub base_offset: u64,
    /// Append time the broker stamped on the batch, ms since the Unix epoch.
    pub timestamp_ms: i64,
}

/// One partition's fetched records, owning the aligned response frame they live in.
pub struct Fetched {
    frame: ResponseFrame,
    topic: String,
    partition: u32,
    requested: u64,
    earliest: u64,
    next: u64,
    run: Range<usize>,
    archive_len_max: usize,
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("requested", &self.requested)
            .field("earliest", &self.earliest)
            .field("next", &self.next)
            .field("run_bytes", &self.run.len())
            .finish()
    }
}

impl Fetched {
    /// Topic name.
    pub fn topic(&self) -> &str {
        &self.topic
    }
    /// Partition number.
    pub fn partition(&self) -> u32 {
        self.partition
    }
    /// The offset that was asked for.
    pub fn requested_offset(&self) -> u64 {
        self.requested
    }
    /// The partition's first stored offset when the broker answered.
    pub fn earliest(&self) -> u64 {
        self.earliest
    }
    /// The offset the partition's next record will get (the log end) when the broker answered.
    pub fn next(&self) -> u64 {
        self.next
    }
    /// The raw run of whole records, 16-byte aligned.
    pub fn run(&self) -> &[u8] {
        &self.frame.bytes()[self.run.clone()]
    }
    /// True when no record came back (the long poll ran out).
    pub fn is_empty(&self) -> bool {
        self.run.is_empty()
    }
    /// The records, read in place and checked with both CRCs as they are iterated. Records before
    /// the requested offset (a run may start at an earlier record boundary) are skipped. Call
    /// [`RecordRef::message`] to read a record's key, value and headers without copying.
    pub fn records(&self) -> FetchedRecords<'_> {
        FetchedRecords {
            inner: Records::new(self.run(), self.archive_len_max),
            from: self.requested,
        }
    }
    /// The offset after the last record in this response, or `None` when it holds no record.
    pub fn last_offset_plus_one(&self) -> Result<Option<u64>, RecordError> {
        let mut last = None;
        for r in self.records() {
            last = Some(r?.offset() + 1);
        }
        Ok(last)
    }
}

/// Iterator over the records of a [`Fetched`].
pub struct FetchedRecords<'a> {
    inner: Records<'a>,
    from: u64,
}

impl<'a> Iterator for FetchedRecords<'a> {
    type Item = Result<RecordRef<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.inner.next()? {
                Ok(r) if r.offset() < self.from => continue,
                other => return Some(other),
            }
        }
    }
}

/// A cached view of which shard owns each partition of a topic.
struct TopicRoute {
    error: ErrorCode,
    partitions: HashMap<u32, u16>,
    fetched_at: Instant,
}

#[derive(Default)]
struct Routes {
    /// Shard number → `host:port`.
    shards: HashMap<u16, String>,
    topics: HashMap<String, TopicRoute>,
    /// Set when a connection broke: the broker may have restarted with new shard ports.
    stale: bool,
}

struct ClientInner {
    bootstrap: String,
    bootstrap_host: String,
    config: ClientConfig,
    bootstrap_conn: Mutex<Option<Arc<Connection>>>,
    shard_conns: Mutex<HashMap<String, Arc<Connection>>>,
    routes: Mutex<Routes>,
    /// The broker's name and version, from the last handshake.
    broker: Mutex<String>,
}

/// A handle to one broker: admin calls, offsets, low-level produce and fetch, and the factory for
/// [`Producer`] and [`Consumer`]. Cheap to clone; clones share connections and metadata.
///
/// # Examples
///
/// ```no_run
/// use levee::client::{Client, ClientConfig};
/// use levee::protocol::{OffsetSpec, TopicConfig};
///
/// # fn main() -> Result<(), levee::client::ClientError> {
/// let client = Client::connect("127.0.0.1:7070", ClientConfig::default())?;
/// client.create_topic("events", TopicConfig { partitions: 8, retention_bytes: None, retention_ms: Some(86_400_000), visibility: None, ..Default::default() })?;
/// for t in client.list_topics()? {
///     println!("{} has {} partitions", t.name, t.partitions);
/// }
/// let end = client.list_offsets("events", 0, OffsetSpec::Latest)?;
/// let fetched = client.fetch("events", 0, end.saturating_sub(10), 1 << 20, 0)?;
/// for record in fetched.records() {
///     let record = record?;
///     let message = record.message()?;
///     println!("{}: {} bytes", record.offset(), message.value.len());
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("bootstrap", &self.inner.bootstrap)
            .finish()
    }
}

fn host_of(addr: &str) -> String {
    if let Some(rest) = addr.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            return rest[..end].to_string();
        }
    }
    match addr.rsplit_once(':') {
        Some((host, _)) => host.to_string(),
        None => addr.to_string(),
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn block_error(code: ErrorCode, topic: &str, partition: u32) -> ClientError {
    ClientError::Broker {
        code,
        message: format!("{topic}/{partition}"),
    }
}

fn unexpected(expected: ApiKey, got: &Response) -> ClientError {
    let got = match got {
        Response::ApiVersions { .. } => "ApiVersions",
        Response::Metadata { .. } => "Metadata",
        Response::Done => "Done",
        Response::ListTopics(_) => "ListTopics",
        Response::DescribeTopic { .. } => "DescribeTopic",
        Response::Produce(_) => "Produce",
        Response::Fetch(_) => "Fetch",
        Response::ListOffsets(_) => "ListOffsets",
        Response::JoinGroup(_) => "JoinGroup",
        Response::OffsetCommit(_) => "OffsetCommit",
        Response::OffsetFetch(_) => "OffsetFetch",
        Response::DescribeGroup(_) => "DescribeGroup",
        Response::ListGroups(_) => "ListGroups",
        Response::ProduceDelayed(_) => "ProduceDelayed",
        Response::Nack(_) => "Nack",
        Response::DlqReplay(_) => "DlqReplay",
        Response::InitProducer { .. } => "InitProducer",
        Response::ListQuotas(_) => "ListQuotas",
        Response::DeleteQuota { .. } => "DeleteQuota",
        Response::Stats(_) => "Stats",
    };
    ClientError::UnexpectedResponse {
        what: format!("expected a {expected:?} body, got {got}"),
    }
}

fn missing_block(api: ApiKey, topic: &str, partition: u32) -> ClientError {
    ClientError::UnexpectedResponse {
        what: format!("{api:?} response has no block for {topic}/{partition}"),
    }
}

fn timeout_ms_u32(ms: u64) -> u32 {
    u32::try_from(ms).unwrap_or(u32::MAX)
}

impl Client {
    /// Connects to the broker at `bootstrap` (`host:port`), checks that it speaks every request
    /// version this client uses (ApiVersions), and loads the metadata of all topics. Fails fast,
    /// without retrying, when the broker cannot be reached.
    pub fn connect(bootstrap: &str, config: ClientConfig) -> Result<Client, ClientError> {
        config.validate()?;
        let client = Client {
            inner: Arc::new(ClientInner {
                bootstrap: bootstrap.to_string(),
                bootstrap_host: host_of(bootstrap),
                config,
                bootstrap_conn: Mutex::new(None),
                shard_conns: Mutex::new(HashMap::new()),
                routes: Mutex::new(Routes::default()),
                broker: Mutex::new(String::new()),
            }),
        };
        client.bootstrap_connection()?;
        client.metadata_once(&[])?;
        Ok(client)
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The broker's name and version, as it reported it in the last handshake.
    pub fn broker_version(&self) -> String {
        lock(&self.inner.broker).clone()
    }

    /// A batching producer; see [`Producer`].
    pub fn producer(&self, config: ProducerConfig) -> Result<Producer, ClientError> {
        Producer::new(self.clone(), config)
    }

    /// A consumer positioned as `config.start` says; see [`Consumer`].
    pub fn consumer(&self, config: ConsumerConfig) -> Result<Consumer, ClientError> {
        Consumer::new(self.clone(), config)
    }

    /// Creates a topic.
    pub fn create_topic(&self, name: &str, config: TopicConfig) -> Result<(), ClientError> {
        let request = Request::CreateTopic {
            name: name.to_string(),
            config,
        };
        let result = self.admin(&request, ApiKey::CreateTopic);
        self.forget_topic(name);
        result.map(drop)
    }

    /// Deletes a topic and its data.
    pub fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let request = Request::DeleteTopic {
            name: name.to_string(),
        };
        let result = self.admin(&request, ApiKey::DeleteTopic);
        self.forget_topic(name);
        result.map(drop)
    }

    /// Changes a topic: `None` leaves a setting as it is. Partitions may only grow; for retention
    /// and backlog bounds, 0 and `u64::MAX` mean unlimited; visibility needs a broker with
    /// AlterTopic version 2, backlog settings version 3.
    pub fn alter_topic(&self, name: &str, change: &TopicChange) -> Result<(), ClientError> {
        let request = Request::AlterTopic {
            name: name.to_string(),
            partitions: change.partitions,
            retention_bytes: change.retention_bytes,
            retention_ms: change.retention_ms,
            visibility: change.visibility,
            backlog: change.backlog,
        };
        let result = self.admin(&request, ApiKey::AlterTopic);
        self.forget_topic(name);
        result.map(drop)
    }

    /// Names and partition counts of every topic but the internal ones.
    pub fn list_topics(&self) -> Result<Vec<TopicSummary>, ClientError> {
        self.list_topics_with(false)
    }

    /// Names and partition counts of every topic; with `internal`, the broker's internal topics
    /// too (committed offsets, retries, delays, dead letters: names starting `__`).
    pub fn list_topics_with(&self, internal: bool) -> Result<Vec<TopicSummary>, ClientError> {
        let request = Request::ListTopics { internal };
        self.retrying(|| match self.admin(&request, ApiKey::ListTopics)? {
            Response::ListTopics(topics) => Ok(topics
                .into_iter()
                .map(|(name, partitions)| TopicSummary { name, partitions })
                .collect()),
            other => Err(unexpected(ApiKey::ListTopics, &other)),
        })
    }

    /// One topic's configuration and its partitions' owners and offsets.
    pub fn describe_topic(&self, name: &str) -> Result<TopicDescription, ClientError> {
        let request = Request::DescribeTopic {
            name: name.to_string(),
        };
        self.retrying(|| match self.admin(&request, ApiKey::DescribeTopic)? {
            Response::DescribeTopic {
                name,
                config,
                partitions,
            } => Ok(TopicDescription {
                name,
                config,
                partitions,
            }),
            other => Err(unexpected(ApiKey::DescribeTopic, &other)),
        })
    }

    /// Shard addresses and partition ownership for `topics` (all topics when empty). Also
    /// refreshes the routing cache.
    pub fn metadata(&self, topics: &[&str]) -> Result<ClusterMetadata, ClientError> {
        self.retrying(|| self.metadata_once(topics))
    }

    /// Looks up an offset of one partition: the earliest stored, the latest (the next to be
    /// written), or the first appended at or after a time.
    pub fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<u64, ClientError> {
        let request = Request::ListOffsets(vec![ListOffsetsBlock {
            topic: topic.to_string(),
            partition,
            spec,
        }]);
        self.retrying(|| {
            let conn = self.connection_for(topic, partition)?;
            match conn.request(&request)?.wait()?.decode()? {
                Response::ListOffsets(results) => {
                    let r = results
                        .into_iter()
                        .find(|r| r.topic == topic && r.partition == partition)
                        .ok_or_else(|| missing_block(ApiKey::ListOffsets, topic, partition))?;
                    if r.error != ErrorCode::None {
                        return Err(block_error(r.error, topic, partition));
                    }
                    Ok(r.offset)
                }
                other => Err(unexpected(ApiKey::ListOffsets, &other)),
            }
        })
    }

    /// Appends one run of whole records (as built by [`record::encode`]) to a partition and waits
    /// for the acknowledgement `acks` asks for. Returns `None` for `acks = none`, once the bytes
    /// are written to the socket. Not retried: that is the [`Producer`]'s job.
    pub fn produce_run(
        &self,
        topic: &str,
        partition: u32,
        run: &[u8],
        acks: Acks,
    ) -> Result<Option<ProduceOutcome>, ClientError> {
        let timeout_ms = timeout_ms_u32(self.inner.config.request_timeout_ms);
        match self.produce_start(topic, partition, run, acks, timeout_ms)? {
            None => Ok(None),
            Some(future) => produce_outcome(&future.wait()?, topic, partition).map(Some),
        }
    }

    /// Reads records of one partition from `offset`: at most about `max_bytes` (at least one
    /// record if any is there), waiting up to `max_wait_ms` for one to arrive. An offset outside
    /// the log fails with [`ClientError::OffsetOutOfRange`]. Retried after reconnecting.
    pub fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<Fetched, ClientError> {
        self.retrying(|| {
            let future = self.fetch_start(topic, partition, offset, max_bytes, max_wait_ms)?;
            self.fetch_finish(future.wait()?, topic, partition, offset)
        })
    }

    /// The number of partitions of `topic`, from the metadata cache (fetched when missing or
    /// older than `metadata_max_age_ms`).
    pub fn partition_count(&self, topic: &str) -> Result<u32, ClientError> {
        let max_age = Duration::from_millis(self.inner.config.metadata_max_age_ms);
        {
            let routes = lock(&self.inner.routes);
            if let Some(r) = routes.topics.get(topic) {
                if r.error == ErrorCode::None
                    && !routes.stale
                    && r.fetched_at.elapsed() < max_age
                    && !r.partitions.is_empty()
                {
                    return Ok(r.partitions.len() as u32);
                }
            }
        }
        self.metadata(&[topic])?;
        let routes = lock(&self.inner.routes);
        match routes.topics.get(topic) {
            Some(r) if r.error != ErrorCode::None => Err(ClientError::Broker {
                code: r.error,
                message: if r.error == ErrorCode::UnknownTopic {
                    format!("unknown topic '{topic}'")
                } else {
                    format!("topic '{topic}'")
                },
            }),
            Some(r) if !r.partitions.is_empty() => Ok(r.partitions.len() as u32),
            _ => Err(ClientError::Broker {
                code: ErrorCode::UnknownTopic,
                message: format!("topic {topic}"),
            }),
        }
    }

    // ---- internals shared with the producer and consumer ----

    pub(crate) fn produce_start(
        &self,
        topic: &str,
        partition: u32,
        run: &[u8],
        acks: Acks,
        timeout_ms: u32,
    ) -> Result<Option<ResponseFuture>, ClientError> {
        let conn = self.connection_for(topic, partition)?;
        conn.produce(acks, timeout_ms, &[(topic, partition, run)])
    }

    pub(crate) fn fetch_start(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<ResponseFuture, ClientError> {
        let conn = self.connection_for(topic, partition)?;
        conn.request(&Request::Fetch(FetchRequest::one(
            topic,
            partition,
            offset,
            max_bytes,
            max_wait_ms,
        )))
    }

    pub(crate) fn fetch_finish(
        &self,
        frame: ResponseFrame,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<Fetched, ClientError> {
        let results = match frame.decode()? {
            Response::Fetch(results) => results,
            other => return Err(unexpected(ApiKey::Fetch, &other)),
        };
        let r = results
            .into_iter()
            .find(|r| r.topic == topic && r.partition == partition)
            .ok_or_else(|| missing_block(ApiKey::Fetch, topic, partition))?;
        match r.error {
            ErrorCode::None => {}
            ErrorCode::OffsetOutOfRange => {
                return Err(ClientError::OffsetOutOfRange {
                    topic: topic.to_string(),
                    partition,
                    requested: offset,
                    earliest: r.earliest,
                    latest: r.next,
                })
            }
            ErrorCode::Throttled => {
                return Err(ClientError::Throttled {
                    topic: topic.to_string(),
                    partition,
                    throttle_ms: r.throttle_ms,
                })
            }
            code => return Err(block_error(code, topic, partition)),
        }
        assert!(r.run.start % record::RECORD_ALIGN == 0 && r.run.end <= frame.bytes().len());
        Ok(Fetched {
            topic: r.topic,
            partition,
            requested: offset,
            earliest: r.earliest,
            next: r.next,
            run: r.run,
            archive_len_max: self.inner.config.frame_bytes_max,
            frame,
        })
    }

    /// Marks routing stale so the next partition request refreshes metadata first.
    pub(crate) fn mark_stale(&self) {
        lock(&self.inner.routes).stale = true;
    }

    /// Runs `f` again, with backoff, after a broken or unreachable connection or a retriable
    /// broker code (`ShuttingDown`, `Busy`, ...). Only for requests that are safe to repeat.
    pub(crate) fn retrying<T>(
        &self,
        mut f: impl FnMut() -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut attempt = 0;
        loop {
            match f() {
                Err(e)
                    if (e.is_disconnect() || e.code().is_some_and(ErrorCode::is_retriable))
                        && attempt < self.inner.config.retries =>
                {
                    tracing::debug!(error = %e, attempt, "retrying");
                    if e.is_disconnect() {
                        self.mark_stale();
                    }
                    // A throttle is the broker pacing us, not a failure: wait what it said,
                    // without spending a retry.
                    match e {
                        ClientError::Throttled { throttle_ms, .. } => std::thread::sleep(
                            std::time::Duration::from_millis(u64::from(throttle_ms).max(1)),
                        ),
                        _ => {
                            attempt += 1;
                            std::thread::sleep(self.inner.config.backoff(attempt));
                        }
                    }
                }
                result => return result,
            }
        }
    }

    fn admin(&self, request: &Request, key: ApiKey) -> Result<Response, ClientError> {
        debug_assert_eq!(request.api_key(), key);
        let conn = self.bootstrap_connection()?;
        conn.request(request)?.wait()?.decode()
    }

    /// One Metadata round trip, no retry: callers inside a retry loop use this so that retries
    /// do not nest.
    fn metadata_once(&self, topics: &[&str]) -> Result<ClusterMetadata, ClientError> {
        let request = Request::Metadata {
            topics: topics.iter().map(|t| t.to_string()).collect(),
        };
        let meta = match self.admin(&request, ApiKey::Metadata)? {
            Response::Metadata { shards, topics } => ClusterMetadata { shards, topics },
            other => return Err(unexpected(ApiKey::Metadata, &other)),
        };
        self.update_routes(&meta, topics.is_empty());
        Ok(meta)
    }

    fn forget_topic(&self, name: &str) {
        lock(&self.inner.routes).topics.remove(name);
    }

    fn update_routes(&self, meta: &ClusterMetadata, all_topics: bool) {
        let mut routes = lock(&self.inner.routes);
        let now = Instant::now();
        routes.shards = meta
            .shards
            .iter()
            .map(|s| (s.shard, self.shard_addr(s)))
            .collect();
        if all_topics {
            routes.topics.clear();
        }
        for t in &meta.topics {
            routes.topics.insert(
                t.name.clone(),
                TopicRoute {
                    error: t.error,
                    partitions: t.partitions.iter().copied().collect(),
                    fetched_at: now,
                },
            );
        }
        routes.stale = false;
    }

    /// A shard's address to dial: a broker listening on an unspecified address (`0.0.0.0`, `::`)
    /// advertises it as is, which is only reachable through the host we bootstrapped from.
    fn shard_addr(&self, s: &ShardAddr) -> String {
        let unspecified = s.host.is_empty()
            || s.host
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_unspecified());
        let host = if unspecified {
            &self.inner.bootstrap_host
        } else {
            &s.host
        };
        join_host_port(host, s.port)
    }

    /// The connection to the shard owning `topic/partition`, or the bootstrap connection when the
    /// owner is unknown or unreachable (every request works on any connection).
    fn connection_for(&self, topic: &str, partition: u32) -> Result<Arc<Connection>, ClientError> {
        let max_age = Duration::from_millis(self.inner.config.metadata_max_age_ms);
        for _ in 0..2 {
            let needs_refresh = {
                let routes = lock(&self.inner.routes);
                routes.stale
                    || routes
                        .topics
                        .get(topic)
                        .is_none_or(|r| r.fetched_at.elapsed() >= max_age)
            };
            if needs_refresh {
                let stale = lock(&self.inner.routes).stale;
                let wanted: &[&str] = if stale { &[] } else { &[topic] };
                self.metadata_once(wanted)?;
            }
            let addr = {
                let routes = lock(&self.inner.routes);
                routes
                    .topics
                    .get(topic)
                    .and_then(|r| r.partitions.get(&partition))
                    .and_then(|shard| routes.shards.get(shard))
                    .cloned()
            };
            let Some(addr) = addr else { break };
            match self.shard_connection(&addr) {
                Ok(conn) => return Ok(conn),
                Err(e) => {
                    tracing::debug!(addr, error = %e, "shard unreachable; refreshing metadata");
                    self.mark_stale();
                }
            }
        }
        self.bootstrap_connection()
    }

    pub(crate) fn bootstrap_connection(&self) -> Result<Arc<Connection>, ClientError> {
        {
            let slot = lock(&self.inner.bootstrap_conn);
            match slot.as_ref() {
                Some(c) if !c.is_dead() => return Ok(c.clone()),
                Some(_) => self.mark_stale(),
                None => {}
            }
        }
        // Connect without holding the slot: a slow connect must not block users of live ones.
        let conn = Arc::new(self.open(&self.inner.bootstrap)?);
        let mut slot = lock(&self.inner.bootstrap_conn);
        if let Some(existing) = slot.as_ref() {
            if !existing.is_dead() {
                return Ok(existing.clone());
            }
        }
        *slot = Some(conn.clone());
        Ok(conn)
    }

    fn shard_connection(&self, addr: &str) -> Result<Arc<Connection>, ClientError> {
        {
            let conns = lock(&self.inner.shard_conns);
            match conns.get(addr) {
                Some(c) if !c.is_dead() => return Ok(c.clone()),
                Some(_) => self.mark_stale(),
                None => {}
            }
        }
        let conn = Arc::new(self.open(addr)?);
        let mut conns = lock(&self.inner.shard_conns);
        if let Some(existing) = conns.get(addr) {
            if !existing.is_dead() {
                return Ok(existing.clone());
            }
        }
        conns.insert(addr.to_string(), conn.clone());
        Ok(conn)
    }

    /// Opens a connection and does the ApiVersions handshake on it.
    fn open(&self, addr: &str) -> Result<Connection, ClientError> {
        let conn = Connection::connect(addr, &self.inner.config)?;
        let request = Request::ApiVersions {
            client_id: self.inner.config.client_id.clone(),
        };
        let (apis, broker) = match conn.request(&request)?.wait()?.decode()? {
            Response::ApiVersions { apis, broker } => (apis, broker),
            other => return Err(unexpected(ApiKey::ApiVersions, &other)),
        };
        // Per api: the newest version both sides speak. An api the broker lacks (an older broker)
        // fails only when it is used, with the broker's answer; the ones it has keep working.
        let mut versions = [None; ApiKey::ALL.len()];
        for key in ApiKey::ALL {
            let supported = apis
                .iter()
                .find(|(k, _, _)| *k == key as u16)
                .map(|&(_, min, max)| (min, max));
            match supported.map(|range| (range, key.negotiate(range))) {
                Some((_, Some(v))) => versions[key as usize] = Some(v),
                Some((range, None)) => {
                    // Both sides know the api but share no version: nothing of it can work.
                    return Err(ClientError::UnsupportedVersion {
                        broker,
                        api: key,
                        version: key.versions().1,
                        supported: Some(range),
                    });
                }
                None => {}
            }
        }
        conn.negotiated(versions);
        *lock(&self.inner.broker) = broker;
        Ok(conn)
    }
}

/// The outcome of a one-block Produce response.
fn produce_outcome(
    frame: &ResponseFrame,
    topic: &str,
    partition: u32,
) -> Result<ProduceOutcome, ClientError> {
    match frame.decode()? {
        Response::Produce(results) => {
            let r = results
                .into_iter()
                .find(|r| r.topic == topic && r.partition == partition)
                .ok_or_else(|| missing_block(ApiKey::Produce, topic, partition))?;
            if r.error == ErrorCode::Throttled {
                return Err(ClientError::Throttled {
                    topic: topic.to_string(),
                    partition,
                    throttle_ms: r.throttle_ms,
                });
            }
            if r.error != ErrorCode::None {
                return Err(block_error(r.error, topic, partition));
            }
            Ok(ProduceOutcome {
                base_offset: r.base_offset,
                timestamp_ms: r.timestamp_ms,
            })
        }
        other => Err(unexpected(ApiKey::Produce, &other)),
    }
}
