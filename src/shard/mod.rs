//! Shards: one glommio executor per core, each the sole owner of a set of partitions.
//!
//! Which shard owns a partition is [`owner`], a pure function of the topic name, the partition
//! number and the shard count. Only the owner touches a partition's log: there are no locks or
//! atomics on the data path. A request that reaches another shard (through the bootstrap listener,
//! or a client with stale metadata) is forwarded to the owner as a [`ShardOp`] over a bounded
//! channel, and the answer comes back the same way; a full channel makes the sender wait, which is
//! backpressure, never unbounded memory.
//!
//! This module owns partitions and the cross-shard hop. It must not know about sockets or frames:
//! the server decodes requests and calls the operations here.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_listener::Event;
use futures_lite::future;

use crate::catalog::Catalog;
use crate::config::{BrokerConfig, FsyncPolicy};
use crate::protocol::{
    Acks, ErrorCode, ListOffsetsResult, OffsetSpec, PartitionDescription, ProduceResult,
};
use crate::record::RecordError;
use crate::storage::{Log, MmapIo, MmapSegment, Slice, StorageError};

/// A shard number.
pub type ShardId = u16;

/// The shard that owns `partition` of `topic`: `(fnv1a32(topic) + partition) mod shards`.
///
/// Consecutive partitions of a topic land on consecutive shards, so a topic with at least as many
/// partitions as shards uses every core, and different topics start on different shards.
///
/// # Examples
/// ```
/// use levee::shard::owner;
/// assert_eq!(owner("orders", 0, 1), 0);
/// let a = owner("orders", 0, 4);
/// assert_eq!(owner("orders", 1, 4), (a + 1) % 4);
/// ```
pub fn owner(topic: &str, partition: u32, shards: u16) -> ShardId {
    assert!(shards > 0);
    ((fnv1a32(topic.as_bytes()) as u64 + partition as u64) % shards as u64) as ShardId
}

/// FNV-1a, 32 bits: tiny, stable across versions and platforms, easy to match in other languages.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// One partition owned by this shard.
pub(crate) struct Partition {
    /// The topic's id when the log was opened: a topic deleted and re-created gets a new one.
    pub topic_id: u64,
    pub log: RefCell<Log<MmapIo>>,
    /// Notified on every append: long-polling fetches wait on it, no timer polling.
    pub appended: Event,
}

/// Outcome of a read, local or forwarded. The slice keeps its segment mapped while it travels.
pub(crate) struct ReadOutcome {
    pub error: ErrorCode,
    pub message: String,
    pub earliest: u64,
    pub next: u64,
    pub slice: Option<Slice<MmapSegment>>,
}

/// A batch appended to a local log whose acknowledgement may still wait for a flush.
pub(crate) struct Appending {
    pub result: ProduceResult,
    pub message: String,
    pub durable: Option<crate::storage::DurableWait>,
}

impl Appending {
    /// Waits for the flush the acknowledgement needs, at most `timeout_ms`.
    pub async fn complete(mut self, timeout_ms: u32) -> (ProduceResult, String) {
        let Some(wait) = self.durable.take() else {
            return (self.result, self.message);
        };
        let timeout = Duration::from_millis(timeout_ms.max(1) as u64);
        let outcome = future::or(async { Some(wait.await) }, async {
            glommio::timer::sleep(timeout).await;
            None
        })
        .await;
        match outcome {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                self.result.error = ErrorCode::StorageFailed;
                self.message = e.to_string();
            }
            None => {
                self.result.error = ErrorCode::Timeout;
                self.message = format!("no flush covered the batch within {timeout_ms} ms");
            }
        }
        (self.result, self.message)
    }
}

/// Work forwarded to the shard that owns a partition.
pub(crate) enum ShardOp {
    Produce {
        topic: String,
        partition: u32,
        run: rkyv::util::AlignedVec<16>,
        acks: Acks,
        timeout_ms: u32,
        reply: flume::Sender<(ProduceResult, String)>,
    },
    Read {
        topic: String,
        partition: u32,
        offset: u64,
        max_bytes: usize,
        reply: flume::Sender<ReadOutcome>,
    },
    WaitData {
        topic: String,
        partition: u32,
        offset: u64,
        deadline: Instant,
        reply: flume::Sender<()>,
    },
    ListOffset {
        topic: String,
        partition: u32,
        spec: OffsetSpec,
        reply: flume::Sender<ListOffsetsResult>,
    },
    Describe {
        topic: String,
        partition: u32,
        reply: flume::Sender<Result<PartitionDescription, (ErrorCode, String)>>,
    },
}

/// Counters read by the metrics endpoint (atomics: read from another shard).
#[derive(Default)]
pub struct Stats {
    /// Records appended.
    pub records_in: std::sync::atomic::AtomicU64,
    /// Bytes of records appended.
    pub bytes_in: std::sync::atomic::AtomicU64,
    /// Bytes of records sent to consumers.
    pub bytes_out: std::sync::atomic::AtomicU64,
    /// Requests handled.
    pub requests: std::sync::atomic::AtomicU64,
    /// Requests forwarded to another shard.
    pub forwarded: std::sync::atomic::AtomicU64,
    /// Open client connections.
    pub connections: std::sync::atomic::AtomicUsize,
}

/// A shard's state, shared by its tasks (single-threaded: `Rc`, `RefCell`).
pub(crate) struct Shard {
    pub id: ShardId,
    pub shards: u16,
    pub config: Arc<BrokerConfig>,
    pub catalog: Arc<Catalog>,
    pub peers: Arc<Vec<flume::Sender<ShardOp>>>,
    pub stats: Arc<Stats>,
    partitions: RefCell<HashMap<(String, u32), Rc<Partition>>>,
}

fn storage_code(e: &StorageError) -> ErrorCode {
    match e {
        StorageError::InvalidRecord {
            source: RecordError::BadLength { len, limit, .. },
            ..
        } if len > limit => ErrorCode::RecordTooLarge,
        StorageError::InvalidRecord { .. } => ErrorCode::CorruptRecord,
        StorageError::NoSpace { .. } => ErrorCode::StorageFull,
        StorageError::OffsetsExhausted { .. } => ErrorCode::StorageFailed,
        StorageError::Failed { .. } => ErrorCode::StorageFailed,
        StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        StorageError::Corrupt { .. } => ErrorCode::CorruptRecord,
        StorageError::Io { .. }
        | StorageError::ReadersActive { .. }
        | StorageError::Config { .. } => ErrorCode::Internal,
    }
}

impl Shard {
    pub fn new(
        id: ShardId,
        config: Arc<BrokerConfig>,
        catalog: Arc<Catalog>,
        peers: Arc<Vec<flume::Sender<ShardOp>>>,
        stats: Arc<Stats>,
    ) -> Shard {
        Shard {
            id,
            shards: config.shards,
            config,
            catalog,
            peers,
            stats,
            partitions: RefCell::new(HashMap::new()),
        }
    }

    /// The owner of a partition.
    pub fn owner(&self, topic: &str, partition: u32) -> ShardId {
        owner(topic, partition, self.shards)
    }

    /// Opens every partition this shard owns (recovery runs here, at boot).
    pub fn open_owned(&self) -> Result<(), StorageError> {
        for meta in self.catalog.list() {
            for p in 0..meta.partitions {
                if self.owner(&meta.name, p) == self.id {
                    if let Err((code, msg)) = self.partition(&meta.name, p) {
                        tracing::error!(topic = %meta.name, partition = p, ?code, %msg, "partition not opened");
                    }
                }
            }
        }
        Ok(())
    }

    /// The local partition, opened on first use. Errors are wire codes with a message.
    pub fn partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Rc<Partition>, (ErrorCode, String)> {
        let meta = self
            .catalog
            .get(topic)
            .ok_or_else(|| (ErrorCode::UnknownTopic, format!("unknown topic '{topic}'")))?;
        if partition >= meta.partitions {
            return Err((
                ErrorCode::UnknownPartition,
                format!(
                    "topic '{topic}' has {} partitions, no partition {partition}",
                    meta.partitions
                ),
            ));
        }
        assert_eq!(
            self.owner(topic, partition),
            self.id,
            "partition used off its owner shard"
        );
        let key = (topic.to_string(), partition);
        if let Some(p) = self.partitions.borrow().get(&key) {
            if p.topic_id == meta.id {
                return Ok(p.clone());
            }
        }
        let dir = self.catalog.partition_dir(&meta, partition);
        let (log, report) = Log::open(
            MmapIo {
                write_path: self.config.segment_write,
            },
            &dir,
            self.config
                .log_config(meta.retention_bytes, meta.retention_ms),
        )
        .map_err(|e| {
            (
                storage_code(&e),
                format!("cannot open {topic}/{partition}: {e}"),
            )
        })?;
        if report.truncation.is_some() || !report.segments_removed.is_empty() {
            tracing::warn!(topic, partition, ?report, "partition recovered with a cut");
        } else {
            tracing::debug!(
                topic,
                partition,
                next = report.next_offset,
                "partition opened"
            );
        }
        let p = Rc::new(Partition {
            topic_id: meta.id,
            log: RefCell::new(log),
            appended: Event::new(),
        });
        self.partitions.borrow_mut().insert(key, p.clone());
        Ok(p)
    }

    /// Appends a batch to a local partition, synchronously: nothing awaits between request
    /// decoding and the append, so pipelined requests append in the order they arrived. What the
    /// acknowledgement still waits for (a flush) is returned in [`Appending`].
    pub fn append_local(
        &self,
        topic: &str,
        partition: u32,
        run: &mut [u8],
        acks: Acks,
    ) -> Appending {
        let mut result = ProduceResult {
            topic: topic.to_string(),
            partition,
            error: ErrorCode::None,
            base_offset: 0,
            timestamp_ms: 0,
        };
        let fail = |mut result: ProduceResult, code, message| {
            result.error = code;
            Appending {
                result,
                message,
                durable: None,
            }
        };
        let part = match self.partition(topic, partition) {
            Ok(p) => p,
            Err((code, msg)) => return fail(result, code, msg),
        };
        let appended = {
            let mut log = part.log.borrow_mut();
            let segments = log.segment_count();
            let appended = log.append(run);
            if log.segment_count() > segments {
                // Retention also runs at every roll, not only on the `retention_check_ms` tick: a
                // log under sustained load then retires its oldest segment as it starts a new
                // one, and the retired file (its pages still resident) becomes the segment after
                // next. Between ticks, every roll would otherwise take fresh pages, which cost a
                // page fault each (about 2 µs a page on a VM: see tuning.md).
                if let Err(e) = log.enforce_retention() {
                    tracing::warn!(topic = %topic, partition, error = %e, "retention failed");
                }
            }
            appended
        };
        let a = match appended {
            Ok(a) => a,
            Err(e) => return fail(result, storage_code(&e), e.to_string()),
        };
        use std::sync::atomic::Ordering::Relaxed;
        self.stats.records_in.fetch_add(a.count(), Relaxed);
        self.stats.bytes_in.fetch_add(run.len() as u64, Relaxed);
        part.appended.notify(usize::MAX);
        result.base_offset = a.base_offset;
        result.timestamp_ms = a.timestamp_ms;
        // `--fsync always` makes every acknowledgement durable; `acks=durable` asks for it anyway.
        let durable = (acks == Acks::Durable || self.config.fsync == FsyncPolicy::Always)
            .then(|| part.log.borrow().wait_durable(a.next_offset));
        Appending {
            result,
            message: String::new(),
            durable,
        }
    }

    /// Sends a batch to the partition's owner shard; the answer arrives on the returned channel.
    /// Sends from one shard to another are delivered in order, so ordering per partition holds.
    pub async fn append_remote(
        &self,
        owner: ShardId,
        topic: &str,
        partition: u32,
        run: &[u8],
        acks: Acks,
        timeout_ms: u32,
    ) -> flume::Receiver<(ProduceResult, String)> {
        let mut copy = rkyv::util::AlignedVec::<16>::with_capacity(run.len());
        copy.extend_from_slice(run);
        let (reply, answer) = flume::bounded(1);
        self.forward(
            owner,
            ShardOp::Produce {
                topic: topic.to_string(),
                partition,
                run: copy,
                acks,
                timeout_ms,
                reply,
            },
        )
        .await;
        answer
    }

    async fn forward(&self, owner: ShardId, op: ShardOp) {
        self.stats
            .forwarded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A bounded inbox: when the owner is behind, this waits, and so does the client.
        let _ = self.peers[owner as usize].send_async(op).await;
    }

    /// Reads whole records from a local partition.
    pub fn read_local(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
    ) -> ReadOutcome {
        let mut out = ReadOutcome {
            error: ErrorCode::None,
            message: String::new(),
            earliest: 0,
            next: 0,
            slice: None,
        };
        let part = match self.partition(topic, partition) {
            Ok(p) => p,
            Err((code, msg)) => {
                out.error = code;
                out.message = msg;
                return out;
            }
        };
        let log = part.log.borrow();
        out.earliest = log.earliest_offset();
        out.next = log.next_offset();
        match log.read(offset, max_bytes) {
            Ok(s) => {
                self.stats
                    .bytes_out
                    .fetch_add(s.bytes().len() as u64, std::sync::atomic::Ordering::Relaxed);
                out.slice = Some(s);
            }
            Err(e) => {
                out.error = storage_code(&e);
                out.message = e.to_string();
            }
        }
        out
    }

    /// Reads from any partition, forwarding to its owner if needed.
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
    ) -> ReadOutcome {
        let owner = self.owner(topic, partition);
        if owner == self.id {
            return self.read_local(topic, partition, offset, max_bytes);
        }
        let (reply, answer) = flume::bounded(1);
        self.forward(
            owner,
            ShardOp::Read {
                topic: topic.to_string(),
                partition,
                offset,
                max_bytes,
                reply,
            },
        )
        .await;
        answer.recv_async().await.unwrap_or_else(|_| ReadOutcome {
            error: ErrorCode::ShuttingDown,
            message: "owner shard stopped".into(),
            earliest: 0,
            next: 0,
            slice: None,
        })
    }

    /// Waits until a local partition has a record at `offset` or later, or until `deadline`.
    /// Woken by the append itself: no polling.
    pub async fn wait_local(&self, topic: &str, partition: u32, offset: u64, deadline: Instant) {
        let Ok(part) = self.partition(topic, partition) else {
            return;
        };
        loop {
            let listener = part.appended.listen();
            if part.log.borrow().next_offset() > offset {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            future::or(listener, glommio::timer::sleep(left)).await;
        }
    }

    /// Waits for data on any partition, through its owner if needed.
    pub async fn wait(&self, topic: &str, partition: u32, offset: u64, deadline: Instant) {
        let owner = self.owner(topic, partition);
        if owner == self.id {
            return self.wait_local(topic, partition, offset, deadline).await;
        }
        let (reply, answer) = flume::bounded(1);
        self.forward(
            owner,
            ShardOp::WaitData {
                topic: topic.to_string(),
                partition,
                offset,
                deadline,
                reply,
            },
        )
        .await;
        let _ = answer.recv_async().await;
    }

    /// Looks up an offset in a local partition.
    pub fn list_offset_local(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> ListOffsetsResult {
        let mut out = ListOffsetsResult {
            topic: topic.to_string(),
            partition,
            error: ErrorCode::None,
            offset: 0,
        };
        match self.partition(topic, partition) {
            Err((code, _)) => out.error = code,
            Ok(part) => {
                let log = part.log.borrow();
                match spec {
                    OffsetSpec::Earliest => out.offset = log.earliest_offset(),
                    OffsetSpec::Latest => out.offset = log.next_offset(),
                    OffsetSpec::Timestamp(t) => match log.offset_at_time(t) {
                        Ok(o) => out.offset = o,
                        Err(e) => out.error = storage_code(&e),
                    },
                }
            }
        }
        out
    }

    /// Looks up an offset in any partition.
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> ListOffsetsResult {
        let owner = self.owner(topic, partition);
        if owner == self.id {
            return self.list_offset_local(topic, partition, spec);
        }
        let (reply, answer) = flume::bounded(1);
        self.forward(
            owner,
            ShardOp::ListOffset {
                topic: topic.to_string(),
                partition,
                spec,
                reply,
            },
        )
        .await;
        answer.recv_async().await.unwrap_or(ListOffsetsResult {
            topic: topic.to_string(),
            partition,
            error: ErrorCode::ShuttingDown,
            offset: 0,
        })
    }

    /// Offsets and size of a local partition.
    pub fn describe_local(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<PartitionDescription, (ErrorCode, String)> {
        let part = self.partition(topic, partition)?;
        let log = part.log.borrow();
        Ok(PartitionDescription {
            partition,
            shard: self.id,
            earliest: log.earliest_offset(),
            next: log.next_offset(),
            durable: log.durable_offset(),
            size_bytes: log.size_bytes(),
        })
    }

    /// Offsets and size of any partition.
    pub async fn describe(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<PartitionDescription, (ErrorCode, String)> {
        let owner = self.owner(topic, partition);
        if owner == self.id {
            return self.describe_local(topic, partition);
        }
        let (reply, answer) = flume::bounded(1);
        self.forward(
            owner,
            ShardOp::Describe {
                topic: topic.to_string(),
                partition,
                reply,
            },
        )
        .await;
        answer
            .recv_async()
            .await
            .unwrap_or(Err((ErrorCode::ShuttingDown, "owner shard stopped".into())))
    }

    /// Runs one forwarded operation.
    pub async fn handle_op(self: Rc<Self>, op: ShardOp) {
        match op {
            ShardOp::Produce {
                topic,
                partition,
                mut run,
                acks,
                timeout_ms,
                reply,
            } => {
                let appending = self.append_local(&topic, partition, &mut run, acks);
                let _ = reply.send(appending.complete(timeout_ms).await);
            }
            ShardOp::Read {
                topic,
                partition,
                offset,
                max_bytes,
                reply,
            } => {
                let _ = reply.send(self.read_local(&topic, partition, offset, max_bytes));
            }
            ShardOp::WaitData {
                topic,
                partition,
                offset,
                deadline,
                reply,
            } => {
                self.wait_local(&topic, partition, offset, deadline).await;
                let _ = reply.send(());
            }
            ShardOp::ListOffset {
                topic,
                partition,
                spec,
                reply,
            } => {
                let _ = reply.send(self.list_offset_local(&topic, partition, spec));
            }
            ShardOp::Describe {
                topic,
                partition,
                reply,
            } => {
                let _ = reply.send(self.describe_local(&topic, partition));
            }
        }
    }

    /// Applies retention to every local partition and closes logs of deleted topics.
    pub fn housekeeping(&self) {
        let mut gone = Vec::new();
        for ((topic, p), part) in self.partitions.borrow().iter() {
            match self.catalog.get(topic) {
                Some(meta) if meta.id == part.topic_id && *p < meta.partitions => {
                    let mut log = part.log.borrow_mut();
                    if let Err(e) = log.enforce_retention() {
                        tracing::warn!(topic = %topic, partition = p, error = %e, "retention failed");
                    }
                }
                _ => gone.push((topic.clone(), *p)),
            }
        }
        let mut parts = self.partitions.borrow_mut();
        for key in gone {
            parts.remove(&key);
        }
    }

    /// Flushes and closes every local log (graceful shutdown).
    pub fn close_all(&self) {
        let parts: Vec<_> = self.partitions.borrow_mut().drain().collect();
        for ((topic, p), part) in parts {
            if self
                .catalog
                .get(&topic)
                .is_none_or(|m| m.id != part.topic_id)
            {
                // Deleted while open: its files are gone, there is nothing to checkpoint.
                continue;
            }
            match Rc::try_unwrap(part) {
                Ok(part) => {
                    if let Err(e) = part.log.into_inner().close() {
                        tracing::error!(topic = %topic, partition = p, error = %e, "close failed");
                    }
                }
                Err(part) => {
                    if let Err(e) = part.log.borrow().flush() {
                        tracing::error!(topic = %topic, partition = p, error = %e, "flush failed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_partitions_when_routed_should_spread_over_shards_deterministically() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        let shards = 4;
        let mut seen = [0; 4];
        for p in 0..8 {
            seen[owner("orders", p, shards) as usize] += 1;
        }
        assert_eq!(seen, [2, 2, 2, 2]);
        assert_eq!(owner("orders", 3, 4), owner("orders", 3, 4));
    }
}
