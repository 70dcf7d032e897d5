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
    let Admitted {
        client,
        throttles,
        hold_ms,
    } = admit(shard, shared, session, &p);
    // A held fire-and-forget request, and every one arriving behind it, goes in arrival order.
    let ticket = (p.acks == Acks::None && (hold_ms > 0 || !session.held.is_idle()))
        .then(|| session.held.ticket());
    if let Some(ticket) = &ticket {
        runtime::sleep(std::time::Duration::from_millis(u64::from(hold_ms))).await;
        ticket.turn().await;
    }
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
    // Appended (or their hops started, in order): the next held request may go.
    if let Some(ticket) = ticket {
        ticket.go();
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

/// What the quotas said about a Produce request.
struct Admitted {
    /// The session's client id; `None` when no quota is set.
    client: Option<String>,
    /// By block: 0 when admitted, else the `throttle_ms` it is answered with.
    throttles: Vec<u32>,
    /// For `acks=none`: how long to hold the request before appending it.
    hold_ms: u32,
}

/// Checks every block against the quotas of the session's client id and of its topic, charging
/// the bytes of those admitted. A fire-and-forget request (`acks=none`) cannot be told to wait,
/// so it is made to: its bytes are charged at once (a reservation), and it is held for as long
/// as the debt before it takes to repay, keeping its connection's slot in flight, so a client
/// that only fires and forgets is slowed to its quota too.
fn admit<I: Io>(
    shard: &Shard<I>,
    shared: &Shared,
    session: &Session,
    p: &ProduceRequest,
) -> Admitted {
    let quotas = &shared.flow.quotas;
    let mut admitted = Admitted {
        client: None,
        throttles: vec![0; p.blocks.len()],
        hold_ms: 0,
    };
    if !quotas.is_active() {
        return admitted;
    }
    let client = session.client_id();
    for (b, t) in p.blocks.iter().zip(&mut admitted.throttles) {
        let bytes = b.run.len() as u64;
        if p.acks == Acks::None {
            let wait = quotas.wait_ms(Direction::Produce, &client, &b.topic);
            quotas.charge(Direction::Produce, &client, &b.topic, bytes, 0);
            admitted.hold_ms = admitted.hold_ms.max(wait);
        } else if let Err(wait) = quotas.admit(Direction::Produce, &client, &b.topic, bytes) {
            *t = wait;
        }
    }
    let stats = &shard.stats;
    let throttled = admitted.throttles.iter().filter(|&&t| t > 0).count() as u64;
    let waited: u64 = admitted.throttles.iter().map(|&t| u64::from(t)).sum();
    if throttled > 0 || admitted.hold_ms > 0 {
        stats
            .quota_throttled
            .fetch_add(throttled.max(u64::from(admitted.hold_ms > 0)), Relaxed);
        stats
            .quota_throttle_ms
            .fetch_add(waited + u64::from(admitted.hold_ms), Relaxed);
    }
    admitted.client = Some(client);
    admitted
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
