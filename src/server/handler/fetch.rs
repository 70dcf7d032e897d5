//! Fetch: read every block on its owner shard, long-polling until `min_bytes` are there.
//!
//! The response is bounded whatever the request asks: record bytes by the request's `max_bytes`,
//! the broker's `fetch_bytes_max`, and what the frame limit leaves after the blocks' headers. Only
//! the first block with records may exceed that budget, and only by what one read returns (one
//! record larger than the budget must still be served, or its consumer is stuck); once the budget
//! is spent, later blocks come back with offsets but no records. Blocks are read grouped by owner
//! shard (one hop per owner; groups in the order of their first block, blocks in request order).
//!
//! Long poll: while fewer than `min_bytes` record bytes are available and no block has an error,
//! the request waits (woken by appends on any of its partitions, at O(1) stack however many
//! blocks it names) and reads again, until `max_wait_ms` (capped by `fetch_wait_max_ms`) passes
//! or the broker shuts down; then it answers with what is there.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use super::{by_owner, shard_code, Req};
use crate::flow::quota::Direction;
use crate::protocol::{ErrorCode, FetchRequest, FetchResult, FRAME_SIZE_MAX, HEADER_LEN};
use crate::record::{record_len, ARCHIVE_LEN_MAX};
use crate::runtime;
use crate::server::response::Outgoing;
use crate::server::{Session, Shared};
use crate::shard::{Shard, ShardError, ShardId};
use crate::storage::{Io, SegmentMap, Slice, StorageError};

/// One block's outcome.
struct BlockRead<M: SegmentMap> {
    error: ErrorCode,
    earliest: u64,
    next: u64,
    slice: Option<Slice<M>>,
}

impl<M: SegmentMap> BlockRead<M> {
    fn failed(req: Req, e: &ShardError) -> Self {
        let (earliest, next) = match e {
            ShardError::Storage { source, .. } => match source.as_ref() {
                StorageError::OffsetOutOfRange { earliest, next, .. } => (*earliest, *next),
                _ => (0, 0),
            },
            _ => (0, 0),
        };
        if !matches!(e, ShardError::Storage { .. }) || earliest == next {
            tracing::debug!(error = %e, "fetch block failed");
        }
        BlockRead {
            error: req.code(shard_code(e)),
            earliest,
            next,
            slice: None,
        }
    }

    fn len(&self) -> usize {
        self.slice.as_ref().map_or(0, |s| s.bytes().len())
    }
}

/// Bytes of a Fetch response besides its records: the frame header, the count, and for each
/// block its fields and at most 15 bytes of run padding.
fn head_bytes(f: &FetchRequest) -> usize {
    HEADER_LEN
        + 4
        + f.blocks
            .iter()
            .map(|b| 2 + b.topic.len() + 4 + 2 + 8 + 8 + 4 + 15)
            .sum::<usize>()
}

pub(super) async fn fetch<I: Io>(
    req: Req,
    shard: &Rc<Shard<I>>,
    shared: &Shared,
    session: &Session,
    f: FetchRequest,
) -> Outgoing<I::Map> {
    let head = head_bytes(&f);
    let one_record = record_len(ARCHIVE_LEN_MAX.min(shared.config.record_bytes_max));
    if head + one_record > FRAME_SIZE_MAX {
        return req.error(
            ErrorCode::LimitExceeded,
            &format!(
                "a response to {} blocks would not fit in a frame",
                f.blocks.len()
            ),
        );
    }
    let budget = (f.max_bytes.max(1) as usize)
        .min(shared.config.fetch_bytes_max)
        .min(FRAME_SIZE_MAX - head - one_record);
    // Quotas: a block whose client id or topic is in debt is answered Throttled, unread; the
    // others are read once, without a long poll, so the throttle reaches the client now.
    let quotas = &shared.flow.quotas;
    let client = quotas.is_active().then(|| session.client_id());
    let throttles: Vec<u32> = match &client {
        Some(c) => f
            .blocks
            .iter()
            .map(|b| quotas.wait_ms(Direction::Fetch, c, &b.topic))
            .collect(),
        None => vec![0; f.blocks.len()],
    };
    if throttles.iter().any(|&t| t > 0) {
        let stats = &shard.stats;
        let throttled = throttles.iter().filter(|&&t| t > 0).count() as u64;
        stats.quota_throttled.fetch_add(throttled, Relaxed);
        let total: u64 = throttles.iter().map(|&t| u64::from(t)).sum();
        stats.quota_throttle_ms.fetch_add(total, Relaxed);
    }
    let wait = Duration::from_millis((f.max_wait_ms as u64).min(shared.config.fetch_wait_max_ms));
    let deadline = Instant::now() + wait;
    let min_bytes = f.min_bytes.max(1) as usize;
    let groups = by_owner(
        shard,
        f.blocks.iter().map(|b| (b.topic.as_str(), b.partition)),
    );
    let reads = loop {
        let reads = read_all(req, shard, &f, &groups, &throttles, budget).await;
        let available: usize = reads.iter().map(BlockRead::len).sum();
        let has_error = reads.iter().any(|r| r.error != ErrorCode::None);
        // A full budget is as much as can be sent, whatever min_bytes says.
        if available >= min_bytes.min(budget)
            || has_error
            || Instant::now() >= deadline
            || shard.is_stopping()
        {
            break reads;
        }
        // Wait for records past what this read saw, not for the ones it already has.
        let seen: Vec<u64> = f
            .blocks
            .iter()
            .zip(&reads)
            .map(|(b, r)| r.slice.as_ref().map_or(b.offset, |s| s.next_offset))
            .collect();
        drop(reads);
        wait_for_data(shard, &f, &groups, &seen, deadline).await;
    };
    let mut results = Vec::with_capacity(reads.len());
    let mut slices = Vec::with_capacity(reads.len());
    for ((b, r), throttle_ms) in f.blocks.iter().zip(reads).zip(throttles) {
        if let (Some(client), Some(slice)) = (&client, &r.slice) {
            let bytes = slice.bytes().len() as u64;
            quotas.charge(Direction::Fetch, client, &b.topic, bytes, slice.count());
        }
        results.push(FetchResult {
            topic: b.topic.clone(),
            partition: b.partition,
            error: r.error,
            earliest: r.earliest,
            next: r.next,
            throttle_ms,
            run: 0..r.len(),
        });
        slices.push(r.slice);
    }
    let mut head = Vec::new();
    match crate::protocol::encode_fetch_response(&mut head, req.version, req.cid, &results) {
        Ok(splits) => Outgoing::Fetch {
            head,
            splits,
            slices,
        },
        Err(e) => req.error(
            ErrorCode::LimitExceeded,
            &format!("the response cannot be sent: {e}"),
        ),
    }
}

/// Reads every block within the byte budget, one hop per owner shard; blocks with a throttle
/// are answered `Throttled`, unread.
async fn read_all<I: Io>(
    req: Req,
    shard: &Rc<Shard<I>>,
    f: &FetchRequest,
    groups: &[(ShardId, Vec<usize>)],
    throttles: &[u32],
    mut budget: usize,
) -> Vec<BlockRead<I::Map>> {
    let mut reads: Vec<Option<BlockRead<I::Map>>> = (0..f.blocks.len()).map(|_| None).collect();
    for (i, _) in throttles.iter().enumerate().filter(|(_, &t)| t > 0) {
        reads[i] = Some(BlockRead {
            error: req.code(ErrorCode::Throttled),
            earliest: 0,
            next: 0,
            slice: None,
        });
    }
    let mut served = false;
    for (owner, idxs) in groups {
        let idxs: Vec<usize> = idxs
            .iter()
            .copied()
            .filter(|&i| throttles[i] == 0)
            .collect();
        if idxs.is_empty() {
            continue;
        }
        let items: Vec<(usize, String, u32, u64, usize)> = idxs
            .iter()
            .map(|&i| {
                let b = &f.blocks[i];
                let max = (b.max_bytes.max(1) as usize).min(budget.max(1));
                (i, b.topic.clone(), b.partition, b.offset, max)
            })
            .collect();
        let hop = shard
            .on_owner(*owner, move |s| {
                let mut out = Vec::with_capacity(items.len());
                for (i, topic, partition, offset, max) in items {
                    let read = match s.read(&topic, partition, offset, max.min(budget.max(1))) {
                        Ok(o) => {
                            let len = o.slice.bytes().len();
                            // Past the budget only the first block with records may go.
                            let keep = !(served && len > budget);
                            if keep {
                                served |= len > 0;
                                budget = budget.saturating_sub(len);
                            }
                            BlockRead {
                                error: ErrorCode::None,
                                earliest: o.earliest,
                                next: o.next,
                                slice: keep.then_some(o.slice),
                            }
                        }
                        Err(e) => BlockRead::failed(req, &e),
                    };
                    out.push((i, read));
                }
                std::future::ready((out, budget, served))
            })
            .await;
        match hop {
            Ok((out, left, now_served)) => {
                budget = left;
                served = now_served;
                for (i, read) in out {
                    reads[i] = Some(read);
                }
            }
            Err(e) => {
                for &i in &idxs {
                    reads[i] = Some(BlockRead::failed(req, &e));
                }
            }
        }
    }
    reads
        .into_iter()
        .map(|r| r.expect("every block was read"))
        .collect()
}

/// Waits until any block's partition has records past `seen` (by block), `deadline` passes, or
/// the broker stops.
async fn wait_for_data<I: Io>(
    shard: &Rc<Shard<I>>,
    f: &FetchRequest,
    groups: &[(ShardId, Vec<usize>)],
    seen: &[u64],
    deadline: Instant,
) {
    let waits: Vec<runtime::LocalFuture<'_>> = groups
        .iter()
        .map(|(owner, idxs)| {
            let wanted: Vec<(String, u32, u64)> = idxs
                .iter()
                .map(|&i| {
                    let b = &f.blocks[i];
                    (b.topic.clone(), b.partition, seen[i])
                })
                .collect();
            let wait = shard.on_owner(*owner, move |s| {
                let s = s.clone();
                async move { s.wait_any(&wanted, deadline).await }
            });
            Box::pin(async move {
                let _ = wait.await;
            }) as runtime::LocalFuture<'_>
        })
        .collect();
    runtime::first_of(waits).await;
}
