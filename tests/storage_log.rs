//! Black-box properties of a partition log: what is appended reads back, seeks land where they
//! should, segments roll and retire as configured, a reopened log sees everything, and a failing
//! disk stops the log instead of losing data quietly.
#![cfg(feature = "broker")]

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake};
use std::time::Duration;

use levee::record::{self, Message, Records};
use levee::storage::{Durability, Io, Log, LogConfig, MmapIo, SimIo, StorageError};
use proptest::prelude::*;

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 64 << 10,
        record_bytes_max: 16 << 10,
        index_interval_bytes: 512,
        durability: Durability::None,
        retention_ms: None,
        ..LogConfig::default()
    }
}

fn message(i: u64, len: usize) -> Message {
    let mut value = format!("message-{i}-").into_bytes();
    value.resize(len.max(value.len()), (i % 251) as u8);
    Message {
        timestamp_ms: i as i64,
        key: Some(i.to_le_bytes().to_vec()),
        value,
        ..Message::default()
    }
}

/// Every record in `earliest..next`, read through the public read path, deserialized.
fn read_all<I: Io>(log: &Log<I>) -> Vec<(u64, Message)> {
    let mut out = Vec::new();
    let mut offset = log.earliest_offset();
    while offset < log.next_offset() {
        let slice = log.read(offset, 8 << 10).expect("read");
        assert!(slice.count() > 0, "empty read before the end at {offset}");
        for r in Records::new(slice.bytes(), record::ARCHIVE_LEN_MAX) {
            let r = r.expect("served record passes its CRC");
            assert_eq!(r.offset(), offset);
            let m =
                rkyv::deserialize::<Message, rkyv::rancor::Error>(r.message().unwrap()).unwrap();
            out.push((offset, m));
            offset += 1;
        }
        assert_eq!(offset, slice.next_offset);
    }
    out
}

fn manual_clock(start: i64) -> (Arc<AtomicI64>, levee::storage::Clock) {
    let t = Arc::new(AtomicI64::new(start));
    let c = t.clone();
    (t, Arc::new(move || c.load(Ordering::Relaxed)))
}

/// A minimal executor for one future: the storage engine is runtime-agnostic.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

#[test]
fn given_appends_on_real_files_when_reopened_after_close_should_read_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, report) = Log::open(MmapIo::default(), dir.path(), small_config()).unwrap();
    assert_eq!(report.next_offset, 0);
    let mut expected = Vec::new();
    for i in 0..500 {
        let m = message(i, 300 + (i as usize * 37) % 2000);
        let a = log.append_message(&m).unwrap();
        assert_eq!(a.base_offset, i);
        expected.push((i, m));
    }
    assert!(log.segments().len() > 3, "the log should have rolled");
    assert_eq!(read_all(&log), expected);
    log.close().unwrap();

    let (log, report) = Log::open(MmapIo::default(), dir.path(), small_config()).unwrap();
    assert_eq!(report.truncation, None);
    assert!(report.indexes_rebuilt.is_empty(), "{report:?}");
    assert_eq!(log.next_offset(), 500);
    assert_eq!(read_all(&log), expected);
}

#[test]
fn given_dropped_log_without_close_when_reopened_should_rebuild_and_keep_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(MmapIo::default(), dir.path(), small_config()).unwrap();
    for i in 0..300 {
        log.append_message(&message(i, 500)).unwrap();
    }
    drop(log); // a process crash leaves the page cache: nothing is lost, the tail is rescanned
    let (log, report) = Log::open(MmapIo::default(), dir.path(), small_config()).unwrap();
    assert_eq!(report.truncation, None);
    assert_eq!(log.next_offset(), 300);
    assert_eq!(read_all(&log).len(), 300);
}

#[test]
fn given_many_segments_when_seeking_by_offset_and_time_should_land_exactly() {
    let (now, clock) = manual_clock(1_000_000);
    let (mut log, _) = Log::open(SimIo::new(), "/d/p", small_config()).unwrap();
    log.set_clock(clock);
    for i in 0..2000u64 {
        if i % 10 == 0 {
            now.fetch_add(5, Ordering::Relaxed);
        }
        log.append_message(&message(i, 100)).unwrap();
    }
    assert!(log.segments().len() > 3);
    for offset in [0, 1, 9, 10, 511, 1234, 1999] {
        let s = log.read(offset, 1).unwrap();
        assert_eq!(s.first_offset, offset);
        assert_eq!(
            s.count(),
            1,
            "at least one record even when max_bytes is tiny"
        );
        let r = Records::new(s.bytes(), 1 << 20).next().unwrap().unwrap();
        assert_eq!(r.offset(), offset);
    }
    // Offsets 10k..10k+9 were appended at 1_000_005 + 5k.
    assert_eq!(log.offset_at_time(0).unwrap(), 0);
    assert_eq!(log.offset_at_time(1_000_005).unwrap(), 0);
    assert_eq!(log.offset_at_time(1_000_006).unwrap(), 10);
    assert_eq!(log.offset_at_time(1_000_010).unwrap(), 10);
    assert_eq!(log.offset_at_time(1_000_000 + 5 * 150).unwrap(), 1490);
    assert_eq!(log.offset_at_time(i64::MAX).unwrap(), 2000);
    assert!(matches!(
        log.read(2001, 1),
        Err(StorageError::OffsetOutOfRange {
            requested: 2001,
            earliest: 0,
            next: 2000
        })
    ));
    assert!(log.read(2000, 1).unwrap().is_empty());
}

#[test]
fn given_clock_stepping_back_when_appending_should_keep_timestamps_monotonic() {
    let (now, clock) = manual_clock(5_000);
    let (mut log, _) = Log::open(SimIo::new(), "/d/p", small_config()).unwrap();
    log.set_clock(clock);
    let a = log.append_message(&message(0, 10)).unwrap();
    now.store(1_000, Ordering::Relaxed);
    let b = log.append_message(&message(1, 10)).unwrap();
    assert_eq!(a.timestamp_ms, 5_000);
    assert_eq!(b.timestamp_ms, 5_000);
}

#[test]
fn given_segment_age_limit_when_time_passes_should_roll_and_retire_by_age() {
    let (now, clock) = manual_clock(0);
    let config = LogConfig {
        segment_ms: 1_000,
        retention_ms: Some(10_000),
        ..small_config()
    };
    let (mut log, _) = Log::open(SimIo::new(), "/d/p", config).unwrap();
    log.set_clock(clock);
    for i in 0..5 {
        log.append_message(&message(i, 10)).unwrap();
        now.fetch_add(1_000, Ordering::Relaxed);
    }
    assert_eq!(log.segments().len(), 5, "one segment per second of age");
    now.store(4_000 + 10_001, Ordering::Relaxed);
    // Segments whose newest record is older than 10 s go; the active one always stays.
    let removed = log.enforce_retention(None).unwrap();
    assert_eq!(removed, vec![0, 1, 2, 3]);
    assert_eq!(log.earliest_offset(), 4);
    assert!(matches!(
        log.read(0, 1),
        Err(StorageError::OffsetOutOfRange { earliest: 4, .. })
    ));
}

#[test]
fn given_retention_bytes_when_exceeded_should_delete_oldest_whole_segments() {
    let config = LogConfig {
        retention_bytes: Some(150 << 10),
        ..small_config()
    };
    let io = SimIo::new();
    let (mut log, _) = Log::open(io.clone(), "/d/p", config.clone()).unwrap();
    for i in 0..1000 {
        log.append_message(&message(i, 1000)).unwrap();
    }
    let before = log.segments();
    let removed = log.enforce_retention(None).unwrap();
    assert!(!removed.is_empty());
    assert!(log.size_bytes() <= 150 << 10);
    assert_eq!(log.segments(), before[removed.len()..].to_vec());
    assert_eq!(log.earliest_offset(), before[removed.len()].0);
    for base in &removed {
        let name = format!("/d/p/{base:020}.log");
        assert!(!io.paths().contains(&Path::new(&name).to_path_buf()));
    }
    let all = read_all(&log);
    assert_eq!(all.first().unwrap().0, log.earliest_offset());
    assert_eq!(all.last().unwrap().0, 999);
    log.close().unwrap();
    let (log, _) = Log::open(io, "/d/p", config).unwrap();
    assert_eq!(log.earliest_offset(), before[removed.len()].0);
}

#[test]
fn given_an_offset_to_keep_retention_should_stop_at_the_segment_holding_it() {
    let config = LogConfig {
        retention_bytes: Some(1),
        ..small_config()
    };
    let (mut log, _) = Log::open(SimIo::new(), "/d/p", config).unwrap();
    for i in 0..1000 {
        log.append_message(&message(i, 1000)).unwrap();
    }
    let before = log.segments();
    assert!(before.len() > 3);
    // A consumer group has committed up to inside the third segment.
    let keep = before[2].0 + 1;
    let removed = log.enforce_retention(Some(keep)).unwrap();
    assert_eq!(
        removed,
        vec![before[0].0, before[1].0],
        "only wholly committed segments go"
    );
    assert_eq!(log.earliest_offset(), before[2].0);
    // Early roll and explicit drop, as drop-oldest uses them.
    let segments = log.segments().len();
    log.roll_active().unwrap();
    assert_eq!(log.segments().len(), segments + 1);
    log.roll_active().unwrap();
    assert_eq!(
        log.segments().len(),
        segments + 1,
        "an empty active segment does not roll"
    );
    assert_eq!(log.drop_oldest().unwrap(), Some(before[2].0));
}

#[test]
fn given_retention_when_a_reader_holds_a_slice_should_keep_the_slice_valid() {
    let config = LogConfig {
        retention_bytes: Some(1),
        ..small_config()
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(MmapIo::default(), dir.path(), config).unwrap();
    for i in 0..200 {
        log.append_message(&message(i, 1000)).unwrap();
    }
    let held = log.read(0, 1 << 20).unwrap();
    let copy = held.bytes().to_vec();
    assert!(!log.enforce_retention(None).unwrap().is_empty());
    assert_eq!(
        held.bytes(),
        &copy[..],
        "a deleted segment stays readable while held"
    );
}

#[test]
fn given_truncation_when_appending_again_should_continue_from_the_cut() {
    let io = SimIo::new();
    let (mut log, _) = Log::open(io.clone(), "/d/p", small_config()).unwrap();
    for i in 0..400 {
        log.append_message(&message(i, 700)).unwrap();
    }
    let held = log.read(300, 1).unwrap();
    assert!(matches!(
        log.truncate(100),
        Err(StorageError::ReadersActive { offset: 100 })
    ));
    drop(held);
    log.truncate(100).unwrap();
    assert_eq!(log.next_offset(), 100);
    let a = log.append_message(&message(7777, 50)).unwrap();
    assert_eq!(a.base_offset, 100);
    log.close().unwrap();
    let (log, report) = Log::open(io, "/d/p", small_config()).unwrap();
    assert_eq!(report.truncation, None, "{report:?}");
    let all = read_all(&log);
    assert_eq!(all.len(), 101);
    assert_eq!(all[100].1, message(7777, 50));
}

#[test]
fn given_invalid_record_in_batch_when_appending_should_write_nothing() {
    let (mut log, _) = Log::open(SimIo::new(), "/d/p", small_config()).unwrap();
    let mut run = rkyv::util::AlignedVec::<16>::new();
    let mut buf = Vec::new();
    for i in 0..3 {
        record::encode(&message(i, 40), &mut buf).unwrap();
    }
    let second = buf.len() / 3 + record::HEADER_LEN + 2;
    buf[second] ^= 0xff;
    run.extend_from_slice(&buf);
    match log.append(&mut run) {
        Err(StorageError::InvalidRecord { index: 1, .. }) => {}
        other => panic!("expected the second record to be rejected, got {other:?}"),
    }
    assert_eq!(log.next_offset(), 0);
    assert!(matches!(
        log.append(&mut []),
        Err(StorageError::InvalidRecord { .. })
    ));
    let too_big = message(1, 17 << 10);
    assert!(matches!(
        log.append_message(&too_big),
        Err(StorageError::InvalidRecord { .. })
    ));
}

#[test]
fn given_sync_durability_when_appends_race_should_share_flushes() {
    let io = SimIo::new();
    let config = LogConfig {
        durability: Durability::Sync,
        ..small_config()
    };
    let (mut log, _) = Log::open(io.clone(), "/d/p", config).unwrap();
    let mut last = 0;
    for i in 0..200 {
        last = log.append_message(&message(i, 200)).unwrap().next_offset;
    }
    block_on(log.wait_durable(last)).unwrap();
    assert!(log.durable_offset() >= last);
    assert!(
        log.flush_count() < 200,
        "200 appends must not need 200 flushes (got {})",
        log.flush_count()
    );
    // Everything acknowledged survives a power cut that drops every unflushed page.
    let (after, _) = Log::open(io.crash(|_| None), "/d/p", small_config()).unwrap();
    assert_eq!(after.next_offset(), 200);
}

#[test]
fn given_flush_failing_with_eio_when_appending_should_fail_stop() {
    let io = SimIo::new();
    let (mut log, _) = Log::open(io.clone(), "/d/p", small_config()).unwrap();
    log.append_message(&message(0, 10)).unwrap();
    log.flush().unwrap();
    io.fail_flushes_after(Some(0));
    log.append_message(&message(1, 10)).unwrap();
    assert!(matches!(log.flush(), Err(StorageError::Failed { .. })));
    assert!(matches!(
        block_on(log.wait_durable(2)),
        Err(levee::storage::FlushError { .. })
    ));
    assert!(matches!(
        log.append_message(&message(2, 10)),
        Err(StorageError::Failed { .. })
    ));
    // Reads of what was stored still work.
    assert_eq!(read_all(&log).len(), 2);
}

#[test]
fn given_full_disk_when_rolling_should_fail_typed_and_keep_serving() {
    let io = SimIo::new();
    io.set_space_left(Some(64 << 10));
    let (mut log, _) = Log::open(io.clone(), "/d/p", small_config()).unwrap();
    let mut stored = 0;
    let err = loop {
        match log.append_message(&message(stored, 1000)) {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 1000);
    };
    assert!(matches!(err, StorageError::NoSpace { .. }), "{err:?}");
    assert_eq!(read_all(&log).len() as u64, stored);
    io.set_space_left(None);
    assert_eq!(
        log.append_message(&message(stored, 1000))
            .unwrap()
            .base_offset,
        stored
    );
}

#[test]
fn given_a_lowered_record_limit_when_reopened_should_keep_larger_stored_records() {
    // Found by the segment_recovery fuzzer: recovery used to cut at the first stored record above
    // the new limit, losing acknowledged data.
    let io = SimIo::new();
    let (mut log, _) = Log::open(io.clone(), "/d/p", small_config()).unwrap();
    log.append_message(&message(0, 10_000)).unwrap();
    log.append_message(&message(1, 100)).unwrap();
    log.close().unwrap();
    let lowered = LogConfig {
        record_bytes_max: 1024,
        ..small_config()
    };
    let (mut log, report) = Log::open(io, "/d/p", lowered).unwrap();
    assert_eq!(report.truncation, None);
    assert_eq!(read_all(&log).len(), 2);
    assert!(matches!(
        log.append_message(&message(2, 5000)),
        Err(StorageError::InvalidRecord { .. })
    ));
}

#[test]
fn given_offsets_at_the_end_of_the_offset_space_should_refuse_appends_without_panicking() {
    // Found by the segment_recovery fuzzer: offsets near u64::MAX overflowed in recovery and append.
    use levee::storage::OFFSET_MAX;
    let mut seg = Vec::new();
    record::encode(&message(0, 10), &mut seg).unwrap();
    record::stamp_header(&mut seg, OFFSET_MAX - 1, 1);
    let io = SimIo::with_files([
        (
            format!("/d/p/{:020}.log", OFFSET_MAX - 1).into(),
            seg.clone(),
        ),
        (format!("/d/q/{:020}.log", u64::MAX).into(), seg),
    ]);
    let (mut log, report) = Log::open(io.clone(), "/d/p", small_config()).unwrap();
    assert_eq!(report.truncation, None);
    assert_eq!(log.next_offset(), OFFSET_MAX);
    assert!(matches!(
        log.append_message(&message(1, 10)),
        Err(StorageError::OffsetsExhausted { .. })
    ));
    let (log, report) = Log::open(io, "/d/q", small_config()).unwrap();
    assert_eq!(
        log.next_offset(),
        0,
        "a segment named past the offset space is not a segment"
    );
    assert_eq!(report.stray_files_removed.len(), 1);
}

#[test]
fn given_retention_when_segments_are_recycled_should_serve_and_recover_only_new_records() {
    let config = LogConfig {
        retention_bytes: Some(128 << 10),
        ..small_config()
    };
    let io = SimIo::new();
    let (mut log, _) = Log::open(io.clone(), "/d/p", config.clone()).unwrap();
    let mut recycled = 0;
    for i in 0..3000 {
        log.append_message(&message(i, 900)).unwrap();
        if i % 50 == 0 {
            log.flush().unwrap();
            // Let the flusher finish the seal jobs that make a segment recyclable.
            std::thread::sleep(std::time::Duration::from_millis(2));
            log.enforce_retention(None).unwrap();
            recycled += io
                .paths()
                .iter()
                .filter(|p| p.ends_with("next.segment.recycled"))
                .count();
        }
    }
    assert!(recycled > 0, "retention kept a retired file for reuse");
    let earliest = log.earliest_offset();
    let check = |log: &Log<SimIo>| {
        let all = read_all(log);
        assert_eq!(all.first().unwrap().0, earliest);
        assert_eq!(all.last().unwrap().0, 2999);
        for (o, m) in &all {
            assert_eq!(m, &message(*o, 900));
        }
    };
    check(&log);
    // A power cut that keeps everything flushed, then a clean close: stale records left in reused
    // files are never taken for new ones, and are not reported as damage.
    log.flush().unwrap();
    let crashed = io.crash(|_| None);
    log.close().unwrap();
    let (log, report) = Log::open(io, "/d/p", config.clone()).unwrap();
    assert_eq!(report.truncation, None, "{report:?}");
    check(&log);
    // After a power cut, the active (reused) segment's stale tail may be reported as a cut at the
    // end of its records; nothing acknowledged is lost and no later segment is deleted. Sealed
    // reused segments end where the next segment begins, whatever stale bytes follow.
    let (log, report) = Log::open(crashed, "/d/p", config).unwrap();
    assert!(report.segments_removed.is_empty(), "{report:?}");
    if let Some(t) = &report.truncation {
        assert_eq!(t.next_offset, 3000, "{report:?}");
    }
    check(&log);
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<usize>),
    Read(u64, usize),
    Reopen,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(1usize..3000, 1..6).prop_map(Op::Append),
        3 => (any::<u64>(), 1usize..20_000).prop_map(|(o, m)| Op::Read(o, m)),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The log against a model (a Vec of messages): appends get consecutive offsets, reads return
    /// exactly the model's records in order, reopen after close and a power cut after a flush keep
    /// everything.
    #[test]
    fn log_matches_in_memory_model(ops in proptest::collection::vec(op(), 1..40)) {
        let mut io = SimIo::new();
        let config = small_config();
        let mut model: Vec<Message> = Vec::new();
        let (mut log, _) = Log::open(io.clone(), "/d/p", config.clone()).unwrap();
        for op in ops {
            match op {
                Op::Append(sizes) => {
                    let mut buf = Vec::new();
                    let mut batch = Vec::new();
                    for s in sizes {
                        let m = message(model.len() as u64 + batch.len() as u64, s);
                        record::encode(&m, &mut buf).unwrap();
                        batch.push(m);
                    }
                    let mut run = rkyv::util::AlignedVec::<16>::new();
                    run.extend_from_slice(&buf);
                    let a = log.append(&mut run).unwrap();
                    prop_assert_eq!(a.base_offset, model.len() as u64);
                    prop_assert_eq!(a.count(), batch.len() as u64);
                    model.extend(batch);
                }
                Op::Read(o, max) => {
                    let offset = if model.is_empty() { 0 } else { o % (model.len() as u64 + 1) };
                    let s = log.read(offset, max).unwrap();
                    let mut at = offset;
                    for r in Records::new(s.bytes(), config.record_bytes_max) {
                        let r = r.unwrap();
                        prop_assert_eq!(r.offset(), at);
                        let m = rkyv::deserialize::<Message, rkyv::rancor::Error>(r.message().unwrap()).unwrap();
                        prop_assert_eq!(&m, &model[at as usize]);
                        at += 1;
                    }
                    prop_assert_eq!(at, s.next_offset);
                    if (offset as usize) < model.len() { prop_assert!(s.count() >= 1); }
                    prop_assert!(s.bytes().len() <= max || s.count() == 1);
                }
                Op::Reopen => {
                    log.close().unwrap();
                    let (l, report) = Log::open(io.clone(), "/d/p", config.clone()).unwrap();
                    prop_assert_eq!(report.truncation, None);
                    log = l;
                }
                Op::Crash => {
                    log.flush().unwrap();
                    let crashed = io.crash(|_| None);
                    drop(log);
                    let (l, report) = Log::open(crashed.clone(), "/d/p", config.clone()).unwrap();
                    prop_assert_eq!(report.truncation, None);
                    log = l;
                    io = crashed;
                }
            }
            prop_assert_eq!(log.next_offset(), model.len() as u64);
        }
        let all = read_all(&log);
        prop_assert_eq!(all.len(), model.len());
        for ((o, m), want) in all.iter().zip(&model) {
            prop_assert_eq!(m, want, "offset {}", o);
        }
    }
}

/// Found by the recovery fuzzer: a record whose header claims a longer archive (under a valid
/// header CRC) inside the range a checkpoint vouches for. Recovery trusts the checkpoint, so the
/// damage is only met on a read, and a read at an offset the bad record swallowed came back empty,
/// which would leave a consumer polling there forever. It must be a typed `Corrupt` error.
#[test]
fn given_a_record_swallowing_its_successors_under_a_checkpoint_when_read_should_fail_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(MmapIo::default(), dir.path(), small_config()).unwrap();
    for i in 0..10 {
        log.append_message(&message(i, 100)).unwrap();
    }
    log.close().unwrap();
    let path = dir.path().join(format!("{:020}.log", 0));
    let mut data = std::fs::read(&path).unwrap();
    let len = record::decode_header(&data, 0, record::ARCHIVE_LEN_MAX)
        .unwrap()
        .record_len();
    // Record 7 now claims every byte up to the end of record 9, the last.
    let at = 7 * len;
    let archive_len = (3 * len - record::HEADER_LEN) as u32;
    data[at + 4..at + 8].copy_from_slice(&archive_len.to_le_bytes());
    let ts = i64::from_le_bytes(data[at + 16..at + 24].try_into().unwrap());
    record::stamp_header(&mut data[at..], 7, ts);
    std::fs::write(&path, &data).unwrap();

    let (log, _) = Log::open(MmapIo::default(), dir.path(), small_config()).unwrap();
    assert_eq!(log.next_offset(), 10, "the checkpoint is trusted");
    for offset in 0..7 {
        assert!(log.read(offset, 1 << 20).unwrap().count() > 0);
    }
    // Offset 8 has no index entry of its own (one per 512 bytes: 0, 3, 6, 9), so finding it
    // walks through record 7, which ends where the segment does.
    for offset in [7, 8] {
        match log.read(offset, 1 << 20) {
            Err(StorageError::Corrupt { .. }) => {}
            Err(e) => panic!("read at {offset}: {e}"),
            Ok(s) => panic!("read at {offset} served {} records", s.count()),
        }
    }
}

/// Found by the recovery fuzzer: the last record of one segment re-stamped (valid CRCs) with a
/// time later than the records of the next segment, whose checkpoint recovery trusted. The log
/// then held decreasing append times, and lookups by time (a binary search over them) answered
/// wrong. Recovery now refuses a checkpoint whose first record is older than the log before it,
/// scans, and cuts at the regression.
#[test]
fn given_a_segment_newer_than_the_checkpointed_one_after_it_when_reopened_should_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (now, clock) = manual_clock(1_000_000);
    let (mut log, _) = Log::open(MmapIo::default(), dir.path(), small_config()).unwrap();
    log.set_clock(clock);
    for i in 0..300 {
        log.append_message(&message(i, 500)).unwrap();
        now.fetch_add(1, Ordering::Relaxed);
    }
    let segments = log.segments();
    assert!(segments.len() >= 3, "{segments:?}");
    let (_, first_next, first_len) = segments[0];
    log.close().unwrap();

    let path = dir.path().join(format!("{:020}.log", 0));
    let mut data = std::fs::read(&path).unwrap();
    let mut at = 0;
    loop {
        let len = record::decode_header(&data, at, record::ARCHIVE_LEN_MAX)
            .unwrap()
            .record_len();
        if at + len == first_len {
            break;
        }
        at += len;
    }
    // Later than every record of the log.
    record::stamp_header(&mut data[at..], first_next - 1, 2_000_000);
    std::fs::write(&path, &data).unwrap();

    let (log, report) = Log::open(MmapIo::default(), dir.path(), small_config()).unwrap();
    assert!(report.truncation.is_some(), "{report:?}");
    assert_eq!(log.next_offset(), first_next);
    let records = read_all(&log);
    assert_eq!(records.len() as u64, first_next);
    // Lookups by time agree with the records' own times.
    assert_eq!(log.offset_at_time(2_000_000).unwrap(), first_next - 1);
    assert_eq!(log.offset_at_time(2_000_001).unwrap(), first_next);
}
