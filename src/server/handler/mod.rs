//! Request handling: one frame in, at most one response out.
//!
//! [`handle`] decodes a frame (refusing arrays over `request_items_max` before decoding them) and
//! calls the handler of its api: [`admin`] for the handshake and topic administration, [`produce`],
//! [`fetch`], [`list_offsets`]. Each handler translates between wire types and the shard's typed
//! operations, which it runs on their owner shards with [`Shard::on_owner`], one hop per owner.
//!
//! Every response carries a typed error code: top-level for a request that failed as a whole,
//! per block for Produce, Fetch and ListOffsets. Codes pass through [`ErrorCode::for_version`]:
//! a client only ever sees codes the version it sent defines. A Produce with `acks=none` gets no
//! response.
//!
//! Adding an api: a variant in `protocol` (key, request and response bodies, versions), a
//! function here, and its line in [`handle`]'s match; docs/architecture.md lists the places.

mod admin;
mod delivery;
mod fetch;
mod groups;
mod operator;
mod produce;

pub(crate) use groups::{classic, ClassicDone, ClassicOp};

use std::rc::Rc;
use std::sync::Arc;

use super::response::Outgoing;
use super::{Session, Shared};
use crate::catalog::CatalogError;
use crate::protocol::{
    self, ApiKey, ErrorCode, ListOffsetsBlock, ListOffsetsResult, OffsetSpec, Request, Response,
};
use crate::record::RecordError;
use crate::shard::{OffsetQuery, Shard, ShardError, ShardId};
use crate::storage::{Io, SegmentMap, StorageError};

/// The request being answered: what every response needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Req {
    key: ApiKey,
    version: u16,
    cid: u32,
}

impl Req {
    /// A code as this request's version may carry it.
    fn code(&self, code: ErrorCode) -> ErrorCode {
        code.for_version(self.key, self.version)
    }

    /// A top-level error response.
    fn error<M: SegmentMap>(&self, code: ErrorCode, message: &str) -> Outgoing<M> {
        let mut out = Vec::new();
        protocol::encode_error(
            &mut out,
            self.key as u16,
            self.cid,
            self.code(code),
            message,
        );
        Outgoing::Frame(out)
    }

    /// A successful response, for this request's version, or an error response if it cannot be
    /// a frame (too large).
    fn ok<M: SegmentMap>(&self, response: &Response) -> Outgoing<M> {
        let mut out = Vec::new();
        match protocol::encode_response_at(&mut out, self.key, self.version, self.cid, response) {
            Ok(()) => Outgoing::Frame(out),
            Err(e) => self.error(
                ErrorCode::LimitExceeded,
                &format!("the response cannot be sent: {e}"),
            ),
        }
    }
}

/// Handles one request frame.
pub(crate) async fn handle<I: Io>(
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    session: &Session,
    frame: &mut [u8],
) -> Option<Outgoing<I::Map>> {
    let items_max = shared.config.request_items_max;
    let (header, request) = match protocol::decode_request_limited(frame, items_max) {
        Ok(r) => r,
        Err(e) => {
            // The frame was delimited, so the header is there: answer and keep the connection.
            let h = protocol::request_header(frame).ok()?;
            let code = match ApiKey::from_u16(h.api_key) {
                Some(key) => e.code().for_version(key, h.api_version),
                None => e.code(),
            };
            let mut out = Vec::new();
            protocol::encode_error(&mut out, h.api_key, h.correlation_id, code, &e.to_string());
            return Some(Outgoing::Frame(out));
        }
    };
    let req = Req {
        key: request.api_key(),
        version: header.api_version,
        cid: header.correlation_id,
    };
    if crate::failpoint::hit("request-panic") && req.key == ApiKey::DescribeTopic {
        panic!("failpoint request-panic");
    }
    if crate::failpoint::hit("shard-panic") && req.key == ApiKey::DescribeTopic {
        // Makes the shard's main task panic, outside every request and operation task: the
        // shard's thread dies, as it would on a bug there.
        shared.failpoint_shard_panic.notify(usize::MAX);
    }
    match request {
        Request::ApiVersions { client_id } => Some(admin::api_versions(req, session, &client_id)),
        Request::Metadata { topics } => Some(admin::metadata(req, shard, shared, &topics)),
        Request::CreateTopic { name, config } => {
            Some(admin::create_topic(req, shared, name, config).await)
        }
        Request::DeleteTopic { name } => Some(admin::delete_topic(req, shard, shared, name).await),
        Request::AlterTopic {
            name,
            partitions,
            retention_bytes,
            retention_ms,
            visibility,
            backlog,
        } => {
            let change = crate::catalog::TopicChange {
                partitions,
                retention_bytes,
                retention_ms,
                visibility,
                backlog,
            };
            Some(admin::alter_topic(req, shared, name, change).await)
        }
        Request::ListTopics { internal } => Some(admin::list_topics(req, shard, internal)),
        Request::DescribeTopic { name } => Some(admin::describe_topic(req, shard, name).await),
        Request::Produce(p) => produce::produce(req, shard, shared, session, p, frame).await,
        Request::Fetch(f) => Some(fetch::fetch(req, shard, shared, session, f).await),
        Request::ListOffsets(blocks) => Some(list_offsets(req, shard, blocks).await),
        Request::JoinGroup(j) => Some(groups::join(req, shard, session, j).await),
        Request::Heartbeat {
            group,
            member_id,
            generation,
        } => Some(groups::heartbeat(req, shard, group, member_id, generation).await),
        Request::LeaveGroup { group, member_id } => {
            Some(groups::leave(req, shard, group, member_id).await)
        }
        Request::OffsetCommit(c) => Some(groups::commit(req, shard, c).await),
        Request::OffsetFetch { group, partitions } => {
            Some(groups::fetch_offsets(req, shard, group, partitions).await)
        }
        Request::DescribeGroup { group } => Some(groups::describe(req, shard, group).await),
        Request::ListGroups => Some(groups::list(req, shard).await),
        Request::DeleteGroup { group } => Some(groups::delete(req, shard, group).await),
        Request::ProduceDelayed(p) => delivery::produce_delayed(req, shard, shared, p).await,
        Request::Nack(n) => Some(delivery::nack(req, shard, shared, n).await),
        Request::DlqReplay {
            group,
            max_messages,
        } => Some(delivery::dlq_replay(req, shard, shared, group, max_messages).await),
        Request::InitProducer => Some(delivery::init_producer(req)),
        Request::SetQuota { entity, limits } => {
            Some(operator::set_quota(req, shared, entity, limits))
        }
        Request::ListQuotas => Some(operator::list_quotas(req, shared)),
        Request::DeleteQuota { entity } => Some(operator::delete_quota(req, shared, &entity)),
        Request::Stats => Some(operator::stats(req, shared)),
    }
}

/// The wire code of a shard error.
pub(crate) fn shard_code(e: &ShardError) -> ErrorCode {
    match e {
        ShardError::UnknownTopic { .. } => ErrorCode::UnknownTopic,
        ShardError::InternalTopic { .. } => ErrorCode::InvalidTopicName,
        ShardError::Invalid { .. } => ErrorCode::InvalidRequest,
        ShardError::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
        ShardError::DuplicateSequence { .. } => ErrorCode::DuplicateSequence,
        ShardError::Limit { .. } => ErrorCode::LimitExceeded,
        ShardError::BacklogFull { .. } => ErrorCode::Throttled,
        ShardError::QueueFull { .. } => ErrorCode::QueueFull,
        ShardError::UnknownPartition { .. } => ErrorCode::UnknownPartition,
        ShardError::Storage { source, .. } => storage_code(source),
        ShardError::Flush(_) => ErrorCode::StorageFailed,
        ShardError::DurableTimeout { .. } => ErrorCode::Timeout,
        ShardError::ShuttingDown => ErrorCode::ShuttingDown,
        ShardError::Internal { .. } => ErrorCode::Internal,
        ShardError::Group(g) => groups::group_code(g),
    }
}

/// The wire code of a storage error.
fn storage_code(e: &StorageError) -> ErrorCode {
    match e {
        // An archive of 0 bytes is as unacceptable a length as one above the limit (§6.8).
        StorageError::InvalidRecord {
            source: RecordError::BadLength { len, limit, .. },
            ..
        } if *len == 0 || len > limit => ErrorCode::RecordTooLarge,
        StorageError::InvalidRecord { .. } => ErrorCode::CorruptRecord,
        StorageError::NoSpace { .. } => ErrorCode::StorageFull,
        StorageError::OffsetsExhausted { .. } => ErrorCode::StorageFailed,
        StorageError::Failed { .. } | StorageError::FailStopped { .. } => ErrorCode::StorageFailed,
        StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        StorageError::Corrupt { .. } => ErrorCode::CorruptRecord,
        StorageError::Io { .. }
        | StorageError::ReadersActive { .. }
        | StorageError::Config { .. } => ErrorCode::Internal,
    }
}

/// The wire code of a catalog error.
pub(crate) fn catalog_code(e: &CatalogError) -> ErrorCode {
    match e {
        CatalogError::UnknownTopic(_) => ErrorCode::UnknownTopic,
        CatalogError::AlreadyExists(_) => ErrorCode::TopicAlreadyExists,
        CatalogError::InvalidName(_) => ErrorCode::InvalidTopicName,
        CatalogError::InvalidConfig(_) => ErrorCode::InvalidConfig,
        CatalogError::LimitExceeded(_) => ErrorCode::LimitExceeded,
        CatalogError::Io { .. } => ErrorCode::Internal,
    }
}

/// Indices of `items` grouped by the shard owning each `(topic, partition)`, groups in the order
/// of their first item, items in request order: one hop per owner.
pub(crate) fn by_owner<'a, I: Io>(
    shard: &Shard<I>,
    items: impl Iterator<Item = (&'a str, u32)>,
) -> Vec<(ShardId, Vec<usize>)> {
    let mut groups: Vec<(ShardId, Vec<usize>)> = Vec::new();
    for (i, (topic, partition)) in items.enumerate() {
        let owner = shard.owner(topic, partition);
        match groups.iter_mut().find(|(o, _)| *o == owner) {
            Some((_, v)) => v.push(i),
            None => groups.push((owner, vec![i])),
        }
    }
    groups
}

/// ListOffsets: every lookup on its owner, one hop per owner shard.
async fn list_offsets<I: Io>(
    req: Req,
    shard: &Rc<Shard<I>>,
    blocks: Vec<ListOffsetsBlock>,
) -> Outgoing<I::Map> {
    let groups = by_owner(
        shard,
        blocks.iter().map(|b| (b.topic.as_str(), b.partition)),
    );
    let mut results: Vec<ListOffsetsResult> = blocks
        .iter()
        .map(|b| ListOffsetsResult {
            topic: b.topic.clone(),
            partition: b.partition,
            error: ErrorCode::None,
            offset: 0,
        })
        .collect();
    for (owner, idxs) in groups {
        let lookups: Vec<(usize, String, u32, OffsetQuery)> = idxs
            .iter()
            .map(|&i| {
                let b = &blocks[i];
                let query = match b.spec {
                    OffsetSpec::Earliest => OffsetQuery::Earliest,
                    OffsetSpec::Latest => OffsetQuery::Latest,
                    OffsetSpec::Timestamp(t) => OffsetQuery::AtTime(t),
                };
                (i, b.topic.clone(), b.partition, query)
            })
            .collect();
        let found = shard
            .on_owner(owner, move |s| {
                let found: Vec<_> = lookups
                    .into_iter()
                    .map(|(i, topic, p, q)| (i, s.list_offset(&topic, p, q)))
                    .collect();
                std::future::ready(found)
            })
            .await;
        match found {
            Ok(found) => {
                for (i, r) in found {
                    match r {
                        Ok(offset) => results[i].offset = offset,
                        Err(e) => results[i].error = req.code(shard_code(&e)),
                    }
                }
            }
            Err(e) => {
                for i in idxs {
                    results[i].error = req.code(shard_code(&e));
                }
            }
        }
    }
    req.ok(&Response::ListOffsets(results))
}
