//! The topic catalog: which topics exist, their partition counts and retention, on disk and in
//! memory, shared by every shard.
//!
//! Layout: `<data_dir>/topics/<name>.<id>/topic.meta` plus one directory per partition log,
//! `<data_dir>/topics/<name>.<id>/<partition>/`. The id is unique per creation, so a topic that is
//! deleted and created again never shares a file with its predecessor, whose logs a shard may still
//! hold open for a moment.
//!
//! The catalog is metadata, not the data path: a lock here is fine. It must not open logs; shards do
//! that for the partitions they own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::protocol::{valid_topic_name, ErrorCode, TopicConfig};

/// Most partitions one topic may have.
pub const PARTITIONS_MAX: u32 = 4096;
/// Prefix reserved for internal topics (dead letters `__dlq.G.T`, …); clients cannot create them.
pub const INTERNAL_PREFIX: &str = "__";

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMeta {
    /// Name.
    pub name: String,
    /// Unique per creation.
    pub id: u64,
    /// Partition count.
    pub partitions: u32,
    /// Retention by bytes per partition.
    pub retention_bytes: Option<u64>,
    /// Retention by age.
    pub retention_ms: Option<u64>,
}

impl TopicMeta {
    /// The topic's configuration as the protocol carries it.
    pub fn config(&self) -> TopicConfig {
        TopicConfig {
            partitions: self.partitions,
            retention_bytes: self.retention_bytes,
            retention_ms: self.retention_ms,
        }
    }

    fn encode(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("none".to_string(), |v| v.to_string());
        format!(
            "name={}\nid={}\npartitions={}\nretention_bytes={}\nretention_ms={}\n",
            self.name,
            self.id,
            self.partitions,
            opt(self.retention_bytes),
            opt(self.retention_ms)
        )
    }

    fn decode(text: &str) -> Option<TopicMeta> {
        let mut kv = BTreeMap::new();
        for line in text.lines() {
            let (k, v) = line.split_once('=')?;
            kv.insert(k, v);
        }
        let opt = |v: &str| -> Option<Option<u64>> {
            if v == "none" {
                Some(None)
            } else {
                v.parse().ok().map(Some)
            }
        };
        Some(TopicMeta {
            name: kv.get("name")?.to_string(),
            id: kv.get("id")?.parse().ok()?,
            partitions: kv.get("partitions")?.parse().ok()?,
            retention_bytes: opt(kv.get("retention_bytes")?)?,
            retention_ms: opt(kv.get("retention_ms")?)?,
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

impl CatalogError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            CatalogError::UnknownTopic(_) => ErrorCode::UnknownTopic,
            CatalogError::AlreadyExists(_) => ErrorCode::TopicAlreadyExists,
            CatalogError::InvalidName(_) => ErrorCode::InvalidTopicName,
            CatalogError::InvalidConfig(_) => ErrorCode::InvalidConfig,
            CatalogError::Io { .. } => ErrorCode::Internal,
        }
    }
}

struct Inner {
    topics: BTreeMap<String, TopicMeta>,
    next_id: u64,
}

/// The catalog of one broker.
pub struct Catalog {
    root: PathBuf,
    inner: RwLock<Inner>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CatalogError + '_ {
    move |source| CatalogError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Catalog {
    /// Loads the catalog of `data_dir`, creating it if needed. Leftovers of an interrupted delete
    /// are removed.
    pub fn load(data_dir: &Path) -> Result<Catalog, CatalogError> {
        let root = data_dir.join("topics");
        std::fs::create_dir_all(&root).map_err(io_err(&root))?;
        let mut topics = BTreeMap::new();
        let mut next_id = 1;
        for entry in std::fs::read_dir(&root).map_err(io_err(&root))? {
            let entry = entry.map_err(io_err(&root))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".deleted") {
                std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
                continue;
            }
            let meta_path = path.join("topic.meta");
            let meta = std::fs::read_to_string(&meta_path)
                .ok()
                .and_then(|t| TopicMeta::decode(&t));
            match meta {
                Some(m) if dir_name(&m) == name => {
                    next_id = next_id.max(m.id + 1);
                    topics.insert(m.name.clone(), m);
                }
                _ => {
                    // A create that died before its meta file was in place: nothing was acked.
                    tracing::warn!(path = %path.display(), "removing topic directory without a valid topic.meta");
                    std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
                }
            }
        }
        Ok(Catalog {
            root,
            inner: RwLock::new(Inner { topics, next_id }),
        })
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A topic by name.
    pub fn get(&self, name: &str) -> Option<TopicMeta> {
        self.read().topics.get(name).cloned()
    }

    /// All topics, by name.
    pub fn list(&self) -> Vec<TopicMeta> {
        self.read().topics.values().cloned().collect()
    }

    /// Directory of a topic.
    pub fn topic_dir(&self, meta: &TopicMeta) -> PathBuf {
        self.root.join(dir_name(meta))
    }

    /// Directory of one partition's log.
    pub fn partition_dir(&self, meta: &TopicMeta, partition: u32) -> PathBuf {
        self.topic_dir(meta).join(partition.to_string())
    }

    fn check_config(config: &TopicConfig) -> Result<(), CatalogError> {
        if config.partitions == 0 || config.partitions > PARTITIONS_MAX {
            return Err(CatalogError::InvalidConfig(format!(
                "partitions must be 1..={PARTITIONS_MAX}, got {}",
                config.partitions
            )));
        }
        Ok(())
    }

    /// Creates a topic: its directory and meta file are durable before this returns.
    pub fn create(&self, name: &str, config: &TopicConfig) -> Result<TopicMeta, CatalogError> {
        if !valid_topic_name(name) || name.starts_with(INTERNAL_PREFIX) {
            return Err(CatalogError::InvalidName(name.to_string()));
        }
        Self::check_config(config)?;
        let mut inner = self.write();
        if inner.topics.contains_key(name) {
            return Err(CatalogError::AlreadyExists(name.to_string()));
        }
        let meta = TopicMeta {
            name: name.to_string(),
            id: inner.next_id,
            partitions: config.partitions,
            retention_bytes: config.retention_bytes,
            retention_ms: config.retention_ms,
        };
        let dir = self.topic_dir(&meta);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        self.persist(&meta)?;
        inner.next_id += 1;
        inner.topics.insert(name.to_string(), meta.clone());
        Ok(meta)
    }

    fn persist(&self, meta: &TopicMeta) -> Result<(), CatalogError> {
        let dir = self.topic_dir(meta);
        let tmp = dir.join("topic.meta.tmp");
        let path = dir.join("topic.meta");
        std::fs::write(&tmp, meta.encode()).map_err(io_err(&tmp))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        for d in [&dir, &self.root] {
            std::fs::File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(io_err(d))?;
        }
        Ok(())
    }

    /// Changes a topic's partition count (up only) or retention (`u64::MAX` clears a limit).
    pub fn alter(
        &self,
        name: &str,
        partitions: Option<u32>,
        retention_bytes: Option<u64>,
        retention_ms: Option<u64>,
    ) -> Result<TopicMeta, CatalogError> {
        let mut inner = self.write();
        let current = inner
            .topics
            .get(name)
            .cloned()
            .ok_or_else(|| CatalogError::UnknownTopic(name.to_string()))?;
        let mut meta = current.clone();
        if let Some(p) = partitions {
            if p < current.partitions {
                return Err(CatalogError::InvalidConfig(format!(
                    "partitions can only grow: {} -> {p}",
                    current.partitions
                )));
            }
            meta.partitions = p;
        }
        let limit = |v: u64| (v != u64::MAX).then_some(v);
        if let Some(v) = retention_bytes {
            meta.retention_bytes = limit(v);
        }
        if let Some(v) = retention_ms {
            meta.retention_ms = limit(v);
        }
        Self::check_config(&meta.config())?;
        self.persist(&meta)?;
        inner.topics.insert(name.to_string(), meta.clone());
        Ok(meta)
    }

    /// Deletes a topic and its data. Shards drop their open logs when they notice.
    pub fn delete(&self, name: &str) -> Result<TopicMeta, CatalogError> {
        let mut inner = self.write();
        let meta = inner
            .topics
            .remove(name)
            .ok_or_else(|| CatalogError::UnknownTopic(name.to_string()))?;
        let dir = self.topic_dir(&meta);
        let gone = dir.with_file_name(format!("{}.deleted", dir_name(&meta)));
        // Rename first: once renamed the topic is gone even if the removal below is cut short,
        // and load() finishes the job.
        std::fs::rename(&dir, &gone).map_err(io_err(&dir))?;
        if let Err(e) = std::fs::remove_dir_all(&gone) {
            tracing::warn!(path = %gone.display(), error = %e, "topic data not fully removed; removed at next start");
        }
        Ok(meta)
    }
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
        }
    }

    #[test]
    fn given_created_topics_when_reloaded_should_survive_and_keep_ids_unique() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::load(dir.path()).unwrap();
        let a = c.create("orders", &config(3)).unwrap();
        assert!(matches!(
            c.create("orders", &config(1)),
            Err(CatalogError::AlreadyExists(_))
        ));
        c.alter("orders", Some(4), Some(10), None).unwrap();
        c.delete("orders").unwrap();
        let b = c.create("orders", &config(2)).unwrap();
        assert_ne!(a.id, b.id);
        drop(c);
        let c = Catalog::load(dir.path()).unwrap();
        assert_eq!(c.get("orders"), Some(b));
    }

    #[test]
    fn given_bad_names_or_configs_when_creating_should_refuse_typed() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::load(dir.path()).unwrap();
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
            c.alter("t", Some(1), None, None),
            Err(CatalogError::InvalidConfig(_))
        ));
        assert!(matches!(
            c.delete("nope"),
            Err(CatalogError::UnknownTopic(_))
        ));
    }
}
