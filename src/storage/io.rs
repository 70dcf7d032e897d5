//! The I/O seam: every byte the storage engine writes, flushes or reserves goes through [`Io`] and
//! [`SegmentMap`].
//!
//! Two implementations:
//! - [`MmapIo`]: real files, `fallocate` for reservation (a full disk is a typed error when a
//!   segment is created, never a SIGBUS on a page fault), `memmap2` shared mappings for writes and
//!   reads, `fdatasync` for flushes, `fsync` of a directory for its entries.
//! - [`super::SimIo`] (`sim.rs`): an in-memory disk for tests and fuzzing that models what a
//!   power cut keeps of file contents and of directory entries, and can fail a flush (EIO) or run
//!   out of space on demand.
//!
//! What is durable when: a file's bytes after [`SegmentMap::flush`]; a directory's entries
//! (files created, renamed, removed in it) after [`Io::sync_dir`] of that directory. The storage
//! engine orders its steps by these rules (docs/storage.md, "Durable steps").
//!
//! This module owns files and mappings. It knows nothing of records, offsets or indexes.

use std::io;
use std::path::Path;

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
    /// Creates a directory and its missing parents (not durable until each parent is synced: see
    /// [`create_dir_durable`]).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Removes a directory and everything in it. Not durable until its parent is synced.
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// True when `path` is a directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// Names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Makes the directory's entries (created, renamed, removed files) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Replaces a small metadata file (an index checkpoint) atomically: readers see the old or the
    /// new content, never a mix. Not flushed: metadata files are checksummed and rebuildable.
    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Replaces a small file atomically and durably: content flushed, then renamed into place,
    /// then the directory synced, before this returns (topic metadata, failure markers).
    fn write_file_durable(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
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

/// Creates `dir` and its missing parents, each new one made durable in its parent (synced)
/// before this returns: a durable `mkdir -p`. A file created in a directory whose own entry a
/// power cut can take back is as good as lost.
pub fn create_dir_durable<I: Io>(io: &I, dir: &Path) -> io::Result<()> {
    // The directories that do not exist yet, outermost last.
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() || io.is_dir(d) {
            break;
        }
        missing.push(d);
        at = d.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    io.create_dir_all(dir)?;
    for d in missing.iter().rev() {
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            io.sync_dir(parent)?;
        }
    }
    Ok(())
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

        fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
            std::fs::remove_dir_all(dir)
        }

        fn is_dir(&self, path: &Path) -> bool {
            path.is_dir()
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

        fn write_file_durable(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, bytes)?;
            File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, path)?;
            match path.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(dir) => self.sync_dir(dir),
                None => Ok(()),
            }
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
