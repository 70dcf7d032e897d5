//! The handshake and topic administration: ApiVersions, Metadata, CreateTopic, DeleteTopic,
//! AlterTopic, ListTopics, DescribeTopic.
//!
//! Catalog changes do their file work (fsyncs, directory removal) on the shard's blocking thread,
//! so a create or delete never stalls a shard's requests.

use std::rc::Rc;
use std::sync::Arc;

use super::{by_owner, catalog_code, shard_code, Req};
use crate::catalog::{CatalogError, TopicChange, TopicMeta, INTERNAL_PREFIX};
use crate::protocol::{
    ApiKey, ErrorCode, PartitionDescription, Response, ShardAddr, TopicConfig, TopicMetadata,
    Visibility,
};
use crate::runtime;
use crate::server::response::Outgoing;
use crate::server::{Session, Shared};
use crate::shard::Shard;
use crate::storage::{Io, SegmentMap};

pub(super) fn api_versions<M: SegmentMap>(
    req: Req,
    session: &Session,
    client_id: &str,
) -> Outgoing<M> {
    session.set_client_id(client_id);
    tracing::debug!(session = session.id, peer = ?session.peer, client_id, "handshake");
    req.ok(&Response::ApiVersions {
        apis: ApiKey::ALL
            .iter()
            .map(|k| {
                let (min, max) = k.versions();
                (*k as u16, min, max)
            })
            .collect(),
        broker: concat!("levee ", env!("CARGO_PKG_VERSION")).to_string(),
    })
}

fn topic_metadata<I: Io>(shard: &Shard<I>, meta: &TopicMeta) -> TopicMetadata {
    TopicMetadata {
        partitions: (0..meta.partitions)
            .map(|p| (p, shard.owner(&meta.name, p)))
            .collect(),
        name: meta.name.clone(),
        error: ErrorCode::None,
    }
}

pub(super) fn metadata<I: Io>(
    req: Req,
    shard: &Rc<Shard<I>>,
    shared: &Shared,
    topics: &[String],
) -> Outgoing<I::Map> {
    let addrs = shared.shard_addrs.get().cloned().unwrap_or_default();
    let shards = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| ShardAddr {
            shard: i as u16,
            host: a.ip().to_string(),
            port: a.port(),
        })
        .collect();
    let catalog = shard.topics();
    let metas: Vec<TopicMetadata> = if topics.is_empty() {
        // Internal topics are listed only when asked for by name.
        catalog
            .iter()
            .filter(|m| !m.name.starts_with(INTERNAL_PREFIX))
            .map(|m| topic_metadata(shard, m))
            .collect()
    } else {
        topics
            .iter()
            .map(|t| match catalog.get(t) {
                Some(m) => topic_metadata(shard, m),
                None => TopicMetadata {
                    name: t.clone(),
                    error: ErrorCode::UnknownTopic,
                    partitions: Vec::new(),
                },
            })
            .collect()
    };
    req.ok(&Response::Metadata {
        shards,
        topics: metas,
    })
}

/// Runs a catalog change on the blocking thread and answers `Done` or its error.
async fn catalog_change<M: SegmentMap>(
    req: Req,
    change: impl FnOnce() -> Result<Arc<TopicMeta>, CatalogError> + Send + 'static,
) -> Outgoing<M> {
    match runtime::blocking(change).await {
        Ok(Ok(_)) => req.ok(&Response::Done),
        Ok(Err(e)) => req.error(catalog_code(&e), &e.to_string()),
        Err(panic) => req.error(ErrorCode::Internal, &format!("internal error: {panic}")),
    }
}

pub(super) async fn create_topic<M: SegmentMap>(
    req: Req,
    shared: &Arc<Shared>,
    name: String,
    mut config: TopicConfig,
) -> Outgoing<M> {
    // Unset retention means the broker's defaults.
    if config.retention_bytes.is_none() {
        config.retention_bytes = shared.config.retention_bytes;
    }
    if config.retention_ms.is_none() {
        config.retention_ms = shared.config.retention_ms;
    }
    if config.visibility.is_none() {
        // With every append flushed before it is acknowledged, consumers see only what survives
        // a power cut; otherwise they see what was written, as soon as it was.
        config.visibility = Some(match shared.config.fsync {
            crate::config::FsyncPolicy::Always => Visibility::Durable,
            _ => Visibility::Written,
        });
    }
    let catalog = shared.catalog.clone();
    catalog_change(req, move || catalog.create(&name, &config)).await
}

pub(super) async fn delete_topic<I: Io>(
    req: Req,
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    name: String,
) -> Outgoing<I::Map> {
    if name.starts_with(INTERNAL_PREFIX) {
        return internal_refused(req, &name);
    }
    let (catalog, flow) = (shared.catalog.clone(), shared.flow.clone());
    let topic = name.clone();
    let deleted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = deleted.clone();
    let out = catalog_change(req, move || {
        let deleted = catalog.delete(&name);
        if deleted.is_ok() {
            flow.floors.topic_deleted(&name);
            done.store(true, std::sync::atomic::Ordering::Release);
        }
        deleted
    })
    .await;
    if deleted.load(std::sync::atomic::Ordering::Acquire) {
        forget_offsets(shard, &topic).await;
    }
    out
}

/// Drops every group's committed offsets on a deleted topic, on every coordinator, as Kafka
/// does: a topic created again under the name starts with no commits. A coordinator that cannot
/// write its records now drops them when it next loads (see `Shard::coordinator`).
async fn forget_offsets<I: Io>(shard: &Rc<Shard<I>>, topic: &str) {
    let Some(n) = crate::shard::groups::offsets_partitions(&shard.topics()) else {
        return;
    };
    for p in 0..n {
        let owner = shard.owner(crate::group::OFFSETS_TOPIC, p);
        let topic = topic.to_string();
        let done = shard
            .on_owner(owner, move |s| {
                let s = s.clone();
                async move { s.group_forget_topic(p, &topic).await }
            })
            .await;
        if let Ok(Err(e)) | Err(e) = done {
            tracing::warn!(partition = p, error = %e, "cannot drop offsets of a deleted topic now");
        }
    }
}

/// Internal topics are the broker's: clients read them, never change them.
pub(super) fn internal_refused<M: SegmentMap>(req: Req, name: &str) -> Outgoing<M> {
    req.error(
        ErrorCode::InvalidTopicName,
        &format!("'{name}' is an internal topic: only the broker changes it"),
    )
}

pub(super) async fn alter_topic<M: SegmentMap>(
    req: Req,
    shared: &Arc<Shared>,
    name: String,
    c: TopicChange,
) -> Outgoing<M> {
    if name.starts_with(INTERNAL_PREFIX) {
        return internal_refused(req, &name);
    }
    let catalog = shared.catalog.clone();
    catalog_change(req, move || catalog.alter(&name, &c)).await
}

pub(super) fn list_topics<I: Io>(
    req: Req,
    shard: &Rc<Shard<I>>,
    internal: bool,
) -> Outgoing<I::Map> {
    req.ok(&Response::ListTopics(
        shard
            .topics()
            .iter()
            .filter(|m| internal || !m.name.starts_with(INTERNAL_PREFIX))
            .map(|m| (m.name.clone(), m.partitions))
            .collect(),
    ))
}

pub(super) async fn describe_topic<I: Io>(
    req: Req,
    shard: &Rc<Shard<I>>,
    name: String,
) -> Outgoing<I::Map> {
    let Some(meta) = shard.topics().get(&name).cloned() else {
        return req.error(ErrorCode::UnknownTopic, &format!("unknown topic '{name}'"));
    };
    let groups = by_owner(shard, (0..meta.partitions).map(|p| (meta.name.as_str(), p)));
    let mut partitions = vec![None; meta.partitions as usize];
    for (owner, idxs) in groups {
        let topic = name.clone();
        let described = shard
            .on_owner(owner, move |s| {
                let found: Vec<_> = idxs
                    .into_iter()
                    .map(|p| (p, s.describe(&topic, p as u32)))
                    .collect();
                std::future::ready(found)
            })
            .await;
        let described = match described {
            Ok(d) => d,
            Err(e) => return req.error(shard_code(&e), &e.to_string()),
        };
        for (p, d) in described {
            match d {
                Ok(d) => {
                    partitions[p] = Some(PartitionDescription {
                        partition: p as u32,
                        shard: owner,
                        earliest: d.earliest,
                        next: d.next,
                        durable: d.durable,
                        size_bytes: d.size_bytes,
                    })
                }
                Err(e) => return req.error(shard_code(&e), &e.to_string()),
            }
        }
    }
    req.ok(&Response::DescribeTopic {
        name,
        config: meta.config(),
        partitions: partitions.into_iter().flatten().collect(),
    })
}
