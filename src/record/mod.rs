//! Records: the unit Levee stores and serves, byte for byte the same on the wire and on disk.
//!
//! A record is a fixed 32-byte [`RecordHeader`] followed by one rkyv archive of a [`Message`], padded
//! with zeros to a multiple of [`RECORD_ALIGN`] bytes:
//!
//! ```text
//! offset  size  field          written by  meaning
//!      0     4  archive_crc    producer    CRC-32 (IEEE, crc32fast) of the archive bytes
//!      4     4  archive_len    producer    length of the archive, padding excluded
//!      8     8  offset         broker      the record's offset in its partition
//!     16     8  timestamp_ms   broker      append time, ms since the Unix epoch
//!     24     1  version        both        RECORD_VERSION (1)
//!     25     1  flags          producer    bit 0: the value is null (FLAG_NULL_VALUE); others 0
//!     26     2  reserved       -           0
//!     28     4  header_crc     broker      CRC-32 of bytes 0..28
//!     32     n  archive        producer    rkyv 0.8.18 archive of `Message`, root at its end
//!   32+n     p  padding        producer    zeros, so that 32 + n + p is a multiple of 16
//! ```
//! All integers are little-endian.
//!
//! Why this shape:
//! - The producer builds the archive and its CRC once; the broker verifies the CRC and stores the
//!   bytes exactly as received. It never re-serializes a record, so end-to-end integrity holds from
//!   the producer's buffer to the consumer's.
//! - What the broker assigns (offset, append time) lives in the header, outside the archive, and is
//!   covered by the header CRC, which also covers `archive_crc`: a reader that checks both CRCs has
//!   checked every byte.
//! - Records start on 16-byte boundaries, so the archive (which rkyv wants 8-byte aligned) can be
//!   read in place from a memory-mapped segment, and any run of whole records can be sliced out of
//!   a segment and sent as it is: each record says its own length.
//!
//! This module owns the record layout, its checks and its golden bytes. It must not import storage,
//! sockets or any runtime: the client and the fuzzers build it alone.

use std::fmt;

use rkyv::{rancor, Archive, Deserialize, Serialize};

/// Size of [`RecordHeader`] on disk and on the wire.
pub const HEADER_LEN: usize = 32;
/// Every record starts and ends on a multiple of this many bytes.
pub const RECORD_ALIGN: usize = 16;
/// The header `version` byte this code writes and accepts.
pub const RECORD_VERSION: u8 = 1;
/// Header flag: the message's value is null, not empty (a Kafka producer's null value, a
/// tombstone); its archived value is empty. The only flag defined: a record with any other flag
/// bit set is refused.
pub const FLAG_NULL_VALUE: u8 = 1;
const FLAGS_KNOWN: u8 = FLAG_NULL_VALUE;
/// Hard upper bound on one archive, whatever the configuration says: lengths are `u32` on disk and
/// every position inside a segment must fit in `u32` too.
pub const ARCHIVE_LEN_MAX: usize = 1 << 30;

const _: () = assert!(HEADER_LEN % RECORD_ALIGN == 0);
const _: () = assert!(RECORD_ALIGN.is_power_of_two());
const _: () = assert!(ARCHIVE_LEN_MAX + HEADER_LEN + RECORD_ALIGN <= u32::MAX as usize);

// Byte positions of the header fields; docs/storage.md draws the same table.
const AT_ARCHIVE_CRC: usize = 0;
const AT_ARCHIVE_LEN: usize = 4;
const AT_OFFSET: usize = 8;
const AT_TIMESTAMP: usize = 16;
const AT_VERSION: usize = 24;
const AT_FLAGS: usize = 25;
const AT_RESERVED: usize = 26;
const AT_HEADER_CRC: usize = 28;
const _: () = assert!(AT_HEADER_CRC + 4 == HEADER_LEN);

/// One key/value header attached to a message (like Kafka record headers).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name, UTF-8.
    pub key: String,
    /// Header value, opaque bytes.
    pub value: Vec<u8>,
}

/// What a producer sends: the content of a record, archived with rkyv.
///
/// Field order is part of the on-disk format (see the golden-bytes test); add fields only with a
/// new [`RECORD_VERSION`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    /// The producer's timestamp (ms since the Unix epoch), kept as the producer set it.
    pub timestamp_ms: i64,
    /// Idempotent producer id; 0 when the producer is not idempotent.
    pub producer_id: u64,
    /// Per-partition sequence number of an idempotent producer; 0 otherwise.
    pub sequence: u64,
    /// Partitioning key; `None` is distinct from an empty key.
    pub key: Option<Vec<u8>>,
    /// The payload.
    pub value: Vec<u8>,
    /// Application headers.
    pub headers: Vec<Header>,
}

/// Why a run of bytes is not a valid record. Every variant says where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // Variant fields are named by the variant's message.
pub enum RecordError {
    /// Fewer bytes remain than the header or the header's length needs.
    #[error("record at byte {position} is truncated: needs {needed} bytes, {available} available")]
    Truncated {
        position: usize,
        needed: usize,
        available: usize,
    },
    /// The position is not a multiple of [`RECORD_ALIGN`].
    #[error("record at byte {position} is not {RECORD_ALIGN}-byte aligned")]
    Misaligned { position: usize },
    /// Unknown header version or non-zero reserved bytes.
    #[error("record at byte {position} has unsupported version {version} or reserved bits set")]
    BadVersion { position: usize, version: u8 },
    /// The archive length is zero, or larger than the configured or absolute maximum.
    #[error("record at byte {position} claims an archive of {len} bytes (limit {limit})")]
    BadLength {
        position: usize,
        len: usize,
        limit: usize,
    },
    /// The header CRC does not match the header bytes.
    #[error("record at byte {position}: header crc {stored:#010x} != computed {computed:#010x}")]
    HeaderCrc {
        position: usize,
        stored: u32,
        computed: u32,
    },
    /// The archive CRC does not match the archive bytes.
    #[error("record at byte {position}: archive crc {stored:#010x} != computed {computed:#010x}")]
    ArchiveCrc {
        position: usize,
        stored: u32,
        computed: u32,
    },
    /// The padding after the archive is not zero.
    #[error("record at byte {position} has non-zero padding")]
    BadPadding { position: usize },
    /// The archive's CRC is right but its bytes are not a valid `Message` archive.
    #[error("record at byte {position}: archive is not a valid message: {reason}")]
    BadArchive { position: usize, reason: String },
    /// A valid record that is not the next one expected: offsets in a log are consecutive.
    #[error("record at byte {position} has offset {found}, expected {expected}")]
    Sequence {
        position: usize,
        expected: u64,
        found: u64,
    },
    /// A valid record whose append time is before its predecessor's: append times never decrease.
    #[error("record at byte {position} has timestamp {found} before {previous}")]
    TimeRegression {
        position: usize,
        previous: i64,
        found: i64,
    },
    /// The message could not be archived (only on the producer side).
    #[error("message could not be archived: {reason}")]
    Encode { reason: String },
}

/// Rounds `len` up to the next multiple of [`RECORD_ALIGN`].
#[inline]
pub const fn padded(len: usize) -> usize {
    (len + RECORD_ALIGN - 1) & !(RECORD_ALIGN - 1)
}

/// Total bytes a record with an archive of `archive_len` bytes occupies.
#[inline]
pub const fn record_len(archive_len: usize) -> usize {
    HEADER_LEN + padded(archive_len)
}

#[inline]
fn read_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

#[inline]
fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// CRC-32 of a record's archive bytes, as the producer computes it.
#[inline]
pub fn archive_crc(archive: &[u8]) -> u32 {
    crc32fast::hash(archive)
}

/// The decoded fixed header of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// CRC-32 of the archive, set by the producer.
    pub archive_crc: u32,
    /// Length of the archive in bytes, padding excluded.
    pub archive_len: u32,
    /// Offset assigned by the broker.
    pub offset: u64,
    /// Append time assigned by the broker, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// Flag bits: [`FLAG_NULL_VALUE`] or none.
    pub flags: u8,
    /// CRC-32 of the first 28 header bytes.
    pub header_crc: u32,
}

impl RecordHeader {
    /// Whether the value is null rather than empty ([`FLAG_NULL_VALUE`]).
    #[inline]
    pub fn value_is_null(&self) -> bool {
        self.flags & FLAG_NULL_VALUE != 0
    }

    /// Total length of the record this header starts, padding included.
    #[inline]
    pub fn record_len(&self) -> usize {
        record_len(self.archive_len as usize)
    }
}

/// Writes the broker-assigned fields of the header at the start of `record` and seals the header
/// with its CRC. `record` must start with a header whose producer fields (archive CRC and length,
/// flags) are already in place.
#[inline]
pub fn stamp_header(record: &mut [u8], offset: u64, timestamp_ms: i64) {
    assert!(record.len() >= HEADER_LEN);
    record[AT_OFFSET..AT_OFFSET + 8].copy_from_slice(&offset.to_le_bytes());
    record[AT_TIMESTAMP..AT_TIMESTAMP + 8].copy_from_slice(&timestamp_ms.to_le_bytes());
    record[AT_VERSION] = RECORD_VERSION;
    record[AT_FLAGS] &= FLAGS_KNOWN;
    record[AT_RESERVED..AT_RESERVED + 2].copy_from_slice(&[0, 0]);
    let crc = crc32fast::hash(&record[..AT_HEADER_CRC]);
    record[AT_HEADER_CRC..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// True when the header bytes at `position` are all zero: the clean end of a pre-allocated segment,
/// as opposed to a torn or corrupt record.
#[inline]
pub fn is_zero_header(buf: &[u8], position: usize) -> bool {
    match buf.get(position..position.saturating_add(HEADER_LEN)) {
        Some(h) => h.iter().all(|&b| b == 0),
        None => false,
    }
}

/// The 32 header bytes at `position`, once alignment is checked and they are all there.
fn header_bytes(buf: &[u8], position: usize) -> Result<&[u8], RecordError> {
    if position % RECORD_ALIGN != 0 {
        return Err(RecordError::Misaligned { position });
    }
    let available = buf.len().saturating_sub(position);
    if available < HEADER_LEN {
        return Err(RecordError::Truncated {
            position,
            needed: HEADER_LEN,
            available,
        });
    }
    Ok(&buf[position..position + HEADER_LEN])
}

/// Checks the version, flags and reserved bytes of header `h`, and its archive length against the
/// limits and the bytes available. Returns `(archive_len, record_len)`.
fn check_shape(
    buf: &[u8],
    position: usize,
    h: &[u8],
    archive_len_max: usize,
) -> Result<(usize, usize), RecordError> {
    let version = h[AT_VERSION];
    let flags_unknown = h[AT_FLAGS] & !FLAGS_KNOWN != 0;
    if version != RECORD_VERSION || flags_unknown || h[AT_RESERVED..AT_RESERVED + 2] != [0, 0] {
        return Err(RecordError::BadVersion { position, version });
    }
    let len = read_u32(h, AT_ARCHIVE_LEN) as usize;
    let limit = archive_len_max.min(ARCHIVE_LEN_MAX);
    if len == 0 || len > limit {
        return Err(RecordError::BadLength {
            position,
            len,
            limit,
        });
    }
    let total = record_len(len);
    let available = buf.len() - position;
    if available < total {
        return Err(RecordError::Truncated {
            position,
            needed: total,
            available,
        });
    }
    Ok((len, total))
}

/// Checks and decodes the header at `position`: alignment, header CRC, version and length. It does
/// not look at the archive; see [`decode`] for the full check.
pub fn decode_header(
    buf: &[u8],
    position: usize,
    archive_len_max: usize,
) -> Result<RecordHeader, RecordError> {
    let h = header_bytes(buf, position)?;
    let stored = read_u32(h, AT_HEADER_CRC);
    let computed = crc32fast::hash(&h[..AT_HEADER_CRC]);
    if stored != computed {
        return Err(RecordError::HeaderCrc {
            position,
            stored,
            computed,
        });
    }
    let (len, _) = check_shape(buf, position, h, archive_len_max)?;
    Ok(RecordHeader {
        archive_crc: read_u32(h, AT_ARCHIVE_CRC),
        archive_len: len as u32,
        offset: read_u64(h, AT_OFFSET),
        timestamp_ms: read_u64(h, AT_TIMESTAMP) as i64,
        flags: h[AT_FLAGS],
        header_crc: stored,
    })
}

/// A checked record borrowed from a buffer (a segment mapping or a network buffer).
#[derive(Clone, Copy)]
pub struct RecordRef<'a> {
    /// The decoded header.
    pub header: RecordHeader,
    /// The archive bytes, padding excluded.
    pub archive: &'a [u8],
    /// The whole record, header and padding included.
    pub bytes: &'a [u8],
}

impl fmt::Debug for RecordRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordRef")
            .field("offset", &self.header.offset)
            .field("timestamp_ms", &self.header.timestamp_ms)
            .field("archive_len", &self.header.archive_len)
            .finish()
    }
}

impl<'a> RecordRef<'a> {
    /// The record's offset.
    #[inline]
    pub fn offset(&self) -> u64 {
        self.header.offset
    }

    /// Validates the archive and returns the message, read in place.
    ///
    /// The archive must sit at an 8-byte aligned address; it does whenever the record was read from a
    /// segment or from a buffer that starts 16-byte aligned.
    pub fn message(&self) -> Result<&'a ArchivedMessage, RecordError> {
        check_archive(self.archive, 0)
    }
}

/// Validates that `archive` is a well-formed `Message` archive (bounds, pointers, UTF-8).
///
/// A producer's CRC only proves the bytes arrived as sent; this proves they can be read in place
/// without undefined behaviour, which is what lets consumers trust what the broker serves.
pub fn check_archive(archive: &[u8], position: usize) -> Result<&ArchivedMessage, RecordError> {
    if (archive.as_ptr() as usize) % 8 != 0 {
        return Err(RecordError::Misaligned { position });
    }
    rkyv::access::<ArchivedMessage, rancor::Error>(archive).map_err(|e| RecordError::BadArchive {
        position,
        reason: e.to_string(),
    })
}

/// How much of a record [`decode`] verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Header CRC, lengths, archive CRC and zero padding: every byte is covered. The read path.
    Crc,
    /// All of `Crc`, plus a structural validation of the archive. The write path: what the broker
    /// accepts it must be able to serve to a reader that accesses the archive in place.
    Full,
}

/// Checks and decodes the whole record at `position`.
pub fn decode(
    buf: &[u8],
    position: usize,
    archive_len_max: usize,
    check: Check,
) -> Result<RecordRef<'_>, RecordError> {
    let header = decode_header(buf, position, archive_len_max)?;
    let start = position + HEADER_LEN;
    let end = start + header.archive_len as usize;
    let total_end = position + header.record_len();
    let archive = &buf[start..end];
    let computed = crc32fast::hash(archive);
    if computed != header.archive_crc {
        return Err(RecordError::ArchiveCrc {
            position,
            stored: header.archive_crc,
            computed,
        });
    }
    if buf[end..total_end].iter().any(|&b| b != 0) {
        return Err(RecordError::BadPadding { position });
    }
    if check == Check::Full {
        check_archive(archive, position)?;
    }
    Ok(RecordRef {
        header,
        archive,
        bytes: &buf[position..total_end],
    })
}

/// Checks the producer-side part of a record: the version byte, the archive length, the archive
/// CRC, the padding and the archive's structure. The header's broker fields (offset, timestamp,
/// header CRC) are ignored: the broker overwrites them with [`stamp_header`]. A producer claiming
/// another format version or setting reserved bits speaks a format this broker does not know: it is
/// refused rather than restamped. Returns the record's total length.
pub fn check_produced(
    buf: &[u8],
    position: usize,
    archive_len_max: usize,
) -> Result<usize, RecordError> {
    produced_message(buf, position, archive_len_max).map(|(_, total)| total)
}

/// Like [`check_produced`], and returns the record's message too. The broker reads what a
/// producer sent with this, never with the read path's [`decode`]: a producer's header CRC and
/// broker fields are not yet set.
pub fn produced_message(
    buf: &[u8],
    position: usize,
    archive_len_max: usize,
) -> Result<(&ArchivedMessage, usize), RecordError> {
    let h = header_bytes(buf, position)?;
    let (len, total) = check_shape(buf, position, h, archive_len_max)?;
    let stored = read_u32(h, AT_ARCHIVE_CRC);
    let start = position + HEADER_LEN;
    let archive = &buf[start..start + len];
    let computed = crc32fast::hash(archive);
    if stored != computed {
        return Err(RecordError::ArchiveCrc {
            position,
            stored,
            computed,
        });
    }
    if buf[start + len..position + total].iter().any(|&b| b != 0) {
        return Err(RecordError::BadPadding { position });
    }
    Ok((check_archive(archive, position)?, total))
}

/// Appends one record for `message` to `out`, as a producer sends it: archive, archive CRC and
/// padding in place, broker fields zero (the header CRC is filled in so the record also reads back
/// as a valid offset-0 record, which keeps tests and tools simple).
///
/// `out.len()` must be a multiple of [`RECORD_ALIGN`] so that the archive's internal alignment holds
/// once the record is placed on a 16-byte boundary. The buffer is reused across calls, so a steady
/// producer allocates nothing.
///
/// # Examples
/// ```
/// use levee::record::{self, Message, Check};
///
/// let mut buf = Vec::new();
/// let msg = Message { value: b"hello".to_vec(), ..Message::default() };
/// record::encode(&msg, &mut buf).unwrap();
/// assert_eq!(buf.len() % record::RECORD_ALIGN, 0);
/// ```
pub fn encode(message: &Message, out: &mut Vec<u8>) -> Result<usize, RecordError> {
    assert!(
        out.len() % RECORD_ALIGN == 0,
        "record buffer must stay aligned"
    );
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    let taken = std::mem::take(out);
    let mut buf =
        rkyv::api::high::to_bytes_in::<_, rancor::Error>(message, taken).map_err(|e| {
            RecordError::Encode {
                reason: e.to_string(),
            }
        })?;
    let archive_len = buf.len() - start - HEADER_LEN;
    if archive_len == 0 || archive_len > ARCHIVE_LEN_MAX {
        buf.truncate(start);
        *out = buf;
        return Err(RecordError::Encode {
            reason: format!("archive of {archive_len} bytes is out of range"),
        });
    }
    buf.resize(start + record_len(archive_len), 0);
    let crc = crc32fast::hash(&buf[start + HEADER_LEN..start + HEADER_LEN + archive_len]);
    let h = &mut buf[start..start + HEADER_LEN];
    h[AT_ARCHIVE_CRC..AT_ARCHIVE_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    h[AT_ARCHIVE_LEN..AT_ARCHIVE_LEN + 4].copy_from_slice(&(archive_len as u32).to_le_bytes());
    stamp_header(&mut buf[start..], 0, 0);
    *out = buf;
    Ok(out.len() - start)
}

/// Appends one record for `message` as [`encode`] does, with a null value: `message.value` must
/// be empty, and the header says null ([`FLAG_NULL_VALUE`]).
pub fn encode_null_value(message: &Message, out: &mut Vec<u8>) -> Result<usize, RecordError> {
    if !message.value.is_empty() {
        return Err(RecordError::Encode {
            reason: "a null value must be archived empty".into(),
        });
    }
    let start = out.len();
    let n = encode(message, out)?;
    out[start + AT_FLAGS] |= FLAG_NULL_VALUE;
    stamp_header(&mut out[start..], 0, 0);
    Ok(n)
}

/// [`encode`], or [`encode_null_value`] when `value_is_null`: a copy of a record (a retry, a dead
/// letter, a delayed delivery) keeps its original's null value.
pub fn encode_like(
    message: &Message,
    value_is_null: bool,
    out: &mut Vec<u8>,
) -> Result<usize, RecordError> {
    if value_is_null {
        encode_null_value(message, out)
    } else {
        encode(message, out)
    }
}

/// Whether the record starting `record` (its shape already checked) says its value is null.
#[inline]
pub fn flags_value_is_null(record: &[u8]) -> bool {
    record
        .get(AT_FLAGS)
        .is_some_and(|f| f & FLAG_NULL_VALUE != 0)
}

/// Numbers the records of a producer's run for an idempotent producer: record `i` gets
/// `producer_id` and sequence `first_sequence + i`, written in place into each archive (rkyv
/// puts the root object at the end of an archive, so the two fields sit at fixed distances from
/// it), and the archive and header CRCs are recomputed. Returns the number of records.
///
/// The producer calls this when it first sends a batch, and again with a new id when it has to
/// start a new sequence, so a batch never needs encoding twice.
pub fn set_producer(
    run: &mut [u8],
    producer_id: u64,
    first_sequence: u64,
    archive_len_max: usize,
) -> Result<u64, RecordError> {
    let root = std::mem::size_of::<ArchivedMessage>();
    let at_id = std::mem::offset_of!(ArchivedMessage, producer_id);
    let at_seq = std::mem::offset_of!(ArchivedMessage, sequence);
    let mut position = 0;
    let mut count = 0u64;
    while position < run.len() {
        let total = check_produced(run, position, archive_len_max)?;
        let start = position + HEADER_LEN;
        let len = read_u32(&run[position..], AT_ARCHIVE_LEN) as usize;
        if len < root {
            return Err(RecordError::BadLength {
                position,
                len,
                limit: archive_len_max,
            });
        }
        let base = start + len - root;
        let sequence = first_sequence + count;
        run[base + at_id..base + at_id + 8].copy_from_slice(&producer_id.to_le_bytes());
        run[base + at_seq..base + at_seq + 8].copy_from_slice(&sequence.to_le_bytes());
        let crc = crc32fast::hash(&run[start..start + len]);
        run[position + AT_ARCHIVE_CRC..position + AT_ARCHIVE_CRC + 4]
            .copy_from_slice(&crc.to_le_bytes());
        stamp_header(&mut run[position..], 0, 0);
        position += total;
        count += 1;
    }
    Ok(count)
}

/// Iterates over a run of whole records (a fetched slice, a segment prefix), checking each with
/// [`Check::Crc`]. Stops at the first error and yields it; a zero header ends the run cleanly.
pub struct Records<'a> {
    buf: &'a [u8],
    position: usize,
    archive_len_max: usize,
    done: bool,
}

impl<'a> Records<'a> {
    /// Iterates over `buf`, which must start on a record boundary.
    pub fn new(buf: &'a [u8], archive_len_max: usize) -> Self {
        Self {
            buf,
            position: 0,
            archive_len_max,
            done: false,
        }
    }

    /// Byte position of the next record.
    pub fn position(&self) -> usize {
        self.position
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<RecordRef<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.position >= self.buf.len() || is_zero_header(self.buf, self.position) {
            return None;
        }
        match decode(self.buf, self.position, self.archive_len_max, Check::Crc) {
            Ok(r) => {
                self.position += r.bytes.len();
                Some(Ok(r))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn given_encoded_records_when_numbered_should_carry_id_and_sequences_and_stay_valid() {
        let mut buf = Vec::new();
        for i in 0..3u8 {
            let m = Message {
                value: vec![i; 10 + i as usize],
                key: Some(vec![i]),
                ..Message::default()
            };
            encode(&m, &mut buf).unwrap();
        }
        let mut run = rkyv::util::AlignedVec::<16>::new();
        run.extend_from_slice(&buf);
        assert_eq!(set_producer(&mut run, 77, 40, ARCHIVE_LEN_MAX).unwrap(), 3);
        let mut n = 0u8;
        for r in Records::new(&run, ARCHIVE_LEN_MAX) {
            let r = r.unwrap();
            let m = r.message().unwrap();
            assert_eq!(m.producer_id.to_native(), 77);
            assert_eq!(m.sequence.to_native(), 40 + n as u64);
            assert_eq!(m.value.as_slice(), &vec![n; 10 + n as usize][..]);
            n += 1;
        }
        assert_eq!(n, 3);
        check_produced(&run, 0, ARCHIVE_LEN_MAX).unwrap();
    }
    use super::*;
    use proptest::prelude::*;

    /// An aligned copy, as a segment mapping or an aligned network buffer would hold it.
    fn aligned(bytes: &[u8]) -> rkyv::util::AlignedVec<16> {
        let mut v = rkyv::util::AlignedVec::<16>::new();
        v.extend_from_slice(bytes);
        v
    }

    fn sample() -> Message {
        Message {
            timestamp_ms: 1_700_000_000_123,
            producer_id: 7,
            sequence: 42,
            key: Some(b"user-1".to_vec()),
            value: b"registered".to_vec(),
            headers: vec![Header {
                key: "trace".into(),
                value: b"abc".to_vec(),
            }],
        }
    }

    /// The on-disk layout of a record must never change by accident: this is the exact byte image
    /// of `sample()` stamped with offset 5 at time 1_700_000_000_999. If this test fails, the record
    /// format changed; that needs a new RECORD_VERSION and a migration, not a new golden value.
    #[test]
    fn given_sample_message_when_encoded_should_match_golden_bytes() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf).unwrap();
        stamp_header(&mut buf, 5, 1_700_000_000_999);
        let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, GOLDEN_HEX, "record layout changed");
        let b = aligned(&buf);
        let r = decode(&b, 0, 1 << 20, Check::Full).unwrap();
        assert_eq!(r.offset(), 5);
        assert_eq!(r.header.timestamp_ms, 1_700_000_000_999);
        let m = r.message().unwrap();
        assert_eq!(m.value.as_slice(), b"registered");
        assert_eq!(m.sequence.to_native(), 42);
    }

    const GOLDEN_HEX: &str = include_str!("golden_record.hex");

    #[test]
    fn given_zero_bytes_when_decoding_should_report_clean_end_not_record() {
        let b = aligned(&[0u8; 64]);
        assert!(is_zero_header(&b, 0));
        assert!(Records::new(&b, 1 << 20).next().is_none());
        assert!(matches!(
            decode(&b, 0, 1 << 20, Check::Crc),
            Err(RecordError::HeaderCrc { .. })
        ));
    }

    #[test]
    fn given_flipped_archive_byte_when_decoding_should_fail_archive_crc() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf).unwrap();
        buf[HEADER_LEN + 3] ^= 0x40;
        let b = aligned(&buf);
        assert!(matches!(
            decode(&b, 0, 1 << 20, Check::Crc),
            Err(RecordError::ArchiveCrc { position: 0, .. })
        ));
        assert!(matches!(
            check_produced(&b, 0, 1 << 20),
            Err(RecordError::ArchiveCrc { .. })
        ));
    }

    #[test]
    fn given_a_null_value_when_encoded_and_stamped_should_keep_its_flag_and_refuse_unknown_ones() {
        let mut buf = Vec::new();
        let tombstone = Message {
            key: Some(b"k".to_vec()),
            ..Message::default()
        };
        encode_null_value(&tombstone, &mut buf).unwrap();
        stamp_header(&mut buf, 7, 9);
        let b = aligned(&buf);
        let r = decode(&b, 0, 1 << 20, Check::Full).unwrap();
        assert!(r.header.value_is_null());
        assert_eq!(r.offset(), 7);
        assert!(encode_null_value(&sample(), &mut Vec::new()).is_err());
        // A flag this version does not define is refused, as a future format would be.
        buf[AT_FLAGS] |= 2;
        let crc = crc32fast::hash(&buf[..AT_HEADER_CRC]);
        buf[AT_HEADER_CRC..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        let b = aligned(&buf);
        assert!(matches!(
            decode(&b, 0, 1 << 20, Check::Crc),
            Err(RecordError::BadVersion { .. })
        ));
    }

    #[test]
    fn given_valid_crc_over_garbage_archive_when_checked_full_should_reject() {
        // A hostile producer can compute a correct CRC over bytes that are not an archive.
        let garbage = [0xffu8; 48];
        let mut buf = vec![0u8; HEADER_LEN];
        buf.extend_from_slice(&garbage);
        buf[0..4].copy_from_slice(&archive_crc(&garbage).to_le_bytes());
        buf[4..8].copy_from_slice(&(garbage.len() as u32).to_le_bytes());
        stamp_header(&mut buf, 0, 0);
        let b = aligned(&buf);
        assert!(decode(&b, 0, 1 << 20, Check::Crc).is_ok());
        assert!(matches!(
            decode(&b, 0, 1 << 20, Check::Full),
            Err(RecordError::BadArchive { .. })
        ));
        assert!(matches!(
            check_produced(&b, 0, 1 << 20),
            Err(RecordError::BadArchive { .. })
        ));
    }

    #[test]
    fn given_archive_over_limit_when_decoding_should_fail_length() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf).unwrap();
        let b = aligned(&buf);
        assert!(matches!(
            decode(&b, 0, 8, Check::Crc),
            Err(RecordError::BadLength { limit: 8, .. })
        ));
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        (
            any::<i64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            proptest::collection::vec(any::<u8>(), 0..2048),
            proptest::collection::vec(
                (".{0,12}", proptest::collection::vec(any::<u8>(), 0..16))
                    .prop_map(|(key, value)| Header { key, value }),
                0..4,
            ),
        )
            .prop_map(
                |(timestamp_ms, producer_id, sequence, key, value, headers)| Message {
                    timestamp_ms,
                    producer_id,
                    sequence,
                    key,
                    value,
                    headers,
                },
            )
    }

    proptest! {
        #[test]
        fn encode_decode_roundtrip(msgs in proptest::collection::vec(arb_message(), 1..8)) {
            let mut buf = Vec::new();
            for (i, m) in msgs.iter().enumerate() {
                let start = buf.len();
                encode(m, &mut buf).unwrap();
                stamp_header(&mut buf[start..], i as u64, i as i64);
            }
            let b = aligned(&buf);
            let got: Vec<_> = Records::new(&b, 1 << 20).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(got.len(), msgs.len());
            for (i, (r, m)) in got.iter().zip(&msgs).enumerate() {
                prop_assert_eq!(r.offset(), i as u64);
                let back: Message = rkyv::deserialize::<Message, rancor::Error>(r.message().unwrap()).unwrap();
                prop_assert_eq!(&back, m);
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), pos in 0usize..600) {
            let b = aligned(&bytes);
            let _ = decode(&b, pos, 1 << 20, Check::Full);
            let _ = check_produced(&b, pos, 1 << 20);
            for r in Records::new(&b, 1 << 20) { let _ = r.map(|r| r.message().is_ok()); }
        }
    }
}
