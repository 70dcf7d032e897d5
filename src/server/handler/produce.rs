//! Produce: append every block on its owner shard, then answer once the acknowledgements are in.
//!
//! Blocks owned by this shard are appended at once, synchronously, from the request frame itself
//! (validated in place, one copy into the segment). Blocks owned elsewhere are copied (the copy is
//! charged to the memory budget) and sent to their owner, all of one owner's blocks in one hop.
//! Those hops are started before anything else awaits, in request order, so per-partition order
//! follows the order requests arrived in even with many in flight; the waits for durability of all
//! blocks then overlap.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use rkyv::util::AlignedVec;

use super::{by_owner, shard_code, Req};
use crate::flow::quota::Direction;
use crate::protocol::{Acks, ErrorCode, ProduceRequest, ProduceResult, Response};
use crate::runtime;
use crate::server::response::Outgoing;
use crate::server::{Session, Shared};
use crate::shard::{AckLevel, Appending, Shard, ShardError};
use crate::storage::{Appended, Io};

type Outcome = Result<Appended, ShardError>;

fn ack_level(acks: Acks) -> AckLevel {
    match acks {
        Acks::None => AckLevel::None,
        Acks::Written => AckLevel::Written,
        Acks::Durable => AckLevel::Durable,
    }
}

pub(super) async fn produce<I: Io>(
    req: Req,
    shard: &Rc<Shard<I>>,
    shared: &Shared,
    session: &Session,
    p: ProduceRequest,
    frame: &mut [u8],
) -> Option<Outgoing<I::Map>> {
    let acks = ack_level(p.acks);
    let timeout_ms = p.timeout_ms;
    let (client, throttles) = admit(shard, shared, session, &p).await;
    let mut groups = by_owner(
        shard,
        p.blocks.iter().map(|b| (b.topic.as_str(), b.partition)),
    );
    // Throttled blocks are answered without being appended.
    for (_, idxs) in &mut groups {
        idxs.retain(|&i| throttles[i] == 0);
    }
    groups.retain(|(_, idxs)| !idxs.is_empty());
    let mut local: Vec<(usize, Result<Appending, ShardError>)> = Vec::new();
    let mut remote = Vec::new();
    for (owner, idxs) in groups {
        if owner == shard.id {
            for i in idxs {
                let b = &p.blocks[i];
                let run = &mut frame[b.run.clone()];
                local.push((i, shard.append_client(&b.topic, b.partition, run, acks)));
            }
            continue;
        }
        let mut bytes = 0;
        let items: Vec<(usize, String, u32, AlignedVec<16>)> = idxs
            .iter()
            .map(|&i| {
                let b = &p.blocks[i];
                let mut copy = AlignedVec::<16>::with_capacity(b.run.len());
                copy.extend_from_slice(&frame[b.run.clone()]);
                bytes += copy.capacity();
                (i, b.topic.clone(), b.partition, copy)
            })
            .collect();
        // Work already accepted: charged without waiting (see server::budget).
        let charge = shared.budget.force(bytes);
        let shard = shard.clone();
        let hop = async move {
            shard
                .on_owner(owner, move |s| {
                    // Appended here, in arrival order, before the owner runs anything else of ours.
                    let appending: Vec<(usize, Result<Appending, ShardError>)> = items
                        .into_iter()
                        .map(|(i, topic, partition, mut run)| {
                            (i, s.append_client(&topic, partition, &mut run, acks))
                        })
                        .collect();
                    drop(charge);
                    async move {
                        let mut done: Vec<(usize, Outcome)> = Vec::with_capacity(appending.len());
                        for (i, a) in appending {
                            let outcome = match a {
                                Ok(a) => a.complete(timeout_ms).await,
                                Err(e) => Err(e),
                            };
                            done.push((i, outcome));
                        }
                        done
                    }
                })
                .await
        };
        // Spawned so the hop starts now, before this task awaits anything: see the module doc.
        remote.push((idxs, runtime::spawn(hop)));
    }
    let mut outcomes: Vec<Option<Outcome>> = (0..p.blocks.len()).map(|_| None).collect();
    for (i, a) in local {
        outcomes[i] = Some(match a {
            Ok(a) => a.complete(timeout_ms).await,
            Err(e) => Err(e),
        });
    }
    for (idxs, hop) in remote {
        match hop.await {
            Ok(done) => {
                for (i, outcome) in done {
                    outcomes[i] = Some(outcome);
                }
            }
            Err(e) => {
                for i in idxs {
                    outcomes[i] = Some(Err(e.clone()));
                }
            }
        }
    }
    if let Some(client) = &client {
        for (b, outcome) in p.blocks.iter().zip(&outcomes) {
            if let Some(Ok(a)) = outcome {
                shared
                    .flow
                    .quotas
                    .charge(Direction::Produce, client, &b.topic, 0, a.count());
            }
        }
    }
    if p.acks == Acks::None {
        return None;
    }
    lose_ack_failpoints().await;
    let results = p
        .blocks
        .iter()
        .zip(outcomes)
        .zip(throttles)
        .map(|((b, outcome), throttle_ms)| {
            let mut r = ProduceResult {
                topic: b.topic.clone(),
                partition: b.partition,
                error: ErrorCode::None,
                base_offset: 0,
                timestamp_ms: 0,
                throttle_ms: 0,
            };
            if throttle_ms > 0 {
                r.error = req.code(ErrorCode::Throttled);
                r.throttle_ms = throttle_ms;
                return r;
            }
            match outcome {
                Some(Ok(a)) => {
                    r.base_offset = a.base_offset;
                    r.timestamp_ms = a.timestamp_ms;
                }
                Some(Err(e)) => {
                    tracing::debug!(topic = %b.topic, partition = b.partition, error = %e, "produce block failed");
                    r.error = req.code(shard_code(&e));
                    if let ShardError::BacklogFull { throttle_ms, .. } = e {
                        r.throttle_ms = throttle_ms;
                    }
                }
                None => r.error = ErrorCode::Internal,
            }
            r
        })
        .collect();
    Some(req.ok(&Response::Produce(results)))
}

/// Checks every block against the quotas of the session's client id and of its topic, charging
/// the bytes of those admitted: `(client id, throttle_ms by block)`, 0 for an admitted block and
/// no client id when no quota is set. A fire-and-forget request (`acks=none`) cannot be told to
/// wait, so it is made to: it sleeps out its longest throttle and is then admitted whole, which
/// holds back the connection's later requests as Kafka mutes a throttled channel.
async fn admit<I: Io>(
    shard: &Shard<I>,
    shared: &Shared,
    session: &Session,
    p: &ProduceRequest,
) -> (Option<String>, Vec<u32>) {
    let quotas = &shared.flow.quotas;
    if !quotas.is_active() {
        return (None, vec![0; p.blocks.len()]);
    }
    let client = session.client_id();
    let mut throttles: Vec<u32> = p
        .blocks
        .iter()
        .map(|b| {
            let bytes = b.run.len() as u64;
            quotas
                .admit(Direction::Produce, &client, &b.topic, bytes)
                .err()
                .unwrap_or(0)
        })
        .collect();
    let longest = throttles.iter().copied().max().unwrap_or(0);
    if longest > 0 {
        let stats = &shard.stats;
        let throttled = throttles.iter().filter(|&&t| t > 0).count() as u64;
        stats.quota_throttled.fetch_add(throttled, Relaxed);
        if p.acks == Acks::None {
            stats
                .quota_throttle_ms
                .fetch_add(u64::from(longest), Relaxed);
            runtime::sleep(std::time::Duration::from_millis(u64::from(longest))).await;
            for (b, t) in p.blocks.iter().zip(&mut throttles) {
                if *t > 0 {
                    let bytes = b.run.len() as u64;
                    quotas.charge(Direction::Produce, &client, &b.topic, bytes, 0);
                    *t = 0;
                }
            }
        } else {
            let total: u64 = throttles.iter().map(|&t| u64::from(t)).sum();
            stats.quota_throttle_ms.fetch_add(total, Relaxed);
        }
    }
    (Some(client), throttles)
}

/// Failpoints that lose a stored batch's acknowledgement (tuning.md, "Failpoints"), for the
/// idempotent-producer tests: `produce-lose-ack` holds every 4th answered Produce request's
/// response for 5 s (past the client's deadline, so the client gives up on it and resends);
/// `produce-crash-before-ack` aborts the process before answering the 3rd.
async fn lose_ack_failpoints() {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static ANSWERED: AtomicU64 = AtomicU64::new(0);
    let lose = crate::failpoint::hit("produce-lose-ack");
    let crash = crate::failpoint::hit("produce-crash-before-ack");
    if !lose && !crash {
        return;
    }
    let n = ANSWERED.fetch_add(1, Relaxed);
    if crash && n == 2 {
        tracing::error!("failpoint produce-crash-before-ack");
        std::process::abort();
    }
    if lose && n % 4 == 3 {
        runtime::sleep(std::time::Duration::from_secs(5)).await;
    }
}
