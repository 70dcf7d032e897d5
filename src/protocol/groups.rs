//! Bodies of the consumer-group apis (keys 10 to 17): JoinGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, DescribeGroup, ListGroups, DeleteGroup. docs/protocol.md §6.11 on
//! draws them byte by byte; `messages.rs` calls these from its request and response matches.

use super::wire::{Reader, Writer};
use super::{DecodeError, ErrorCode};

/// `generation` of an OffsetCommit that comes from no member (an administrator's reset of a
/// group with no members).
pub const NO_GENERATION: u32 = u32::MAX;

/// Partitions of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPartitions {
    /// Topic name.
    pub topic: String,
    /// Partition numbers, ascending.
    pub partitions: Vec<u32>,
}

/// A JoinGroup request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGroupRequest {
    /// The group.
    pub group: String,
    /// The member's id from an earlier join, or empty to join as a new member.
    pub member_id: String,
    /// The member is removed when no heartbeat arrives for this long.
    pub session_timeout_ms: u32,
    /// How long a rebalance waits for the known members to join again.
    pub rebalance_timeout_ms: u32,
    /// The topics the member reads.
    pub topics: Vec<String>,
}

/// A JoinGroup response: the member's identity and assignment in the new generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGroupResponse {
    /// The generation the assignment belongs to.
    pub generation: u32,
    /// The member's id (send it in every later request).
    pub member_id: String,
    /// Members in this generation.
    pub members: u32,
    /// The partitions this member reads, by topic.
    pub assignment: Vec<TopicPartitions>,
}

/// One position to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOffset {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// The next offset to read (the offset after the last one processed).
    pub offset: u64,
    /// Free-form, returned by OffsetFetch (the Kafka client stores strings there).
    pub metadata: String,
}

/// An OffsetCommit request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitRequest {
    /// The group.
    pub group: String,
    /// The committing member; empty for an administrator's commit to a group with no members.
    pub member_id: String,
    /// The member's generation; [`NO_GENERATION`] with an empty member id.
    pub generation: u32,
    /// The positions.
    pub offsets: Vec<CommitOffset>,
}

/// One partition's outcome in an OffsetCommit response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitResult {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// Outcome.
    pub error: ErrorCode,
}

/// One partition's committed position in an OffsetFetch response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedOffset {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// Outcome.
    pub error: ErrorCode,
    /// The committed offset, if the group committed one.
    pub offset: Option<u64>,
    /// The metadata committed with it.
    pub metadata: String,
}

/// Where a group is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GroupState {
    /// No members (offsets may be committed).
    Empty = 0,
    /// Waiting for members to join the next generation.
    Rebalancing = 1,
    /// Every member has its assignment.
    Stable = 2,
}

/// One member in a DescribeGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    /// The member's id.
    pub member_id: String,
    /// The client id it gave in its handshake.
    pub client_id: String,
    /// What it reads.
    pub assignment: Vec<TopicPartitions>,
}

/// One partition's position and lag in a DescribeGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// The committed offset, if any.
    pub committed: Option<u64>,
    /// The partition's log end (the offset the next record will get).
    pub log_end: u64,
    /// Records not yet committed: `log_end - committed` (the whole log when nothing is).
    pub lag: u64,
}

/// A DescribeGroup response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// The group.
    pub group: String,
    /// Its state.
    pub state: GroupState,
    /// Its generation.
    pub generation: u32,
    /// Its members.
    pub members: Vec<MemberDescription>,
    /// Every partition of its topics, with positions and lag.
    pub partitions: Vec<PartitionLag>,
}

/// One group in a ListGroups response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    /// The group.
    pub group: String,
    /// Its state.
    pub state: GroupState,
    /// Live members.
    pub members: u32,
}

fn state(v: u8, position: usize) -> Result<GroupState, DecodeError> {
    match v {
        0 => Ok(GroupState::Empty),
        1 => Ok(GroupState::Rebalancing),
        2 => Ok(GroupState::Stable),
        _ => Err(DecodeError::Invalid {
            position,
            what: "group state is not 0, 1 or 2",
        }),
    }
}

pub(super) fn write_assignment(w: &mut Writer<'_>, a: &[TopicPartitions]) {
    w.count(a.len());
    for t in a {
        w.str(&t.topic);
        w.count(t.partitions.len());
        for p in &t.partitions {
            w.u32(*p);
        }
    }
}

pub(super) fn read_assignment(r: &mut Reader<'_>) -> Result<Vec<TopicPartitions>, DecodeError> {
    let n = r.count(2 + 4)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let topic = r.string()?;
        let m = r.count(4)?;
        let mut partitions = Vec::with_capacity(m);
        for _ in 0..m {
            partitions.push(r.u32()?);
        }
        out.push(TopicPartitions { topic, partitions });
    }
    Ok(out)
}

pub(super) fn write_join_request(w: &mut Writer<'_>, j: &JoinGroupRequest) {
    w.str(&j.group);
    w.str(&j.member_id);
    w.u32(j.session_timeout_ms);
    w.u32(j.rebalance_timeout_ms);
    w.count(j.topics.len());
    for t in &j.topics {
        w.str(t);
    }
}

pub(super) fn read_join_request(
    r: &mut Reader<'_>,
    count: impl Fn(&mut Reader<'_>, usize) -> Result<usize, DecodeError>,
) -> Result<JoinGroupRequest, DecodeError> {
    let group = r.string()?;
    let member_id = r.string()?;
    let session_timeout_ms = r.u32()?;
    let rebalance_timeout_ms = r.u32()?;
    let n = count(r, 2)?;
    let mut topics = Vec::with_capacity(n);
    for _ in 0..n {
        topics.push(r.string()?);
    }
    Ok(JoinGroupRequest {
        group,
        member_id,
        session_timeout_ms,
        rebalance_timeout_ms,
        topics,
    })
}

pub(super) fn write_commit_request(w: &mut Writer<'_>, c: &OffsetCommitRequest) {
    w.str(&c.group);
    w.str(&c.member_id);
    w.u32(c.generation);
    w.count(c.offsets.len());
    for o in &c.offsets {
        w.str(&o.topic);
        w.u32(o.partition);
        w.u64(o.offset);
        w.str(&o.metadata);
    }
}

pub(super) fn read_commit_request(
    r: &mut Reader<'_>,
    count: impl Fn(&mut Reader<'_>, usize) -> Result<usize, DecodeError>,
) -> Result<OffsetCommitRequest, DecodeError> {
    let group = r.string()?;
    let member_id = r.string()?;
    let generation = r.u32()?;
    let n = count(r, 2 + 4 + 8 + 2)?;
    let mut offsets = Vec::with_capacity(n);
    for _ in 0..n {
        offsets.push(CommitOffset {
            topic: r.string()?,
            partition: r.u32()?,
            offset: r.u64()?,
            metadata: r.string()?,
        });
    }
    Ok(OffsetCommitRequest {
        group,
        member_id,
        generation,
        offsets,
    })
}

pub(super) fn write_partitions(w: &mut Writer<'_>, p: &[(String, u32)]) {
    w.count(p.len());
    for (t, n) in p {
        w.str(t);
        w.u32(*n);
    }
}

pub(super) fn read_partitions(
    r: &mut Reader<'_>,
    count: impl Fn(&mut Reader<'_>, usize) -> Result<usize, DecodeError>,
) -> Result<Vec<(String, u32)>, DecodeError> {
    let n = count(r, 2 + 4)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push((r.string()?, r.u32()?));
    }
    Ok(out)
}

pub(super) fn write_join_response(w: &mut Writer<'_>, j: &JoinGroupResponse) {
    w.u32(j.generation);
    w.str(&j.member_id);
    w.u32(j.members);
    write_assignment(w, &j.assignment);
}

pub(super) fn read_join_response(r: &mut Reader<'_>) -> Result<JoinGroupResponse, DecodeError> {
    Ok(JoinGroupResponse {
        generation: r.u32()?,
        member_id: r.string()?,
        members: r.u32()?,
        assignment: read_assignment(r)?,
    })
}

pub(super) fn write_commit_results(w: &mut Writer<'_>, results: &[CommitResult]) {
    w.count(results.len());
    for c in results {
        w.str(&c.topic);
        w.u32(c.partition);
        w.u16(c.error as u16);
    }
}

pub(super) fn read_commit_results(r: &mut Reader<'_>) -> Result<Vec<CommitResult>, DecodeError> {
    let n = r.count(2 + 4 + 2)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(CommitResult {
            topic: r.string()?,
            partition: r.u32()?,
            error: ErrorCode::from_u16(r.u16()?),
        });
    }
    Ok(out)
}

pub(super) fn write_fetched_offsets(w: &mut Writer<'_>, offsets: &[FetchedOffset]) {
    w.count(offsets.len());
    for o in offsets {
        w.str(&o.topic);
        w.u32(o.partition);
        w.u16(o.error as u16);
        w.opt_u64(o.offset);
        w.str(&o.metadata);
    }
}

pub(super) fn read_fetched_offsets(r: &mut Reader<'_>) -> Result<Vec<FetchedOffset>, DecodeError> {
    let n = r.count(2 + 4 + 2 + 1 + 2)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(FetchedOffset {
            topic: r.string()?,
            partition: r.u32()?,
            error: ErrorCode::from_u16(r.u16()?),
            offset: r.opt_u64()?,
            metadata: r.string()?,
        });
    }
    Ok(out)
}

pub(super) fn write_description(w: &mut Writer<'_>, d: &GroupDescription) {
    w.str(&d.group);
    w.u8(d.state as u8);
    w.u32(d.generation);
    w.count(d.members.len());
    for m in &d.members {
        w.str(&m.member_id);
        w.str(&m.client_id);
        write_assignment(w, &m.assignment);
    }
    w.count(d.partitions.len());
    for p in &d.partitions {
        w.str(&p.topic);
        w.u32(p.partition);
        w.opt_u64(p.committed);
        w.u64(p.log_end);
        w.u64(p.lag);
    }
}

pub(super) fn read_description(r: &mut Reader<'_>) -> Result<GroupDescription, DecodeError> {
    let group = r.string()?;
    let at = r.position();
    let state = state(r.u8()?, at)?;
    let generation = r.u32()?;
    let n = r.count(2 + 2 + 4)?;
    let mut members = Vec::with_capacity(n);
    for _ in 0..n {
        members.push(MemberDescription {
            member_id: r.string()?,
            client_id: r.string()?,
            assignment: read_assignment(r)?,
        });
    }
    let n = r.count(2 + 4 + 1 + 16)?;
    let mut partitions = Vec::with_capacity(n);
    for _ in 0..n {
        partitions.push(PartitionLag {
            topic: r.string()?,
            partition: r.u32()?,
            committed: r.opt_u64()?,
            log_end: r.u64()?,
            lag: r.u64()?,
        });
    }
    Ok(GroupDescription {
        group,
        state,
        generation,
        members,
        partitions,
    })
}

pub(super) fn write_summaries(w: &mut Writer<'_>, groups: &[GroupSummary]) {
    w.count(groups.len());
    for g in groups {
        w.str(&g.group);
        w.u8(g.state as u8);
        w.u32(g.members);
    }
}

pub(super) fn read_summaries(r: &mut Reader<'_>) -> Result<Vec<GroupSummary>, DecodeError> {
    let n = r.count(2 + 1 + 4)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let group = r.string()?;
        let at = r.position();
        out.push(GroupSummary {
            group,
            state: state(r.u8()?, at)?,
            members: r.u32()?,
        });
    }
    Ok(out)
}
