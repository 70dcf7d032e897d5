//! Storage engine benchmarks on the real `MmapIo` backend (files in a temporary directory under
//! cargo's `target/tmp`, on the disk under test, not on a possible tmpfs `/tmp`).
//!
//! - `append/none/{100B,1KiB,16KiB}`: 1 MiB batches into a log under `Durability::None`, rolling
//!   through 128 MiB segments; retention (1 GiB) runs every 64 batches outside the timed part
//!   (its cost is printed). Measured in the steady state: the log is first filled past retention,
//!   so that rolls reuse retired segment files (the fill time is printed too).
//! - `append/sync_1MiB_commit/1KiB`: `Durability::Sync`, each 1 MiB batch followed by the blocking
//!   `Log::flush` (one commit in flight: the same pattern as `fio --bs=1M --fdatasync=1`).
//! - `append/sync_1MiB_commit_pipelined/1KiB`: the same, but up to 2 commits in flight, waited on
//!   with `Log::wait_durable` futures and a small `block_on` (how a shard overlaps appends with the
//!   flusher).
//! - `read/resident/1KiB`, `read/cold/1KiB`: a front-to-back read of a 256 MiB log with
//!   `Log::read(offset, 1 MiB)`, walking every slice with `Records` (which CRC-checks each record
//!   again). Cold: before each pass, the pages are unmapped (`MADV_DONTNEED`) and evicted from the
//!   page cache (`POSIX_FADV_DONTNEED`, or `drop_caches` if that did not evict them).
//! - `open/cold/256MiB`: `Log::open` (recovery) of the same 256 MiB log with a cold page cache.
//! - `index/lookup`: `Log::read(random offset, 1)` and `Log::offset_at_time(random time)` on a log
//!   of 3 M small records in 16 MiB segments.

use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use criterion::{
    black_box, criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use levee::record::{self, Message, Records};
use levee::storage::{Durability, Io, Log, LogConfig, MmapIo};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rkyv::util::AlignedVec;
use tempfile::TempDir;

const MIB: usize = 1 << 20;
const BATCH_BYTES: usize = MIB;
const RETENTION_BYTES: u64 = 1 << 30;
/// Bytes appended before the append benchmarks measure: by then retention recycles segment files.
const STEADY_BYTES: u64 = RETENTION_BYTES + (256 << 20);
/// Batches between two retention passes (64 MiB of 1 MiB batches).
const RETENTION_EVERY: u64 = 64;
const READ_LOG_BYTES: usize = 256 * MIB;
const PAGE: usize = 4096;

type MmapLog = Log<MmapIo>;

/// A directory on the disk under test: cargo's `target/tmp` (`/tmp` may be a tmpfs).
fn bench_dir() -> TempDir {
    let parent = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(parent).expect("create target/tmp");
    tempfile::Builder::new()
        .prefix("levee-storage-")
        .tempdir_in(parent)
        .expect("temp dir")
}

/// Whole records of `value_len`-byte messages, as a producer sends them, to at least `bytes`,
/// in a 16-byte aligned buffer (`Log::append` takes an aligned run).
fn batch(value_len: usize, bytes: usize) -> AlignedVec<16> {
    let message = Message {
        value: vec![0xa5; value_len],
        ..Default::default()
    };
    let mut encoded = Vec::new();
    while encoded.len() < bytes {
        record::encode(&message, &mut encoded).expect("encode");
    }
    let mut aligned = AlignedVec::<16>::with_capacity(encoded.len());
    aligned.extend_from_slice(&encoded);
    aligned
}

fn open(dir: &Path, config: LogConfig) -> MmapLog {
    Log::open(MmapIo::default(), dir, config)
        .expect("open log")
        .0
}

/// Blocks the calling thread on a future (the flusher wakes it from its own thread).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// Appends a batch; the producer fields are untouched by the stamping, so the same buffer can be
/// appended again and again.
fn append(log: &mut MmapLog, batch: &mut AlignedVec<16>) -> u64 {
    log.append(batch.as_mut_slice())
        .expect("append")
        .next_offset
}

/// A log that keeps appending one batch: created on the first run of its benchmark (criterion
/// calls a benchmark's closure once per sample, and not at all when the filter excludes it).
struct Appender {
    _dir: TempDir,
    log: MmapLog,
    run: AlignedVec<16>,
    appended: u64,
    /// Segments retired by retention (deleted or kept for reuse), and the time `enforce_retention`
    /// took (total, longest).
    retired: usize,
    retention: Duration,
    retention_max: Duration,
}

impl Appender {
    fn new(durability: Durability, value_len: usize) -> Self {
        let dir = bench_dir();
        let log = open(
            dir.path(),
            LogConfig {
                durability,
                retention_bytes: Some(RETENTION_BYTES),
                ..Default::default()
            },
        );
        let mut a = Appender {
            _dir: dir,
            log,
            run: batch(value_len, BATCH_BYTES),
            appended: 0,
            retired: 0,
            retention: Duration::ZERO,
            retention_max: Duration::ZERO,
        };
        // Reach the steady state first: until retention starts retiring segments, every new
        // segment is a fresh file whose pages must be allocated and zeroed (≈0.45 GB/s on this
        // VM); afterwards retired files are recycled with their resident pages.
        let start = Instant::now();
        while a.appended * (a.run.len() as u64) < STEADY_BYTES {
            if a.append().1 {
                a.enforce_retention();
            }
        }
        eprintln!(
            "fill to the steady state: {} MiB in {:.2} s",
            (a.appended * a.run.len() as u64) >> 20,
            start.elapsed().as_secs_f64()
        );
        a
    }

    /// Appends one batch; returns its next offset and whether retention is due.
    fn append(&mut self) -> (u64, bool) {
        let next = append(&mut self.log, &mut self.run);
        self.appended += 1;
        (next, self.appended % RETENTION_EVERY == 0)
    }

    /// Runs retention (untimed by the benchmarks; its cost is reported at close).
    fn enforce_retention(&mut self) {
        let start = Instant::now();
        self.retired += self.log.enforce_retention(None).expect("retention").len();
        let took = start.elapsed();
        self.retention += took;
        self.retention_max = self.retention_max.max(took);
    }

    fn close(self) {
        if self.retired > 0 {
            eprintln!(
                "retention retired {} segments of 128 MiB: {:.1} ms per segment, longest pass {:.1} ms",
                self.retired,
                self.retention.as_secs_f64() * 1e3 / self.retired as f64,
                self.retention_max.as_secs_f64() * 1e3
            );
        }
        self.log.close().expect("close");
    }
}

fn bench_append_none(c: &mut Criterion) {
    let mut group = c.benchmark_group("append/none");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, value_len) in [("100B", 100), ("1KiB", 1024), ("16KiB", 16 * 1024)] {
        group.throughput(Throughput::Bytes(batch(value_len, BATCH_BYTES).len() as u64));
        let mut state: Option<Appender> = None;
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            let a = state.get_or_insert_with(|| Appender::new(Durability::None, value_len));
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let (next, retention_due) = a.append();
                    timed += start.elapsed();
                    black_box(next);
                    if retention_due {
                        a.enforce_retention();
                    }
                }
                timed
            })
        });
        if let Some(a) = state {
            a.close();
        }
    }
    group.finish();
}

/// What the preparer thread does before every roll: reserve (fallocate) and pre-fault (MAP_POPULATE)
/// a 128 MiB segment. Appends under `Durability::None` cannot go faster than this for long.
fn bench_segment_prepare(c: &mut Criterion) {
    const SEGMENT: usize = 128 << 20;
    let mut group = c.benchmark_group("segment");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(SEGMENT as u64));
    let mut dir: Option<TempDir> = None;
    group.bench_function("prepare/128MiB", |b| {
        let path = dir.get_or_insert_with(bench_dir).path().join("prepared");
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let map = MmapIo::default().create(&path, SEGMENT).expect("create");
                timed += start.elapsed();
                drop(map);
                MmapIo::default().remove(&path).expect("remove");
            }
            timed
        })
    });
    group.finish();
}

fn bench_append_sync(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Bytes(batch(1024, BATCH_BYTES).len() as u64));
    for pipelined in [false, true] {
        let name = if pipelined {
            "sync_1MiB_commit_pipelined/1KiB"
        } else {
            "sync_1MiB_commit/1KiB"
        };
        let mut state: Option<Appender> = None;
        group.bench_function(name, |b| {
            let a = state.get_or_insert_with(|| Appender::new(Durability::Sync, 1024));
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                let mut in_flight = VecDeque::new();
                let mut start = Instant::now();
                for _ in 0..iters {
                    let (next, retention_due) = a.append();
                    if pipelined {
                        in_flight.push_back(a.log.wait_durable(next));
                        if in_flight.len() > 2 {
                            let oldest = in_flight.pop_front().expect("in flight");
                            block_on(oldest).expect("durable");
                        }
                    } else {
                        a.log.flush().expect("flush");
                    }
                    if retention_due {
                        // Outside the timed part, with nothing in flight.
                        for w in in_flight.drain(..) {
                            block_on(w).expect("durable");
                        }
                        timed += start.elapsed();
                        a.enforce_retention();
                        start = Instant::now();
                    }
                }
                for w in in_flight.drain(..) {
                    block_on(w).expect("durable");
                }
                timed + start.elapsed()
            })
        });
        if let Some(a) = state {
            a.close();
        }
    }
    group.finish();
}

/// A log of `bytes` of 1 KiB records in default (128 MiB) segments.
fn filled_log(dir: &Path, bytes: usize) -> MmapLog {
    let mut log = open(dir, read_config());
    let mut run = batch(1024, BATCH_BYTES);
    while (log.size_bytes() as usize) < bytes {
        append(&mut log, &mut run);
    }
    log
}

/// Reads the whole log front to back in 1 MiB slices, walking every record. Returns the bytes.
fn read_all(log: &MmapLog) -> u64 {
    let max = log.config().record_bytes_max;
    let end = log.next_offset();
    let mut offset = log.earliest_offset();
    let mut bytes = 0u64;
    while offset < end {
        let slice = log.read(offset, MIB).expect("read");
        let mut records = 0u64;
        for r in Records::new(slice.bytes(), max) {
            black_box(r.expect("record").header.offset);
            records += 1;
        }
        assert_eq!(records, slice.count(), "records in slice at {offset}");
        bytes += slice.bytes().len() as u64;
        offset = slice.next_offset;
    }
    bytes
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// Evicts the segment files' pages from the page cache (they must not be mapped anywhere).
fn evict_files(dir: &Path) {
    for path in segment_files(dir) {
        let file = std::fs::File::open(&path).expect("open segment");
        // SAFETY: plain syscall on an fd we own.
        let rc = unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        assert_eq!(rc, 0, "posix_fadvise {}", path.display());
    }
}

/// `(address, length)` of the data of every segment mapping of the log, page-rounded.
fn mapped_ranges(log: &MmapLog) -> Vec<(usize, usize)> {
    log.segments()
        .into_iter()
        .filter(|&(base, next, _)| next > base)
        .map(|(base, _, bytes)| {
            // The first record of a segment sits at byte 0 of its mapping.
            let start = log.read(base, 1).expect("read first").bytes().as_ptr() as usize;
            assert_eq!(start % PAGE, 0, "mapping start");
            (start, bytes.div_ceil(PAGE) * PAGE)
        })
        .collect()
}

/// Fraction of the pages of `ranges` that are in the page cache.
fn resident_fraction(ranges: &[(usize, usize)]) -> f64 {
    let (mut resident, mut total) = (0usize, 0usize);
    for &(start, len) in ranges {
        let mut vec = vec![0u8; len / PAGE];
        // SAFETY: the range lies inside a live mapping of the log; mincore only reports.
        let rc = unsafe { libc::mincore(start as *mut libc::c_void, len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore");
        resident += vec.iter().filter(|&&b| b & 1 != 0).count();
        total += vec.len();
    }
    resident as f64 / total.max(1) as f64
}

/// Makes the log's pages cold: unmaps them from this process and evicts them from the page cache.
/// Returns the fraction of pages still resident afterwards.
fn make_cold(log: &MmapLog, drop_caches: &mut bool) -> f64 {
    // Dirty pages cannot be evicted: write them back first (a no-op once they are clean).
    log.flush().expect("flush");
    let ranges = mapped_ranges(log);
    for &(start, len) in &ranges {
        // MADV_DONTNEED on a shared file mapping only drops this process's page-table entries:
        // the content stays in the file and the next access faults it back in. No reference into
        // these ranges is alive here.
        // SAFETY: the range lies inside a live shared file mapping of the log.
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) };
        assert_eq!(rc, 0, "madvise");
    }
    evict_files(log.dir());
    if *drop_caches {
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
    }
    let left = resident_fraction(&ranges);
    if left > 0.01 && !*drop_caches {
        *drop_caches = true;
        eprintln!(
            "fadvise left {:.1}% resident; using drop_caches",
            left * 100.0
        );
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
        return resident_fraction(&ranges);
    }
    left
}

/// The 256 MiB log of the read benchmarks, built on first use.
struct ReadLog {
    dir: TempDir,
    log: Option<MmapLog>,
    total: u64,
    drop_caches: bool,
}

impl ReadLog {
    fn new() -> Self {
        let dir = bench_dir();
        let log = filled_log(dir.path(), READ_LOG_BYTES);
        let total = read_all(&log);
        ReadLog {
            dir,
            log: Some(log),
            total,
            drop_caches: false,
        }
    }

    fn log(&self) -> &MmapLog {
        self.log.as_ref().expect("open")
    }
}

fn read_config() -> LogConfig {
    LogConfig {
        durability: Durability::None,
        ..Default::default()
    }
}

fn bench_read(c: &mut Criterion) {
    let mut state: Option<ReadLog> = None;
    let mut group = c.benchmark_group("read");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(READ_LOG_BYTES as u64));
    group.bench_function("resident/1KiB", |b| {
        let st = state.get_or_insert_with(ReadLog::new);
        b.iter(|| assert_eq!(read_all(st.log()), st.total))
    });
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("cold/1KiB", |b| {
        let st = state.get_or_insert_with(ReadLog::new);
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let log = st.log.as_ref().expect("open");
                let left = make_cold(log, &mut st.drop_caches);
                assert!(left < 0.05, "{:.1}% still resident", left * 100.0);
                let start = Instant::now();
                assert_eq!(read_all(log), st.total);
                timed += start.elapsed();
            }
            timed
        })
    });
    group.finish();

    let mut group = c.benchmark_group("open");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Bytes(READ_LOG_BYTES as u64));
    group.bench_function("cold/256MiB", |b| {
        let st = state.get_or_insert_with(ReadLog::new);
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                st.log.take().expect("open").close().expect("close");
                evict_files(st.dir.path());
                if st.drop_caches {
                    let _ = std::fs::write("/proc/sys/vm/drop_caches", "1");
                }
                let start = Instant::now();
                let (log, report) =
                    Log::open(MmapIo::default(), st.dir.path(), read_config()).expect("open");
                timed += start.elapsed();
                assert!(report.truncation.is_none() && report.indexes_rebuilt.is_empty());
                st.log = Some(log);
            }
            timed
        })
    });
    group.finish();
    if let Some(st) = state {
        st.log.expect("open").close().expect("close");
    }
}

/// A log of 3 M small records in 16 MiB segments, with random offsets and times to look up.
struct IndexLog {
    _dir: TempDir,
    log: MmapLog,
    offsets: Vec<u64>,
    times: Vec<i64>,
}

impl IndexLog {
    fn new() -> Self {
        const RECORDS: u64 = 3_000_000;
        let dir = bench_dir();
        let mut log = open(
            dir.path(),
            LogConfig {
                durability: Durability::None,
                segment_bytes: 16 * MIB,
                ..Default::default()
            },
        );
        // One clock tick per append, so that the time index has many distinct times to search.
        let tick = Arc::new(AtomicI64::new(1_700_000_000_000));
        let clock = tick.clone();
        log.set_clock(Arc::new(move || clock.fetch_add(1, Ordering::Relaxed)));
        let mut run = batch(16, 64 << 10);
        let first_ts = tick.load(Ordering::Relaxed);
        while log.next_offset() < RECORDS {
            append(&mut log, &mut run);
        }
        let last_ts = tick.load(Ordering::Relaxed) - 1;
        let (end, segments) = (log.next_offset(), log.segments().len());
        eprintln!(
            "index log: {end} records of {} bytes in {segments} segments",
            log.size_bytes() / end
        );
        assert!(segments >= 4, "want several segments");
        let mut rng = SmallRng::seed_from_u64(7);
        let offsets = (0..4096).map(|_| rng.gen_range(0..end)).collect();
        let times = (0..4096)
            .map(|_| rng.gen_range(first_ts..=last_ts))
            .collect();
        IndexLog {
            _dir: dir,
            log,
            offsets,
            times,
        }
    }
}

fn bench_index(c: &mut Criterion) {
    let mut state: Option<IndexLog> = None;
    let mut group = c.benchmark_group("index/lookup");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("read_at_offset", |b| {
        let st = state.get_or_insert_with(IndexLog::new);
        let mut i = 0;
        b.iter(|| {
            let offset = st.offsets[i % st.offsets.len()];
            i += 1;
            let slice = st.log.read(offset, 1).expect("read");
            assert_eq!(slice.first_offset, offset);
            black_box(slice.count())
        })
    });
    group.bench_function("offset_at_time", |b| {
        let st = state.get_or_insert_with(IndexLog::new);
        let mut i = 0;
        b.iter(|| {
            let t = st.times[i % st.times.len()];
            i += 1;
            black_box(st.log.offset_at_time(t).expect("offset_at_time"))
        })
    });
    group.finish();
    if let Some(st) = state {
        st.log.close().expect("close");
    }
}

criterion_group!(
    benches,
    bench_append_none,
    bench_segment_prepare,
    bench_append_sync,
    bench_read,
    bench_index
);
criterion_main!(benches);
