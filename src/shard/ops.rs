//! The typed operations on a local partition: append, read, wait for data, look up an offset,
//! describe. Each is written once, for the partition's owner; callers elsewhere reach it through
//! [`Shard::on_owner`]. Inputs and outputs are domain types (storage's `Appended` and `Slice`,
//! the types below) and errors are [`ShardError`]s, never wire types.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_listener::EventListener;

use super::{idempotence, Shard, ShardError};
use crate::catalog::TopicMeta;
use crate::config::FsyncPolicy;
use crate::flow;
use crate::protocol::Visibility;
use crate::runtime;
use crate::storage::{Appended, DurableWait, Io, Slice, StorageError};

/// What an append's acknowledgement waits for (the contract's `acks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckLevel {
    /// Nothing: fire and forget.
    None,
    /// The records are in the mapped segment.
    Written,
    /// A flush covering the records completed.
    Durable,
}

/// Where an offset lookup points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetQuery {
    /// The first offset still stored.
    Earliest,
    /// The offset the next record will get.
    Latest,
    /// The first offset appended at or after this time (ms since the epoch), or the log end.
    AtTime(i64),
}

/// Offsets and size of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    /// First offset stored.
    pub earliest: u64,
    /// Offset of the next record.
    pub next: u64,
    /// Every offset below this is durable.
    pub durable: u64,
    /// Bytes of records stored.
    pub size_bytes: u64,
}

/// A read: the partition's offsets and the records found (possibly none).
pub struct ReadOutcome<M: crate::storage::SegmentMap> {
    /// First offset stored.
    pub earliest: u64,
    /// Offset the next appended record will get.
    pub next: u64,
    /// Whole, CRC-checked records; keeps their segment mapped while it travels.
    pub slice: Slice<M>,
}

/// An append whose acknowledgement may still wait for a flush.
pub struct Appending {
    /// Offsets and time given to the batch.
    pub appended: Appended,
    durable: Option<DurableWait>,
}

impl Appending {
    /// Waits for the flush the acknowledgement needs, at most `timeout_ms` (0 acts as 1).
    pub async fn complete(self, timeout_ms: u32) -> Result<Appended, ShardError> {
        let Some(wait) = self.durable else {
            return Ok(self.appended);
        };
        let deadline = Instant::now() + Duration::from_millis(timeout_ms.max(1) as u64);
        match runtime::until(deadline, wait).await {
            Some(Ok(())) => Ok(self.appended),
            Some(Err(e)) => Err(ShardError::Flush(e)),
            None => Err(ShardError::DurableTimeout { timeout_ms }),
        }
    }
}

pub(super) fn storage(topic: &str, partition: u32, e: StorageError) -> ShardError {
    ShardError::Storage {
        topic: topic.to_string(),
        partition,
        source: Arc::new(e),
    }
}

impl<I: Io> Shard<I> {
    /// Appends a batch (whole records, as a producer sends them) to a local partition,
    /// synchronously: nothing awaits between the caller's decision and the append, so batches
    /// arriving in order are appended in order. What the acknowledgement still waits for (a
    /// flush) is in the returned [`Appending`].
    pub fn append(
        &self,
        topic: &str,
        partition: u32,
        run: &mut [u8],
        acks: AckLevel,
    ) -> Result<Appending, ShardError> {
        let part = self.partition(topic, partition)?;
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
                let keep = self
                    .topics()
                    .get(topic)
                    .and_then(|meta| self.retention_keep(meta, topic, partition));
                if let Err(e) = log.enforce_retention(keep) {
                    tracing::warn!(topic, partition, error = %e, "retention failed");
                }
            }
            appended.map_err(|e| storage(topic, partition, e))?
        };
        self.stats.records_in.fetch_add(appended.count(), Relaxed);
        self.stats.bytes_in.fetch_add(run.len() as u64, Relaxed);
        part.appended.notify(usize::MAX);
        // `--fsync always` makes every acknowledgement durable; `acks=durable` asks for it anyway.
        let durable = (acks == AckLevel::Durable || self.config.fsync == FsyncPolicy::Always)
            .then(|| part.log.borrow().wait_durable(appended.next_offset));
        Ok(Appending { appended, durable })
    }

    /// A client's append: refused on internal topics, and checked against the producer's last
    /// batches when its records come from an idempotent producer (see [`super::idempotence`]):
    /// a batch stored already is answered with its original offsets, not stored again.
    pub fn append_client(
        &self,
        topic: &str,
        partition: u32,
        run: &mut [u8],
        acks: AckLevel,
    ) -> Result<Appending, ShardError> {
        if topic.starts_with(crate::catalog::INTERNAL_PREFIX) {
            return Err(ShardError::InternalTopic {
                topic: topic.to_string(),
            });
        }
        // The backlog is checked only for a batch that will be stored: a resend of a stored batch
        // is answered with its offsets even when the partition is full.
        let mut drop_after = false;
        let appending = self.append_idempotent(topic, partition, run, acks, &mut || {
            drop_after = self.check_backlog(topic, partition)?;
            Ok(())
        })?;
        if drop_after {
            self.drop_oldest(topic, partition);
        }
        Ok(appending)
    }

    /// Where retention of `topic`/`partition` must stop, for a bounded topic under `block` or
    /// `reject` (see [`flow::retention_keeps_uncommitted`]): the slowest group's committed
    /// offset, or the log start while no group committed (the bound, not retention, then limits
    /// what the partition holds).
    pub(crate) fn retention_keep(
        &self,
        meta: &TopicMeta,
        topic: &str,
        partition: u32,
    ) -> Option<u64> {
        flow::retention_keeps_uncommitted(meta)
            .then(|| self.flow.floors.floor(topic, partition).unwrap_or(0))
    }

    /// The backlog check of a produce to `topic`/`partition`: `Ok(true)` when the append must be
    /// followed by dropping the oldest segments (`drop-oldest`).
    fn check_backlog(&self, topic: &str, partition: u32) -> Result<bool, ShardError> {
        let Some(meta) = self.topics().get(topic).cloned() else {
            return Ok(false);
        };
        if !meta.has_backlog_bound() {
            return Ok(false);
        }
        let part = self.partition(topic, partition)?;
        let b = self.backlog_of(&part, topic, partition);
        match flow::verdict(&meta, &b) {
            flow::Verdict::Room => Ok(false),
            flow::Verdict::AppendAndDrop => Ok(true),
            flow::Verdict::Throttle => {
                self.stats.backlog_throttled.fetch_add(1, Relaxed);
                self.stats
                    .throttle_ms
                    .fetch_add(u64::from(flow::BACKLOG_THROTTLE_MS), Relaxed);
                Err(ShardError::BacklogFull {
                    topic: topic.to_string(),
                    partition,
                    messages: b.messages,
                    bytes: b.bytes,
                    throttle_ms: flow::BACKLOG_THROTTLE_MS,
                })
            }
            flow::Verdict::Reject => {
                self.stats.backlog_rejected.fetch_add(1, Relaxed);
                Err(ShardError::QueueFull {
                    topic: topic.to_string(),
                    partition,
                    messages: b.messages,
                    bytes: b.bytes,
                })
            }
        }
    }

    /// What a local partition holds for its slowest group.
    fn backlog_of(&self, part: &super::Partition<I>, topic: &str, partition: u32) -> flow::Backlog {
        let floor = self.flow.floors.floor(topic, partition);
        let log = part.log.borrow();
        flow::backlog(
            floor,
            log.earliest_offset(),
            log.next_offset(),
            &log.segments(),
        )
    }

    /// `drop-oldest`: rolls the active segment once it holds a quarter of the bound, and deletes
    /// the oldest segments while the backlog is over the bound.
    fn drop_oldest(&self, topic: &str, partition: u32) {
        let (Some(meta), Ok(part)) = (
            self.topics().get(topic).cloned(),
            self.partition(topic, partition),
        ) else {
            return;
        };
        let (messages_granule, bytes_granule) = flow::drop_granule(&meta);
        let mut log = part.log.borrow_mut();
        if let Some(&(base, next, len)) = log.segments().last() {
            let over = messages_granule.is_some_and(|g| next - base >= g)
                || bytes_granule.is_some_and(|g| len as u64 >= g);
            if over {
                if let Err(e) = log.roll_active() {
                    tracing::warn!(topic, partition, error = %e, "cannot roll for drop-oldest");
                }
            }
        }
        loop {
            let floor = self.flow.floors.floor(topic, partition);
            let b = flow::backlog(
                floor,
                log.earliest_offset(),
                log.next_offset(),
                &log.segments(),
            );
            if !flow::is_full(&meta, &b) {
                break;
            }
            match log.drop_oldest() {
                Ok(Some(base)) => {
                    self.stats.backlog_dropped_segments.fetch_add(1, Relaxed);
                    tracing::debug!(topic, partition, base, "drop-oldest deleted a segment");
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(topic, partition, error = %e, "drop-oldest failed");
                    break;
                }
            }
        }
    }

    /// An append checked against the producer's last batches when its records come from an
    /// idempotent producer (see [`idempotence`]). `admit` runs just before a batch is stored,
    /// and refuses it by returning an error.
    fn append_idempotent(
        &self,
        topic: &str,
        partition: u32,
        run: &mut [u8],
        acks: AckLevel,
        admit: &mut dyn FnMut() -> Result<(), ShardError>,
    ) -> Result<Appending, ShardError> {
        let batch = match idempotence::batch_id(run, self.config.record_bytes_max) {
            Ok(Some(b)) => b,
            // Not idempotent; or an invalid record, which the append reports.
            Ok(None) | Err(idempotence::BatchError::Record(_)) => {
                admit()?;
                return self.append(topic, partition, run, acks);
            }
            Err(e @ idempotence::BatchError::NotOneBatch(_)) => {
                return Err(ShardError::Invalid {
                    reason: e.to_string(),
                })
            }
        };
        let part = self.partition(topic, partition)?;
        if part.producers.borrow().is_none() {
            let table = self.rebuild_producers(topic, partition, &part)?;
            *part.producers.borrow_mut() = Some(table);
        }
        let decision = part
            .producers
            .borrow()
            .as_ref()
            .map_or(idempotence::Decision::Append, |t| t.check(&batch));
        match decision {
            idempotence::Decision::Append => {
                admit()?;
                let a = self.append(topic, partition, run, acks)?;
                if let Some(t) = part.producers.borrow_mut().as_mut() {
                    t.stored(&batch, a.appended.base_offset, a.appended.timestamp_ms);
                }
                Ok(a)
            }
            idempotence::Decision::Duplicate(s) => {
                let appended = Appended {
                    base_offset: s.base_offset,
                    next_offset: s.base_offset + batch.count,
                    timestamp_ms: s.timestamp_ms,
                };
                tracing::debug!(
                    topic,
                    partition,
                    producer = batch.producer_id,
                    sequence = batch.first,
                    "duplicate batch answered with its offsets"
                );
                let durable = (acks == AckLevel::Durable
                    || self.config.fsync == FsyncPolicy::Always)
                    .then(|| part.log.borrow().wait_durable(appended.next_offset));
                Ok(Appending { appended, durable })
            }
            idempotence::Decision::Gap { expected } => Err(ShardError::OutOfOrderSequence {
                producer_id: batch.producer_id,
                expected,
                got: batch.first,
            }),
            idempotence::Decision::Old { expected } => Err(ShardError::DuplicateSequence {
                producer_id: batch.producer_id,
                expected,
                got: batch.first,
            }),
        }
    }

    /// Reads the last [`idempotence::SCAN_BYTES`] of a partition into a producer table.
    fn rebuild_producers(
        &self,
        topic: &str,
        partition: u32,
        part: &super::Partition<I>,
    ) -> Result<idempotence::ProducerTable, ShardError> {
        let log = part.log.borrow();
        let mut from = log.next_offset();
        let mut bytes = 0u64;
        for (base, _next, len) in log.segments().into_iter().rev() {
            from = base;
            bytes += len as u64;
            if bytes >= idempotence::SCAN_BYTES {
                break;
            }
        }
        let mut table = idempotence::ProducerTable::default();
        replay(topic, partition, &log, from, |r| table.rebuild_record(r))?;
        table.rebuilt();
        Ok(table)
    }

    /// Reads whole records from `offset`, at most `max_bytes` but at least one record when one
    /// exists. At the end of what the topic's visibility shows (the log end, or the durable
    /// offset for a `durable` topic) the slice is empty, and `next` is that end.
    pub fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: usize,
    ) -> Result<ReadOutcome<I::Map>, ShardError> {
        let part = self.partition(topic, partition)?;
        let log = part.log.borrow();
        let end = self.visible_end(topic, &log);
        let slice = log
            .read_below(offset, max_bytes.max(1), end)
            .map_err(|e| storage(topic, partition, e))?;
        self.stats
            .bytes_out
            .fetch_add(slice.bytes().len() as u64, Relaxed);
        self.stats.records_out.fetch_add(slice.count(), Relaxed);
        Ok(ReadOutcome {
            earliest: log.earliest_offset(),
            next: end,
            slice,
        })
    }

    /// Where what readers of `topic` may see ends: the log end, or the durable offset.
    fn visible_end(&self, topic: &str, log: &crate::storage::Log<I>) -> u64 {
        match self.topics().get(topic).map(|m| m.visibility) {
            Some(Visibility::Durable) => log.durable_offset().min(log.next_offset()),
            _ => log.next_offset(),
        }
    }

    /// Looks up an offset of a local partition.
    pub fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        query: OffsetQuery,
    ) -> Result<u64, ShardError> {
        let part = self.partition(topic, partition)?;
        let log = part.log.borrow();
        match query {
            OffsetQuery::Earliest => Ok(log.earliest_offset()),
            OffsetQuery::Latest => Ok(log.next_offset()),
            OffsetQuery::AtTime(t) => log
                .offset_at_time(t)
                .map_err(|e| storage(topic, partition, e)),
        }
    }

    /// Offsets and size of a local partition. A partition never written to is described as
    /// empty without being created.
    pub fn describe(&self, topic: &str, partition: u32) -> Result<PartitionInfo, ShardError> {
        let Some(part) = self.existing(topic, partition)? else {
            return Ok(PartitionInfo {
                earliest: 0,
                next: 0,
                durable: 0,
                size_bytes: 0,
            });
        };
        let log = part.log.borrow();
        Ok(PartitionInfo {
            earliest: log.earliest_offset(),
            next: log.next_offset(),
            durable: log.durable_offset(),
            size_bytes: log.size_bytes(),
        })
    }

    /// Every open local partition's offsets and size, for metrics and stats: `(topic, partition,
    /// info)`, sorted.
    pub fn partition_snapshot(&self) -> Vec<(String, u32, PartitionInfo)> {
        let mut out = Vec::new();
        for (topic, slots) in self.partitions.borrow().iter() {
            for (p, part) in slots.iter().enumerate() {
                let Some(part) = part else { continue };
                let log = part.log.borrow();
                out.push((
                    topic.clone(),
                    p as u32,
                    PartitionInfo {
                        earliest: log.earliest_offset(),
                        next: log.next_offset(),
                        durable: log.durable_offset(),
                        size_bytes: log.size_bytes(),
                    },
                ));
            }
        }
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out
    }

    /// Waits until any of `wanted` (topic, partition, offset) has a record at `offset` or later,
    /// or until `deadline`, or until the shard stops. Woken by the appends themselves: no
    /// polling. Costs one listener per distinct partition on the heap and O(1) stack, however
    /// many blocks a request names. A partition that cannot be opened ends the wait at once
    /// (the caller's next read reports it).
    pub async fn wait_any(&self, wanted: &[(String, u32, u64)], deadline: Instant) {
        let mut parts = Vec::new();
        let mut seen = std::collections::HashMap::new();
        for (topic, partition, offset) in wanted {
            match seen.get(&(topic.as_str(), *partition)) {
                Some(&i) => {
                    let slot: &mut (_, u64) = &mut parts[i];
                    slot.1 = slot.1.min(*offset);
                }
                None => match self.partition(topic, *partition) {
                    Ok(p) => {
                        seen.insert((topic.as_str(), *partition), parts.len());
                        parts.push((p, *offset));
                    }
                    Err(_) => return,
                },
            }
        }
        let durable: Vec<bool> = wanted_topics(&parts)
            .iter()
            .map(|t| {
                self.topics()
                    .get(t)
                    .is_some_and(|m| m.visibility == Visibility::Durable)
            })
            .collect();
        loop {
            // A durable-only topic shows new records when a flush makes them durable, not when
            // they are appended: wait for that, without asking for a flush.
            let listeners: Vec<EventListener> = parts
                .iter()
                .zip(&durable)
                .map(|((p, _), &d)| {
                    if d {
                        p.log.borrow().watch_durable()
                    } else {
                        p.appended.listen()
                    }
                })
                .collect();
            let ready = parts.iter().zip(&durable).any(|((p, offset), &d)| {
                let log = p.log.borrow();
                let end = if d {
                    log.durable_offset().min(log.next_offset())
                } else {
                    log.next_offset()
                };
                end > *offset
            });
            if ready || self.is_stopping() {
                return;
            }
            let listeners: Vec<runtime::LocalFuture<'_>> = listeners
                .into_iter()
                .map(|l| Box::pin(l) as runtime::LocalFuture<'_>)
                .collect();
            let woken = futures_lite::future::or(
                async {
                    runtime::first_of(listeners).await;
                    true
                },
                async {
                    self.stopped().await;
                    false
                },
            );
            if runtime::until(deadline, woken).await != Some(true) {
                return;
            }
        }
    }
}

/// The topic of each waited-for partition.
fn wanted_topics<I: Io>(parts: &[(std::rc::Rc<super::Partition<I>>, u64)]) -> Vec<String> {
    parts.iter().map(|(p, _)| p.topic().to_string()).collect()
}

/// Hands every record of a local partition's log from `from` (or its start) to its end to
/// `each`, in order: how the broker rebuilds state kept in a log (coordinators, the delay
/// schedule, idempotent producers). A record whose CRCs fail is logged and skipped.
pub(crate) fn replay<I: Io>(
    topic: &str,
    partition: u32,
    log: &crate::storage::Log<I>,
    from: u64,
    mut each: impl FnMut(&crate::record::RecordRef<'_>),
) -> Result<(), ShardError> {
    let mut offset = from.max(log.earliest_offset());
    while offset < log.next_offset() {
        let slice = log
            .read(offset, 1 << 20)
            .map_err(|e| storage(topic, partition, e))?;
        if slice.next_offset <= offset {
            break;
        }
        for r in crate::record::Records::new(slice.bytes(), crate::record::ARCHIVE_LEN_MAX) {
            match r {
                Ok(r) if r.offset() >= offset => each(&r),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(topic, partition, error = %e, "stored record unreadable; skipped")
                }
            }
        }
        offset = slice.next_offset;
    }
    Ok(())
}
