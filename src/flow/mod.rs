//! Flow control: the policies that slow producers down instead of letting the broker's disk and
//! memory grow without bound.
//!
//! Owns: each partition's **commit floor** (the lowest offset any consumer group committed on
//! it, published by the group coordinators as commits become durable and read by the shard that
//! owns the partition), and the arithmetic of a **backlog** check: how many messages and bytes of
//! a partition its slowest group has not committed yet, against the topic's bound and policy
//! (docs/protocol.md §6.3, tuning.md "Flow control").
//!
//! Must not touch: logs, sockets or the wire. The shard measures its log and asks; the handler
//! turns the verdict into a response.

pub mod quota;

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::catalog::TopicMeta;
use crate::protocol::BacklogPolicy;

/// How long a producer throttled by a full `block` backlog is told to wait before sending to the
/// partition again.
pub const BACKLOG_THROTTLE_MS: u32 = 50;

/// The flow-control state all shards share.
#[derive(Debug, Default)]
pub struct Flow {
    /// What the consumer groups committed.
    pub floors: CommitFloors,
    /// Rate limits per client id and topic.
    pub quotas: quota::Quotas,
}

/// The offsets every consumer group committed, by partition: what the slowest group still has
/// to read. Shared by all shards; a commit takes the lock once per partition committed, an
/// append to a bounded topic once per block.
#[derive(Debug, Default)]
pub struct CommitFloors {
    by_partition: Mutex<HashMap<(String, u32), HashMap<String, u64>>>,
}

impl CommitFloors {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), HashMap<String, u64>>> {
        self.by_partition
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `group` committed `offset` on `topic`/`partition` (durably).
    pub fn committed(&self, group: &str, topic: &str, partition: u32, offset: u64) {
        let mut map = self.map();
        let groups = map.entry((topic.to_string(), partition)).or_default();
        match groups.get_mut(group) {
            Some(o) => *o = offset,
            None => {
                groups.insert(group.to_string(), offset);
            }
        }
    }

    /// `group` was deleted: it holds nothing back any more.
    pub fn group_deleted(&self, group: &str) {
        let mut map = self.map();
        map.retain(|_, groups| {
            groups.remove(group);
            !groups.is_empty()
        });
    }

    /// `topic` was deleted: its floors go with it (a topic created again under the name starts
    /// with none).
    pub fn topic_deleted(&self, topic: &str) {
        self.map().retain(|(t, _), _| t != topic);
    }

    /// The lowest offset committed on `topic`/`partition` by any group; `None` when no group
    /// committed there.
    pub fn floor(&self, topic: &str, partition: u32) -> Option<u64> {
        self.map()
            .get(&(topic.to_string(), partition))
            .and_then(|groups| groups.values().min().copied())
    }

    /// Every floor, for metrics and stats: `(topic, partition, group, offset)`.
    pub fn all(&self) -> Vec<(String, u32, String, u64)> {
        let map = self.map();
        let mut out: Vec<_> = map
            .iter()
            .flat_map(|((t, p), groups)| {
                groups
                    .iter()
                    .map(move |(g, o)| (t.clone(), *p, g.clone(), *o))
            })
            .collect();
        out.sort();
        out
    }
}

/// What a partition holds for its slowest group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Messages from the floor to the log end.
    pub messages: u64,
    /// Bytes from the floor to the log end, estimated in proportion within the segment holding
    /// the floor.
    pub bytes: u64,
    /// Where it starts: the slowest group's committed offset, or the log start.
    pub from: u64,
}

/// Measures a partition's backlog: from `floor` (or the log start when no group committed, or
/// when the floor is below it) to `next`. `segments` are the log's `(base, next, bytes)`, oldest
/// first.
pub fn backlog(
    floor: Option<u64>,
    earliest: u64,
    next: u64,
    segments: &[(u64, u64, usize)],
) -> Backlog {
    let from = floor.unwrap_or(earliest).clamp(earliest, next);
    let mut bytes = 0u64;
    for &(base, end, len) in segments {
        if end <= from {
            continue;
        }
        if base >= from || end == base {
            bytes += len as u64;
        } else {
            // The floor is inside this segment: count the share of its records above the floor.
            let share = (end - from) as f64 / (end - base) as f64;
            bytes += (len as f64 * share) as u64;
        }
    }
    Backlog {
        messages: next - from,
        bytes,
        from,
    }
}

/// What to do with a produce to a partition of `meta` whose backlog is `b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append.
    Room,
    /// Append, then delete the oldest segments until the backlog fits (`drop-oldest`).
    AppendAndDrop,
    /// Refuse for now: the producer waits (`block`).
    Throttle,
    /// Refuse: the producer fails fast (`reject`).
    Reject,
}

/// Whether `b` is at `meta`'s bound. A batch is taken while the backlog is below the bound, so
/// the bound can be passed by one batch.
pub fn is_full(meta: &TopicMeta, b: &Backlog) -> bool {
    meta.backlog_messages_max
        .is_some_and(|max| b.messages >= max)
        || meta.backlog_bytes_max.is_some_and(|max| b.bytes >= max)
}

/// The verdict for a produce to a partition of `meta` with backlog `b`.
pub fn verdict(meta: &TopicMeta, b: &Backlog) -> Verdict {
    if !meta.has_backlog_bound() {
        return Verdict::Room;
    }
    match meta.backlog_policy {
        BacklogPolicy::DropOldest => Verdict::AppendAndDrop,
        _ if !is_full(meta, b) => Verdict::Room,
        BacklogPolicy::Block => Verdict::Throttle,
        BacklogPolicy::Reject => Verdict::Reject,
    }
}

/// For `drop-oldest`: the size of a segment past which the active segment is rolled, so that
/// dropping the oldest segment frees about a quarter of the bound, not all of it.
pub fn drop_granule(meta: &TopicMeta) -> (Option<u64>, Option<u64>) {
    (
        meta.backlog_messages_max.map(|m| (m / 4).max(1)),
        meta.backlog_bytes_max.map(|b| (b / 4).max(1)),
    )
}

/// Whether retention must keep what the slowest group has not committed: a bounded topic under
/// `block` or `reject` (its bound already limits the disk it takes).
pub fn retention_keeps_uncommitted(meta: &TopicMeta) -> bool {
    meta.has_backlog_bound() && meta.backlog_policy != BacklogPolicy::DropOldest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Visibility;

    fn meta(messages: Option<u64>, bytes: Option<u64>, policy: BacklogPolicy) -> TopicMeta {
        TopicMeta {
            name: "t".into(),
            id: 1,
            partitions: 1,
            retention_bytes: None,
            retention_ms: None,
            visibility: Visibility::Written,
            backlog_messages_max: messages,
            backlog_bytes_max: bytes,
            backlog_policy: policy,
        }
    }

    #[test]
    fn given_groups_committing_the_floor_should_be_the_slowest_and_forget_deleted_groups() {
        let f = CommitFloors::default();
        assert_eq!(f.floor("t", 0), None);
        f.committed("a", "t", 0, 10);
        f.committed("b", "t", 0, 4);
        f.committed("a", "t", 1, 7);
        assert_eq!(f.floor("t", 0), Some(4));
        f.committed("b", "t", 0, 12);
        assert_eq!(f.floor("t", 0), Some(10));
        f.group_deleted("a");
        assert_eq!(f.floor("t", 0), Some(12));
        f.committed("b", "u", 0, 3);
        f.topic_deleted("u");
        assert_eq!(f.floor("u", 0), None);
        assert_eq!(f.floor("t", 1), None);
        assert_eq!(f.all(), vec![("t".into(), 0, "b".into(), 12)]);
    }

    #[test]
    fn given_a_floor_inside_a_segment_the_backlog_should_count_its_share() {
        let segments = [(0, 100, 1000), (100, 200, 1000), (200, 250, 500)];
        let b = backlog(Some(150), 0, 250, &segments);
        assert_eq!(b.messages, 100);
        assert_eq!(b.bytes, 500 + 500);
        let none = backlog(None, 100, 250, &segments[1..]);
        assert_eq!((none.messages, none.bytes, none.from), (150, 1500, 100));
        // A floor below the log start counts from the log start.
        assert_eq!(backlog(Some(3), 100, 250, &segments[1..]).from, 100);
    }

    #[test]
    fn given_each_policy_at_the_bound_should_give_its_verdict() {
        let full = Backlog {
            messages: 10,
            bytes: 1,
            from: 0,
        };
        let room = Backlog {
            messages: 9,
            bytes: 1,
            from: 0,
        };
        let m = |p| meta(Some(10), None, p);
        assert_eq!(verdict(&m(BacklogPolicy::Block), &room), Verdict::Room);
        assert_eq!(verdict(&m(BacklogPolicy::Block), &full), Verdict::Throttle);
        assert_eq!(verdict(&m(BacklogPolicy::Reject), &full), Verdict::Reject);
        assert_eq!(
            verdict(&m(BacklogPolicy::DropOldest), &full),
            Verdict::AppendAndDrop
        );
        assert_eq!(
            verdict(&meta(None, None, BacklogPolicy::Reject), &full),
            Verdict::Room
        );
        assert!(is_full(&meta(None, Some(1), BacklogPolicy::Block), &room));
        assert!(retention_keeps_uncommitted(&m(BacklogPolicy::Reject)));
        assert!(!retention_keeps_uncommitted(&m(BacklogPolicy::DropOldest)));
        assert!(!retention_keeps_uncommitted(&meta(
            None,
            None,
            BacklogPolicy::Block
        )));
    }
}
