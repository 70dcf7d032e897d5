//! How group state is stored: records of the internal offsets topic, one per committed
//! position, plus a tombstone per deleted group. They are ordinary Levee records (CRC-checked,
//! group-committed, recovered like any partition); replaying a partition's records in order
//! rebuilds its coordinator's offsets.
//!
//! Every record is a `Message` whose key is the group name and whose value is:
//!
//! ```text
//! u8 version (1), u8 kind
//! kind 1, commit:  string topic, u32 partition, u64 offset, string metadata, i64 timestamp_ms
//! kind 2, delete:  (nothing more: the group and its offsets are gone)
//! kind 3, forget:  string topic (the topic was deleted: the group's offsets on it are gone)
//! ```
//! (strings and integers as in docs/protocol.md §4). Snapshots are commit records of every
//! current position, appended together, so retention may drop everything older than the last
//! snapshot without losing the latest state.

use super::{Committed, Coordinator, TopicPartition};
use crate::protocol::wire::{Reader, Writer};
use crate::record::{self, Message, RecordError, RecordRef};

const VERSION: u8 = 1;
const KIND_COMMIT: u8 = 1;
const KIND_DELETE: u8 = 2;
const KIND_FORGET_TOPIC: u8 = 3;

fn record(group: &str, value: Vec<u8>, run: &mut Vec<u8>) -> Result<(), RecordError> {
    let m = Message {
        key: Some(group.as_bytes().to_vec()),
        value,
        ..Message::default()
    };
    record::encode(&m, run).map(drop)
}

/// Appends one commit record per position to `run`.
pub fn encode_commit(
    group: &str,
    offsets: &[(TopicPartition, Committed)],
    run: &mut Vec<u8>,
) -> Result<(), RecordError> {
    for ((topic, partition), c) in offsets {
        let mut value = Vec::new();
        let mut w = Writer::new(&mut value);
        w.u8(VERSION);
        w.u8(KIND_COMMIT);
        w.str(topic);
        w.u32(*partition);
        w.u64(c.offset);
        w.str(&c.metadata);
        w.i64(c.timestamp_ms);
        if w.finish().is_err() {
            return Err(RecordError::BadArchive {
                position: 0,
                reason: "a topic or metadata string over 65535 bytes".into(),
            });
        }
        record(group, value, run)?;
    }
    Ok(())
}

/// Appends a group's tombstone to `run`.
pub fn encode_delete(group: &str, run: &mut Vec<u8>) -> Result<(), RecordError> {
    record(group, vec![VERSION, KIND_DELETE], run)
}

/// Appends a record to `run` that drops `group`'s offsets on the deleted `topic`.
pub fn encode_forget_topic(group: &str, topic: &str, run: &mut Vec<u8>) -> Result<(), RecordError> {
    let mut value = Vec::new();
    let mut w = Writer::new(&mut value);
    w.u8(VERSION);
    w.u8(KIND_FORGET_TOPIC);
    w.str(topic);
    if w.finish().is_err() {
        return Err(RecordError::BadArchive {
            position: 0,
            reason: "a topic name over 65535 bytes".into(),
        });
    }
    record(group, value, run)
}

/// Appends a snapshot of every position `coordinator` holds to `run`.
pub fn encode_snapshot(coordinator: &Coordinator, run: &mut Vec<u8>) -> Result<(), RecordError> {
    for g in coordinator.groups() {
        let offsets: Vec<(TopicPartition, Committed)> = g
            .offsets
            .iter()
            .map(|(tp, c)| (tp.clone(), c.clone()))
            .collect();
        encode_commit(&g.name, &offsets, run)?;
    }
    Ok(())
}

/// Applies one stored record to `coordinator`. A record this version cannot read is skipped
/// with a warning (its CRCs passed: it is a newer format, not damage).
pub fn apply(coordinator: &mut Coordinator, r: &RecordRef<'_>) {
    let Ok(m) = r.message() else {
        tracing::warn!(
            offset = r.offset(),
            "offsets record without a readable archive"
        );
        return;
    };
    let Some(group) = m.key.as_ref().and_then(|k| std::str::from_utf8(k).ok()) else {
        tracing::warn!(offset = r.offset(), "offsets record without a group key");
        return;
    };
    let value = m.value.as_slice();
    let mut rd = Reader::new(value, 0);
    let parsed = (|| -> Result<(), crate::protocol::DecodeError> {
        let (version, kind) = (rd.u8()?, rd.u8()?);
        match (version, kind) {
            (VERSION, KIND_COMMIT) => {
                let tp = (rd.string()?, rd.u32()?);
                let c = Committed {
                    offset: rd.u64()?,
                    metadata: rd.string()?,
                    timestamp_ms: rd.i64()?,
                };
                coordinator.apply_commit(group, vec![(tp, c)]);
            }
            (VERSION, KIND_DELETE) => coordinator.apply_delete(group),
            (VERSION, KIND_FORGET_TOPIC) => coordinator.apply_forget_topic(group, rd.str()?),
            _ => tracing::warn!(
                offset = r.offset(),
                version,
                kind,
                "offsets record of an unknown kind"
            ),
        }
        Ok(())
    })();
    if let Err(e) = parsed {
        tracing::warn!(offset = r.offset(), error = %e, "unreadable offsets record skipped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Records;

    #[test]
    fn given_commits_and_a_delete_when_replayed_should_rebuild_the_latest_state() {
        let c = |offset| Committed {
            offset,
            metadata: "m".into(),
            timestamp_ms: 7,
        };
        let mut run = Vec::new();
        encode_commit(
            "g",
            &[(("t".into(), 0), c(5)), (("t".into(), 1), c(9))],
            &mut run,
        )
        .unwrap();
        encode_commit("g", &[(("t".into(), 0), c(6))], &mut run).unwrap();
        encode_commit("h", &[(("t".into(), 0), c(1))], &mut run).unwrap();
        encode_delete("h", &mut run).unwrap();
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&run);
        let mut coordinator = Coordinator::default();
        for r in Records::new(&aligned, record::ARCHIVE_LEN_MAX) {
            apply(&mut coordinator, &r.unwrap());
        }
        let g = coordinator.group("g").unwrap();
        assert_eq!(g.offsets[&("t".to_string(), 0)].offset, 6);
        assert_eq!(g.offsets[&("t".to_string(), 1)].offset, 9);
        assert!(coordinator.group("h").is_none());
        // A snapshot replays to the same state.
        let mut snap = Vec::new();
        encode_snapshot(&coordinator, &mut snap).unwrap();
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&snap);
        let mut again = Coordinator::default();
        for r in Records::new(&aligned, record::ARCHIVE_LEN_MAX) {
            apply(&mut again, &r.unwrap());
        }
        assert_eq!(again.group("g").unwrap().offsets, g.offsets);
    }

    #[test]
    fn given_a_forgotten_topic_when_replayed_should_drop_only_its_offsets() {
        let c = |offset| Committed {
            offset,
            metadata: String::new(),
            timestamp_ms: 0,
        };
        let mut run = Vec::new();
        encode_commit(
            "g",
            &[(("gone".into(), 0), c(5)), (("kept".into(), 0), c(9))],
            &mut run,
        )
        .unwrap();
        encode_commit("h", &[(("gone".into(), 1), c(2))], &mut run).unwrap();
        encode_forget_topic("g", "gone", &mut run).unwrap();
        encode_forget_topic("h", "gone", &mut run).unwrap();
        // Committed again after the topic was created again: kept.
        encode_commit("h", &[(("gone".into(), 0), c(1))], &mut run).unwrap();
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&run);
        let mut coordinator = Coordinator::default();
        for r in Records::new(&aligned, record::ARCHIVE_LEN_MAX) {
            apply(&mut coordinator, &r.unwrap());
        }
        let g = coordinator.group("g").unwrap();
        assert_eq!(g.offsets.len(), 1);
        assert_eq!(g.offsets[&("kept".to_string(), 0)].offset, 9);
        let h = coordinator.group("h").unwrap();
        assert_eq!(h.offsets.len(), 1);
        assert_eq!(h.offsets[&("gone".to_string(), 0)].offset, 1);
    }
}
