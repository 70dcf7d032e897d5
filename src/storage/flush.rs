//! Group commit: a small pool of storage threads makes the appended bytes of every log durable.
//!
//! The shard thread never calls fdatasync. It copies records into the mapping, publishes the new end
//! (`written`, an atomic), and, when someone needs durability, asks for it. A pool thread then reads
//! `written`, flushes every mapping of that log that may hold unflushed bytes, and publishes
//! `durable`. Every append that landed before a flush started is covered by it, so concurrent
//! durable appends share one flush, and a flush runs while the next batch is being appended:
//! throughput under Sync approaches the disk's sequential bandwidth instead of one fdatasync per
//! request.
//!
//! ```text
//!  shard thread                      FlushPool (N threads, shared by every log of the broker)
//!  append → published(next) ──┐      ready queue ──► flush round of one log: sync dir, fdatasync
//!  wait_durable → request() ──┼────► (a log is queued at most once)   maps, durable = target,
//!                             │                                       wake waiters, checkpoints
//!  first unflushed byte ──────┴────► timer heap: (now + interval, log) ──► ready queue when due
//! ```
//!
//! One pool serves every log, so a broker with 10 000 partitions has a handful of flusher threads,
//! not 10 000; a log that is flushed is in the ready queue at most once and is flushed by one thread
//! at a time. The pool also runs other short storage jobs ([`FlushPool::spawn`]: preparing the next
//! segment) so that no log ever starts a thread of its own.
//!
//! Why threads and not glommio's io_uring fdatasync: the storage engine stays independent of the
//! runtime (tests, benches and the fuzzer drive it without an executor), and on this kernel
//! io_uring runs fdatasync on an io-wq worker thread anyway, so the hand-off costs the same.
//! Waiting is asynchronous ([`DurableWait`] is a future woken by the pool) or blocking
//! ([`Flusher::wait_blocking`]).
//!
//! A failed flush is sticky: the log is fail-stopped, because after an fdatasync error the kernel
//! may have dropped the dirty pages and a later successful flush would prove nothing.
//!
//! This module owns the flusher threads and the durable watermarks; it never reads records.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::io::SegmentMap;

/// Makes a directory's entries durable (`Io::sync_dir`).
pub(crate) type SyncDirFn = Box<dyn Fn(&std::path::Path) -> io::Result<()> + Send + Sync>;
/// Replaces a small metadata file (`Io::write_file`).
pub(crate) type WriteFileFn = Box<dyn Fn(&std::path::Path, &[u8]) -> io::Result<()> + Send + Sync>;
/// Records a failed flush where a restart will find it (the log's fail-stop marker).
pub(crate) type OnFailureFn = Box<dyn Fn(&str) + Send + Sync>;

/// A checkpoint to write once the bytes it describes are durable (a checkpoint describes durable
/// data only). It does not cause a flush by itself: it rides on the next one (a durable ack, the
/// interval, or close), so a roll under `Durability::None` costs no fdatasync.
pub(crate) struct AfterFlush {
    /// Checkpoint file to write.
    pub path: PathBuf,
    /// Its encoded content.
    pub bytes: Vec<u8>,
    /// The next offset the checkpoint covers; the job waits until `durable` reaches it.
    pub covers: u64,
}

/// A mapping that may hold unflushed bytes, with the next offset at its end once it is sealed.
struct DirtyMap {
    map: Arc<dyn SegmentMap>,
    sealed_at: Option<u64>,
}

struct State {
    /// The largest next-offset somebody waits to see durable.
    requested: u64,
    /// Every offset below this is durable.
    durable: u64,
    dirty: Vec<DirtyMap>,
    after: Vec<AfterFlush>,
    /// The directory's entries changed (a segment was created or renamed).
    dir_dirty: bool,
    error: Option<(io::ErrorKind, String)>,
    waiters: Vec<(u64, Waker)>,
    /// In the pool's ready queue, or being flushed: never queued twice.
    queued: bool,
    /// A pool thread is flushing this log right now.
    running: bool,
    /// The log was dropped: queued work for it is skipped.
    closed: bool,
}

/// One log's durability state, shared between its shard and the pool.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Wakes blocking waiters (and a drop waiting for a running round).
    done: Condvar,
    /// Every offset below this has been copied into a mapping (published by the shard).
    written: AtomicU64,
    failed: AtomicBool,
    flushes: AtomicU64,
    /// Notified whenever `durable` moves (or the log fails): readers of durable-only topics wait
    /// on it without asking for a flush.
    advanced: event_listener::Event,
    /// Directory changes marked so far, and how many of them a completed directory sync covers:
    /// a job that needs a change durable syncs the directory itself only if no flush did.
    dir_changes: AtomicU64,
    dir_synced: AtomicU64,
    /// A timer entry is armed for the bytes published since the last flush.
    timer_armed: AtomicBool,
    dir: PathBuf,
    interval: Option<Duration>,
    sync_dir: SyncDirFn,
    write_file: WriteFileFn,
    on_failure: OnFailureFn,
    pool: Arc<PoolShared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Pool threads never panic while holding a lock; if a test did, keep going with the state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Work the pool runs.
enum Job {
    /// One flush round of a log.
    Flush(Arc<Shared>),
    /// A short storage job (preparing a segment).
    Run(Box<dyn FnOnce() + Send>),
}

struct Queue {
    ready: VecDeque<Job>,
    /// Logs with unflushed bytes under `Durability::Interval`, by the instant they are due.
    timers: BinaryHeap<Reverse<Timer>>,
    shutdown: bool,
}

struct Timer {
    due: Instant,
    log: Weak<Shared>,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.due.cmp(&other.due)
    }
}

pub(crate) struct PoolShared {
    queue: Mutex<Queue>,
    work: Condvar,
    stats: FlushStats,
}

/// Upper bounds, in µs, of the flush-latency buckets [`FlushStats`] counts (the last bucket is
/// everything above).
pub const FLUSH_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// What the storage threads' flush rounds cost: counts and a latency histogram (a round is the
/// directory sync, if due, and the fdatasync of every dirty mapping of one log). Atomics only:
/// read by the metrics endpoint without stopping anything.
#[derive(Debug, Default)]
pub struct FlushStats {
    rounds: AtomicU64,
    failed: AtomicU64,
    sum_us: AtomicU64,
    buckets: [AtomicU64; FLUSH_BUCKETS_US.len() + 1],
}

/// A copy of [`FlushStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushSnapshot {
    /// Rounds that completed.
    pub rounds: u64,
    /// Rounds that failed (each fail-stops its log).
    pub failed: u64,
    /// Total time of the completed rounds, µs.
    pub sum_us: u64,
    /// Rounds per bucket of [`FLUSH_BUCKETS_US`], not cumulative; the last is above the last bound.
    pub buckets: Vec<u64>,
}

impl FlushStats {
    fn observe(&self, took: Duration, ok: bool) {
        if !ok {
            self.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.rounds.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        let i = FLUSH_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(FLUSH_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> FlushSnapshot {
        FlushSnapshot {
            rounds: self.rounds.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            sum_us: self.sum_us.load(Ordering::Relaxed),
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

impl PoolShared {
    fn push(&self, job: Job) {
        lock(&self.queue).ready.push_back(job);
        self.work.notify_one();
    }
}

/// The storage threads of a broker: flush rounds of every log, interval flushes, and short jobs
/// such as preparing a segment. Dropping the pool finishes the queued work and joins the threads.
pub struct FlushPool {
    shared: Arc<PoolShared>,
    threads: Vec<JoinHandle<()>>,
}

impl FlushPool {
    /// What the flush rounds of every log on this pool cost so far.
    pub fn flush_stats(&self) -> FlushSnapshot {
        self.shared.stats.snapshot()
    }

    /// Starts `threads` (at least 1) storage threads.
    pub fn new(threads: usize) -> io::Result<FlushPool> {
        let shared = Arc::new(PoolShared {
            queue: Mutex::new(Queue {
                ready: VecDeque::new(),
                timers: BinaryHeap::new(),
                shutdown: false,
            }),
            work: Condvar::new(),
            stats: FlushStats::default(),
        });
        let mut pool = FlushPool {
            shared,
            threads: Vec::new(),
        };
        for i in 0..threads.max(1) {
            let s = pool.shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("levee-storage-{i}"))
                .spawn(move || worker(&s))?;
            pool.threads.push(t);
        }
        Ok(pool)
    }

    /// Number of threads.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    pub(crate) fn shared(&self) -> &Arc<PoolShared> {
        &self.shared
    }
}

pub(crate) fn spawn_on<T: Send + 'static>(
    pool: &Arc<PoolShared>,
    job: impl FnOnce() -> T + Send + 'static,
) -> std::sync::mpsc::Receiver<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    pool.push(Job::Run(Box::new(move || {
        let _ = tx.send(job());
    })));
    rx
}

impl Drop for FlushPool {
    fn drop(&mut self) {
        lock(&self.shared.queue).shutdown = true;
        self.shared.work.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn worker(pool: &PoolShared) {
    loop {
        let job = {
            let mut q = lock(&pool.queue);
            loop {
                let now = Instant::now();
                while q.timers.peek().is_some_and(|Reverse(t)| t.due <= now) {
                    let Some(Reverse(t)) = q.timers.pop() else {
                        break;
                    };
                    if let Some(log) = t.log.upgrade() {
                        // Queued outside the queue lock: `enqueue` takes the log's state lock.
                        drop(q);
                        enqueue(&log, None);
                        q = lock(&pool.queue);
                    }
                }
                if let Some(job) = q.ready.pop_front() {
                    break Some(job);
                }
                if q.shutdown {
                    break None;
                }
                q = match q.timers.peek().map(|Reverse(t)| t.due) {
                    Some(due) => {
                        let left = due.saturating_duration_since(now);
                        pool.work
                            .wait_timeout(q, left.max(Duration::from_millis(1)))
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                    None => pool.work.wait(q).unwrap_or_else(|e| e.into_inner()),
                };
            }
        };
        match job {
            None => return,
            Some(Job::Run(f)) => f(),
            Some(Job::Flush(log)) => flush_round(&log),
        }
    }
}

/// Puts the log in the ready queue unless it is there already. With `requested`, first raises
/// the offset somebody waits for.
fn enqueue(log: &Arc<Shared>, requested: Option<u64>) {
    {
        let mut st = lock(&log.state);
        if let Some(r) = requested {
            if r <= st.requested {
                return;
            }
            st.requested = r;
        }
        if st.queued || st.closed {
            return;
        }
        st.queued = true;
    }
    log.pool.push(Job::Flush(log.clone()));
}

/// Arms the interval timer for bytes published after the last flush.
fn arm_timer(log: &Arc<Shared>) {
    let Some(interval) = log.interval else {
        return;
    };
    if log.timer_armed.swap(true, Ordering::AcqRel) {
        return;
    }
    let mut q = lock(&log.pool.queue);
    q.timers.push(Reverse(Timer {
        due: Instant::now() + interval,
        log: Arc::downgrade(log),
    }));
    drop(q);
    log.pool.work.notify_one();
}

/// One flush: everything written when it starts becomes durable, or the log fails.
fn flush_round(log: &Arc<Shared>) {
    let mut st = lock(&log.state);
    if st.closed || st.error.is_some() {
        st.queued = false;
        drop(st);
        log.done.notify_all();
        return;
    }
    st.running = true;
    // Read the watermark before taking the list of mappings: a mapping is registered before any
    // byte is written into it, so every byte below `target` lives in a listed mapping.
    let target = log.written.load(Ordering::Acquire);
    let maps: Vec<Arc<dyn SegmentMap>> = st.dirty.iter().map(|d| d.map.clone()).collect();
    let dir_dirty = std::mem::take(&mut st.dir_dirty);
    let dir_changes = log.dir_changes.load(Ordering::Acquire);
    drop(st);
    // Bytes published from here on need a timer of their own.
    log.timer_armed.store(false, Ordering::Release);

    let started = Instant::now();
    let mut result = Ok(());
    if dir_dirty {
        result = (log.sync_dir)(&log.dir);
        if result.is_ok() {
            log.dir_synced.fetch_max(dir_changes, Ordering::AcqRel);
        }
    }
    if result.is_ok() {
        for m in &maps {
            if let Err(e) = m.flush() {
                result = Err(e);
                break;
            }
        }
    }

    log.pool.stats.observe(started.elapsed(), result.is_ok());
    let mut st = lock(&log.state);
    st.running = false;
    let ready = match result {
        Ok(()) => {
            log.flushes.fetch_add(1, Ordering::Relaxed);
            st.durable = st.durable.max(target);
            let durable = st.durable;
            st.dirty
                .retain(|d| d.sealed_at.is_none_or(|end| end > durable));
            let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut st.after)
                .into_iter()
                .partition(|a| a.covers <= durable);
            st.after = later;
            ready
        }
        Err(e) => {
            tracing::error!(dir = %log.dir.display(), error = %e, "flush failed; log is now read-only");
            st.error = Some((e.kind(), e.to_string()));
            log.failed.store(true, Ordering::Release);
            // Sticky across a restart too: after an fdatasync error the page cache may still
            // show data the disk never took, and a reopened log would trust it.
            (log.on_failure)(&e.to_string());
            Vec::new()
        }
    };
    let durable = st.durable;
    let failed = st.error.is_some();
    let woken = take_ready(&mut st, durable, failed);
    // Someone asked for more while this round ran: stay queued for another.
    let again = !failed && !st.closed && st.requested > st.durable;
    st.queued = again;
    drop(st);
    for w in woken {
        w.wake();
    }
    log.done.notify_all();
    log.advanced.notify(usize::MAX);
    if again {
        log.pool.push(Job::Flush(log.clone()));
    }
    if !failed && log.written.load(Ordering::Acquire) > durable {
        arm_timer(log);
    }
    // Checkpoints are small; written outside the lock so waiters are not held up.
    for a in ready {
        if let Err(e) = (log.write_file)(&a.path, &a.bytes) {
            // A lost checkpoint costs a rescan at the next open, nothing more.
            tracing::warn!(path = %a.path.display(), error = %e, "index checkpoint not written");
        }
    }
}

fn take_ready(st: &mut State, durable: u64, all: bool) -> Vec<Waker> {
    let mut woken = Vec::new();
    st.waiters.retain(|(t, w)| {
        if all || *t <= durable {
            woken.push(w.clone());
            false
        } else {
            true
        }
    });
    woken
}

/// The durable-watermark service of one log.
pub struct Flusher {
    shared: Arc<Shared>,
}

/// Why a durable wait did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("flush failed ({kind:?}): {message}")]
pub struct FlushError {
    /// The I/O error kind of the failed flush.
    pub kind: io::ErrorKind,
    /// Its message.
    pub message: String,
}

impl Flusher {
    /// The durability service of a log whose records below `next_offset` are already durable.
    /// With `interval`, bytes are also flushed at most `interval` after they were published.
    pub(crate) fn start(
        pool: &Arc<PoolShared>,
        dir: PathBuf,
        next_offset: u64,
        interval: Option<Duration>,
        sync_dir: SyncDirFn,
        write_file: WriteFileFn,
        on_failure: OnFailureFn,
    ) -> Flusher {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                requested: next_offset,
                durable: next_offset,
                dirty: Vec::new(),
                after: Vec::new(),
                dir_dirty: false,
                error: None,
                waiters: Vec::new(),
                queued: false,
                running: false,
                closed: false,
            }),
            done: Condvar::new(),
            written: AtomicU64::new(next_offset),
            failed: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
            advanced: event_listener::Event::new(),
            dir_changes: AtomicU64::new(0),
            dir_synced: AtomicU64::new(0),
            timer_armed: AtomicBool::new(false),
            dir,
            interval,
            sync_dir,
            write_file,
            on_failure,
            pool: pool.clone(),
        });
        Flusher { shared }
    }

    /// Registers a mapping that will receive appends. Must be called before the first byte is
    /// written to it, so a flush that sees those bytes in `written` also sees the mapping.
    pub(crate) fn add_map(&self, map: Arc<dyn SegmentMap>, created: bool) {
        let mut st = lock(&self.shared.state);
        st.dirty.push(DirtyMap {
            map,
            sealed_at: None,
        });
        st.dir_dirty |= created;
    }

    /// Marks the directory's entries as changed (a segment retired, renamed or removed): the next
    /// flush syncs the directory before it makes anything durable.
    pub(crate) fn dir_changed(&self) {
        let mut st = lock(&self.shared.state);
        st.dir_dirty = true;
        self.shared.dir_changes.fetch_add(1, Ordering::AcqRel);
    }

    /// A check, for another thread, that every directory change marked so far is durable:
    /// `true` once a flush has synced the directory since.
    pub(crate) fn dir_changes_durable(&self) -> impl Fn() -> bool + Send + 'static {
        let shared = self.shared.clone();
        let needed = shared.dir_changes.load(Ordering::Acquire);
        move || shared.dir_synced.load(Ordering::Acquire) >= needed
    }

    /// Marks a mapping as sealed at `next_offset` and queues its checkpoint.
    pub(crate) fn seal(&self, map: &Arc<dyn SegmentMap>, next_offset: u64, after: AfterFlush) {
        let mut st = lock(&self.shared.state);
        if let Some(d) = st.dirty.iter_mut().find(|d| Arc::ptr_eq(&d.map, map)) {
            d.sealed_at = Some(next_offset);
        }
        st.after.push(after);
    }

    /// Publishes that every offset below `next_offset` has been copied into a mapping.
    #[inline]
    pub(crate) fn published(&self, next_offset: u64) {
        debug_assert!(next_offset >= self.shared.written.load(Ordering::Relaxed));
        self.shared.written.store(next_offset, Ordering::Release);
        if self.shared.interval.is_some() && !self.shared.timer_armed.load(Ordering::Relaxed) {
            arm_timer(&self.shared);
        }
    }

    /// Asks for a flush covering every offset below `next_offset`.
    pub(crate) fn request(&self, next_offset: u64) {
        enqueue(&self.shared, Some(next_offset));
    }

    /// Every offset below this is durable.
    pub fn durable(&self) -> u64 {
        lock(&self.shared.state).durable
    }

    /// A listener notified when the durable offset next moves (without asking for a flush).
    pub fn watch(&self) -> event_listener::EventListener {
        self.shared.advanced.listen()
    }

    /// True once a flush has failed: the log takes no more writes.
    #[inline]
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// The failure, if a flush failed.
    pub fn error(&self) -> Option<FlushError> {
        lock(&self.shared.state)
            .error
            .as_ref()
            .map(|(kind, message)| FlushError {
                kind: *kind,
                message: message.clone(),
            })
    }

    /// How many flush rounds completed (each may cover many appends).
    pub fn flush_count(&self) -> u64 {
        self.shared.flushes.load(Ordering::Relaxed)
    }

    /// A future that resolves once every offset below `next_offset` is durable.
    pub fn wait(&self, next_offset: u64) -> DurableWait {
        self.request(next_offset);
        DurableWait {
            shared: self.shared.clone(),
            target: next_offset,
        }
    }

    /// Blocks until every offset below `next_offset` is durable.
    pub fn wait_blocking(&self, next_offset: u64) -> Result<(), FlushError> {
        self.request(next_offset);
        let mut st = lock(&self.shared.state);
        loop {
            if let Some((kind, message)) = &st.error {
                return Err(FlushError {
                    kind: *kind,
                    message: message.clone(),
                });
            }
            if st.durable >= next_offset {
                return Ok(());
            }
            st = self.shared.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Forgets durability above `next_offset` after a truncation.
    pub(crate) fn truncated(&self, next_offset: u64) {
        let mut st = lock(&self.shared.state);
        st.durable = st.durable.min(next_offset);
        st.requested = st.requested.min(next_offset);
        st.after.retain(|a| a.covers <= next_offset);
        self.shared.written.store(next_offset, Ordering::Release);
    }

    /// Drops a mapping that was deleted (retention) or truncated away.
    pub(crate) fn forget_map(&self, map: &Arc<dyn SegmentMap>) {
        lock(&self.shared.state)
            .dirty
            .retain(|d| !Arc::ptr_eq(&d.map, map));
    }

    /// Replaces a mapping by a larger one of the same file (the active segment grew), keeping its
    /// place: bytes written through either are flushed by flushing the new one.
    pub(crate) fn replace_map(&self, old: &Arc<dyn SegmentMap>, new: Arc<dyn SegmentMap>) {
        let mut st = lock(&self.shared.state);
        match st.dirty.iter_mut().find(|d| Arc::ptr_eq(&d.map, old)) {
            Some(d) => d.map = new,
            None => st.dirty.push(DirtyMap {
                map: new,
                sealed_at: None,
            }),
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // No more rounds for this log; wait for one that is running, so that nothing writes into
        // its directory once the log is gone (a restart may reopen it at once).
        let mut st = lock(&self.shared.state);
        st.closed = true;
        while st.running {
            st = self.shared.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let woken: Vec<Waker> = st.waiters.drain(..).map(|(_, w)| w).collect();
        drop(st);
        for w in woken {
            w.wake();
        }
    }
}

/// Resolves once the requested offsets are durable, or with the flush error.
pub struct DurableWait {
    shared: Arc<Shared>,
    target: u64,
}

impl Future for DurableWait {
    type Output = Result<(), FlushError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = lock(&self.shared.state);
        if let Some((kind, message)) = &st.error {
            return Poll::Ready(Err(FlushError {
                kind: *kind,
                message: message.clone(),
            }));
        }
        if st.durable >= self.target {
            return Poll::Ready(Ok(()));
        }
        if st.closed {
            return Poll::Ready(Err(FlushError {
                kind: io::ErrorKind::Interrupted,
                message: format!("log {} was closed", self.shared.dir.display()),
            }));
        }
        let target = self.target;
        match st
            .waiters
            .iter_mut()
            .find(|(t, w)| *t == target && w.will_wake(cx.waker()))
        {
            Some(_) => {}
            None => st.waiters.push((target, cx.waker().clone())),
        }
        Poll::Pending
    }
}
