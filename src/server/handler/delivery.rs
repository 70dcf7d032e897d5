//! The delivery apis: delayed produce (handed to the delay scheduler of the destination's
//! delays partition), nack (a retry through the scheduler into the group's retry topic, or a
//! dead letter), dead-letter replay, and producer ids for idempotent produce.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{shard_code, Req};
use crate::catalog::INTERNAL_PREFIX;
use crate::group::retry::{self, Origin};
use crate::group::{self, GroupError};
use crate::protocol::{
    Acks, DlqReplayResponse, NackOutcome, NackRequest, NackResponse, ProduceDelayedRequest,
    ProduceDelayedResponse, Response, TopicConfig, Visibility,
};
use crate::record::{self, Message, Records};
use crate::runtime;
use crate::server::response::Outgoing;
use crate::server::Shared;
use crate::shard::delays::{now_ms, ScheduleArgs};
use crate::shard::{AckLevel, Shard, ShardError};
use crate::storage::{Io, SegmentMap};

fn fail<M: SegmentMap>(req: Req, e: &ShardError) -> Outgoing<M> {
    req.error(shard_code(e), &e.to_string())
}

fn ack_level(acks: Acks) -> AckLevel {
    match acks {
        Acks::None => AckLevel::None,
        Acks::Written => AckLevel::Written,
        Acks::Durable => AckLevel::Durable,
    }
}

/// Schedules `run` for `topic`/`partition` at `due_ms` on the owner of its delays partition.
async fn schedule<I: Io>(
    shard: &Rc<Shard<I>>,
    args: ScheduleArgs,
    acks: AckLevel,
    timeout_ms: u32,
) -> Result<u64, ShardError> {
    let (d, owner) = shard
        .delays_route(&args.topic, args.partition)
        .ok_or_else(|| ShardError::UnknownTopic {
            topic: crate::delay::DELAYS_TOPIC.to_string(),
        })?;
    shard
        .on_owner(owner, move |s| {
            let s = s.clone();
            async move { s.delay_schedule(d, args, acks, timeout_ms).await }
        })
        .await
        .and_then(|r| r)
}

pub(super) async fn produce_delayed<I: Io>(
    req: Req,
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    p: ProduceDelayedRequest,
) -> Option<Outgoing<I::Map>> {
    let no_answer = p.acks == Acks::None;
    let now = now_ms();
    let result = if p.topic.starts_with(INTERNAL_PREFIX) {
        Err(ShardError::InternalTopic { topic: p.topic })
    } else if p.deliver_at_ms.saturating_sub(now) > shared.config.delay_max_ms as i64 {
        Err(ShardError::Invalid {
            reason: format!(
                "deliver_at_ms is more than delay_max_ms ({} ms) from now",
                shared.config.delay_max_ms
            ),
        })
    } else if p.run.len() + 4096 > shared.config.record_bytes_max {
        Err(ShardError::Invalid {
            reason: format!(
                "a delayed run is at most record_bytes_max - 4096 = {} bytes",
                shared.config.record_bytes_max.saturating_sub(4096)
            ),
        })
    } else {
        let due_ms = p.deliver_at_ms.max(now);
        let args = ScheduleArgs {
            topic: p.topic,
            partition: p.partition,
            due_ms,
            run: p.run,
        };
        schedule(shard, args, ack_level(p.acks), p.timeout_ms)
            .await
            .map(|id| (id, due_ms))
    };
    if no_answer {
        if let Err(e) = result {
            tracing::debug!(error = %e, "delayed produce without acks failed");
        }
        return None;
    }
    Some(match result {
        Ok((id, due_ms)) => req.ok(&Response::ProduceDelayed(ProduceDelayedResponse {
            id,
            due_ms,
        })),
        Err(e) => fail(req, &e),
    })
}

/// The record at `offset` of a partition, read on its owner.
async fn read_one<I: Io>(
    shard: &Rc<Shard<I>>,
    topic: &str,
    partition: u32,
    offset: u64,
) -> Result<(Message, bool), ShardError> {
    let owner = shard.owner(topic, partition);
    let t = topic.to_string();
    shard
        .on_owner(owner, move |s| {
            let found = s.read(&t, partition, offset, 1).and_then(|out| {
                let r = Records::new(out.slice.bytes(), record::ARCHIVE_LEN_MAX)
                    .filter_map(Result::ok)
                    .find(|r| r.offset() == offset);
                match r {
                    Some(r) => r
                        .message()
                        .ok()
                        .and_then(|m| rkyv::deserialize::<Message, rkyv::rancor::Error>(m).ok())
                        .map(|m| (m, r.header.value_is_null()))
                        .ok_or_else(|| ShardError::Invalid {
                            reason: format!("the record at {t}/{partition}@{offset} is unreadable"),
                        }),
                    None => Err(ShardError::Invalid {
                        reason: format!("no record at {t}/{partition}@{offset}"),
                    }),
                }
            });
            std::future::ready(found)
        })
        .await
        .and_then(|r| r)
}

/// Creates an internal topic of a group if it does not exist; true if it was created now.
async fn ensure_group_topic(
    shared: &Arc<Shared>,
    name: String,
    partitions: u32,
    retention_bytes: Option<u64>,
) -> Result<bool, ShardError> {
    if shared.catalog.get(&name).is_some() {
        return Ok(false);
    }
    let catalog = shared.catalog.clone();
    let made = runtime::blocking(move || {
        catalog.ensure_internal(
            &name,
            &TopicConfig {
                partitions,
                retention_bytes,
                retention_ms: None,
                visibility: Some(Visibility::Written),
                ..Default::default()
            },
        )
    })
    .await;
    match made {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(e)) => Err(ShardError::Invalid {
            reason: format!("internal topic not created: {e}"),
        }),
        Err(panic) => Err(ShardError::Invalid {
            reason: format!("internal topic not created: {panic}"),
        }),
    }
}

/// Appends one message to partition 0 of `topic` durably, on its owner.
async fn append_durably<I: Io>(
    shard: &Rc<Shard<I>>,
    topic: String,
    partition: u32,
    run: Vec<u8>,
) -> Result<(), ShardError> {
    let owner = shard.owner(&topic, partition);
    shard
        .on_owner(owner, move |s| {
            let s = s.clone();
            async move {
                let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(run.len());
                aligned.extend_from_slice(&run);
                let appending = s.append(&topic, partition, &mut aligned, AckLevel::Durable)?;
                appending.complete(30_000).await.map(drop)
            }
        })
        .await
        .and_then(|r| r)
}

/// Runs `f` on the coordinator of `group` and returns its offsets partition too.
async fn on_coordinator<I, T, F>(
    shard: &Rc<Shard<I>>,
    group: &str,
    f: F,
) -> Result<(u32, T), ShardError>
where
    I: Io,
    T: Send + 'static,
    F: FnOnce(&Rc<Shard<I>>, u32) -> Result<T, ShardError> + Send + 'static,
{
    let (p, owner) = super::groups::coordinator(shard, group)?;
    let out = shard
        .on_owner(owner, move |s| std::future::ready(f(s, p)))
        .await
        .and_then(|r| r)?;
    Ok((p, out))
}

/// Makes the group's members join again once its retry topic exists.
async fn rebalance_for_retry<I: Io>(shard: &Rc<Shard<I>>, group: &str) -> Result<(), ShardError> {
    let g = group.to_string();
    on_coordinator(shard, group, move |s, p| s.group_rebalance(p, &g))
        .await
        .map(drop)
}

pub(super) async fn nack<I: Io>(
    req: Req,
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    n: NackRequest,
) -> Outgoing<I::Map> {
    match nack_inner(shard, shared, n).await {
        Ok(r) => req.ok(&Response::Nack(r)),
        Err(e) => fail(req, &e),
    }
}

async fn nack_inner<I: Io>(
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    n: NackRequest,
) -> Result<NackResponse, ShardError> {
    if n.max_deliveries == 0 {
        return Err(ShardError::Invalid {
            reason: "max_deliveries must be at least 1".into(),
        });
    }
    if u64::from(n.retry_after_ms) > shared.config.delay_max_ms {
        return Err(ShardError::Invalid {
            reason: format!(
                "retry_after_ms {} is over the broker's delay_max_ms {}",
                n.retry_after_ms, shared.config.delay_max_ms
            ),
        });
    }
    let retry_topic = retry::retry_topic(&n.group);
    if n.topic.starts_with(INTERNAL_PREFIX) && n.topic != retry_topic {
        return Err(ShardError::Invalid {
            reason: format!(
                "a member of '{}' nacks records of its topics or of {retry_topic}",
                n.group
            ),
        });
    }
    // Only a member of the current generation may nack (as for a commit).
    let (group, member, generation) = (n.group.clone(), n.member_id.clone(), n.generation);
    on_coordinator(shard, &n.group, move |s, p| {
        let slot = s.coordinator(p)?;
        let checked = slot
            .borrow()
            .state
            .check_commit(&group, &member, generation);
        checked.map_err(ShardError::Group)
    })
    .await?;
    let (m, null) = read_one(shard, &n.topic, n.partition, n.offset).await?;
    let origin: Origin = retry::origin(&m, &n.topic, n.partition, n.offset);
    let failed = origin.failed.saturating_add(1);
    let copy = retry::copy(&m, &origin, failed, &n.error);
    let mut run = Vec::new();
    record::encode_like(&copy, null, &mut run).map_err(|e| ShardError::Invalid {
        reason: format!("the copy cannot be encoded: {e}"),
    })?;
    if failed >= n.max_deliveries {
        let dlq = retry::dlq_topic(&n.group);
        ensure_group_topic(shared, dlq.clone(), 1, shared.config.retention_bytes).await?;
        append_durably(shard, dlq, 0, run).await?;
        tracing::info!(
            group = n.group,
            topic = origin.topic,
            partition = origin.partition,
            offset = origin.offset,
            deliveries = failed,
            "dead-lettered"
        );
        return Ok(NackResponse {
            outcome: NackOutcome::DeadLettered,
            delivery: failed,
        });
    }
    let created = ensure_group_topic(
        shared,
        retry_topic.clone(),
        retry::RETRY_PARTITIONS,
        shared.config.retention_bytes,
    )
    .await?;
    if created {
        rebalance_for_retry(shard, &n.group).await?;
    }
    let args = ScheduleArgs {
        topic: retry_topic,
        partition: retry::retry_partition(&origin.topic, origin.partition),
        due_ms: now_ms().saturating_add(i64::from(n.retry_after_ms)),
        run,
    };
    schedule(shard, args, AckLevel::Durable, 30_000).await?;
    Ok(NackResponse {
        outcome: NackOutcome::Retry,
        delivery: failed,
    })
}

pub(super) async fn dlq_replay<I: Io>(
    req: Req,
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    group: String,
    max_messages: u32,
) -> Outgoing<I::Map> {
    match replay_inner(shard, shared, group, max_messages).await {
        Ok(r) => req.ok(&Response::DlqReplay(r)),
        Err(e) => fail(req, &e),
    }
}

async fn replay_inner<I: Io>(
    shard: &Rc<Shard<I>>,
    shared: &Arc<Shared>,
    group: String,
    max_messages: u32,
) -> Result<DlqReplayResponse, ShardError> {
    // An invalid name is refused as such, not as a group without dead letters.
    super::groups::coordinator(shard, &group)?;
    let dlq = retry::dlq_topic(&group);
    if shared.catalog.get(&dlq).is_none() {
        return Err(ShardError::Group(GroupError::UnknownGroup(format!(
            "{group} (it has no dead letters)"
        ))));
    }
    // Where the last replay stopped: the group's own position in its dead-letter topic.
    let (g, t) = (group.clone(), dlq.clone());
    let (p, cursor) = on_coordinator(shard, &group, move |s, p| {
        let slot = s.coordinator(p)?;
        let c = slot
            .borrow()
            .state
            .group(&g)
            .and_then(|grp| grp.offsets.get(&(t, 0)).map(|c| c.offset));
        Ok(c)
    })
    .await?;
    let owner = shard.owner(&dlq, 0);
    let (t, max) = (dlq.clone(), max_messages.clamp(1, 100_000) as usize);
    let (records, next) = shard
        .on_owner(owner, move |s| {
            let read = (|| {
                let earliest = s.list_offset(&t, 0, crate::shard::OffsetQuery::Earliest)?;
                let mut offset = cursor.unwrap_or(earliest).max(earliest);
                let mut out: Vec<(u64, Message, bool)> = Vec::new();
                while out.len() < max {
                    let got = s.read(&t, 0, offset, 1 << 20)?;
                    let mut advanced = false;
                    for r in Records::new(got.slice.bytes(), record::ARCHIVE_LEN_MAX).flatten() {
                        if r.offset() < offset || out.len() >= max {
                            continue;
                        }
                        if let Some(m) = r
                            .message()
                            .ok()
                            .and_then(|m| rkyv::deserialize::<Message, rkyv::rancor::Error>(m).ok())
                        {
                            out.push((r.offset(), m, r.header.value_is_null()));
                        }
                        offset = r.offset() + 1;
                        advanced = true;
                    }
                    if !advanced {
                        break;
                    }
                }
                Ok::<_, ShardError>((out, offset))
            })();
            std::future::ready(read)
        })
        .await
        .and_then(|r| r)?;
    if records.is_empty() {
        return Ok(DlqReplayResponse { replayed: 0, next });
    }
    let retry_topic = retry::retry_topic(&group);
    let created = ensure_group_topic(
        shared,
        retry_topic.clone(),
        retry::RETRY_PARTITIONS,
        shared.config.retention_bytes,
    )
    .await?;
    if created {
        rebalance_for_retry(shard, &group).await?;
    }
    // Per retry partition, in dead-letter order; the deliveries count starts again.
    let mut runs: std::collections::BTreeMap<u32, Vec<u8>> = Default::default();
    for (_, m, null) in &records {
        let o = retry::origin(m, &dlq, 0, 0);
        let error = m
            .headers
            .iter()
            .find(|h| h.key == retry::HEADER_ERROR)
            .map(|h| String::from_utf8_lossy(&h.value).into_owned())
            .unwrap_or_default();
        let copy = retry::copy(m, &o, 0, &error);
        let run = runs
            .entry(retry::retry_partition(&o.topic, o.partition))
            .or_default();
        record::encode_like(&copy, *null, run).map_err(|e| ShardError::Invalid {
            reason: format!("a dead letter cannot be copied: {e}"),
        })?;
    }
    for (partition, run) in runs {
        append_durably(shard, retry_topic.clone(), partition, run).await?;
    }
    let replayed = records.len() as u32;
    let (g, t) = (group.clone(), dlq);
    let owner = shard.owner(group::OFFSETS_TOPIC, p);
    shard
        .on_owner(owner, move |s| {
            let s = s.clone();
            async move { s.group_commit_own(p, &g, vec![((t, 0), next)]).await }
        })
        .await
        .and_then(|r| r)?;
    tracing::info!(group, replayed, next, "dead letters replayed");
    Ok(DlqReplayResponse { replayed, next })
}

/// Producer ids: the time in ms when the broker first handed one out, times 2^20, then
/// counting up. Unique across restarts while the clock moves forward and fewer than about a
/// million are handed out per ms; always below 2^63 (the scheduler's ids are above).
pub(super) fn init_producer<M: SegmentMap>(req: Req) -> Outgoing<M> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let _ = NEXT.compare_exchange(
        0,
        ((now_ms().max(1) as u64) << 20) & (u64::MAX >> 1),
        Ordering::AcqRel,
        Ordering::Acquire,
    );
    let id = NEXT.fetch_add(1, Ordering::AcqRel) & (u64::MAX >> 1);
    req.ok(&Response::InitProducer {
        producer_id: id.max(1),
    })
}
