//! The scheduler of delayed records on the shard that owns each partition of [`DELAYS_TOPIC`]
//! (the format and the exactly-once argument are in [`crate::delay`]).
//!
//! At start each shard replays the delays partitions it owns. A timer task then delivers what
//! is due, in batches per destination: it reads the entries' runs from the delays log, looks in
//! the destination for entries that may have been delivered before a crash, appends the rest
//! there durably (on the destination's owner, in one hop), then records them as done and lets
//! the delays log drop the segments no pending entry needs.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use super::{AckLevel, Shard, ShardError};
use crate::delay::{self, Pending, Schedule, Stored, DELAYS_TOPIC, DELAY_PRODUCER_ID_BASE};
use crate::record::{self, Records};
use crate::runtime;
use crate::storage::Io;

/// How often the scheduler looks for due entries: the resolution of a delay.
pub const TICK: Duration = Duration::from_millis(10);
/// Most bytes of runs delivered in one batch (at least one entry).
const BATCH_BYTES: usize = 4 << 20;
/// Most entries in one batch.
const BATCH_ENTRIES: usize = 1024;
/// How far before an entry's due time the destination is searched for an earlier delivery: the
/// broker's clock may have stepped back that much between the delivery and a restart.
const CLOCK_SLACK_MS: i64 = 60_000;
/// After a failed delivery, the destination is left alone this long.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// One loaded delays partition.
#[derive(Default)]
pub struct DelaySlot {
    /// Entries waiting.
    pub schedule: Schedule,
    /// Destinations whose last delivery failed, and until when to leave them.
    backoff: BTreeMap<(String, u32), std::time::Instant>,
}

/// What a schedule request asks for.
#[derive(Debug, Clone)]
pub struct ScheduleArgs {
    /// Destination topic.
    pub topic: String,
    /// Destination partition.
    pub partition: u32,
    /// When to deliver, ms since the Unix epoch.
    pub due_ms: i64,
    /// Whole records, as a producer sent them.
    pub run: Vec<u8>,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn invalid(reason: String) -> ShardError {
    ShardError::Invalid { reason }
}

fn limit(reason: String) -> ShardError {
    ShardError::Limit { reason }
}

impl<I: Io> Shard<I> {
    /// The number of delays partitions, if the topic exists.
    pub fn delays_partitions(&self) -> Option<u32> {
        self.topics().get(DELAYS_TOPIC).map(|m| m.partitions)
    }

    /// The delays partition (and its owner) for a destination.
    pub fn delays_route(&self, topic: &str, partition: u32) -> Option<(u32, super::ShardId)> {
        let n = self.delays_partitions()?;
        let d = delay::delays_partition(topic, partition, n);
        Some((d, self.owner(DELAYS_TOPIC, d)))
    }

    /// Loads (replays) delays partition `d`, which this shard owns.
    fn delay_slot(&self, d: u32) -> Result<Rc<RefCell<DelaySlot>>, ShardError> {
        if let Some(slot) = self.delays.borrow().get(&d) {
            return Ok(slot.clone());
        }
        let part = self.partition(DELAYS_TOPIC, d)?;
        let mut slot = DelaySlot::default();
        super::ops::replay(DELAYS_TOPIC, d, &part.log.borrow(), 0, |r| {
            slot.schedule.apply(r)
        })?;
        tracing::info!(
            partition = d,
            pending = slot.schedule.len(),
            "delays partition loaded"
        );
        let slot = Rc::new(RefCell::new(slot));
        self.delays.borrow_mut().insert(d, slot.clone());
        Ok(slot)
    }

    /// Loads the delays partitions this shard owns and delivers what comes due, until the shard
    /// stops.
    pub async fn run_delays(self: Rc<Self>) {
        let Some(n) = self.delays_partitions() else {
            return;
        };
        let mine: Vec<u32> = (0..n)
            .filter(|&d| self.owner(DELAYS_TOPIC, d) == self.id)
            .collect();
        for &d in &mine {
            if let Err(e) = self.delay_slot(d) {
                tracing::error!(partition = d, error = %e, "delays partition not loaded");
            }
        }
        while !self.is_stopping() {
            runtime::sleep(TICK).await;
            for &d in &mine {
                if let Err(e) = self.deliver_due(d).await {
                    tracing::warn!(partition = d, error = %e, "delayed delivery failed");
                }
            }
        }
    }

    /// Schedules a run for delivery at `args.due_ms` through delays partition `d` (owned here).
    /// The entry is durable (as `acks` asks) before this returns.
    pub async fn delay_schedule(
        self: &Rc<Self>,
        d: u32,
        args: ScheduleArgs,
        acks: AckLevel,
        timeout_ms: u32,
    ) -> Result<u64, ShardError> {
        // The destination must exist now; if it is deleted before the due time, the entry is
        // dropped then.
        let topics = self.topics();
        let meta = topics
            .get(&args.topic)
            .ok_or_else(|| ShardError::UnknownTopic {
                topic: args.topic.clone(),
            })?;
        if args.partition >= meta.partitions {
            return Err(ShardError::UnknownPartition {
                topic: args.topic.clone(),
                partition: args.partition,
                partitions: meta.partitions,
            });
        }
        let slot = self.delay_slot(d)?;
        let n = self.delays_partitions().unwrap_or(1).max(1) as usize;
        {
            let s = slot.borrow();
            if s.schedule.len() >= self.config.delayed_messages_max.div_ceil(n) {
                return Err(limit(format!(
                    "{} delayed records wait in this delays partition, its share of delayed_messages_max",
                    s.schedule.len()
                )));
            }
        }
        let part = self.partition(DELAYS_TOPIC, d)?;
        let id = part.log.borrow().next_offset();
        let tagged = delay::tag_run(&args.run, d, id, self.config.record_bytes_max)
            .map_err(|e| invalid(format!("delayed records: {e}")))?;
        let mut entry = Vec::with_capacity(tagged.len() + 128);
        delay::encode_scheduled(
            id,
            args.due_ms,
            &args.topic,
            args.partition,
            &tagged,
            &mut entry,
        )
        .map_err(|e| invalid(format!("delayed records: {e}")))?;
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(entry.len());
        aligned.extend_from_slice(&entry);
        let appending = self.append(DELAYS_TOPIC, d, &mut aligned, acks)?;
        debug_assert_eq!(
            appending.appended.base_offset, id,
            "nothing awaited in between"
        );
        // Pending from now on: the record is in the log, so a restart would load it anyway.
        slot.borrow_mut().schedule.insert(Pending {
            id,
            due_ms: args.due_ms,
            topic: args.topic,
            partition: args.partition,
            bytes: tagged.len(),
            unverified: false,
        });
        appending.complete(timeout_ms).await?;
        Ok(id)
    }

    /// Delivers the due entries of delays partition `d`, one batch per destination.
    async fn deliver_due(self: &Rc<Self>, d: u32) -> Result<(), ShardError> {
        let slot = self.delay_slot(d)?;
        let now = now_ms();
        let due = {
            let s = slot.borrow();
            if s.schedule.next_due().is_none_or(|t| t > now) {
                return Ok(());
            }
            s.schedule.due(now, BATCH_ENTRIES)
        };
        // Per destination, in due order, within the batch's byte bound.
        let mut batches: BTreeMap<(String, u32), Vec<Pending>> = BTreeMap::new();
        let mut bytes = 0;
        let waiting = std::time::Instant::now();
        for p in due {
            let key = (p.topic.clone(), p.partition);
            if slot
                .borrow()
                .backoff
                .get(&key)
                .is_some_and(|&t| t > waiting)
            {
                continue;
            }
            if bytes > 0 && bytes + p.bytes > BATCH_BYTES {
                break;
            }
            bytes += p.bytes;
            batches.entry(key).or_default().push(p);
        }
        let mut done = Vec::new();
        for ((topic, partition), entries) in batches {
            match self.deliver(d, &topic, partition, &entries).await {
                Ok(()) => {
                    if crate::failpoint::hit("delay-crash-after-deliver") {
                        // As a kill -9 between the delivery and its `done` record.
                        tracing::error!("failpoint delay-crash-after-deliver");
                        std::process::abort();
                    }
                    done.extend(entries.iter().map(|p| p.id));
                }
                Err(
                    e @ (ShardError::UnknownTopic { .. } | ShardError::UnknownPartition { .. }),
                ) => {
                    tracing::warn!(topic, partition, error = %e, dropped = entries.len(), "delayed records dropped: their destination is gone");
                    done.extend(entries.iter().map(|p| p.id));
                }
                Err(e) => {
                    tracing::warn!(topic, partition, error = %e, "delayed delivery failed; retrying");
                    slot.borrow_mut()
                        .backoff
                        .insert((topic, partition), std::time::Instant::now() + RETRY_AFTER);
                }
            }
        }
        if done.is_empty() {
            return Ok(());
        }
        let mut run = Vec::new();
        delay::encode_done(&done, &mut run).map_err(|e| invalid(e.to_string()))?;
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(run.len());
        aligned.extend_from_slice(&run);
        // Written is enough: a lost `done` makes the entry look for itself in its destination.
        self.append(DELAYS_TOPIC, d, &mut aligned, AckLevel::Written)?;
        let mut s = slot.borrow_mut();
        for id in done {
            s.schedule.remove(id);
        }
        s.backoff.retain(|_, t| *t > std::time::Instant::now());
        let keep_from = s.schedule.low_watermark();
        drop(s);
        let part = self.partition(DELAYS_TOPIC, d)?;
        let mut log = part.log.borrow_mut();
        let below = keep_from.unwrap_or_else(|| log.next_offset());
        if let Err(e) = log.delete_below(below) {
            tracing::warn!(partition = d, error = %e, "delays segments not deleted");
        }
        Ok(())
    }

    /// Appends the runs of `entries` (one destination) durably, skipping the ones a crash left
    /// delivered already.
    async fn deliver(
        self: &Rc<Self>,
        d: u32,
        topic: &str,
        partition: u32,
        entries: &[Pending],
    ) -> Result<(), ShardError> {
        let part = self.partition(DELAYS_TOPIC, d)?;
        let mut runs: Vec<(u64, Vec<u8>)> = Vec::with_capacity(entries.len());
        {
            let log = part.log.borrow();
            for p in entries {
                let slice = log
                    .read(p.id, 1)
                    .map_err(|e| super::ops::storage(DELAYS_TOPIC, d, e))?;
                let found = Records::new(slice.bytes(), record::ARCHIVE_LEN_MAX)
                    .filter_map(Result::ok)
                    .find(|r| r.offset() == p.id)
                    .map(|r| delay::decode(&r));
                match found {
                    Some(Ok(Stored::Scheduled { run, .. })) => runs.push((p.id, run)),
                    other => {
                        tracing::error!(partition = d, id = p.id, found = ?other.map(|r| r.map(drop)), "delayed entry unreadable; dropped");
                    }
                }
            }
        }
        let unverified: Vec<u64> = entries
            .iter()
            .filter(|p| p.unverified)
            .map(|p| p.id)
            .collect();
        let owner = self.owner(topic, partition);
        let from_ms = entries
            .iter()
            .filter(|p| p.unverified)
            .map(|p| p.due_ms)
            .min()
            .unwrap_or(i64::MAX)
            .saturating_sub(CLOCK_SLACK_MS);
        let (t, pid) = (topic.to_string(), DELAY_PRODUCER_ID_BASE | u64::from(d));
        let timeout_ms = 30_000;
        let appended = self
            .on_owner(owner, move |s| {
                let s = s.clone();
                async move {
                    let delivered = if unverified.is_empty() {
                        HashSet::new()
                    } else {
                        s.find_sequences(&t, partition, from_ms, pid, &unverified)?
                    };
                    let mut run = rkyv::util::AlignedVec::<16>::new();
                    for (id, r) in &runs {
                        if !delivered.contains(id) {
                            run.extend_from_slice(r);
                        }
                    }
                    if run.is_empty() {
                        return Ok(());
                    }
                    let appending = s.append(&t, partition, &mut run, AckLevel::Durable)?;
                    appending.complete(timeout_ms).await.map(drop)
                }
            })
            .await;
        appended.and_then(|r| r)
    }

    /// Which of `sequences` of producer `pid` a local partition holds among its records appended
    /// from `from_ms` on.
    pub fn find_sequences(
        &self,
        topic: &str,
        partition: u32,
        from_ms: i64,
        pid: u64,
        sequences: &[u64],
    ) -> Result<HashSet<u64>, ShardError> {
        let wanted: HashSet<u64> = sequences.iter().copied().collect();
        let mut found = HashSet::new();
        let part = self.partition(topic, partition)?;
        let log = part.log.borrow();
        let mut offset = log
            .offset_at_time(from_ms)
            .map_err(|e| super::ops::storage(topic, partition, e))?;
        while offset < log.next_offset() && found.len() < wanted.len() {
            let slice = log
                .read(offset, 1 << 20)
                .map_err(|e| super::ops::storage(topic, partition, e))?;
            for r in Records::new(slice.bytes(), record::ARCHIVE_LEN_MAX).flatten() {
                let Ok(m) = r.message() else { continue };
                let seq = m.sequence.to_native();
                if m.producer_id.to_native() == pid && wanted.contains(&seq) {
                    found.insert(seq);
                }
            }
            if slice.next_offset <= offset {
                break;
            }
            offset = slice.next_offset;
        }
        Ok(found)
    }
}
