//! Idempotent produce: per partition, the last batches of each producer id, so a batch sent again
//! (its acknowledgement was lost) is answered with its original offsets instead of being stored
//! twice, and a batch after a gap is refused.
//!
//! An idempotent producer puts its id (from InitProducer) in every record's `producer_id` and
//! numbers its records per partition in `sequence`, consecutively from 0; a batch is a run of
//! records of one producer with consecutive sequences. For each partition the owner keeps, per
//! producer, the sequence after its last stored batch and its last [`REMEMBERED`] batches. A new
//! batch must start at that sequence; a batch equal to a remembered one is a duplicate; any
//! other is refused (`OutOfOrderSequence` after a gap, `DuplicateSequence` for a batch older
//! than those remembered).
//!
//! The table is rebuilt from the records themselves (they carry id and sequence) when a
//! partition first sees an idempotent batch after it was opened: the last [`SCAN_BYTES`] of the
//! log are read. A producer whose last batch is older than that is treated as new (its next
//! batch is accepted as is), so the guarantee across a restart covers retries of batches among
//! the partition's last 32 MiB, which a retry (seconds) always is under any load below
//! 32 MiB/s per partition.

use std::collections::{HashMap, VecDeque};

use crate::record::{self, RecordError, RecordRef, Records};

/// Batches remembered per producer and partition: as many as a producer may have in flight.
pub const REMEMBERED: usize = 5;
/// Producers remembered per partition; the least recently seen is forgotten beyond it.
pub const PRODUCERS_MAX: usize = 10_000;
/// Bytes at the end of a log read to rebuild its table.
pub const SCAN_BYTES: u64 = 32 << 20;
/// Producer ids at or above this are the broker's own (the delay scheduler): never checked.
pub const BROKER_IDS: u64 = 1 << 63;

/// An idempotent batch: one producer, consecutive sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchId {
    /// The producer.
    pub producer_id: u64,
    /// The first record's sequence.
    pub first: u64,
    /// Records in the batch.
    pub count: u64,
}

/// Why a run is not a valid idempotent batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// A record is not valid (the append reports it).
    #[error(transparent)]
    Record(#[from] RecordError),
    /// Records of several producers, or sequences that are not consecutive.
    #[error("{0}")]
    NotOneBatch(String),
}

/// Reads a run's producer id and sequences. `Ok(None)` for a run of a producer that is not
/// idempotent (`producer_id` 0) or of the broker itself: the first record decides, so a plain
/// producer's run costs one record's check here. An error for an idempotent run mixing
/// producers or with sequences that are not consecutive.
pub fn batch_id(run: &[u8], archive_len_max: usize) -> Result<Option<BatchId>, BatchError> {
    let mut id: Option<BatchId> = None;
    let mut position = 0;
    while position < run.len() {
        // As the producer sent it: broker fields and header CRC not set yet.
        let (m, total) = record::produced_message(run, position, archive_len_max)?;
        position += total;
        let (pid, seq) = (m.producer_id.to_native(), m.sequence.to_native());
        match &mut id {
            None if pid == 0 || pid >= BROKER_IDS => return Ok(None),
            None => {
                id = Some(BatchId {
                    producer_id: pid,
                    first: seq,
                    count: 1,
                })
            }
            Some(b) => {
                if pid != b.producer_id || seq != b.first + b.count {
                    return Err(BatchError::NotOneBatch(format!(
                        "an idempotent batch holds one producer's records with consecutive sequences \
                         (producer {}, expected sequence {}, got producer {pid} sequence {seq})",
                        b.producer_id,
                        b.first + b.count
                    )));
                }
                b.count += 1;
            }
        }
    }
    Ok(id)
}

/// A stored batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    first: u64,
    count: u64,
    /// Its first offset.
    pub base_offset: u64,
    /// Its append time.
    pub timestamp_ms: i64,
}

#[derive(Debug, Default)]
struct Producer {
    batches: VecDeque<Stored>,
    last_seen: u64,
}

impl Producer {
    fn next_sequence(&self) -> Option<u64> {
        self.batches.back().map(|b| b.first + b.count)
    }
}

/// What to do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Store it.
    Append,
    /// Already stored: answer with these.
    Duplicate(Stored),
    /// Records are missing before it: refuse (`OutOfOrderSequence`).
    Gap {
        /// The sequence the producer's next batch must start with.
        expected: u64,
    },
    /// It repeats sequences stored earlier than remembered: refuse (`DuplicateSequence`).
    Old {
        /// The sequence the producer's next batch must start with.
        expected: u64,
    },
}

/// The producers of one partition.
#[derive(Debug, Default)]
pub struct ProducerTable {
    producers: HashMap<u64, Producer>,
    clock: u64,
    /// While rebuilding: the batch being read.
    reading: Option<(BatchId, u64, i64)>,
}

impl ProducerTable {
    /// What to do with batch `b`.
    pub fn check(&self, b: &BatchId) -> Decision {
        let Some(p) = self.producers.get(&b.producer_id) else {
            return Decision::Append;
        };
        // A retry matches a remembered batch, or lies inside one (after a rebuild, which merges
        // a producer's adjacent batches): its records sit at consecutive offsets either way.
        if let Some(s) = p
            .batches
            .iter()
            .find(|s| s.first <= b.first && b.first + b.count <= s.first + s.count)
        {
            return Decision::Duplicate(Stored {
                first: b.first,
                count: b.count,
                base_offset: s.base_offset + (b.first - s.first),
                timestamp_ms: s.timestamp_ms,
            });
        }
        let expected = p.next_sequence().unwrap_or(0);
        if b.first == expected {
            Decision::Append
        } else if b.first > expected {
            Decision::Gap { expected }
        } else {
            Decision::Old { expected }
        }
    }

    /// Records a stored batch.
    pub fn stored(&mut self, b: &BatchId, base_offset: u64, timestamp_ms: i64) {
        self.clock += 1;
        let clock = self.clock;
        if !self.producers.contains_key(&b.producer_id) && self.producers.len() >= PRODUCERS_MAX {
            // Forget the producer seen least recently.
            if let Some((&oldest, _)) = self.producers.iter().min_by_key(|(_, p)| p.last_seen) {
                self.producers.remove(&oldest);
            }
        }
        let p = self.producers.entry(b.producer_id).or_default();
        p.last_seen = clock;
        p.batches.push_back(Stored {
            first: b.first,
            count: b.count,
            base_offset,
            timestamp_ms,
        });
        while p.batches.len() > REMEMBERED {
            p.batches.pop_front();
        }
    }

    /// Rebuilds the table from whole records of a log's tail, given in order (call
    /// [`ProducerTable::rebuilt`] after the last). Runs of consecutive records of one producer
    /// with consecutive sequences count as one batch: batch boundaries are not stored, and a
    /// retry of any part of such a run is answered with the offsets of its records.
    pub fn rebuild_from(&mut self, run: &[u8], archive_len_max: usize) {
        for r in Records::new(run, archive_len_max).flatten() {
            self.rebuild_record(&r);
        }
    }

    /// Rebuilds from one stored record (see [`ProducerTable::rebuild_from`]).
    pub fn rebuild_record(&mut self, r: &RecordRef<'_>) {
        let Ok(m) = r.message() else { return };
        let (pid, seq) = (m.producer_id.to_native(), m.sequence.to_native());
        let idempotent = pid != 0 && pid < BROKER_IDS;
        match &mut self.reading {
            Some((b, _, _)) if idempotent && pid == b.producer_id && seq == b.first + b.count => {
                b.count += 1;
            }
            _ => {
                self.rebuilt();
                if idempotent {
                    let b = BatchId {
                        producer_id: pid,
                        first: seq,
                        count: 1,
                    };
                    self.reading = Some((b, r.offset(), r.header.timestamp_ms));
                }
            }
        }
    }

    /// Ends a rebuild: the batch being read is stored.
    pub fn rebuilt(&mut self) {
        if let Some((b, base, ts)) = self.reading.take() {
            self.stored(&b, base, ts);
        }
    }
}

/// Checks a run for [`batch_id`] with the default archive bound.
pub fn run_batch_id(run: &[u8]) -> Result<Option<BatchId>, BatchError> {
    batch_id(run, record::ARCHIVE_LEN_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Message;

    fn run(pid: u64, seqs: std::ops::Range<u64>) -> rkyv::util::AlignedVec<16> {
        let mut out = Vec::new();
        for s in seqs {
            let m = Message {
                producer_id: pid,
                sequence: s,
                value: vec![b'v'],
                ..Message::default()
            };
            record::encode(&m, &mut out).unwrap();
        }
        let mut a = rkyv::util::AlignedVec::<16>::new();
        a.extend_from_slice(&out);
        a
    }

    /// A run as a producer may send it: header CRCs left 0 (docs/protocol.md §8.1).
    fn sent(pid: u64, seqs: std::ops::Range<u64>) -> rkyv::util::AlignedVec<16> {
        let mut r = run(pid, seqs);
        let mut at = 0;
        while at < r.len() {
            let total = record::check_produced(&r, at, record::ARCHIVE_LEN_MAX).unwrap();
            r[at + 28..at + 32].fill(0);
            at += total;
        }
        r
    }

    #[test]
    fn given_batches_should_append_new_dedupe_repeats_and_refuse_gaps() {
        let mut t = ProducerTable::default();
        let b0 = run_batch_id(&sent(9, 0..3)).unwrap().unwrap();
        assert_eq!(t.check(&b0), Decision::Append);
        t.stored(&b0, 100, 7);
        let b1 = run_batch_id(&sent(9, 3..5)).unwrap().unwrap();
        assert_eq!(
            t.check(&b0),
            Decision::Duplicate(Stored {
                first: 0,
                count: 3,
                base_offset: 100,
                timestamp_ms: 7
            })
        );
        assert_eq!(t.check(&b1), Decision::Append);
        t.stored(&b1, 103, 8);
        let gap = run_batch_id(&sent(9, 6..7)).unwrap().unwrap();
        assert_eq!(t.check(&gap), Decision::Gap { expected: 5 });
        let inside = run_batch_id(&sent(9, 1..2)).unwrap().unwrap();
        assert!(matches!(t.check(&inside), Decision::Duplicate(s) if s.base_offset == 101));
        for i in 0..REMEMBERED as u64 {
            let b = run_batch_id(&sent(9, 5 + i..6 + i)).unwrap().unwrap();
            assert_eq!(t.check(&b), Decision::Append);
            t.stored(&b, 105 + i, 9);
        }
        let expected = 5 + REMEMBERED as u64;
        assert_eq!(
            t.check(&b0),
            Decision::Old { expected },
            "forgotten: older than the remembered batches"
        );
        assert_eq!(run_batch_id(&sent(0, 0..3)).unwrap(), None);
        assert_eq!(run_batch_id(&sent(BROKER_IDS | 1, 0..3)).unwrap(), None);
        let mut mixed = sent(9, 0..1);
        mixed.extend_from_slice(&sent(8, 1..2));
        assert!(run_batch_id(&mixed).is_err());
        let mut skipping = sent(9, 0..1);
        skipping.extend_from_slice(&sent(9, 2..3));
        assert!(
            run_batch_id(&skipping).is_err(),
            "sequences must be consecutive"
        );
    }

    #[test]
    fn given_a_log_tail_when_rebuilt_should_know_each_producers_next_sequence() {
        let mut tail = run(9, 0..3);
        tail.extend_from_slice(&run(0, 0..2));
        tail.extend_from_slice(&run(5, 10..12));
        // Offsets are 0 in unstamped records; what matters is the sequences.
        let mut t = ProducerTable::default();
        t.rebuild_from(&tail, record::ARCHIVE_LEN_MAX);
        t.rebuilt();
        let next = run_batch_id(&run(9, 3..4)).unwrap().unwrap();
        assert_eq!(t.check(&next), Decision::Append);
        let again = run_batch_id(&run(9, 0..3)).unwrap().unwrap();
        assert!(matches!(t.check(&again), Decision::Duplicate(_)));
        // A retry of a part of the merged run gets the offsets of its own records.
        let part = run_batch_id(&run(9, 1..3)).unwrap().unwrap();
        match t.check(&part) {
            Decision::Duplicate(s) => assert_eq!(s.base_offset, 1),
            d => panic!("expected a duplicate, got {d:?}"),
        }
        let five = run_batch_id(&run(5, 13..14)).unwrap().unwrap();
        assert_eq!(t.check(&five), Decision::Gap { expected: 12 });
    }
}
