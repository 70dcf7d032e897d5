//! A segment: one memory-mapped file of consecutive records, named by its base offset.
//!
//! The file is reserved with fallocate at creation and mapped whole; an append copies whole records
//! to the end of what was written, and reads borrow slices of the mapping. A segment is written by
//! one thread and never past its reservation: [`Segment::write`] asserts it. Bytes before `len`
//! never change again, except when recovery or an explicit truncation cuts the tail, which requires
//! that no reader holds a slice of it (see [`Segment::readers`]).
//!
//! This module owns positions inside one file. It does not decide when to roll, what durability an
//! append needs or which segment an offset lives in: that is the log's job.

use std::path::PathBuf;
use std::sync::Arc;

use super::index::{Checkpoint, SegmentIndex};
use super::io::SegmentMap;
use crate::record::{self, RecordError, HEADER_LEN};

/// File name of the segment with this base offset: 20 digits, so names sort like offsets.
pub fn file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.log")
}

/// File name of the segment's index checkpoint.
pub fn index_name(base_offset: u64) -> String {
    format!("{base_offset:020}.index")
}

/// Parses a segment file name back to its base offset.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One segment of a log.
pub struct Segment<M: SegmentMap> {
    pub(crate) base_offset: u64,
    pub(crate) path: PathBuf,
    pub(crate) map: Arc<M>,
    /// Bytes of whole records written.
    pub(crate) len: usize,
    /// The offset the next record appended here gets.
    pub(crate) next_offset: u64,
    pub(crate) index: SegmentIndex,
    /// Largest append timestamp in the segment (timestamps never decrease, so: the last one).
    pub(crate) max_timestamp_ms: i64,
    /// Append timestamp of the first record, for rolling by age.
    pub(crate) first_timestamp_ms: Option<i64>,
    /// Cloned into every slice handed to a reader; a count of 1 means nobody reads this segment.
    pub(crate) readers: Arc<()>,
}

impl<M: SegmentMap> Segment<M> {
    pub(crate) fn new(base_offset: u64, path: PathBuf, map: Arc<M>, interval_bytes: usize) -> Self {
        Segment {
            base_offset,
            path,
            map,
            len: 0,
            next_offset: base_offset,
            index: SegmentIndex::new(interval_bytes),
            max_timestamp_ms: i64::MIN,
            first_timestamp_ms: None,
            readers: Arc::new(()),
        }
    }

    /// True when the file can be reused for a new segment: no reader holds its bytes.
    pub(crate) fn recyclable(&self) -> bool {
        Arc::strong_count(&self.readers) == 1
    }

    /// True when the segment holds no record.
    pub(crate) fn is_empty(&self) -> bool {
        self.next_offset == self.base_offset
    }

    /// Bytes still free in the reservation.
    pub(crate) fn remaining(&self) -> usize {
        self.map.len() - self.len
    }

    /// Copies already-stamped whole records to the end of the segment. The index entries for them
    /// were added by the caller while stamping.
    pub(crate) fn write(&mut self, run: &[u8], next_offset: u64, max_timestamp_ms: i64) {
        assert!(
            run.len() <= self.remaining(),
            "segment written past its end"
        );
        assert!(next_offset > self.next_offset, "offsets must increase");
        assert!(
            max_timestamp_ms >= self.max_timestamp_ms,
            "timestamps must not decrease"
        );
        // SAFETY: one writer (we hold &mut self), and no slice covers bytes at or past `len`.
        unsafe { self.map.write(self.len, run) };
        self.len += run.len();
        self.next_offset = next_offset;
        self.max_timestamp_ms = max_timestamp_ms;
    }

    /// The written bytes `position..position + len`.
    pub(crate) fn bytes(&self, position: usize, len: usize) -> &[u8] {
        assert!(position + len <= self.len, "read past the written end");
        // SAFETY: the range was written and is never written again while `&self` lives.
        unsafe { self.map.slice(position, len) }
    }

    /// All written bytes.
    pub(crate) fn written(&self) -> &[u8] {
        self.bytes(0, self.len)
    }

    /// Byte position of the record with `offset`, which must be in this segment. Starts at the
    /// nearest index entry and walks at most one index interval of headers.
    pub(crate) fn position_of(
        &self,
        offset: u64,
        archive_len_max: usize,
    ) -> Result<usize, RecordError> {
        assert!(offset >= self.base_offset && offset < self.next_offset);
        let relative = (offset - self.base_offset) as u32;
        let (mut position, mut at) = match self.index.floor_offset(relative) {
            Some(e) => (
                e.position as usize,
                self.base_offset + e.relative_offset as u64,
            ),
            None => (0, self.base_offset),
        };
        let data = self.written();
        while at < offset {
            let h = record::decode_header(data, position, archive_len_max)?;
            position += h.record_len();
            at += 1;
        }
        Ok(position)
    }

    /// The first offset in this segment whose append time is at or after `timestamp_ms`, if any.
    pub(crate) fn offset_at_time(
        &self,
        timestamp_ms: i64,
        archive_len_max: usize,
    ) -> Result<Option<u64>, RecordError> {
        if self.is_empty() || self.max_timestamp_ms < timestamp_ms {
            return Ok(None);
        }
        let mut position = self
            .index
            .floor_time(timestamp_ms)
            .map_or(0, |e| e.position as usize);
        let data = self.written();
        while position < self.len {
            let h = record::decode_header(data, position, archive_len_max)?;
            if h.timestamp_ms >= timestamp_ms {
                return Ok(Some(h.offset));
            }
            position += h.record_len();
        }
        Ok(None)
    }

    /// The checkpoint describing the segment as it is now.
    pub(crate) fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            base_offset: self.base_offset,
            next_offset: self.next_offset,
            data_len: self.len as u64,
            max_timestamp_ms: self.max_timestamp_ms,
            entries: self.index.entries().to_vec(),
        }
    }

    /// Erases everything after the last record (no reader can hold those bytes), so that a reopen
    /// finds zeros there and not the stale records of a recycled file.
    pub(crate) fn erase_tail(&self) -> std::io::Result<()> {
        // SAFETY: slices never cover bytes at or past `len`, and we are the only writer.
        unsafe { self.map.zero(self.len, self.map.len() - self.len) }
    }

    /// Cuts the segment at `position` (a record boundary holding `next_offset`) and erases what
    /// follows, so no stale record past the cut can ever be read or recovered.
    pub(crate) fn cut(&mut self, position: usize, next_offset: u64) -> std::io::Result<()> {
        assert!(position <= self.map.len() && position % record::RECORD_ALIGN == 0);
        assert_eq!(
            Arc::strong_count(&self.readers),
            1,
            "cut under a live reader"
        );
        // SAFETY: no reader holds a slice (checked above) and we are the only writer.
        unsafe { self.map.zero(position, self.map.len() - position)? };
        self.len = position;
        self.next_offset = next_offset;
        self.index.truncate_at(position);
        if next_offset == self.base_offset {
            self.first_timestamp_ms = None;
            self.max_timestamp_ms = i64::MIN;
        } else if let Some(h) = last_header_before(self.written(), &self.index, position) {
            self.max_timestamp_ms = h;
        }
        Ok(())
    }
}

/// Timestamp of the last record before `end`, walking from the last index entry.
fn last_header_before(data: &[u8], index: &SegmentIndex, end: usize) -> Option<i64> {
    let mut position = index.entries().last().map_or(0, |e| e.position as usize);
    let mut ts = None;
    while position + HEADER_LEN <= end {
        let h = record::decode_header(data, position, record::ARCHIVE_LEN_MAX).ok()?;
        ts = Some(h.timestamp_ms);
        position += h.record_len();
    }
    ts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_base_offset_when_named_should_roundtrip_20_digits() {
        assert_eq!(file_name(42), "00000000000000000042.log");
        assert_eq!(parse_file_name(&file_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_file_name("42.log"), None);
        assert_eq!(parse_file_name("0000000000000000004x.log"), None);
        assert_eq!(index_name(7), "00000000000000000007.index");
    }
}
