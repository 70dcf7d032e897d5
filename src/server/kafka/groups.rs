//! Kafka's classic consumer-group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) on
//! Levee's group coordinator ([`crate::group::classic`]), reached through the server's handler.
//!
//! JoinGroup and SyncGroup are long polls: a join waits for its rebalance to settle, a
//! follower's sync for its leader's. Protocol metadata and assignments pass through untouched;
//! those of the `consumer` protocol type are also read (best effort) for the topics and
//! partitions `levee group describe` shows. Static membership (`group.instance.id`) is refused
//! with `INVALID_REQUEST`: it is not supported.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{
    join_group_response::JoinGroupResponseMember, leave_group_response::MemberResponse,
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, SyncGroupRequest,
    SyncGroupResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use super::{code, kafka_code};
use crate::group::classic::Assignment;
use crate::group::{self, GroupError, TopicPartition};
use crate::protocol;
use crate::server::handler::{self, ClassicDone, ClassicOp};
use crate::server::Session;
use crate::shard::groups::{ClassicArgs, JoinArgs};
use crate::shard::{Shard, ShardError};
use crate::storage::Io;

/// The protocol type whose metadata and assignments Levee reads for `levee group describe`.
const CONSUMER: &str = "consumer";
/// Newest version of the consumer protocol's embedded schemas this broker reads; newer ones
/// only append fields, which are skipped.
const CONSUMER_PROTOCOL_VERSION_MAX: i16 = 3;

/// The Kafka code of a refused group operation.
fn error_code(e: &ShardError) -> i16 {
    match e {
        ShardError::Group(g) => match g {
            GroupError::UnknownMember { .. } => code::UNKNOWN_MEMBER_ID,
            GroupError::IllegalGeneration { .. } => code::ILLEGAL_GENERATION,
            GroupError::RebalanceInProgress { .. } => code::REBALANCE_IN_PROGRESS,
            GroupError::NotEmpty { .. } => code::NON_EMPTY_GROUP,
            GroupError::UnknownGroup(_) => code::GROUP_ID_NOT_FOUND,
            GroupError::Invalid(_) => code::INVALID_REQUEST,
            GroupError::Limit(_) => code::GROUP_MAX_SIZE_REACHED,
            GroupError::InconsistentProtocol { .. } => code::INCONSISTENT_GROUP_PROTOCOL,
            GroupError::MemberIdRequired { .. } => code::MEMBER_ID_REQUIRED,
        },
        // The offsets topic is missing, or the broker is stopping: ask again elsewhere later.
        ShardError::UnknownTopic { .. } | ShardError::ShuttingDown => {
            code::COORDINATOR_NOT_AVAILABLE
        }
        other => kafka_code(handler::shard_code(other)),
    }
}

/// A generation as Levee counts it; a negative one is never current.
fn generation(g: i32) -> u32 {
    u32::try_from(g).unwrap_or(protocol::NO_GENERATION)
}

/// The version-prefixed body of a consumer-protocol schema.
fn consumer_schema<T: Decodable>(bytes: &[u8]) -> Option<T> {
    let (version, body) = bytes.split_first_chunk::<2>()?;
    let version = i16::from_be_bytes(*version).min(CONSUMER_PROTOCOL_VERSION_MAX);
    T::decode(&mut Bytes::copy_from_slice(body), version).ok()
}

/// The topics a consumer subscribes to, read from its first protocol's metadata.
fn subscribed_topics(protocol_type: &str, protocols: &[(String, Vec<u8>)]) -> Vec<String> {
    if protocol_type != CONSUMER {
        return Vec::new();
    }
    let first = protocols.first().map(|(_, m)| m.as_slice()).unwrap_or(&[]);
    consumer_schema::<ConsumerProtocolSubscription>(first)
        .map(|s| s.topics.iter().map(|t| t.as_str().to_string()).collect())
        .unwrap_or_default()
}

/// The partitions a consumer assignment names.
fn assigned_partitions(bytes: &[u8]) -> Vec<TopicPartition> {
    consumer_schema::<ConsumerProtocolAssignment>(bytes)
        .map(|a| {
            a.assigned_partitions
                .iter()
                .flat_map(|t| {
                    let topic = t.topic.0.as_str().to_string();
                    t.partitions
                        .iter()
                        .filter_map(move |&p| Some((topic.clone(), u32::try_from(p).ok()?)))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn str_bytes(s: String) -> StrBytes {
    StrBytes::from_string(s)
}

/// Refuses static membership and bad group names before anything reaches the coordinator.
fn precheck(group: &str, instance: Option<&StrBytes>) -> Option<i16> {
    if !protocol::valid_group_name(group) {
        return Some(code::INVALID_GROUP_ID);
    }
    if instance.is_some() {
        tracing::debug!(group, "static membership refused");
        return Some(code::INVALID_REQUEST);
    }
    None
}

/// JoinGroup 0–7: waits until the rebalance settles; the leader gets every member's metadata.
pub(super) async fn join<I: Io>(
    shard: &Rc<Shard<I>>,
    session: &Session,
    r: JoinGroupRequest,
    version: i16,
) -> JoinGroupResponse {
    let mut out = JoinGroupResponse::default();
    out.generation_id = -1;
    out.member_id = r.member_id.clone();
    let group = r.group_id.0.as_str().to_string();
    if let Some(c) = precheck(&group, r.group_instance_id.as_ref()) {
        out.error_code = c;
        return out;
    }
    let session_ms = r.session_timeout_ms;
    if !(group::SESSION_TIMEOUT_MS_MIN as i32..=group::SESSION_TIMEOUT_MS_MAX as i32)
        .contains(&session_ms)
    {
        out.error_code = code::INVALID_SESSION_TIMEOUT;
        return out;
    }
    // Version 0 has no rebalance timeout: the session timeout stands in, as in Kafka.
    let rebalance_ms = if version == 0 {
        session_ms
    } else {
        r.rebalance_timeout_ms
    };
    let rebalance_ms = rebalance_ms.clamp(1, group::SESSION_TIMEOUT_MS_MAX as i32);
    let protocol_type = r.protocol_type.as_str().to_string();
    let protocols: Vec<(String, Vec<u8>)> = r
        .protocols
        .iter()
        .map(|p| (p.name.as_str().to_string(), p.metadata.to_vec()))
        .collect();
    let args = JoinArgs {
        group: group.clone(),
        member_id: r.member_id.as_str().to_string(),
        client_id: session.client_id(),
        topics: subscribed_topics(&protocol_type, &protocols),
        session_timeout: Duration::from_millis(session_ms as u64),
        rebalance_timeout: Duration::from_millis(rebalance_ms as u64),
        classic: Some(ClassicArgs {
            protocol_type,
            protocols,
            require_member_id: version >= 4,
        }),
    };
    match handler::classic(shard, group, ClassicOp::Join(args)).await {
        Ok(ClassicDone::Joined(j)) => {
            let Some(c) = j.classic else {
                out.error_code = code::INCONSISTENT_GROUP_PROTOCOL;
                return out;
            };
            out.generation_id = j.generation as i32;
            out.member_id = str_bytes(j.member_id);
            out.protocol_type = Some(str_bytes(c.protocol_type));
            out.protocol_name = Some(str_bytes(c.protocol));
            out.leader = str_bytes(c.leader);
            out.members = c
                .members
                .into_iter()
                .map(|(id, metadata)| {
                    let mut m = JoinGroupResponseMember::default();
                    m.member_id = str_bytes(id);
                    m.metadata = Bytes::from(metadata);
                    m
                })
                .collect();
        }
        Ok(_) => out.error_code = code::UNKNOWN_SERVER_ERROR,
        Err(ShardError::Group(GroupError::MemberIdRequired { member, .. })) => {
            out.error_code = code::MEMBER_ID_REQUIRED;
            out.member_id = str_bytes(member);
        }
        Err(e) => out.error_code = error_code(&e),
    }
    out
}

/// SyncGroup 0–5: the leader's hands in the assignment; each member's returns its own.
pub(super) async fn sync<I: Io>(
    shard: &Rc<Shard<I>>,
    r: SyncGroupRequest,
    wait: Duration,
) -> SyncGroupResponse {
    let mut out = SyncGroupResponse::default();
    let group = r.group_id.0.as_str().to_string();
    if let Some(c) = precheck(&group, r.group_instance_id.as_ref()) {
        out.error_code = c;
        return out;
    }
    let assignments = r
        .assignments
        .iter()
        .map(|a| Assignment {
            member_id: a.member_id.as_str().to_string(),
            bytes: a.assignment.to_vec(),
            partitions: if r
                .protocol_type
                .as_ref()
                .is_none_or(|t| t.as_str() == CONSUMER)
            {
                assigned_partitions(&a.assignment)
            } else {
                Vec::new()
            },
        })
        .collect();
    let op = ClassicOp::Sync {
        member: r.member_id.as_str().to_string(),
        generation: generation(r.generation_id),
        assignments,
        timeout: wait,
    };
    match handler::classic(shard, group, op).await {
        Ok(ClassicDone::Synced(s)) => {
            out.assignment = Bytes::from(s.assignment);
            out.protocol_type = Some(str_bytes(s.protocol_type));
            out.protocol_name = Some(str_bytes(s.protocol));
        }
        Ok(_) => out.error_code = code::UNKNOWN_SERVER_ERROR,
        Err(e) => out.error_code = error_code(&e),
    }
    out
}

/// Heartbeat 0–4: `REBALANCE_IN_PROGRESS` tells the member to join again.
pub(super) async fn heartbeat<I: Io>(
    shard: &Rc<Shard<I>>,
    r: HeartbeatRequest,
) -> HeartbeatResponse {
    let mut out = HeartbeatResponse::default();
    let group = r.group_id.0.as_str().to_string();
    if let Some(c) = precheck(&group, r.group_instance_id.as_ref()) {
        out.error_code = c;
        return out;
    }
    let op = ClassicOp::Heartbeat {
        member: r.member_id.as_str().to_string(),
        generation: generation(r.generation_id),
    };
    if let Err(e) = handler::classic(shard, group, op).await {
        out.error_code = error_code(&e);
    }
    out
}

/// LeaveGroup 0–4: one member (versions 0–2) or a list of them, each answered on its own.
pub(super) async fn leave<I: Io>(
    shard: &Rc<Shard<I>>,
    r: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let mut out = LeaveGroupResponse::default();
    let group = r.group_id.0.as_str().to_string();
    if !protocol::valid_group_name(&group) {
        out.error_code = code::INVALID_GROUP_ID;
        return out;
    }
    let leaving: Vec<(StrBytes, Option<StrBytes>)> = if version < 3 {
        vec![(r.member_id.clone(), None)]
    } else {
        r.members
            .iter()
            .map(|m| (m.member_id.clone(), m.group_instance_id.clone()))
            .collect()
    };
    for (member, instance) in leaving {
        let c = if instance.is_some() {
            code::INVALID_REQUEST
        } else {
            let op = ClassicOp::Leave {
                member: member.as_str().to_string(),
            };
            match handler::classic(shard, group.clone(), op).await {
                Ok(_) => code::NONE,
                Err(e) => error_code(&e),
            }
        };
        if version < 3 {
            out.error_code = c;
        } else {
            let mut m = MemberResponse::default();
            m.member_id = member;
            m.group_instance_id = instance;
            m.error_code = c;
            out.members.push(m);
        }
    }
    out
}
