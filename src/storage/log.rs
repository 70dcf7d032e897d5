//! The log of one partition: an ordered list of segments, the last one active.
//!
//! The log assigns offsets and append times, rolls segments by size and age, enforces retention by
//! bytes and age, truncates, serves reads as slices of whole records, and hands durability to the
//! flusher. It is owned by one thread (the partition's shard) and takes `&mut self` for every
//! change; readers get [`Slice`]s that keep their segment's mapping alive even if retention deletes
//! the file.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::flush::{AfterFlush, DurableWait, FlushPool, Flusher, PoolShared};
use super::io::{Io, SegmentMap};
use super::recovery::{self, RecoveryReport};
use super::segment::{self, Segment};
use super::{Durability, LogConfig, StorageError};
use crate::record::{self, Check, Message, RecordError, HEADER_LEN, RECORD_ALIGN};

/// The wall clock the log stamps appends with, in ms since the Unix epoch; replaceable in tests.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

fn system_clock() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Name of the file the next segment is prepared under before it gets its base offset.
const PREPARED_NAME: &str = "next.segment.prepared";
/// Name of a retired segment file kept for reuse as the next segment.
const RECYCLED_NAME: &str = "next.segment.recycled";
/// Written (durably) into a log's directory when a flush fails; while it is there the log does
/// not open. See [`StorageError::FailStopped`].
pub const FAILED_MARKER: &str = "FAILED";
/// How far ahead of the CRC check a read asks the CPU to load the records. Reads stream from
/// memory (the records were written long before), and the hardware prefetcher stops at every
/// 4 KiB page boundary; asking two pages ahead hides that latency.
const PREFETCH_BYTES: usize = 8 << 10;
/// Smallest step by which the first segment of a log grows its reservation. A new log reserves
/// nothing; its active segment grows (doubling, from this) as records arrive, so that ten thousand
/// mostly idle partitions do not reserve ten thousand full segments. Prepared and recycled
/// segments are reserved whole, off the shard thread.
pub(crate) const GROW_BYTES_MIN: usize = 64 << 10;

/// Starts loading `bytes` into the CPU caches (a hint: nothing happens where unsupported).
#[inline]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch is a hint that never faults and reads nothing into the program; the
        // address is inside `bytes` anyway.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// The offsets an append was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the first record of the batch.
    pub base_offset: u64,
    /// Offset after the last record of the batch.
    pub next_offset: u64,
    /// Append time stamped on every record of the batch.
    pub timestamp_ms: i64,
}

impl Appended {
    /// Records in the batch.
    pub fn count(&self) -> u64 {
        self.next_offset - self.base_offset
    }
}

/// A run of whole, CRC-checked records borrowed from a segment mapping. Holding it keeps the
/// mapping alive (even after retention deletes the file) and blocks truncation of those bytes.
pub struct Slice<M: SegmentMap> {
    map: Arc<M>,
    _reader: Arc<()>,
    start: usize,
    len: usize,
    /// Offset of the first record in the slice.
    pub first_offset: u64,
    /// Offset after the last record in the slice.
    pub next_offset: u64,
}

impl<M: SegmentMap> Slice<M> {
    /// The records, exactly as stored: ready to send.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the range was written and published before the slice was made; the segment never
        // rewrites published bytes while a reader token (held by us) is alive.
        unsafe { self.map.slice(self.start, self.len) }
    }

    /// Records in the slice.
    pub fn count(&self) -> u64 {
        self.next_offset - self.first_offset
    }

    /// True when the slice holds no record (a read at the end of the log).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A partition log. See the module documentation of [`crate::storage`].
pub struct Log<I: Io> {
    io: I,
    dir: PathBuf,
    config: LogConfig,
    segments: VecDeque<Segment<I::Map>>,
    next_offset: u64,
    last_timestamp_ms: i64,
    flusher: Flusher,
    /// The storage threads this log's flushes and segment preparations run on.
    pool: Arc<PoolShared>,
    preparing: Option<Receiver<std::io::Result<I::Map>>>,
    /// A retired segment file waits under `RECYCLED_NAME` to become the next segment.
    spare: bool,
    clock: Clock,
    /// Aligned copy of a batch that arrived in a misaligned buffer, and the encoding buffer of
    /// [`Log::append_message`]: reused, so steady appends allocate nothing.
    scratch: rkyv::util::AlignedVec<16>,
    encode_buf: Vec<u8>,
    /// A pool of its own when the log was opened without one ([`Log::open`]). Declared last: it
    /// is dropped (joining its thread) after the flusher that uses it.
    own_pool: Option<FlushPool>,
}

fn dyn_map<M: SegmentMap>(m: &Arc<M>) -> Arc<dyn SegmentMap> {
    m.clone()
}

impl<I: Io> Log<I> {
    /// Opens (or creates) the log in `dir`, recovering whatever a crash left there.
    ///
    /// # Examples
    /// ```
    /// use levee::storage::{Log, LogConfig, SimIo};
    /// use levee::record::Message;
    ///
    /// let (mut log, _report) = Log::open(SimIo::new(), "/data/t-0", LogConfig::default()).unwrap();
    /// let a = log.append_message(&Message { value: b"hi".to_vec(), ..Default::default() }).unwrap();
    /// log.flush().unwrap();
    /// let slice = log.read(a.base_offset, 1 << 20).unwrap();
    /// assert_eq!(slice.count(), 1);
    /// ```
    pub fn open(
        io: I,
        dir: impl Into<PathBuf>,
        config: LogConfig,
    ) -> Result<(Self, RecoveryReport), StorageError> {
        let dir = dir.into();
        // Two threads: one can prepare the next segment while the other flushes.
        let pool = FlushPool::new(2).map_err(|e| StorageError::io("start flusher for", &dir, e))?;
        let (mut log, report) = Self::open_in(&pool, io, dir, config)?;
        log.own_pool = Some(pool);
        Ok((log, report))
    }

    /// Opens (or creates) the log in `dir`, its flushes and segment preparations running on
    /// `pool`'s threads (a broker shares one pool among all its logs).
    pub fn open_in(
        pool: &FlushPool,
        io: I,
        dir: impl Into<PathBuf>,
        config: LogConfig,
    ) -> Result<(Self, RecoveryReport), StorageError> {
        config.validate()?;
        let dir = dir.into();
        super::io::create_dir_durable(&io, &dir)
            .map_err(|e| StorageError::io("create dir", &dir, e))?;
        let marker = dir.join(FAILED_MARKER);
        if let Some(reason) = io
            .read_file(&marker)
            .map_err(|e| StorageError::io("read", &marker, e))?
        {
            return Err(StorageError::FailStopped {
                marker,
                reason: String::from_utf8_lossy(&reason).into_owned(),
            });
        }
        let recovered = recovery::recover(&io, &dir, &config)?;
        let interval = match config.durability {
            Durability::Interval(d) => Some(d),
            Durability::Sync | Durability::None => None,
        };
        let (sync_io, write_io, fail_io) = (io.clone(), io.clone(), io.clone());
        let flusher = Flusher::start(
            pool.shared(),
            dir.clone(),
            recovered.next_offset,
            interval,
            Box::new(move |d| sync_io.sync_dir(d)),
            Box::new(move |p, b| write_io.write_file(p, b)),
            Box::new(move |reason| {
                if let Err(e) = fail_io.write_file_durable(&marker, reason.as_bytes()) {
                    tracing::error!(marker = %marker.display(), error = %e, "fail-stop marker not written");
                }
            }),
        );
        // Recovery flushed every recovered segment: only the active one takes bytes to flush.
        if let Some(active) = recovered.segments.back() {
            flusher.add_map(dyn_map(&active.map), false);
        }
        let log = Log {
            io,
            dir,
            config,
            next_offset: recovered.next_offset,
            last_timestamp_ms: recovered.last_timestamp_ms,
            segments: recovered.segments,
            flusher,
            pool: pool.shared().clone(),
            preparing: None,
            spare: false,
            clock: Arc::new(system_clock),
            scratch: rkyv::util::AlignedVec::new(),
            encode_buf: Vec::new(),
            own_pool: None,
        };
        Ok((log, recovered.report))
    }

    /// Changes the retention limits (a topic was altered); applied at the next retention pass.
    pub fn set_retention(&mut self, retention_bytes: Option<u64>, retention_ms: Option<u64>) {
        self.config.retention_bytes = retention_bytes;
        self.config.retention_ms = retention_ms;
    }

    /// Replaces the clock (tests of age-based roll and retention).
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration the log runs with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// The first offset still stored.
    pub fn earliest_offset(&self) -> u64 {
        self.segments
            .front()
            .map_or(self.next_offset, |s| s.base_offset)
    }

    /// The offset the next record will get (the log end offset).
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Every offset below this is durable.
    pub fn durable_offset(&self) -> u64 {
        self.flusher.durable()
    }

    /// A listener notified when the durable offset next moves; it does not ask for a flush.
    pub fn watch_durable(&self) -> event_listener::EventListener {
        self.flusher.watch()
    }

    /// Bytes of records stored.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len as u64).sum()
    }

    /// `(base offset, next offset, bytes)` of every segment, oldest first.
    pub fn segments(&self) -> Vec<(u64, u64, usize)> {
        self.segments
            .iter()
            .map(|s| (s.base_offset, s.next_offset, s.len))
            .collect()
    }

    /// Number of segments, the active one included.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Flush rounds completed so far (one round can cover many appends: group commit).
    pub fn flush_count(&self) -> u64 {
        self.flusher.flush_count()
    }

    fn check_writable(&self) -> Result<(), StorageError> {
        if self.flusher.failed() {
            if let Some(source) = self.flusher.error() {
                return Err(StorageError::Failed {
                    dir: self.dir.clone(),
                    source,
                });
            }
        }
        Ok(())
    }

    fn active(&mut self) -> &mut Segment<I::Map> {
        self.segments
            .back_mut()
            .expect("a log always has an active segment")
    }

    /// Appends a batch: a run of whole records as a producer sends them (see [`crate::record`]).
    ///
    /// Every record is checked first (length, archive CRC, padding, archive structure); if any
    /// fails, nothing is written. Then each header is stamped in place with its offset and the
    /// append time, and the run is copied into the active segment with one copy. A batch never
    /// spans segments: the segment rolls first if the batch does not fit.
    ///
    /// Under [`Durability::Sync`] the append also asks for a flush; acknowledge it only once
    /// [`Log::wait_durable`] for `next_offset` resolves.
    pub fn append(&mut self, run: &mut [u8]) -> Result<Appended, StorageError> {
        if (run.as_ptr() as usize) % RECORD_ALIGN != 0 {
            // rkyv validates archives in place, which needs alignment: copy once into our aligned
            // scratch. Network buffers of the server are aligned, so this is the rare path.
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.clear();
            scratch.extend_from_slice(run);
            let result = self.append_aligned(&mut scratch);
            if result.is_ok() {
                run.copy_from_slice(&scratch);
            }
            self.scratch = scratch;
            return result;
        }
        self.append_aligned(run)
    }

    fn append_aligned(&mut self, run: &mut [u8]) -> Result<Appended, StorageError> {
        self.check_writable()?;
        let max = self.config.record_bytes_max;
        let mut position = 0;
        let mut count = 0usize;
        while position < run.len() {
            let len = record::check_produced(run, position, max).map_err(|source| {
                StorageError::InvalidRecord {
                    index: count,
                    source,
                }
            })?;
            position += len;
            count += 1;
        }
        if count == 0 {
            return Err(StorageError::InvalidRecord {
                index: 0,
                source: RecordError::Truncated {
                    position: 0,
                    needed: record::HEADER_LEN,
                    available: 0,
                },
            });
        }
        if self
            .next_offset
            .checked_add(count as u64)
            .is_none_or(|end| end > super::OFFSET_MAX)
        {
            return Err(StorageError::OffsetsExhausted {
                dir: self.dir.clone(),
                next: self.next_offset,
            });
        }
        if run.len() > self.config.segment_bytes {
            return Err(StorageError::InvalidRecord {
                index: 0,
                source: RecordError::BadLength {
                    position: 0,
                    len: run.len(),
                    limit: self.config.segment_bytes,
                },
            });
        }
        // Append times never decrease, even if the wall clock steps back: the time index and
        // seek-by-time rely on it.
        let now = (self.clock)().max(self.last_timestamp_ms);
        self.roll_if_needed(run.len(), now)?;

        let base_offset = self.next_offset;
        let segment = self
            .segments
            .back_mut()
            .expect("a log always has an active segment");
        let mut offset = base_offset;
        let mut position = 0;
        while position < run.len() {
            let len = record::record_len(read_archive_len(run, position));
            record::stamp_header(&mut run[position..], offset, now);
            let relative = (offset - segment.base_offset) as u32;
            segment
                .index
                .on_append(relative, (segment.len + position) as u32, now, len);
            position += len;
            offset += 1;
        }
        segment.first_timestamp_ms.get_or_insert(now);
        segment.write(run, offset, now);
        let half_full = segment.len > self.config.segment_bytes / 2;
        self.next_offset = offset;
        self.last_timestamp_ms = now;
        self.flusher.published(offset);
        if self.config.durability == Durability::Sync {
            self.flusher.request(offset);
        }
        if half_full && self.preparing.is_none() {
            self.prepare_next();
        }
        Ok(Appended {
            base_offset,
            next_offset: offset,
            timestamp_ms: now,
        })
    }

    /// Encodes `message` and appends it (convenience for tests and tools; producers send batches).
    pub fn append_message(&mut self, message: &Message) -> Result<Appended, StorageError> {
        let mut buf = std::mem::take(&mut self.encode_buf);
        buf.clear();
        let result = record::encode(message, &mut buf)
            .map_err(|source| StorageError::InvalidRecord { index: 0, source })
            .and_then(|_| self.append(&mut buf));
        self.encode_buf = buf;
        result
    }

    fn roll_if_needed(&mut self, needed: usize, now: i64) -> Result<(), StorageError> {
        let segment_ms = self.config.segment_ms as i64;
        let segment_bytes = self.config.segment_bytes;
        let active = self.active();
        let too_old = active
            .first_timestamp_ms
            .is_some_and(|first| now.saturating_sub(first) >= segment_ms);
        // An empty segment never rolls: its successor would have the same base offset, and so the
        // same name. A batch always fits an empty segment (append checked it against the limit).
        let full = active.len + needed > segment_bytes;
        if !active.is_empty() && (too_old || full) {
            return self.roll();
        }
        if needed > active.remaining() {
            self.grow_active(needed)?;
        }
        Ok(())
    }

    /// Extends the active segment's reservation to hold `needed` more bytes: doubling, from
    /// [`GROW_BYTES_MIN`], up to `segment_bytes`.
    fn grow_active(&mut self, needed: usize) -> Result<(), StorageError> {
        let segment_bytes = self.config.segment_bytes;
        let io = self.io.clone();
        let active = self.active();
        let want = (active.len + needed).next_multiple_of(GROW_BYTES_MIN);
        let len = want
            .max(active.map.len().saturating_mul(2))
            .min(segment_bytes);
        assert!(len >= active.len + needed, "grown past the segment limit");
        let path = active.path.clone();
        let bigger = Arc::new(
            io.open(&path, Some(len))
                .map_err(|e| reserve_error("grow segment", &path, len, e))?,
        );
        // Slices of the old mapping stay valid: the file only grew, and bytes before `len` never
        // change. The flusher flushes the file through the new mapping from now on.
        let old = std::mem::replace(&mut active.map, bigger);
        let new = dyn_map(&active.map);
        self.flusher.replace_map(&dyn_map(&old), new);
        Ok(())
    }

    /// The work of preparing the next segment: reuse the spare file if there is one, else create.
    fn preparation(&mut self) -> impl FnOnce() -> std::io::Result<I::Map> + Send + 'static {
        let io = self.io.clone();
        let prepared = self.dir.join(PREPARED_NAME);
        let spare = std::mem::take(&mut self.spare).then(|| self.dir.join(RECYCLED_NAME));
        let len = self.config.segment_bytes;
        let dir = self.dir.clone();
        let retired_durably = self.flusher.dir_changes_durable();
        move || match spare {
            Some(spare) => {
                // The file's old name must be durably gone before a byte of the new segment goes
                // in: otherwise a power cut can bring back the new records under the old name.
                // A flush since the retirement usually synced the directory already; under
                // sustained load one always has, and no extra directory fsync is paid.
                if !retired_durably() {
                    io.sync_dir(&dir)?;
                }
                io.recycle(&spare, &prepared, len).or_else(|e| {
                    tracing::warn!(error = %e, "segment not recycled; creating a new one");
                    let _ = io.remove(&spare);
                    io.create(&prepared, len)
                })
            }
            None => io.create(&prepared, len),
        }
    }

    /// Starts reserving and pre-faulting the next segment on a storage thread.
    fn prepare_next(&mut self) {
        let job = self.preparation();
        self.preparing = Some(super::flush::spawn_on(&self.pool, job));
    }

    fn take_prepared(&mut self) -> Result<I::Map, StorageError> {
        let prepared = self.dir.join(PREPARED_NAME);
        let len = self.config.segment_bytes;
        let made = match self.preparing.take().map(|rx| rx.recv()) {
            Some(Ok(Ok(map))) => Ok(map),
            // The job failed or was lost: try once more here, so a transient error does not stick.
            Some(Ok(Err(_))) | Some(Err(_)) | None => (self.preparation())(),
        };
        made.map_err(|e| reserve_error("reserve segment", &prepared, len, e))
    }

    /// Seals the active segment and starts a new one at the log end.
    fn roll(&mut self) -> Result<(), StorageError> {
        let map = self.take_prepared()?;
        let base = self.next_offset;
        let path = self.dir.join(segment::file_name(base));
        let prepared = self.dir.join(PREPARED_NAME);
        self.io
            .rename(&prepared, &path)
            .map_err(|e| StorageError::io("rename prepared segment to", &path, e))?;
        let old = self.active();
        let checkpoint = old.checkpoint();
        let old_map = dyn_map(&old.map);
        let after = AfterFlush {
            path: old
                .path
                .with_file_name(segment::index_name(old.base_offset)),
            bytes: checkpoint.encode(),
            covers: old.next_offset,
        };
        let covers = old.next_offset;
        self.flusher.seal(&old_map, covers, after);
        let map = Arc::new(map);
        // Registered before any byte is written into it: see Flusher::add_map.
        self.flusher.add_map(dyn_map(&map), true);
        self.segments.push_back(Segment::new(
            base,
            path,
            map,
            self.config.index_interval_bytes,
        ));
        tracing::debug!(dir = %self.dir.display(), base, "rolled segment");
        Ok(())
    }

    /// Reads whole records starting at `offset`, up to `max_bytes` (but always at least one record
    /// when one exists), from a single segment. Every record returned passed its CRC checks and has
    /// the expected offset; reading at the log end returns an empty slice.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<Slice<I::Map>, StorageError> {
        self.read_below(offset, max_bytes, self.next_offset)
    }

    /// As [`Log::read`], returning only records below `below` (the durable offset, for a reader
    /// that must never see what a power cut can take back). From `below` up to the log end the
    /// slice is empty.
    pub fn read_below(
        &self,
        offset: u64,
        max_bytes: usize,
        below: u64,
    ) -> Result<Slice<I::Map>, StorageError> {
        let earliest = self.earliest_offset();
        if offset < earliest || offset > self.next_offset {
            return Err(StorageError::OffsetOutOfRange {
                requested: offset,
                earliest,
                next: self.next_offset,
            });
        }
        let i = self
            .segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        let segment = &self.segments[i];
        if offset == segment.next_offset || offset >= below {
            return Ok(Slice {
                map: segment.map.clone(),
                _reader: segment.readers.clone(),
                start: segment.len,
                len: 0,
                first_offset: offset,
                next_offset: offset,
            });
        }
        // Stored records are held to the format's limit, not today's `record_bytes_max`: lowering
        // the limit must not make acknowledged records unreadable (found by the fuzzer).
        let max = record::ARCHIVE_LEN_MAX;
        let corrupt = |at: u64, source| StorageError::Corrupt {
            offset: at,
            segment: segment.base_offset,
            source,
        };
        let start = segment
            .position_of(offset, max)
            .map_err(|e| corrupt(offset, e))?;
        let data = segment.written();
        let mut end = start;
        let mut at = offset;
        let mut ahead = start;
        while end < segment.len && at < below {
            let wanted = (end + PREFETCH_BYTES).min(segment.len);
            if wanted > ahead {
                prefetch(&data[ahead..wanted]);
                ahead = wanted;
            }
            let checked = record::decode(data, end, max, Check::Crc).and_then(|r| {
                if r.offset() == at {
                    Ok(r)
                } else {
                    Err(RecordError::Sequence {
                        position: end,
                        expected: at,
                        found: r.offset(),
                    })
                }
            });
            match checked {
                Ok(r) => {
                    if end > start && end - start + r.bytes.len() > max_bytes {
                        break;
                    }
                    end += r.bytes.len();
                    at += 1;
                    if end - start >= max_bytes {
                        break;
                    }
                }
                // Serve the good records before a bad one; the bad one itself is never served.
                Err(e) if end == start => return Err(corrupt(at, e)),
                Err(e) => {
                    tracing::error!(offset = at, segment = segment.base_offset, error = %e, "corrupt record");
                    break;
                }
            }
        }
        if end == start {
            // The segment's bookkeeping (from a checkpoint recovery trusted) promises a record
            // here but its bytes end, e.g. a damaged length under the checkpoint swallowed it: an
            // empty answer would leave a consumer polling forever (found by the recovery fuzzer).
            return Err(corrupt(
                offset,
                RecordError::Truncated {
                    position: start,
                    needed: HEADER_LEN,
                    available: segment.len.saturating_sub(start),
                },
            ));
        }
        Ok(Slice {
            map: segment.map.clone(),
            _reader: segment.readers.clone(),
            start,
            len: end - start,
            first_offset: offset,
            next_offset: at,
        })
    }

    /// The first offset whose append time is at or after `timestamp_ms`, or the log end if none.
    pub fn offset_at_time(&self, timestamp_ms: i64) -> Result<u64, StorageError> {
        // Append times never decrease, so segments are ordered by time too: skip those whose
        // newest record is older, then look inside the first candidate.
        let non_empty = self.segments.iter().take_while(|s| !s.is_empty()).count();
        let first = self
            .segments
            .range(..non_empty)
            .collect::<Vec<_>>()
            .partition_point(|s| s.max_timestamp_ms < timestamp_ms);
        for segment in self.segments.range(first..non_empty) {
            let found = segment
                .offset_at_time(timestamp_ms, record::ARCHIVE_LEN_MAX)
                .map_err(|source| StorageError::Corrupt {
                    offset: segment.base_offset,
                    segment: segment.base_offset,
                    source,
                })?;
            if let Some(offset) = found {
                return Ok(offset);
            }
        }
        Ok(self.next_offset)
    }

    /// A future resolving once every offset below `next_offset` is durable (asks for a flush).
    pub fn wait_durable(&self, next_offset: u64) -> DurableWait {
        self.flusher.wait(next_offset.min(self.next_offset))
    }

    /// Makes everything appended so far durable, blocking the calling thread.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.flusher
            .wait_blocking(self.next_offset)
            .map_err(|source| StorageError::Failed {
                dir: self.dir.clone(),
                source,
            })
    }

    /// Deletes sealed segments beyond the retention limits (bytes, then age). The active segment is
    /// never deleted. Returns the base offsets of the deleted segments.
    ///
    /// With `keep_from`, a segment holding any record at or above that offset is kept whatever
    /// its size or age (flow control: what a consumer group has not committed yet).
    pub fn enforce_retention(&mut self, keep_from: Option<u64>) -> Result<Vec<u64>, StorageError> {
        let now = (self.clock)();
        let mut removed = Vec::new();
        while self.segments.len() > 1 {
            let total = self.size_bytes();
            let oldest = &self.segments[0];
            if keep_from.is_some_and(|k| oldest.next_offset > k) {
                break;
            }
            let over_bytes = self.config.retention_bytes.is_some_and(|max| total > max);
            let over_age = self.config.retention_ms.is_some_and(|ms| {
                oldest.max_timestamp_ms < now.saturating_sub(ms.min(i64::MAX as u64) as i64)
            });
            if !(over_bytes || over_age) {
                break;
            }
            removed.push(self.delete_oldest()?);
        }
        Ok(removed)
    }

    /// Deletes the sealed segments holding only records below `offset` (what a broker-internal
    /// log no longer needs, whatever its age or size). The active segment is never deleted.
    /// Returns the base offsets of the deleted segments.
    pub fn delete_below(&mut self, offset: u64) -> Result<Vec<u64>, StorageError> {
        let mut removed = Vec::new();
        while self.segments.len() > 1 && self.segments[1].base_offset <= offset {
            removed.push(self.delete_oldest()?);
        }
        Ok(removed)
    }

    /// Seals the active segment and starts a new one, unless the active segment is empty. Flow
    /// control rolls early so that dropping the oldest segment frees a bounded share of a
    /// backlog.
    pub fn roll_active(&mut self) -> Result<(), StorageError> {
        self.check_writable()?;
        if self.active().is_empty() {
            return Ok(());
        }
        self.roll()
    }

    /// Deletes the oldest segment when a newer one exists; returns its base offset.
    pub fn drop_oldest(&mut self) -> Result<Option<u64>, StorageError> {
        if self.segments.len() < 2 {
            return Ok(None);
        }
        self.delete_oldest().map(Some)
    }

    /// Deletes the oldest segment (there is a newer one) and its index; returns its base offset.
    fn delete_oldest(&mut self) -> Result<u64, StorageError> {
        assert!(
            self.segments.len() > 1,
            "the active segment is never deleted"
        );
        let oldest = self.segments.pop_front().expect("more than one segment");
        self.flusher.forget_map(&dyn_map(&oldest.map));
        if !self.spare && oldest.recyclable() {
            // Keep the file, and its resident pages, for the next segment.
            let spare = self.dir.join(RECYCLED_NAME);
            self.io
                .rename(&oldest.path, &spare)
                .map_err(|e| StorageError::io("keep for reuse segment", &oldest.path, e))?;
            self.spare = true;
        } else {
            self.io
                .remove(&oldest.path)
                .map_err(|e| StorageError::io("delete segment", &oldest.path, e))?;
        }
        let index = oldest
            .path
            .with_file_name(segment::index_name(oldest.base_offset));
        if let Err(e) = self.io.remove(&index) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(StorageError::io("delete index", &index, e));
            }
        }
        tracing::info!(dir = %self.dir.display(), base = oldest.base_offset, "retention deleted segment");
        self.flusher.dir_changed();
        Ok(oldest.base_offset)
    }

    /// Removes every record at or after `next_offset`. Fails if a reader still holds a slice of
    /// the removed records. The cut is flushed before this returns.
    pub fn truncate(&mut self, next_offset: u64) -> Result<(), StorageError> {
        if next_offset >= self.next_offset {
            return Ok(());
        }
        let earliest = self.earliest_offset();
        if next_offset < earliest {
            return Err(StorageError::OffsetOutOfRange {
                requested: next_offset,
                earliest,
                next: self.next_offset,
            });
        }
        let keep = self
            .segments
            .partition_point(|s| s.base_offset <= next_offset)
            .max(1);
        if self
            .segments
            .range(keep - 1..)
            .any(|s| Arc::strong_count(&s.readers) > 1)
        {
            return Err(StorageError::ReadersActive {
                offset: next_offset,
            });
        }
        while self.segments.len() > keep {
            let gone = self.segments.pop_back().expect("len > keep");
            self.flusher.forget_map(&dyn_map(&gone.map));
            self.flusher.dir_changed();
            for path in [
                gone.path.clone(),
                gone.path
                    .with_file_name(segment::index_name(gone.base_offset)),
            ] {
                match self.io.remove(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StorageError::io("delete", &path, e)),
                }
            }
        }
        // Stored records are held to the format's limit, not today's `record_bytes_max`: lowering
        // the limit must not make acknowledged records unreadable (found by the fuzzer).
        let max = record::ARCHIVE_LEN_MAX;
        let segment_bytes = self.config.segment_bytes;
        let io = self.io.clone();
        let segment = self.active();
        let position = if next_offset == segment.next_offset {
            segment.len
        } else {
            segment
                .position_of(next_offset, max)
                .map_err(|source| StorageError::Corrupt {
                    offset: next_offset,
                    segment: segment.base_offset,
                    source,
                })?
        };
        // The segment becomes the active one again: make sure its file has the full reservation
        // (a file recovered shorter, or written under a smaller segment_bytes, may not).
        let path = segment.path.clone();
        let map = Arc::new(
            io.open(&path, Some(segment_bytes))
                .map_err(|e| StorageError::io("reopen segment", &path, e))?,
        );
        let old = std::mem::replace(&mut segment.map, map);
        let new_map = dyn_map(&segment.map);
        segment
            .cut(position, next_offset)
            .map_err(|e| StorageError::io("cut segment", &path, e))?;
        segment
            .map
            .flush()
            .map_err(|e| StorageError::io("flush cut of", &path, e))?;
        let index = path.with_file_name(segment::index_name(segment.base_offset));
        match io.remove(&index) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("delete", &index, e)),
        }
        self.flusher.forget_map(&dyn_map(&old));
        self.flusher.add_map(new_map, false);
        self.flusher.truncated(next_offset);
        self.next_offset = next_offset;
        Ok(())
    }

    /// Flushes everything, writes the active segment's checkpoint and stops the flusher. A log that
    /// is dropped without `close` loses nothing that was durable; the next open rescans its tail.
    pub fn close(mut self) -> Result<(), StorageError> {
        self.flush()?;
        if let Some(rx) = self.preparing.take() {
            let _ = rx.recv();
        }
        let active = self.active();
        let segment_path = active.path.clone();
        active
            .erase_tail()
            .and_then(|()| active.map.flush())
            .map_err(|e| StorageError::io("erase tail of", &segment_path, e))?;
        let path = active
            .path
            .with_file_name(segment::index_name(active.base_offset));
        let bytes = active.checkpoint().encode();
        self.io
            .write_file(&path, &bytes)
            .map_err(|e| StorageError::io("write checkpoint", &path, e))?;
        Ok(())
    }
}

/// A failed reservation: `NoSpace` when the disk is full (nothing was written), else the I/O error.
fn reserve_error(op: &'static str, path: &Path, bytes: usize, e: std::io::Error) -> StorageError {
    if e.kind() == std::io::ErrorKind::StorageFull {
        StorageError::NoSpace {
            path: path.to_owned(),
            bytes,
        }
    } else {
        StorageError::io(op, path, e)
    }
}

#[inline]
fn read_archive_len(run: &[u8], position: usize) -> usize {
    let mut b = [0u8; 4];
    b.copy_from_slice(&run[position + 4..position + 8]);
    u32::from_le_bytes(b) as usize
}
