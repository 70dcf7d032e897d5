//! Group commit: one background thread per log makes appended bytes durable.
//!
//! The shard thread never calls fdatasync. It copies records into the mapping, publishes the new end
//! (`written`, an atomic), and, when someone needs durability, asks for it. The flusher thread reads
//! `written`, flushes every mapping that may hold unflushed bytes, and publishes `durable`. Every
//! append that landed before a flush started is covered by it, so concurrent durable appends share
//! one flush, and a flush runs while the next batch is being appended: throughput under Sync
//! approaches the disk's sequential bandwidth instead of one fdatasync per request.
//!
//! Why a thread and not glommio's io_uring fdatasync: the storage engine stays independent of the
//! runtime (tests, benches and the fuzzer drive it without an executor), and on this kernel io_uring
//! runs fdatasync on an io-wq worker thread anyway, so the hand-off costs the same. Waiting is
//! asynchronous ([`DurableWait`] is a future woken by the flusher) or blocking
//! ([`Flusher::wait_blocking`]).
//!
//! A failed flush is sticky: the log is fail-stopped, because after an fdatasync error the kernel
//! may have dropped the dirty pages and a later successful flush would prove nothing.
//!
//! This module owns the flusher thread and the durable watermark; it never reads records.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::io::SegmentMap;

/// Makes a directory's entries durable (`Io::sync_dir`).
pub(crate) type SyncDirFn = Box<dyn Fn(&std::path::Path) -> io::Result<()> + Send>;
/// Replaces a small metadata file (`Io::write_file`).
pub(crate) type WriteFileFn = Box<dyn Fn(&std::path::Path, &[u8]) -> io::Result<()> + Send>;

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
    shutdown: bool,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    /// Wakes the flusher thread.
    work: Condvar,
    /// Wakes blocking waiters.
    done: Condvar,
    /// Every offset below this has been copied into a mapping (published by the shard).
    written: AtomicU64,
    failed: AtomicBool,
    flushes: AtomicU64,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // The flusher never panics while holding the lock; if a test did, keep going with the state.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The durable-watermark service of one log.
pub struct Flusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
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
    /// Starts the flusher thread for a log whose records below `next_offset` are already durable.
    /// With `interval`, it also flushes on its own every `interval` while bytes are unflushed.
    pub(crate) fn start(
        dir: PathBuf,
        next_offset: u64,
        interval: Option<Duration>,
        sync_dir: SyncDirFn,
        write_file: WriteFileFn,
    ) -> io::Result<Flusher> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                requested: next_offset,
                durable: next_offset,
                dirty: Vec::new(),
                after: Vec::new(),
                dir_dirty: false,
                error: None,
                waiters: Vec::new(),
                shutdown: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            written: AtomicU64::new(next_offset),
            failed: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("levee-flush".into())
            .spawn(move || run(&s, &dir, interval, &*sync_dir, &*write_file))?;
        Ok(Flusher {
            shared,
            thread: Some(thread),
        })
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

    /// Marks the newest sealed-able mapping as sealed at `next_offset` and queues its checkpoint.
    pub(crate) fn seal(&self, map: &Arc<dyn SegmentMap>, next_offset: u64, after: AfterFlush) {
        let mut st = lock(&self.shared.state);
        if let Some(d) = st.dirty.iter_mut().find(|d| Arc::ptr_eq(&d.map, map)) {
            d.sealed_at = Some(next_offset);
        }
        st.after.push(after);
        self.shared.work.notify_one();
    }

    /// Publishes that every offset below `next_offset` has been copied into a mapping.
    #[inline]
    pub(crate) fn published(&self, next_offset: u64) {
        debug_assert!(next_offset >= self.shared.written.load(Ordering::Relaxed));
        self.shared.written.store(next_offset, Ordering::Release);
    }

    /// Asks for a flush covering every offset below `next_offset`.
    pub(crate) fn request(&self, next_offset: u64) {
        let mut st = lock(&self.shared.state);
        if next_offset > st.requested {
            st.requested = next_offset;
            self.shared.work.notify_one();
        }
    }

    /// Every offset below this is durable.
    pub fn durable(&self) -> u64 {
        lock(&self.shared.state).durable
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
}

impl Drop for Flusher {
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.work.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
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

fn run(
    shared: &Shared,
    dir: &std::path::Path,
    interval: Option<Duration>,
    sync_dir: &dyn Fn(&std::path::Path) -> io::Result<()>,
    write_file: &dyn Fn(&std::path::Path, &[u8]) -> io::Result<()>,
) {
    let mut last_flush = Instant::now();
    loop {
        let mut st = lock(&shared.state);
        // Sleep until there is something to make durable, or the interval has passed with
        // unflushed bytes, or we are told to stop.
        loop {
            let written = shared.written.load(Ordering::Acquire);
            let due = interval.is_some_and(|i| last_flush.elapsed() >= i) && written > st.durable;
            if st.error.is_none() && (st.requested > st.durable || due) {
                break;
            }
            if st.shutdown {
                return;
            }
            st = match interval {
                Some(i) => {
                    let left = i
                        .saturating_sub(last_flush.elapsed())
                        .max(Duration::from_millis(1));
                    shared
                        .work
                        .wait_timeout(st, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => shared.work.wait(st).unwrap_or_else(|e| e.into_inner()),
            };
            if interval.is_some_and(|i| last_flush.elapsed() >= i)
                && shared.written.load(Ordering::Acquire) <= st.durable
            {
                last_flush = Instant::now();
            }
        }
        // Read the watermark before taking the list of mappings: a mapping is registered before
        // any byte is written into it, so every byte below `target` lives in a listed mapping.
        let target = shared.written.load(Ordering::Acquire);
        let maps: Vec<Arc<dyn SegmentMap>> = st.dirty.iter().map(|d| d.map.clone()).collect();
        let dir_dirty = std::mem::take(&mut st.dir_dirty);
        drop(st);

        let mut result = Ok(());
        if dir_dirty {
            result = sync_dir(dir);
        }
        if result.is_ok() {
            for m in &maps {
                if let Err(e) = m.flush() {
                    result = Err(e);
                    break;
                }
            }
        }
        last_flush = Instant::now();

        let mut st = lock(&shared.state);
        match result {
            Ok(()) => {
                shared.flushes.fetch_add(1, Ordering::Relaxed);
                st.durable = st.durable.max(target);
                let durable = st.durable;
                st.dirty
                    .retain(|d| d.sealed_at.is_none_or(|end| end > durable));
                let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut st.after)
                    .into_iter()
                    .partition(|a| a.covers <= durable);
                st.after = later;
                // Checkpoints are small; write them outside the lock so waiters are not held up.
                let woken = take_ready(&mut st, durable);
                drop(st);
                for w in woken {
                    w.wake();
                }
                shared.done.notify_all();
                for a in ready {
                    if let Err(e) = write_file(&a.path, &a.bytes) {
                        // A lost checkpoint costs a rescan at the next open, nothing more.
                        tracing::warn!(path = %a.path.display(), error = %e, "index checkpoint not written");
                        continue;
                    }
                }
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "flush failed; log is now read-only");
                st.error = Some((e.kind(), e.to_string()));
                shared.failed.store(true, Ordering::Release);
                let woken: Vec<Waker> = st.waiters.drain(..).map(|(_, w)| w).collect();
                drop(st);
                for w in woken {
                    w.wake();
                }
                shared.done.notify_all();
            }
        }
    }
}

fn take_ready(st: &mut State, durable: u64) -> Vec<Waker> {
    let mut woken = Vec::new();
    st.waiters.retain(|(t, w)| {
        if *t <= durable {
            woken.push(w.clone());
            false
        } else {
            true
        }
    });
    woken
}
