//! Recovery of a log directory holding arbitrary bytes (recovery.rs: "no disk content makes
//! recovery panic").
//!
//! The input describes a log directory on a [`SimIo`] disk: one or two segment files, optional
//! index checkpoints and stray files. `data[0]` chooses how, `data[1]` holds flags:
//! - raw (`data[0] % 4 == 0`): the remaining bytes are the segment file(s) as they are;
//! - build (otherwise): the input describes valid records (encoded and stamped at consecutive
//!   offsets, split over one or two segments, with honest checkpoints) and then mutations of them
//!   (bit flips, zeroed ranges, truncation, garbage, re-stamped headers, duplicated or removed
//!   records, wrong lengths), so that cuts in the middle, sequence errors and torn tails are
//!   reached without the fuzzer having to forge CRCs.
//!
//! Oracle, for every input:
//! (a) `Log::open` succeeds (a SimIo disk has no I/O error to report);
//! (b) every offset in `earliest..next` reads back, as CRC-checked records with consecutive
//!     offsets, and `offset_at_time` agrees with the records' append times;
//! (c) recovering the disk the first recovery left gives the same log and cuts nothing;
//! (d) an append after recovery gets the log end as its offset and reads back, and survives a
//!     close, a power cut and a third recovery.
//!
//! "Strict" is relaxed in one case only: when a checkpoint vouches for bytes that were then
//! damaged (bit rot under a checkpoint, or a tampered or made-up checkpoint with a valid CRC).
//! Recovery trusts a valid checkpoint by design and a read then reports `Corrupt` instead of
//! serving the record; there (b) accepts `Corrupt`, (c) and the third recovery of (d) are not
//! compared, but nothing may panic and nothing invalid may be served.
//! In build mode without damage the recovered records must be exactly the built ones, and with
//! damage every recovered record must carry the archive that was built for its offset, unless a
//! header was re-stamped with another offset (which forges a valid record).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use levee::record::{self, Check, Header, Message, Records, HEADER_LEN};
use levee::storage::SIM_PAGE_BYTES;
use levee::storage::{
    Checkpoint, Durability, IndexEntry, Io, Log, LogConfig, RecoveryReport, SimIo, StorageError,
};
use libfuzzer_sys::fuzz_target;

const DIR: &str = "/fuzz/p";
const SEGMENT_BYTES: usize = 64 << 10;
const RECORD_BYTES_MAX: usize = 16 << 10;
const INDEX_INTERVAL: usize = 256;
/// The clock of the appends: close to the built timestamps.
const T0: i64 = 1_700_000_000_000;
/// Built segment names stay this far below `OFFSET_MAX` (more than any `u32` relative offset), so
/// that an undamaged log can still take the append of oracle (d). Names at or past `OFFSET_MAX`
/// (raw mode) are strays to recovery; an append at `OFFSET_MAX` is refused. Both used to overflow
/// near `u64::MAX` before this target found it.
const OFFSET_END_MARGIN: u64 = 1 << 40;
/// Build records whose archives exceed `record_bytes_max`, as a log written under a larger
/// `record_bytes_max` holds, and expect recovery to keep them and reads to serve them (recovery
/// used to cut the log at such a record: found by this target, fixed).
const STORED_ABOVE_RECORD_BYTES_MAX: bool = true;
/// Bound on the bytes of records built, so one input stays cheap.
const BUILD_BYTES_MAX: usize = 160 << 10;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: SEGMENT_BYTES,
        record_bytes_max: RECORD_BYTES_MAX,
        index_interval_bytes: INDEX_INTERVAL,
        durability: Durability::None,
        retention_bytes: None,
        retention_ms: None,
        ..LogConfig::default()
    }
}

fn segment_path(base: u64) -> PathBuf {
    Path::new(DIR).join(format!("{base:020}.log"))
}

fn index_path(base: u64) -> PathBuf {
    Path::new(DIR).join(format!("{base:020}.index"))
}

/// Reads parameters off the front of the input; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// Base offset of the first segment: zero, small, around 2^32, or close to the end of the offset
/// space.
fn base_offset(selector: u8, input: &mut Input) -> u64 {
    let k = u64::from(input.u8());
    match selector & 3 {
        0 => 0,
        1 => k,
        2 => (1u64 << 32) - 128 + k,
        _ => levee::storage::OFFSET_MAX - OFFSET_END_MARGIN - k,
    }
}

/// The index entries a log would have recorded for `records` (same rule as SegmentIndex).
fn index_entries(records: &[Vec<u8>]) -> Vec<IndexEntry> {
    let mut entries = Vec::new();
    let mut since = 0usize;
    let mut position = 0usize;
    for (i, r) in records.iter().enumerate() {
        if entries.is_empty() || since >= INDEX_INTERVAL {
            entries.push(IndexEntry {
                relative_offset: i as u32,
                position: position as u32,
                timestamp_ms: timestamp_of(r),
            });
            since = 0;
        }
        since += r.len();
        position += r.len();
    }
    entries
}

fn timestamp_of(record: &[u8]) -> i64 {
    i64::from_le_bytes(record[16..24].try_into().unwrap())
}

fn offset_of(record: &[u8]) -> u64 {
    u64::from_le_bytes(record[8..16].try_into().unwrap())
}

/// Start positions of the records whose headers decode back to back from position 0.
fn boundaries(data: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut position = 0;
    while let Ok(h) = record::decode_header(data, position, record::ARCHIVE_LEN_MAX) {
        out.push(position);
        position += h.record_len();
    }
    out
}

/// One segment file being built.
struct Seg {
    base: u64,
    data: Vec<u8>,
    /// Bytes vouched for by a checkpoint (damage below this relaxes the oracle).
    checkpoint: Option<Checkpoint>,
}

/// What the oracle knows about a built log.
struct Built {
    base: u64,
    /// Archive bytes of the record at `base + i`.
    archives: Vec<Vec<u8>>,
    /// No damage at all: recovery must return every built record and cut nothing.
    clean: bool,
    /// No header was re-stamped with another offset. A re-stamp forges a record that is valid in
    /// every check recovery can make (CRCs, sequence) yet carries another offset's archive: after
    /// removing record 0 and re-stamping record 1 at offset 0, recovery rightly serves record 1's
    /// archive at offset 0 (found by this target: an oracle bug, not a recovery bug).
    identity: bool,
}

struct Case {
    io: SimIo,
    strict: bool,
    built: Option<Built>,
    /// Clock of the appends.
    now: i64,
}

fn raw_case(flags: u8, input: &mut Input) -> Case {
    let base = base_offset(flags >> 3, input);
    let two = flags & 0x04 != 0;
    let split = usize::from(input.u16());
    let base2 = base.wrapping_add(u64::from(input.u8()));
    let with_checkpoint = flags & 0x20 != 0;
    let mut entries = Vec::new();
    if with_checkpoint {
        for _ in 0..input.u8() % 4 {
            entries.push(IndexEntry {
                relative_offset: u32::from(input.u8()),
                position: u32::from(input.u16()) & !15,
                timestamp_ms: T0 + i64::from(input.u8()),
            });
        }
    }
    let rest = input.rest();
    let mut files = Vec::new();
    if two && base2 != base {
        let cut = split.min(rest.len());
        files.push((segment_path(base), rest[..cut].to_vec()));
        files.push((segment_path(base2), rest[cut..].to_vec()));
    } else {
        files.push((segment_path(base), rest.to_vec()));
    }
    let io = SimIo::with_files(files);
    if with_checkpoint {
        let data_len = entries.last().map_or(0, |e| u64::from(e.position) + 16);
        let cp = Checkpoint {
            base_offset: base,
            next_offset: base.saturating_add(entries.len() as u64),
            data_len,
            max_timestamp_ms: T0,
            entries,
        };
        io.write_file(&index_path(base), &cp.encode()).unwrap();
    }
    Case {
        io,
        // Without a checkpoint, recovery verifies every record it keeps.
        strict: !with_checkpoint,
        built: None,
        now: T0,
    }
}

fn build_case(flags: u8, input: &mut Input) -> Case {
    let base = base_offset(flags >> 2, input);
    let two = flags & 0x10 != 0;
    let now = if flags & 0x20 != 0 {
        // Old enough for the active segment to roll at the first append.
        T0 + 30 * 24 * 3600 * 1000
    } else {
        T0
    };

    // Records at consecutive offsets with non-decreasing append times.
    let count = 1 + usize::from(input.u8() % 24);
    let mut ts = match input.u8() {
        0 => i64::MIN,
        1 => -1,
        2 => i64::MAX - 1000,
        d => T0 - 1000 + i64::from(d),
    };
    let mut records: Vec<Vec<u8>> = Vec::new();
    let mut total = 0;
    for i in 0..count {
        let spec = input.u8();
        let len = if spec < 224 {
            usize::from(spec)
        } else if STORED_ABOVE_RECORD_BYTES_MAX {
            // Up to 18 KiB: the largest archives exceed record_bytes_max.
            usize::from(spec - 223) * 560
        } else {
            // Up to 16 000 bytes: every archive stays within record_bytes_max.
            usize::from(spec - 223) * 500
        };
        let message = Message {
            timestamp_ms: i as i64,
            producer_id: u64::from(spec % 3),
            sequence: i as u64,
            key: (spec % 3 == 0).then(|| vec![i as u8; 3]),
            value: vec![spec ^ i as u8; len],
            headers: if spec % 5 == 0 {
                vec![Header {
                    key: "h".into(),
                    value: vec![spec],
                }]
            } else {
                Vec::new()
            },
        };
        let mut buf = Vec::new();
        record::encode(&message, &mut buf).unwrap();
        ts = ts.saturating_add(i64::from(input.u8() >> 4));
        record::stamp_header(&mut buf, base.wrapping_add(i as u64), ts);
        if total + buf.len() > BUILD_BYTES_MAX {
            break;
        }
        total += buf.len();
        records.push(buf);
    }
    let archives: Vec<Vec<u8>> = records.iter().map(|r| r[HEADER_LEN..].to_vec()).collect();
    let mut clean = true;

    // One or two segments; the second normally starts where the first ends.
    let mut segs = vec![(base, &records[..])];
    if two {
        let split = usize::from(input.u8()) % (records.len() + 1);
        let d = input.u8();
        let delta = if d < 240 { 0 } else { i64::from(d) - 247 };
        let base2 = Some((base + split as u64).wrapping_add_signed(delta))
            .filter(|&b| b <= levee::storage::OFFSET_MAX - OFFSET_END_MARGIN / 2)
            .unwrap_or(base);
        if base2 != base {
            clean &= delta == 0;
            segs = vec![(base, &records[..split]), (base2, &records[split..])];
        }
    }
    let last = segs.len() - 1;
    let mut files: Vec<Seg> = Vec::new();
    for (i, &(seg_base, recs)) in segs.iter().enumerate() {
        let mut data: Vec<u8> = recs.concat();
        let data_len = data.len();
        // The tail after the records: trimmed, page-rounded, reserved, or a stale record after a
        // zero gap (bytes of an earlier life of the file that recovery must never revive).
        match input.u8() % 4 {
            0 => {}
            1 => data.resize(data.len().next_multiple_of(SIM_PAGE_BYTES), 0),
            2 => data.resize(data.len().max(SEGMENT_BYTES), 0),
            _ => {
                let gap = 16 * usize::from(input.u8() % 8 + 2);
                data.resize(data.len() + gap, 0);
                if let Some(stale) = records.get(usize::from(input.u8()) % records.len()) {
                    data.extend_from_slice(stale);
                }
            }
        }
        // An honest checkpoint covers a prefix of the segment's records (what was durable).
        let want = if i == last { 0x40 } else { 0x80 };
        let checkpoint = (flags & want != 0).then(|| {
            let covered = usize::from(input.u8()) % (recs.len() + 1);
            let recs = &recs[..covered];
            Checkpoint {
                base_offset: seg_base,
                next_offset: seg_base.wrapping_add(covered as u64),
                data_len: recs.iter().map(|r| r.len() as u64).sum(),
                max_timestamp_ms: recs.last().map_or(i64::MIN, |r| timestamp_of(r)),
                entries: index_entries(recs),
            }
        });
        debug_assert!(checkpoint
            .as_ref()
            .is_none_or(|c| c.data_len as usize <= data_len));
        files.push(Seg {
            base: seg_base,
            data,
            checkpoint,
        });
    }

    // Damage. Anything that touches bytes a checkpoint vouches for relaxes the oracle.
    let mut strict = true;
    let mut identity = true;
    let mutations = input.u8() % 8;
    for _ in 0..mutations {
        clean = false;
        let op = input.u8();
        let value = input.u8();
        let where_ = input.u16();
        let seg = &mut files[usize::from(op & 1) % segs.len()];
        let data = &mut seg.data;
        let starts = boundaries(data);
        // Either a raw position or a spot inside a record (its header mostly).
        let position = if op & 0x80 != 0 && !starts.is_empty() {
            starts[usize::from(where_ >> 8) % starts.len()] + usize::from(where_ as u8 % 48)
        } else {
            usize::from(where_) % (data.len() + 1)
        };
        let record_at = (!starts.is_empty()).then(|| starts[usize::from(value) % starts.len()]);
        let covered = seg.checkpoint.as_ref().map_or(0, |c| c.data_len as usize);
        let mut touched = position;
        match (op >> 1) % 8 {
            0 => {
                if let Some(b) = data.get_mut(position) {
                    *b ^= 1 << (value & 7);
                }
            }
            1 => {
                let end = (position + usize::from(value) * 4 + 1).min(data.len());
                data[position.min(end)..end].fill(0);
            }
            2 => {
                // A shorter file than the checkpoint's data_len makes recovery reject the
                // checkpoint: truncation never relaxes the oracle.
                data.truncate(position);
                touched = usize::MAX;
            }
            3 => {
                let garbage = input.take(8);
                let end = (position + garbage.len()).min(data.len());
                let n = end.saturating_sub(position);
                data[position.min(end)..end].copy_from_slice(&garbage[..n]);
            }
            4 => {
                // Re-stamp a header: valid CRC, wrong offset, time or version.
                if let Some(p) = record_at {
                    let h = &data[p..];
                    let offset =
                        offset_of(h).wrapping_add_signed(i64::from(where_ as u8 as i8 >> 4));
                    identity &= offset == offset_of(h);
                    let ts = timestamp_of(h).wrapping_add(i64::from((where_ >> 8) as u8 as i8));
                    record::stamp_header(&mut data[p..], offset, ts);
                    if value & 0x80 != 0 {
                        // Version, flags or reserved bits set, under a valid header CRC.
                        data[p + 24 + usize::from(value % 4)] ^= 1 << ((value >> 4) & 7);
                        let crc = record::archive_crc(&data[p..p + 28]);
                        data[p + 28..p + 32].copy_from_slice(&crc.to_le_bytes());
                    }
                    touched = p;
                }
            }
            5 => {
                // Insert a copy of a record (valid CRCs) at a record boundary.
                if let (Some(p), Some(&q)) = (
                    record_at,
                    starts.get(usize::from(where_) % starts.len().max(1)),
                ) {
                    let len = record::decode_header(data, q, record::ARCHIVE_LEN_MAX)
                        .unwrap()
                        .record_len();
                    let copy = data[q..q + len].to_vec();
                    data.splice(p..p, copy);
                    touched = p;
                }
            }
            6 => {
                // Remove a record: what follows is valid but out of sequence.
                if let Some(p) = record_at {
                    let len = record::decode_header(data, p, record::ARCHIVE_LEN_MAX)
                        .unwrap()
                        .record_len();
                    data.drain(p..p + len);
                    touched = p;
                }
            }
            _ => {
                // A wrong archive length under a valid header CRC.
                if let Some(p) = record_at {
                    let len = u32::from(where_) * 16 + u32::from(value % 16);
                    data[p + 4..p + 8].copy_from_slice(&len.to_le_bytes());
                    let (offset, ts) = (offset_of(&data[p..]), timestamp_of(&data[p..]));
                    record::stamp_header(&mut data[p..], offset, ts);
                    touched = p;
                }
            }
        }
        if touched < covered {
            strict = false;
        }
    }
    // A tampered checkpoint with a valid CRC: recovery may trust whatever it claims.
    if flags & 0x02 != 0 {
        let op = input.u8();
        let v = input.u8();
        let seg = &mut files[usize::from(op & 1) % segs.len()];
        if let Some(cp) = seg.checkpoint.as_mut() {
            strict = false;
            clean = false;
            let n = cp.entries.len();
            let e = (n > 0).then(|| usize::from(v) % n);
            let d = i64::from(v as i8);
            match (op >> 1) % 7 {
                0 => cp.base_offset = cp.base_offset.wrapping_add_signed(d),
                1 => cp.next_offset = cp.next_offset.wrapping_add_signed(d),
                2 => cp.data_len = cp.data_len.wrapping_add_signed(d * 16),
                3 => {
                    if let Some(e) = e {
                        let p = &mut cp.entries[e].position;
                        *p = p.wrapping_add_signed(d as i32 * 16);
                    }
                }
                4 => {
                    if let Some(e) = e {
                        let r = &mut cp.entries[e].relative_offset;
                        *r = r.wrapping_add_signed(d as i32);
                    }
                }
                5 => {
                    if let Some(e) = e {
                        cp.entries.remove(e);
                    }
                }
                _ => {
                    if let Some(e) = e {
                        cp.entries[e].timestamp_ms = cp.entries[e].timestamp_ms.wrapping_add(d);
                    }
                }
            }
        }
    }

    let mut paths: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let stray = flags & 0x01 != 0;
    if stray {
        // A half-prepared next segment; recovery removes it.
        paths.push((
            Path::new(DIR).join("next.segment.prepared"),
            vec![0xAB; 4096],
        ));
    }
    let checkpoints: Vec<(u64, Vec<u8>)> = files
        .iter()
        .filter_map(|s| s.checkpoint.as_ref().map(|c| (s.base, c.encode())))
        .collect();
    paths.extend(files.into_iter().map(|s| (segment_path(s.base), s.data)));
    let io = SimIo::with_files(paths);
    for (base, bytes) in checkpoints {
        io.write_file(&index_path(base), &bytes).unwrap();
    }
    if stray {
        // A checkpoint without a segment and a leftover temporary file.
        io.write_file(&index_path(base.wrapping_add(1 << 20)), b"LVIX")
            .unwrap();
        io.write_file(&Path::new(DIR).join("x.index.tmp"), b"tmp")
            .unwrap();
    }
    Case {
        io,
        strict,
        built: Some(Built {
            base,
            archives,
            clean,
            identity,
        }),
        now,
    }
}

/// A recovered record: offset, append time, bytes as stored.
type Rec = (u64, i64, Vec<u8>);

fn open(io: &SimIo, now: i64) -> (Log<SimIo>, RecoveryReport) {
    let (mut log, report) = match Log::open(io.clone(), DIR, config()) {
        Ok(x) => x,
        Err(e) => panic!("recovery failed on a SimIo disk: {e}"),
    };
    log.set_clock(Arc::new(move || now));
    assert_eq!(report.next_offset, log.next_offset(), "{report:?}");
    assert_eq!(report.segments, log.segments().len(), "{report:?}");
    let segments = log.segments();
    assert!(!segments.is_empty());
    for w in segments.windows(2) {
        assert_eq!(w[0].1, w[1].0, "segments do not chain: {segments:?}");
    }
    for &(base, next, len) in &segments {
        assert!(base <= next, "{segments:?}");
        assert_eq!(len == 0, base == next, "{segments:?}");
    }
    assert_eq!(segments.last().unwrap().1, log.next_offset());
    (log, report)
}

/// Reads every offset of the log through `Log::read`. Strict: every read succeeds. Otherwise a
/// read may report `Corrupt` (the record is then skipped), but what is served is always valid.
fn read_all(log: &Log<SimIo>, strict: bool) -> Vec<Rec> {
    // Stored records are held to the format limit; record_bytes_max only gates new appends.
    let max = record::ARCHIVE_LEN_MAX;
    let mut out = Vec::new();
    let mut at = log.earliest_offset();
    while at < log.next_offset() {
        let slice = match log.read(at, 1 << 20) {
            Ok(s) => s,
            Err(StorageError::Corrupt { .. }) if !strict => {
                at += 1;
                continue;
            }
            Err(e) => panic!("read at {at} of a recovered log failed: {e}"),
        };
        assert_eq!(slice.first_offset, at);
        assert!(slice.count() > 0, "empty read at {at} before the end");
        let mut records = Records::new(slice.bytes(), max);
        for r in records.by_ref() {
            let r = r.unwrap_or_else(|e| panic!("served record fails its checks: {e}"));
            assert!(record::decode(r.bytes, 0, max, Check::Crc).is_ok());
            assert_eq!(r.offset(), at, "served offsets are not consecutive");
            out.push((at, r.header.timestamp_ms, r.bytes.to_vec()));
            at += 1;
        }
        assert_eq!(records.position(), slice.bytes().len());
        assert_eq!(at, slice.next_offset);
    }
    out
}

/// `offset_at_time` against the records' own append times (strict logs only).
fn check_times(log: &Log<SimIo>, records: &[Rec]) {
    let expect = |t: i64| {
        records
            .iter()
            .find(|r| r.1 >= t)
            .map_or(log.next_offset(), |r| r.0)
    };
    let mut queries = vec![i64::MIN, i64::MAX];
    for r in records.iter().take(64) {
        queries.extend([r.1, r.1.saturating_add(1), r.1.saturating_sub(1)]);
    }
    for t in queries {
        let got = log
            .offset_at_time(t)
            .unwrap_or_else(|e| panic!("offset_at_time({t}) failed: {e}"));
        assert_eq!(got, expect(t), "offset_at_time({t})");
    }
}

fn run(case: Case) {
    let Case {
        io,
        strict,
        built,
        now,
    } = case;

    // (a), (b)
    let (log, first) = open(&io, now);
    let records = read_all(&log, strict);
    if strict {
        assert_eq!(
            records.len() as u64,
            log.next_offset() - log.earliest_offset()
        );
        check_times(&log, &records);
    }
    if let Some(b) = &built {
        if strict && b.identity {
            for (offset, _, bytes) in &records {
                let i = offset.wrapping_sub(b.base) as usize;
                assert!(
                    b.archives
                        .get(i)
                        .is_some_and(|a| a[..] == bytes[HEADER_LEN..]),
                    "recovered record {offset} was not built at that offset"
                );
            }
        }
        if b.clean {
            assert_eq!(first.truncation, None, "undamaged log was cut");
            assert_eq!(log.earliest_offset(), b.base);
            assert_eq!(
                records.len(),
                b.archives.len(),
                "undamaged log lost records"
            );
        }
    }
    let segments = log.segments();
    let (earliest, next) = (log.earliest_offset(), log.next_offset());
    drop(log);

    // (c) The disk after the first recovery (it flushed what it kept) recovers to the same log.
    let io2 = io.crash(|_| Some(SIM_PAGE_BYTES));
    let (mut log, second) = open(&io2, now);
    let records2 = read_all(&log, strict);
    if strict {
        assert_eq!(
            second.truncation, None,
            "second recovery cut again: {second:?}"
        );
        assert!(second.segments_removed.is_empty(), "{second:?}");
        assert!(second.stray_files_removed.is_empty(), "{second:?}");
        assert_eq!((log.earliest_offset(), log.next_offset()), (earliest, next));
        assert_eq!(log.segments(), segments);
        assert!(
            records2 == records,
            "second recovery reads different records"
        );
    }

    // (d) An append lands at the log end and reads back.
    let before = log.next_offset();
    let value = b"x".to_vec();
    let appended = log
        .append_message(&Message {
            value: value.clone(),
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("append after recovery failed: {e}"));
    assert_eq!(appended.base_offset, before);
    assert_eq!(appended.next_offset, before + 1);
    assert_eq!(log.next_offset(), before + 1);
    let check_appended = |log: &Log<SimIo>| {
        let slice = log
            .read(before, 1 << 20)
            .unwrap_or_else(|e| panic!("read of the appended record failed: {e}"));
        assert_eq!(slice.count(), 1);
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(slice.bytes());
        let r = record::decode(&aligned, 0, RECORD_BYTES_MAX, Check::Full)
            .unwrap_or_else(|e| panic!("appended record fails its checks: {e}"));
        assert_eq!(r.offset(), before);
        assert_eq!(r.message().unwrap().value.as_slice(), &value[..]);
    };
    check_appended(&log);
    let records2 = if strict {
        read_all(&log, true)
    } else {
        records2
    };
    log.close()
        .unwrap_or_else(|e| panic!("close after recovery failed: {e}"));

    // ... and survives a power cut once closed (everything durable). Not when damage hides under
    // a checkpoint: the roll trims the sealed segment, a damaged record under the checkpoint may
    // then run past the file's end, the checkpoint is rejected and the rescan cuts the log there,
    // deleting the segment of the append.
    let io3 = io2.crash(|_| None);
    let (log, third) = open(&io3, now);
    let records3 = read_all(&log, strict);
    if strict {
        assert_eq!(
            third.truncation, None,
            "recovery after a clean close cut: {third:?}"
        );
        assert_eq!(log.next_offset(), before + 1);
        check_appended(&log);
        assert!(
            records3 == records2,
            "third recovery reads different records"
        );
        check_times(&log, &records3);
    }
    drop(log);
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mode = input.u8();
    let flags = input.u8();
    let case = if mode % 4 == 0 {
        raw_case(flags, &mut input)
    } else {
        build_case(flags, &mut input)
    };
    run(case);
});
