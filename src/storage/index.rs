//! Sparse segment index: offset → position and timestamp → offset, in one array.
//!
//! Every `index_interval_bytes` of appended records, the segment records an [`IndexEntry`] for the
//! record that starts there: its offset (relative to the segment's base), its byte position and its
//! append timestamp. Offsets increase strictly and append timestamps never decrease (the log
//! enforces both), so the same array is binary-searched by offset (the offset index) and by time
//! (the time index), and either lookup then scans at most about one interval of headers.
//!
//! The index lives in memory while the segment is active and is written to `<base>.index` as a
//! checkpoint once the bytes it describes are durable. It is always rebuildable from the segment, so
//! only the log bytes must be durable; a checkpoint that fails its checks is simply rebuilt.
//!
//! This module owns the entry layout and the checkpoint file format; it does not read segments.

/// One sparse index entry. On disk: 16 bytes, little-endian, in this field order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Offset of the record, minus the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of the record in the segment.
    pub position: u32,
    /// Append timestamp of the record, ms since the Unix epoch.
    pub timestamp_ms: i64,
}

/// Size of one entry in a checkpoint file.
pub const ENTRY_LEN: usize = 16;
/// Checkpoint file magic, "LVIX".
pub const INDEX_MAGIC: [u8; 4] = *b"LVIX";
/// Checkpoint file format version.
pub const INDEX_VERSION: u32 = 1;
/// Checkpoint header length (see [`Checkpoint::encode`]).
pub const CHECKPOINT_HEADER_LEN: usize = 48;

const _: () = assert!(CHECKPOINT_HEADER_LEN % ENTRY_LEN == 0);

/// The in-memory sparse index of one segment.
#[derive(Debug, Clone, Default)]
pub struct SegmentIndex {
    entries: Vec<IndexEntry>,
    interval_bytes: usize,
    bytes_since_entry: usize,
}

impl SegmentIndex {
    /// An empty index that adds an entry every `interval_bytes` of records.
    pub fn new(interval_bytes: usize) -> Self {
        assert!(interval_bytes > 0);
        Self {
            entries: Vec::new(),
            interval_bytes,
            bytes_since_entry: 0,
        }
    }

    /// An index restored from a checkpoint, continuing at the segment's end.
    pub fn restore(interval_bytes: usize, entries: Vec<IndexEntry>, data_len: usize) -> Self {
        let bytes_since_entry = entries
            .last()
            .map_or(data_len, |e| data_len - e.position as usize);
        Self {
            entries,
            interval_bytes,
            bytes_since_entry,
        }
    }

    /// Notes a record appended at `position`; adds an entry when an interval has passed.
    #[inline]
    pub fn on_append(
        &mut self,
        relative_offset: u32,
        position: u32,
        timestamp_ms: i64,
        record_len: usize,
    ) {
        if self.entries.is_empty() || self.bytes_since_entry >= self.interval_bytes {
            if let Some(last) = self.entries.last() {
                // Paired with the lookups' binary searches, which rely on both orders.
                debug_assert!(last.relative_offset < relative_offset);
                debug_assert!(last.position < position);
                debug_assert!(last.timestamp_ms <= timestamp_ms);
            }
            self.entries.push(IndexEntry {
                relative_offset,
                position,
                timestamp_ms,
            });
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += record_len;
    }

    /// The entries, in offset order.
    pub fn entries(&self) -> &[IndexEntry] {
        &self.entries
    }

    /// The last entry at or before `relative_offset`: where a scan for it starts.
    pub fn floor_offset(&self, relative_offset: u32) -> Option<IndexEntry> {
        let i = self
            .entries
            .partition_point(|e| e.relative_offset <= relative_offset);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    /// The last entry whose timestamp is before `timestamp_ms`: a scan for the first record at or
    /// after that time starts there (or at the segment start when `None`).
    pub fn floor_time(&self, timestamp_ms: i64) -> Option<IndexEntry> {
        let i = self
            .entries
            .partition_point(|e| e.timestamp_ms < timestamp_ms);
        i.checked_sub(1).map(|i| self.entries[i])
    }

    /// Drops entries at or past `position` (after a truncation).
    pub fn truncate_at(&mut self, position: usize) {
        let keep = self
            .entries
            .partition_point(|e| (e.position as usize) < position);
        self.entries.truncate(keep);
        self.bytes_since_entry = self
            .entries
            .last()
            .map_or(position, |e| position - e.position as usize);
    }
}

/// A segment checkpoint: the index plus what the segment held when its bytes were known durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Base offset of the segment.
    pub base_offset: u64,
    /// The next offset after the last record covered.
    pub next_offset: u64,
    /// Bytes of whole records covered.
    pub data_len: u64,
    /// Largest append timestamp covered.
    pub max_timestamp_ms: i64,
    /// The index entries.
    pub entries: Vec<IndexEntry>,
}

/// Why a checkpoint file was not used (it is then rebuilt from the segment).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // Variant fields are named by the variant's message.
pub enum CheckpointError {
    /// Too short, wrong magic or version, or a length that does not add up.
    #[error("index checkpoint is malformed: {0}")]
    Malformed(&'static str),
    /// The checksum does not match.
    #[error("index checkpoint crc {stored:#010x} != computed {computed:#010x}")]
    Crc { stored: u32, computed: u32 },
}

impl Checkpoint {
    /// Encodes the checkpoint file:
    ///
    /// ```text
    ///  0  4  magic "LVIX"
    ///  4  4  version (1)
    ///  8  8  base_offset
    /// 16  8  next_offset
    /// 24  8  data_len
    /// 32  8  max_timestamp_ms
    /// 40  4  entry count
    /// 44  4  CRC-32 of bytes 0..44 and of every entry
    /// 48 16n entries: relative_offset u32, position u32, timestamp_ms i64
    /// ```
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CHECKPOINT_HEADER_LEN + self.entries.len() * ENTRY_LEN);
        out.extend_from_slice(&INDEX_MAGIC);
        out.extend_from_slice(&INDEX_VERSION.to_le_bytes());
        out.extend_from_slice(&self.base_offset.to_le_bytes());
        out.extend_from_slice(&self.next_offset.to_le_bytes());
        out.extend_from_slice(&self.data_len.to_le_bytes());
        out.extend_from_slice(&self.max_timestamp_ms.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        for e in &self.entries {
            out.extend_from_slice(&e.relative_offset.to_le_bytes());
            out.extend_from_slice(&e.position.to_le_bytes());
            out.extend_from_slice(&e.timestamp_ms.to_le_bytes());
        }
        let crc = checkpoint_crc(&out);
        out[44..48].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and checks a checkpoint file: magic, version, lengths, CRC and entry order.
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
        use CheckpointError::Malformed;
        if bytes.len() < CHECKPOINT_HEADER_LEN {
            return Err(Malformed("shorter than its header"));
        }
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        if bytes[0..4] != INDEX_MAGIC {
            return Err(Malformed("bad magic"));
        }
        if u32_at(4) != INDEX_VERSION {
            return Err(Malformed("unknown version"));
        }
        let count = u32_at(40) as usize;
        if bytes.len() != CHECKPOINT_HEADER_LEN + count * ENTRY_LEN {
            return Err(Malformed("length does not match the entry count"));
        }
        let stored = u32_at(44);
        let computed = checkpoint_crc(bytes);
        if stored != computed {
            return Err(CheckpointError::Crc { stored, computed });
        }
        let entries: Vec<IndexEntry> = bytes[CHECKPOINT_HEADER_LEN..]
            .chunks_exact(ENTRY_LEN)
            .map(|c| IndexEntry {
                relative_offset: u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                position: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
                timestamp_ms: i64::from_le_bytes([
                    c[8], c[9], c[10], c[11], c[12], c[13], c[14], c[15],
                ]),
            })
            .collect();
        let ordered = entries.windows(2).all(|w| {
            w[0].relative_offset < w[1].relative_offset
                && w[0].position < w[1].position
                && w[0].timestamp_ms <= w[1].timestamp_ms
        });
        if !ordered {
            return Err(Malformed("entries out of order"));
        }
        let cp = Checkpoint {
            base_offset: u64_at(8),
            next_offset: u64_at(16),
            data_len: u64_at(24),
            max_timestamp_ms: u64_at(32) as i64,
            entries,
        };
        if cp.next_offset < cp.base_offset {
            return Err(Malformed("next offset before base offset"));
        }
        if cp
            .entries
            .last()
            .is_some_and(|e| e.position as u64 >= cp.data_len)
        {
            return Err(Malformed("entry past the covered data"));
        }
        Ok(cp)
    }
}

fn checkpoint_crc(bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[..44]);
    h.update(&bytes[CHECKPOINT_HEADER_LEN..]);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_of(n: u32) -> SegmentIndex {
        let mut ix = SegmentIndex::new(100);
        for i in 0..n {
            ix.on_append(i, i * 64, 1000 + i as i64 / 3, 64);
        }
        ix
    }

    #[test]
    fn given_records_when_indexed_should_keep_one_entry_per_interval() {
        let ix = index_of(100);
        // An entry at the first record, then one each time 100 bytes have passed (every 2nd record).
        assert_eq!(ix.entries().len(), 50);
        assert_eq!(ix.floor_offset(0).unwrap().position, 0);
        assert_eq!(ix.floor_offset(7).unwrap().relative_offset, 6);
        assert_eq!(ix.floor_time(1000), None);
        let e = ix.floor_time(1010).unwrap();
        assert!(e.timestamp_ms < 1010);
    }

    #[test]
    fn given_checkpoint_when_roundtripped_should_match_and_detect_corruption() {
        let ix = index_of(40);
        let cp = Checkpoint {
            base_offset: 500,
            next_offset: 540,
            data_len: 40 * 64,
            max_timestamp_ms: 1013,
            entries: ix.entries().to_vec(),
        };
        let bytes = cp.encode();
        assert_eq!(Checkpoint::decode(&bytes).unwrap(), cp);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(Checkpoint::decode(&bad).is_err(), "flip at {i} accepted");
        }
        assert!(Checkpoint::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn given_truncation_when_applied_should_drop_entries_past_position() {
        let mut ix = index_of(40);
        ix.truncate_at(640);
        assert!(ix.entries().iter().all(|e| e.position < 640));
        assert_eq!(ix.entries().last().unwrap().position, 512);
    }
}
