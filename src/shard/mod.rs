//! Shards: one executor per core, each the sole owner of a set of partitions.
//!
//! Which shard owns a partition is [`owner`], a pure function of the topic name, the partition
//! number and the shard count. Only the owner touches a partition's log: there are no locks or
//! atomics on the data path. Work for a partition owned elsewhere is run on its owner through one
//! generic hop, [`Shard::on_owner`] (see [`forward`]); the typed operations themselves
//! ([`ops`]) are written once and do not know whether they were called locally or forwarded.
//!
//! The shard speaks domain types and [`ShardError`], never wire types or error codes: the server
//! translates. Partitions are opened lazily, on first use, and the catalog is read through a
//! snapshot cached per shard and refreshed when the catalog's version moves.
//!
//! This module owns partitions and the cross-shard hop. It must not know about sockets, frames or
//! the runtime beyond what [`crate::runtime`] offers.

pub mod delays;
pub mod forward;
pub mod groups;
pub mod idempotence;
pub mod ops;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use event_listener::Event;

use crate::catalog::{Catalog, TopicMeta, Topics};
use crate::config::BrokerConfig;
use crate::storage::{FlushError, FlushPool, Io, Log, StorageError};

pub use forward::Job;
pub use ops::{AckLevel, Appending, OffsetQuery, PartitionInfo, ReadOutcome};

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

/// Why a shard operation failed. The server maps each to a wire error code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ShardError {
    /// A value of the request is out of range.
    #[error("invalid request: {reason}")]
    Invalid {
        /// Why.
        reason: String,
    },
    /// A bound of the broker would be passed.
    #[error("{reason}")]
    Limit {
        /// Which.
        reason: String,
    },
    /// The partition's backlog is at its topic's bound and the policy is `block`: nothing was
    /// stored; the producer waits `throttle_ms` and sends again.
    #[error("{topic}/{partition}: backlog full ({messages} messages, {bytes} bytes not committed by every group); wait and send again")]
    BacklogFull {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// Messages held for the slowest group.
        messages: u64,
        /// Bytes held for the slowest group.
        bytes: u64,
        /// How long to wait.
        throttle_ms: u32,
    },
    /// The partition's backlog is at its topic's bound and the policy is `reject`.
    #[error("{topic}/{partition}: queue full ({messages} messages, {bytes} bytes not committed by every group)")]
    QueueFull {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// Messages held for the slowest group.
        messages: u64,
        /// Bytes held for the slowest group.
        bytes: u64,
    },
    /// An idempotent batch does not start where its producer's last stored batch ended.
    #[error("producer {producer_id} skipped sequences: expected {expected}, got {got}")]
    OutOfOrderSequence {
        /// The producer.
        producer_id: u64,
        /// The sequence its next batch must start with.
        expected: u64,
        /// What the batch started with.
        got: u64,
    },
    /// An idempotent batch repeats sequences stored before the batches the broker remembers.
    #[error(
        "producer {producer_id} sent sequence {got} again, stored long ago (next is {expected})"
    )]
    DuplicateSequence {
        /// The producer.
        producer_id: u64,
        /// The sequence its next batch must start with.
        expected: u64,
        /// What the batch started with.
        got: u64,
    },
    /// A client tried to write an internal topic (only the broker does).
    #[error("'{topic}' is an internal topic: only the broker writes it")]
    InternalTopic {
        /// The topic.
        topic: String,
    },
    /// No such topic.
    #[error("unknown topic '{topic}'")]
    UnknownTopic {
        /// The topic asked for.
        topic: String,
    },
    /// The topic has fewer partitions.
    #[error("topic '{topic}' has {partitions} partitions, no partition {partition}")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// How many it has.
        partitions: u32,
    },
    /// The storage engine refused or failed.
    #[error("{topic}/{partition}: {source}")]
    Storage {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// What the log said.
        #[source]
        source: Arc<StorageError>,
    },
    /// The flush an acknowledgement waits for failed: the log is read-only (fail-stop).
    #[error("flush failed, the partition is read-only: {0}")]
    Flush(FlushError),
    /// No flush covered the records in time; they were appended.
    #[error("no flush covered the batch within {timeout_ms} ms")]
    DurableTimeout {
        /// The limit.
        timeout_ms: u32,
    },
    /// The broker is stopping, or the owner shard is gone.
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// A consumer-group rule refused the operation.
    #[error(transparent)]
    Group(#[from] crate::group::GroupError),
    /// An operation panicked (a bug): it was abandoned, the shard goes on.
    #[error("internal error on shard {shard}: {message}")]
    Internal {
        /// Where.
        shard: ShardId,
        /// The panic message.
        message: String,
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
    /// Operations run on another shard.
    pub forwarded: std::sync::atomic::AtomicU64,
    /// Open client connections.
    pub connections: std::sync::atomic::AtomicUsize,
    /// Partitions whose log is open.
    pub partitions_open: std::sync::atomic::AtomicUsize,
    /// Operations or requests that panicked and were answered `Internal`.
    pub panics: std::sync::atomic::AtomicU64,
    /// Produce blocks refused `Throttled` by a full `block` backlog.
    pub backlog_throttled: std::sync::atomic::AtomicU64,
    /// Produce blocks refused `QueueFull` by a full `reject` backlog.
    pub backlog_rejected: std::sync::atomic::AtomicU64,
    /// Segments deleted by `drop-oldest` backlogs.
    pub backlog_dropped_segments: std::sync::atomic::AtomicU64,
    /// Milliseconds of waiting producers were told to do by full backlogs (`throttle_ms`).
    pub throttle_ms: std::sync::atomic::AtomicU64,
    /// Produce and Fetch blocks answered `Throttled` by a quota (counted by the shard that
    /// answered the request).
    pub quota_throttled: std::sync::atomic::AtomicU64,
    /// Milliseconds of waiting quotas handed out in `throttle_ms`.
    pub quota_throttle_ms: std::sync::atomic::AtomicU64,
    /// Records served to consumers.
    pub records_out: std::sync::atomic::AtomicU64,
    /// When the shard last showed it runs (ms since the Unix epoch); 0 before it starts.
    pub alive_ms: std::sync::atomic::AtomicU64,
}

/// What a shard shares with the broker: configuration, catalog, its counters, flow control.
pub struct ShardDeps {
    /// The broker's configuration.
    pub config: Arc<BrokerConfig>,
    /// The topic catalog.
    pub catalog: Arc<Catalog>,
    /// This shard's counters.
    pub stats: Arc<Stats>,
    /// Flow-control state shared by all shards.
    pub flow: Arc<crate::flow::Flow>,
}

/// One partition owned by this shard.
pub struct Partition<I: Io> {
    /// The topic's metadata when the log was opened: a topic deleted and re-created gets a new
    /// id, and an altered retention is noticed by comparing.
    meta: Arc<TopicMeta>,
    /// The log.
    pub log: RefCell<Log<I>>,
    /// Notified on every append: long-polling fetches wait on it, no timer polling.
    pub appended: Event,
    /// Idempotent producers' last batches; rebuilt from the log's tail on first use.
    pub producers: RefCell<Option<idempotence::ProducerTable>>,
}

impl<I: Io> Partition<I> {
    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.meta.name
    }
}

/// A topic's open partitions on this shard, by partition number.
type Slots<I> = Vec<Option<Rc<Partition<I>>>>;

/// A shard's state, shared by its tasks (single-threaded: `Rc`, `RefCell`).
pub struct Shard<I: Io> {
    /// This shard's number.
    pub id: ShardId,
    /// How many shards the broker runs.
    pub shards: u16,
    /// The broker's configuration.
    pub config: Arc<BrokerConfig>,
    /// The topic catalog.
    pub catalog: Arc<Catalog>,
    /// This shard's counters.
    pub stats: Arc<Stats>,
    /// Flow-control state shared by all shards (commit floors).
    pub flow: Arc<crate::flow::Flow>,
    peers: Arc<Vec<flume::Sender<Job<I>>>>,
    io: I,
    pool: Arc<FlushPool>,
    topics: RefCell<Arc<Topics>>,
    partitions: RefCell<HashMap<String, Slots<I>>>,
    /// Loaded group coordinators, by offsets partition.
    coordinators: RefCell<HashMap<u32, Rc<RefCell<groups::Slot>>>>,
    /// Loaded delays partitions.
    delays: RefCell<HashMap<u32, Rc<RefCell<delays::DelaySlot>>>>,
    stopping: Cell<bool>,
    stop_event: Event,
}

impl<I: Io> Shard<I> {
    /// A shard with no partition open yet.
    pub fn new(
        id: ShardId,
        deps: ShardDeps,
        peers: Arc<Vec<flume::Sender<Job<I>>>>,
        io: I,
        pool: Arc<FlushPool>,
    ) -> Shard<I> {
        let ShardDeps {
            config,
            catalog,
            stats,
            flow,
        } = deps;
        Shard {
            id,
            shards: config.shards,
            topics: RefCell::new(catalog.snapshot()),
            config,
            catalog,
            stats,
            flow,
            peers,
            io,
            pool,
            partitions: RefCell::new(HashMap::new()),
            coordinators: RefCell::new(HashMap::new()),
            delays: RefCell::new(HashMap::new()),
            stopping: Cell::new(false),
            stop_event: Event::new(),
        }
    }

    /// The owner of a partition.
    pub fn owner(&self, topic: &str, partition: u32) -> ShardId {
        owner(topic, partition, self.shards)
    }

    /// The catalog as this shard sees it: a snapshot refreshed when the catalog changed.
    pub fn topics(&self) -> Arc<Topics> {
        let version = self.catalog.version();
        let mut cached = self.topics.borrow_mut();
        if cached.version() != version {
            *cached = self.catalog.snapshot();
        }
        cached.clone()
    }

    /// Tells long polls on this shard to answer now: the broker is stopping.
    pub fn stop(&self) {
        self.stopping.set(true);
        self.stop_event.notify(usize::MAX);
    }

    /// True once [`Shard::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Resolves once the shard is stopping.
    pub async fn stopped(&self) {
        loop {
            let l = self.stop_event.listen();
            if self.stopping.get() {
                return;
            }
            l.await;
        }
    }

    /// The topic's metadata, if the partition exists in the catalog.
    fn meta(&self, topic: &str, partition: u32) -> Result<Arc<TopicMeta>, ShardError> {
        let topics = self.topics();
        let meta = topics.get(topic).ok_or_else(|| ShardError::UnknownTopic {
            topic: topic.to_string(),
        })?;
        if partition >= meta.partitions {
            return Err(ShardError::UnknownPartition {
                topic: topic.to_string(),
                partition,
                partitions: meta.partitions,
            });
        }
        assert_eq!(
            self.owner(topic, partition),
            self.id,
            "partition used off its owner shard"
        );
        Ok(meta.clone())
    }

    fn open_already(&self, meta: &TopicMeta, partition: u32) -> Option<Rc<Partition<I>>> {
        self.partitions
            .borrow()
            .get(&meta.name)
            .and_then(|v| v.get(partition as usize))
            .and_then(Option::as_ref)
            .filter(|p| p.meta.id == meta.id)
            .cloned()
    }

    /// The local partition if it holds anything: open already, or with a directory on disk
    /// (then opened). `None` for a partition never written to, which is not created by asking.
    pub fn existing(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Option<Rc<Partition<I>>>, ShardError> {
        let meta = self.meta(topic, partition)?;
        if let Some(p) = self.open_already(&meta, partition) {
            return Ok(Some(p));
        }
        // Through the I/O seam, so that a simulated disk answers too.
        let dir = self.catalog.partition_dir(&meta, partition);
        if !self.io.list(&dir).is_ok_and(|names| !names.is_empty()) {
            return Ok(None);
        }
        self.partition(topic, partition).map(Some)
    }

    /// The local partition, opened (recovered) on first use.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Rc<Partition<I>>, ShardError> {
        let meta = self.meta(topic, partition)?;
        if let Some(p) = self.open_already(&meta, partition) {
            return Ok(p);
        }
        let p = Rc::new(self.open(&meta, partition)?);
        let mut parts = self.partitions.borrow_mut();
        let slots = parts.entry(topic.to_string()).or_default();
        if slots.len() <= partition as usize {
            slots.resize(partition as usize + 1, None);
        }
        if slots[partition as usize].replace(p.clone()).is_none() {
            self.stats
                .partitions_open
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(p)
    }

    fn open(&self, meta: &Arc<TopicMeta>, partition: u32) -> Result<Partition<I>, ShardError> {
        let dir = self.catalog.partition_dir(meta, partition);
        let config = self
            .config
            .log_config(meta.retention_bytes, meta.retention_ms);
        let (log, report) =
            Log::open_in(&self.pool, self.io.clone(), &dir, config).map_err(|e| {
                ShardError::Storage {
                    topic: meta.name.clone(),
                    partition,
                    source: Arc::new(e),
                }
            })?;
        if report.truncation.is_some() || !report.segments_removed.is_empty() {
            tracing::warn!(topic = %meta.name, partition, ?report, "partition recovered with a cut");
        } else {
            tracing::debug!(topic = %meta.name, partition, next = report.next_offset, "partition opened");
        }
        Ok(Partition {
            meta: meta.clone(),
            log: RefCell::new(log),
            appended: Event::new(),
            producers: RefCell::new(None),
        })
    }

    /// Applies retention to every local partition, follows retention changes of altered topics,
    /// and closes logs of deleted topics.
    pub fn housekeeping(&self) {
        let topics = self.topics();
        let mut gone = Vec::new();
        for (topic, slots) in self.partitions.borrow().iter() {
            for (p, part) in slots.iter().enumerate() {
                let Some(part) = part else { continue };
                match topics.get(topic) {
                    Some(meta) if meta.id == part.meta.id && (p as u32) < meta.partitions => {
                        let keep = self.retention_keep(meta, topic, p as u32);
                        let mut log = part.log.borrow_mut();
                        log.set_retention(meta.retention_bytes, meta.retention_ms);
                        if let Err(e) = log.enforce_retention(keep) {
                            tracing::warn!(topic = %topic, partition = p, error = %e, "retention failed");
                        }
                    }
                    _ => gone.push((topic.clone(), p)),
                }
            }
        }
        let mut parts = self.partitions.borrow_mut();
        for (topic, p) in gone {
            if let Some(slot) = parts.get_mut(&topic).and_then(|v| v.get_mut(p)) {
                if slot.take().is_some() {
                    self.stats
                        .partitions_open
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        parts.retain(|_, slots| slots.iter().any(Option::is_some));
    }

    /// Flushes and closes every local log (graceful shutdown).
    pub fn close_all(&self) {
        let topics = self.topics();
        let parts: Vec<_> = self.partitions.borrow_mut().drain().collect();
        for (topic, slots) in parts {
            for (p, part) in slots.into_iter().enumerate() {
                let Some(part) = part else { continue };
                if topics.get(&topic).is_none_or(|m| m.id != part.meta.id) {
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
