//! The Kafka classic group protocol on the same [`Coordinator`]: members name a protocol type
//! and the protocols (assignors) they support, each with opaque metadata; a rebalance settles
//! into a generation whose protocol is chosen by member vote and whose leader receives every
//! member's metadata; the leader computes the assignment and hands it in with its SyncGroup,
//! which the coordinator passes through to each member's SyncGroup.
//!
//! What differs from Levee's own protocol, and why:
//! - A join without a member id (from a client that knows KIP-394) is refused with
//!   [`GroupError::MemberIdRequired`] and a fresh id, which is held for the join's session
//!   timeout; a join with an id the group neither has nor handed out is an unknown member. A
//!   client that crashed between the two joins thus leaves no member behind to wait for.
//! - A member that rejoins unchanged while the group is settled gets its generation back at
//!   once, unless it is the leader (which must see the members again to assign).
//! - Generation `n` is [`State::AwaitingSync`] until the leader's SyncGroup: commits are then
//!   refused with `RebalanceInProgress`, heartbeats are answered.
//!
//! This module owns those rules and nothing else; it decodes none of the opaque bytes (the
//! Kafka front end passes the decoded topic partitions along, for `levee group describe`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{Coordinator, Group, GroupError, JoinOutcome, Joined, Member, State, TopicPartition};
use super::{SESSION_TIMEOUT_MS_MAX, SESSION_TIMEOUT_MS_MIN};

/// Most bytes of protocol names and metadata one member may join with, and most bytes of one
/// member's assignment: what the coordinator keeps per member is bounded, whatever the frame
/// size (a consumer subscribed to 3000 topics sends about 64 KiB).
pub const MEMBER_PROTOCOL_BYTES_MAX: usize = 64 << 10;

/// A classic member's part of [`Member`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicMember {
    /// The protocols it supports, in its order of preference, each with its metadata.
    pub protocols: Vec<(String, Vec<u8>)>,
    /// What the leader assigned it in the current generation (opaque).
    pub assignment: Vec<u8>,
    /// It waits in a SyncGroup for the leader's: alive meanwhile, as a member waiting in a join
    /// is.
    pub waiting_sync: bool,
}

/// A classic group's part of [`Group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicGroup {
    /// The protocol type every member named (`consumer` for Kafka consumers).
    pub protocol_type: String,
    /// The protocol chosen for the current generation.
    pub protocol: Option<String>,
    /// The member that assigns in the current generation.
    pub leader: Option<String>,
}

/// A classic member's settled generation (part of [`Joined`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicJoined {
    /// The group's protocol type.
    pub protocol_type: String,
    /// The generation's protocol.
    pub protocol: String,
    /// The generation's leader.
    pub leader: String,
    /// For the leader, every member's id and metadata for the chosen protocol; empty for the
    /// others.
    pub members: Vec<(String, Vec<u8>)>,
}

/// What a classic join asks for.
#[derive(Debug, Clone)]
pub struct ClassicJoinRequest<'a> {
    /// The group.
    pub group: &'a str,
    /// The member's id, empty for a new member.
    pub member_id: &'a str,
    /// The client speaks KIP-394: a join without an id is answered with one to join with.
    pub require_member_id: bool,
    /// Its client id.
    pub client_id: &'a str,
    /// The protocol type (`consumer`).
    pub protocol_type: &'a str,
    /// Its protocols in order of preference, with metadata.
    pub protocols: &'a [(String, Vec<u8>)],
    /// The topics it subscribes to, as far as the front end could read them from the metadata
    /// (shown by `levee group describe`; the coordinator does not assign from them).
    pub topics: &'a [String],
    /// Session timeout.
    pub session_timeout: Duration,
    /// Rebalance timeout.
    pub rebalance_timeout: Duration,
}

/// A member's assignment as the leader hands it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The member.
    pub member_id: String,
    /// The opaque assignment, passed through.
    pub bytes: Vec<u8>,
    /// The partitions it names, if the front end could read them.
    pub partitions: Vec<TopicPartition>,
}

/// A SyncGroup's answer: the member's assignment and the generation's protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    /// The member's assignment.
    pub assignment: Vec<u8>,
    /// The group's protocol type.
    pub protocol_type: String,
    /// The generation's protocol.
    pub protocol: String,
}

/// A SyncGroup's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The assignment is there.
    Done(Synced),
    /// The leader has not handed it in yet: ask [`Coordinator::sync_result`] when something
    /// changes.
    Wait,
}

fn names(protocols: &[(String, Vec<u8>)]) -> impl Iterator<Item = &str> {
    protocols.iter().map(|(n, _)| n.as_str())
}

/// The protocols every classic member of `members` (but `except`) supports, in no order;
/// `None` when there are no such members.
fn common<'a>(members: impl Iterator<Item = &'a Member>, except: &str) -> Option<Vec<&'a str>> {
    let mut out: Option<Vec<&str>> = None;
    for m in members.filter(|m| m.id != except) {
        let theirs: Vec<&str> = m
            .classic
            .as_ref()
            .map_or(Vec::new(), |c| names(&c.protocols).collect());
        out = Some(match out {
            None => theirs,
            Some(mut so_far) => {
                so_far.retain(|p| theirs.contains(p));
                so_far
            }
        });
    }
    out
}

/// The protocol of a settling generation: among those every member supports, the one most
/// members prefer (each member votes for its first such); ties go to the earlier name.
fn vote(group: &Group) -> Option<String> {
    let candidates = common(group.members.values(), "")?;
    let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
    for m in group.members.values() {
        let first = m
            .classic
            .as_ref()
            .and_then(|c| names(&c.protocols).find(|p| candidates.contains(p)));
        if let Some(p) = first {
            *votes.entry(p).or_default() += 1;
        }
    }
    let most = votes.values().copied().max()?;
    votes
        .into_iter()
        .find(|&(_, v)| v == most)
        .map(|(p, _)| p.to_string())
}

/// Settles a classic group's generation (already counted): protocol, leader, and a [`Joined`]
/// per member; the group then awaits its leader's assignment.
pub(super) fn settle(group: &mut Group, now: Instant) -> Vec<Joined> {
    let protocol = vote(group).unwrap_or_default();
    let leader = group
        .classic
        .as_ref()
        .and_then(|c| c.leader.clone())
        .filter(|l| group.members.contains_key(l))
        .or_else(|| group.members.keys().next().cloned())
        .unwrap_or_default();
    let protocol_type = group
        .classic
        .as_ref()
        .map(|c| c.protocol_type.clone())
        .unwrap_or_default();
    group.classic = Some(ClassicGroup {
        protocol_type: protocol_type.clone(),
        protocol: Some(protocol.clone()),
        leader: Some(leader.clone()),
    });
    group.state = State::AwaitingSync;
    let metadata: Vec<(String, Vec<u8>)> = group
        .members
        .values()
        .map(|m| {
            let meta = m
                .classic
                .as_ref()
                .and_then(|c| c.protocols.iter().find(|(n, _)| *n == protocol))
                .map(|(_, b)| b.clone())
                .unwrap_or_default();
            (m.id.clone(), meta)
        })
        .collect();
    let count = group.members.len() as u32;
    let mut out = Vec::with_capacity(group.members.len());
    let mut metadata = Some(metadata);
    for m in group.members.values_mut() {
        m.assignment.clear();
        if let Some(c) = m.classic.as_mut() {
            c.assignment.clear();
            c.waiting_sync = false;
        }
        m.joined = false;
        m.last_seen = now;
        let members = if m.id == leader {
            metadata.take().unwrap_or_default()
        } else {
            Vec::new()
        };
        out.push(Joined {
            group: group.name.clone(),
            member_id: m.id.clone(),
            generation: group.generation,
            members: count,
            assignment: Vec::new(),
            classic: Some(ClassicJoined {
                protocol_type: protocol_type.clone(),
                protocol: protocol.clone(),
                leader: leader.clone(),
                members,
            }),
        });
    }
    out
}

impl Coordinator {
    /// Adds or refreshes a classic member; see the module documentation. A join that waits is
    /// answered by [`Coordinator::settle`].
    pub fn join_classic(
        &mut self,
        req: &ClassicJoinRequest<'_>,
        now: Instant,
    ) -> Result<JoinOutcome, GroupError> {
        let session_ms = req.session_timeout.as_millis();
        if !(SESSION_TIMEOUT_MS_MIN as u128..=SESSION_TIMEOUT_MS_MAX as u128).contains(&session_ms)
        {
            return Err(GroupError::Invalid(format!(
                "session_timeout_ms must be {SESSION_TIMEOUT_MS_MIN}..={SESSION_TIMEOUT_MS_MAX}"
            )));
        }
        let inconsistent = || GroupError::InconsistentProtocol {
            group: req.group.to_string(),
        };
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return Err(inconsistent());
        }
        let bytes: usize = req.protocols.iter().map(|(n, m)| n.len() + m.len()).sum();
        if bytes + req.protocol_type.len() > MEMBER_PROTOCOL_BYTES_MAX {
            return Err(GroupError::Invalid(format!(
                "protocols of {bytes} bytes (at most {MEMBER_PROTOCOL_BYTES_MAX})"
            )));
        }
        self.check_new_group(req.group)?;
        let limit = self.limits.members_per_group;
        let fresh_id = if req.member_id.is_empty() {
            self.next_member += 1;
            Some(format!(
                "{}-{:x}-{}",
                req.client_id,
                unix_nanos(),
                self.next_member
            ))
        } else {
            None
        };
        let group = self
            .groups
            .entry(req.group.to_string())
            .or_insert_with(|| Group::new(req.group));
        let known = group.members.contains_key(req.member_id);
        if !known && group.members.len() + group.pending.len() >= limit {
            return Err(GroupError::Limit(format!(
                "group '{}' has {} members, the limit (group_members_max)",
                req.group,
                group.members.len() + group.pending.len()
            )));
        }
        // Of one protocol type, and some protocol every other member supports too.
        match &group.classic {
            None if !group.members.is_empty() => return Err(inconsistent()),
            Some(c) if c.protocol_type != req.protocol_type && !group.members.is_empty() => {
                return Err(inconsistent())
            }
            _ => {}
        }
        if let Some(common) = common(group.members.values(), req.member_id) {
            if !names(req.protocols).any(|p| common.contains(&p)) {
                return Err(inconsistent());
            }
        }
        let member_id = match fresh_id {
            Some(id) if req.require_member_id => {
                group.pending.insert(id.clone(), now + req.session_timeout);
                return Err(GroupError::MemberIdRequired {
                    group: req.group.to_string(),
                    member: id,
                });
            }
            Some(id) => id,
            None if known || group.pending.remove(req.member_id).is_some() => {
                req.member_id.to_string()
            }
            None => {
                return Err(GroupError::UnknownMember {
                    group: req.group.to_string(),
                    member: req.member_id.to_string(),
                })
            }
        };
        if group.members.is_empty() {
            group.classic = Some(ClassicGroup {
                protocol_type: req.protocol_type.to_string(),
                protocol: None,
                leader: None,
            });
        }
        let settled = matches!(group.state, State::Stable | State::AwaitingSync);
        let leader = group.classic.as_ref().and_then(|c| c.leader.as_deref());
        let unchanged = group.members.get(&member_id).is_some_and(|m| {
            m.classic
                .as_ref()
                .is_some_and(|c| c.protocols == req.protocols)
        });
        if settled && unchanged && leader != Some(member_id.as_str()) {
            return Ok(JoinOutcome::Done(rejoined(group, &member_id, now)));
        }
        let mut topics = req.topics.to_vec();
        topics.sort();
        topics.dedup();
        let member = group.upsert_member(
            &member_id,
            req.client_id,
            topics,
            (req.session_timeout, req.rebalance_timeout),
            now,
        );
        member.classic = Some(ClassicMember {
            protocols: req.protocols.to_vec(),
            assignment: Vec::new(),
            waiting_sync: false,
        });
        group.start_rebalance(now);
        if let Some(m) = group.members.get_mut(&member_id) {
            m.joined = true;
        }
        Ok(JoinOutcome::Wait(member_id))
    }

    /// A SyncGroup: the leader's hands in every member's assignment (members it leaves out get
    /// an empty one) and settles the generation; a follower's waits for that.
    pub fn sync(
        &mut self,
        group: &str,
        member: &str,
        generation: u32,
        assignments: Vec<Assignment>,
        now: Instant,
    ) -> Result<SyncOutcome, GroupError> {
        let g = self.group_of_member(group, member)?;
        if let Some(m) = g.members.get_mut(member) {
            m.last_seen = now;
        }
        g.check_member(member, generation)?;
        if let Some(a) = assignments
            .iter()
            .find(|a| a.bytes.len() > MEMBER_PROTOCOL_BYTES_MAX)
        {
            return Err(GroupError::Invalid(format!(
                "an assignment of {} bytes (at most {MEMBER_PROTOCOL_BYTES_MAX})",
                a.bytes.len()
            )));
        }
        let leader = g.classic.as_ref().and_then(|c| c.leader.as_deref()) == Some(member);
        match g.state {
            State::AwaitingSync if leader => {
                let mut given: BTreeMap<String, Assignment> = assignments
                    .into_iter()
                    .map(|a| (a.member_id.clone(), a))
                    .collect();
                for m in g.members.values_mut() {
                    let a = given.remove(&m.id);
                    let (bytes, partitions) =
                        a.map_or((Vec::new(), Vec::new()), |a| (a.bytes, a.partitions));
                    m.assignment = partitions;
                    if let Some(c) = m.classic.as_mut() {
                        c.assignment = bytes;
                        c.waiting_sync = false;
                    }
                }
                g.state = State::Stable;
            }
            State::AwaitingSync => {
                if let Some(c) = g.members.get_mut(member).and_then(|m| m.classic.as_mut()) {
                    c.waiting_sync = true;
                }
                return Ok(SyncOutcome::Wait);
            }
            State::Stable => {}
            State::Rebalancing | State::Empty => {
                return Err(GroupError::RebalanceInProgress {
                    group: group.to_string(),
                })
            }
        }
        self.sync_result(group, member, generation)
            .unwrap_or(Ok(SyncOutcome::Wait))
    }

    /// Where a waiting SyncGroup stands: `None` while its generation still awaits the leader,
    /// else its answer (the assignment, or why the member must join again).
    pub fn sync_result(
        &self,
        group: &str,
        member: &str,
        generation: u32,
    ) -> Option<Result<SyncOutcome, GroupError>> {
        let rebalancing = || {
            Some(Err(GroupError::RebalanceInProgress {
                group: group.to_string(),
            }))
        };
        let Some(g) = self.groups.get(group) else {
            return rebalancing();
        };
        let Some(m) = g.members.get(member) else {
            return Some(Err(GroupError::UnknownMember {
                group: group.to_string(),
                member: member.to_string(),
            }));
        };
        if g.generation != generation {
            return rebalancing();
        }
        match g.state {
            State::AwaitingSync => None,
            State::Stable => {
                let c = g.classic.as_ref();
                Some(Ok(SyncOutcome::Done(Synced {
                    assignment: m
                        .classic
                        .as_ref()
                        .map(|c| c.assignment.clone())
                        .unwrap_or_default(),
                    protocol_type: c.map(|c| c.protocol_type.clone()).unwrap_or_default(),
                    protocol: c.and_then(|c| c.protocol.clone()).unwrap_or_default(),
                })))
            }
            State::Rebalancing | State::Empty => rebalancing(),
        }
    }
}

/// The current generation again, for a follower that rejoined unchanged.
fn rejoined(g: &mut Group, member: &str, now: Instant) -> Joined {
    let c = g.classic.clone().unwrap_or(ClassicGroup {
        protocol_type: String::new(),
        protocol: None,
        leader: None,
    });
    let count = g.members.len() as u32;
    let assignment = g.members.get_mut(member).map_or(Vec::new(), |m| {
        m.last_seen = now;
        m.assignment.clone()
    });
    Joined {
        group: g.name.clone(),
        member_id: member.to_string(),
        generation: g.generation,
        members: count,
        assignment,
        classic: Some(ClassicJoined {
            protocol_type: c.protocol_type,
            protocol: c.protocol.unwrap_or_default(),
            leader: c.leader.unwrap_or_default(),
            members: Vec::new(),
        }),
    }
}

fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::super::INITIAL_REBALANCE_DELAY;
    use super::*;

    fn protocols(names: &[&str]) -> Vec<(String, Vec<u8>)> {
        names
            .iter()
            .map(|n| (n.to_string(), format!("meta-{n}").into_bytes()))
            .collect()
    }

    fn join<'a>(member: &'a str, p: &'a [(String, Vec<u8>)]) -> ClassicJoinRequest<'a> {
        ClassicJoinRequest {
            group: "g",
            member_id: member,
            require_member_id: true,
            client_id: "rdkafka",
            protocol_type: "consumer",
            protocols: p,
            topics: &[],
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
        }
    }

    fn none(_: &str) -> u32 {
        0
    }

    /// Joins a new member through the member-id round trip; returns its id.
    fn new_member(c: &mut Coordinator, p: &[(String, Vec<u8>)], now: Instant) -> String {
        let Err(GroupError::MemberIdRequired { member, .. }) = c.join_classic(&join("", p), now)
        else {
            panic!("a join without an id is answered with one")
        };
        let JoinOutcome::Wait(id) = c.join_classic(&join(&member, p), now).unwrap() else {
            panic!("the second join waits for the rebalance")
        };
        assert_eq!(id, member);
        id
    }

    fn assignment(member: &str, bytes: &[u8]) -> Assignment {
        Assignment {
            member_id: member.to_string(),
            bytes: bytes.to_vec(),
            partitions: Vec::new(),
        }
    }

    #[test]
    fn given_two_members_should_vote_a_protocol_elect_a_leader_and_pass_its_assignment_through() {
        let mut c = Coordinator::default();
        let now = Instant::now();
        let a = new_member(&mut c, &protocols(&["range", "roundrobin"]), now);
        let b = new_member(&mut c, &protocols(&["roundrobin", "range"]), now);
        let later = now + INITIAL_REBALANCE_DELAY;
        let joined = c.settle(later, &none);
        assert_eq!(joined.len(), 2);
        let leader = &joined[0].classic.as_ref().unwrap().leader;
        for j in &joined {
            let cj = j.classic.as_ref().unwrap();
            assert_eq!(j.generation, 1);
            assert_eq!(&cj.leader, leader);
            // One vote each: the tie goes to the earlier name.
            assert_eq!(cj.protocol, "range");
            let expect = if &j.member_id == leader { 2 } else { 0 };
            assert_eq!(cj.members.len(), expect, "only the leader sees the members");
        }
        let follower = if leader == &a { &b } else { &a };
        assert_eq!(
            c.sync("g", follower, 1, Vec::new(), later),
            Ok(SyncOutcome::Wait)
        );
        assert!(matches!(
            c.check_commit("g", follower, 1),
            Err(GroupError::RebalanceInProgress { .. })
        ));
        assert_eq!(c.heartbeat("g", follower, 1, later), Ok(()));
        let given = vec![assignment(leader, b"L"), assignment(follower, b"F")];
        let Ok(SyncOutcome::Done(mine)) = c.sync("g", leader, 1, given, later) else {
            panic!("the leader's sync settles the generation")
        };
        assert_eq!(mine.assignment, b"L");
        assert_eq!(mine.protocol, "range");
        let Some(Ok(SyncOutcome::Done(theirs))) = c.sync_result("g", follower, 1) else {
            panic!("the follower's waiting sync is answered")
        };
        assert_eq!(theirs.assignment, b"F");
        assert_eq!(c.check_commit("g", follower, 1), Ok(()));
    }

    #[test]
    fn given_an_unknown_member_id_or_a_foreign_protocol_should_refuse_the_join() {
        let mut c = Coordinator::default();
        let now = Instant::now();
        let p = protocols(&["range"]);
        assert!(matches!(
            c.join_classic(&join("made-up", &p), now),
            Err(GroupError::UnknownMember { .. })
        ));
        new_member(&mut c, &p, now);
        let other = protocols(&["sticky"]);
        assert!(matches!(
            c.join_classic(&join("", &other), now),
            Err(GroupError::InconsistentProtocol { .. })
        ));
        // Metadata past the bound is refused: the coordinator keeps it per member.
        let big = vec![("range".to_string(), vec![0u8; MEMBER_PROTOCOL_BYTES_MAX])];
        assert!(matches!(
            c.join_classic(&join("", &big), now),
            Err(GroupError::Invalid(_))
        ));
        // A Levee member cannot join a group of Kafka members.
        let topics = vec!["t".to_string()];
        let levee = super::super::JoinRequest {
            group: "g",
            member_id: "",
            client_id: "levee",
            topics: &topics,
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
        };
        assert!(matches!(
            c.join(&levee, now),
            Err(GroupError::InconsistentProtocol { .. })
        ));
    }

    #[test]
    fn given_a_member_leaving_mid_sync_should_send_the_waiting_follower_back_to_join() {
        let mut c = Coordinator::default();
        let now = Instant::now();
        let p = protocols(&["range"]);
        let a = new_member(&mut c, &p, now);
        let b = new_member(&mut c, &p, now);
        let later = now + INITIAL_REBALANCE_DELAY;
        let joined = c.settle(later, &none);
        let leader = joined[0].classic.as_ref().unwrap().leader.clone();
        let follower = if leader == a { b } else { a };
        assert_eq!(
            c.sync("g", &follower, 1, Vec::new(), later),
            Ok(SyncOutcome::Wait)
        );
        c.leave("g", &leader, later).unwrap();
        assert!(matches!(
            c.sync_result("g", &follower, 1),
            Some(Err(GroupError::RebalanceInProgress { .. }))
        ));
        // The follower joins again, unchanged, alone: it leads generation 2.
        let JoinOutcome::Wait(_) = c.join_classic(&join(&follower, &p), later).unwrap() else {
            panic!("a join during a rebalance waits")
        };
        let joined = c.settle(later, &none);
        assert_eq!(joined.len(), 1);
        assert_eq!(joined[0].generation, 2);
        assert_eq!(joined[0].classic.as_ref().unwrap().leader, follower);
        // The last member leaving empties the group of its protocol: Levee members may join.
        c.leave("g", &follower, later).unwrap();
        assert!(c.group("g").is_some_and(|g| g.classic.is_none()));
    }

    #[test]
    fn given_a_handed_out_id_never_used_should_lapse_after_the_session_timeout() {
        let mut c = Coordinator::new(super::super::Limits {
            members_per_group: 1,
            groups: 10,
        });
        let now = Instant::now();
        let p = protocols(&["range"]);
        let Err(GroupError::MemberIdRequired { member, .. }) = c.join_classic(&join("", &p), now)
        else {
            panic!()
        };
        // The held id counts against the group's bound until it lapses.
        assert!(matches!(
            c.join_classic(&join("", &p), now),
            Err(GroupError::Limit(_))
        ));
        c.expire(now + Duration::from_secs(11));
        assert!(matches!(
            c.join_classic(&join(&member, &p), now + Duration::from_secs(11)),
            Err(GroupError::UnknownMember { .. })
        ));
    }

    #[test]
    fn given_a_stable_follower_rejoining_unchanged_should_get_its_generation_back() {
        let mut c = Coordinator::default();
        let now = Instant::now();
        let p = protocols(&["range"]);
        let a = new_member(&mut c, &p, now);
        let b = new_member(&mut c, &p, now);
        let later = now + INITIAL_REBALANCE_DELAY;
        let joined = c.settle(later, &none);
        let leader = joined[0].classic.as_ref().unwrap().leader.clone();
        let follower = if leader == a { b } else { a };
        let given = vec![assignment(&follower, b"F")];
        c.sync("g", &leader, 1, given, later).unwrap();
        let Ok(JoinOutcome::Done(j)) = c.join_classic(&join(&follower, &p), later) else {
            panic!("an unchanged follower is not a reason to rebalance")
        };
        assert_eq!(j.generation, 1);
        assert_eq!(c.group("g").map(|g| g.state), Some(State::Stable));
        // The leader rejoining starts a new generation.
        let Ok(JoinOutcome::Wait(_)) = c.join_classic(&join(&leader, &p), later) else {
            panic!("the leader's join rebalances")
        };
    }
}
