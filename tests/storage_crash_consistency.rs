//! Crash consistency: whatever a crash or a bad disk leaves, recovery keeps exactly the valid
//! prefix of the log, every record acknowledged under Sync survives, nothing corrupt is served and
//! nothing panics.
#![cfg(feature = "broker")]

use std::path::{Path, PathBuf};

use levee::record::{self, Message, Records};
use levee::storage::{Durability, Io, Log, LogConfig, MmapIo, SimIo, TruncationReason, WritePath};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn config(durability: Durability) -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        record_bytes_max: 16 << 10,
        index_interval_bytes: 1024,
        durability,
        retention_ms: None,
        ..LogConfig::default()
    }
}

fn message(i: u64, len: usize) -> Message {
    let mut value = format!("record-{i}:").into_bytes();
    value.resize(len.max(value.len()), b'a' + (i % 26) as u8);
    Message {
        timestamp_ms: 1_700_000_000_000 + i as i64,
        key: Some(format!("k{i}").into_bytes()),
        value,
        ..Message::default()
    }
}

/// Every record of the log through the read path, checked against what was written.
fn check_prefix<I: Io>(log: &Log<I>, written: &[Message]) -> u64 {
    let next = log.next_offset();
    assert!(
        next as usize <= written.len(),
        "recovered more than was written"
    );
    let mut offset = log.earliest_offset();
    while offset < next {
        let slice = log
            .read(offset, 1 << 20)
            .expect("recovered records are readable");
        for r in Records::new(slice.bytes(), 1 << 20) {
            let r = r.expect("nothing corrupt is served");
            assert_eq!(r.offset(), offset);
            let m =
                rkyv::deserialize::<Message, rkyv::rancor::Error>(r.message().unwrap()).unwrap();
            assert_eq!(m, written[offset as usize], "offset {offset} differs");
            offset += 1;
        }
    }
    next
}

/// A scratch directory on tmpfs when there is one: these tests reopen a log thousands of times and
/// measure recovery logic, not the disk.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

/// Byte extent of one record in its segment: where it starts, where its archive ends (what follows
/// up to the next record is zero padding, which a cut can lose without losing anything) and where
/// it ends.
struct Extent {
    start: usize,
    archive_end: usize,
    end: usize,
}

/// Writes records under Sync (each acknowledged once durable) and returns the segment file's
/// bytes, the checkpoint file's bytes if `close`, the messages and each record's extent.
fn write_sync_segment(
    close: bool,
    write_path: WritePath,
) -> (Vec<u8>, Option<Vec<u8>>, Vec<Message>, Vec<Extent>) {
    let dir = scratch_dir();
    let (mut log, _) =
        Log::open(MmapIo { write_path }, dir.path(), config(Durability::Sync)).unwrap();
    let mut written = Vec::new();
    let mut ends = Vec::new();
    let mut end = 0;
    for i in 0..48u64 {
        // Sizes vary so that records straddle page boundaries at many different points.
        let m = message(i, 90 + (i as usize * 211) % 900);
        let mut buf = Vec::new();
        record::encode(&m, &mut buf).unwrap();
        let a = log.append_message(&m).unwrap();
        log.flush().unwrap(); // the acknowledgement point under Sync
        assert!(log.durable_offset() >= a.next_offset);
        let archive_len = u32::from_le_bytes(buf[4..8].try_into().unwrap()) as usize;
        ends.push(Extent {
            start: end,
            archive_end: end + record::HEADER_LEN + archive_len,
            end: end + buf.len(),
        });
        end += buf.len();
        written.push(m);
    }
    assert_eq!(log.segments().len(), 1);
    assert!(end > 3 * 4096, "records must span several pages");
    let seg = dir.path().join(format!("{:020}.log", 0));
    let index = dir.path().join(format!("{:020}.index", 0));
    if close {
        log.close().unwrap();
    } else {
        drop(log);
    }
    let bytes = std::fs::read(&seg).unwrap();
    let checkpoint = close.then(|| std::fs::read(&index).unwrap());
    (bytes, checkpoint, written, ends)
}

fn reset_dir(dir: &Path, files: &[(PathBuf, &[u8])]) {
    for e in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    for (p, b) in files {
        std::fs::write(dir.join(p), b).unwrap();
    }
}

fn cut_every_byte_of_tail(close: bool, write_path: WritePath) {
    let (bytes, checkpoint, written, ends) = write_sync_segment(close, write_path);
    let data_len = ends.last().unwrap().end;
    let dir = scratch_dir();
    let seg = PathBuf::from(format!("{:020}.log", 0));
    let index = PathBuf::from(format!("{:020}.index", 0));
    for cut in data_len - 8192..=data_len {
        let mut files = vec![(seg.clone(), &bytes[..cut])];
        if let Some(cp) = &checkpoint {
            files.push((index.clone(), &cp[..]));
        }
        reset_dir(dir.path(), &files);
        let (log, report) = Log::open(MmapIo::default(), dir.path(), config(Durability::Sync))
            .unwrap_or_else(|e| panic!("open after cut at {cut}: {e}"));
        // A cut loses bytes and the reservation brings back zeros: a record survives exactly when
        // every byte it lost was a zero (its padding, or trailing zeros of the archive).
        let zero = |r: std::ops::Range<usize>| bytes[r].iter().all(|&b| b == 0);
        let intact = |e: &Extent| e.archive_end <= cut || zero(cut..e.archive_end);
        let survivors = ends.iter().take_while(|e| intact(e)).count() as u64;
        assert_eq!(log.next_offset(), survivors, "cut at {cut}: {report:?}");
        // Clean unless the cut left some non-zero bytes of the first damaged record behind.
        let on_boundary = ends
            .iter()
            .find(|e| !intact(e))
            .is_none_or(|e| cut <= e.start || zero(e.start..cut));
        assert_eq!(
            report.truncation.is_none(),
            on_boundary,
            "cut at {cut} reported as {:?}",
            report.truncation
        );
        assert_eq!(check_prefix(&log, &written), survivors);
        drop(log);
        // Recovery is idempotent: a second open finds a clean log with the same content.
        let (log, report) =
            Log::open(MmapIo::default(), dir.path(), config(Durability::Sync)).unwrap();
        assert_eq!(
            report.truncation, None,
            "second recovery after cut at {cut}"
        );
        assert_eq!(log.next_offset(), survivors);
    }
}

#[test]
fn given_segment_cut_at_every_byte_of_its_last_8kib_should_keep_exactly_the_valid_prefix() {
    cut_every_byte_of_tail(false, WritePath::Pwrite);
}

#[test]
fn given_mmap_write_path_when_cut_at_every_byte_of_the_tail_should_keep_exactly_the_valid_prefix() {
    cut_every_byte_of_tail(false, WritePath::Mmap);
}

#[test]
fn given_checkpoint_past_the_cut_when_recovering_should_distrust_it_and_keep_the_valid_prefix() {
    cut_every_byte_of_tail(true, WritePath::Pwrite);
}

#[test]
fn given_random_byte_flips_when_recovering_should_keep_records_before_the_first_damage() {
    let (bytes, _, written, ends) = write_sync_segment(false, WritePath::Pwrite);
    let data_len = ends.last().unwrap().end;
    let dir = scratch_dir();
    let seg = PathBuf::from(format!("{:020}.log", 0));
    let mut rng = SmallRng::seed_from_u64(0x1e7ee);
    for trial in 0..400 {
        let mut damaged = bytes.clone();
        let flips = rng.gen_range(1..=4);
        let mut first = usize::MAX;
        for _ in 0..flips {
            // Mostly inside the records, sometimes in the zeros after them.
            let p = rng.gen_range(0..(data_len + 256).min(damaged.len()));
            damaged[p] ^= rng.gen_range(1..=255u8);
            first = first.min(p);
        }
        reset_dir(dir.path(), &[(seg.clone(), &damaged[..])]);
        let (log, report) =
            Log::open(MmapIo::default(), dir.path(), config(Durability::None)).unwrap();
        // A flip anywhere in a record (header, archive or padding) invalidates that record.
        let expected = ends.iter().filter(|e| e.end <= first).count() as u64;
        assert_eq!(
            log.next_offset(),
            expected,
            "trial {trial}, first flip at {first}"
        );
        if first < data_len {
            let t = report.truncation.as_ref().expect("damage is reported");
            assert!(matches!(t.reason, TruncationReason::Record(_)));
        }
        check_prefix(&log, &written);
    }
}

#[test]
fn given_damaged_checkpoint_when_recovering_should_rebuild_the_index_and_lose_nothing() {
    let io = SimIo::new();
    let (mut log, _) = Log::open(io.clone(), "/d/p", config(Durability::None)).unwrap();
    let written: Vec<Message> = (0..400).map(|i| message(i, 400)).collect();
    for m in &written {
        log.append_message(m).unwrap();
    }
    log.close().unwrap();
    let index = PathBuf::from("/d/p/00000000000000000000.index");
    let mut cp = io.read_file(&index).unwrap().unwrap();
    cp[60] ^= 0x10;
    io.write_file(&index, &cp).unwrap();
    let (log, report) = Log::open(io, "/d/p", config(Durability::None)).unwrap();
    assert!(report.indexes_rebuilt.contains(&0), "{report:?}");
    assert_eq!(report.truncation, None);
    assert_eq!(check_prefix(&log, &written), 400);
}

/// Power cuts through the I/O seam: appends under Sync with acknowledgements, a cut at a random
/// moment that keeps, drops or tears each page written since its last flush. Every acknowledged
/// record survives, and what survives is an exact prefix of what was written.
#[test]
fn given_random_power_cuts_when_recovering_should_keep_every_acknowledged_record() {
    let mut rng = SmallRng::seed_from_u64(0xc0ffee);
    for trial in 0..150 {
        let io = SimIo::new();
        let cfg = LogConfig {
            segment_bytes: 16 << 10,
            record_bytes_max: 4 << 10,
            index_interval_bytes: 256,
            // Retention runs at random points, so retired files are recycled and power cuts hit
            // logs whose segments hold stale records of their earlier lives.
            retention_bytes: Some(48 << 10),
            ..config(Durability::Sync)
        };
        let (mut log, _) = Log::open(io.clone(), "/d/p", cfg.clone()).unwrap();
        let mut written = Vec::new();
        let mut acked = 0;
        let appends = rng.gen_range(1..120);
        for _ in 0..appends {
            let batch = rng.gen_range(1..4);
            let mut buf = Vec::new();
            for _ in 0..batch {
                let m = message(written.len() as u64, rng.gen_range(1..1500));
                record::encode(&m, &mut buf).unwrap();
                written.push(m);
            }
            let mut run = rkyv::util::AlignedVec::<16>::new();
            run.extend_from_slice(&buf);
            let a = log.append(&mut run).unwrap();
            if rng.gen_bool(0.2) {
                log.enforce_retention(None).unwrap();
            }
            if rng.gen_bool(0.3) {
                log.flush().unwrap();
                acked = a.next_offset;
            }
        }
        // Whatever the flusher made durable by now is acknowledged too.
        acked = acked.max(log.durable_offset());
        let mode = rng.gen_range(0..3);
        let crashed = io.crash(|_| match mode {
            0 => None,
            1 => Some(4096),
            _ => match rng.gen_range(0..3) {
                0 => None,
                1 => Some(4096),
                _ => Some(rng.gen_range(0..4096)),
            },
        });
        drop(log);
        let (log, report) = Log::open(crashed.clone(), "/d/p", cfg.clone())
            .unwrap_or_else(|e| panic!("trial {trial}: {e}"));
        // Segments after a torn tail may go, but never one holding an acknowledged record.
        assert!(
            report.segments_removed.iter().all(|&base| base >= acked),
            "trial {trial}: acknowledged {acked}: {report:?}"
        );
        assert!(
            log.next_offset() >= acked,
            "trial {trial}: acknowledged {acked}, recovered {} ({report:?})",
            log.next_offset()
        );
        check_prefix(&log, &written);
        // The recovered log takes appends and keeps them across another clean reopen.
        let mut log = log;
        let next = log.next_offset();
        let extra = message(next, 10);
        assert_eq!(log.append_message(&extra).unwrap().base_offset, next);
        log.close().unwrap();
        let (log, report) = Log::open(crashed, "/d/p", cfg).unwrap();
        assert_eq!(report.truncation, None, "trial {trial}");
        assert_eq!(log.next_offset(), next + 1);
    }
}
