//! Group coordination on the shard that owns a partition of the offsets topic.
//!
//! Each partition `p` of [`OFFSETS_TOPIC`] holds the groups whose name hashes to it
//! ([`coordinator_partition`]); its owner shard keeps their [`Coordinator`] state, loaded on first
//! use by replaying the partition's records, and appends their commits to it. A timer task per
//! loaded partition expires sessions and settles rebalances; a join waits on a one-shot channel
//! until its rebalance settles, and a Kafka member's SyncGroup until its leader hands in the
//! assignment (or the generation is abandoned).
//!
//! Commits are acknowledged once durable. Every [`SNAPSHOT_EVERY_BYTES`] of commit records the
//! coordinator appends a snapshot of all its positions, so retention of the offsets topic never
//! drops the latest state (its retention is several times that; see `catalog`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{AckLevel, Shard, ShardError};
use crate::group::classic::{Assignment, ClassicJoinRequest, SyncOutcome, Synced};
use crate::group::{
    self, store, Committed, Coordinator, GroupError, JoinOutcome, JoinRequest, Joined,
    TopicPartition, OFFSETS_TOPIC,
};
use crate::record::{self, Records};
use crate::runtime;
use crate::storage::Io;

/// Commit bytes between two snapshots of a coordinator's positions.
pub const SNAPSHOT_EVERY_BYTES: usize = 4 << 20;
/// How often a coordinator looks for expired sessions and rebalances to settle.
const TICK: Duration = Duration::from_millis(50);
/// Largest run of snapshot records appended at once.
const SNAPSHOT_RUN_BYTES: usize = 1 << 20;

/// The offsets partition coordinating `group`, of `partitions`.
pub fn coordinator_partition(group: &str, partitions: u32) -> u32 {
    super::fnv1a32(group.as_bytes()) % partitions.max(1)
}

type JoinReply = flume::Sender<Result<Joined, GroupError>>;
type SyncReply = flume::Sender<Result<Synced, GroupError>>;

/// One loaded offsets partition.
pub struct Slot {
    /// The groups.
    pub state: Coordinator,
    /// Joins waiting for their rebalance, by `(group, member)`.
    waiting: HashMap<(String, String), JoinReply>,
    /// Kafka members' SyncGroups waiting for their leader's, by `(group, member)`, with the
    /// generation they sync.
    syncing: HashMap<(String, String), (u32, SyncReply)>,
    /// Commit bytes since the last snapshot.
    since_snapshot: usize,
}

/// A join as the handler passes it.
#[derive(Debug, Clone)]
pub struct JoinArgs {
    /// The group.
    pub group: String,
    /// The member, empty for a new one.
    pub member_id: String,
    /// Its client id.
    pub client_id: String,
    /// What it reads.
    pub topics: Vec<String>,
    /// Its session timeout.
    pub session_timeout: Duration,
    /// Its rebalance timeout.
    pub rebalance_timeout: Duration,
    /// A Kafka classic-protocol member's protocols; `None` for a Levee member.
    pub classic: Option<ClassicArgs>,
}

/// What a Kafka classic-protocol join adds to [`JoinArgs`].
#[derive(Debug, Clone)]
pub struct ClassicArgs {
    /// The protocol type (`consumer`).
    pub protocol_type: String,
    /// Its protocols in order of preference, with metadata.
    pub protocols: Vec<(String, Vec<u8>)>,
    /// The client speaks KIP-394 (JoinGroup v4 and later).
    pub require_member_id: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl<I: Io> Shard<I> {
    /// The coordinator of offsets partition `p`, loaded (replayed) on first use.
    pub fn coordinator(self: &Rc<Self>, p: u32) -> Result<Rc<RefCell<Slot>>, ShardError> {
        if let Some(slot) = self.coordinators.borrow().get(&p) {
            return Ok(slot.clone());
        }
        let part = self.partition(OFFSETS_TOPIC, p)?;
        let partitions = offsets_partitions(&self.topics()).unwrap_or(1).max(1) as usize;
        let limits = group::Limits {
            members_per_group: self.config.group_members_max,
            groups: self.config.groups_max.div_ceil(partitions),
        };
        let mut slot = Slot {
            state: Coordinator::new(limits),
            waiting: HashMap::new(),
            syncing: HashMap::new(),
            since_snapshot: 0,
        };
        super::ops::replay(OFFSETS_TOPIC, p, &part.log.borrow(), 0, |r| {
            store::apply(&mut slot.state, r)
        })?;
        // A topic deleted while its forget records could not be written (a crash in between)
        // leaves offsets behind: drop them now (the next snapshot makes that durable).
        let topics = self.topics();
        let gone: Vec<(String, String)> = slot
            .state
            .groups()
            .flat_map(|g| {
                g.offsets
                    .keys()
                    .filter(|(t, _)| topics.get(t).is_none())
                    .map(|(t, _)| (g.name.clone(), t.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (g, t) in gone {
            tracing::info!(group = %g, topic = %t, "offsets on a deleted topic dropped");
            slot.state.apply_forget_topic(&g, &t);
        }
        for g in slot.state.groups() {
            for ((topic, partition), c) in &g.offsets {
                self.flow
                    .floors
                    .committed(&g.name, topic, *partition, c.offset);
            }
        }
        let slot = Rc::new(RefCell::new(slot));
        self.coordinators.borrow_mut().insert(p, slot.clone());
        let shard = self.clone();
        runtime::spawn_isolated("group coordinator", async move {
            while !shard.is_stopping() {
                runtime::sleep(TICK).await;
                shard.tick_groups(p);
            }
        });
        tracing::debug!(partition = p, "group coordinator loaded");
        Ok(slot)
    }

    fn partitions_of(&self) -> impl Fn(&str) -> u32 {
        let topics = self.topics();
        move |t: &str| topics.get(t).map_or(0, |m| m.partitions)
    }

    /// Expires sessions and settles rebalances of one coordinator partition.
    fn tick_groups(&self, p: u32) {
        let Some(slot) = self.coordinators.borrow().get(&p).cloned() else {
            return;
        };
        let now = Instant::now();
        let mut slot = slot.borrow_mut();
        for (group, member) in slot.state.expire(now) {
            tracing::info!(group, member, "group member's session expired");
        }
        let partitions_of = self.partitions_of();
        let settled = slot.state.settle(now, &partitions_of);
        deliver(&mut slot, settled);
    }

    /// Joins a group; resolves once the member's generation is settled.
    pub async fn group_join(self: &Rc<Self>, p: u32, args: JoinArgs) -> Result<Joined, ShardError> {
        let slot = self.coordinator(p)?;
        let now = Instant::now();
        let (tx, rx) = flume::bounded(1);
        {
            let mut slot = slot.borrow_mut();
            let outcome = match &args.classic {
                None => slot.state.join(
                    &JoinRequest {
                        group: &args.group,
                        member_id: &args.member_id,
                        client_id: &args.client_id,
                        topics: &args.topics,
                        session_timeout: args.session_timeout,
                        rebalance_timeout: args.rebalance_timeout,
                    },
                    now,
                ),
                Some(c) => slot.state.join_classic(
                    &ClassicJoinRequest {
                        group: &args.group,
                        member_id: &args.member_id,
                        require_member_id: c.require_member_id,
                        client_id: &args.client_id,
                        protocol_type: &c.protocol_type,
                        protocols: &c.protocols,
                        topics: &args.topics,
                        session_timeout: args.session_timeout,
                        rebalance_timeout: args.rebalance_timeout,
                    },
                    now,
                ),
            };
            match outcome.map_err(ShardError::Group)? {
                JoinOutcome::Done(joined) => return Ok(joined),
                JoinOutcome::Wait(member) => {
                    if let Some(old) = slot.waiting.insert((args.group.clone(), member), tx) {
                        // The same member joined twice: the older join learns it lost.
                        let _ = old.send(Err(GroupError::RebalanceInProgress {
                            group: args.group.clone(),
                        }));
                    }
                }
            }
            let partitions_of = self.partitions_of();
            let settled = slot.state.settle(now, &partitions_of);
            deliver(&mut slot, settled);
        }
        // The rebalance settles by its deadline: wait a little longer than that at most.
        let deadline = now + args.rebalance_timeout + group::INITIAL_REBALANCE_DELAY * 2;
        match runtime::until(deadline, rx.recv_async()).await {
            Some(Ok(result)) => result.map_err(ShardError::Group),
            _ => Err(ShardError::Group(GroupError::RebalanceInProgress {
                group: args.group,
            })),
        }
    }

    /// A Kafka member's SyncGroup: the leader's hands in the assignment; every member's
    /// resolves with its own once the leader's has (or with why it must join again).
    pub async fn group_sync(
        self: &Rc<Self>,
        p: u32,
        group: &str,
        member: &str,
        generation: u32,
        assignments: Vec<Assignment>,
        timeout: Duration,
    ) -> Result<Synced, ShardError> {
        let slot = self.coordinator(p)?;
        let (tx, rx) = flume::bounded(1);
        {
            let mut slot = slot.borrow_mut();
            let outcome = slot
                .state
                .sync(group, member, generation, assignments, Instant::now());
            match outcome.map_err(ShardError::Group)? {
                SyncOutcome::Done(synced) => {
                    deliver(&mut slot, Vec::new());
                    return Ok(synced);
                }
                SyncOutcome::Wait => {
                    let key = (group.to_string(), member.to_string());
                    if let Some((_, old)) = slot.syncing.insert(key, (generation, tx)) {
                        let _ = old.send(Err(GroupError::RebalanceInProgress {
                            group: group.to_string(),
                        }));
                    }
                }
            }
        }
        match runtime::until(Instant::now() + timeout, rx.recv_async()).await {
            Some(Ok(result)) => result.map_err(ShardError::Group),
            _ => {
                let key = (group.to_string(), member.to_string());
                slot.borrow_mut().syncing.remove(&key);
                Err(ShardError::Group(GroupError::RebalanceInProgress {
                    group: group.to_string(),
                }))
            }
        }
    }

    /// A heartbeat.
    pub fn group_heartbeat(
        self: &Rc<Self>,
        p: u32,
        group: &str,
        member: &str,
        generation: u32,
    ) -> Result<(), ShardError> {
        let slot = self.coordinator(p)?;
        let result = slot
            .borrow_mut()
            .state
            .heartbeat(group, member, generation, Instant::now());
        result.map_err(ShardError::Group)
    }

    /// A member leaves.
    pub fn group_leave(
        self: &Rc<Self>,
        p: u32,
        group: &str,
        member: &str,
    ) -> Result<(), ShardError> {
        let slot = self.coordinator(p)?;
        let now = Instant::now();
        let mut slot = slot.borrow_mut();
        slot.state
            .leave(group, member, now)
            .map_err(ShardError::Group)?;
        let partitions_of = self.partitions_of();
        let settled = slot.state.settle(now, &partitions_of);
        deliver(&mut slot, settled);
        Ok(())
    }

    /// Commits positions, durably, if the member may.
    pub async fn group_commit(
        self: &Rc<Self>,
        p: u32,
        group: &str,
        member: &str,
        generation: u32,
        offsets: Vec<(TopicPartition, u64, String)>,
        timeout_ms: u32,
    ) -> Result<(), ShardError> {
        let slot = self.coordinator(p)?;
        slot.borrow()
            .state
            .check_commit(group, member, generation)
            .map_err(ShardError::Group)?;
        let at = now_ms();
        let committed: Vec<(TopicPartition, Committed)> = offsets
            .into_iter()
            .map(|(tp, offset, metadata)| {
                let c = Committed {
                    offset,
                    metadata,
                    timestamp_ms: at,
                };
                (tp, c)
            })
            .collect();
        let mut run = Vec::new();
        store::encode_commit(group, &committed, &mut run).map_err(|e| invalid(e.to_string()))?;
        self.append_internal(p, run, timeout_ms).await?;
        self.publish_floors(group, &committed);
        slot.borrow_mut().state.apply_commit(group, committed);
        Ok(())
    }

    /// Commits positions the broker keeps for a group itself (its dead-letter replay cursor),
    /// durably, whatever its members.
    pub async fn group_commit_own(
        self: &Rc<Self>,
        p: u32,
        group: &str,
        offsets: Vec<(TopicPartition, u64)>,
    ) -> Result<(), ShardError> {
        let slot = self.coordinator(p)?;
        let at = now_ms();
        let committed: Vec<(TopicPartition, Committed)> = offsets
            .into_iter()
            .map(|(tp, offset)| {
                let c = Committed {
                    offset,
                    metadata: String::new(),
                    timestamp_ms: at,
                };
                (tp, c)
            })
            .collect();
        let mut run = Vec::new();
        store::encode_commit(group, &committed, &mut run).map_err(|e| invalid(e.to_string()))?;
        self.append_internal(p, run, 30_000).await?;
        self.publish_floors(group, &committed);
        slot.borrow_mut().state.apply_commit(group, committed);
        Ok(())
    }

    /// Makes the members of `group` join again (its retry topic appeared).
    pub fn group_rebalance(self: &Rc<Self>, p: u32, group: &str) -> Result<(), ShardError> {
        let slot = self.coordinator(p)?;
        slot.borrow_mut().state.rebalance(group, Instant::now());
        Ok(())
    }

    /// Deletes a group with no members, durably.
    pub async fn group_delete(self: &Rc<Self>, p: u32, group: &str) -> Result<(), ShardError> {
        let slot = self.coordinator(p)?;
        slot.borrow()
            .state
            .check_delete(group)
            .map_err(ShardError::Group)?;
        let mut run = Vec::new();
        store::encode_delete(group, &mut run).map_err(|e| invalid(e.to_string()))?;
        self.append_internal(p, run, 30_000).await?;
        slot.borrow_mut().state.apply_delete(group);
        self.flow.floors.group_deleted(group);
        Ok(())
    }

    /// Drops every group's offsets on the deleted `topic` held by coordinator `p`, durably, so
    /// that a topic created again under the name starts with no commits and no commit floors.
    pub async fn group_forget_topic(
        self: &Rc<Self>,
        p: u32,
        topic: &str,
    ) -> Result<(), ShardError> {
        let slot = self.coordinator(p)?;
        let groups = slot.borrow().state.groups_with_offsets_on(topic);
        if groups.is_empty() {
            return Ok(());
        }
        let mut run = Vec::new();
        for g in &groups {
            store::encode_forget_topic(g, topic, &mut run).map_err(|e| invalid(e.to_string()))?;
        }
        self.append_internal(p, run, 30_000).await?;
        let mut slot = slot.borrow_mut();
        for g in &groups {
            slot.state.apply_forget_topic(g, topic);
        }
        drop(slot);
        self.flow.floors.topic_deleted(topic);
        Ok(())
    }

    /// Durable commits become the partitions' commit floors (flow control reads them).
    fn publish_floors(&self, group: &str, committed: &[(TopicPartition, Committed)]) {
        for ((topic, partition), c) in committed {
            self.flow
                .floors
                .committed(group, topic, *partition, c.offset);
        }
    }

    /// Loads every coordinator this shard owns, so that the commit floors of all groups are
    /// known before the first produce after a start.
    pub fn load_coordinators(self: &Rc<Self>) {
        let Some(n) = offsets_partitions(&self.topics()) else {
            return;
        };
        for p in (0..n).filter(|&p| self.owner(OFFSETS_TOPIC, p) == self.id) {
            if let Err(e) = self.coordinator(p) {
                tracing::error!(partition = p, error = %e, "cannot load group coordinator");
            }
        }
    }

    /// Appends records to offsets partition `p`, durably; snapshots the coordinator when due.
    async fn append_internal(
        self: &Rc<Self>,
        p: u32,
        run: Vec<u8>,
        timeout_ms: u32,
    ) -> Result<(), ShardError> {
        let bytes = run.len();
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(run.len());
        aligned.extend_from_slice(&run);
        let appending = self.append(OFFSETS_TOPIC, p, &mut aligned, AckLevel::Durable)?;
        self.snapshot_if_due(p, bytes);
        appending.complete(timeout_ms).await.map(drop)
    }

    fn snapshot_if_due(self: &Rc<Self>, p: u32, appended: usize) {
        let Some(slot) = self.coordinators.borrow().get(&p).cloned() else {
            return;
        };
        let mut slot = slot.borrow_mut();
        slot.since_snapshot += appended;
        if slot.since_snapshot < SNAPSHOT_EVERY_BYTES {
            return;
        }
        slot.since_snapshot = 0;
        let mut run = Vec::new();
        if let Err(e) = store::encode_snapshot(&slot.state, &mut run) {
            tracing::error!(partition = p, error = %e, "offsets snapshot not encoded");
            return;
        }
        drop(slot);
        // In runs of whole records no larger than a segment can take.
        let mut at = 0;
        while at < run.len() {
            let mut end = at;
            for r in Records::new(&run[at..], record::ARCHIVE_LEN_MAX) {
                let Ok(r) = r else { break };
                if end > at && end - at + r.bytes.len() > SNAPSHOT_RUN_BYTES {
                    break;
                }
                end += r.bytes.len();
            }
            if end == at {
                break;
            }
            let mut chunk = rkyv::util::AlignedVec::<16>::with_capacity(end - at);
            chunk.extend_from_slice(&run[at..end]);
            if let Err(e) = self.append(OFFSETS_TOPIC, p, &mut chunk, AckLevel::Written) {
                tracing::error!(partition = p, error = %e, "offsets snapshot not appended");
                return;
            }
            at = end;
        }
        tracing::debug!(
            partition = p,
            bytes = run.len(),
            "offsets snapshot appended"
        );
    }
}

fn invalid(message: String) -> ShardError {
    ShardError::Group(GroupError::Invalid(message))
}

/// Answers the joins whose generation settled, and the SyncGroups whose leader handed in the
/// assignment or whose generation is gone.
fn deliver(slot: &mut Slot, settled: Vec<Joined>) {
    for joined in settled {
        if let Some(tx) = slot
            .waiting
            .remove(&(joined.group.clone(), joined.member_id.clone()))
        {
            let _ = tx.send(Ok(joined));
        }
    }
    if slot.syncing.is_empty() {
        return;
    }
    let Slot { state, syncing, .. } = slot;
    syncing.retain(|(group, member), (generation, tx)| {
        match state.sync_result(group, member, *generation) {
            None => !tx.is_disconnected(),
            Some(result) => {
                let answer = result.and_then(|o| match o {
                    SyncOutcome::Done(s) => Ok(s),
                    SyncOutcome::Wait => Err(GroupError::RebalanceInProgress {
                        group: group.clone(),
                    }),
                });
                let _ = tx.send(answer);
                false
            }
        }
    });
}

/// The number of partitions of the offsets topic, from a catalog snapshot.
pub fn offsets_partitions(topics: &Arc<crate::catalog::Topics>) -> Option<u32> {
    topics.get(OFFSETS_TOPIC).map(|m| m.partitions)
}
