//! The Kafka wire-protocol front end (`--kafka-listen`): Kafka clients on Levee's partitions.
//!
//! Each shard listens on its own Kafka port and is advertised in Metadata as its own broker
//! (node id = shard number), so a Kafka client sends each partition's requests straight to its
//! owner core, as Levee's own client does. A connection is served one request at a time, in
//! order, as a Kafka broker serves it: responses go out in request order, and a long poll
//! (Fetch, JoinGroup, SyncGroup) holds the requests behind it on that connection.
//!
//! Every request is translated into Levee's own request and run through the same handler as a
//! Levee connection's (`server::handler`), or, for the group membership apis, which Levee's
//! protocol has no request for, into a `handler::classic` operation on the same coordinator
//! (`kafka/groups.rs`): the same owner-shard hops, quotas, backlog bounds,
//! acknowledgement levels (acks -1 = `durable`, 1 = `written`, 0 = `none`: no response) and
//! metrics. Kafka record batches are checked (CRC-32C), decompressed under a bound and stored as
//! Levee records ([`records`]); fetched Levee records go out as one record batch per partition.
//!
//! Bounds: a connection counts against `connections_max` and holds the same fixed charge as a
//! Levee connection; a frame is at most `frame_bytes_max` (charged to the memory budget while it
//! is handled) and must arrive whole within `frame_read_timeout_ms`; a connection idle for
//! `idle_timeout_ms` is closed. A frame that cannot be decoded closes only its connection, as
//! Kafka does; an unknown ApiVersions version is answered with `UNSUPPORTED_VERSION` and the
//! supported range in a version 0 body.
//!
//! This module owns the Kafka codec and its translation. It reaches partitions only through the
//! server's handler, never the shard or storage directly.

mod groups;
mod records;

pub use records::{decode_batches, BatchError, BATCH_RECORDS_MAX, DECOMPRESSED_BYTES_MAX};

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use kafka_protocol::messages::{
    api_versions_response::ApiVersion, create_topics_response, delete_topics_response,
    fetch_response, list_offsets_response, metadata_response, offset_commit_response,
    offset_fetch_response, produce_response, ApiKey as KafkaApi, ApiVersionsRequest,
    ApiVersionsResponse, BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
    DeleteTopicsResponse, FetchRequest as KFetchRequest, FetchResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, HeartbeatRequest, InitProducerIdRequest, InitProducerIdResponse,
    JoinGroupRequest, LeaveGroupRequest, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest,
    MetadataResponse, OffsetCommitRequest as KOffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, ProduceRequest as KProduceRequest, ProduceResponse,
    ProducerId, RequestHeader, ResponseHeader, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rkyv::util::AlignedVec;

use super::connection::accept_each;
use super::response::Outgoing;
use super::{handler, Session, Shared};
use crate::catalog::INTERNAL_PREFIX;
use crate::protocol::{
    self, Acks, ApiKey, ErrorCode, FetchBlock, FetchRequest, ListOffsetsBlock, OffsetSpec, Request,
    Response, TopicConfig,
};
use crate::runtime::{self, TcpListener, TcpStream};
use crate::shard::Shard;
use crate::storage::Io;

/// A frame's buffer starts at this size (or the frame's, if smaller) and doubles as it fills.
const FRAME_CHUNK_BYTES: usize = 64 << 10;

/// `(api, min, max)` versions this listener serves, as ApiVersions advertises them. Produce
/// advertises 0 as its minimum, as Kafka does, so that older clients keep compressing; a
/// Produce of versions 0–2 carries old message sets and each partition is refused with
/// `UNSUPPORTED_FOR_MESSAGE_FORMAT`.
pub const SUPPORTED: &[(KafkaApi, i16, i16)] = &[
    (KafkaApi::Produce, 0, 9),
    (KafkaApi::Fetch, 4, 12),
    (KafkaApi::ListOffsets, 1, 7),
    (KafkaApi::OffsetCommit, 2, 8),
    (KafkaApi::OffsetFetch, 1, 7),
    (KafkaApi::FindCoordinator, 0, 3),
    (KafkaApi::JoinGroup, 0, 7),
    (KafkaApi::Heartbeat, 0, 4),
    (KafkaApi::LeaveGroup, 0, 4),
    (KafkaApi::SyncGroup, 0, 5),
    (KafkaApi::Metadata, 0, 12),
    (KafkaApi::ApiVersions, 0, 4),
    (KafkaApi::CreateTopics, 0, 7),
    (KafkaApi::DeleteTopics, 0, 6),
    (KafkaApi::InitProducerId, 0, 4),
];

/// Kafka error codes this listener answers with.
mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const RECORD_LIST_TOO_LARGE: i16 = 18;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_CONFIG: i16 = 40;
    pub const INVALID_REQUEST: i16 = 42;
    pub const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
    pub const POLICY_VIOLATION: i16 = 44;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub const THROTTLING_QUOTA_EXCEEDED: i16 = 89;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
}

/// The Kafka code of a Levee error code.
fn kafka_code(e: ErrorCode) -> i16 {
    match e {
        ErrorCode::None => code::NONE,
        ErrorCode::OffsetOutOfRange => code::OFFSET_OUT_OF_RANGE,
        ErrorCode::CorruptRecord => code::CORRUPT_MESSAGE,
        ErrorCode::UnknownTopic | ErrorCode::UnknownPartition => code::UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode::RecordTooLarge => code::MESSAGE_TOO_LARGE,
        ErrorCode::FrameTooLarge | ErrorCode::LimitExceeded => code::RECORD_LIST_TOO_LARGE,
        ErrorCode::InvalidTopicName => code::INVALID_TOPIC_EXCEPTION,
        ErrorCode::TopicAlreadyExists => code::TOPIC_ALREADY_EXISTS,
        ErrorCode::InvalidConfig => code::INVALID_CONFIG,
        ErrorCode::InvalidRequest => code::INVALID_REQUEST,
        ErrorCode::UnsupportedVersion | ErrorCode::UnknownApiKey => code::UNSUPPORTED_VERSION,
        ErrorCode::StorageFull | ErrorCode::StorageFailed => code::KAFKA_STORAGE_ERROR,
        ErrorCode::Timeout | ErrorCode::Busy => code::REQUEST_TIMED_OUT,
        ErrorCode::ShuttingDown => code::LEADER_NOT_AVAILABLE,
        // The topic's backlog bound under policy `reject`: not worth retrying at once.
        ErrorCode::QueueFull => code::POLICY_VIOLATION,
        ErrorCode::Throttled => code::THROTTLING_QUOTA_EXCEEDED,
        ErrorCode::OutOfOrderSequence => code::OUT_OF_ORDER_SEQUENCE_NUMBER,
        ErrorCode::DuplicateSequence => code::DUPLICATE_SEQUENCE_NUMBER,
        ErrorCode::UnknownMember => code::UNKNOWN_MEMBER_ID,
        ErrorCode::IllegalGeneration => code::ILLEGAL_GENERATION,
        ErrorCode::RebalanceInProgress => code::REBALANCE_IN_PROGRESS,
        // A commit without membership to a group whose members are Levee clients: not theirs.
        ErrorCode::GroupNotEmpty => code::UNKNOWN_MEMBER_ID,
        _ => code::UNKNOWN_SERVER_ERROR,
    }
}

/// Accepts Kafka connections on one shard's Kafka listener. Kafka has no "busy" answer: a
/// connection over the limits is closed, and the client backs off and reconnects.
pub(crate) async fn accept_loop<I: Io>(
    listener: TcpListener,
    shard: Rc<Shard<I>>,
    shared: Arc<Shared>,
) {
    accept_each(listener, shard, shared, serve, drop).await
}

/// Serves one Kafka connection until it closes, times out, sends what cannot be decoded, or the
/// broker shuts down.
async fn serve<I: Io>(mut stream: TcpStream, shard: Rc<Shard<I>>, shared: Arc<Shared>) {
    let config = &shared.config;
    let idle = Duration::from_millis(config.idle_timeout_ms);
    let frame_timeout = Duration::from_millis(config.frame_read_timeout_ms);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(idle));
    let session = Session::new(stream.peer_addr().ok(), shard.id);
    loop {
        let mut len = [0u8; 4];
        let read = futures_lite::future::or(
            async {
                runtime::until(
                    std::time::Instant::now() + idle,
                    stream.read_exact(&mut len),
                )
                .await
            },
            async {
                shared.shutdown.wait().await;
                None
            },
        )
        .await;
        match read {
            Some(Ok(())) => {}
            _ => return,
        }
        let size = i32::from_be_bytes(len);
        let Some(size) = usize::try_from(size)
            .ok()
            .filter(|&s| (8..=config.frame_bytes_max).contains(&s))
        else {
            tracing::debug!(
                size,
                "kafka frame size out of bounds; closing the connection"
            );
            return;
        };
        // The buffer grows (and is charged) as bytes arrive, never from the size the length
        // claims: a client that claims 64 MiB and sends a byte holds 64 KiB.
        let deadline = std::time::Instant::now() + frame_timeout;
        let mut frame: Vec<u8> = Vec::with_capacity(size.min(FRAME_CHUNK_BYTES));
        let mut charge = shared.budget.charge(frame.capacity()).await;
        while frame.len() < size {
            if frame.len() == frame.capacity() {
                let cap = (frame.capacity() * 2).min(size);
                charge.grow_to(cap).await;
                frame.reserve_exact(cap - frame.len());
            }
            let start = frame.len();
            frame.resize(frame.capacity().min(size), 0);
            match runtime::until(deadline, stream.read(&mut frame[start..])).await {
                Some(Ok(n)) if n > 0 => frame.truncate(start + n),
                _ => return,
            }
        }
        let answer = match handle(&shard, &shared, &session, Bytes::from(frame)).await {
            Ok(answer) => answer,
            Err(reason) => {
                tracing::debug!(%reason, "kafka request not understood; closing the connection");
                return;
            }
        };
        drop(charge);
        if let Some(bytes) = answer {
            if stream.write_all(&bytes).await.is_err() {
                return;
            }
        }
    }
}

/// A Kafka request this listener serves, decoded.
#[derive(Debug)]
pub enum KafkaRequest {
    /// ApiVersions at a version this listener speaks.
    ApiVersions,
    /// ApiVersions at a version it does not: answered in a v0 body with `UNSUPPORTED_VERSION`.
    ApiVersionsFallback,
    /// Topics and brokers.
    Metadata(MetadataRequest),
    /// Record batches to append.
    Produce(KProduceRequest),
    /// Records to read.
    Fetch(KFetchRequest),
    /// Offsets by time.
    ListOffsets(ListOffsetsRequest),
    /// A producer id for an idempotent producer.
    InitProducerId(InitProducerIdRequest),
    /// Topics to create.
    CreateTopics(CreateTopicsRequest),
    /// Topics to delete.
    DeleteTopics(DeleteTopicsRequest),
    /// Which broker coordinates a group.
    FindCoordinator(FindCoordinatorRequest),
    /// A group's positions to store.
    OffsetCommit(KOffsetCommitRequest),
    /// A group's stored positions.
    OffsetFetch(OffsetFetchRequest),
    /// A member joins a group (classic protocol).
    JoinGroup(JoinGroupRequest),
    /// A member's assignment (the leader's sync hands in everyone's).
    SyncGroup(SyncGroupRequest),
    /// A member is alive.
    Heartbeat(HeartbeatRequest),
    /// Members leave.
    LeaveGroup(LeaveGroupRequest),
}

/// A decoded request with what its response needs.
#[derive(Debug)]
pub struct Decoded {
    /// The request's api.
    pub api: KafkaApi,
    /// The version it was sent at (0 for the ApiVersions fallback).
    pub version: i16,
    /// Its correlation id.
    pub correlation_id: i32,
    /// The client id from its header.
    pub client_id: Option<String>,
    /// The body.
    pub request: KafkaRequest,
}

/// Decodes one request frame (after its length prefix). `Err` says why the connection must
/// close: too short, an api or version this listener does not serve, a malformed header or body.
pub fn decode_request(frame: &[u8]) -> Result<Decoded, String> {
    decode_owned(Bytes::copy_from_slice(frame))
}

/// [`decode_request`] of a frame the caller gives up: record batches stay slices of it.
fn decode_owned(frame: Bytes) -> Result<Decoded, String> {
    if frame.len() < 8 {
        return Err(format!(
            "a {}-byte frame is shorter than a request header",
            frame.len()
        ));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api = KafkaApi::try_from(key).map_err(|_| format!("unknown api key {key}"))?;
    let supported = SUPPORTED
        .iter()
        .find(|(a, _, _)| *a == api)
        .is_some_and(|&(_, min, max)| (min..=max).contains(&version));
    if !supported {
        if api == KafkaApi::ApiVersions {
            // A client newer than this listener: the v0 answer tells it what to fall back to.
            return Ok(Decoded {
                api,
                version: 0,
                correlation_id: i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
                client_id: None,
                request: KafkaRequest::ApiVersionsFallback,
            });
        }
        return Err(format!("{api:?} version {version} is not supported"));
    }
    let mut buf = frame.clone();
    let header = RequestHeader::decode(&mut buf, api.request_header_version(version))
        .map_err(|e| format!("bad request header: {e:#}"))?;
    let bad = |e: anyhow::Error| format!("bad {api:?} v{version} request: {e:#}");
    let request = match api {
        KafkaApi::ApiVersions => {
            ApiVersionsRequest::decode(&mut buf, version).map_err(bad)?;
            KafkaRequest::ApiVersions
        }
        KafkaApi::Metadata => {
            KafkaRequest::Metadata(MetadataRequest::decode(&mut buf, version).map_err(bad)?)
        }
        KafkaApi::Produce => {
            KafkaRequest::Produce(KProduceRequest::decode(&mut buf, version).map_err(bad)?)
        }
        KafkaApi::Fetch => {
            KafkaRequest::Fetch(KFetchRequest::decode(&mut buf, version).map_err(bad)?)
        }
        KafkaApi::ListOffsets => {
            KafkaRequest::ListOffsets(ListOffsetsRequest::decode(&mut buf, version).map_err(bad)?)
        }
        KafkaApi::InitProducerId => KafkaRequest::InitProducerId(
            InitProducerIdRequest::decode(&mut buf, version).map_err(bad)?,
        ),
        KafkaApi::CreateTopics => {
            KafkaRequest::CreateTopics(CreateTopicsRequest::decode(&mut buf, version).map_err(bad)?)
        }
        KafkaApi::DeleteTopics => {
            KafkaRequest::DeleteTopics(DeleteTopicsRequest::decode(&mut buf, version).map_err(bad)?)
        }
        KafkaApi::FindCoordinator => KafkaRequest::FindCoordinator(
            FindCoordinatorRequest::decode(&mut buf, version).map_err(bad)?,
        ),
        KafkaApi::OffsetCommit => KafkaRequest::OffsetCommit(
            KOffsetCommitRequest::decode(&mut buf, version).map_err(bad)?,
        ),
        KafkaApi::OffsetFetch => {
            KafkaRequest::OffsetFetch(OffsetFetchRequest::decode(&mut buf, version).map_err(bad)?)
        }
        KafkaApi::JoinGroup => {
            KafkaRequest::JoinGroup(JoinGroupRequest::decode(&mut buf, version).map_err(bad)?)
        }
        KafkaApi::SyncGroup => {
            KafkaRequest::SyncGroup(SyncGroupRequest::decode(&mut buf, version).map_err(bad)?)
        }
        KafkaApi::Heartbeat => {
            KafkaRequest::Heartbeat(HeartbeatRequest::decode(&mut buf, version).map_err(bad)?)
        }
        KafkaApi::LeaveGroup => {
            KafkaRequest::LeaveGroup(LeaveGroupRequest::decode(&mut buf, version).map_err(bad)?)
        }
        other => return Err(format!("{other:?} is not served")),
    };
    Ok(Decoded {
        api,
        version,
        correlation_id: header.correlation_id,
        client_id: header.client_id.map(|c| c.as_str().to_string()),
        request,
    })
}

/// One request frame to its response frame (length prefix included), `None` when the request
/// expects none (Produce with acks 0), or why the connection must close.
async fn handle<I: Io>(
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    session: &Session,
    frame: Bytes,
) -> Result<Option<Vec<u8>>, String> {
    let d = decode_owned(frame)?;
    if let Some(id) = &d.client_id {
        session.set_client_id(id);
    }
    let (api, version, cid) = (d.api, d.version, d.correlation_id);
    match d.request {
        KafkaRequest::ApiVersions => {
            encode(api, version, cid, &api_versions_body(code::NONE)).map(Some)
        }
        KafkaRequest::ApiVersionsFallback => {
            encode(api, 0, cid, &api_versions_body(code::UNSUPPORTED_VERSION)).map(Some)
        }
        KafkaRequest::Metadata(r) => {
            let response = metadata(shard, shared, session, &r).await;
            encode(api, version, cid, &response).map(Some)
        }
        KafkaRequest::Produce(r) => {
            let quiet = r.acks == 0;
            let response = produce(shard, shared, session, r, version).await;
            if quiet {
                return Ok(None);
            }
            encode(api, version, cid, &response).map(Some)
        }
        KafkaRequest::Fetch(r) => {
            let response = fetch(shard, shared, session, r).await;
            encode(api, version, cid, &response).map(Some)
        }
        KafkaRequest::ListOffsets(r) => {
            let response = list_offsets(shard, shared, session, r).await;
            encode(api, version, cid, &response).map(Some)
        }
        KafkaRequest::InitProducerId(r) => {
            let response = init_producer_id(shard, shared, session, r).await;
            encode(api, version, cid, &response).map(Some)
        }
        KafkaRequest::CreateTopics(r) => {
            let response = create_topics(shard, shared, session, r).await;
            encode(api, version, cid, &response).map(Some)
        }
        KafkaRequest::DeleteTopics(r) => {
            let response = delete_topics(shard, shared, session, r).await;
            encode(api, version, cid, &response).map(Some)
        }
        KafkaRequest::FindCoordinator(r) => {
            encode(api, version, cid, &find_coordinator(shard, shared, &r)).map(Some)
        }
        KafkaRequest::OffsetCommit(r) => {
            let response = offset_commit(shard, shared, session, r).await;
            encode(api, version, cid, &response).map(Some)
        }
        KafkaRequest::OffsetFetch(r) => {
            let response = offset_fetch(shard, shared, session, r).await;
            encode(api, version, cid, &response).map(Some)
        }
        KafkaRequest::JoinGroup(r) => {
            let response = groups::join(shard, session, r, version).await;
            encode(api, version, cid, &response).map(Some)
        }
        KafkaRequest::SyncGroup(r) => {
            let wait = Duration::from_millis(crate::group::SESSION_TIMEOUT_MS_MAX as u64);
            let response = groups::sync(shard, r, wait).await;
            encode(api, version, cid, &response).map(Some)
        }
        KafkaRequest::Heartbeat(r) => {
            let response = groups::heartbeat(shard, r).await;
            encode(api, version, cid, &response).map(Some)
        }
        KafkaRequest::LeaveGroup(r) => {
            let response = groups::leave(shard, r, version).await;
            encode(api, version, cid, &response).map(Some)
        }
    }
}

/// A response frame: length, header (the version the api's response uses), body.
fn encode<M: Encodable>(
    api: KafkaApi,
    version: i16,
    cid: i32,
    body: &M,
) -> Result<Vec<u8>, String> {
    let mut buf = BytesMut::with_capacity(64);
    buf.extend_from_slice(&[0; 4]);
    let mut header = ResponseHeader::default();
    header.correlation_id = cid;
    header
        .encode(&mut buf, api.response_header_version(version))
        .and_then(|()| body.encode(&mut buf, version))
        .map_err(|e| format!("cannot encode the {api:?} response: {e:#}"))?;
    let len = (buf.len() - 4) as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.to_vec())
}

fn api_versions_body(error_code: i16) -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.error_code = error_code;
    r.api_keys = SUPPORTED
        .iter()
        .map(|&(api, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = api as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect();
    r
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

/// Brokers (one per shard, with its Kafka address) and the topics asked for (all but internal
/// ones when none are named); every partition's leader is its owner shard.
async fn metadata<I: Io>(
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    session: &Session,
    r: &MetadataRequest,
) -> MetadataResponse {
    let mut out = MetadataResponse::default();
    let addrs = shared.kafka_addrs.get().cloned().unwrap_or_default();
    out.brokers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut b = metadata_response::MetadataResponseBroker::default();
            b.node_id = BrokerId(i as i32);
            b.host = StrBytes::from_string(a.ip().to_string());
            b.port = i32::from(a.port());
            b
        })
        .collect();
    out.cluster_id = Some(StrBytes::from_static_str("levee"));
    out.controller_id = BrokerId(0);
    if shared.config.kafka_auto_create_topics && r.allow_auto_topic_creation {
        // Topics named and missing are created with the broker's defaults (one partition), as
        // Kafka's auto.create.topics.enable does; a name that cannot be a topic stays unknown.
        let catalog = shard.topics();
        for t in r.topics.iter().flatten() {
            if let Some(name) = &t.name {
                let name = name.0.as_str();
                if catalog.get(name).is_none() && !name.starts_with(INTERNAL_PREFIX) {
                    let _ = levee_done(
                        shard,
                        shared,
                        session,
                        &Request::CreateTopic {
                            name: name.to_string(),
                            config: TopicConfig::default(),
                        },
                    )
                    .await;
                }
            }
        }
    }
    let catalog = shard.topics();
    let names: Vec<String> = match &r.topics {
        None => catalog
            .iter()
            .filter(|m| !m.name.starts_with(INTERNAL_PREFIX))
            .map(|m| m.name.clone())
            .collect(),
        Some(ts) => ts
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.as_str().to_string()))
            .collect(),
    };
    out.topics = names
        .into_iter()
        .map(|name| {
            let mut t = metadata_response::MetadataResponseTopic::default();
            t.name = Some(topic_name(&name));
            match catalog.get(&name) {
                None => t.error_code = code::UNKNOWN_TOPIC_OR_PARTITION,
                Some(meta) => {
                    t.is_internal = name.starts_with(INTERNAL_PREFIX);
                    t.partitions = (0..meta.partitions)
                        .map(|p| {
                            let owner = BrokerId(i32::from(shard.owner(&name, p)));
                            let mut part = metadata_response::MetadataResponsePartition::default();
                            part.partition_index = p as i32;
                            part.leader_id = owner;
                            part.leader_epoch = 0;
                            part.replica_nodes = vec![owner];
                            part.isr_nodes = vec![owner];
                            part
                        })
                        .collect();
                }
            }
            t
        })
        .collect();
    out
}

/// Runs one Levee request frame through the server's handler and returns the response frame
/// (a Fetch response with its record runs in place), or `None` for a request without one.
async fn call<I: Io>(
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    session: &Session,
    levee_frame: &[u8],
) -> Option<AlignedVec<16>> {
    // Record runs are validated in place: the frame must be 16-byte aligned, as a connection's
    // frame buffers are.
    let mut frame = AlignedVec::<16>::with_capacity(levee_frame.len());
    frame.extend_from_slice(levee_frame);
    call_aligned(shard, shared, session, frame).await
}

/// [`call`] of a frame already in an aligned buffer.
async fn call_aligned<I: Io>(
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    session: &Session,
    mut frame: AlignedVec<16>,
) -> Option<AlignedVec<16>> {
    let out = handler::handle(shard, shared, session, &mut frame).await?;
    let mut bytes = AlignedVec::<16>::new();
    match out {
        Outgoing::Frame(f) => bytes.extend_from_slice(&f),
        Outgoing::Fetch {
            head,
            splits,
            slices,
        } => {
            let mut at = 0;
            for (split, slice) in splits.iter().zip(&slices) {
                bytes.extend_from_slice(&head[at..*split]);
                at = *split;
                if let Some(s) = slice {
                    bytes.extend_from_slice(s.bytes());
                }
            }
            bytes.extend_from_slice(&head[at..]);
        }
    }
    Some(bytes)
}

/// Decodes a Levee response frame of `key` (sent at the newest version): its body, or the
/// request-level error code.
fn levee_response(key: ApiKey, frame: &[u8]) -> Result<Response, ErrorCode> {
    match protocol::decode_response_at(frame, key.versions().1) {
        Ok((_, Some(r))) => Ok(r),
        Ok((h, None)) => Err(h.error_code),
        Err(_) => Err(ErrorCode::Internal),
    }
}

async fn produce<I: Io>(
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    session: &Session,
    r: KProduceRequest,
    version: i16,
) -> ProduceResponse {
    let acks = match r.acks {
        -1 => Some(Acks::Durable),
        1 => Some(Acks::Written),
        0 => Some(Acks::None),
        _ => None,
    };
    // Per partition: the Levee run, or the Kafka code it failed with.
    let mut parts: Vec<(String, i32, Result<Vec<u8>, i16>)> = Vec::new();
    for t in &r.topic_data {
        let name = t.name.0.as_str().to_string();
        for p in &t.partition_data {
            let run = if r.transactional_id.is_some() {
                Err(code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
            } else if acks.is_none() {
                Err(code::INVALID_REQUIRED_ACKS)
            } else if version < 3 {
                Err(code::UNSUPPORTED_FOR_MESSAGE_FORMAT)
            } else {
                to_run(p.records.as_ref())
            };
            parts.push((name.clone(), p.index, run));
        }
    }
    let blocks: Vec<(&str, u32, &[u8])> = parts
        .iter()
        .filter_map(|(t, p, run)| match run {
            Ok(run) if *p >= 0 => Some((t.as_str(), *p as u32, run.as_slice())),
            _ => None,
        })
        .collect();
    let mut results = Vec::new();
    let mut throttle_ms = 0u32;
    if !blocks.is_empty() {
        let timeout = r.timeout_ms.max(0) as u32;
        let acks = acks.unwrap_or(Acks::Durable);
        let failed = match produce_frame(acks, timeout, &blocks) {
            Err(_) => Some(code::RECORD_LIST_TOO_LARGE),
            // `None`: acks 0, no answer to wait for.
            Ok(frame) => match call_aligned(shard, shared, session, frame).await {
                None => None,
                Some(out) => match levee_response(ApiKey::Produce, &out) {
                    Ok(Response::Produce(rs)) => {
                        results = rs;
                        None
                    }
                    Ok(_) => Some(code::UNKNOWN_SERVER_ERROR),
                    Err(e) => Some(kafka_code(e)),
                },
            },
        };
        if let Some(c) = failed {
            for (_, _, run) in parts.iter_mut() {
                if run.is_ok() {
                    *run = Err(c);
                }
            }
        }
    }
    let mut out = ProduceResponse::default();
    for (topic, partition, run) in &parts {
        let mut pr = produce_response::PartitionProduceResponse::default();
        pr.index = *partition;
        pr.log_append_time_ms = -1;
        pr.log_start_offset = -1;
        match run {
            Err(c) => {
                pr.error_code = *c;
                pr.base_offset = -1;
            }
            Ok(_) => match results
                .iter()
                .find(|x| x.topic == *topic && x.partition as i32 == *partition)
            {
                Some(x) => {
                    pr.error_code = kafka_code(x.error);
                    pr.base_offset = if x.error == ErrorCode::None {
                        x.base_offset as i64
                    } else {
                        -1
                    };
                    throttle_ms = throttle_ms.max(x.throttle_ms);
                }
                None => {
                    pr.error_code = if *partition < 0 {
                        code::UNKNOWN_TOPIC_OR_PARTITION
                    } else {
                        code::UNKNOWN_SERVER_ERROR
                    };
                    pr.base_offset = -1;
                }
            },
        }
        match out
            .responses
            .iter_mut()
            .find(|t| t.name.0.as_str() == topic)
        {
            Some(t) => t.partition_responses.push(pr),
            None => {
                let mut t = produce_response::TopicProduceResponse::default();
                t.name = topic_name(topic);
                t.partition_responses.push(pr);
                out.responses.push(t);
            }
        }
    }
    out.throttle_time_ms = throttle_ms.min(i32::MAX as u32) as i32;
    out
}

/// The Levee Produce frame of `blocks`, assembled once in the aligned buffer the handler reads
/// (its head around each block's run) rather than encoded and then copied.
fn produce_frame(
    acks: Acks,
    timeout_ms: u32,
    blocks: &[(&str, u32, &[u8])],
) -> Result<AlignedVec<16>, protocol::EncodeError> {
    let mut head = Vec::new();
    let version = ApiKey::Produce.versions().1;
    let splits = protocol::encode_produce_head(&mut head, version, 0, acks, timeout_ms, blocks)?;
    let runs: usize = blocks.iter().map(|(_, _, run)| run.len()).sum();
    let mut frame = AlignedVec::<16>::with_capacity(head.len() + runs);
    let mut at = 0;
    for (split, (_, _, run)) in splits.into_iter().zip(blocks) {
        frame.extend_from_slice(&head[at..split]);
        frame.extend_from_slice(run);
        at = split;
    }
    frame.extend_from_slice(&head[at..]);
    Ok(frame)
}

/// A Produce partition's Kafka batches as one Levee run, or the Kafka code they fail with.
fn to_run(records: Option<&Bytes>) -> Result<Vec<u8>, i16> {
    let Some(records) = records else {
        return Err(code::CORRUPT_MESSAGE);
    };
    let messages = records::decode_batches(records).map_err(|e| {
        tracing::debug!(error = %e, "kafka batch refused");
        match e {
            records::BatchError::OldFormat(_) => code::UNSUPPORTED_FOR_MESSAGE_FORMAT,
            records::BatchError::Transactional => code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            records::BatchError::TooLarge(_) => code::RECORD_LIST_TOO_LARGE,
            records::BatchError::Corrupt(_) => code::CORRUPT_MESSAGE,
        }
    })?;
    if messages.is_empty() {
        return Err(code::CORRUPT_MESSAGE);
    }
    let mut run = Vec::new();
    for m in &messages {
        crate::record::encode_like(&m.message, m.null_value, &mut run)
            .map_err(|_| code::MESSAGE_TOO_LARGE)?;
    }
    Ok(run)
}

async fn fetch<I: Io>(
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    session: &Session,
    r: KFetchRequest,
) -> FetchResponse {
    let mut blocks = Vec::new();
    let mut refused: Vec<(String, i32, i16)> = Vec::new();
    for t in &r.topics {
        let name = t.topic.0.as_str().to_string();
        for p in &t.partitions {
            if p.partition < 0 || p.fetch_offset < 0 {
                refused.push((name.clone(), p.partition, code::OFFSET_OUT_OF_RANGE));
                continue;
            }
            blocks.push(FetchBlock {
                topic: name.clone(),
                partition: p.partition as u32,
                offset: p.fetch_offset as u64,
                max_bytes: p.partition_max_bytes.max(1) as u32,
            });
        }
    }
    let mut out = FetchResponse::default();
    let mut results = Vec::new();
    let mut top_error = ErrorCode::None;
    if !blocks.is_empty() {
        let request = Request::Fetch(FetchRequest {
            max_wait_ms: r.max_wait_ms.max(0) as u32,
            min_bytes: r.min_bytes.max(0) as u32,
            max_bytes: if r.max_bytes > 0 {
                r.max_bytes as u32
            } else {
                u32::MAX
            },
            blocks,
        });
        let mut frame = Vec::new();
        if protocol::encode_request(&mut frame, 0, &request).is_ok() {
            if let Some(resp) = call(shard, shared, session, &frame).await {
                match levee_response(ApiKey::Fetch, &resp) {
                    Ok(Response::Fetch(rs)) => {
                        for x in rs {
                            let batch = if x.error == ErrorCode::None {
                                resp.get(x.run.clone())
                                    .map(records::encode_run)
                                    .and_then(Result::ok)
                                    .flatten()
                            } else {
                                None
                            };
                            results.push((x, batch));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => top_error = e,
                }
            }
        }
    }
    let mut throttle_ms = 0u32;
    let push = |out: &mut FetchResponse, topic: &str, part: fetch_response::PartitionData| match out
        .responses
        .iter_mut()
        .find(|t| t.topic.0.as_str() == topic)
    {
        Some(t) => t.partitions.push(part),
        None => {
            let mut t = fetch_response::FetchableTopicResponse::default();
            t.topic = topic_name(topic);
            t.partitions.push(part);
            out.responses.push(t);
        }
    };
    for (x, batch) in results {
        let mut part = fetch_response::PartitionData::default();
        part.partition_index = x.partition as i32;
        part.error_code = kafka_code(x.error);
        part.high_watermark = x.next as i64;
        part.last_stable_offset = x.next as i64;
        part.log_start_offset = x.earliest as i64;
        part.records = Some(batch.unwrap_or_default());
        throttle_ms = throttle_ms.max(x.throttle_ms);
        push(&mut out, &x.topic, part);
    }
    for (topic, partition, c) in refused {
        let mut part = fetch_response::PartitionData::default();
        part.partition_index = partition;
        part.error_code = c;
        part.high_watermark = -1;
        part.last_stable_offset = -1;
        part.log_start_offset = -1;
        part.records = Some(Bytes::new());
        push(&mut out, &topic, part);
    }
    if top_error != ErrorCode::None {
        out.error_code = kafka_code(top_error);
    }
    out.throttle_time_ms = throttle_ms.min(i32::MAX as u32) as i32;
    out
}

/// A producer id for an idempotent Kafka producer: Levee's own (InitProducer), epoch 0. Its
/// batches then carry the id and their sequences into the Levee records, and the partition's
/// owner stores each batch once however often it is resent (docs/protocol.md §6.8). A
/// transactional producer is refused: transactions are not supported.
async fn init_producer_id<I: Io>(
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    session: &Session,
    r: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let mut out = InitProducerIdResponse::default();
    out.producer_id = ProducerId(-1);
    out.producer_epoch = -1;
    if r.transactional_id.is_some_and(|t| !t.0.is_empty()) {
        out.error_code = code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
        return out;
    }
    match levee_request(shard, shared, session, &Request::InitProducer).await {
        Ok(Response::InitProducer { producer_id }) => {
            out.producer_id = ProducerId(producer_id as i64);
            out.producer_epoch = 0;
        }
        Ok(_) => out.error_code = code::UNKNOWN_SERVER_ERROR,
        Err((e, _)) => out.error_code = kafka_code(e),
    }
    out
}

/// Runs a Levee request other than Produce through the handler and decodes its answer: the
/// body, or the request-level code and message.
async fn levee_request<I: Io>(
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    session: &Session,
    request: &Request,
) -> Result<Response, (ErrorCode, String)> {
    let mut frame = Vec::new();
    protocol::encode_request(&mut frame, 0, request)
        .map_err(|e| (ErrorCode::InvalidRequest, e.to_string()))?;
    let out = call(shard, shared, session, &frame)
        .await
        .ok_or((ErrorCode::Internal, "no answer".to_string()))?;
    levee_response(request.api_key(), &out).map_err(|c| (c, protocol::error_message(&out)))
}

/// Runs a Levee request answered with `Done` (topic administration).
async fn levee_done<I: Io>(
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    session: &Session,
    request: &Request,
) -> Result<(), (ErrorCode, String)> {
    levee_request(shard, shared, session, request)
        .await
        .map(drop)
}

/// The Levee topic settings of a Kafka CreateTopics entry, or the Kafka code and message it is
/// refused with. Replication factor -1 or 1 (one node); `retention.ms` and `retention.bytes`
/// (-1: unlimited) are the configs understood.
fn topic_config(
    t: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Result<TopicConfig, (i16, String)> {
    if !t.assignments.is_empty() {
        return Err((
            code::INVALID_REQUEST,
            "manual replica assignment is not supported".into(),
        ));
    }
    if t.replication_factor != -1 && t.replication_factor != 1 {
        return Err((
            code::INVALID_REPLICATION_FACTOR,
            format!(
                "replication factor {} on a single node (use 1 or -1)",
                t.replication_factor
            ),
        ));
    }
    let partitions = match t.num_partitions {
        -1 => 1,
        n if n > 0 => n as u32,
        n => return Err((code::INVALID_PARTITIONS, format!("{n} partitions"))),
    };
    let mut config = TopicConfig {
        partitions,
        ..TopicConfig::default()
    };
    for c in &t.configs {
        let value = c.value.as_ref().map(|v| v.as_str()).unwrap_or("");
        let limit = |v: &str| -> Result<Option<u64>, (i16, String)> {
            match v.parse::<i64>() {
                Ok(-1) => Ok(None),
                Ok(n) if n > 0 => Ok(Some(n as u64)),
                _ => Err((
                    code::INVALID_CONFIG,
                    format!("{}={v}: expected a positive integer or -1", c.name.as_str()),
                )),
            }
        };
        match c.name.as_str() {
            "retention.ms" => config.retention_ms = limit(value)?,
            "retention.bytes" => config.retention_bytes = limit(value)?,
            other => {
                return Err((
                    code::INVALID_CONFIG,
                    format!(
                        "config {other} is not supported (retention.ms and retention.bytes are)"
                    ),
                ))
            }
        }
    }
    Ok(config)
}

async fn create_topics<I: Io>(
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    session: &Session,
    r: CreateTopicsRequest,
) -> CreateTopicsResponse {
    let mut out = CreateTopicsResponse::default();
    for t in &r.topics {
        let mut result = create_topics_response::CreatableTopicResult::default();
        result.name = t.name.clone();
        let outcome = match topic_config(t) {
            Err(e) => Err(e),
            Ok(config) => {
                result.num_partitions = config.partitions as i32;
                result.replication_factor = 1;
                if r.validate_only {
                    Ok(())
                } else {
                    let request = Request::CreateTopic {
                        name: t.name.0.as_str().to_string(),
                        config,
                    };
                    levee_done(shard, shared, session, &request)
                        .await
                        .map_err(|(c, m)| (create_code(c), m))
                }
            }
        };
        if let Err((c, message)) = outcome {
            result.error_code = c;
            result.error_message = Some(StrBytes::from_string(message));
            result.num_partitions = -1;
            result.replication_factor = -1;
        }
        out.topics.push(result);
    }
    out
}

/// A Levee code from creating a topic, as CreateTopics reports it.
fn create_code(c: ErrorCode) -> i16 {
    match c {
        // Over topic_partitions_max or partitions_max.
        ErrorCode::LimitExceeded => code::INVALID_PARTITIONS,
        other => kafka_code(other),
    }
}

async fn delete_topics<I: Io>(
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    session: &Session,
    r: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    // Versions 0-5 name topics in `topic_names`, version 6 in `topics` (by name; ids are all zero
    // here, so a topic named by id alone is unknown).
    let names: Vec<Option<TopicName>> = if r.topics.is_empty() {
        r.topic_names.iter().cloned().map(Some).collect()
    } else {
        r.topics.iter().map(|t| t.name.clone()).collect()
    };
    let mut out = DeleteTopicsResponse::default();
    for name in names {
        let mut result = delete_topics_response::DeletableTopicResult::default();
        result.name = name.clone();
        let outcome = match &name {
            None => Err((
                code::UNKNOWN_TOPIC_OR_PARTITION,
                "topic ids are not supported".to_string(),
            )),
            Some(n) => levee_done(
                shard,
                shared,
                session,
                &Request::DeleteTopic {
                    name: n.0.as_str().to_string(),
                },
            )
            .await
            .map_err(|(c, m)| (kafka_code(c), m)),
        };
        if let Err((c, message)) = outcome {
            result.error_code = c;
            result.error_message = Some(StrBytes::from_string(message));
        }
        out.responses.push(result);
    }
    out
}

/// The broker (shard) that coordinates a group: the owner of its offsets partition, as for
/// Levee's own groups. Transaction coordinators do not exist here.
fn find_coordinator<I: Io>(
    shard: &Rc<Shard<I>>,
    shared: &Shared,
    r: &FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let mut out = FindCoordinatorResponse::default();
    out.node_id = BrokerId(-1);
    out.host = StrBytes::from_static_str("");
    out.port = -1;
    let group = r.key.as_str();
    let fail = |mut out: FindCoordinatorResponse, c: i16, m: &str| {
        out.error_code = c;
        out.error_message = Some(StrBytes::from_string(m.to_string()));
        out
    };
    if r.key_type != 0 {
        return fail(
            out,
            code::COORDINATOR_NOT_AVAILABLE,
            "transactions are not supported",
        );
    }
    if !protocol::valid_group_name(group) {
        return fail(out, code::INVALID_GROUP_ID, "not a valid group name");
    }
    let Some(partitions) = crate::shard::groups::offsets_partitions(&shard.topics()) else {
        return fail(
            out,
            code::COORDINATOR_NOT_AVAILABLE,
            "the offsets topic is not loaded",
        );
    };
    let p = crate::shard::groups::coordinator_partition(group, partitions);
    let owner = shard.owner(crate::group::OFFSETS_TOPIC, p);
    match shared
        .kafka_addrs
        .get()
        .and_then(|a| a.get(usize::from(owner)))
    {
        Some(addr) => {
            out.node_id = BrokerId(i32::from(owner));
            out.host = StrBytes::from_string(addr.ip().to_string());
            out.port = i32::from(addr.port());
            out
        }
        None => fail(
            out,
            code::COORDINATOR_NOT_AVAILABLE,
            "no Kafka listener for the coordinator",
        ),
    }
}

/// Stores a group's positions: a member's of its current generation (fenced as Levee's own
/// members are), or, with generation -1, a consumer's that assigns partitions itself (a commit to
/// a group with no members). The commit metadata string is kept and returned by OffsetFetch.
async fn offset_commit<I: Io>(
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    session: &Session,
    r: KOffsetCommitRequest,
) -> OffsetCommitResponse {
    let (member, generation) = match u32::try_from(r.generation_id_or_member_epoch) {
        Ok(g) => (r.member_id.as_str().to_string(), g),
        Err(_) => (String::new(), crate::protocol::NO_GENERATION),
    };
    let mut offsets = Vec::new();
    for t in &r.topics {
        for p in &t.partitions {
            if p.partition_index >= 0 && p.committed_offset >= 0 {
                offsets.push(crate::protocol::CommitOffset {
                    topic: t.name.0.as_str().to_string(),
                    partition: p.partition_index as u32,
                    offset: p.committed_offset as u64,
                    metadata: p
                        .committed_metadata
                        .as_ref()
                        .map(|m| m.as_str().to_string())
                        .unwrap_or_default(),
                });
            }
        }
    }
    let request = Request::OffsetCommit(crate::protocol::OffsetCommitRequest {
        group: r.group_id.0.as_str().to_string(),
        member_id: member,
        generation,
        offsets,
    });
    let c = match levee_request(shard, shared, session, &request).await {
        Ok(Response::OffsetCommit(results)) => {
            let by_tp: std::collections::HashMap<(String, u32), ErrorCode> = results
                .into_iter()
                .map(|c| ((c.topic, c.partition), c.error))
                .collect();
            return commit_response(&r, |topic, p| {
                match by_tp.get(&(topic.to_string(), p as u32)) {
                    Some(e) => kafka_code(*e),
                    None => code::INVALID_REQUEST,
                }
            });
        }
        Ok(_) => code::UNKNOWN_SERVER_ERROR,
        Err((e, _)) => group_code(e),
    };
    commit_response(&r, |_, _| c)
}

/// A request-level Levee code of a group request, as Kafka reports it: a request Levee cannot
/// take for a group is one with a bad group id.
fn group_code(e: ErrorCode) -> i16 {
    match e {
        ErrorCode::InvalidRequest => code::INVALID_GROUP_ID,
        other => kafka_code(other),
    }
}

/// An OffsetCommit response with each partition's code from `code_of(topic, partition)`.
fn commit_response(
    r: &KOffsetCommitRequest,
    code_of: impl Fn(&str, i32) -> i16,
) -> OffsetCommitResponse {
    let mut out = OffsetCommitResponse::default();
    for t in &r.topics {
        let mut tr = offset_commit_response::OffsetCommitResponseTopic::default();
        tr.name = t.name.clone();
        for p in &t.partitions {
            let mut pr = offset_commit_response::OffsetCommitResponsePartition::default();
            pr.partition_index = p.partition_index;
            pr.error_code = if p.partition_index < 0 || p.committed_offset < 0 {
                code::INVALID_REQUEST
            } else {
                code_of(t.name.0.as_str(), p.partition_index)
            };
            tr.partitions.push(pr);
        }
        out.topics.push(tr);
    }
    out
}

/// A group's stored positions: the partitions asked for (all it committed when `topics` is
/// null), -1 where it committed nothing.
async fn offset_fetch<I: Io>(
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    session: &Session,
    r: OffsetFetchRequest,
) -> OffsetFetchResponse {
    let asked: Vec<(String, u32)> = r
        .topics
        .iter()
        .flatten()
        .flat_map(|t| {
            t.partition_indexes
                .iter()
                .filter(|&&p| p >= 0)
                .map(move |&p| (t.name.0.as_str().to_string(), p as u32))
        })
        .collect();
    let mut out = OffsetFetchResponse::default();
    let request = Request::OffsetFetch {
        group: r.group_id.0.as_str().to_string(),
        partitions: asked,
    };
    let found = match levee_request(shard, shared, session, &request).await {
        Ok(Response::OffsetFetch(list)) => Ok(list),
        Ok(_) => Err(code::UNKNOWN_SERVER_ERROR),
        Err((e, _)) => Err(group_code(e)),
    };
    match found {
        Err(c) => out.error_code = c,
        Ok(list) => {
            for f in list {
                let mut pr = offset_fetch_response::OffsetFetchResponsePartition::default();
                pr.partition_index = f.partition as i32;
                pr.committed_offset = f.offset.map_or(-1, |o| o as i64);
                pr.committed_leader_epoch = -1;
                pr.metadata = Some(StrBytes::from_string(f.metadata));
                pr.error_code = kafka_code(f.error);
                match out.topics.iter_mut().find(|t| t.name.0.as_str() == f.topic) {
                    Some(t) => t.partitions.push(pr),
                    None => {
                        let mut t = offset_fetch_response::OffsetFetchResponseTopic::default();
                        t.name = topic_name(&f.topic);
                        t.partitions.push(pr);
                        out.topics.push(t);
                    }
                }
            }
        }
    }
    out
}

async fn list_offsets<I: Io>(
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    session: &Session,
    r: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut blocks = Vec::new();
    for t in &r.topics {
        for p in &t.partitions {
            blocks.push(ListOffsetsBlock {
                topic: t.name.0.as_str().to_string(),
                partition: p.partition_index.max(0) as u32,
                spec: match p.timestamp {
                    -2 => OffsetSpec::Earliest,
                    // -1 is latest; -3 (max timestamp) and other negatives are answered as
                    // latest too.
                    t if t < 0 => OffsetSpec::Latest,
                    t => OffsetSpec::Timestamp(t),
                },
            });
        }
    }
    let (results, failed) =
        match levee_request(shard, shared, session, &Request::ListOffsets(blocks)).await {
            Ok(Response::ListOffsets(rs)) => (rs, None),
            Ok(_) => (Vec::new(), Some(code::UNKNOWN_SERVER_ERROR)),
            Err((e, _)) => (Vec::new(), Some(kafka_code(e))),
        };
    // Levee answers in request order, one result per lookup (a partition may be asked twice).
    let mut results = results.into_iter();
    let mut out = ListOffsetsResponse::default();
    for t in &r.topics {
        let mut tr = list_offsets_response::ListOffsetsTopicResponse::default();
        tr.name = t.name.clone();
        for p in &t.partitions {
            let mut pr = list_offsets_response::ListOffsetsPartitionResponse::default();
            pr.partition_index = p.partition_index;
            pr.timestamp = -1;
            pr.offset = -1;
            let found = results.next().filter(|x| {
                x.topic == t.name.0.as_str() && x.partition as i32 == p.partition_index
            });
            match (failed, found) {
                (Some(c), _) => pr.error_code = c,
                (None, Some(x)) if p.partition_index >= 0 => {
                    pr.error_code = kafka_code(x.error);
                    if x.error == ErrorCode::None {
                        pr.offset = x.offset as i64;
                    }
                }
                (None, _) => pr.error_code = code::UNKNOWN_TOPIC_OR_PARTITION,
            }
            tr.partitions.push(pr);
        }
        out.topics.push(tr);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames captured on the wire (tests/kafka/golden, made with tests/kafka/capture_frames.py):
    /// requests kcat (librdkafka) sent (`kcat -P -z gzip|snappy|lz4|zstd` with keys, a header
    /// and a null value, `kcat -C`, `kcat -Q`), and requests with this listener's responses
    /// (`NAME.response.bin`) from the group runs of confluent-kafka (librdkafka) and kafka-python
    /// 3 in tests/kafka, which those clients accepted.
    fn golden(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/kafka/golden")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn given_every_request_frame_a_client_sent_when_decoded_should_be_understood() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/golden");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.to_string_lossy().ends_with(".response.bin") {
                continue;
            }
            let frame = std::fs::read(&path).unwrap();
            let d = decode_request(&frame).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // A fallback is answered from the fixed part of its header alone.
            let fallback = matches!(d.request, KafkaRequest::ApiVersionsFallback);
            assert!(fallback || d.client_id.is_some_and(|c| !c.is_empty()));
            seen += 1;
        }
        assert!(seen >= 30);
    }

    /// The body of a captured response frame (its header version from the request's api and
    /// version), which must also be what this listener's encoder writes for it, byte for byte.
    fn response<M: Decodable + Encodable>(name: &str) -> M {
        let request = decode_request(&golden(&format!("{name}.bin"))).unwrap();
        let frame = golden(&format!("{name}.response.bin"));
        let (api, version) = (request.api, request.version);
        let mut buf = Bytes::from(frame.clone());
        let header =
            ResponseHeader::decode(&mut buf, api.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, request.correlation_id, "{name}");
        let body = M::decode(&mut buf, version).unwrap();
        assert!(buf.is_empty(), "{name}: trailing bytes");
        let again = encode(api, version, request.correlation_id, &body).unwrap();
        assert_eq!(again[4..], frame[..], "{name}: encoded again differently");
        body
    }

    #[test]
    fn given_api_versions_requests_should_answer_the_captured_bytes_including_the_fallback() {
        for name in ["rdkafka-api_versions-v3", "kafka-python-api_versions-v4"] {
            let d = decode_request(&golden(&format!("{name}.bin"))).unwrap();
            let ours = encode(d.api, d.version, d.correlation_id, &api_versions_body(0)).unwrap();
            assert_eq!(
                ours[4..],
                golden(&format!("{name}.response.bin"))[..],
                "{name}"
            );
            response::<ApiVersionsResponse>(name);
        }
        // librdkafka's request claimed as version 5, newer than served: a version 0 body with
        // UNSUPPORTED_VERSION and the served ranges, on a connection that stays open.
        let name = "rdkafka-api_versions-v5-fallback";
        let d = decode_request(&golden(&format!("{name}.bin"))).unwrap();
        assert!(matches!(d.request, KafkaRequest::ApiVersionsFallback));
        let body = api_versions_body(code::UNSUPPORTED_VERSION);
        let ours = encode(d.api, 0, d.correlation_id, &body).unwrap();
        let captured = golden(&format!("{name}.response.bin"));
        assert_eq!(ours[4..], captured[..]);
        let mut buf = Bytes::from(captured);
        ResponseHeader::decode(&mut buf, 0).unwrap();
        let v0 = ApiVersionsResponse::decode(&mut buf, 0).unwrap();
        assert_eq!(v0.error_code, code::UNSUPPORTED_VERSION);
        assert!(v0
            .api_keys
            .iter()
            .any(|k| k.api_key == 18 && k.max_version == 4));
    }

    #[test]
    fn given_captured_group_rounds_should_show_the_member_id_round_trip_and_the_leaders_assignment_passed_through(
    ) {
        use kafka_protocol::messages::{
            HeartbeatResponse, JoinGroupResponse, LeaveGroupResponse, SyncGroupResponse,
        };
        for (client, join, sync) in [("rdkafka", 5, 3), ("kafka-python", 7, 5)] {
            let first: JoinGroupResponse =
                response(&format!("{client}-join_group-v{join}-member_id_required"));
            assert_eq!(first.error_code, code::MEMBER_ID_REQUIRED);
            assert!(!first.member_id.is_empty());
            let name = format!("{client}-join_group-v{join}-leader");
            let KafkaRequest::JoinGroup(again) = decode_request(&golden(&format!("{name}.bin")))
                .unwrap()
                .request
            else {
                panic!("not a join")
            };
            assert_eq!(
                again.member_id, first.member_id,
                "{client} joins with the id given"
            );
            let leader: JoinGroupResponse = response(&name);
            assert_eq!(leader.error_code, code::NONE);
            assert_eq!(leader.leader, leader.member_id);
            assert!(!leader.members.is_empty());
            let name = format!("{client}-sync_group-v{sync}-leader");
            let KafkaRequest::SyncGroup(handed_in) =
                decode_request(&golden(&format!("{name}.bin")))
                    .unwrap()
                    .request
            else {
                panic!("not a sync")
            };
            let mine: SyncGroupResponse = response(&name);
            let own = handed_in
                .assignments
                .iter()
                .find(|a| a.member_id == leader.member_id)
                .unwrap();
            assert_eq!(mine.assignment, own.assignment, "{client}: passed through");
        }
        // librdkafka's follower: no members in its join, the leader's bytes in its sync.
        let follower: JoinGroupResponse = response("rdkafka-join_group-v5-follower");
        assert!(follower.members.is_empty() && follower.leader != follower.member_id);
        let theirs: SyncGroupResponse = response("rdkafka-sync_group-v3-follower");
        let KafkaRequest::SyncGroup(handed_in) =
            decode_request(&golden("rdkafka-sync_group-v3-leader.bin"))
                .unwrap()
                .request
        else {
            panic!("not a sync")
        };
        let given = handed_in
            .assignments
            .iter()
            .find(|a| a.member_id == follower.member_id)
            .unwrap();
        assert_eq!(theirs.assignment, given.assignment);
        for name in ["rdkafka-heartbeat-v3", "kafka-python-heartbeat-v4"] {
            assert_eq!(response::<HeartbeatResponse>(name).error_code, code::NONE);
        }
        let left: LeaveGroupResponse = response("rdkafka-leave_group-v1");
        assert_eq!(left.error_code, code::NONE);
        let left: LeaveGroupResponse = response("kafka-python-leave_group-v4");
        assert!(left.members.iter().all(|m| m.error_code == code::NONE));
        for name in ["rdkafka-offset_commit-v8", "kafka-python-offset_commit-v8"] {
            let c: OffsetCommitResponse = response(name);
            assert!(c
                .topics
                .iter()
                .flat_map(|t| &t.partitions)
                .all(|p| p.error_code == code::NONE));
        }
        response::<OffsetFetchResponse>("rdkafka-offset_fetch-v7");
        response::<FindCoordinatorResponse>("rdkafka-find_coordinator-v2");
        for name in [
            "rdkafka-init_producer_id-v4",
            "kafka-python-init_producer_id-v4",
        ] {
            assert_eq!(
                response::<InitProducerIdResponse>(name).error_code,
                code::NONE
            );
        }
        response::<ProduceResponse>("kafka-python-produce-v9");
    }

    #[test]
    fn given_kcat_produce_frames_when_decoded_should_yield_their_records_in_each_compression() {
        // Frame 1: gzip, "k1:v1" and "k2:" sent as a null value (-Z), header h=x.
        let d = decode_request(&golden("kcat-produce-v7-1.bin")).unwrap();
        assert_eq!((d.api, d.version), (KafkaApi::Produce, 7));
        let KafkaRequest::Produce(p) = d.request else {
            panic!("not a produce");
        };
        assert_eq!(p.acks, -1);
        let mut all = Vec::new();
        for t in &p.topic_data {
            assert_eq!(t.name.0.as_str(), "kt");
            for part in &t.partition_data {
                all.extend(decode_batches(part.records.as_ref().unwrap()).unwrap());
            }
        }
        all.sort_by(|a, b| a.message.key.cmp(&b.message.key));
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].message.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(all[0].message.value, b"v1");
        assert_eq!(all[0].message.headers[0].key, "h");
        assert_eq!(all[0].message.headers[0].value, b"x");
        assert!(!all[0].null_value);
        assert!(all[1].null_value && all[1].message.value.is_empty());
        // Frames 2-4: snappy (xerial-free, as librdkafka writes it), lz4, zstd; "a:b" each.
        for n in 2..=4 {
            let d = decode_request(&golden(&format!("kcat-produce-v7-{n}.bin"))).unwrap();
            let KafkaRequest::Produce(p) = d.request else {
                panic!("not a produce");
            };
            let records = p.topic_data[0].partition_data[0].records.as_ref().unwrap();
            let m = decode_batches(records).unwrap();
            assert_eq!(m.len(), 1, "frame {n}");
            assert_eq!(
                (m[0].message.key.as_deref(), &m[0].message.value[..]),
                (Some(&b"a"[..]), &b"b"[..])
            );
        }
    }

    #[test]
    fn given_short_or_unknown_frames_when_decoded_should_refuse_them() {
        assert!(decode_request(&[0, 1, 2]).is_err());
        assert!(decode_request(&[0x7f, 0x7f, 0, 0, 0, 0, 0, 1]).is_err());
        // Fetch v3 (below the served range): refused; ApiVersions v99: the fallback.
        assert!(decode_request(&[0, 1, 0, 3, 0, 0, 0, 1, 0xff, 0xff]).is_err());
        let d = decode_request(&[0, 18, 0, 99, 0, 0, 0, 9]).unwrap();
        assert!(matches!(d.request, KafkaRequest::ApiVersionsFallback));
        assert_eq!(d.correlation_id, 9);
        let mut frame = golden("kcat-produce-v7-1.bin");
        frame.truncate(frame.len() - 10);
        assert!(decode_request(&frame).is_err());
    }
}
