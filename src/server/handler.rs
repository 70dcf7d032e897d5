//! Request handling: one decoded frame in, at most one response out.
//!
//! Every response carries a typed error code: top-level for a request that failed as a whole,
//! per partition for Produce, Fetch and ListOffsets. A Produce with `acks=none` gets no response.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;

use super::connection::Outgoing;
use super::Shared;
use crate::protocol::{
    self, Acks, ApiKey, ErrorCode, FetchRequest, FetchResult, ListOffsetsResult, ProduceRequest,
    ProduceResult, Request, Response, ShardAddr, TopicMetadata,
};
use crate::shard::Shard;

fn error(key: u16, correlation_id: u32, code: ErrorCode, message: &str) -> Outgoing {
    let mut out = Vec::new();
    protocol::encode_error(&mut out, key, correlation_id, code, message);
    Outgoing::Frame(out)
}

fn ok(key: ApiKey, correlation_id: u32, response: &Response) -> Outgoing {
    let mut out = Vec::new();
    protocol::encode_response(&mut out, key, correlation_id, response);
    Outgoing::Frame(out)
}

/// Handles one request frame.
pub(crate) async fn handle(
    shard: &Rc<Shard>,
    shared: &Arc<Shared>,
    frame: &mut [u8],
) -> Option<Outgoing> {
    let (header, request) = match protocol::decode_request(frame) {
        Ok(r) => r,
        Err(e) => {
            // The frame was delimited, so the header is there: answer and keep the connection.
            let h = protocol::request_header(frame).ok()?;
            return Some(error(h.api_key, h.correlation_id, e.code(), &e.to_string()));
        }
    };
    let cid = header.correlation_id;
    let key = request.api_key();
    let catalog = &shared.catalog;
    let fail = |code: ErrorCode, msg: &str| Some(error(key as u16, cid, code, msg));
    match request {
        Request::ApiVersions { .. } => Some(ok(
            key,
            cid,
            &Response::ApiVersions {
                apis: ApiKey::ALL
                    .iter()
                    .map(|k| {
                        let (min, max) = k.versions();
                        (*k as u16, min, max)
                    })
                    .collect(),
                broker: concat!("levee ", env!("CARGO_PKG_VERSION")).to_string(),
            },
        )),
        Request::Metadata { topics } => {
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
            let metas: Vec<TopicMetadata> = if topics.is_empty() {
                catalog
                    .list()
                    .into_iter()
                    .map(|m| topic_metadata(shard, Some(m), ""))
                    .collect()
            } else {
                topics
                    .iter()
                    .map(|t| topic_metadata(shard, catalog.get(t), t))
                    .collect()
            };
            Some(ok(
                key,
                cid,
                &Response::Metadata {
                    shards,
                    topics: metas,
                },
            ))
        }
        Request::CreateTopic { name, mut config } => {
            // Unset retention means the broker's defaults.
            if config.retention_bytes.is_none() {
                config.retention_bytes = shared.config.retention_bytes;
            }
            if config.retention_ms.is_none() {
                config.retention_ms = shared.config.retention_ms;
            }
            match catalog.create(&name, &config) {
                Ok(_) => Some(ok(key, cid, &Response::Done)),
                Err(e) => fail(e.code(), &e.to_string()),
            }
        }
        Request::DeleteTopic { name } => match catalog.delete(&name) {
            Ok(_) => Some(ok(key, cid, &Response::Done)),
            Err(e) => fail(e.code(), &e.to_string()),
        },
        Request::AlterTopic {
            name,
            partitions,
            retention_bytes,
            retention_ms,
        } => match catalog.alter(&name, partitions, retention_bytes, retention_ms) {
            Ok(_) => Some(ok(key, cid, &Response::Done)),
            Err(e) => fail(e.code(), &e.to_string()),
        },
        Request::ListTopics => Some(ok(
            key,
            cid,
            &Response::ListTopics(
                catalog
                    .list()
                    .into_iter()
                    .map(|m| (m.name, m.partitions))
                    .collect(),
            ),
        )),
        Request::DescribeTopic { name } => {
            let Some(meta) = catalog.get(&name) else {
                return fail(ErrorCode::UnknownTopic, &format!("unknown topic '{name}'"));
            };
            let mut partitions = Vec::with_capacity(meta.partitions as usize);
            for p in 0..meta.partitions {
                match shard.describe(&name, p).await {
                    Ok(d) => partitions.push(d),
                    Err((code, msg)) => return fail(code, &msg),
                }
            }
            Some(ok(
                key,
                cid,
                &Response::DescribeTopic {
                    name,
                    config: meta.config(),
                    partitions,
                },
            ))
        }
        Request::Produce(p) => produce(shard, cid, p, frame).await,
        Request::Fetch(f) => Some(fetch(shard, shared, cid, f).await),
        Request::ListOffsets(blocks) => {
            let mut results: Vec<ListOffsetsResult> = Vec::with_capacity(blocks.len());
            for b in blocks {
                results.push(shard.list_offset(&b.topic, b.partition, b.spec).await);
            }
            Some(ok(key, cid, &Response::ListOffsets(results)))
        }
    }
}

fn topic_metadata(
    shard: &Shard,
    meta: Option<crate::catalog::TopicMeta>,
    asked: &str,
) -> TopicMetadata {
    match meta {
        Some(m) => TopicMetadata {
            partitions: (0..m.partitions)
                .map(|p| (p, shard.owner(&m.name, p)))
                .collect(),
            name: m.name,
            error: ErrorCode::None,
        },
        None => TopicMetadata {
            name: asked.to_string(),
            error: ErrorCode::UnknownTopic,
            partitions: Vec::new(),
        },
    }
}

enum Pending {
    Local(crate::shard::Appending),
    Remote(flume::Receiver<(ProduceResult, String)>, String, u32),
}

/// Appends every block first (local ones synchronously, remote ones sent in order), then waits for
/// the acknowledgements: per-partition order follows request order even with many requests in
/// flight, and the waits of all blocks overlap.
async fn produce(
    shard: &Rc<Shard>,
    cid: u32,
    p: ProduceRequest,
    frame: &mut [u8],
) -> Option<Outgoing> {
    let mut pending = Vec::with_capacity(p.blocks.len());
    for b in &p.blocks {
        let run = &mut frame[b.run.clone()];
        let owner = shard.owner(&b.topic, b.partition);
        if owner == shard.id {
            pending.push(Pending::Local(shard.append_local(
                &b.topic,
                b.partition,
                run,
                p.acks,
            )));
        } else {
            let rx = shard
                .append_remote(owner, &b.topic, b.partition, run, p.acks, p.timeout_ms)
                .await;
            pending.push(Pending::Remote(rx, b.topic.clone(), b.partition));
        }
    }
    let mut results = Vec::with_capacity(pending.len());
    let mut messages = Vec::new();
    for pend in pending {
        let (r, msg) = match pend {
            Pending::Local(a) => a.complete(p.timeout_ms).await,
            Pending::Remote(rx, topic, partition) => rx.recv_async().await.unwrap_or_else(|_| {
                (
                    ProduceResult {
                        topic,
                        partition,
                        error: ErrorCode::ShuttingDown,
                        base_offset: 0,
                        timestamp_ms: 0,
                    },
                    "owner shard stopped".into(),
                )
            }),
        };
        if !msg.is_empty() {
            messages.push(msg);
        }
        results.push(r);
    }
    if !messages.is_empty() {
        tracing::debug!(?messages, "produce had errors");
    }
    if p.acks == Acks::None {
        return None;
    }
    Some(ok(ApiKey::Produce, cid, &Response::Produce(results)))
}

/// Reads every block; if fewer than `min_bytes` are there, waits (woken by appends) until any block
/// has new records or `max_wait_ms` passes, then reads again.
async fn fetch(shard: &Rc<Shard>, shared: &Shared, cid: u32, f: FetchRequest) -> Outgoing {
    let wait = Duration::from_millis((f.max_wait_ms as u64).min(shared.config.fetch_wait_max_ms));
    let deadline = Instant::now() + wait;
    let mut outcomes = read_all(shard, &f).await;
    let available: usize = outcomes
        .iter()
        .map(|o| o.slice.as_ref().map_or(0, |s| s.bytes().len()))
        .sum();
    let has_error = outcomes.iter().any(|o| o.error != ErrorCode::None);
    if available < (f.min_bytes.max(1) as usize) && !wait.is_zero() && !has_error {
        drop(outcomes);
        let waits = f.blocks.iter().map(|b| {
            let shard = shard.clone();
            let (topic, partition, offset) = (b.topic.clone(), b.partition, b.offset);
            Box::pin(async move { shard.wait(&topic, partition, offset, deadline).await })
                as std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>
        });
        let any = waits.fold(
            Box::pin(glommio::timer::sleep(wait))
                as std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
            |acc, w| Box::pin(future::or(acc, w)),
        );
        any.await;
        outcomes = read_all(shard, &f).await;
    }
    let mut results = Vec::with_capacity(outcomes.len());
    let mut slices = Vec::with_capacity(outcomes.len());
    for (b, o) in f.blocks.iter().zip(outcomes) {
        if o.error != ErrorCode::None && o.error != ErrorCode::OffsetOutOfRange {
            tracing::debug!(topic = %b.topic, partition = b.partition, message = %o.message, "fetch error");
        }
        results.push(FetchResult {
            topic: b.topic.clone(),
            partition: b.partition,
            error: o.error,
            earliest: o.earliest,
            next: o.next,
            run: 0..o.slice.as_ref().map_or(0, |s| s.bytes().len()),
        });
        slices.push(o.slice);
    }
    let mut head = Vec::new();
    let splits = protocol::encode_fetch_response(&mut head, cid, &results);
    Outgoing::Fetch {
        head,
        splits,
        slices,
    }
}

/// Reads every block within the request's byte budget. Only the first block with records may go
/// over it (one record larger than the budget must still be served, or its consumer is stuck);
/// once the budget is spent, later blocks come back with offsets but no records. Without that
/// rule a request with many blocks could make a response of unbounded size.
async fn read_all(shard: &Rc<Shard>, f: &FetchRequest) -> Vec<crate::shard::ReadOutcome> {
    let mut budget = f.max_bytes.max(1) as usize;
    let mut served = false;
    let mut outcomes = Vec::with_capacity(f.blocks.len());
    for b in &f.blocks {
        let max = (b.max_bytes.max(1) as usize).min(budget.max(1));
        let mut o = shard.read(&b.topic, b.partition, b.offset, max).await;
        let mut len = o.slice.as_ref().map_or(0, |s| s.bytes().len());
        if served && len > budget {
            o.slice = None;
            len = 0;
        }
        served |= len > 0;
        budget = budget.saturating_sub(len);
        outcomes.push(o);
    }
    outcomes
}
