//! The topic catalog: which topics exist, their partition counts and retention, on disk and in
//! memory, shared by every shard.
//!
//! Layout: `<data_dir>/topics/<name>.<id>/topic.meta` plus one directory per partition log,
//! `<data_dir>/topics/<name>.<id>/<partition>/`. The id is unique per creation, so a topic that is
//! deleted and created again never shares a file with its predecessor, whose logs a shard may still
//! hold open for a moment.
//!
//! Readers (every produce and fetch) take a [`Topics`] snapshot: an `Arc` swapped whole by each
//! change, so the data path never waits for a writer and never clones a topic's metadata. Writers
//! (create, alter, delete) serialize among themselves and do their file work (fsyncs, directory
//! removal) before they publish; the server runs them on a blocking thread, off the shards.
//!
//! Damaged metadata never destroys data: a topic directory whose `topic.meta` cannot be read or
//! parsed is moved aside as `<dir>.quarantined` with an error naming the file, and the broker
//! starts without that topic. Only a directory that provably holds nothing acknowledged (an
//! interrupted create: no partition directory, no meta file) or was already renamed for deletion
//! is removed.
//!
//! The catalog is metadata, not the data path. It must not open logs; shards do that for the
//! partitions they own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub use crate::protocol::TopicChange;
use crate::protocol::{valid_topic_name, Backlog, BacklogPolicy, TopicConfig, Visibility};
use crate::storage::Io;

/// The file operations the catalog needs, through the storage engine's I/O seam, so that a
/// simulated disk ([`crate::storage::SimIo`]) models topic creation and deletion across power
/// cuts as it models segments. [`OnIo`] makes any [`Io`] one.
pub trait CatalogFs: Send + Sync {
    /// Names in a directory.
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>>;
    /// True for a directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// A small file's content, `None` if it does not exist.
    fn read_file(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>>;
    /// Replaces a small file atomically and durably.
    fn write_file_durable(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()>;
    /// `mkdir -p`, every new entry durable.
    fn create_dir_durable(&self, dir: &Path) -> std::io::Result<()>;
    /// Renames a file or directory (durable once its directory is synced).
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()>;
    /// Removes a directory tree (durable once its parent is synced).
    fn remove_dir_all(&self, dir: &Path) -> std::io::Result<()>;
    /// Makes a directory's entries durable.
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()>;
}

/// The catalog's files on an [`Io`].
pub struct OnIo<I: Io>(pub I);

impl<I: Io> CatalogFs for OnIo<I> {
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        Io::list(&self.0, dir)
    }
    fn is_dir(&self, path: &Path) -> bool {
        Io::is_dir(&self.0, path)
    }
    fn read_file(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>> {
        Io::read_file(&self.0, path)
    }
    fn write_file_durable(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        Io::write_file_durable(&self.0, path, bytes)
    }
    fn create_dir_durable(&self, dir: &Path) -> std::io::Result<()> {
        crate::storage::create_dir_durable(&self.0, dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        Io::rename(&self.0, from, to)
    }
    fn remove_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        Io::remove_dir_all(&self.0, dir)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        Io::sync_dir(&self.0, dir)
    }
}

/// Prefix reserved for internal topics (offsets, retries, delays, dead letters); clients cannot
/// create them.
pub const INTERNAL_PREFIX: &str = "__";
/// Suffix of a topic directory renamed for deletion (removed at the next start if still there).
const DELETED_SUFFIX: &str = ".deleted";
/// Suffix of a topic directory moved aside because its metadata is damaged.
pub const QUARANTINE_SUFFIX: &str = ".quarantined";

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMeta {
    /// Name.
    pub name: String,
    /// Unique per creation.
    pub id: u64,
    /// Partition count.
    pub partitions: u32,
    /// Retention by bytes per partition (`None`: unlimited).
    pub retention_bytes: Option<u64>,
    /// Retention by age (`None`: unlimited).
    pub retention_ms: Option<u64>,
    /// Which records a Fetch may return: all appended, or only durable ones.
    pub visibility: Visibility,
    /// Most messages a partition may hold for its slowest group (`None`: unlimited).
    pub backlog_messages_max: Option<u64>,
    /// Most bytes a partition may hold for its slowest group (`None`: unlimited).
    pub backlog_bytes_max: Option<u64>,
    /// What happens at the backlog bound.
    pub backlog_policy: BacklogPolicy,
}

/// The one meaning of a retention value everywhere (flags, TOML, CreateTopic, AlterTopic): `0`
/// and `u64::MAX` both mean unlimited, stored and reported as absent.
pub fn retention_limit(value: u64) -> Option<u64> {
    (value != 0 && value != u64::MAX).then_some(value)
}

impl TopicMeta {
    /// The topic's configuration as the protocol carries it.
    pub fn config(&self) -> TopicConfig {
        TopicConfig {
            partitions: self.partitions,
            retention_bytes: self.retention_bytes,
            retention_ms: self.retention_ms,
            visibility: Some(self.visibility),
            backlog: Backlog {
                messages_max: self.backlog_messages_max,
                bytes_max: self.backlog_bytes_max,
                policy: Some(self.backlog_policy),
            },
        }
    }

    /// True when the topic bounds its backlog.
    pub fn has_backlog_bound(&self) -> bool {
        self.backlog_messages_max.is_some() || self.backlog_bytes_max.is_some()
    }

    fn encode(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("none".to_string(), |v| v.to_string());
        let visibility = match self.visibility {
            Visibility::Written => "written",
            Visibility::Durable => "durable",
        };
        format!(
            "name={}\nid={}\npartitions={}\nretention_bytes={}\nretention_ms={}\nvisibility={visibility}\n\
             backlog_messages_max={}\nbacklog_bytes_max={}\nbacklog_policy={}\n",
            self.name,
            self.id,
            self.partitions,
            opt(self.retention_bytes),
            opt(self.retention_ms),
            opt(self.backlog_messages_max),
            opt(self.backlog_bytes_max),
            self.backlog_policy.name()
        )
    }

    fn decode(text: &str) -> Result<TopicMeta, String> {
        let mut kv = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("line {} is not key=value: {line:?}", i + 1))?;
            kv.insert(k, v);
        }
        let get = |k: &str| kv.get(k).copied().ok_or_else(|| format!("no {k}"));
        let num = |k: &str| -> Result<u64, String> {
            get(k)?.parse().map_err(|_| format!("{k} is not a number"))
        };
        let opt = |k: &str| -> Result<Option<u64>, String> {
            match get(k)? {
                "none" => Ok(None),
                v => v
                    .parse()
                    .map(retention_limit)
                    .map_err(|_| format!("{k} is not a number or none")),
            }
        };
        let partitions = u32::try_from(num("partitions")?)
            .ok()
            .filter(|&p| p > 0)
            .ok_or("partitions is out of range")?;
        // Topics created before visibility existed read what was written.
        let visibility = match kv.get("visibility").copied() {
            None | Some("written") => Visibility::Written,
            Some("durable") => Visibility::Durable,
            Some(other) => return Err(format!("visibility {other:?} is not written or durable")),
        };
        // Topics created before backlog bounds existed have none.
        let absent_or = |k: &str| -> Result<Option<u64>, String> {
            match kv.get(k) {
                None => Ok(None),
                Some(_) => opt(k),
            }
        };
        let backlog_policy = match kv.get("backlog_policy").copied() {
            None => BacklogPolicy::Block,
            Some(name) => BacklogPolicy::from_name(name).ok_or_else(|| {
                format!("backlog_policy {name:?} is not block, reject or drop-oldest")
            })?,
        };
        Ok(TopicMeta {
            name: get("name")?.to_string(),
            id: num("id")?,
            partitions,
            retention_bytes: opt("retention_bytes")?,
            retention_ms: opt("retention_ms")?,
            visibility,
            backlog_messages_max: absent_or("backlog_messages_max")?,
            backlog_bytes_max: absent_or("backlog_bytes_max")?,
            backlog_policy,
        })
    }
}

/// Why a catalog operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No such topic.
    #[error("unknown topic '{0}'")]
    UnknownTopic(String),
    /// The name is taken.
    #[error("topic '{0}' already exists")]
    AlreadyExists(String),
    /// The name breaks the naming rules or uses the reserved prefix.
    #[error("invalid topic name '{0}': 1-249 characters of [A-Za-z0-9._-], not '.' or '..', not starting with '__'")]
    InvalidName(String),
    /// A setting is out of range.
    #[error("invalid topic configuration: {0}")]
    InvalidConfig(String),
    /// A broker limit (`topic_partitions_max`, `partitions_max`) would be exceeded.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The disk refused.
    #[error("catalog i/o on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Limits the catalog enforces (config keys `topic_partitions_max` and `partitions_max`).
#[derive(Debug, Clone, Copy)]
pub struct CatalogLimits {
    /// Most partitions one topic may have.
    pub topic_partitions_max: u32,
    /// Most partitions over all topics.
    pub partitions_max: u64,
}

impl Default for CatalogLimits {
    fn default() -> Self {
        CatalogLimits {
            topic_partitions_max: 4096,
            partitions_max: 100_000,
        }
    }
}

/// An immutable view of every topic, as of one version of the catalog.
#[derive(Debug, Default)]
pub struct Topics {
    by_name: BTreeMap<String, Arc<TopicMeta>>,
    partitions: u64,
    version: u64,
}

impl Topics {
    /// A topic by name.
    pub fn get(&self, name: &str) -> Option<&Arc<TopicMeta>> {
        self.by_name.get(name)
    }

    /// Every topic, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<TopicMeta>> {
        self.by_name.values()
    }

    /// Number of topics.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when there is no topic.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Partitions over all topics.
    pub fn partitions(&self) -> u64 {
        self.partitions
    }

    /// The catalog version this view was taken at (grows with every change).
    pub fn version(&self) -> u64 {
        self.version
    }

    fn with(&self, change: impl FnOnce(&mut BTreeMap<String, Arc<TopicMeta>>)) -> Topics {
        let mut by_name = self.by_name.clone();
        change(&mut by_name);
        Topics {
            partitions: by_name.values().map(|m| m.partitions as u64).sum(),
            by_name,
            version: self.version + 1,
        }
    }
}

/// The catalog of one broker.
pub struct Catalog {
    fs: Arc<dyn CatalogFs>,
    root: PathBuf,
    limits: CatalogLimits,
    current: RwLock<Arc<Topics>>,
    version: AtomicU64,
    /// Serializes writers (and holds the next topic id). Readers never take it.
    writer: Mutex<u64>,
    quarantined: Vec<PathBuf>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CatalogError + '_ {
    move |source| CatalogError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What the start-up scan decided for one topic directory.
enum Found {
    Topic(TopicMeta),
    /// Provably nothing acknowledged in it: remove.
    Leftover(&'static str),
    /// Damaged: move aside, with the reason.
    Damaged(String),
}

fn inspect(fs: &dyn CatalogFs, path: &Path, dir_name: &str) -> Found {
    if dir_name.ends_with(DELETED_SUFFIX) {
        return Found::Leftover("deleted topic");
    }
    let meta_path = path.join("topic.meta");
    match fs.read_file(&meta_path) {
        Ok(Some(bytes)) => {
            let parsed = std::str::from_utf8(&bytes)
                .map_err(|_| "not UTF-8".to_string())
                .and_then(TopicMeta::decode);
            match parsed {
                Ok(m) if self::dir_name(&m) == dir_name && valid_topic_name(&m.name) => {
                    Found::Topic(m)
                }
                Ok(m) => Found::Damaged(format!(
                    "{} names topic '{}' id {}, which does not match its directory",
                    meta_path.display(),
                    m.name,
                    m.id
                )),
                Err(why) => Found::Damaged(format!("{} is damaged: {why}", meta_path.display())),
            }
        }
        Ok(None) => {
            // A create writes its meta file before anything else goes in the directory, so a
            // directory without one is an interrupted create, unless something else is there.
            let entries: Vec<String> = fs
                .list(path)
                .unwrap_or_else(|_| vec!["<unreadable>".into()]);
            // The temporary file of an interrupted meta write is `topic.tmp`.
            if entries
                .iter()
                .all(|n| n == "topic.tmp" || n == "topic.meta.tmp")
            {
                Found::Leftover("interrupted create")
            } else {
                Found::Damaged(format!(
                    "{} is missing but the directory holds data ({})",
                    meta_path.display(),
                    entries.join(", ")
                ))
            }
        }
        Err(e) => Found::Damaged(format!("{} cannot be read: {e}", meta_path.display())),
    }
}

impl Catalog {
    /// Loads the catalog of `data_dir`, creating it if needed. Leftovers of an interrupted create
    /// or delete are removed; damaged topics are quarantined (see the module documentation).
    pub fn load(
        data_dir: &Path,
        limits: CatalogLimits,
        fs: Arc<dyn CatalogFs>,
    ) -> Result<Catalog, CatalogError> {
        let root = data_dir.join("topics");
        fs.create_dir_durable(&root).map_err(io_err(&root))?;
        let mut topics = BTreeMap::new();
        let mut next_id = 1;
        let mut quarantined = Vec::new();
        let mut names = fs.list(&root).map_err(io_err(&root))?;
        names.sort();
        let mut removed = false;
        for name in names {
            let path = root.join(&name);
            if name.ends_with(QUARANTINE_SUFFIX) {
                tracing::error!(path = %path.display(), "quarantined topic directory left as it is");
                quarantined.push(path);
                continue;
            }
            if !fs.is_dir(&path) {
                continue;
            }
            match inspect(&*fs, &path, &name) {
                Found::Topic(m) => {
                    next_id = next_id.max(m.id + 1);
                    topics.insert(m.name.clone(), Arc::new(m));
                }
                Found::Leftover(what) => {
                    tracing::info!(path = %path.display(), what, "removing leftover topic directory");
                    fs.remove_dir_all(&path).map_err(io_err(&path))?;
                    removed = true;
                }
                Found::Damaged(why) => {
                    let aside = quarantine_path(&*fs, &root, &name);
                    tracing::error!(
                        path = %path.display(),
                        moved_to = %aside.display(),
                        reason = %why,
                        "topic metadata damaged: topic quarantined, its data kept; fix topic.meta and move the directory back to restore it"
                    );
                    fs.rename(&path, &aside).map_err(io_err(&path))?;
                    fs.sync_dir(&root).map_err(io_err(&root))?;
                    quarantined.push(aside);
                }
            }
            // Ids of quarantined directories are never reused either.
            if let Some(id) = name.rsplit('.').find_map(|part| part.parse::<u64>().ok()) {
                next_id = next_id.max(id + 1);
            }
        }
        if removed {
            fs.sync_dir(&root).map_err(io_err(&root))?;
        }
        let topics = Topics {
            partitions: topics.values().map(|m| m.partitions as u64).sum(),
            by_name: topics,
            version: 1,
        };
        Ok(Catalog {
            fs,
            root,
            limits,
            current: RwLock::new(Arc::new(topics)),
            version: AtomicU64::new(1),
            writer: Mutex::new(next_id),
            quarantined,
        })
    }

    /// The current view of every topic: cheap (an `Arc` clone), never waits for a writer's file
    /// work.
    pub fn snapshot(&self) -> Arc<Topics> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current version: a shard whose cached snapshot has another version takes a new one.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// A topic by name.
    pub fn get(&self, name: &str) -> Option<Arc<TopicMeta>> {
        self.snapshot().get(name).cloned()
    }

    /// All topics, by name.
    pub fn list(&self) -> Vec<Arc<TopicMeta>> {
        self.snapshot().iter().cloned().collect()
    }

    /// Topic directories moved aside at start-up because their metadata was damaged.
    pub fn quarantined(&self) -> &[PathBuf] {
        &self.quarantined
    }

    /// The limits this catalog enforces.
    pub fn limits(&self) -> CatalogLimits {
        self.limits
    }

    /// Directory of a topic.
    pub fn topic_dir(&self, meta: &TopicMeta) -> PathBuf {
        self.root.join(dir_name(meta))
    }

    /// Directory of one partition's log.
    pub fn partition_dir(&self, meta: &TopicMeta, partition: u32) -> PathBuf {
        self.topic_dir(meta).join(partition.to_string())
    }

    fn publish(&self, change: impl FnOnce(&mut BTreeMap<String, Arc<TopicMeta>>)) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let next = Arc::new(current.with(change));
        self.version.store(next.version, Ordering::Release);
        *current = next;
    }

    fn check_partitions(&self, topics: &Topics, old: u32, new: u32) -> Result<(), CatalogError> {
        if new == 0 {
            return Err(CatalogError::InvalidConfig(
                "a topic needs at least 1 partition".into(),
            ));
        }
        let max = self.limits.topic_partitions_max;
        if new > max {
            return Err(CatalogError::LimitExceeded(format!(
                "{new} partitions is more than topic_partitions_max ({max})"
            )));
        }
        let total = topics.partitions() - old as u64 + new as u64;
        if total > self.limits.partitions_max {
            return Err(CatalogError::LimitExceeded(format!(
                "the broker would hold {total} partitions, more than partitions_max ({})",
                self.limits.partitions_max
            )));
        }
        Ok(())
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, u64> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a topic: its directory and meta file are durable before this returns. Retention
    /// values follow [`retention_limit`]. Names starting with [`INTERNAL_PREFIX`] are refused:
    /// internal topics are made by the broker ([`Catalog::ensure_internal`]).
    pub fn create(&self, name: &str, config: &TopicConfig) -> Result<Arc<TopicMeta>, CatalogError> {
        if !valid_topic_name(name) || name.starts_with(INTERNAL_PREFIX) {
            return Err(CatalogError::InvalidName(name.to_string()));
        }
        self.create_unchecked(name, config)
    }

    /// The internal topic `name` (its name starts with [`INTERNAL_PREFIX`]), created with
    /// `config` if it does not exist yet; an existing one is left as it is.
    pub fn ensure_internal(
        &self,
        name: &str,
        config: &TopicConfig,
    ) -> Result<Arc<TopicMeta>, CatalogError> {
        assert!(
            name.starts_with(INTERNAL_PREFIX),
            "not an internal topic name"
        );
        if let Some(meta) = self.get(name) {
            return Ok(meta);
        }
        self.create_unchecked(name, config)
    }

    fn create_unchecked(
        &self,
        name: &str,
        config: &TopicConfig,
    ) -> Result<Arc<TopicMeta>, CatalogError> {
        let mut next_id = self.writer();
        let topics = self.snapshot();
        if topics.get(name).is_some() {
            return Err(CatalogError::AlreadyExists(name.to_string()));
        }
        self.check_partitions(&topics, 0, config.partitions)?;
        let meta = TopicMeta {
            name: name.to_string(),
            id: *next_id,
            partitions: config.partitions,
            retention_bytes: config.retention_bytes.and_then(retention_limit),
            retention_ms: config.retention_ms.and_then(retention_limit),
            visibility: config.visibility.unwrap_or(Visibility::Written),
            backlog_messages_max: config.backlog.messages_max.and_then(retention_limit),
            backlog_bytes_max: config.backlog.bytes_max.and_then(retention_limit),
            backlog_policy: config.backlog.policy.unwrap_or(BacklogPolicy::Block),
        };
        *next_id += 1;
        let dir = self.topic_dir(&meta);
        // The directory's entry, then the meta file, durable before the create is answered.
        self.fs.create_dir_durable(&dir).map_err(io_err(&dir))?;
        self.persist(&meta)?;
        let meta = Arc::new(meta);
        let published = meta.clone();
        self.publish(|t| {
            t.insert(name.to_string(), published);
        });
        Ok(meta)
    }

    fn persist(&self, meta: &TopicMeta) -> Result<(), CatalogError> {
        let path = self.topic_dir(meta).join("topic.meta");
        self.fs
            .write_file_durable(&path, meta.encode().as_bytes())
            .map_err(io_err(&path))
    }

    /// Changes a topic's partition count (up only), retention and backlog bounds (see
    /// [`retention_limit`]: 0 removes a bound), read visibility or backlog policy; `None` leaves a
    /// setting as it is.
    pub fn alter(&self, name: &str, change: &TopicChange) -> Result<Arc<TopicMeta>, CatalogError> {
        let TopicChange {
            partitions,
            retention_bytes,
            retention_ms,
            visibility,
            backlog,
        } = *change;
        let _writer = self.writer();
        let topics = self.snapshot();
        let current = topics
            .get(name)
            .ok_or_else(|| CatalogError::UnknownTopic(name.to_string()))?;
        let mut meta = TopicMeta::clone(current);
        if let Some(p) = partitions {
            if p < current.partitions {
                return Err(CatalogError::InvalidConfig(format!(
                    "partitions can only grow: {} -> {p}",
                    current.partitions
                )));
            }
            self.check_partitions(&topics, current.partitions, p)?;
            meta.partitions = p;
        }
        if let Some(v) = retention_bytes {
            meta.retention_bytes = retention_limit(v);
        }
        if let Some(v) = retention_ms {
            meta.retention_ms = retention_limit(v);
        }
        if let Some(v) = visibility {
            meta.visibility = v;
        }
        if let Some(v) = backlog.messages_max {
            meta.backlog_messages_max = retention_limit(v);
        }
        if let Some(v) = backlog.bytes_max {
            meta.backlog_bytes_max = retention_limit(v);
        }
        if let Some(v) = backlog.policy {
            meta.backlog_policy = v;
        }
        self.persist(&meta)?;
        let meta = Arc::new(meta);
        let published = meta.clone();
        self.publish(|t| {
            t.insert(name.to_string(), published);
        });
        Ok(meta)
    }

    /// Deletes a topic and its data. Shards drop their open logs when they notice.
    pub fn delete(&self, name: &str) -> Result<Arc<TopicMeta>, CatalogError> {
        let _writer = self.writer();
        let meta = self
            .snapshot()
            .get(name)
            .cloned()
            .ok_or_else(|| CatalogError::UnknownTopic(name.to_string()))?;
        let dir = self.topic_dir(&meta);
        let gone = dir.with_file_name(format!("{}{DELETED_SUFFIX}", dir_name(&meta)));
        // Rename first, and make the rename durable before answering: once renamed the topic is
        // gone even if the removal below is cut short (load() finishes the job), and a power cut
        // cannot bring back a topic whose deletion was acknowledged. If the rename fails the
        // topic stays, in memory as on disk.
        self.fs.rename(&dir, &gone).map_err(io_err(&dir))?;
        self.publish(|t| {
            t.remove(name);
        });
        self.fs.sync_dir(&self.root).map_err(io_err(&self.root))?;
        if let Err(e) = self.fs.remove_dir_all(&gone) {
            tracing::warn!(path = %gone.display(), error = %e, "topic data not fully removed; removed at next start");
        }
        Ok(meta)
    }
}

fn quarantine_path(fs: &dyn CatalogFs, root: &Path, name: &str) -> PathBuf {
    let taken = fs.list(root).unwrap_or_default();
    let mut candidate = format!("{name}{QUARANTINE_SUFFIX}");
    let mut n = 1;
    while taken.contains(&candidate) {
        n += 1;
        candidate = format!("{name}-{n}{QUARANTINE_SUFFIX}");
    }
    root.join(candidate)
}

fn dir_name(meta: &TopicMeta) -> String {
    format!("{}.{}", meta.name, meta.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(partitions: u32) -> TopicConfig {
        TopicConfig {
            partitions,
            retention_bytes: None,
            retention_ms: Some(1000),
            visibility: None,
            ..TopicConfig::default()
        }
    }

    fn real() -> Arc<dyn CatalogFs> {
        Arc::new(OnIo(crate::storage::MmapIo::default()))
    }

    fn load(dir: &Path) -> Catalog {
        Catalog::load(dir, CatalogLimits::default(), real()).unwrap()
    }

    #[test]
    fn given_created_topics_when_reloaded_should_survive_and_keep_ids_unique() {
        let dir = tempfile::tempdir().unwrap();
        let c = load(dir.path());
        let a = c.create("orders", &config(3)).unwrap();
        assert!(matches!(
            c.create("orders", &config(1)),
            Err(CatalogError::AlreadyExists(_))
        ));
        c.alter(
            "orders",
            &TopicChange {
                partitions: Some(4),
                retention_bytes: Some(10),
                ..TopicChange::default()
            },
        )
        .unwrap();
        c.delete("orders").unwrap();
        let b = c.create("orders", &config(2)).unwrap();
        assert_ne!(a.id, b.id);
        drop(c);
        let c = load(dir.path());
        assert_eq!(c.get("orders"), Some(b));
    }

    #[test]
    fn given_bad_names_or_configs_when_creating_should_refuse_typed() {
        let dir = tempfile::tempdir().unwrap();
        let c = load(dir.path());
        assert!(matches!(
            c.create("__dlq.g.t", &config(1)),
            Err(CatalogError::InvalidName(_))
        ));
        assert!(matches!(
            c.create("a b", &config(1)),
            Err(CatalogError::InvalidName(_))
        ));
        assert!(matches!(
            c.create("t", &config(0)),
            Err(CatalogError::InvalidConfig(_))
        ));
        c.create("t", &config(2)).unwrap();
        assert!(matches!(
            c.alter(
                "t",
                &TopicChange {
                    partitions: Some(1),
                    ..TopicChange::default()
                }
            ),
            Err(CatalogError::InvalidConfig(_))
        ));
        assert!(matches!(
            c.delete("nope"),
            Err(CatalogError::UnknownTopic(_))
        ));
    }

    #[test]
    fn given_partition_limits_when_exceeded_should_refuse_with_limit_exceeded() {
        let dir = tempfile::tempdir().unwrap();
        let limits = CatalogLimits {
            topic_partitions_max: 8,
            partitions_max: 10,
        };
        let c = Catalog::load(dir.path(), limits, real()).unwrap();
        assert!(matches!(
            c.create("a", &config(9)),
            Err(CatalogError::LimitExceeded(_))
        ));
        c.create("a", &config(8)).unwrap();
        assert!(matches!(
            c.create("b", &config(3)),
            Err(CatalogError::LimitExceeded(_))
        ));
        c.create("b", &config(2)).unwrap();
        assert!(matches!(
            c.alter(
                "b",
                &TopicChange {
                    partitions: Some(3),
                    ..TopicChange::default()
                }
            ),
            Err(CatalogError::LimitExceeded(_))
        ));
        assert_eq!(c.snapshot().partitions(), 10);
    }

    #[test]
    fn given_retention_zero_or_max_anywhere_should_mean_unlimited() {
        let dir = tempfile::tempdir().unwrap();
        let c = load(dir.path());
        let t = c
            .create(
                "t",
                &TopicConfig {
                    partitions: 1,
                    retention_bytes: Some(0),
                    retention_ms: Some(u64::MAX),
                    visibility: None,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!((t.retention_bytes, t.retention_ms), (None, None));
        let t = c
            .alter(
                "t",
                &TopicChange {
                    retention_bytes: Some(5),
                    retention_ms: Some(7),
                    ..TopicChange::default()
                },
            )
            .unwrap();
        assert_eq!((t.retention_bytes, t.retention_ms), (Some(5), Some(7)));
        let t = c
            .alter(
                "t",
                &TopicChange {
                    retention_bytes: Some(u64::MAX),
                    retention_ms: Some(0),
                    ..TopicChange::default()
                },
            )
            .unwrap();
        assert_eq!((t.retention_bytes, t.retention_ms), (None, None));
    }

    #[test]
    fn given_a_damaged_topic_meta_when_loading_should_quarantine_and_keep_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let c = load(dir.path());
        let t = c.create("orders", &config(1)).unwrap();
        let ok = c.create("other", &config(1)).unwrap();
        let tdir = c.topic_dir(&t);
        std::fs::create_dir_all(tdir.join("0")).unwrap();
        std::fs::write(tdir.join("0").join("data.log"), b"acknowledged").unwrap();
        let meta = tdir.join("topic.meta");
        let text = std::fs::read_to_string(&meta).unwrap();
        std::fs::write(&meta, text.replace("partitions=1", "partitions#1")).unwrap();
        drop(c);
        let c = load(dir.path());
        assert!(c.get("orders").is_none());
        assert_eq!(c.get("other"), Some(ok));
        assert_eq!(c.quarantined().len(), 1);
        let aside = &c.quarantined()[0];
        assert!(aside.to_string_lossy().ends_with(QUARANTINE_SUFFIX));
        assert_eq!(
            std::fs::read(aside.join("0").join("data.log")).unwrap(),
            b"acknowledged"
        );
        // A new topic of the same name gets a new id, never the quarantined directory.
        let again = c.create("orders", &config(1)).unwrap();
        assert!(again.id > t.id);
        drop(c);
        // The quarantined directory stays as it is across restarts.
        let c = load(dir.path());
        assert_eq!(c.quarantined().len(), 1);
        assert_eq!(c.get("orders"), Some(again));
    }

    #[test]
    fn given_an_interrupted_create_when_loading_should_remove_only_that() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("topics");
        std::fs::create_dir_all(root.join("half.7")).unwrap();
        std::fs::write(root.join("half.7").join("topic.meta.tmp"), b"name=half").unwrap();
        std::fs::create_dir_all(root.join("lost.8").join("0")).unwrap();
        let c = load(dir.path());
        assert!(!root.join("half.7").exists());
        assert_eq!(
            c.quarantined().len(),
            1,
            "a directory with data is never removed"
        );
        assert!(c.create("x", &config(1)).unwrap().id > 8);
    }
}
