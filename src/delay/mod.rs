//! Delayed delivery: records held apart until a due time, then appended to their destination
//! partition, exactly once across crashes. Used for a producer's delayed sends and for a
//! group's retries (a nacked record is scheduled into the group's retry topic).
//!
//! A Fetch serves contiguous slices of segments, so a record that must not be seen before its
//! time cannot sit in its topic: it waits in the internal topic [`DELAYS_TOPIC`], whose partition
//! `fnv1a32(topic) + partition mod N` is chosen from the destination (so a destination's delayed
//! records are delivered in due order, ties in the order they were scheduled). Its records are:
//!
//! ```text
//! Message.value = u8 version (1), u8 kind
//! kind 1, scheduled: u64 id, i64 due_ms, string topic, u32 partition, then the run to deliver
//! kind 2, done:      u32 count, count × u64 id
//! ```
//!
//! The id of a scheduled entry is the offset of its record. Every record of its run carries
//! `producer_id = DELAY_PRODUCER_ID_BASE | delays partition` and `sequence = id` (set when it is
//! scheduled), so the destination itself says whether an entry was already delivered: after a
//! crash between the delivery and its `done` record, the entry is looked for in the destination
//! (from its due time on) before it is delivered again. Nothing is lost (the entry is durable
//! before the producer's acknowledgement), nothing is delivered twice.
//!
//! This module is the state and the record format, with no I/O: `shard::delays` runs it.

use std::collections::{BTreeMap, HashMap};

use crate::protocol::wire::{Reader, Writer};
use crate::record::{self, Message, RecordError, RecordRef};

/// The internal topic of scheduled records.
pub const DELAYS_TOPIC: &str = "__delays";
/// `producer_id` of delivered records: this, or'ed with the delays partition. Producer ids the
/// broker hands out are below 2^63, so they never collide with these.
pub const DELAY_PRODUCER_ID_BASE: u64 = 0xFFFF_0000_0000_0000;

const VERSION: u8 = 1;
const KIND_SCHEDULED: u8 = 1;
const KIND_DONE: u8 = 2;

/// One scheduled entry waiting for its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its id (the offset of its record in the delays partition).
    pub id: u64,
    /// When it is due, ms since the Unix epoch.
    pub due_ms: i64,
    /// Destination topic.
    pub topic: String,
    /// Destination partition.
    pub partition: u32,
    /// Bytes of its run.
    pub bytes: usize,
    /// Loaded from the log at start: it may have been delivered before a crash, so the
    /// destination is checked first.
    pub unverified: bool,
}

/// The pending entries of one delays partition.
#[derive(Debug, Default)]
pub struct Schedule {
    by_due: BTreeMap<(i64, u64), Pending>,
    due_of: HashMap<u64, i64>,
    bytes: usize,
}

impl Schedule {
    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.by_due.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.by_due.is_empty()
    }

    /// Bytes of the runs waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The earliest due time, if anything waits.
    pub fn next_due(&self) -> Option<i64> {
        self.by_due.keys().next().map(|&(due, _)| due)
    }

    /// The smallest id still waiting: the delays log may drop every record below it.
    pub fn low_watermark(&self) -> Option<u64> {
        self.due_of.keys().min().copied()
    }

    /// Adds an entry (scheduled now, or replayed).
    pub fn insert(&mut self, p: Pending) {
        self.bytes += p.bytes;
        self.due_of.insert(p.id, p.due_ms);
        if let Some(old) = self.by_due.insert((p.due_ms, p.id), p) {
            self.bytes -= old.bytes;
        }
    }

    /// Removes an entry (delivered, or dropped); returns it.
    pub fn remove(&mut self, id: u64) -> Option<Pending> {
        let due = self.due_of.remove(&id)?;
        let p = self.by_due.remove(&(due, id))?;
        self.bytes -= p.bytes;
        Some(p)
    }

    /// The entries due at `now_ms`, earliest first, at most `max` of them.
    pub fn due(&self, now_ms: i64, max: usize) -> Vec<Pending> {
        self.by_due
            .range(..=(now_ms, u64::MAX))
            .take(max)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Applies one record of the delays log (replay at start).
    pub fn apply(&mut self, r: &RecordRef<'_>) {
        match decode(r) {
            Ok(Stored::Scheduled {
                id,
                due_ms,
                topic,
                partition,
                run,
            }) => self.insert(Pending {
                id,
                due_ms,
                topic,
                partition,
                bytes: run.len(),
                unverified: true,
            }),
            Ok(Stored::Done(ids)) => {
                for id in ids {
                    self.remove(id);
                }
            }
            Err(e) => tracing::warn!(offset = r.offset(), error = %e, "delays record skipped"),
        }
    }
}

/// A decoded record of the delays log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// An entry.
    Scheduled {
        /// Its id.
        id: u64,
        /// Due time, ms since the epoch.
        due_ms: i64,
        /// Destination topic.
        topic: String,
        /// Destination partition.
        partition: u32,
        /// The run to append, with producer ids and sequences already set.
        run: Vec<u8>,
    },
    /// Entries delivered (or dropped).
    Done(Vec<u64>),
}

/// Why a delays record could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelayError {
    /// A record of the run, or the entry, is not valid.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The value does not follow the format.
    #[error("malformed delays record: {0}")]
    Malformed(String),
}

/// Re-encodes `run` (whole records as a producer sent them) for delivery from delays partition
/// `d` as entry `id`: every record gets the scheduler's producer id and the entry id as its
/// sequence. Returns the new run.
pub fn tag_run(run: &[u8], d: u32, id: u64, archive_len_max: usize) -> Result<Vec<u8>, DelayError> {
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(run.len());
    aligned.extend_from_slice(run);
    let mut out = Vec::with_capacity(run.len() + 32);
    let mut position = 0;
    while position < aligned.len() {
        // As the producer sent it: broker fields and header CRC not set yet.
        let (archived, total) = record::produced_message(&aligned, position, archive_len_max)?;
        let null = record::flags_value_is_null(&aligned[position..]);
        position += total;
        let mut m: Message = rkyv::deserialize::<Message, rkyv::rancor::Error>(archived)
            .map_err(|e| DelayError::Malformed(e.to_string()))?;
        m.producer_id = DELAY_PRODUCER_ID_BASE | u64::from(d);
        m.sequence = id;
        record::encode_like(&m, null, &mut out)?;
    }
    Ok(out)
}

/// Appends the record of a scheduled entry to `out`.
pub fn encode_scheduled(
    id: u64,
    due_ms: i64,
    topic: &str,
    partition: u32,
    run: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), DelayError> {
    let mut value = Vec::with_capacity(run.len() + topic.len() + 32);
    let mut w = Writer::new(&mut value);
    w.u8(VERSION);
    w.u8(KIND_SCHEDULED);
    w.u64(id);
    w.i64(due_ms);
    w.str(topic);
    w.u32(partition);
    w.finish()
        .map_err(|e| DelayError::Malformed(e.to_string()))?;
    value.extend_from_slice(run);
    let m = Message {
        value,
        ..Message::default()
    };
    record::encode(&m, out)?;
    Ok(())
}

/// Appends a `done` record for `ids` to `out`.
pub fn encode_done(ids: &[u64], out: &mut Vec<u8>) -> Result<(), DelayError> {
    let mut value = Vec::with_capacity(6 + ids.len() * 8);
    let mut w = Writer::new(&mut value);
    w.u8(VERSION);
    w.u8(KIND_DONE);
    w.count(ids.len());
    for id in ids {
        w.u64(*id);
    }
    w.finish()
        .map_err(|e| DelayError::Malformed(e.to_string()))?;
    let m = Message {
        value,
        ..Message::default()
    };
    record::encode(&m, out)?;
    Ok(())
}

/// Reads one record of the delays log.
pub fn decode(r: &RecordRef<'_>) -> Result<Stored, DelayError> {
    let m = r.message()?;
    let value = m.value.as_slice();
    let mut rd = Reader::new(value, 0);
    let bad = |e: crate::protocol::DecodeError| DelayError::Malformed(e.to_string());
    let (version, kind) = (rd.u8().map_err(bad)?, rd.u8().map_err(bad)?);
    match (version, kind) {
        (VERSION, KIND_SCHEDULED) => {
            let id = rd.u64().map_err(bad)?;
            let due_ms = rd.i64().map_err(bad)?;
            let topic = rd.string().map_err(bad)?;
            let partition = rd.u32().map_err(bad)?;
            let run = value[rd.position()..].to_vec();
            Ok(Stored::Scheduled {
                id,
                due_ms,
                topic,
                partition,
                run,
            })
        }
        (VERSION, KIND_DONE) => {
            let n = rd.count(8).map_err(bad)?;
            let mut ids = Vec::with_capacity(n);
            for _ in 0..n {
                ids.push(rd.u64().map_err(bad)?);
            }
            Ok(Stored::Done(ids))
        }
        _ => Err(DelayError::Malformed(format!(
            "version {version} kind {kind}"
        ))),
    }
}

/// The delays partition holding the delayed records of `topic`/`partition`, of `partitions`.
pub fn delays_partition(topic: &str, partition: u32, partitions: u32) -> u32 {
    crate::shard::fnv1a32(topic.as_bytes()).wrapping_add(partition) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Records;

    fn one(value: &str) -> Vec<u8> {
        let mut run = Vec::new();
        let m = Message {
            value: value.as_bytes().to_vec(),
            ..Message::default()
        };
        record::encode(&m, &mut run).unwrap();
        run
    }

    fn records(run: &[u8]) -> Vec<Stored> {
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(run);
        Records::new(&aligned, record::ARCHIVE_LEN_MAX)
            .map(|r| decode(&r.unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn given_a_null_value_when_tagged_for_delivery_should_stay_null() {
        let mut run = one("kept");
        record::encode_null_value(&Message::default(), &mut run).unwrap();
        let tagged = tag_run(&run, 1, 9, record::ARCHIVE_LEN_MAX).unwrap();
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&tagged);
        let nulls: Vec<bool> = Records::new(&aligned, record::ARCHIVE_LEN_MAX)
            .map(|r| r.unwrap().header.value_is_null())
            .collect();
        assert_eq!(nulls, [false, true]);
    }

    #[test]
    fn given_scheduled_and_done_records_when_replayed_should_leave_the_undelivered_pending() {
        let tagged = tag_run(&one("hello"), 3, 0, record::ARCHIVE_LEN_MAX).unwrap();
        let mut run = Vec::new();
        encode_scheduled(0, 2_000, "t", 1, &tagged, &mut run).unwrap();
        encode_scheduled(1, 1_000, "t", 1, &tagged, &mut run).unwrap();
        encode_scheduled(2, 1_000, "u", 0, &tagged, &mut run).unwrap();
        encode_done(&[1], &mut run).unwrap();
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&run);
        let mut s = Schedule::default();
        for r in Records::new(&aligned, record::ARCHIVE_LEN_MAX) {
            s.apply(&r.unwrap());
        }
        assert_eq!(s.len(), 2);
        assert_eq!(s.next_due(), Some(1_000));
        assert_eq!(s.low_watermark(), Some(0));
        let due: Vec<u64> = s.due(1_500, 10).iter().map(|p| p.id).collect();
        assert_eq!(due, vec![2]);
        assert!(s.due(1_500, 10)[0].unverified);
        assert_eq!(s.due(2_000, 10).len(), 2);
        s.remove(0);
        assert_eq!(s.low_watermark(), Some(2));
        s.remove(2);
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn given_a_run_when_tagged_should_carry_the_scheduler_id_and_keep_the_payload() {
        let mut run = one("a");
        run.extend(one("b"));
        let tagged = tag_run(&run, 5, 42, record::ARCHIVE_LEN_MAX).unwrap();
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&tagged);
        let values: Vec<(u64, u64, Vec<u8>)> = Records::new(&aligned, record::ARCHIVE_LEN_MAX)
            .map(|r| {
                let r = r.unwrap();
                let m = r.message().unwrap();
                (
                    m.producer_id.to_native(),
                    m.sequence.to_native(),
                    m.value.to_vec(),
                )
            })
            .collect();
        assert_eq!(
            values,
            vec![
                (DELAY_PRODUCER_ID_BASE | 5, 42, b"a".to_vec()),
                (DELAY_PRODUCER_ID_BASE | 5, 42, b"b".to_vec())
            ]
        );
        let mut out = Vec::new();
        encode_scheduled(42, 9, "t", 0, &tagged, &mut out).unwrap();
        assert!(matches!(&records(&out)[0], Stored::Scheduled { run, .. } if *run == tagged));
    }
}
