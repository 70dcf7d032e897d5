//! [`SimIo`]: an in-memory disk for tests and fuzzing that models what a power cut keeps.
//!
//! It models the two things a real disk loses, separately, as a real file system does:
//! - **file contents**: every segment file has what the process sees and what would survive a
//!   power cut; written pages become durable when the file is flushed (fdatasync), at page
//!   granularity, and a cut keeps, drops or tears each page written since;
//! - **names**: every directory has its live entries and its durable entries. Creating, renaming
//!   and removing a file or a directory changes the live entries only; [`Io::sync_dir`] makes the
//!   directory's live entries its durable ones. A cut keeps the durable entries: a file created
//!   but never synced into its directory is gone, a rename not synced comes back under its old
//!   name, a removal not synced is undone. Files are inodes: a name points at one, so a file
//!   renamed and then flushed keeps its new content under whichever name survives.
//!
//! [`Io::write_file_durable`] is a durable operation (it syncs the directory, as its real
//! implementation does); [`Io::create_dir_all`] is not: a new directory's entry is durable once
//! its parent is synced. Top-level directories (children of `/`) count as durable at creation:
//! they stand for the mount points a real broker is given, as do the directories of
//! [`SimIo::with_root`].
//!
//! Faults: a space limit (ENOSPC on reservation), a flush budget (EIO after N flushes), and a
//! power cut at the N-th mutating operation ([`SimIo::crash_at_op`]), so a test can cut the
//! power in the middle of a roll, a recycle or a topic deletion, not only between calls.

use std::cell::UnsafeCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::io::{Io, SegmentMap};

/// Page granularity of the simulated disk: what a power cut keeps or loses as a unit (sectors within
/// a page can tear too; see [`SimIo::crash`]).
pub const SIM_PAGE_BYTES: usize = 4096;

type DirId = usize;

/// A file's identity: names point at it; growing the file replaces its content object but not
/// its identity, so every name (live or durable) sees the file as it is now.
pub struct Inode {
    file: Mutex<Arc<SimFile>>,
}

impl Inode {
    fn new(file: SimFile) -> Arc<Inode> {
        Arc::new(Inode {
            file: Mutex::new(Arc::new(file)),
        })
    }

    fn file(&self) -> Arc<SimFile> {
        lock(&self.file).clone()
    }
}

#[derive(Clone)]
enum Entry {
    File(Arc<Inode>),
    /// A small metadata file (checkpoint, marker, topic meta): its content is durable when
    /// written; its name follows the directory rules.
    Meta(Arc<Vec<u8>>),
    Dir(DirId),
}

#[derive(Default)]
struct Dir {
    live: BTreeMap<OsString, Entry>,
    durable: BTreeMap<OsString, Entry>,
}

/// Injected faults and the namespace shared by every file of a [`SimIo`].
struct SimFs {
    /// Directories by id; 0 is the root.
    dirs: Vec<Dir>,
    /// Bytes that may still be reserved; `None` is unlimited.
    space_left: Option<u64>,
    /// Flushes that still succeed before every flush fails with EIO; `None` is never.
    flushes_left: Option<u64>,
    /// Mutating operations so far.
    ops: u64,
    /// Cut the power when `ops` reaches this, keeping pages as the seed says.
    crash_at: Option<(u64, u64)>,
    /// The disk that cut left.
    captured: Option<SimIo>,
}

impl Default for SimFs {
    fn default() -> Self {
        SimFs {
            dirs: vec![Dir::default()],
            space_left: None,
            flushes_left: None,
            ops: 0,
            crash_at: None,
            captured: None,
        }
    }
}

/// An in-memory disk for tests and fuzzing, with fault injection and power-cut simulation. See
/// the module documentation for what it models.
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

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}", path.display()))
}

/// The normal components of a path (the simulated disk has one root; `.`, `..` and prefixes are
/// not used by the storage engine).
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            _ => None,
        })
        .collect()
}

/// A deterministic page choice for a cut at a counted operation: drop, tear or keep.
fn seeded_keep(seed: u64) -> impl FnMut(usize) -> Option<usize> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    move |_| {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        match z % 3 {
            0 => None,
            1 => Some((z >> 8) as usize % (SIM_PAGE_BYTES + 1)),
            _ => Some(SIM_PAGE_BYTES),
        }
    }
}

impl SimFs {
    fn dir_live(&self, comps: &[OsString]) -> Option<DirId> {
        let mut d = 0;
        for c in comps {
            match self.dirs[d].live.get(c) {
                Some(Entry::Dir(id)) => d = *id,
                _ => return None,
            }
        }
        Some(d)
    }

    /// The live directory holding `path`, and its name in it.
    fn parent_of(&self, path: &Path) -> io::Result<(DirId, OsString)> {
        let mut comps = components(path);
        let name = comps.pop().ok_or_else(|| not_found(path))?;
        let d = self.dir_live(&comps).ok_or_else(|| not_found(path))?;
        Ok((d, name))
    }

    fn entry(&self, path: &Path) -> Option<Entry> {
        let (d, name) = self.parent_of(path).ok()?;
        self.dirs[d].live.get(&name).cloned()
    }

    fn new_dir(&mut self) -> DirId {
        self.dirs.push(Dir::default());
        self.dirs.len() - 1
    }

    /// Creates the missing directories of `comps`; with `durable`, each new entry is durable at
    /// once (a directory created by a tool before the broker, or a durable mkdir -p).
    fn mkdirs(&mut self, comps: &[OsString], durable: bool) -> io::Result<DirId> {
        let mut d = 0;
        for (depth, c) in comps.iter().enumerate() {
            d = match self.dirs[d].live.get(c) {
                Some(Entry::Dir(id)) => *id,
                Some(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "a file is in the way",
                    ))
                }
                None => {
                    let id = self.new_dir();
                    self.dirs[d].live.insert(c.clone(), Entry::Dir(id));
                    // Top-level directories stand for mount points: durable from the start.
                    if durable || depth == 0 {
                        self.dirs[d].durable.insert(c.clone(), Entry::Dir(id));
                    }
                    id
                }
            };
        }
        Ok(d)
    }

    /// Every live path below directory `d` (prefixed with `at`), files and metadata only.
    fn walk(&self, d: DirId, at: &Path, out: &mut Vec<(PathBuf, Entry)>) {
        for (name, e) in &self.dirs[d].live {
            let p = at.join(name);
            match e {
                Entry::Dir(id) => self.walk(*id, &p, out),
                other => out.push((p, other.clone())),
            }
        }
    }
}

impl SimIo {
    /// An empty simulated disk.
    pub fn new() -> Self {
        Self::default()
    }

    /// A disk on which `root` and its ancestors already exist, durably (a data directory the
    /// broker is given).
    pub fn with_root(root: &Path) -> Self {
        let io = SimIo::new();
        let _ = lock(&io.fs).mkdirs(&components(root), true);
        io
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

    /// Mutating operations (creates, renames, removals, directory syncs, writes, flushes) so far.
    pub fn ops(&self) -> u64 {
        lock(&self.fs).ops
    }

    /// Cuts the power just before the `op`-th mutating operation (counted from the start, see
    /// [`SimIo::ops`]): the disk that cut leaves, with pages kept, torn or dropped as `seed`
    /// decides, is then available from [`SimIo::captured`]. The process goes on unaware, as a
    /// broker does until the lights go out.
    pub fn crash_at_op(&self, op: u64, seed: u64) {
        let mut fs = lock(&self.fs);
        fs.crash_at = Some((op, seed));
        fs.captured = None;
    }

    /// The disk left by the cut [`SimIo::crash_at_op`] asked for, once it happened.
    pub fn captured(&self) -> Option<SimIo> {
        lock(&self.fs).captured.clone()
    }

    /// Counts one mutating operation, and cuts the power first if this is the one.
    fn tick(&self) {
        tick(&self.fs, &self.flushes);
    }

    /// Builds a disk holding `files` as durable content under durable names (e.g. an arbitrary
    /// segment for fuzzing).
    pub fn with_files(files: impl IntoIterator<Item = (PathBuf, Vec<u8>)>) -> Self {
        let io = SimIo::new();
        for (path, bytes) in files {
            io.insert(path, bytes);
        }
        io
    }

    fn insert(&self, path: PathBuf, bytes: Vec<u8>) {
        let inode = Inode::new(SimFile::new(bytes, &self.fs, self.flushes.clone()));
        let mut fs = lock(&self.fs);
        let mut comps = components(&path);
        let Some(name) = comps.pop() else { return };
        let Ok(d) = fs.mkdirs(&comps, true) else {
            return;
        };
        let dir = &mut fs.dirs[d];
        dir.live.insert(name.clone(), Entry::File(inode.clone()));
        dir.durable.insert(name, Entry::File(inode));
    }

    fn file(&self, path: &Path) -> Option<Arc<SimFile>> {
        match lock(&self.fs).entry(path)? {
            Entry::File(inode) => Some(inode.file()),
            _ => None,
        }
    }

    /// The bytes the process currently sees in a segment file (up to its length).
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let f = self.file(path)?;
        let st = lock(&f.state);
        // SAFETY: test inspection; callers stop the writer first.
        Some((0..st.len).map(|i| unsafe { *f.data[i].get() }).collect())
    }

    /// Overwrites bytes of a file in both images, as a bit flip on disk would.
    pub fn corrupt(&self, path: &Path, position: usize, bytes: &[u8]) {
        if let Some(f) = self.file(path) {
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

    /// Live paths of all files, segment and metadata.
    pub fn paths(&self) -> Vec<PathBuf> {
        let fs = lock(&self.fs);
        let mut out = Vec::new();
        fs.walk(0, Path::new("/"), &mut out);
        out.into_iter().map(|(p, _)| p).collect()
    }

    /// The disk a power cut would leave: the durable names of every directory reachable through
    /// durable names from the root; for each file, every flushed byte, plus, for each page written
    /// since its last flush, a choice made by `keep(page_index)`: `None` drops the page, `Some(n)`
    /// keeps its first `n` bytes (a torn write) from the new content.
    pub fn crash(&self, mut keep: impl FnMut(usize) -> Option<usize>) -> SimIo {
        let out = SimIo::new();
        let fs = lock(&self.fs);
        let mut inodes: HashMap<*const Inode, Arc<Inode>> = HashMap::new();
        let mut dirs: HashMap<DirId, DirId> = HashMap::from([(0, 0)]);
        let mut todo = vec![0usize];
        let mut ofs = lock(&out.fs);
        while let Some(d) = todo.pop() {
            let nd = dirs[&d];
            for (name, e) in &fs.dirs[d].durable {
                let entry = match e {
                    Entry::Dir(id) => {
                        let new_id = *dirs.entry(*id).or_insert_with(|| {
                            todo.push(*id);
                            ofs.dirs.push(Dir::default());
                            ofs.dirs.len() - 1
                        });
                        Entry::Dir(new_id)
                    }
                    Entry::Meta(bytes) => Entry::Meta(bytes.clone()),
                    Entry::File(inode) => {
                        let key = Arc::as_ptr(inode);
                        let copy = inodes.entry(key).or_insert_with(|| {
                            let image = inode.file().crash_image(&mut keep);
                            Inode::new(SimFile::new(image, &out.fs, out.flushes.clone()))
                        });
                        Entry::File(copy.clone())
                    }
                };
                ofs.dirs[nd].live.insert(name.clone(), entry.clone());
                ofs.dirs[nd].durable.insert(name.clone(), entry);
            }
        }
        drop(ofs);
        out
    }
}

fn tick(fs: &Arc<Mutex<SimFs>>, flushes: &Arc<AtomicU64>) {
    let cut = {
        let mut g = lock(fs);
        g.ops += 1;
        match g.crash_at {
            Some((op, seed)) if g.ops == op => {
                g.crash_at = None;
                Some(seed)
            }
            _ => None,
        }
    };
    if let Some(seed) = cut {
        let io = SimIo {
            fs: fs.clone(),
            flushes: flushes.clone(),
        };
        let image = io.crash(seeded_keep(seed));
        lock(fs).captured = Some(image);
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

    /// What a power cut leaves of this file.
    fn crash_image(&self, keep: &mut impl FnMut(usize) -> Option<usize>) -> Vec<u8> {
        let st = lock(&self.state);
        let mut image = st.durable.clone();
        for &page in &st.dirty {
            let start = page * SIM_PAGE_BYTES;
            let end = (start + SIM_PAGE_BYTES).min(st.len);
            if start >= end {
                continue;
            }
            if let Some(n) = keep(page) {
                let kept = start..(start + n).min(end);
                for (byte, cell) in image[kept.clone()].iter_mut().zip(&self.data[kept]) {
                    // SAFETY: we hold `state`, which every writer holds while writing.
                    *byte = unsafe { *cell.get() };
                }
            }
        }
        image.truncate(st.len);
        image
    }

    fn tick(&self) {
        if let Some(fs) = self.fs.upgrade() {
            tick(&fs, &self.flushes);
        }
    }
}

impl Io for SimIo {
    type Map = Arc<SimFile>;

    fn create(&self, path: &Path, len: usize) -> io::Result<Arc<SimFile>> {
        self.tick();
        let mut fs = lock(&self.fs);
        let (d, name) = fs.parent_of(path)?;
        if let Some(left) = fs.space_left.as_mut() {
            if (len as u64) > *left {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            *left -= len as u64;
        }
        let inode = Inode::new(SimFile::new(vec![0; len], &self.fs, self.flushes.clone()));
        let file = inode.file();
        fs.dirs[d].live.insert(name, Entry::File(inode));
        Ok(file)
    }

    fn recycle(&self, from: &Path, to: &Path, len: usize) -> io::Result<Arc<SimFile>> {
        self.rename(from, to)?;
        self.open(to, Some(len))
    }

    fn open(&self, path: &Path, reserve: Option<usize>) -> io::Result<Arc<SimFile>> {
        let inode = match lock(&self.fs).entry(path) {
            Some(Entry::File(inode)) => inode,
            _ => return Err(not_found(path)),
        };
        let existing = inode.file();
        let len = lock(&existing.state).len;
        let want = match reserve {
            Some(want) if want > existing.data.len() || want > len => want,
            _ => return Ok(existing),
        };
        self.tick();
        // A larger file with the same content in both images, under the same identity.
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
        // Pages written but not flushed stay unflushed in the larger file, as they would in the
        // page cache of a file that fallocate extended.
        lock(&f.state).dirty = lock(&existing.state).dirty.clone();
        *lock(&inode.file) = f.clone();
        Ok(f)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.tick();
        let mut fs = lock(&self.fs);
        let (d, name) = fs.parent_of(path)?;
        match fs.dirs[d].live.get(&name) {
            Some(Entry::Dir(_)) | None => return Err(not_found(path)),
            Some(_) => {}
        }
        let removed = fs.dirs[d].live.remove(&name);
        if let (Some(Entry::File(inode)), Some(left)) = (removed, fs.space_left.as_mut()) {
            *left += inode.file().data.len() as u64;
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.tick();
        let mut fs = lock(&self.fs);
        let (fd, fname) = fs.parent_of(from)?;
        let (td, tname) = fs.parent_of(to)?;
        let entry = fs.dirs[fd]
            .live
            .remove(&fname)
            .ok_or_else(|| not_found(from))?;
        fs.dirs[td].live.insert(tname, entry);
        Ok(())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.tick();
        lock(&self.fs).mkdirs(&components(dir), false).map(drop)
    }

    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.tick();
        let mut fs = lock(&self.fs);
        let (d, name) = fs.parent_of(dir)?;
        match fs.dirs[d].live.get(&name) {
            Some(Entry::Dir(_)) => {
                fs.dirs[d].live.remove(&name);
                Ok(())
            }
            _ => Err(not_found(dir)),
        }
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let fs = lock(&self.fs);
        let d = fs
            .dir_live(&components(dir))
            .ok_or_else(|| not_found(dir))?;
        Ok(fs.dirs[d]
            .live
            .keys()
            .filter_map(|n| n.to_str().map(str::to_owned))
            .collect())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.tick();
        let mut fs = lock(&self.fs);
        let d = fs
            .dir_live(&components(dir))
            .ok_or_else(|| not_found(dir))?;
        let dir = &mut fs.dirs[d];
        dir.durable = dir.live.clone();
        Ok(())
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.tick();
        let mut fs = lock(&self.fs);
        let (d, name) = fs.parent_of(path)?;
        fs.dirs[d]
            .live
            .insert(name, Entry::Meta(Arc::new(bytes.to_vec())));
        Ok(())
    }

    fn write_file_durable(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.tick();
        let mut fs = lock(&self.fs);
        let (d, name) = fs.parent_of(path)?;
        let entry = Entry::Meta(Arc::new(bytes.to_vec()));
        fs.dirs[d].live.insert(name.clone(), entry.clone());
        fs.dirs[d].durable.insert(name, entry);
        Ok(())
    }

    fn read_file(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match lock(&self.fs).entry(path) {
            Some(Entry::Meta(bytes)) => Ok(Some(bytes.to_vec())),
            Some(Entry::File(inode)) => {
                let f = inode.file();
                let st = lock(&f.state);
                // SAFETY: reading what was written; writers of metadata use write_file.
                Ok(Some(
                    (0..st.len).map(|i| unsafe { *f.data[i].get() }).collect(),
                ))
            }
            Some(Entry::Dir(_)) => Err(io::Error::other("is a directory")),
            None => Ok(None),
        }
    }

    fn is_dir(&self, path: &Path) -> bool {
        matches!(lock(&self.fs).entry(path), Some(Entry::Dir(_))) || components(path).is_empty()
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
        self.tick();
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
        self.tick();
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
        self.tick();
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
        io.create_dir_all(Path::new("/d")).unwrap();
        let m = io.create(p, 3 * SIM_PAGE_BYTES).unwrap();
        io.sync_dir(Path::new("/d")).unwrap();
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
    fn given_names_not_synced_when_power_is_cut_should_lose_creates_undo_renames_and_removals() {
        let io = SimIo::new();
        let d = Path::new("/data/p");
        crate::storage::io::create_dir_durable(&io, d).unwrap();
        let old = io.create(&d.join("old.log"), 4096).unwrap();
        io.sync_dir(d).unwrap();
        io.create(&d.join("new.log"), 4096).unwrap();
        io.rename(&d.join("old.log"), &d.join("renamed.log"))
            .unwrap();
        // The renamed file's content is flushed: it survives, under the name that was durable.
        unsafe { old.write(0, b"content") };
        old.flush().unwrap();
        io.write_file(&d.join("cp.index"), b"cp").unwrap();
        let cut = io.crash(|_| None);
        assert_eq!(cut.list(d).unwrap(), vec!["old.log".to_string()]);
        assert_eq!(
            &cut.file_bytes(&d.join("old.log")).unwrap()[..7],
            b"content"
        );

        io.sync_dir(d).unwrap();
        io.remove(&d.join("new.log")).unwrap();
        let cut = io.crash(|_| None);
        let mut names = cut.list(d).unwrap();
        names.sort();
        assert_eq!(names, ["cp.index", "new.log", "renamed.log"]);
    }

    #[test]
    fn given_a_directory_renamed_or_removed_when_not_synced_should_come_back() {
        let io = SimIo::with_root(Path::new("/data"));
        let topics = Path::new("/data/topics");
        crate::storage::io::create_dir_durable(&io, &topics.join("t.1/0")).unwrap();
        io.write_file_durable(&topics.join("t.1/topic.meta"), b"meta")
            .unwrap();
        io.rename(&topics.join("t.1"), &topics.join("t.1.deleted"))
            .unwrap();
        io.remove_dir_all(&topics.join("t.1.deleted")).unwrap();
        let cut = io.crash(|_| None);
        assert_eq!(cut.list(topics).unwrap(), vec!["t.1".to_string()]);
        assert_eq!(
            cut.read_file(&topics.join("t.1/topic.meta")).unwrap(),
            Some(b"meta".to_vec())
        );
        io.sync_dir(topics).unwrap();
        let cut = io.crash(|_| None);
        assert!(cut.list(topics).unwrap().is_empty());
    }

    #[test]
    fn given_a_cut_at_an_operation_when_it_comes_should_capture_the_disk_then() {
        let io = SimIo::new();
        io.create_dir_all(Path::new("/d")).unwrap();
        let at = io.ops() + 2;
        io.crash_at_op(at, 7);
        io.create(Path::new("/d/a"), 16).unwrap();
        io.sync_dir(Path::new("/d")).unwrap();
        io.create(Path::new("/d/b"), 16).unwrap();
        let cut = io.captured().expect("the cut happened");
        // Cut just before the sync: the create of `a` was not durable yet.
        assert!(cut.list(Path::new("/d")).unwrap().is_empty());
    }

    #[test]
    fn given_flush_budget_when_exhausted_should_fail_with_eio() {
        let io = SimIo::new();
        io.create_dir_all(Path::new("/d")).unwrap();
        let m = io.create(Path::new("/d/a.log"), 4096).unwrap();
        io.fail_flushes_after(Some(1));
        assert!(m.flush().is_ok());
        assert_eq!(m.flush().unwrap_err().raw_os_error(), Some(5));
    }

    #[test]
    fn given_space_limit_when_creating_beyond_should_fail_with_enospc() {
        let io = SimIo::new();
        io.create_dir_all(Path::new("/d")).unwrap();
        io.set_space_left(Some(8192));
        assert!(io.create(Path::new("/d/a.log"), 8192).is_ok());
        let e = io.create(Path::new("/d/b.log"), 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    }
}

#[cfg(test)]
mod dir_tests {
    use super::*;

    #[test]
    fn given_a_directory_created_when_its_parent_is_not_synced_should_vanish_with_its_files() {
        let io = SimIo::with_root(Path::new("/data"));
        io.create_dir_all(Path::new("/data/t/0")).unwrap();
        io.write_file_durable(Path::new("/data/t/0/x"), b"x")
            .unwrap();
        let cut = io.crash(|_| None);
        assert!(cut.list(Path::new("/data")).unwrap().is_empty());
        crate::storage::io::create_dir_durable(&io, Path::new("/data/u/0")).unwrap();
        io.write_file_durable(Path::new("/data/u/0/x"), b"x")
            .unwrap();
        let cut = io.crash(|_| None);
        assert_eq!(
            cut.read_file(Path::new("/data/u/0/x")).unwrap(),
            Some(b"x".to_vec())
        );
    }
}
