//! A consumer of one topic: it keeps a position per partition and reads with long-poll Fetch
//! requests, one per partition, all in flight at once (each on its owning shard's connection).
//!
//! Positions live in the consumer only; consumer groups and committed offsets are a separate
//! concern. A position outside the log (retention deleted it, or it was never written) is handled
//! by the [`ResetPolicy`].

use std::time::{Duration, Instant};

use rkyv::rancor;

use super::{Client, ClientError, Fetched};
use crate::protocol::OffsetSpec;
use crate::record::{Message, RecordError, RecordRef};

/// Where a new consumer starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The first offset still stored.
    Earliest,
    /// The offset the next record will get: only records produced from now on.
    Latest,
    /// This offset in every partition (reset by the [`ResetPolicy`] if outside the log).
    Offset(u64),
    /// The first record appended at or after this time, ms since the Unix epoch.
    Timestamp(i64),
}

/// What to do when a position is outside a partition's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetPolicy {
    /// Jump to the first offset still stored.
    Earliest,
    /// Jump to the end of the log.
    Latest,
    /// Fail the poll with [`ClientError::OffsetOutOfRange`].
    Error,
}

/// Settings of a [`Consumer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// The topic to read.
    pub topic: String,
    /// The partitions to read; `None` (the default) reads all of them.
    pub partitions: Option<Vec<u32>>,
    /// Where to start. Default `Earliest`.
    pub start: StartFrom,
    /// What to do on an out-of-range position. Default `Earliest`.
    pub reset: ResetPolicy,
    /// How long the broker may hold a fetch open waiting for records. Default 500.
    pub max_wait_ms: u32,
    /// Most bytes of records fetched per partition per request (at least one record is always
    /// returned, however large). Default 1 MiB.
    pub fetch_max_bytes: u32,
}

impl ConsumerConfig {
    /// The defaults for `topic`.
    pub fn new(topic: impl Into<String>) -> Self {
        ConsumerConfig {
            topic: topic.into(),
            partitions: None,
            start: StartFrom::Earliest,
            reset: ResetPolicy::Earliest,
            max_wait_ms: 500,
            fetch_max_bytes: 1 << 20,
        }
    }
}

/// One record, copied out of the fetched frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// Offset in the partition.
    pub offset: u64,
    /// The broker's append time, ms since the Unix epoch (what [`StartFrom::Timestamp`] searches).
    pub timestamp_ms: i64,
    /// The producer's timestamp, as the producer set it.
    pub producer_timestamp_ms: i64,
    /// The key, if the record has one.
    pub key: Option<Vec<u8>>,
    /// The payload.
    pub value: Vec<u8>,
    /// The value is null rather than empty (a Kafka producer's null value; `value` is empty).
    pub value_is_null: bool,
    /// Application headers, `(name, value)`.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl ConsumedRecord {
    /// The value of header `name`, if the record has one.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    fn header_number<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| s.parse().ok())
    }

    /// Which delivery of the message this is: 1 for the first, more for a retry of a message a
    /// group member nacked (its `levee.deliveries` header counts the failed ones).
    pub fn delivery(&self) -> u32 {
        self.header_number::<u32>("levee.deliveries")
            .unwrap_or(0)
            .saturating_add(1)
    }

    /// Where the message was first produced, `(topic, partition, offset)`: for a retry or a dead
    /// letter, from its `levee.topic`, `levee.partition` and `levee.offset` headers; for any
    /// other record, where it was read.
    pub fn origin(&self) -> (String, u32, u64) {
        match self
            .header("levee.topic")
            .and_then(|t| std::str::from_utf8(t).ok())
        {
            Some(t) => (
                t.to_string(),
                self.header_number("levee.partition").unwrap_or(0),
                self.header_number("levee.offset").unwrap_or(0),
            ),
            None => (self.topic.clone(), self.partition, self.offset),
        }
    }

    /// Copies one checked record out of its buffer.
    pub fn from_record(
        topic: &str,
        partition: u32,
        record: &RecordRef<'_>,
    ) -> Result<Self, ClientError> {
        let archived = record.message()?;
        let message: Message =
            rkyv::deserialize::<Message, rancor::Error>(archived).map_err(|e| {
                RecordError::BadArchive {
                    position: 0,
                    reason: e.to_string(),
                }
            })?;
        Ok(ConsumedRecord {
            topic: topic.to_string(),
            partition,
            offset: record.offset(),
            timestamp_ms: record.header.timestamp_ms,
            producer_timestamp_ms: message.timestamp_ms,
            key: message.key,
            value: message.value,
            value_is_null: record.header.value_is_null(),
            headers: message
                .headers
                .into_iter()
                .map(|h| (h.key, h.value))
                .collect(),
        })
    }
}

/// Reads one topic with long-poll fetches.
///
/// # Examples
///
/// ```no_run
/// use levee::client::{Client, ClientConfig, ConsumerConfig, ResetPolicy, StartFrom};
/// use std::time::Duration;
///
/// # fn main() -> Result<(), levee::client::ClientError> {
/// let client = Client::connect("127.0.0.1:7070", ClientConfig::default())?;
/// let mut consumer = client.consumer(ConsumerConfig {
///     start: StartFrom::Latest,
///     reset: ResetPolicy::Error,
///     ..ConsumerConfig::new("orders")
/// })?;
/// loop {
///     for record in consumer.poll(Duration::from_secs(1))? {
///         println!("{}@{}: {}", record.partition, record.offset, String::from_utf8_lossy(&record.value));
///     }
/// }
/// # }
/// ```
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    /// Next offset to read per partition, sorted by partition.
    positions: Vec<Position>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.config.topic)
            .field("positions", &self.positions)
            .finish()
    }
}

impl Consumer {
    pub(crate) fn new(client: Client, config: ConsumerConfig) -> Result<Consumer, ClientError> {
        if config.fetch_max_bytes == 0 {
            return Err(ClientError::InvalidConfig {
                field: "fetch_max_bytes",
                reason: "must be at least 1".into(),
            });
        }
        let mut partitions = match &config.partitions {
            Some(p) => p.clone(),
            None => (0..client.partition_count(&config.topic)?).collect(),
        };
        partitions.sort_unstable();
        partitions.dedup();
        if partitions.is_empty() {
            return Err(ClientError::InvalidConfig {
                field: "partitions",
                reason: "must name at least one partition".into(),
            });
        }
        let mut positions = Vec::with_capacity(partitions.len());
        for p in partitions {
            let lookup = |spec| client.list_offsets(&config.topic, p, spec);
            let offset = match config.start {
                StartFrom::Offset(o) => o,
                StartFrom::Earliest => lookup(OffsetSpec::Earliest)?,
                StartFrom::Latest => lookup(OffsetSpec::Latest)?,
                StartFrom::Timestamp(t) => lookup(OffsetSpec::Timestamp(t))?,
            };
            positions.push(Position {
                topic: config.topic.clone(),
                partition: p,
                offset,
            });
        }
        Ok(Consumer {
            client,
            config,
            positions,
        })
    }

    /// The topic read.
    pub fn topic(&self) -> &str {
        &self.config.topic
    }

    /// The partitions read, ascending.
    pub fn partitions(&self) -> Vec<u32> {
        self.positions.iter().map(|p| p.partition).collect()
    }

    /// The next offset to be read from `partition`, if it is one of the consumer's.
    pub fn position(&self, partition: u32) -> Option<u64> {
        self.positions
            .iter()
            .find(|p| p.partition == partition)
            .map(|p| p.offset)
    }

    /// Moves the position of `partition` (one of the consumer's) to `offset`.
    pub fn seek(&mut self, partition: u32, offset: u64) -> Result<(), ClientError> {
        match self.positions.iter_mut().find(|p| p.partition == partition) {
            Some(pos) => {
                pos.offset = offset;
                Ok(())
            }
            None => Err(ClientError::InvalidConfig {
                field: "partition",
                reason: format!("partition {partition} is not read by this consumer"),
            }),
        }
    }

    /// Waits up to `timeout` for records from any partition and returns what arrived first (empty
    /// when none did), advancing the positions past it. Out-of-range positions are reset as
    /// `reset` says; broken connections are retried up to the client's `retries`.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumedRecord>, ClientError> {
        let settings = self.settings();
        poll_positions(
            &self.client,
            &settings,
            &mut self.positions,
            timeout,
            &|| false,
            copy_records,
        )
    }

    /// Like [`poll`](Consumer::poll), but hands back the fetched frames themselves, so records are
    /// read in place with no copy ([`Fetched::records`], [`RecordRef::message`]). Every record's
    /// CRCs were checked; each returned `Fetched` holds at least one record.
    pub fn poll_fetched(&mut self, timeout: Duration) -> Result<Vec<Fetched>, ClientError> {
        let settings = self.settings();
        poll_positions(
            &self.client,
            &settings,
            &mut self.positions,
            timeout,
            &|| false,
            keep_frames,
        )
    }

    fn settings(&self) -> FetchSettings {
        FetchSettings {
            max_wait_ms: self.config.max_wait_ms,
            fetch_max_bytes: self.config.fetch_max_bytes,
            reset: self.config.reset,
        }
    }
}

/// Copies a fetch's records out ([`Consumer::poll`]); returns the position after them.
pub(crate) fn copy_records(
    fetched: Fetched,
    out: &mut Vec<ConsumedRecord>,
) -> Result<Option<u64>, ClientError> {
    let mut next = None;
    for record in fetched.records() {
        let record = record?;
        out.push(ConsumedRecord::from_record(
            fetched.topic(),
            fetched.partition(),
            &record,
        )?);
        next = Some(record.offset() + 1);
    }
    Ok(next)
}

/// Keeps a fetch's frame whole ([`Consumer::poll_fetched`]); returns the position after it.
pub(crate) fn keep_frames(
    fetched: Fetched,
    out: &mut Vec<Fetched>,
) -> Result<Option<u64>, ClientError> {
    let next = fetched.last_offset_plus_one()?;
    if next.is_some() {
        out.push(fetched);
    }
    Ok(next)
}

/// The next offset to read in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
}

/// How a poll fetches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FetchSettings {
    pub max_wait_ms: u32,
    pub fetch_max_bytes: u32,
    pub reset: ResetPolicy,
}

/// How often a poll with nothing to read looks at `interrupted`.
const IDLE_CHECK: Duration = Duration::from_millis(20);

/// One poll over `positions`: fetch rounds until something arrives, `timeout` passes, or
/// `interrupted` says to stop (checked between rounds). `take` moves a fetch's records into the
/// output and returns the position after them (`None` when it held none).
pub(crate) fn poll_positions<T>(
    client: &Client,
    settings: &FetchSettings,
    positions: &mut [Position],
    timeout: Duration,
    interrupted: &dyn Fn() -> bool,
    mut take: impl FnMut(Fetched, &mut Vec<T>) -> Result<Option<u64>, ClientError>,
) -> Result<Vec<T>, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut failed_rounds = 0;
    loop {
        if interrupted() {
            return Ok(Vec::new());
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if positions.is_empty() {
            // Nothing assigned: wait, but notice an interruption (a rebalance) soon.
            if remaining.is_zero() {
                return Ok(Vec::new());
            }
            std::thread::sleep(remaining.min(IDLE_CHECK));
            continue;
        }
        let wait_ms = remaining.as_millis().min(u128::from(settings.max_wait_ms)) as u32;
        // Every partition's fetch is in flight before the first is waited for.
        let started: Vec<_> = positions
            .iter()
            .map(|p| {
                client.fetch_start(
                    &p.topic,
                    p.partition,
                    p.offset,
                    settings.fetch_max_bytes,
                    wait_ms,
                )
            })
            .collect();
        let mut out = Vec::new();
        let mut error: Option<ClientError> = None;
        for (pos, started) in positions.iter_mut().zip(started) {
            let result = started
                .and_then(|future| future.wait())
                .and_then(|frame| client.fetch_finish(frame, &pos.topic, pos.partition, pos.offset))
                .and_then(|fetched| take(fetched, &mut out));
            match result {
                Ok(Some(next)) => pos.offset = next,
                Ok(None) => {}
                Err(ClientError::OffsetOutOfRange {
                    earliest, latest, ..
                }) if settings.reset != ResetPolicy::Error => {
                    let to = match settings.reset {
                        ResetPolicy::Earliest => earliest,
                        _ => latest,
                    };
                    tracing::info!(
                        topic = pos.topic,
                        partition = pos.partition,
                        from = pos.offset,
                        to,
                        "offset out of range; position reset"
                    );
                    pos.offset = to;
                }
                Err(e) => {
                    if error.as_ref().is_none_or(|prev| prev.is_retriable()) {
                        error = Some(e);
                    }
                }
            }
        }
        if !out.is_empty() {
            // Records already taken must be handed over: the positions moved past them. A
            // failed partition fails again on the next poll.
            if let Some(e) = error {
                tracing::debug!(error = %e, "partition failed; returning the others' records");
            }
            return Ok(out);
        }
        match error {
            Some(e) if !e.is_retriable() => return Err(e),
            // A quota throttle paces the consumer: back off as told, not counted as a failure.
            Some(ClientError::Throttled { throttle_ms, .. }) => {
                let pause = Duration::from_millis(u64::from(throttle_ms).max(1));
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(out);
                }
                std::thread::sleep(pause.min(left));
            }
            Some(e) => {
                failed_rounds += 1;
                if failed_rounds > client.config().retries {
                    return Err(e);
                }
                client.mark_stale();
                let pause = client.config().backoff(failed_rounds);
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(e);
                }
                std::thread::sleep(pause.min(left));
            }
            None => {
                failed_rounds = 0;
                if Instant::now() >= deadline {
                    return Ok(out);
                }
            }
        }
    }
}
