//! Consumer groups: membership, generations, assignment and committed offsets, as a state
//! machine with no I/O and no clock of its own (time comes in as arguments), so that it is tested
//! alone and a later Kafka front end can drive the same coordinator.
//!
//! A group lives on one coordinator: partition `fnv1a32(group) mod N` of the internal topic
//! [`OFFSETS_TOPIC`], whose owner shard holds the group's [`Coordinator`] state and appends its
//! commits to that partition's log ([`store`]). A restart replays the log.
//!
//! Membership, Levee's own protocol (the broker assigns):
//! - `JoinGroup` adds or refreshes a member and starts a rebalance when membership or
//!   subscriptions change. A rebalance waits until every member of the group has joined again (or
//!   the rebalance timeout drops those that did not), then opens a new **generation**: the
//!   broker computes the assignment ([`assign`]: each partition to exactly one member, balanced,
//!   sticky) and answers every waiting join with its member's share.
//! - `Heartbeat` keeps a member alive and tells it, with `RebalanceInProgress`, to join again.
//!   A member without a heartbeat for its session timeout is removed.
//! - A request from an older generation is fenced with `IllegalGeneration`, from an unknown
//!   member with `UnknownMember`: a member that lost its partitions cannot commit for them.
//!
//! The Kafka classic protocol (the group leader computes the assignment; [`classic`]) maps onto
//! the same state: members, generations, sessions and fencing are the same; only who computes
//! the assignment differs. A settled generation of a classic group waits in
//! [`State::AwaitingSync`] until its leader hands in every member's assignment. One group has
//! members of one protocol at a time.
//!
//! This module owns group state and its rules. It must not know about sockets, the runtime or
//! the storage engine: the shard persists what [`store`] encodes.

pub mod assign;
pub mod classic;
pub mod retry;
pub mod store;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The internal topic holding committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// How long a rebalance of an empty group waits for more members before it settles, so that
/// members started together get one assignment rather than one each in turn.
pub const INITIAL_REBALANCE_DELAY: Duration = Duration::from_millis(300);
/// Bounds on what a member may ask for.
pub const SESSION_TIMEOUT_MS_MIN: u32 = 500;
/// See [`SESSION_TIMEOUT_MS_MIN`].
pub const SESSION_TIMEOUT_MS_MAX: u32 = 300_000;

/// Why a group operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The member is not in the group (left, expired, or never joined).
    #[error("member '{member}' is not in group '{group}'")]
    UnknownMember {
        /// The group.
        group: String,
        /// The member.
        member: String,
    },
    /// The member's generation is not the group's: it was fenced.
    #[error("generation {given} of group '{group}' is stale (current {current})")]
    IllegalGeneration {
        /// The group.
        group: String,
        /// What the member sent.
        given: u32,
        /// The group's.
        current: u32,
    },
    /// The group is rebalancing: the member must join again.
    #[error("group '{group}' is rebalancing: join again")]
    RebalanceInProgress {
        /// The group.
        group: String,
    },
    /// The group has members: it cannot be reset or deleted.
    #[error("group '{group}' has {members} live member(s)")]
    NotEmpty {
        /// The group.
        group: String,
        /// How many.
        members: usize,
    },
    /// No such group.
    #[error("unknown group '{0}'")]
    UnknownGroup(String),
    /// A value out of range (name, timeout, topics).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A bound of the coordinator ([`Limits`]) would be passed.
    #[error("{0}")]
    Limit(String),
    /// The member's protocol (Levee's, or a Kafka protocol type and assignors) has nothing in
    /// common with the group's members'.
    #[error("group '{group}' has members of another protocol or assignors")]
    InconsistentProtocol {
        /// The group.
        group: String,
    },
    /// A Kafka member joined without an id: it must join again with this one (KIP-394).
    #[error("join group '{group}' again with member id '{member}'")]
    MemberIdRequired {
        /// The group.
        group: String,
        /// The id it was given.
        member: String,
    },
}

/// Bounds on what clients can make one coordinator hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Members of one group.
    pub members_per_group: usize,
    /// Groups (with members or committed offsets) on this coordinator.
    pub groups: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            members_per_group: 1000,
            groups: 10_000,
        }
    }
}

/// Longest metadata string of one committed offset (Kafka's `offset.metadata.max.bytes`).
pub const COMMIT_METADATA_BYTES_MAX: usize = 4096;

/// A committed position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The next offset to read.
    pub offset: u64,
    /// Free-form metadata committed with it.
    pub metadata: String,
    /// When it was committed, ms since the Unix epoch.
    pub timestamp_ms: i64,
}

/// Where a group is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No members.
    Empty,
    /// Waiting for members to join the next generation.
    Rebalancing,
    /// A classic group's generation is settled; its leader has not yet handed in the
    /// assignment.
    AwaitingSync,
    /// Every member has its assignment.
    Stable,
}

/// `(topic, partition)`.
pub type TopicPartition = (String, u32);

/// One member.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its id.
    pub id: String,
    /// Its client id.
    pub client_id: String,
    /// Topics it reads.
    pub topics: Vec<String>,
    /// Removed when no heartbeat arrives for this long.
    pub session_timeout: Duration,
    /// How long a rebalance waits for it.
    pub rebalance_timeout: Duration,
    /// Its last heartbeat or join.
    pub last_seen: Instant,
    /// It joined the rebalance in progress.
    pub joined: bool,
    /// What it reads in the current generation.
    pub assignment: Vec<TopicPartition>,
    /// A Kafka classic-protocol member's protocols and assignment; `None` for a Levee member.
    pub classic: Option<classic::ClassicMember>,
}

/// One group.
#[derive(Debug, Clone)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// The current generation (0 before the first).
    pub generation: u32,
    /// Where it is.
    pub state: State,
    /// Members, by id.
    pub members: BTreeMap<String, Member>,
    /// Committed positions.
    pub offsets: BTreeMap<TopicPartition, Committed>,
    /// A rebalance in progress settles by then even if members are missing.
    deadline: Option<Instant>,
    /// A rebalance of a group that was empty waits until then for more members.
    settle_after: Option<Instant>,
    /// A classic group's protocol type, chosen protocol and leader; `None` for a Levee group.
    pub classic: Option<classic::ClassicGroup>,
    /// Member ids handed out to classic joins without one, until they join with it (or the
    /// deadline passes).
    pending: BTreeMap<String, Instant>,
}

impl Group {
    fn new(name: &str) -> Group {
        Group {
            name: name.to_string(),
            generation: 0,
            state: State::Empty,
            members: BTreeMap::new(),
            offsets: BTreeMap::new(),
            deadline: None,
            settle_after: None,
            classic: None,
            pending: BTreeMap::new(),
        }
    }

    /// Adds a member, or refreshes one, with what its join says: topics, (session, rebalance)
    /// timeouts, seen now.
    fn upsert_member(
        &mut self,
        id: &str,
        client_id: &str,
        topics: Vec<String>,
        (session_timeout, rebalance_timeout): (Duration, Duration),
        now: Instant,
    ) -> &mut Member {
        let member = self
            .members
            .entry(id.to_string())
            .or_insert_with(|| Member {
                id: id.to_string(),
                client_id: client_id.to_string(),
                topics: Vec::new(),
                session_timeout,
                rebalance_timeout,
                last_seen: now,
                joined: false,
                assignment: Vec::new(),
                classic: None,
            });
        member.topics = topics;
        member.session_timeout = session_timeout;
        member.rebalance_timeout = rebalance_timeout;
        member.last_seen = now;
        member
    }

    /// The group lost its last member: it is empty, of no protocol.
    fn emptied(&mut self) {
        self.state = State::Empty;
        self.deadline = None;
        self.settle_after = None;
        self.classic = None;
    }

    fn start_rebalance(&mut self, now: Instant) {
        if self.state != State::Rebalancing {
            if self.state == State::Empty {
                self.settle_after = Some(now + INITIAL_REBALANCE_DELAY);
            }
            self.state = State::Rebalancing;
            for m in self.members.values_mut() {
                m.joined = false;
            }
        }
        let wait = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.deadline = Some(now + wait);
    }

    fn check_member(&self, member: &str, generation: u32) -> Result<&Member, GroupError> {
        let m = self
            .members
            .get(member)
            .ok_or_else(|| GroupError::UnknownMember {
                group: self.name.clone(),
                member: member.to_string(),
            })?;
        if generation != self.generation {
            return Err(GroupError::IllegalGeneration {
                group: self.name.clone(),
                given: generation,
                current: self.generation,
            });
        }
        Ok(m)
    }
}

/// A member's place in a settled generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The group.
    pub group: String,
    /// The member.
    pub member_id: String,
    /// The generation.
    pub generation: u32,
    /// Members in it.
    pub members: u32,
    /// What the member reads (for a classic member, once its leader has assigned).
    pub assignment: Vec<TopicPartition>,
    /// A classic member's generation: protocol, leader, and for the leader every member's
    /// metadata.
    pub classic: Option<classic::ClassicJoined>,
}

/// The groups of one coordinator partition.
#[derive(Debug, Default)]
pub struct Coordinator {
    groups: BTreeMap<String, Group>,
    next_member: u64,
    limits: Limits,
}

/// A join's outcome: answered now, or once the rebalance settles (see [`Coordinator::settle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    /// The member already has its assignment in the current generation.
    Done(Joined),
    /// The member waits; its id is this.
    Wait(String),
}

/// What a join asks for.
#[derive(Debug, Clone)]
pub struct JoinRequest<'a> {
    /// The group.
    pub group: &'a str,
    /// The member's id, empty for a new member.
    pub member_id: &'a str,
    /// Its client id.
    pub client_id: &'a str,
    /// Topics it reads.
    pub topics: &'a [String],
    /// Session timeout.
    pub session_timeout: Duration,
    /// Rebalance timeout.
    pub rebalance_timeout: Duration,
}

impl Coordinator {
    /// An empty coordinator with these bounds.
    pub fn new(limits: Limits) -> Coordinator {
        Coordinator {
            limits,
            ..Coordinator::default()
        }
    }

    /// Refuses a new group past [`Limits::groups`].
    fn check_new_group(&self, group: &str) -> Result<(), GroupError> {
        if !self.groups.contains_key(group) && self.groups.len() >= self.limits.groups {
            return Err(GroupError::Limit(format!(
                "this coordinator holds {} groups, its limit (groups_max / group_offsets_partitions)",
                self.groups.len()
            )));
        }
        Ok(())
    }

    /// A group, if it exists (members or committed offsets).
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.get(name)
    }

    /// Every group.
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    /// Adds or refreshes a member; see the module documentation.
    pub fn join(&mut self, req: &JoinRequest<'_>, now: Instant) -> Result<JoinOutcome, GroupError> {
        if req.topics.is_empty() {
            return Err(GroupError::Invalid(
                "a member reads at least one topic".into(),
            ));
        }
        let session_ms = req.session_timeout.as_millis() as u64;
        if session_ms < SESSION_TIMEOUT_MS_MIN as u64 || session_ms > SESSION_TIMEOUT_MS_MAX as u64
        {
            return Err(GroupError::Invalid(format!(
                "session_timeout_ms must be {SESSION_TIMEOUT_MS_MIN}..={SESSION_TIMEOUT_MS_MAX}"
            )));
        }
        self.check_new_group(req.group)?;
        if let Some(g) = self.groups.get(req.group) {
            let known = !req.member_id.is_empty() && g.members.contains_key(req.member_id);
            if !known && g.members.len() >= self.limits.members_per_group {
                return Err(GroupError::Limit(format!(
                    "group '{}' has {} members, the limit (group_members_max)",
                    req.group,
                    g.members.len()
                )));
            }
        }
        let member_id = if req.member_id.is_empty() {
            self.next_member += 1;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("{}-{nanos:x}-{}", req.client_id, self.next_member)
        } else {
            req.member_id.to_string()
        };
        let group = self
            .groups
            .entry(req.group.to_string())
            .or_insert_with(|| Group::new(req.group));
        if group.classic.is_some() {
            return Err(GroupError::InconsistentProtocol {
                group: req.group.to_string(),
            });
        }
        let mut topics = req.topics.to_vec();
        topics.sort();
        topics.dedup();
        let members = group.members.len() as u32;
        let stable = group.state == State::Stable;
        if let Some(m) = group
            .members
            .get_mut(&member_id)
            .filter(|m| stable && m.topics == topics)
        {
            // Nothing changed: the member gets the current generation's assignment again.
            m.last_seen = now;
            return Ok(JoinOutcome::Done(Joined {
                group: group.name.clone(),
                member_id: m.id.clone(),
                generation: group.generation,
                members,
                assignment: m.assignment.clone(),
                classic: None,
            }));
        }
        group.upsert_member(
            &member_id,
            req.client_id,
            topics,
            (req.session_timeout, req.rebalance_timeout),
            now,
        );
        group.start_rebalance(now);
        if let Some(m) = group.members.get_mut(&member_id) {
            m.joined = true;
        }
        Ok(JoinOutcome::Wait(member_id))
    }

    /// Settles every rebalance that can settle now: each member that joined, with its
    /// assignment. `partitions_of` gives a topic's partition count (0 for an unknown topic).
    pub fn settle(&mut self, now: Instant, partitions_of: &dyn Fn(&str) -> u32) -> Vec<Joined> {
        let mut out = Vec::new();
        for group in self.groups.values_mut() {
            if group.state != State::Rebalancing {
                continue;
            }
            let all_joined = group.members.values().all(|m| m.joined);
            let late = group.deadline.is_some_and(|d| now >= d);
            let settled = group.settle_after.is_none_or(|s| now >= s);
            if !(all_joined && settled || late) {
                continue;
            }
            // Members that did not join by the deadline are out.
            group.members.retain(|_, m| m.joined);
            group.deadline = None;
            group.settle_after = None;
            if group.members.is_empty() {
                group.emptied();
                continue;
            }
            group.generation += 1;
            if group.classic.is_some() {
                out.extend(classic::settle(group, now));
                continue;
            }
            group.state = State::Stable;
            let shares = assign::assign(group.members.values(), partitions_of);
            let members = group.members.len() as u32;
            for m in group.members.values_mut() {
                m.assignment = shares.get(&m.id).cloned().unwrap_or_default();
                m.joined = false;
                m.last_seen = now;
                out.push(Joined {
                    group: group.name.clone(),
                    member_id: m.id.clone(),
                    generation: group.generation,
                    members,
                    assignment: m.assignment.clone(),
                    classic: None,
                });
            }
        }
        out
    }

    /// Removes members whose session expired; returns `(group, member)` of each. A member
    /// waiting in a join for its rebalance to settle, or in a SyncGroup for its leader's, is
    /// alive (it cannot heartbeat meanwhile),
    /// and an id handed out to a classic join lapses after that join's session timeout.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, String)> {
        let mut gone = Vec::new();
        for group in self.groups.values_mut() {
            group.pending.retain(|_, until| now < *until);
            let before = group.members.len();
            let rebalancing = group.state == State::Rebalancing;
            let syncing = group.state == State::AwaitingSync;
            group.members.retain(|id, m| {
                let waiting = rebalancing && m.joined
                    || syncing && m.classic.as_ref().is_some_and(|c| c.waiting_sync);
                let alive =
                    waiting || now.saturating_duration_since(m.last_seen) < m.session_timeout;
                if !alive {
                    gone.push((group.name.clone(), id.clone()));
                }
                alive
            });
            if group.members.len() != before {
                if group.members.is_empty() {
                    group.emptied();
                } else {
                    group.start_rebalance(now);
                }
            }
        }
        gone
    }

    /// The group a member claims to be in; an unknown group means an unknown member.
    fn group_of_member(&mut self, group: &str, member: &str) -> Result<&mut Group, GroupError> {
        self.groups
            .get_mut(group)
            .ok_or_else(|| GroupError::UnknownMember {
                group: group.to_string(),
                member: member.to_string(),
            })
    }

    /// A heartbeat: `Ok` while the member's generation is current and the group stable.
    pub fn heartbeat(
        &mut self,
        group: &str,
        member: &str,
        generation: u32,
        now: Instant,
    ) -> Result<(), GroupError> {
        let g = self.group_of_member(group, member)?;
        if let Some(m) = g.members.get_mut(member) {
            m.last_seen = now;
        }
        g.check_member(member, generation)?;
        if g.state == State::Rebalancing {
            return Err(GroupError::RebalanceInProgress {
                group: group.to_string(),
            });
        }
        Ok(())
    }

    /// A member leaves: its partitions go to the others at the next generation.
    pub fn leave(&mut self, group: &str, member: &str, now: Instant) -> Result<(), GroupError> {
        let g = self.group_of_member(group, member)?;
        if g.members.remove(member).is_none() {
            return Err(GroupError::UnknownMember {
                group: group.to_string(),
                member: member.to_string(),
            });
        }
        if g.members.is_empty() {
            g.emptied();
        } else {
            g.start_rebalance(now);
        }
        Ok(())
    }

    /// Whether a commit may go ahead: from the current generation of a member (during a
    /// rebalance too: the member still holds its partitions until it joins again), or, with an
    /// empty member id, to a group with no members (an administrator's reset).
    pub fn check_commit(
        &self,
        group: &str,
        member: &str,
        generation: u32,
    ) -> Result<(), GroupError> {
        let g = self.groups.get(group);
        if member.is_empty() {
            self.check_new_group(group)?;
            return match g {
                Some(g) if !g.members.is_empty() => Err(GroupError::NotEmpty {
                    group: group.to_string(),
                    members: g.members.len(),
                }),
                _ => Ok(()),
            };
        }
        let g = g.ok_or_else(|| GroupError::UnknownMember {
            group: group.to_string(),
            member: member.to_string(),
        })?;
        g.check_member(member, generation)?;
        if g.state == State::AwaitingSync {
            // The new generation's partitions are not handed out yet.
            return Err(GroupError::RebalanceInProgress {
                group: group.to_string(),
            });
        }
        Ok(())
    }

    /// Starts a rebalance of a group with members (its topics changed: a retry topic appeared).
    pub fn rebalance(&mut self, group: &str, now: Instant) {
        if let Some(g) = self.groups.get_mut(group) {
            if !g.members.is_empty() {
                g.start_rebalance(now);
            }
        }
    }

    /// Records committed positions (after they are durable, or when replaying the log).
    pub fn apply_commit(&mut self, group: &str, offsets: Vec<(TopicPartition, Committed)>) {
        let g = self
            .groups
            .entry(group.to_string())
            .or_insert_with(|| Group::new(group));
        g.offsets.extend(offsets);
    }

    /// Forgets a group (after its deletion is durable, or when replaying the log).
    pub fn apply_delete(&mut self, group: &str) {
        self.groups.remove(group);
    }

    /// Forgets `group`'s offsets on `topic` (the topic was deleted; after that is durable, or
    /// when replaying the log). A topic created again under the name starts with none.
    pub fn apply_forget_topic(&mut self, group: &str, topic: &str) {
        if let Some(g) = self.groups.get_mut(group) {
            g.offsets.retain(|(t, _), _| t != topic);
        }
    }

    /// The groups holding offsets on `topic`.
    pub fn groups_with_offsets_on(&self, topic: &str) -> Vec<String> {
        self.groups
            .values()
            .filter(|g| g.offsets.keys().any(|(t, _)| t == topic))
            .map(|g| g.name.clone())
            .collect()
    }

    /// Whether a group may be deleted (or reset): it must have no members.
    pub fn check_delete(&self, group: &str) -> Result<(), GroupError> {
        match self.groups.get(group) {
            None => Err(GroupError::UnknownGroup(group.to_string())),
            Some(g) if !g.members.is_empty() => Err(GroupError::NotEmpty {
                group: group.to_string(),
                members: g.members.len(),
            }),
            Some(_) => Ok(()),
        }
    }

    /// The earliest instant something may change on its own (a session expiring, a rebalance
    /// timing out or settling), for the coordinator's timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.groups
            .values()
            .flat_map(|g| {
                let sessions = g.members.values().map(|m| m.last_seen + m.session_timeout);
                let pending = g.pending.values().copied();
                sessions
                    .chain(pending)
                    .chain(g.deadline)
                    .chain(g.settle_after)
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn join<'a>(group: &'a str, member: &'a str, t: &'a [String]) -> JoinRequest<'a> {
        JoinRequest {
            group,
            member_id: member,
            client_id: "c",
            topics: t,
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(5),
        }
    }

    fn eight(_: &str) -> u32 {
        8
    }

    #[test]
    fn given_two_members_when_settled_should_split_partitions_without_overlap() {
        let mut c = Coordinator::default();
        let t = topics(&["orders"]);
        let now = Instant::now();
        let JoinOutcome::Wait(a) = c.join(&join("g", "", &t), now).unwrap() else {
            panic!("first join waits")
        };
        let JoinOutcome::Wait(b) = c.join(&join("g", "", &t), now).unwrap() else {
            panic!("second join waits")
        };
        assert!(c.settle(now, &eight).is_empty(), "the initial delay holds");
        let joined = c.settle(now + INITIAL_REBALANCE_DELAY, &eight);
        assert_eq!(joined.len(), 2);
        let mut all: Vec<u32> = joined
            .iter()
            .flat_map(|j| j.assignment.iter().map(|(_, p)| *p))
            .collect();
        all.sort();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        assert!(joined
            .iter()
            .all(|j| j.assignment.len() == 4 && j.generation == 1));
        assert_ne!(a, b);
    }

    #[test]
    fn given_a_member_that_stops_heartbeating_should_be_removed_and_others_rebalanced() {
        let mut c = Coordinator::default();
        let t = topics(&["t"]);
        let now = Instant::now();
        let JoinOutcome::Wait(a) = c.join(&join("g", "", &t), now).unwrap() else {
            panic!()
        };
        let JoinOutcome::Wait(b) = c.join(&join("g", "", &t), now).unwrap() else {
            panic!()
        };
        let later = now + INITIAL_REBALANCE_DELAY;
        assert_eq!(c.settle(later, &eight).len(), 2);
        // Only a heartbeats from now on.
        let t1 = later + Duration::from_secs(6);
        c.heartbeat("g", &a, 1, t1).unwrap();
        let t2 = later + Duration::from_secs(11);
        assert_eq!(c.expire(t2), vec![("g".to_string(), b.clone())]);
        assert_eq!(
            c.heartbeat("g", &a, 1, t2),
            Err(GroupError::RebalanceInProgress { group: "g".into() })
        );
        let JoinOutcome::Wait(_) = c.join(&join("g", &a, &t), t2).unwrap() else {
            panic!()
        };
        let joined = c.settle(t2, &eight);
        assert_eq!(joined.len(), 1);
        assert_eq!(joined[0].assignment.len(), 8);
        assert_eq!(joined[0].generation, 2);
        // b was fenced: its commits are refused.
        assert!(matches!(
            c.check_commit("g", &b, 1),
            Err(GroupError::UnknownMember { .. })
        ));
        assert!(matches!(
            c.check_commit("g", &a, 1),
            Err(GroupError::IllegalGeneration { current: 2, .. })
        ));
        assert_eq!(c.check_commit("g", &a, 2), Ok(()));
    }

    #[test]
    fn given_a_stable_member_rejoining_unchanged_should_keep_its_assignment_without_rebalance() {
        let mut c = Coordinator::default();
        let t = topics(&["t"]);
        let now = Instant::now();
        let JoinOutcome::Wait(a) = c.join(&join("g", "", &t), now).unwrap() else {
            panic!()
        };
        let settled = now + INITIAL_REBALANCE_DELAY;
        let first = c.settle(settled, &eight).remove(0);
        let again = c.join(&join("g", &a, &t), settled).unwrap();
        assert_eq!(again, JoinOutcome::Done(first));
    }

    #[test]
    fn given_members_when_an_administrator_commits_or_deletes_should_refuse() {
        let mut c = Coordinator::default();
        let t = topics(&["t"]);
        let now = Instant::now();
        c.join(&join("g", "", &t), now).unwrap();
        assert!(matches!(
            c.check_commit("g", "", NO_GEN),
            Err(GroupError::NotEmpty { .. })
        ));
        assert!(matches!(
            c.check_delete("g"),
            Err(GroupError::NotEmpty { .. })
        ));
        assert!(matches!(
            c.check_delete("h"),
            Err(GroupError::UnknownGroup(_))
        ));
        assert_eq!(c.check_commit("h", "", NO_GEN), Ok(()));
    }

    #[test]
    fn given_limits_when_passed_should_refuse_new_members_and_groups_but_not_known_ones() {
        let mut c = Coordinator::new(Limits {
            members_per_group: 1,
            groups: 1,
        });
        let t = topics(&["t"]);
        let now = Instant::now();
        let JoinOutcome::Wait(a) = c.join(&join("g", "", &t), now).unwrap() else {
            panic!()
        };
        assert!(matches!(
            c.join(&join("g", "", &t), now),
            Err(GroupError::Limit(_))
        ));
        assert!(matches!(
            c.join(&join("h", "", &t), now),
            Err(GroupError::Limit(_))
        ));
        assert!(matches!(
            c.check_commit("h", "", NO_GEN),
            Err(GroupError::Limit(_))
        ));
        // The known member rejoins freely.
        assert!(c.join(&join("g", &a, &t), now).is_ok());
    }

    const NO_GEN: u32 = u32::MAX;
}
