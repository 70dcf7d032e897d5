//! Recovery: turning whatever a crash left in a log directory into a valid log.
//!
//! Rules (docs/storage.md gives the reasoning):
//! 0. A segment is identified by its content: a file whose first record carries a later offset
//!    than its name says (a recycled file whose new name a power cut took back) is renamed to that
//!    offset, or quarantined when a file of that name exists.
//! 1. Stray files are removed: a half-prepared next segment, temporary checkpoint files, and
//!    checkpoints without a segment. Quarantined files (`*.quarantined`) are left alone.
//! 2. Segments are taken in base-offset order. Each must start where the previous one ended; at a
//!    gap or overlap the log is cut before that segment. A segment followed by one that starts
//!    exactly where its valid records end is complete: what fails after them is an unused tail.
//! 3. A segment's checkpoint (`.index`) is used only if it checks out: CRC, base offset, entry
//!    order, its last entry pointing at a record header with the right offset and time, and its
//!    first entry's time not before the newest record of the segments before it. The scan then
//!    starts at its last entry; otherwise at byte 0, and the index is rebuilt.
//! 4. The scan verifies every record from there: header CRC, archive CRC, zero padding, consecutive
//!    offsets, non-decreasing append times. A zero header is the clean end of the data.
//! 5. At the first record that fails, the log is cut: the rest of that segment is erased (so no
//!    stale record past the cut can be revived by a later append of the same length) and every
//!    later segment is quarantined (renamed `*.quarantined`, kept for an operator, logged): no
//!    recovery deletes more than the torn tail of a segment. The cut is reported with its reason.
//! 6. The last segment becomes the active one: everything after its last record is erased for
//!    the same reason as in rule 5. Its reservation is extended by the log when appends need it.
//! 7. What was recovered is flushed, and the directory synced (so the names it found and the
//!    renames and removals it made are durable), before the log declares anything durable.
//!
//! No disk content makes recovery panic: every length and position read from disk is checked
//! before use. The fuzz target `segment_recovery` holds it to that.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use super::index::{Checkpoint, SegmentIndex};
use super::io::{Io, SegmentMap};
use super::segment::{self, Segment};
use super::{LogConfig, StorageError};
use crate::record::{self, Check, RecordError, HEADER_LEN};

/// Where and why recovery cut a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// Base offset of the segment that was cut.
    pub segment: u64,
    /// Byte position of the cut in that segment.
    pub position: usize,
    /// The log's next offset after the cut.
    pub next_offset: u64,
    /// Why.
    pub reason: TruncationReason,
}

/// Why recovery cut a log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // Variant fields are named by the variant's message.
pub enum TruncationReason {
    /// A record failed its checks (torn write, bit flip, stale bytes).
    Record(RecordError),
    /// A segment does not start where the previous one ended.
    SegmentGap { expected: u64, found: u64 },
}

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments in the recovered log.
    pub segments: usize,
    /// Records whose CRCs were verified by the scan.
    pub records_verified: u64,
    /// The log end after recovery.
    pub next_offset: u64,
    /// The cut, if the log was cut.
    pub truncation: Option<Truncation>,
    /// Base offsets of segments deleted because they followed a cut.
    pub segments_removed: Vec<u64>,
    /// Base offsets of segments whose checkpoint was missing or invalid and was rebuilt.
    pub indexes_rebuilt: Vec<u64>,
    /// Names of stray files removed.
    pub stray_files_removed: Vec<String>,
    /// Segment files renamed because their content starts at another offset: `(from, to)`.
    pub segments_renamed: Vec<(String, String)>,
    /// Files moved aside as `<name>.quarantined` instead of being deleted.
    pub files_quarantined: Vec<String>,
}

/// Suffix of a file recovery moved aside rather than delete.
pub const QUARANTINE_SUFFIX: &str = ".quarantined";

pub(crate) struct Recovered<M: SegmentMap> {
    pub segments: VecDeque<Segment<M>>,
    pub next_offset: u64,
    pub last_timestamp_ms: i64,
    pub report: RecoveryReport,
}

/// Where a scan stops.
enum ScanEnd {
    /// Zeros or the end of the file.
    Clean,
    /// A record that failed its checks.
    Cut(RecordError),
}

struct Scan {
    position: usize,
    next_offset: u64,
    max_timestamp_ms: i64,
    records: u64,
    end: ScanEnd,
}

/// Walks records from `position`, verifying each, adding index entries, until the data ends.
fn scan(
    data: &[u8],
    base_offset: u64,
    mut position: usize,
    mut offset: u64,
    mut last_timestamp_ms: i64,
    index: &mut SegmentIndex,
    archive_len_max: usize,
) -> Scan {
    let mut records = 0;
    let end = loop {
        let rest = data.get(position..).unwrap_or(&[]);
        if rest.len() < HEADER_LEN && rest.iter().all(|&b| b == 0) {
            break ScanEnd::Clean;
        }
        if record::is_zero_header(data, position) {
            break ScanEnd::Clean;
        }
        if offset >= super::OFFSET_MAX {
            break ScanEnd::Cut(RecordError::Sequence {
                position,
                expected: offset,
                found: offset,
            });
        }
        let r = match record::decode(data, position, archive_len_max, Check::Crc) {
            Ok(r) => r,
            Err(e) => break ScanEnd::Cut(e),
        };
        if r.offset() < base_offset {
            // A whole record from the file's earlier life as another segment (recycled files keep
            // their old bytes until overwritten): the clean end of this segment's data.
            break ScanEnd::Clean;
        }
        if r.offset() != offset {
            break ScanEnd::Cut(RecordError::Sequence {
                position,
                expected: offset,
                found: r.offset(),
            });
        }
        if r.header.timestamp_ms < last_timestamp_ms {
            break ScanEnd::Cut(RecordError::TimeRegression {
                position,
                previous: last_timestamp_ms,
                found: r.header.timestamp_ms,
            });
        }
        let relative = offset - base_offset;
        if relative > u32::MAX as u64 || position > u32::MAX as usize {
            break ScanEnd::Cut(RecordError::BadLength {
                position,
                len: r.bytes.len(),
                limit: u32::MAX as usize,
            });
        }
        index.on_append(
            relative as u32,
            position as u32,
            r.header.timestamp_ms,
            r.bytes.len(),
        );
        last_timestamp_ms = r.header.timestamp_ms;
        position += r.bytes.len();
        offset += 1;
        records += 1;
    };
    Scan {
        position,
        next_offset: offset,
        max_timestamp_ms: last_timestamp_ms,
        records,
        end,
    }
}

/// Where the scan of a segment may start, according to its checkpoint: `(position, offset,
/// previous timestamp, index)`. `None` when the checkpoint is missing or does not check out.
/// `log_ts` is the newest append time of the segments before this one.
fn trusted_start(
    checkpoint: &Checkpoint,
    base_offset: u64,
    data: &[u8],
    log_ts: i64,
    interval_bytes: usize,
    archive_len_max: usize,
) -> Option<(usize, u64, i64, SegmentIndex)> {
    if checkpoint.base_offset != base_offset || checkpoint.data_len > data.len() as u64 {
        return None;
    }
    // Append times never decrease across the whole log, not only within a segment. The first
    // entry is the segment's first record; a time before the previous segments' newest means the
    // records it vouches for (or those before them) are not what was appended in that order: scan
    // instead, which cuts at the regression (found by the recovery fuzzer: a re-stamped time at
    // the end of one segment made time lookups in the next one wrong).
    if checkpoint
        .entries
        .first()
        .is_some_and(|e| e.timestamp_ms < log_ts)
    {
        return None;
    }
    // The checkpoint's own CRC vouches for its entries; check that the last one still points at
    // the record it names. Checking every entry would read the whole log at every open (one header
    // per index interval touches every page).
    if let Some(e) = checkpoint.entries.last() {
        let h = record::decode_header(data, e.position as usize, archive_len_max).ok()?;
        if h.offset != base_offset + e.relative_offset as u64 || h.timestamp_ms != e.timestamp_ms {
            return None;
        }
    }
    // Re-scan from the last entry: it re-adds that entry and verifies the checkpoint's tail.
    match checkpoint.entries.split_last() {
        None => Some((0, base_offset, i64::MIN, SegmentIndex::new(interval_bytes))),
        Some((last, earlier)) => {
            let previous_ts = earlier.last().map_or(i64::MIN, |e| e.timestamp_ms);
            let index =
                SegmentIndex::restore(interval_bytes, earlier.to_vec(), last.position as usize);
            Some((
                last.position as usize,
                base_offset + last.relative_offset as u64,
                previous_ts,
                index,
            ))
        }
    }
}

fn remove_quietly<I: Io>(io: &I, path: &Path) -> Result<(), StorageError> {
    match io.remove(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::io("delete", path, e)),
    }
}

/// Moves `name` aside as `<name>.quarantined` (never over an earlier one), logged.
fn quarantine<I: Io>(
    io: &I,
    dir: &Path,
    name: &str,
    why: &str,
    report: &mut RecoveryReport,
) -> Result<(), StorageError> {
    let mut aside = format!("{name}{QUARANTINE_SUFFIX}");
    let taken = io.list(dir).map_err(|e| StorageError::io("list", dir, e))?;
    let mut n = 1;
    while taken.contains(&aside) {
        n += 1;
        aside = format!("{name}-{n}{QUARANTINE_SUFFIX}");
    }
    tracing::error!(dir = %dir.display(), file = name, moved_to = %aside, reason = why, "recovery quarantined a segment file instead of deleting it");
    io.rename(&dir.join(name), &dir.join(&aside))
        .map_err(|e| StorageError::io("quarantine", dir.join(name), e))?;
    report.files_quarantined.push(name.to_string());
    Ok(())
}

/// Rule 0: renames segment files whose first record says they start elsewhere.
fn rename_misnamed<I: Io>(
    io: &I,
    dir: &Path,
    names: &[String],
    report: &mut RecoveryReport,
) -> Result<bool, StorageError> {
    let mut changed = false;
    for name in names {
        let Some(base) = segment::parse_file_name(name).filter(|&b| b < super::OFFSET_MAX) else {
            continue;
        };
        let path = dir.join(name);
        let map = io
            .open(&path, None)
            .map_err(|e| StorageError::io("open segment", &path, e))?;
        // SAFETY: nobody else holds this mapping.
        let data = unsafe { map.slice(0, map.len()) };
        let first = record::decode_header(data, 0, record::ARCHIVE_LEN_MAX)
            .ok()
            .map(|h| h.offset)
            .filter(|&o| o > base && o < super::OFFSET_MAX);
        drop(map);
        let Some(actual) = first else { continue };
        let target = segment::file_name(actual);
        changed = true;
        if names.contains(&target) {
            quarantine(
                io,
                dir,
                name,
                &format!("its records start at {actual}, and {target} exists"),
                report,
            )?;
            continue;
        }
        tracing::warn!(dir = %dir.display(), from = %name, to = %target, "segment named for another offset (a rename lost to a power cut): renamed to match its records");
        io.rename(&path, &dir.join(&target))
            .map_err(|e| StorageError::io("rename misnamed segment", &path, e))?;
        report.segments_renamed.push((name.clone(), target));
    }
    Ok(changed)
}

pub(crate) fn recover<I: Io>(
    io: &I,
    dir: &Path,
    config: &LogConfig,
) -> Result<Recovered<I::Map>, StorageError> {
    let mut report = RecoveryReport::default();
    let list = || io.list(dir).map_err(|e| StorageError::io("list", dir, e));
    let mut names = list()?;
    if rename_misnamed(io, dir, &names, &mut report)? {
        names = list()?;
    }
    let mut bases: Vec<u64> = names
        .iter()
        .filter_map(|n| segment::parse_file_name(n))
        .filter(|&b| b < super::OFFSET_MAX)
        .collect();
    bases.sort_unstable();
    for name in &names {
        let is_segment = segment::parse_file_name(name).is_some_and(|b| b < super::OFFSET_MAX);
        let is_live_index = name
            .strip_suffix(".index")
            .and_then(|d| segment::parse_file_name(&format!("{d}.log")))
            .is_some_and(|b| bases.binary_search(&b).is_ok());
        if !is_segment && !is_live_index && !name.ends_with(QUARANTINE_SUFFIX) {
            tracing::debug!(dir = %dir.display(), file = %name, "removing stray file");
            remove_quietly(io, &dir.join(name))?;
            report.stray_files_removed.push(name.clone());
        }
    }

    // Stored records are held to the format's limit, not the configured `record_bytes_max`: a
    // lowered limit applies to new appends only and must not cut acknowledged data.
    let max = record::ARCHIVE_LEN_MAX;
    let interval = config.index_interval_bytes;
    let mut segments: VecDeque<Segment<I::Map>> = VecDeque::new();
    let mut expected: Option<u64> = None;
    let mut last_ts = i64::MIN;
    let mut cut = false;
    for (i, &base) in bases.iter().enumerate() {
        let path = dir.join(segment::file_name(base));
        let index_path = dir.join(segment::index_name(base));
        if cut {
            quarantine(
                io,
                dir,
                &segment::file_name(base),
                "it follows a cut in the log",
                &mut report,
            )?;
            remove_quietly(io, &index_path)?;
            report.segments_removed.push(base);
            continue;
        }
        if let Some(e) = expected {
            if base != e {
                report.truncation = Some(Truncation {
                    segment: base,
                    position: 0,
                    next_offset: e,
                    reason: TruncationReason::SegmentGap {
                        expected: e,
                        found: base,
                    },
                });
                cut = true;
                quarantine(
                    io,
                    dir,
                    &segment::file_name(base),
                    &format!("the log before it ends at {e}, it starts at {base}"),
                    &mut report,
                )?;
                remove_quietly(io, &index_path)?;
                report.segments_removed.push(base);
                continue;
            }
        }
        let is_last = i + 1 == bases.len();
        // No full reservation here: the active segment grows its own when appends need it. A
        // last segment cut short of its reservation (a file truncated by hand or by a tool) is
        // extended to the next growth step, so the bytes it lost read as zeros, as they would
        // after a power cut, and a record that lost only its zero padding is kept.
        let mut map = io
            .open(&path, None)
            .map_err(|e| StorageError::io("open segment", &path, e))?;
        let step = super::log::GROW_BYTES_MIN;
        if is_last && map.len() % step != 0 {
            map = io
                .open(&path, Some(map.len().next_multiple_of(step)))
                .map_err(|e| StorageError::io("extend segment", &path, e))?;
        }
        let map = Arc::new(map);
        // SAFETY: nobody else holds this mapping yet.
        let data = unsafe { map.slice(0, map.len()) };
        let checkpoint = io
            .read_file(&index_path)
            .map_err(|e| StorageError::io("read", &index_path, e))?
            .and_then(|b| Checkpoint::decode(&b).ok());
        let start = checkpoint
            .as_ref()
            .and_then(|cp| trusted_start(cp, base, data, last_ts, interval, max));
        let rebuilt = start.is_none();
        let (position, offset, previous_ts, mut index) =
            start.unwrap_or((0, base, i64::MIN, SegmentIndex::new(interval)));
        let s = scan(
            data,
            base,
            position,
            offset,
            previous_ts.max(last_ts),
            &mut index,
            max,
        );
        report.records_verified += s.records;
        let first_ts = if s.next_offset > base {
            record::decode_header(data, 0, max)
                .ok()
                .map(|h| h.timestamp_ms)
        } else {
            None
        };
        let mut segment = Segment::new(base, path.clone(), map, interval);
        segment.len = s.position;
        segment.next_offset = s.next_offset;
        segment.index = index;
        segment.max_timestamp_ms = if s.next_offset > base {
            s.max_timestamp_ms
        } else {
            i64::MIN
        };
        segment.first_timestamp_ms = first_ts;
        // A segment that is followed by one starting exactly where its valid records end is
        // complete: whatever fails after them is its unused tail (stale bytes of a recycled file),
        // not damage, and cutting there would delete acknowledged records of later segments.
        let followed = bases.get(i + 1) == Some(&s.next_offset) && s.next_offset > base;
        let end = match s.end {
            ScanEnd::Cut(_) if followed => ScanEnd::Clean,
            end => end,
        };
        if let ScanEnd::Cut(reason) = end {
            tracing::warn!(dir = %dir.display(), segment = base, position = s.position, %reason, "cutting log at invalid record");
            report.truncation = Some(Truncation {
                segment: base,
                position: s.position,
                next_offset: s.next_offset,
                reason: TruncationReason::Record(reason),
            });
            cut = true;
        }
        if s.next_offset > base {
            last_ts = last_ts.max(s.max_timestamp_ms);
        }
        let keep_as_active = is_last || cut;
        if !keep_as_active && segment.is_empty() {
            // A segment with no record in the middle of the log holds nothing: drop it.
            tracing::info!(dir = %dir.display(), segment = base, "removing an empty segment in the middle of the log");
            remove_quietly(io, &path)?;
            remove_quietly(io, &index_path)?;
            report.segments_removed.push(base);
            continue;
        }
        if keep_as_active {
            // Erase everything past the last valid record (rules 5 and 6). The log extends the
            // reservation when an append needs it.
            let next = segment.next_offset;
            segment
                .cut(segment.len, next)
                .map_err(|e| StorageError::io("erase tail of", &path, e))?;
            if cut && !rebuilt {
                remove_quietly(io, &index_path)?;
            }
        }
        segment
            .map
            .flush()
            .map_err(|e| StorageError::io("flush recovered", &path, e))?;
        if rebuilt && !keep_as_active {
            io.write_file(&index_path, &segment.checkpoint().encode())
                .map_err(|e| StorageError::io("write checkpoint", &index_path, e))?;
        }
        if rebuilt && s.records > 0 {
            report.indexes_rebuilt.push(base);
        }
        expected = Some(segment.next_offset);
        segments.push_back(segment);
    }

    if segments.is_empty() {
        // A new log reserves nothing yet: its first append grows the segment (see Log::append).
        let path = dir.join(segment::file_name(0));
        let map = io
            .create(&path, 0)
            .map_err(|e| StorageError::io("create segment", &path, e))?;
        segments.push_back(Segment::new(0, path, Arc::new(map), interval));
    }
    // Rule 7: every name found, created, renamed or removed above is durable before the log
    // acknowledges anything as durable (a restart right after a roll must not serve durable acks
    // from a segment whose name a power cut can still take back).
    io.sync_dir(dir)
        .map_err(|e| StorageError::io("sync dir", dir, e))?;
    // Only the last segment may be active: a cut in the middle deleted everything after it.
    let next_offset = segments.back().map_or(0, |s| s.next_offset);
    report.segments = segments.len();
    report.next_offset = next_offset;
    Ok(Recovered {
        segments,
        next_offset,
        last_timestamp_ms: last_ts,
        report,
    })
}
