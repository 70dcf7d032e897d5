//! The I/O seam: every byte the storage engine writes, flushes or reserves goes through [`Io`] and
//! [`SegmentMap`].
//!
//! Two implementations:
//! - [`MmapIo`]: real files, `fallocate` for reservation (a full disk is a typed error when a
//!   segment is created, never a SIGBUS on a page fault), `memmap2` shared mappings for writes and
//!   reads, `fdatasync` for flushes.
//! - [`SimIo`]: an in-memory disk for tests and fuzzing that keeps two images of every file, what
//!   the process sees and what would survive a power cut, and can fail a flush (EIO) or run out of
//!   space on demand. [`SimIo::crash`] produces the disk a power cut would leave.
//!
//! This module owns files and mappings. It knows nothing of records, offsets or indexes.

use std::cell::UnsafeCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Page granularity of the simulated disk: what a power cut keeps or loses as a unit (sectors within
/// a page can tear too; see [`SimIo::crash`]).
pub const SIM_PAGE_BYTES: usize = 4096;

/// A file system as the storage engine uses it.
pub trait Io: Clone + Send + Sync + 'static {
    /// A mapped segment file.
    type Map: SegmentMap;

    /// Creates `path` with `len` bytes reserved on disk (possibly 0) and maps them. Fails with
    /// `ErrorKind::StorageFull` (ENOSPC) when the disk cannot hold `len` bytes.
    fn create(&self, path: &Path, len: usize) -> io::Result<Self::Map>;
    /// Maps an existing file. When `reserve` is larger than the file, the file is first extended and
    /// reserved to `reserve` bytes.
    fn open(&self, path: &Path, reserve: Option<usize>) -> io::Result<Self::Map>;
    /// Reuses a retired segment file as a new one: renames `from` to `to`, reserves `len` bytes and
    /// maps them, faulting in the pages. The old file's page-cache pages are reused as they are,
    /// which is the point: fresh pages must be allocated and zeroed, and on this VM a first touch
    /// costs ≈2 µs a page. The old records stay in the file until overwritten; recovery tells them
    /// from new ones by their offsets, which are all below the new segment's base.
    fn recycle(&self, from: &Path, to: &Path, len: usize) -> io::Result<Self::Map>;
    /// Deletes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Makes the directory's entries (created, renamed, removed files) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Replaces a small metadata file (an index checkpoint) atomically: readers see the old or the
    /// new content, never a mix. Not flushed: metadata files are checksummed and rebuildable.
    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Reads a small metadata file; `None` when it does not exist.
    fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
}

/// A mapped segment file. One thread writes, any thread may flush, readers read what was written.
pub trait SegmentMap: Send + Sync + 'static {
    /// Mapped length in bytes (the reservation for an active segment).
    fn len(&self) -> usize;
    /// True when nothing is mapped.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Start of the mapping.
    fn as_ptr(&self) -> *const u8;
    /// Copies `data` to `position`.
    ///
    /// # Safety
    /// Only one thread writes to a map, and no reference to `position..position + data.len()` is
    /// alive: the segment hands out slices only of bytes written before, and writes only after them.
    unsafe fn write(&self, position: usize, data: &[u8]);
    /// Makes every byte written before this call durable (fdatasync).
    fn flush(&self) -> io::Result<()>;
    /// Discards `position..position + len` so it reads back as zeros, now and after a crash. Used by
    /// recovery to erase a cut tail, so that stale records past the cut can never be revived.
    ///
    /// # Safety
    /// As for [`SegmentMap::write`]: no reference to the range is alive.
    unsafe fn zero(&self, position: usize, len: usize) -> io::Result<()>;
    /// Borrows `position..position + len`.
    ///
    /// # Safety
    /// The range was written (or read from disk) and nobody writes to it while the slice lives.
    unsafe fn slice(&self, position: usize, len: usize) -> &[u8] {
        assert!(position
            .checked_add(len)
            .is_some_and(|end| end <= self.len()));
        if len == 0 {
            return &[];
        }
        // SAFETY: in bounds (asserted), and the caller guarantees nobody writes the range.
        unsafe { std::slice::from_raw_parts(self.as_ptr().add(position), len) }
    }
}

#[cfg(feature = "broker")]
pub use mmap::{MmapIo, MmapSegment, WritePath};

#[cfg(feature = "broker")]
mod mmap {
    use super::*;
    use memmap2::{MmapOptions, MmapRaw};
    use std::fs::{File, OpenOptions};
    use std::os::fd::AsRawFd;

    /// How appended bytes reach a segment file. Reads always borrow from the shared mapping.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum WritePath {
        /// `pwrite` into the file: the kernel copies into the page cache the mapping shares. No
        /// write fault per page, and a flush need not write-protect pages mapped writable in this
        /// process, each of which costs a TLB-shootdown IPI to every core running it (a VM exit
        /// here). Measured 2-3× the mmap path under Sync on this VM (tuning.md).
        #[default]
        Pwrite,
        /// `memcpy` into the writable shared mapping.
        Mmap,
    }

    /// Real files, memory-mapped with memmap2.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct MmapIo {
        /// How appends reach the file.
        pub write_path: WritePath,
    }

    /// A segment file and its shared mapping.
    pub struct MmapSegment {
        file: File,
        /// `None` for an empty file, which cannot be mapped.
        map: Option<MmapRaw>,
        write_path: WritePath,
    }

    fn reserve(file: &File, len: usize) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        // fallocate, not set_len: set_len would leave a sparse file whose blocks are allocated on
        // the first page fault, and a full disk would then be a SIGBUS in the middle of an append.
        let len = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: plain syscall on an fd we own.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn map(file: File, populate: bool, write_path: WritePath) -> io::Result<MmapSegment> {
        let len =
            usize::try_from(file.metadata()?.len()).map_err(|_| io::ErrorKind::InvalidData)?;
        if len == 0 {
            return Ok(MmapSegment {
                file,
                map: None,
                write_path,
            });
        }
        let mut opts = MmapOptions::new();
        opts.len(len);
        if populate {
            opts.populate();
        }
        let map = opts.map_raw(&file)?;
        Ok(MmapSegment {
            file,
            map: Some(map),
            write_path,
        })
    }

    impl Io for MmapIo {
        type Map = MmapSegment;

        fn create(&self, path: &Path, len: usize) -> io::Result<MmapSegment> {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)?;
            if let Err(e) = reserve(&file, len) {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
            // Writing through the mapping: MAP_POPULATE faults the pages in read-only, so the page
            // cache pages exist and are mapped, and the first write only takes a cheap
            // write-protect fault (writable pre-faulting would dirty every page and make the disk
            // write the zeros too). Writing with pwrite: do not populate. Populating makes the
            // kernel allocate and zero every page (≈0.45 GB/s on this VM), while a pwrite of whole
            // pages into the page cache needs no zeroing at all.
            map(file, self.write_path == WritePath::Mmap, self.write_path)
        }

        fn recycle(&self, from: &Path, to: &Path, len: usize) -> io::Result<MmapSegment> {
            std::fs::rename(from, to)?;
            let file = OpenOptions::new().read(true).write(true).open(to)?;
            reserve(&file, len)?;
            // The recycled file's pages are resident: mapping them in is cheap either way.
            map(file, true, self.write_path)
        }

        fn open(&self, path: &Path, reserve_len: Option<usize>) -> io::Result<MmapSegment> {
            let file = OpenOptions::new().read(true).write(true).open(path)?;
            if let Some(want) = reserve_len {
                if (file.metadata()?.len() as usize) < want {
                    reserve(&file, want)?;
                }
            }
            map(file, false, self.write_path)
        }

        fn remove(&self, path: &Path) -> io::Result<()> {
            std::fs::remove_file(path)
        }

        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            std::fs::rename(from, to)
        }

        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            std::fs::create_dir_all(dir)
        }

        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            let mut names = Vec::new();
            for entry in std::fs::read_dir(dir)? {
                if let Some(name) = entry?.file_name().to_str() {
                    names.push(name.to_owned());
                }
            }
            Ok(names)
        }

        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            File::open(dir)?.sync_all()
        }

        fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, path)
        }

        fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
            match std::fs::read(path) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        }
    }

    impl SegmentMap for MmapSegment {
        fn len(&self) -> usize {
            self.map.as_ref().map_or(0, |m| m.len())
        }

        fn as_ptr(&self) -> *const u8 {
            self.map
                .as_ref()
                .map_or(std::ptr::NonNull::dangling().as_ptr(), |m| m.as_ptr())
        }

        unsafe fn write(&self, position: usize, data: &[u8]) {
            let map = self.map.as_ref().expect("write to an unmapped segment");
            assert!(position
                .checked_add(data.len())
                .is_some_and(|end| end <= map.len()));
            match self.write_path {
                WritePath::Pwrite => {
                    // The trait has no error path for writes: the file is reserved (fallocate), so
                    // the disk cannot be full here, and an I/O error on the page cache copy is
                    // as fatal as a SIGBUS on the mapping would be.
                    if let Err(e) =
                        std::os::unix::fs::FileExt::write_all_at(&self.file, data, position as u64)
                    {
                        panic!("write to a reserved segment failed: {e}");
                    }
                }
                // SAFETY: in bounds (asserted); the caller guarantees a single writer and no reader.
                WritePath::Mmap => unsafe {
                    std::ptr::copy_nonoverlapping(
                        data.as_ptr(),
                        map.as_mut_ptr().add(position),
                        data.len(),
                    )
                },
            }
        }

        fn flush(&self) -> io::Result<()> {
            // fdatasync writes back the dirty page-cache pages, which include the pages dirtied
            // through the shared mapping: it is msync(MS_SYNC) for the whole file, without the
            // need to hold the mapping on this thread.
            self.file.sync_data()
        }

        unsafe fn zero(&self, position: usize, len: usize) -> io::Result<()> {
            if len == 0 {
                return Ok(());
            }
            let map = self.map.as_ref().expect("zero of an unmapped segment");
            assert!(position
                .checked_add(len)
                .is_some_and(|end| end <= map.len()));
            let (Ok(off), Ok(l)) = (libc::off_t::try_from(position), libc::off_t::try_from(len))
            else {
                return Err(io::ErrorKind::InvalidInput.into());
            };
            // ZERO_RANGE keeps the blocks reserved and is a metadata operation on ext4/xfs; where
            // the file system does not support it, write the zeros through the mapping.
            // SAFETY: plain syscall on an fd we own.
            let rc = unsafe {
                libc::fallocate(self.file.as_raw_fd(), libc::FALLOC_FL_ZERO_RANGE, off, l)
            };
            if rc != 0 {
                // SAFETY: in bounds (asserted); the caller guarantees no reader of the range.
                unsafe { std::ptr::write_bytes(map.as_mut_ptr().add(position), 0, len) };
            }
            Ok(())
        }
    }
}

/// Injected faults and the bookkeeping shared by every file of a [`SimIo`].
#[derive(Default)]
struct SimFs {
    files: BTreeMap<PathBuf, Arc<SimFile>>,
    metadata: BTreeMap<PathBuf, Vec<u8>>,
    /// Bytes that may still be reserved; `None` is unlimited.
    space_left: Option<u64>,
    /// Flushes that still succeed before every flush fails with EIO; `None` is never.
    flushes_left: Option<u64>,
}

/// An in-memory disk for tests and fuzzing, with fault injection and power-cut simulation.
///
/// Directory operations and metadata files are modelled as durable at once; segment data is
/// durable only once flushed, at page granularity, as on a real disk.
#[derive(Clone, Default)]
pub struct SimIo {
    fs: Arc<Mutex<SimFs>>,
    flushes: Arc<AtomicU64>,
}

/// A segment file of [`SimIo`].
pub struct SimFile {
    /// What the process sees. Written by the single writer, read by readers of written ranges.
    data: Box<[UnsafeCell<u8>]>,
    state: Mutex<SimFileState>,
    /// Weak: the file table holds the files, so a strong reference back would be a cycle and leak
    /// every simulated disk (found by the segment_recovery fuzzer).
    fs: Weak<Mutex<SimFs>>,
    flushes: Arc<AtomicU64>,
}

struct SimFileState {
    /// What survives a power cut.
    durable: Vec<u8>,
    /// Pages written since the last flush.
    dirty: BTreeSet<usize>,
    /// File length.
    len: usize,
}

impl std::fmt::Debug for SimFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimFile")
            .field("len", &self.data.len())
            .finish()
    }
}

// SAFETY: `data` is written by one thread at a time under the contract of `SegmentMap::write`
// (writes take `state` too, so a concurrent flush never copies a page while it is written), and
// readers only read ranges nobody writes.
unsafe impl Sync for SimFile {}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock already failed; keep the data for the report.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SimIo {
    /// An empty simulated disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// Limits the bytes that may still be reserved; creating a segment beyond it fails with
    /// ENOSPC.
    pub fn set_space_left(&self, bytes: Option<u64>) {
        lock(&self.fs).space_left = bytes;
    }

    /// After `n` more successful flushes, every flush fails with EIO.
    pub fn fail_flushes_after(&self, n: Option<u64>) {
        lock(&self.fs).flushes_left = n;
    }

    /// How many flushes completed so far.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Builds a disk holding `files` as durable content (e.g. an arbitrary segment for fuzzing).
    pub fn with_files(files: impl IntoIterator<Item = (PathBuf, Vec<u8>)>) -> Self {
        let io = SimIo::new();
        for (path, bytes) in files {
            io.insert(path, bytes);
        }
        io
    }

    fn insert(&self, path: PathBuf, bytes: Vec<u8>) {
        let file = SimFile::new(bytes, &self.fs, self.flushes.clone());
        lock(&self.fs).files.insert(path, Arc::new(file));
    }

    /// The bytes the process currently sees in a segment file (up to its length).
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let fs = lock(&self.fs);
        let f = fs.files.get(path)?;
        let st = lock(&f.state);
        // SAFETY: test inspection; callers stop the writer first.
        Some((0..st.len).map(|i| unsafe { *f.data[i].get() }).collect())
    }

    /// Overwrites bytes of a file in both images, as a bit flip on disk would.
    pub fn corrupt(&self, path: &Path, position: usize, bytes: &[u8]) {
        let fs = lock(&self.fs);
        if let Some(f) = fs.files.get(path) {
            let mut st = lock(&f.state);
            for (i, b) in bytes.iter().enumerate() {
                if let Some(cell) = f.data.get(position + i) {
                    // SAFETY: test-only mutation while no writer runs.
                    unsafe { *cell.get() = *b };
                }
                if let Some(d) = st.durable.get_mut(position + i) {
                    *d = *b;
                }
            }
        }
    }

    /// Names of all files, segment and metadata.
    pub fn paths(&self) -> Vec<PathBuf> {
        let fs = lock(&self.fs);
        fs.files.keys().chain(fs.metadata.keys()).cloned().collect()
    }

    /// The disk a power cut would leave: every flushed byte, plus, for each page written since its
    /// file's last flush, a choice made by `keep(page_index)`: `None` drops the page, `Some(n)`
    /// keeps its first `n` bytes (a torn write) from the new content.
    pub fn crash(&self, mut keep: impl FnMut(usize) -> Option<usize>) -> SimIo {
        let out = SimIo::new();
        let fs = lock(&self.fs);
        for (path, f) in &fs.files {
            let st = lock(&f.state);
            let mut image = st.durable.clone();
            for &page in &st.dirty {
                let start = page * SIM_PAGE_BYTES;
                let end = (start + SIM_PAGE_BYTES).min(st.len);
                if start >= end {
                    continue;
                }
                if let Some(n) = keep(page) {
                    let kept = start..(start + n).min(end);
                    for (byte, cell) in image[kept.clone()].iter_mut().zip(&f.data[kept]) {
                        // SAFETY: test inspection; the writer is stopped.
                        *byte = unsafe { *cell.get() };
                    }
                }
            }
            image.truncate(st.len);
            out.insert(path.clone(), image);
        }
        {
            let mut o = lock(&out.fs);
            o.metadata = fs.metadata.clone();
        }
        out
    }
}

impl SimFile {
    fn new(bytes: Vec<u8>, fs: &Arc<Mutex<SimFs>>, flushes: Arc<AtomicU64>) -> Self {
        let len = bytes.len();
        SimFile {
            data: bytes.iter().map(|&b| UnsafeCell::new(b)).collect(),
            state: Mutex::new(SimFileState {
                durable: bytes,
                dirty: BTreeSet::new(),
                len,
            }),
            fs: Arc::downgrade(fs),
            flushes,
        }
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}", path.display()))
}

impl Io for SimIo {
    type Map = Arc<SimFile>;

    fn create(&self, path: &Path, len: usize) -> io::Result<Arc<SimFile>> {
        {
            let mut fs = lock(&self.fs);
            if let Some(left) = fs.space_left.as_mut() {
                if (len as u64) > *left {
                    return Err(io::Error::from_raw_os_error(28)); // ENOSPC
                }
                *left -= len as u64;
            }
        }
        let f = Arc::new(SimFile::new(vec![0; len], &self.fs, self.flushes.clone()));
        lock(&self.fs).files.insert(path.to_owned(), f.clone());
        Ok(f)
    }

    fn recycle(&self, from: &Path, to: &Path, len: usize) -> io::Result<Arc<SimFile>> {
        self.rename(from, to)?;
        self.open(to, Some(len))
    }

    fn open(&self, path: &Path, reserve: Option<usize>) -> io::Result<Arc<SimFile>> {
        let existing = lock(&self.fs)
            .files
            .get(path)
            .cloned()
            .ok_or_else(|| not_found(path))?;
        let len = lock(&existing.state).len;
        match reserve {
            Some(want) if want > existing.data.len() || want > len => {
                // Re-create a larger file with the same content in both images.
                let mut bytes: Vec<u8> = lock(&existing.state).durable.clone();
                let mut current: Vec<u8> = (0..len)
                    // SAFETY: no writer runs on a file being reopened.
                    .map(|i| unsafe { *existing.data[i].get() })
                    .collect();
                bytes.resize(want, 0);
                current.resize(want, 0);
                let f = Arc::new(SimFile::new(bytes, &self.fs, self.flushes.clone()));
                for (i, b) in current.iter().enumerate() {
                    // SAFETY: `f` is not shared yet.
                    unsafe { *f.data[i].get() = *b };
                }
                // Pages written but not flushed stay unflushed in the larger file, as they would
                // in the page cache of a file that fallocate extended.
                lock(&f.state).dirty = lock(&existing.state).dirty.clone();
                lock(&self.fs).files.insert(path.to_owned(), f.clone());
                Ok(f)
            }
            _ => Ok(existing),
        }
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut fs = lock(&self.fs);
        let removed = match fs.files.remove(path) {
            Some(f) => Some(f.data.len() as u64),
            None => fs.metadata.remove(path).map(|_| 0),
        };
        match removed {
            Some(bytes) => {
                if let Some(left) = fs.space_left.as_mut() {
                    *left += bytes;
                }
                Ok(())
            }
            None => Err(not_found(path)),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut fs = lock(&self.fs);
        if let Some(f) = fs.files.remove(from) {
            fs.files.insert(to.to_owned(), f);
            Ok(())
        } else if let Some(m) = fs.metadata.remove(from) {
            fs.metadata.insert(to.to_owned(), m);
            Ok(())
        } else {
            Err(not_found(from))
        }
    }

    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let fs = lock(&self.fs);
        Ok(fs
            .files
            .keys()
            .chain(fs.metadata.keys())
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        lock(&self.fs)
            .metadata
            .insert(path.to_owned(), bytes.to_vec());
        Ok(())
    }

    fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        Ok(lock(&self.fs).metadata.get(path).cloned())
    }
}

impl SegmentMap for Arc<SimFile> {
    fn len(&self) -> usize {
        self.data.len()
    }

    fn as_ptr(&self) -> *const u8 {
        // UnsafeCell<u8> has the layout of u8.
        self.data.as_ptr() as *const u8
    }

    unsafe fn write(&self, position: usize, data: &[u8]) {
        assert!(position
            .checked_add(data.len())
            .is_some_and(|end| end <= self.data.len()));
        let mut st = lock(&self.state);
        // SAFETY: in bounds (asserted); single writer by contract, and the flusher copies pages
        // only while holding `state`, which we hold.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.data[position].get(), data.len())
        };
        if !data.is_empty() {
            let first = position / SIM_PAGE_BYTES;
            let last = (position + data.len() - 1) / SIM_PAGE_BYTES;
            st.dirty.extend(first..=last);
        }
    }

    fn flush(&self) -> io::Result<()> {
        if let Some(fs) = self.fs.upgrade() {
            let mut fs = lock(&fs);
            if let Some(left) = fs.flushes_left.as_mut() {
                if *left == 0 {
                    return Err(io::Error::from_raw_os_error(5)); // EIO
                }
                *left -= 1;
            }
        }
        let mut st = lock(&self.state);
        let dirty = std::mem::take(&mut st.dirty);
        for page in dirty {
            let start = page * SIM_PAGE_BYTES;
            let end = (start + SIM_PAGE_BYTES).min(st.len);
            for i in start..end {
                // SAFETY: writers hold `state` too, so this page is not being written.
                st.durable[i] = unsafe { *self.data[i].get() };
            }
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    unsafe fn zero(&self, position: usize, len: usize) -> io::Result<()> {
        assert!(position
            .checked_add(len)
            .is_some_and(|end| end <= self.data.len()));
        // Like ZERO_RANGE: durable at once, in both images.
        let mut st = lock(&self.state);
        for i in position..position + len {
            // SAFETY: no reader of the range by contract; we hold `state` against the flusher.
            unsafe { *self.data[i].get() = 0 };
            if let Some(d) = st.durable.get_mut(i) {
                *d = 0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_unflushed_write_when_crash_drops_pages_should_lose_only_unflushed() {
        let io = SimIo::new();
        let p = Path::new("/d/a.log");
        let m = io.create(p, 3 * SIM_PAGE_BYTES).unwrap();
        unsafe { m.write(0, &[1; 10]) };
        m.flush().unwrap();
        unsafe { m.write(SIM_PAGE_BYTES, &[2; 10]) };
        let lost = io.crash(|_| None);
        let b = lost.file_bytes(p).unwrap();
        assert_eq!(&b[..10], &[1; 10]);
        assert_eq!(&b[SIM_PAGE_BYTES..SIM_PAGE_BYTES + 10], &[0; 10]);
        let kept = io.crash(|_| Some(SIM_PAGE_BYTES));
        assert_eq!(
            &kept.file_bytes(p).unwrap()[SIM_PAGE_BYTES..SIM_PAGE_BYTES + 10],
            &[2; 10]
        );
    }

    #[test]
    fn given_flush_budget_when_exhausted_should_fail_with_eio() {
        let io = SimIo::new();
        let m = io.create(Path::new("/d/a.log"), 4096).unwrap();
        io.fail_flushes_after(Some(1));
        assert!(m.flush().is_ok());
        assert_eq!(m.flush().unwrap_err().raw_os_error(), Some(5));
    }

    #[test]
    fn given_space_limit_when_creating_beyond_should_fail_with_enospc() {
        let io = SimIo::new();
        io.set_space_left(Some(8192));
        assert!(io.create(Path::new("/d/a.log"), 8192).is_ok());
        let e = io.create(Path::new("/d/b.log"), 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    }
}
