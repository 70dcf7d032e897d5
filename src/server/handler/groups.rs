//! The consumer-group apis: each request goes, in one hop, to the shard coordinating its group
//! (the owner of the group's partition of the offsets topic), which runs it on the group's
//! [`crate::group::Coordinator`]. DescribeGroup then asks the partitions' owners for their log
//! ends, to report lag.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use super::{by_owner, shard_code, Req};
use crate::group::classic::{Assignment, Synced};
use crate::group::{self, GroupError, Joined, State, TopicPartition, OFFSETS_TOPIC};
use crate::protocol::{
    valid_group_name, CommitResult, ErrorCode, FetchedOffset, GroupDescription, GroupState,
    GroupSummary, JoinGroupRequest, JoinGroupResponse, MemberDescription, OffsetCommitRequest,
    PartitionLag, Response, TopicPartitions,
};
use crate::server::response::Outgoing;
use crate::server::Session;
use crate::shard::groups::{coordinator_partition, offsets_partitions, JoinArgs};
use crate::shard::{OffsetQuery, Shard, ShardError, ShardId};
use crate::storage::{Io, SegmentMap};

/// The wire code of a group rule's refusal.
pub(super) fn group_code(e: &GroupError) -> ErrorCode {
    match e {
        GroupError::UnknownMember { .. } => ErrorCode::UnknownMember,
        GroupError::IllegalGeneration { .. } => ErrorCode::IllegalGeneration,
        GroupError::RebalanceInProgress { .. } => ErrorCode::RebalanceInProgress,
        GroupError::NotEmpty { .. } => ErrorCode::GroupNotEmpty,
        GroupError::UnknownGroup(_) => ErrorCode::UnknownGroup,
        GroupError::Invalid(_) => ErrorCode::InvalidRequest,
        GroupError::Limit(_) => ErrorCode::LimitExceeded,
        // A Levee member cannot join a group of Kafka members (nor the reverse).
        GroupError::InconsistentProtocol { .. } => ErrorCode::InvalidRequest,
        GroupError::MemberIdRequired { .. } => ErrorCode::UnknownMember,
    }
}

/// The coordinator of `group`: its offsets partition and that partition's owner shard.
pub(super) fn coordinator<I: Io>(
    shard: &Shard<I>,
    group: &str,
) -> Result<(u32, ShardId), ShardError> {
    if !valid_group_name(group) {
        return Err(ShardError::Group(GroupError::Invalid(format!(
            "invalid group name '{group}': 1-200 characters of [A-Za-z0-9._-]"
        ))));
    }
    let n = offsets_partitions(&shard.topics()).ok_or_else(|| ShardError::UnknownTopic {
        topic: OFFSETS_TOPIC.to_string(),
    })?;
    let p = coordinator_partition(group, n);
    Ok((p, shard.owner(OFFSETS_TOPIC, p)))
}

fn fail<M: SegmentMap>(req: Req, e: &ShardError) -> Outgoing<M> {
    req.error(shard_code(e), &e.to_string())
}

fn grouped(assignment: &[TopicPartition]) -> Vec<TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (t, p) in assignment {
        by_topic.entry(t).or_default().push(*p);
    }
    by_topic
        .into_iter()
        .map(|(topic, mut partitions)| {
            partitions.sort_unstable();
            TopicPartitions {
                topic: topic.to_string(),
                partitions,
            }
        })
        .collect()
}

pub(super) async fn join<I: Io>(
    req: Req,
    shard: &Rc<Shard<I>>,
    session: &Session,
    j: JoinGroupRequest,
) -> Outgoing<I::Map> {
    let (p, owner) = match coordinator(shard, &j.group) {
        Ok(c) => c,
        Err(e) => return fail(req, &e),
    };
    let args = JoinArgs {
        group: j.group,
        member_id: j.member_id,
        client_id: session.client_id(),
        topics: j.topics,
        session_timeout: Duration::from_millis(j.session_timeout_ms as u64),
        rebalance_timeout: Duration::from_millis(
            (j.rebalance_timeout_ms as u64).clamp(1, group::SESSION_TIMEOUT_MS_MAX as u64),
        ),
        classic: None,
    };
    let joined = shard
        .on_owner(owner, move |s| {
            let s = s.clone();
            async move { s.group_join(p, args).await }
        })
        .await;
    match joined.and_then(|r| r) {
        Ok(j) => req.ok(&Response::JoinGroup(JoinGroupResponse {
            generation: j.generation,
            member_id: j.member_id,
            members: j.members,
            assignment: grouped(&j.assignment),
        })),
        Err(e) => fail(req, &e),
    }
}

/// A Kafka classic-protocol group operation (the Kafka front end's one path to group state).
#[derive(Debug)]
pub(crate) enum ClassicOp {
    /// JoinGroup.
    Join(JoinArgs),
    /// SyncGroup: the leader hands in `assignments`; a follower's is empty. Waits at most
    /// `timeout` for the leader's.
    Sync {
        /// The member.
        member: String,
        /// Its generation.
        generation: u32,
        /// Every member's assignment (the leader's sync).
        assignments: Vec<Assignment>,
        /// Longest wait.
        timeout: Duration,
    },
    /// Heartbeat.
    Heartbeat {
        /// The member.
        member: String,
        /// Its generation.
        generation: u32,
    },
    /// LeaveGroup of one member.
    Leave {
        /// The member.
        member: String,
    },
}

/// What a [`ClassicOp`] resolved to.
#[derive(Debug)]
pub(crate) enum ClassicDone {
    /// A settled generation.
    Joined(Joined),
    /// The member's assignment.
    Synced(Synced),
    /// A heartbeat or leave went through.
    Done,
}

/// Runs a classic-protocol operation on the coordinator of `group`, one hop away.
pub(crate) async fn classic<I: Io>(
    shard: &Rc<Shard<I>>,
    group: String,
    op: ClassicOp,
) -> Result<ClassicDone, ShardError> {
    let (p, owner) = coordinator(shard, &group)?;
    shard
        .on_owner(owner, move |s| {
            let s = s.clone();
            async move {
                match op {
                    ClassicOp::Join(args) => s.group_join(p, args).await.map(ClassicDone::Joined),
                    ClassicOp::Sync {
                        member,
                        generation,
                        assignments,
                        timeout,
                    } => s
                        .group_sync(p, &group, &member, generation, assignments, timeout)
                        .await
                        .map(ClassicDone::Synced),
                    ClassicOp::Heartbeat { member, generation } => s
                        .group_heartbeat(p, &group, &member, generation)
                        .map(|()| ClassicDone::Done),
                    ClassicOp::Leave { member } => s
                        .group_leave(p, &group, &member)
                        .map(|()| ClassicDone::Done),
                }
            }
        })
        .await
        .and_then(|r| r)
}

/// Runs `f` on the coordinator of `group` (its offsets partition is `f`'s second argument) and
/// answers with an empty body, or the error.
async fn done_on_coordinator<I, F, Fut>(
    req: Req,
    shard: &Rc<Shard<I>>,
    group: &str,
    f: F,
) -> Outgoing<I::Map>
where
    I: Io,
    F: FnOnce(Rc<Shard<I>>, u32) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), ShardError>> + 'static,
{
    let (p, owner) = match coordinator(shard, group) {
        Ok(c) => c,
        Err(e) => return fail(req, &e),
    };
    let done = shard.on_owner(owner, move |s| f(s.clone(), p)).await;
    match done.and_then(|r| r) {
        Ok(()) => req.ok(&Response::Done),
        Err(e) => fail(req, &e),
    }
}

pub(super) async fn heartbeat<I: Io>(
    req: Req,
    shard: &Rc<Shard<I>>,
    group: String,
    member: String,
    generation: u32,
) -> Outgoing<I::Map> {
    let name = group.clone();
    done_on_coordinator(req, shard, &name, move |s, p| {
        std::future::ready(s.group_heartbeat(p, &group, &member, generation))
    })
    .await
}

pub(super) async fn leave<I: Io>(
    req: Req,
    shard: &Rc<Shard<I>>,
    group: String,
    member: String,
) -> Outgoing<I::Map> {
    let name = group.clone();
    done_on_coordinator(req, shard, &name, move |s, p| {
        std::future::ready(s.group_leave(p, &group, &member))
    })
    .await
}

pub(super) async fn commit<I: Io>(
    req: Req,
    shard: &Rc<Shard<I>>,
    c: OffsetCommitRequest,
) -> Outgoing<I::Map> {
    let (p, owner) = match coordinator(shard, &c.group) {
        Ok(x) => x,
        Err(e) => return fail(req, &e),
    };
    // Positions of partitions that do not exist are refused one by one; the rest commit together.
    let topics = shard.topics();
    let mut results: Vec<CommitResult> = Vec::with_capacity(c.offsets.len());
    let mut valid = Vec::new();
    for o in &c.offsets {
        let error = match topics.get(&o.topic) {
            _ if o.metadata.len() > group::COMMIT_METADATA_BYTES_MAX => ErrorCode::LimitExceeded,
            None => ErrorCode::UnknownTopic,
            Some(m) if o.partition >= m.partitions => ErrorCode::UnknownPartition,
            Some(_) => {
                valid.push(((o.topic.clone(), o.partition), o.offset, o.metadata.clone()));
                ErrorCode::None
            }
        };
        results.push(CommitResult {
            topic: o.topic.clone(),
            partition: o.partition,
            error,
        });
    }
    if !valid.is_empty() {
        let (group, member, generation) = (c.group, c.member_id, c.generation);
        let done = shard
            .on_owner(owner, move |s| {
                let s = s.clone();
                async move {
                    s.group_commit(p, &group, &member, generation, valid, 30_000)
                        .await
                }
            })
            .await;
        if let Err(e) = done.and_then(|r| r) {
            // The whole commit was refused (fencing, storage): top level.
            return fail(req, &e);
        }
    }
    req.ok(&Response::OffsetCommit(results))
}

pub(super) async fn fetch_offsets<I: Io>(
    req: Req,
    shard: &Rc<Shard<I>>,
    group: String,
    partitions: Vec<(String, u32)>,
) -> Outgoing<I::Map> {
    let (p, owner) = match coordinator(shard, &group) {
        Ok(x) => x,
        Err(e) => return fail(req, &e),
    };
    let found = shard
        .on_owner(owner, move |s| {
            let out = s.coordinator(p).map(|slot| {
                let slot = slot.borrow();
                let offsets = slot.state.group(&group).map(|g| g.offsets.clone());
                let offsets = offsets.unwrap_or_default();
                if partitions.is_empty() {
                    offsets.into_iter().map(|(tp, c)| (tp, Some(c))).collect()
                } else {
                    partitions
                        .into_iter()
                        .map(|tp| {
                            let c = offsets.get(&tp).cloned();
                            (tp, c)
                        })
                        .collect::<Vec<_>>()
                }
            });
            std::future::ready(out)
        })
        .await;
    match found.and_then(|r| r) {
        Ok(list) => req.ok(&Response::OffsetFetch(
            list.into_iter()
                .map(|((topic, partition), c)| FetchedOffset {
                    topic,
                    partition,
                    error: ErrorCode::None,
                    offset: c.as_ref().map(|c| c.offset),
                    metadata: c.map(|c| c.metadata).unwrap_or_default(),
                })
                .collect(),
        )),
        Err(e) => fail(req, &e),
    }
}

fn wire_state(s: State) -> GroupState {
    match s {
        State::Empty => GroupState::Empty,
        State::Rebalancing | State::AwaitingSync => GroupState::Rebalancing,
        State::Stable => GroupState::Stable,
    }
}

pub(super) async fn describe<I: Io>(
    req: Req,
    shard: &Rc<Shard<I>>,
    group: String,
) -> Outgoing<I::Map> {
    let (p, owner) = match coordinator(shard, &group) {
        Ok(x) => x,
        Err(e) => return fail(req, &e),
    };
    let name = group.clone();
    let view = shard
        .on_owner(owner, move |s| {
            let out = s.coordinator(p).map(|slot| {
                slot.borrow().state.group(&name).map(|g| {
                    let members: Vec<(String, String, Vec<TopicPartition>, Vec<String>)> = g
                        .members
                        .values()
                        .map(|m| {
                            let (id, client) = (m.id.clone(), m.client_id.clone());
                            (id, client, m.assignment.clone(), m.topics.clone())
                        })
                        .collect();
                    (g.state, g.generation, members, g.offsets.clone())
                })
            });
            std::future::ready(out)
        })
        .await;
    let (state, generation, members, offsets) = match view.and_then(|r| r) {
        Ok(Some(v)) => v,
        Ok(None) => {
            let e = ShardError::Group(GroupError::UnknownGroup(group));
            return fail(req, &e);
        }
        Err(e) => return fail(req, &e),
    };
    // Every partition of the topics it reads or committed for.
    let topics = shard.topics();
    let names: BTreeSet<String> = members
        .iter()
        .flat_map(|m| m.3.iter().cloned())
        .chain(offsets.keys().map(|(t, _)| t.clone()))
        .collect();
    let partitions: Vec<TopicPartition> = names
        .iter()
        .flat_map(|t| {
            let n = topics.get(t).map_or(0, |m| m.partitions);
            (0..n).map(move |p| (t.clone(), p))
        })
        .collect();
    let ends = log_ends(shard, &partitions).await;
    let lags = partitions
        .into_iter()
        .zip(ends)
        .map(|((topic, partition), (earliest, end))| {
            let committed = offsets.get(&(topic.clone(), partition)).map(|c| c.offset);
            let from = committed.unwrap_or(earliest).min(end);
            PartitionLag {
                topic,
                partition,
                committed,
                log_end: end,
                lag: end - from,
            }
        })
        .collect();
    req.ok(&Response::DescribeGroup(GroupDescription {
        group,
        state: wire_state(state),
        generation,
        members: members
            .into_iter()
            .map(|(member_id, client_id, assignment, _)| MemberDescription {
                member_id,
                client_id,
                assignment: grouped(&assignment),
            })
            .collect(),
        partitions: lags,
    }))
}

/// `(earliest, log end)` of each partition, one hop per owner (zeros where a partition cannot
/// be read).
async fn log_ends<I: Io>(shard: &Rc<Shard<I>>, partitions: &[TopicPartition]) -> Vec<(u64, u64)> {
    let mut out = vec![(0, 0); partitions.len()];
    let groups = by_owner(shard, partitions.iter().map(|(t, p)| (t.as_str(), *p)));
    for (owner, idxs) in groups {
        let asked: Vec<(usize, String, u32)> = idxs
            .iter()
            .map(|&i| (i, partitions[i].0.clone(), partitions[i].1))
            .collect();
        let found = shard
            .on_owner(owner, move |s| {
                let found: Vec<(usize, u64, u64)> = asked
                    .into_iter()
                    .map(|(i, t, p)| {
                        let earliest = s.list_offset(&t, p, OffsetQuery::Earliest).unwrap_or(0);
                        let end = s.list_offset(&t, p, OffsetQuery::Latest).unwrap_or(0);
                        (i, earliest, end)
                    })
                    .collect();
                std::future::ready(found)
            })
            .await;
        for (i, earliest, end) in found.unwrap_or_default() {
            out[i] = (earliest, end);
        }
    }
    out
}

pub(super) async fn list<I: Io>(req: Req, shard: &Rc<Shard<I>>) -> Outgoing<I::Map> {
    let Some(n) = offsets_partitions(&shard.topics()) else {
        return req.ok(&Response::ListGroups(Vec::new()));
    };
    let owners = by_owner(shard, (0..n).map(|p| (OFFSETS_TOPIC, p)));
    let mut all = Vec::new();
    for (owner, ps) in owners {
        let found = shard
            .on_owner(owner, move |s| {
                let mut out = Vec::new();
                for p in ps {
                    let Ok(slot) = s.coordinator(p as u32) else {
                        continue;
                    };
                    for g in slot.borrow().state.groups() {
                        out.push(GroupSummary {
                            group: g.name.clone(),
                            state: wire_state(g.state),
                            members: g.members.len() as u32,
                        });
                    }
                }
                std::future::ready(out)
            })
            .await;
        all.extend(found.unwrap_or_default());
    }
    all.sort_by(|a, b| a.group.cmp(&b.group));
    req.ok(&Response::ListGroups(all))
}

pub(super) async fn delete<I: Io>(
    req: Req,
    shard: &Rc<Shard<I>>,
    group: String,
) -> Outgoing<I::Map> {
    let name = group.clone();
    done_on_coordinator(req, shard, &name, move |s, p| async move {
        s.group_delete(p, &group).await
    })
    .await
}
