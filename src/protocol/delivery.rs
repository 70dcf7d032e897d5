//! Bodies of the delivery apis (keys 18 to 21): ProduceDelayed, Nack, DlqReplay, InitProducer.
//! docs/protocol.md §6.19 on draws them byte by byte; `messages.rs` calls these from its request
//! and response matches.

use super::wire::{Reader, Writer};
use super::{Acks, DecodeError};

/// A ProduceDelayed request: records to append to a partition at a time, not before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceDelayedRequest {
    /// What to wait for before answering (the entry's durability, not the delivery's).
    pub acks: Acks,
    /// How long the broker may wait for `Durable` before answering `Timeout`.
    pub timeout_ms: u32,
    /// Destination topic.
    pub topic: String,
    /// Destination partition.
    pub partition: u32,
    /// When the records become readable, ms since the Unix epoch; a time already past means now.
    pub deliver_at_ms: i64,
    /// Whole records (§8), as for Produce.
    pub run: Vec<u8>,
}

/// The answer to a ProduceDelayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceDelayedResponse {
    /// The entry's id in the broker's scheduler.
    pub id: u64,
    /// When it will be delivered, ms since the Unix epoch.
    pub due_ms: i64,
}

/// A Nack request: the member failed to process one record; deliver it to the group again
/// later, or dead-letter it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NackRequest {
    /// The group.
    pub group: String,
    /// The member.
    pub member_id: String,
    /// The member's generation.
    pub generation: u32,
    /// Where the member read the record (a topic of the group, or its retry topic).
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// Deliver it again this long from now.
    pub retry_after_ms: u32,
    /// Deliveries after which the record goes to the dead-letter topic instead (at least 1).
    pub max_deliveries: u32,
    /// Why it failed (kept in the record's headers).
    pub error: String,
}

/// What a Nack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NackOutcome {
    /// Scheduled for another delivery.
    Retry = 0,
    /// Moved to the group's dead-letter topic.
    DeadLettered = 1,
}

/// The answer to a Nack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NackResponse {
    /// What happened.
    pub outcome: NackOutcome,
    /// The delivery that failed (1 = the first).
    pub delivery: u32,
}

/// The answer to a DlqReplay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DlqReplayResponse {
    /// Dead letters given back to the group.
    pub replayed: u32,
    /// The next dead letter to replay (the offset in the dead-letter topic).
    pub next: u64,
}

pub(super) fn write_produce_delayed(w: &mut Writer<'_>, p: &ProduceDelayedRequest) {
    w.u8(p.acks as u8);
    w.u32(p.timeout_ms);
    w.str(&p.topic);
    w.u32(p.partition);
    w.i64(p.deliver_at_ms);
    w.run(&p.run);
}

pub(super) fn read_produce_delayed(
    r: &mut Reader<'_>,
    frame: &[u8],
) -> Result<ProduceDelayedRequest, DecodeError> {
    let at = r.position();
    let acks = Acks::from_u8(r.u8()?, at)?;
    Ok(ProduceDelayedRequest {
        acks,
        timeout_ms: r.u32()?,
        topic: r.string()?,
        partition: r.u32()?,
        deliver_at_ms: r.i64()?,
        run: frame[r.run()?].to_vec(),
    })
}

pub(super) fn write_nack(w: &mut Writer<'_>, n: &NackRequest) {
    w.str(&n.group);
    w.str(&n.member_id);
    w.u32(n.generation);
    w.str(&n.topic);
    w.u32(n.partition);
    w.u64(n.offset);
    w.u32(n.retry_after_ms);
    w.u32(n.max_deliveries);
    w.str(&n.error);
}

pub(super) fn read_nack(r: &mut Reader<'_>) -> Result<NackRequest, DecodeError> {
    Ok(NackRequest {
        group: r.string()?,
        member_id: r.string()?,
        generation: r.u32()?,
        topic: r.string()?,
        partition: r.u32()?,
        offset: r.u64()?,
        retry_after_ms: r.u32()?,
        max_deliveries: r.u32()?,
        error: r.string()?,
    })
}

pub(super) fn read_nack_response(r: &mut Reader<'_>) -> Result<NackResponse, DecodeError> {
    let at = r.position();
    let outcome = match r.u8()? {
        0 => NackOutcome::Retry,
        1 => NackOutcome::DeadLettered,
        _ => {
            return Err(DecodeError::Invalid {
                position: at,
                what: "nack outcome is not 0 or 1",
            })
        }
    };
    Ok(NackResponse {
        outcome,
        delivery: r.u32()?,
    })
}
