//! The batching producer: `send` encodes a record and queues it; a background thread groups
//! queued records per partition into batches and sends each batch as one Produce request.
//!
//! ```text
//!  send() ──encode──► [open batch per partition] ──linger_ms or batch_bytes──► [ready queue]
//!     ▲  blocks while buffered > buffer_bytes                                      │
//!     │                                               sender thread: ≤ max_in_flight per partition
//!     └──── SendFuture ◄── completion (reader thread) ◄── Produce response ◄───────┘
//!                               └─ retriable error: back to the front of the ready queue
//! ```
//!
//! A batch is sealed when it reaches `batch_bytes`, or once `linger_ms` has passed *and* its
//! partition has a free in-flight slot: while every slot is taken, records keep joining the open
//! batch, so a slow round trip turns into bigger batches rather than a queue of one-record ones
//! (with `linger_ms = 0` that is the only batching there is).
//!
//! Memory is bounded by `buffer_bytes`: a record's bytes count from `send` until its batch is
//! acknowledged or failed (a retry needs them), and `send` blocks — for at most `max_block_ms` —
//! rather than let the buffer grow. Responses are handled by a callback on the connection's reader
//! thread, so no thread is parked per in-flight batch.
//!
//! Delivery is at-least-once: a batch retried after a lost connection or a `Timeout` may already
//! have been stored. With `max_in_flight > 1`, a retried batch can land after a later batch of the
//! same partition; set `max_in_flight = 1` when per-partition order must survive retries.
//!
//! **Idempotence** (`idempotent = true`) makes retries exact: the producer takes an id from the
//! broker (InitProducer) and numbers its records per partition when a batch is first sent, so
//! the broker stores a resent batch once (answering with its original offsets) and refuses a
//! batch after a gap. A partition's batches are resent oldest first, so order holds with up to 5
//! in flight. When a batch fails for good, that partition cannot go on in sequence (the broker
//! may or may not hold it): once its in-flight batches are back, it takes a new producer id and
//! numbers the batches still queued from 0 again.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::oneshot::{self, lock};
use super::{produce_outcome, timeout_ms_u32, Client, ClientError, ProduceOutcome};
use crate::protocol::{Acks, ErrorCode};
use crate::record::{self, Header, Message};

/// Frame bytes a one-block Produce request adds around its run: header 16, acks 1, timeout 4,
/// count 4, topic 2 + 249, partition 4, run length 4, padding up to 15.
const PRODUCE_FRAME_OVERHEAD_MAX: usize = 16 + 1 + 4 + 4 + 2 + 249 + 4 + 4 + 15;

/// Batches of one partition an idempotent producer may have in flight: as many as the broker
/// remembers per producer (docs/protocol.md §6.8).
pub const IDEMPOTENT_IN_FLIGHT_MAX: usize = 5;

/// Settings of a [`Producer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    /// What to wait for before a send counts as done. Default `Durable` (CONTRACT.md).
    pub acks: Acks,
    /// How long a partition's first queued record waits for others to join its batch; past it,
    /// the batch still takes records until the partition has a free in-flight slot. Default 5.
    pub linger_ms: u64,
    /// A batch is sent as soon as it holds this many bytes of records. Default 1 MiB. A single
    /// larger record is sent alone.
    pub batch_bytes: usize,
    /// Batches of one partition in flight at once. Default 5.
    pub max_in_flight: usize,
    /// Bytes of records queued or in flight before `send` blocks. Default 64 MiB.
    pub buffer_bytes: usize,
    /// How often a batch is resent after a retriable error. Default 5.
    pub retries: u32,
    /// First pause before a resend; it doubles on each attempt, up to 5 s. Default 100.
    pub retry_backoff_ms: u64,
    /// How long the broker may wait to make a batch durable before it answers `Timeout`; the
    /// client waits this plus the client's `request_timeout_ms`. Default 30 000.
    pub request_timeout_ms: u64,
    /// Longest time `send` blocks for buffer space before failing with `Timeout`. Default 60 000.
    pub max_block_ms: u64,
    /// Store each batch once and in order however often it is resent (see the module docs).
    /// Needs `max_in_flight` ≤ 5 and acks other than `None`. Delayed records are not covered.
    /// Default `false`.
    pub idempotent: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::Durable,
            linger_ms: 5,
            batch_bytes: 1 << 20,
            max_in_flight: 5,
            buffer_bytes: 64 << 20,
            retries: 5,
            retry_backoff_ms: 100,
            request_timeout_ms: 30_000,
            max_block_ms: 60_000,
            idempotent: false,
        }
    }
}

/// One record to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    /// Topic name.
    pub topic: String,
    /// The partition; `None` lets the partitioner choose (see [`partition_for_key`]).
    pub partition: Option<u32>,
    /// The key; `Some(vec![])` is a key (hashed like any other), distinct from `None`.
    pub key: Option<Vec<u8>>,
    /// The payload.
    pub value: Vec<u8>,
    /// Application headers, `(name, value)`.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The producer's timestamp, ms since the Unix epoch; `None` stamps the time of `send`.
    pub timestamp_ms: Option<i64>,
    /// Deliver at this time (ms since the Unix epoch), not before: the broker holds the record
    /// apart until then, and no fetch returns it earlier. `None` (the default): now.
    pub deliver_at_ms: Option<i64>,
}

impl ProducerRecord {
    /// A record with a value only.
    pub fn new(topic: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            partition: None,
            key: None,
            value: value.into(),
            headers: Vec::new(),
            timestamp_ms: None,
            deliver_at_ms: None,
        }
    }

    /// Delivers the record `delay` from now, not before (see [`ProducerRecord::deliver_at_ms`]).
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.deliver_at_ms = Some(now_ms().saturating_add(delay.as_millis() as i64));
        self
    }

    /// Delivers the record at `unix_ms`, not before.
    pub fn with_deliver_at(mut self, unix_ms: i64) -> Self {
        self.deliver_at_ms = Some(unix_ms);
        self
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the partition.
    pub fn with_partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// Where a sent record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// The record's offset; `None` with `acks = none`, where the broker answers nothing and the
    /// send completes once the batch is written to the socket, and for a delayed record, which
    /// gets its offset when it is delivered.
    pub offset: Option<u64>,
    /// The append time the broker stamped on the record's batch; `None` with `acks = none`.
    pub timestamp_ms: Option<i64>,
}

/// The outcome of one [`Producer::send`]: a `std::future::Future`, with blocking
/// [`wait`](SendFuture::wait) and [`wait_timeout`](SendFuture::wait_timeout) too. Dropping it does
/// not cancel the send.
pub struct SendFuture {
    rx: oneshot::Receiver<Result<RecordMetadata, ClientError>>,
}

impl std::fmt::Debug for SendFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendFuture").finish_non_exhaustive()
    }
}

fn dropped() -> ClientError {
    ClientError::Closed
}

impl SendFuture {
    /// Blocks until the record is acknowledged or has failed for good.
    pub fn wait(self) -> Result<RecordMetadata, ClientError> {
        self.rx.wait().unwrap_or_else(|| Err(dropped()))
    }

    /// Calls `callback` with the outcome once the record is acknowledged or has failed for good,
    /// instead of waiting for it: at once on this thread if it already has, else on the client's
    /// thread that completes it — so the callback must be quick and must not block (record the
    /// outcome, hand it to a channel). One thread can then keep many sends in flight without a
    /// waiting thread per send.
    pub fn on_complete(
        self,
        callback: impl FnOnce(Result<RecordMetadata, ClientError>) + Send + 'static,
    ) {
        self.rx
            .on_complete(move |v| callback(v.unwrap_or_else(|| Err(dropped()))));
    }

    /// Blocks for at most `timeout`. On [`ClientError::Timeout`] the future is still usable.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<RecordMetadata, ClientError> {
        match self.rx.wait_deadline(Instant::now() + timeout) {
            Ok(Some(result)) => result,
            Ok(None) => Err(dropped()),
            Err(oneshot::Elapsed) => Err(ClientError::Timeout {
                what: "send",
                timeout_ms: timeout.as_millis() as u64,
            }),
        }
    }
}

impl Future for SendFuture {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.rx
            .poll_recv(cx)
            .map(|v| v.unwrap_or_else(|| Err(dropped())))
    }
}

/// The partition for a key: FNV-1a 64 of the key bytes, modulo the partition count.
///
/// ```text
/// h = 0xcbf29ce484222325                  (FNV-1a 64 offset basis)
/// for each byte b of the key:
///     h = (h XOR b) * 0x00000100000001b3  (FNV 64 prime, wrapping)
/// partition = h mod partitions            (h as an unsigned 64-bit integer)
/// ```
/// Stable across versions and platforms, so clients in other languages can place keys on the same
/// partitions. Records without a key or partition go round-robin, one batch per partition at a
/// time. `partitions = 0` is treated as 1.
///
/// # Examples
/// ```
/// // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
/// assert_eq!(levee::client::partition_for_key(b"a", 7), (0xaf63dc4c8601ec8c_u64 % 7) as u32);
/// ```
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(partitions.max(1))) as u32
}

/// Sends one delayed record; its future resolves when the broker has scheduled it (durably, as
/// `acks` says), with no offset (it gets one when it is delivered).
fn send_delayed(
    s: &Shared,
    topic: String,
    partition: u32,
    run: Vec<u8>,
    deliver_at_ms: i64,
) -> Result<oneshot::Receiver<Result<RecordMetadata, ClientError>>, ClientError> {
    let (tx, rx) = oneshot::channel();
    let acks = s.config.acks;
    let request =
        crate::protocol::Request::ProduceDelayed(crate::protocol::ProduceDelayedRequest {
            acks,
            timeout_ms: timeout_ms_u32(s.config.request_timeout_ms),
            topic: topic.clone(),
            partition,
            deliver_at_ms,
            run,
        });
    let conn = s.client.bootstrap_connection()?;
    if acks == Acks::None {
        conn.request_no_response(&request)?;
        tx.send(Ok(RecordMetadata {
            topic,
            partition,
            offset: None,
            timestamp_ms: None,
        }));
        return Ok(rx);
    }
    conn.request(&request)?.on_complete(move |response| {
        let result = response
            .and_then(|frame| frame.decode())
            .and_then(|r| match r {
                crate::protocol::Response::ProduceDelayed(_) => Ok(RecordMetadata {
                    topic,
                    partition,
                    offset: None,
                    timestamp_ms: None,
                }),
                other => Err(super::unexpected(
                    crate::protocol::ApiKey::ProduceDelayed,
                    &other,
                )),
            });
        tx.send(result);
    });
    Ok(rx)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Entry {
    seq: u64,
    tx: oneshot::Sender<Result<RecordMetadata, ClientError>>,
}

struct Batch {
    topic: String,
    partition: u32,
    /// Idempotent producers: the producer id and first sequence the run carries, and whether
    /// they still have to be written into it (done by the sender, outside the state lock).
    numbered: Option<Numbering>,
    /// Its place among its partition's batches, counted when sealed.
    ordinal: u64,
    /// Whole records, back to back, as sent on the wire.
    run: Vec<u8>,
    /// One per record, in run order: record `i` gets offset `base_offset + i`.
    entries: Vec<Entry>,
    created: Instant,
    /// Sends so far.
    attempt: u32,
    /// Not resent before this (retry backoff).
    not_before: Instant,
}

#[derive(Clone, Copy)]
struct Numbering {
    producer_id: u64,
    first: u64,
    written: bool,
}

#[derive(Default)]
struct PartitionQueue {
    /// The batch records are being added to.
    open: Option<Batch>,
    /// Sealed batches waiting for an in-flight slot, oldest first.
    ready: VecDeque<Batch>,
    in_flight: usize,
    /// Idempotent producers: the id this partition's sequence belongs to (0 until first used),
    /// and the sequence of its next record.
    producer_id: u64,
    next_sequence: u64,
    /// A batch numbered under `producer_id` failed for good: the partition needs a new id
    /// before it sends again.
    broken: bool,
    /// Batches sealed so far.
    sealed: u64,
    /// Ordinals of the sealed batches not yet completed.
    pending: BTreeSet<u64>,
}

impl PartitionQueue {
    /// Puts a batch back for a resend, in the order it was first queued.
    fn requeue(&mut self, batch: Batch) {
        let at = self
            .ready
            .iter()
            .position(|b| b.ordinal > batch.ordinal)
            .unwrap_or(self.ready.len());
        self.ready.insert(at, batch);
    }

    /// Whether `b` may be sent now. An idempotent producer sends nothing more than
    /// `max_in_flight` batches past the oldest one not yet answered, however many later ones
    /// were answered meanwhile: the broker remembers that many, so a resend of the oldest is
    /// still recognised.
    fn may_send(&self, b: &Batch, max_in_flight: usize, idempotent: bool) -> bool {
        self.in_flight < max_in_flight
            && (!idempotent
                || self
                    .pending
                    .first()
                    .is_none_or(|&oldest| b.ordinal < oldest + max_in_flight as u64))
    }
}

#[derive(Default)]
struct TopicQueues {
    partitions: HashMap<u32, PartitionQueue>,
    /// The partition unkeyed records go to now, and the partition count it was chosen from; it
    /// moves on each time that partition's batch is sealed.
    sticky: Option<(u32, u32)>,
}

impl TopicQueues {
    fn seal(&mut self, partition: u32) {
        let q = self.partitions.entry(partition).or_default();
        if let Some(mut batch) = q.open.take() {
            batch.ordinal = q.sealed;
            q.sealed += 1;
            q.pending.insert(batch.ordinal);
            q.ready.push_back(batch);
            if let Some((p, count)) = self.sticky {
                if p == partition {
                    self.sticky = Some(((p + 1) % count.max(1), count));
                }
            }
        }
    }
}

#[derive(Default)]
struct State {
    topics: HashMap<String, TopicQueues>,
    /// Bytes of records accepted and not yet acknowledged or failed.
    buffered_bytes: usize,
    next_seq: u64,
    /// Sequence numbers of records not yet completed, for `flush`.
    outstanding: BTreeSet<u64>,
    /// Callers inside `flush`: while any, batches are sealed without waiting for `linger_ms`.
    flushing: usize,
    /// Callers waiting on `Shared::space` (blocked sends and flushes): completions wake them
    /// only when there is someone to wake.
    space_waiters: usize,
    closing: bool,
    worker_gone: bool,
    /// Rotates the first sticky partition of each topic, so producers do not all start on 0.
    sticky_seed: u32,
    /// Idempotent producers: the newest producer id from the broker.
    producer_id: u64,
}

struct Shared {
    client: Client,
    config: ProducerConfig,
    record_bytes_max: usize,
    state: Mutex<State>,
    /// Wakes the sender thread: new batch, sealed batch, freed slot, flush, close.
    work: Condvar,
    /// Wakes `send` callers waiting for buffer space and `flush` callers.
    space: Condvar,
    /// Batches the broker answered `Throttled` (a full backlog or a quota), for
    /// [`Producer::throttle_count`].
    throttles: std::sync::atomic::AtomicU64,
}

/// A batching, retrying producer; see the [module docs](self) for how batches form. `send` may
/// be called from many threads at once.
///
/// # Examples
///
/// ```no_run
/// use levee::client::{Client, ClientConfig, ProducerConfig, ProducerRecord};
/// use levee::protocol::Acks;
///
/// # fn main() -> Result<(), levee::client::ClientError> {
/// let client = Client::connect("127.0.0.1:7070", ClientConfig::default())?;
/// let producer = client.producer(ProducerConfig { acks: Acks::Written, ..ProducerConfig::default() })?;
/// let pending: Vec<_> = (0..1000)
///     .map(|i| producer.send(ProducerRecord::new("clicks", format!("click {i}")).with_key(b"user-7".to_vec())))
///     .collect();
/// for send in pending {
///     let meta = send.wait()?;
///     assert_eq!(meta.topic, "clicks");
/// }
/// producer.close(); // flushes, then stops the sender thread
/// # Ok(())
/// # }
/// ```
pub struct Producer {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Producer {
    pub(crate) fn new(client: Client, config: ProducerConfig) -> Result<Producer, ClientError> {
        let frame_bytes_max = client.config().frame_bytes_max;
        let bad = |field, reason: String| Err(ClientError::InvalidConfig { field, reason });
        let record_bytes_max = frame_bytes_max.saturating_sub(PRODUCE_FRAME_OVERHEAD_MAX);
        if config.batch_bytes == 0 || config.batch_bytes > record_bytes_max {
            return bad(
                "batch_bytes",
                format!("must be between 1 and {record_bytes_max} (the client's frame_bytes_max less the request overhead)"),
            );
        }
        if config.buffer_bytes < config.batch_bytes {
            return bad("buffer_bytes", "must be at least batch_bytes".into());
        }
        if config.max_in_flight == 0 {
            return bad("max_in_flight", "must be at least 1".into());
        }
        if config.request_timeout_ms == 0 {
            return bad("request_timeout_ms", "must be at least 1".into());
        }
        let mut state = State::default();
        if config.idempotent {
            if config.max_in_flight > IDEMPOTENT_IN_FLIGHT_MAX {
                return bad(
                    "max_in_flight",
                    format!("must be at most {IDEMPOTENT_IN_FLIGHT_MAX} with idempotent = true (the broker remembers that many batches per producer)"),
                );
            }
            if config.acks == Acks::None {
                return bad(
                    "acks",
                    "idempotent = true needs acks written or durable: without an answer nothing is retried".into(),
                );
            }
            state.producer_id = client.init_producer()?;
        }
        let shared = Arc::new(Shared {
            client,
            record_bytes_max: record_bytes_max.min(config.buffer_bytes),
            config,
            state: Mutex::new(state),
            work: Condvar::new(),
            space: Condvar::new(),
            throttles: std::sync::atomic::AtomicU64::new(0),
        });
        let for_worker = shared.clone();
        let worker = std::thread::Builder::new()
            .name("levee-producer".into())
            .spawn(move || worker_main(for_worker))
            .map_err(|e| ClientError::InvalidConfig {
                field: "producer",
                reason: format!("cannot start the sender thread: {e}"),
            })?;
        Ok(Producer {
            shared,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Queues one record and returns at once with its future, unless the buffer is full: then it
    /// blocks until enough earlier records complete (at most `max_block_ms`). With no explicit
    /// partition, the first send to a topic may block to fetch its partition count. Failures —
    /// unknown topic, oversized record, full buffer, closed producer — come back through the
    /// future.
    pub fn send(&self, record: ProducerRecord) -> SendFuture {
        let rx = self
            .try_send(record)
            .unwrap_or_else(|e| oneshot::ready(Err(e)));
        SendFuture { rx }
    }

    fn try_send(
        &self,
        record: ProducerRecord,
    ) -> Result<oneshot::Receiver<Result<RecordMetadata, ClientError>>, ClientError> {
        let s = &*self.shared;
        if lock(&s.state).closing {
            return Err(ClientError::Closed);
        }
        // Resolved before taking the state lock: this may do network I/O.
        let keyed_partition = match (record.partition, &record.key) {
            (Some(p), _) => Some(p),
            (None, Some(key)) => Some(partition_for_key(
                key,
                s.client.partition_count(&record.topic)?,
            )),
            (None, None) => None,
        };
        let count = match keyed_partition {
            Some(_) => 0,
            None => s.client.partition_count(&record.topic)?,
        };
        let message = Message {
            timestamp_ms: record.timestamp_ms.unwrap_or_else(now_ms),
            producer_id: 0,
            sequence: 0,
            key: record.key,
            value: record.value,
            headers: record
                .headers
                .into_iter()
                .map(|(key, value)| Header { key, value })
                .collect(),
        };
        let mut bytes = Vec::new();
        record::encode(&message, &mut bytes)?;
        let size = bytes.len();
        if size > s.record_bytes_max {
            return Err(ClientError::RecordTooLarge {
                size,
                max: s.record_bytes_max,
                limit: "buffer_bytes or frame_bytes_max",
            });
        }
        if let Some(at) = record.deliver_at_ms {
            // Not batched: the broker schedules each delayed send on its own. The connection's
            // in-flight window bounds how many are pending.
            let partition = match keyed_partition {
                Some(p) => p,
                None => (now_ms() as u32) % count.max(1),
            };
            return send_delayed(s, record.topic, partition, bytes, at);
        }

        let mut st = lock(&s.state);
        let deadline = Instant::now() + Duration::from_millis(s.config.max_block_ms);
        loop {
            if st.closing || st.worker_gone {
                return Err(ClientError::Closed);
            }
            if st.buffered_bytes == 0 || st.buffered_bytes + size <= s.config.buffer_bytes {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout {
                    what: "waiting for producer buffer space",
                    timeout_ms: s.config.max_block_ms,
                });
            }
            st.space_waiters += 1;
            st = s
                .space
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            st.space_waiters -= 1;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        st.outstanding.insert(seq);
        st.buffered_bytes += size;
        st.sticky_seed = st.sticky_seed.wrapping_add(1);
        let seed = st.sticky_seed;
        let tq = st.topics.entry(record.topic.clone()).or_default();
        let partition = match keyed_partition {
            Some(p) => p,
            None => match tq.sticky {
                Some((p, c)) if c == count && p < count => p,
                _ => {
                    let p = seed % count.max(1);
                    tq.sticky = Some((p, count));
                    p
                }
            },
        };
        let (tx, rx) = oneshot::channel();
        let q = tq.partitions.entry(partition).or_default();
        let mut sealed = false;
        if q.open
            .as_ref()
            .is_some_and(|b| b.run.len() + size > s.config.batch_bytes)
        {
            tq.seal(partition);
            sealed = true;
        }
        let q = tq.partitions.entry(partition).or_default();
        let opened = q.open.is_none();
        let now = Instant::now();
        let batch = q.open.get_or_insert_with(|| Batch {
            topic: record.topic,
            partition,
            numbered: None,
            ordinal: 0,
            run: Vec::new(),
            entries: Vec::new(),
            created: now,
            attempt: 0,
            not_before: now,
        });
        assert!(batch.run.len() % record::RECORD_ALIGN == 0);
        batch.run.extend_from_slice(&bytes);
        batch.entries.push(Entry { seq, tx });
        if batch.run.len() >= s.config.batch_bytes {
            tq.seal(partition);
            sealed = true;
        }
        drop(st);
        // The sender thread computes its next wake-up from the open batches, so it must hear of
        // every new or sealed batch; a record joining an open batch changes neither.
        if opened || sealed {
            s.work.notify_one();
        }
        Ok(rx)
    }

    /// How many times the broker answered one of this producer's batches `Throttled` (its
    /// partition's backlog was full under policy `block`, or a quota of its client id or topic
    /// was spent); each time the batch waited the `throttle_ms` it was told and went again.
    pub fn throttle_count(&self) -> u64 {
        self.shared
            .throttles
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Blocks until every record sent before this call has completed (acknowledged or failed
    /// for good), sending open batches without waiting for `linger_ms`.
    pub fn flush(&self) {
        // Unbounded by design: every batch completes within its retries and request deadlines.
        let _ = self.flush_until(None);
    }

    /// Like [`flush`](Producer::flush), for at most `timeout`.
    pub fn flush_timeout(&self, timeout: Duration) -> Result<(), ClientError> {
        self.flush_until(Some((Instant::now() + timeout, timeout)))
    }

    fn flush_until(&self, deadline: Option<(Instant, Duration)>) -> Result<(), ClientError> {
        let s = &*self.shared;
        let mut st = lock(&s.state);
        let target = st.next_seq;
        st.flushing += 1;
        st.space_waiters += 1;
        s.work.notify_one();
        let mut result = Ok(());
        while st.outstanding.first().is_some_and(|&seq| seq < target) {
            st = match deadline {
                None => s.space.wait(st).unwrap_or_else(PoisonError::into_inner),
                Some((at, timeout)) => {
                    let now = Instant::now();
                    if now >= at {
                        result = Err(ClientError::Timeout {
                            what: "flush",
                            timeout_ms: timeout.as_millis() as u64,
                        });
                        break;
                    }
                    s.space
                        .wait_timeout(st, at - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        st.flushing -= 1;
        st.space_waiters -= 1;
        result
    }

    /// Stops accepting records, flushes everything queued, and stops the sender thread. Later
    /// sends fail with [`ClientError::Closed`]. Called by `Drop` too.
    pub fn close(&self) {
        lock(&self.shared.state).closing = true;
        self.shared.work.notify_one();
        self.flush();
        if let Some(worker) = lock(&self.worker).take() {
            if worker.join().is_err() {
                tracing::error!("producer sender thread panicked");
            }
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.close();
    }
}

/// Fails what is still queued when the sender thread ends, however it ends.
struct WorkerExit(Arc<Shared>);

impl Drop for WorkerExit {
    fn drop(&mut self) {
        let orphans: Vec<Batch> = {
            let mut st = lock(&self.0.state);
            st.worker_gone = true;
            let mut orphans = Vec::new();
            for tq in st.topics.values_mut() {
                for q in tq.partitions.values_mut() {
                    orphans.extend(q.open.take());
                    orphans.extend(q.ready.drain(..));
                }
            }
            orphans
        };
        for batch in orphans {
            complete(&self.0, batch, Err(ClientError::Closed), Slot::Queued);
        }
        self.0.space.notify_all();
    }
}

fn worker_main(shared: Arc<Shared>) {
    let exit = WorkerExit(shared);
    let s = &*exit.0;
    let linger = Duration::from_millis(s.config.linger_ms);
    let idempotent = s.config.idempotent;
    loop {
        let batches = {
            let mut st = lock(&s.state);
            loop {
                let now = Instant::now();
                let force = st.flushing > 0 || st.closing;
                let mut wake_at: Option<Instant> = None;
                let mut out = Vec::new();
                let mut want_id = false;
                let current_id = st.producer_id;
                for tq in st.topics.values_mut() {
                    let due: Vec<u32> = tq
                        .partitions
                        .iter()
                        .filter_map(|(&p, q)| {
                            let open = q.open.as_ref()?;
                            let at = open.created + linger;
                            if force {
                                Some(p)
                            } else if at <= now {
                                // Kept open while the partition has no slot: records that
                                // come meanwhile join it, so a slow round trip makes bigger
                                // batches rather than a queue of one-record ones (a freed
                                // slot wakes this thread). Only `batch_bytes` seals it then.
                                let blocked =
                                    q.in_flight >= s.config.max_in_flight || !q.ready.is_empty();
                                (!blocked).then_some(p)
                            } else {
                                wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
                                None
                            }
                        })
                        .collect();
                    for p in due {
                        tq.seal(p);
                    }
                    for q in tq.partitions.values_mut() {
                        if idempotent {
                            if q.broken {
                                // Sent again only under a new id, once nothing of the old
                                // sequence is in flight.
                                want_id |= q.in_flight == 0 && !q.ready.is_empty();
                                continue;
                            }
                            if q.producer_id == 0 {
                                q.producer_id = current_id;
                            }
                        }
                        loop {
                            match q.ready.front() {
                                Some(b) if !q.may_send(b, s.config.max_in_flight, idempotent) => {
                                    break
                                }
                                Some(b) if b.not_before <= now => {
                                    let Some(mut b) = q.ready.pop_front() else {
                                        break;
                                    };
                                    if idempotent
                                        && b.numbered.map(|n| n.producer_id) != Some(q.producer_id)
                                    {
                                        b.numbered = Some(Numbering {
                                            producer_id: q.producer_id,
                                            first: q.next_sequence,
                                            written: false,
                                        });
                                        q.next_sequence += b.entries.len() as u64;
                                    }
                                    out.push(b);
                                    q.in_flight += 1;
                                }
                                Some(b) => {
                                    let at = b.not_before;
                                    wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
                                    break;
                                }
                                None => break,
                            }
                        }
                    }
                }
                if !out.is_empty() {
                    break out;
                }
                if want_id {
                    drop(st);
                    renew_producer_id(s);
                    st = lock(&s.state);
                    continue;
                }
                if st.closing && st.outstanding.is_empty() {
                    return;
                }
                st = match wake_at {
                    Some(at) => {
                        s.work
                            .wait_timeout(st, at.saturating_duration_since(now))
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                    None => s.work.wait(st).unwrap_or_else(PoisonError::into_inner),
                };
            }
        };
        for batch in batches {
            dispatch(&exit.0, batch);
        }
    }
}

/// Gives the broken partitions of an idempotent producer a new producer id, or, when the broker
/// cannot hand one out, fails their queued batches (they cannot be sent in sequence).
fn renew_producer_id(s: &Shared) {
    let renewed = s.client.init_producer();
    let mut failed = Vec::new();
    {
        let mut st = lock(&s.state);
        if let Ok(id) = &renewed {
            st.producer_id = *id;
        }
        for tq in st.topics.values_mut() {
            for q in tq.partitions.values_mut() {
                if !q.broken || q.in_flight > 0 {
                    continue;
                }
                match &renewed {
                    Ok(id) => {
                        q.producer_id = *id;
                        q.next_sequence = 0;
                        q.broken = false;
                    }
                    Err(_) => failed.extend(q.ready.drain(..)),
                }
            }
        }
    }
    if let Err(e) = renewed {
        tracing::warn!(error = %e, "cannot get a new producer id; failing the batches that need one");
        for batch in failed {
            complete(s, batch, Err(e.clone()), Slot::Queued);
        }
    }
}

/// Sends one batch; its completion runs [`complete`], on the connection's reader thread when a
/// response is expected.
fn dispatch(shared: &Arc<Shared>, mut batch: Batch) {
    batch.attempt += 1;
    if let Some(n) = batch.numbered.as_mut().filter(|n| !n.written) {
        // Numbered here rather than under the state lock: it rewrites and re-checksums the run.
        if let Err(e) = record::set_producer(
            &mut batch.run,
            n.producer_id,
            n.first,
            record::ARCHIVE_LEN_MAX,
        ) {
            complete(shared, batch, Err(e.into()), Slot::InFlight);
            return;
        }
        n.written = true;
    }
    let timeout_ms = timeout_ms_u32(shared.config.request_timeout_ms);
    let started = shared.client.produce_start(
        &batch.topic,
        batch.partition,
        &batch.run,
        shared.config.acks,
        timeout_ms,
    );
    match started {
        Ok(Some(future)) => {
            let shared = shared.clone();
            future.on_complete(move |response| {
                let outcome = response
                    .and_then(|frame| produce_outcome(&frame, &batch.topic, batch.partition));
                complete(&shared, batch, outcome.map(Some), Slot::InFlight);
            });
        }
        Ok(None) => complete(shared, batch, Ok(None), Slot::InFlight),
        Err(e) => complete(shared, batch, Err(e), Slot::InFlight),
    }
}

/// Whether a batch being completed holds one of its partition's in-flight slots.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Dispatched: the slot is released on completion.
    InFlight,
    /// Never left the queue (failed when the sender thread ended).
    Queued,
}

/// Finishes one attempt of a batch: resolves its records, or puts it back for a retry.
fn complete(
    shared: &Shared,
    batch: Batch,
    outcome: Result<Option<ProduceOutcome>, ClientError>,
    slot: Slot,
) {
    let idempotent = shared.config.idempotent;
    let outcome = match outcome {
        // Stored earlier than the broker still remembers batches: stored, offsets unknown.
        Err(e) if idempotent && e.code() == Some(ErrorCode::DuplicateSequence) => Ok(None),
        other => other,
    };
    if let Err(ClientError::Throttled { throttle_ms, .. }) = &outcome {
        shared
            .throttles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Flow control, not a failure: wait as told, without spending a retry, for as long as
        // `max_block_ms` allows since the batch was started.
        let wait = Duration::from_millis(u64::from(*throttle_ms).max(1));
        let within =
            batch.created.elapsed() + wait <= Duration::from_millis(shared.config.max_block_ms);
        if slot == Slot::InFlight && within {
            let mut batch = batch;
            batch.attempt = batch.attempt.saturating_sub(1);
            if let Some(batch) = resend_later(shared, batch, wait) {
                complete_now(shared, batch, outcome, slot);
            }
            return;
        }
    }
    if let Err(e) = &outcome {
        // With idempotence a gap means an earlier batch of the partition is being resent:
        // this one follows it.
        let resend = (e.is_retriable() && !matches!(e, ClientError::Throttled { .. }))
            || (idempotent && e.code() == Some(ErrorCode::OutOfOrderSequence));
        if slot == Slot::InFlight && resend && batch.attempt <= shared.config.retries {
            if e.is_disconnect() {
                shared.client.mark_stale();
            }
            tracing::debug!(topic = %batch.topic, partition = batch.partition, attempt = batch.attempt, error = %e, "retrying batch");
            let backoff = retry_backoff(&shared.config, batch.attempt);
            if let Some(batch) = resend_later(shared, batch, backoff) {
                complete_now(shared, batch, outcome, slot);
            }
            return;
        }
    }
    complete_now(shared, batch, outcome, slot);
}

/// Puts an in-flight batch back in its partition's queue, where it was, to be sent again after
/// `wait`; gives it back when the sender thread is gone.
fn resend_later(shared: &Shared, mut batch: Batch, wait: Duration) -> Option<Batch> {
    let mut st = lock(&shared.state);
    if st.worker_gone {
        return Some(batch);
    }
    batch.not_before = Instant::now() + wait;
    let q = st
        .topics
        .entry(batch.topic.clone())
        .or_default()
        .partitions
        .entry(batch.partition)
        .or_default();
    q.in_flight = q.in_flight.saturating_sub(1);
    // Where it was, so a partition's batches still go out oldest first.
    q.requeue(batch);
    drop(st);
    shared.work.notify_one();
    None
}

/// Resolves a batch's records with `outcome` and releases what it held.
fn complete_now(
    shared: &Shared,
    batch: Batch,
    outcome: Result<Option<ProduceOutcome>, ClientError>,
    slot: Slot,
) {
    let Batch {
        topic,
        partition,
        run,
        entries,
        numbered,
        ordinal,
        ..
    } = batch;
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    // Resolve the futures before the bookkeeping, so that when flush() returns every future it
    // waited for is already resolved.
    for (i, entry) in entries.into_iter().enumerate() {
        let result = match &outcome {
            Ok(Some(o)) => Ok(RecordMetadata {
                topic: topic.clone(),
                partition,
                offset: Some(o.base_offset + i as u64),
                timestamp_ms: Some(o.timestamp_ms),
            }),
            Ok(None) => Ok(RecordMetadata {
                topic: topic.clone(),
                partition,
                offset: None,
                timestamp_ms: None,
            }),
            Err(e) => Err(e.clone()),
        };
        entry.tx.send(result);
    }
    let mut st = lock(&shared.state);
    // The sender thread has something new to do only if this partition has records waiting
    // (for the slot or the window this frees, or for a new producer id), or a flush or close
    // is under way; otherwise waking it would cost a context switch per batch for nothing.
    let mut wake_worker = st.closing || st.flushing > 0;
    if let Some(q) = st
        .topics
        .get_mut(&topic)
        .and_then(|tq| tq.partitions.get_mut(&partition))
    {
        q.pending.remove(&ordinal);
        if slot == Slot::InFlight {
            q.in_flight = q.in_flight.saturating_sub(1);
            // A hole in the partition's sequence, or a batch the broker may hold: either way
            // the next batch cannot follow on in sequence.
            if outcome.is_err() && numbered.is_some_and(|n| n.producer_id == q.producer_id) {
                q.broken = true;
            }
        }
        wake_worker |= q.open.is_some() || !q.ready.is_empty() || q.broken;
    }
    st.buffered_bytes = st.buffered_bytes.saturating_sub(run.len());
    for seq in seqs {
        st.outstanding.remove(&seq);
    }
    let wake_space = st.space_waiters > 0;
    drop(st);
    if wake_space {
        shared.space.notify_all();
    }
    if wake_worker {
        shared.work.notify_one();
    }
}

fn retry_backoff(config: &ProducerConfig, attempt: u32) -> Duration {
    let factor = 1u64 << attempt.saturating_sub(1).min(20);
    Duration::from_millis(
        config
            .retry_backoff_ms
            .saturating_mul(factor)
            .min(super::RETRY_BACKOFF_MAX_MS),
    )
}
