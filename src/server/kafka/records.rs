//! Kafka record batches (v2) to Levee records and back.
//!
//! Produce: each batch's CRC-32C is checked, the batch is decompressed here (gzip, snappy with or
//! without the Java client's xerial framing, lz4, zstd) into at most [`DECOMPRESSED_BYTES_MAX`]
//! bytes, and each record becomes a Levee record with the same key, value, headers and timestamp
//! (a null value as an empty one flagged [`record::FLAG_NULL_VALUE`]). Fetch: Levee records
//! become one uncompressed batch per partition, with their offsets.
//!
//! Both ways are bounded by what they are given: a batch never claims more records, or expands to
//! more bytes, than the bounds here allow, whatever its header says.

use std::io::Read;

use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::record::{self, ArchivedMessage, Header, Message, Records};

/// Most bytes one batch may decompress to; a batch past it is refused as corrupt.
pub const DECOMPRESSED_BYTES_MAX: usize = 64 << 20;

/// Most records one batch may claim before it is decoded.
pub const BATCH_RECORDS_MAX: i32 = 1 << 20;

/// Why a Kafka batch cannot be stored.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Not a v2 batch, a bad CRC, a truncated or malformed record.
    #[error("corrupt record batch: {0}")]
    Corrupt(String),
    /// Part of a transaction, or a control batch: transactions are not supported.
    #[error("transactional batches are not supported")]
    Transactional,
    /// Magic 0 or 1 (message sets from Produce versions 0–2).
    #[error("message format v{0} is not supported; use a client that writes record batches (v2)")]
    OldFormat(i8),
    /// The batch claims or expands to more than the bounds allow.
    #[error("record batch too large: {0}")]
    TooLarge(String),
}

/// One Kafka record as a Levee message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaMessage {
    /// The message (a null value is empty here).
    pub message: Message,
    /// The value was null, not empty.
    pub null_value: bool,
}

/// Decodes every batch of a Produce partition's `records` into Levee messages, in order.
pub fn decode_batches(records: &Bytes) -> Result<Vec<KafkaMessage>, BatchError> {
    let mut messages = Vec::new();
    let mut buf = records.clone();
    while !buf.is_empty() {
        if buf.len() < 61 {
            return Err(BatchError::Corrupt(format!(
                "{} trailing bytes, shorter than a batch header",
                buf.len()
            )));
        }
        let magic = buf[16] as i8;
        if magic != 2 {
            return Err(BatchError::OldFormat(magic));
        }
        let batch_len = i32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let total = usize::try_from(batch_len)
            .ok()
            .and_then(|l| l.checked_add(12))
            .filter(|&t| t <= buf.len())
            .ok_or_else(|| {
                BatchError::Corrupt(format!(
                    "batch length {batch_len} past the {} bytes sent",
                    buf.len()
                ))
            })?;
        let attributes = i16::from_be_bytes([buf[21], buf[22]]);
        if attributes & (1 << 4) != 0 || attributes & (1 << 5) != 0 {
            return Err(BatchError::Transactional);
        }
        let count = i32::from_be_bytes([buf[57], buf[58], buf[59], buf[60]]);
        if !(0..=BATCH_RECORDS_MAX).contains(&count) {
            return Err(BatchError::TooLarge(format!(
                "{count} records claimed (at most {BATCH_RECORDS_MAX})"
            )));
        }
        let compression = attributes & 0x7;
        if compression == 0 && count as usize > total {
            // Each uncompressed record takes at least one byte.
            return Err(BatchError::Corrupt(format!(
                "{count} records claimed in {total} bytes"
            )));
        }
        let mut one = buf.split_to(total);
        let set = RecordBatchDecoder::decode_with_custom_compression(
            &mut one,
            Some(|b: &mut Bytes, c: Compression| -> anyhow::Result<Bytes> { decompress(b, c) }),
        )
        .map_err(|e| BatchError::Corrupt(format!("{e:#}")))?;
        for r in set.records {
            if r.control || r.transactional {
                return Err(BatchError::Transactional);
            }
            // An idempotent producer's batch (id from InitProducerId, sequences from 0 per
            // partition) becomes a Levee idempotent run: same id, same sequences.
            let (producer_id, sequence) = if r.producer_id >= 0 && r.sequence >= 0 {
                (r.producer_id as u64, r.sequence as u64)
            } else {
                (0, 0)
            };
            let message = Message {
                timestamp_ms: r.timestamp,
                producer_id,
                sequence,
                key: r.key.map(|k| k.to_vec()),
                value: r.value.as_ref().map(|v| v.to_vec()).unwrap_or_default(),
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| Header {
                        key: k.to_string(),
                        value: v.map(|v| v.to_vec()).unwrap_or_default(),
                    })
                    .collect(),
            };
            messages.push(KafkaMessage {
                message,
                null_value: r.value.is_none(),
            });
        }
    }
    Ok(messages)
}

/// Decompresses one batch's records into at most [`DECOMPRESSED_BYTES_MAX`] bytes.
fn decompress(buf: &mut Bytes, compression: Compression) -> anyhow::Result<Bytes> {
    let input = std::mem::take(buf);
    let limit = DECOMPRESSED_BYTES_MAX as u64 + 1;
    let mut out = Vec::new();
    match compression {
        Compression::None => return Ok(input),
        Compression::Gzip => {
            flate2::read::GzDecoder::new(&input[..])
                .take(limit)
                .read_to_end(&mut out)?;
        }
        Compression::Zstd => {
            zstd::stream::read::Decoder::new(&input[..])?
                .take(limit)
                .read_to_end(&mut out)?;
        }
        Compression::Lz4 => {
            lz4::Decoder::new(&input[..])?
                .take(limit)
                .read_to_end(&mut out)?;
        }
        Compression::Snappy => snappy(&input, &mut out)?,
    }
    anyhow::ensure!(
        out.len() <= DECOMPRESSED_BYTES_MAX,
        "the batch decompresses to more than {DECOMPRESSED_BYTES_MAX} bytes"
    );
    Ok(Bytes::from(out))
}

/// The Java client's framing of snappy ("xerial"): a 16-byte header, then blocks, each a 4-byte
/// big-endian length and raw snappy data.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";

/// Raw snappy, or xerial-framed snappy; each block's stated length is checked against the bound
/// before it is decompressed.
fn snappy(input: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut one = |block: &[u8]| -> anyhow::Result<()> {
        let len = snap::raw::decompress_len(block)?;
        anyhow::ensure!(
            out.len() + len <= DECOMPRESSED_BYTES_MAX,
            "the batch decompresses to more than {DECOMPRESSED_BYTES_MAX} bytes"
        );
        let start = out.len();
        out.resize(start + len, 0);
        snap::raw::Decoder::new().decompress(block, &mut out[start..])?;
        Ok(())
    };
    if input.len() >= 16 && input.starts_with(XERIAL_MAGIC) {
        let mut at = 16;
        while at < input.len() {
            anyhow::ensure!(at + 4 <= input.len(), "truncated xerial block length");
            let n = u32::from_be_bytes([input[at], input[at + 1], input[at + 2], input[at + 3]])
                as usize;
            at += 4;
            anyhow::ensure!(n <= input.len() - at, "truncated xerial block");
            one(&input[at..at + n])?;
            at += n;
        }
        Ok(())
    } else {
        one(input)
    }
}

/// One uncompressed batch of the records of a fetched run (Levee records, CRC-checked), or
/// `None` when the run holds none. Stops at the first record that fails its check: what comes
/// before it is served, as Levee's own Fetch does.
pub fn encode_run(run: &[u8]) -> Result<Option<Bytes>, BatchError> {
    let mut records = Vec::new();
    for r in Records::new(run, record::ARCHIVE_LEN_MAX) {
        let Ok(r) = r else { break };
        let Ok(m) = r.message() else { break };
        records.push(kafka_record(r.offset(), r.header.value_is_null(), m));
    }
    let Some(first) = records.first().map(|r| r.offset) else {
        return Ok(None);
    };
    // The encoder starts a new batch wherever `offset - sequence` changes: numbering the
    // sequences along the offsets, from -1 (no sequence, as the batch header says), keeps every
    // record of the run in one batch.
    for r in &mut records {
        r.sequence = (r.offset - first).wrapping_sub(1) as i32;
    }
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| BatchError::Corrupt(format!("cannot encode the batch: {e:#}")))?;
    Ok(Some(out.freeze()))
}

fn kafka_record(offset: u64, null_value: bool, m: &ArchivedMessage) -> Record {
    let mut headers = IndexMap::new();
    for h in m.headers.iter() {
        headers.insert(
            StrBytes::from_string(h.key.as_str().to_string()),
            Some(Bytes::copy_from_slice(h.value.as_slice())),
        );
    }
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: offset as i64,
        sequence: -1,
        timestamp: m.timestamp_ms.to_native(),
        key: m.key.as_ref().map(|k| Bytes::copy_from_slice(k.as_slice())),
        value: (!null_value).then(|| Bytes::copy_from_slice(m.value.as_slice())),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(compression: Compression, records: &[Record]) -> Bytes {
        let mut out = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut out,
            records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        out.freeze()
    }

    fn record(offset: i64, key: Option<&str>, value: &str) -> Record {
        let mut headers = IndexMap::new();
        headers.insert(
            StrBytes::from_static_str("h"),
            Some(Bytes::from_static(b"v")),
        );
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: -1,
            timestamp: 1_700_000_000_000 + offset,
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers,
        }
    }

    #[test]
    fn given_each_compression_when_decoded_should_keep_keys_values_headers_and_times() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut null = record(2, Some("gone"), "");
            null.value = None;
            let b = batch(
                c,
                &[record(0, Some("k"), "one"), record(1, None, "two"), null],
            );
            let m = decode_batches(&b).unwrap();
            assert_eq!(m.len(), 3, "{c:?}");
            assert_eq!(m[0].message.key.as_deref(), Some(&b"k"[..]));
            assert_eq!(m[1].message.key, None);
            assert_eq!(m[1].message.value, b"two");
            assert_eq!(m[0].message.headers[0].key, "h");
            assert_eq!(m[0].message.timestamp_ms, 1_700_000_000_000);
            assert_eq!(
                m.iter().map(|m| m.null_value).collect::<Vec<_>>(),
                [false, false, true]
            );
        }
    }

    #[test]
    fn given_a_flipped_byte_when_decoded_should_fail_its_crc() {
        let mut b = batch(Compression::None, &[record(0, None, "payload")]).to_vec();
        let last = b.len() - 2;
        b[last] ^= 0xff;
        assert!(matches!(
            decode_batches(&Bytes::from(b)),
            Err(BatchError::Corrupt(_))
        ));
    }

    #[test]
    fn given_a_huge_record_count_when_decoded_should_refuse_before_allocating() {
        let mut b = batch(Compression::None, &[record(0, None, "x")]).to_vec();
        b[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            decode_batches(&Bytes::from(b)),
            Err(BatchError::TooLarge(_))
        ));
    }

    #[test]
    fn given_a_gzip_bomb_when_decompressed_should_stop_at_the_bound() {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(DECOMPRESSED_BYTES_MAX >> 20) + 1 {
            e.write_all(&zeros).unwrap();
        }
        let mut input = Bytes::from(e.finish().unwrap());
        assert!(decompress(&mut input, Compression::Gzip).is_err());
    }

    #[test]
    fn given_levee_records_when_encoded_should_decode_as_one_kafka_batch_with_their_offsets() {
        let mut run = Vec::new();
        for (i, v) in ["a", "bb", ""].iter().enumerate() {
            let at = run.len();
            let m = Message {
                timestamp_ms: 5,
                key: Some(vec![i as u8]),
                value: v.as_bytes().to_vec(),
                ..Message::default()
            };
            if v.is_empty() {
                record::encode_null_value(&m, &mut run).unwrap();
            } else {
                record::encode(&m, &mut run).unwrap();
            }
            record::stamp_header(&mut run[at..], 40 + i as u64, 9);
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&run);
        let mut b = encode_run(&aligned).unwrap().unwrap();
        let set = RecordBatchDecoder::decode(&mut b).unwrap();
        let got: Vec<_> = set
            .records
            .iter()
            .map(|r| (r.offset, r.value.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (40, Some(Bytes::from_static(b"a"))),
                (41, Some(Bytes::from_static(b"bb"))),
                (42, None)
            ]
        );
        assert_eq!(set.records[0].timestamp, 5);
    }
}
