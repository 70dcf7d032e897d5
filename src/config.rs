//! Broker configuration: defaults, a TOML file, `LEVEE_*` environment variables and `serve` flags,
//! validated once at boot.
//!
//! Precedence is flags > env > file > defaults (CONTRACT.md). Every `serve` flag `--foo-bar` is the
//! TOML key `foo_bar` and the env variable `LEVEE_FOO_BAR`; an unknown TOML key is an error naming
//! the key. Every key has a default and a line in tuning.md.
//!
//! This module owns parsing and validation only; nothing here opens a file other than the config.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::storage::Durability;

/// The broker's `--fsync` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every append is durable before any acknowledgement.
    Always,
    /// Background flush every interval.
    Interval(Duration),
    /// Left to the OS.
    Never,
}

impl FsyncPolicy {
    /// The storage durability this policy maps to.
    pub fn durability(self) -> Durability {
        match self {
            FsyncPolicy::Always => Durability::Sync,
            FsyncPolicy::Interval(d) => Durability::Interval(d),
            FsyncPolicy::Never => Durability::None,
        }
    }
}

impl FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            _ => {
                let ms = s
                    .strip_prefix("interval:")
                    .and_then(|ms| ms.parse::<u64>().ok())
                    .filter(|&ms| ms > 0)
                    .ok_or_else(|| {
                        format!("invalid fsync policy '{s}': expected always, never or interval:MS with MS > 0")
                    })?;
                Ok(FsyncPolicy::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Always => write!(f, "always"),
            FsyncPolicy::Never => write!(f, "never"),
            FsyncPolicy::Interval(d) => write!(f, "interval:{}", d.as_millis()),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("invalid log format '{s}': expected human or json")),
        }
    }
}

/// The broker's resolved configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where topics and logs live.
    pub data_dir: PathBuf,
    /// Bootstrap listener.
    pub listen: SocketAddr,
    /// Prometheus metrics and health listener.
    pub metrics_listen: SocketAddr,
    /// The Kafka wire-protocol listener of shard 0 (`None`: off). Shard `n` listens on the same
    /// host at this port + `n` (or on OS-assigned ports when the port is 0) and is advertised in
    /// Kafka Metadata as broker `n`.
    pub kafka_listen: Option<SocketAddr>,
    /// A Kafka Metadata request that allows it creates the topics it names and that do not
    /// exist (one partition, the broker's retention), as Kafka's `auto.create.topics.enable`.
    pub kafka_auto_create_topics: bool,
    /// Number of shards (executors, one per core).
    pub shards: u16,
    /// Durability policy.
    pub fsync: FsyncPolicy,
    /// Pin each shard's executor to its core.
    pub pin_cpus: bool,
    /// `tracing` filter, e.g. `info` or `levee=debug`.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Most client connections at once, over all shards.
    pub connections_max: usize,
    /// A connection that completes no request for this long is closed.
    pub idle_timeout_ms: u64,
    /// A frame must arrive whole within this long of its first byte, or the connection is closed.
    pub frame_read_timeout_ms: u64,
    /// Largest request frame accepted.
    pub frame_bytes_max: usize,
    /// Requests in flight on one connection (read and not yet answered on the wire) before the
    /// broker stops reading from it.
    pub connection_inflight_max: usize,
    /// Bytes of request frames and queued responses one connection may hold before the broker
    /// stops reading from it.
    pub connection_bytes_max: usize,
    /// The broker's memory budget for connections: receive buffers, request frames, forwarded
    /// copies and queued responses, over all connections.
    pub memory_bytes_max: usize,
    /// Most items (topics of a Metadata request, blocks of a Produce, Fetch or ListOffsets
    /// request) in one request.
    pub request_items_max: usize,
    /// Most record bytes in one Fetch response, whatever the request asks for.
    pub fetch_bytes_max: usize,
    /// Most partitions one topic may have.
    pub topic_partitions_max: u32,
    /// Most partitions over all topics.
    pub partitions_max: u64,
    /// Threads that flush logs and prepare segments, shared by every partition.
    pub flush_threads: usize,
    /// Partitions of the internal topic of committed offsets (fixed once it exists): groups are
    /// spread over their owner shards by it.
    pub group_offsets_partitions: u32,
    /// Most consumer groups (with members or committed offsets) the broker holds; each
    /// coordinator (offsets partition) takes an equal share.
    pub groups_max: usize,
    /// Most members of one consumer group.
    pub group_members_max: usize,
    /// Partitions of the internal topic of delayed records (fixed once it exists).
    pub delay_partitions: u32,
    /// Most delayed entries waiting in the broker: one per ProduceDelayed block (however many
    /// records it holds) and one per nacked message.
    pub delayed_messages_max: usize,
    /// Longest delay a producer may ask for.
    pub delay_max_ms: u64,
    /// Segment file reservation.
    pub segment_bytes: usize,
    /// Roll a non-empty segment older than this.
    pub segment_ms: u64,
    /// Largest record archive accepted.
    pub record_bytes_max: usize,
    /// One index entry per this many bytes.
    pub index_interval_bytes: usize,
    /// Default retention by bytes per partition for new topics (`None`: unlimited).
    pub retention_bytes: Option<u64>,
    /// Default retention by age for new topics (`None`: unlimited).
    pub retention_ms: Option<u64>,
    /// How often retention runs.
    pub retention_check_ms: u64,
    /// Longest long-poll a Fetch may ask for.
    pub fetch_wait_max_ms: u64,
    /// Bytes of io_uring registered buffers per ring (glommio `io_memory`); 3 rings per shard.
    pub io_memory_bytes: usize,
    /// Bound of each shard's inbox of forwarded requests.
    pub shard_queue_max: usize,
    /// glommio `spin_before_park` in µs; 0 disables spinning.
    pub spin_before_park_us: u64,
    /// How appends reach segment files: `pwrite` or `mmap`.
    pub segment_write: crate::storage::WritePath,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("./levee-data"),
            listen: "127.0.0.1:7070".parse().expect("valid literal"),
            metrics_listen: "127.0.0.1:9464".parse().expect("valid literal"),
            kafka_listen: None,
            kafka_auto_create_topics: false,
            shards: std::thread::available_parallelism()
                .map_or(1, |n| n.get().min(u16::MAX as usize) as u16),
            fsync: FsyncPolicy::Interval(Duration::from_millis(1000)),
            pin_cpus: true,
            log_level: "info".into(),
            log_format: LogFormat::Human,
            connections_max: 10_000,
            idle_timeout_ms: 600_000,
            frame_read_timeout_ms: 30_000,
            frame_bytes_max: 64 << 20,
            connection_inflight_max: 1024,
            connection_bytes_max: 64 << 20,
            memory_bytes_max: 512 << 20,
            request_items_max: 100_000,
            fetch_bytes_max: 32 << 20,
            topic_partitions_max: 4096,
            partitions_max: 100_000,
            flush_threads: 4,
            group_offsets_partitions: 16,
            groups_max: 100_000,
            group_members_max: 1000,
            delay_partitions: 16,
            delayed_messages_max: 1_000_000,
            delay_max_ms: 7 * 24 * 3600 * 1000,
            segment_bytes: 128 << 20,
            segment_ms: 7 * 24 * 3600 * 1000,
            record_bytes_max: 1 << 20,
            index_interval_bytes: 4096,
            retention_bytes: None,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_check_ms: 60_000,
            fetch_wait_max_ms: 30_000,
            io_memory_bytes: 1 << 20,
            shard_queue_max: 4096,
            spin_before_park_us: 0,
            segment_write: crate::storage::WritePath::Pwrite,
        }
    }
}

/// One layer of settings (file, env or flags): every key optional.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct ConfigLayer {
    /// Data directory [default: ./levee-data].
    #[arg(long, env = "LEVEE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Bootstrap listener address [default: 127.0.0.1:7070].
    #[arg(long, env = "LEVEE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Metrics listener address [default: 127.0.0.1:9464].
    #[arg(long, env = "LEVEE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Kafka wire-protocol listener of shard 0; shard N listens on port + N [default: off].
    #[arg(long, env = "LEVEE_KAFKA_LISTEN")]
    pub kafka_listen: Option<SocketAddr>,
    /// Kafka Metadata creates missing topics it is allowed to [default: false].
    #[arg(long, env = "LEVEE_KAFKA_AUTO_CREATE_TOPICS", num_args = 0..=1, default_missing_value = "true")]
    pub kafka_auto_create_topics: Option<bool>,
    /// Number of shards [default: number of CPUs].
    #[arg(long, env = "LEVEE_SHARDS")]
    pub shards: Option<u16>,
    /// always | never | interval:MS [default: interval:1000].
    #[arg(long, env = "LEVEE_FSYNC")]
    pub fsync: Option<String>,
    /// Pin each shard to its CPU [default: true].
    #[arg(long, env = "LEVEE_PIN_CPUS")]
    pub pin_cpus: Option<bool>,
    /// Log filter [default: info].
    #[arg(long, env = "LEVEE_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// human | json [default: human].
    #[arg(long, env = "LEVEE_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Max client connections [default: 10000].
    #[arg(long, env = "LEVEE_CONNECTIONS_MAX")]
    pub connections_max: Option<usize>,
    /// Close connections that complete no request for this long [default: 600000].
    #[arg(long, env = "LEVEE_IDLE_TIMEOUT_MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Close connections whose frame does not arrive whole within this long [default: 30000].
    #[arg(long, env = "LEVEE_FRAME_READ_TIMEOUT_MS")]
    pub frame_read_timeout_ms: Option<u64>,
    /// Max request frame bytes [default: 67108864].
    #[arg(long, env = "LEVEE_FRAME_BYTES_MAX")]
    pub frame_bytes_max: Option<usize>,
    /// Max requests in flight per connection [default: 1024].
    #[arg(long, env = "LEVEE_CONNECTION_INFLIGHT_MAX")]
    pub connection_inflight_max: Option<usize>,
    /// Max bytes of frames and queued responses per connection [default: 67108864].
    #[arg(long, env = "LEVEE_CONNECTION_BYTES_MAX")]
    pub connection_bytes_max: Option<usize>,
    /// Memory budget of all connections' buffers [default: 536870912].
    #[arg(long, env = "LEVEE_MEMORY_BYTES_MAX")]
    pub memory_bytes_max: Option<usize>,
    /// Max topics or blocks in one request [default: 100000].
    #[arg(long, env = "LEVEE_REQUEST_ITEMS_MAX")]
    pub request_items_max: Option<usize>,
    /// Max record bytes in one Fetch response [default: 33554432].
    #[arg(long, env = "LEVEE_FETCH_BYTES_MAX")]
    pub fetch_bytes_max: Option<usize>,
    /// Max partitions of one topic [default: 4096].
    #[arg(long, env = "LEVEE_TOPIC_PARTITIONS_MAX")]
    pub topic_partitions_max: Option<u32>,
    /// Max partitions over all topics [default: 100000].
    #[arg(long, env = "LEVEE_PARTITIONS_MAX")]
    pub partitions_max: Option<u64>,
    /// Storage threads (flushes, segment preparation) [default: 4].
    #[arg(long, env = "LEVEE_FLUSH_THREADS")]
    pub flush_threads: Option<usize>,
    /// Partitions of the committed-offsets topic, fixed once created [default: 16].
    #[arg(long, env = "LEVEE_GROUP_OFFSETS_PARTITIONS")]
    pub group_offsets_partitions: Option<u32>,
    /// Most consumer groups in the broker [default: 100000].
    #[arg(long, env = "LEVEE_GROUPS_MAX")]
    pub groups_max: Option<usize>,
    /// Most members of one consumer group [default: 1000].
    #[arg(long, env = "LEVEE_GROUP_MEMBERS_MAX")]
    pub group_members_max: Option<usize>,
    /// Partitions of the delayed-records topic, fixed once created [default: 16].
    #[arg(long, env = "LEVEE_DELAY_PARTITIONS")]
    pub delay_partitions: Option<u32>,
    /// Most delayed records waiting in the broker [default: 1000000].
    #[arg(long, env = "LEVEE_DELAYED_MESSAGES_MAX")]
    pub delayed_messages_max: Option<usize>,
    /// Longest delay a producer may ask for, in ms [default: 604800000 (7 days)].
    #[arg(long, env = "LEVEE_DELAY_MAX_MS")]
    pub delay_max_ms: Option<u64>,
    /// Segment file size [default: 134217728].
    #[arg(long, env = "LEVEE_SEGMENT_BYTES")]
    pub segment_bytes: Option<usize>,
    /// Roll segments older than this [default: 7 days].
    #[arg(long, env = "LEVEE_SEGMENT_MS")]
    pub segment_ms: Option<u64>,
    /// Max record archive bytes [default: 1048576].
    #[arg(long, env = "LEVEE_RECORD_BYTES_MAX")]
    pub record_bytes_max: Option<usize>,
    /// Index entry every N bytes [default: 4096].
    #[arg(long, env = "LEVEE_INDEX_INTERVAL_BYTES")]
    pub index_interval_bytes: Option<usize>,
    /// Default retention bytes per partition, 0 = unlimited [default: unlimited].
    #[arg(long, env = "LEVEE_RETENTION_BYTES")]
    pub retention_bytes: Option<u64>,
    /// Default retention age, 0 = unlimited [default: 7 days].
    #[arg(long, env = "LEVEE_RETENTION_MS")]
    pub retention_ms: Option<u64>,
    /// Retention check period [default: 60000].
    #[arg(long, env = "LEVEE_RETENTION_CHECK_MS")]
    pub retention_check_ms: Option<u64>,
    /// Longest Fetch long-poll [default: 30000].
    #[arg(long, env = "LEVEE_FETCH_WAIT_MAX_MS")]
    pub fetch_wait_max_ms: Option<u64>,
    /// glommio registered I/O memory per ring [default: 1048576].
    #[arg(long, env = "LEVEE_IO_MEMORY_BYTES")]
    pub io_memory_bytes: Option<usize>,
    /// Bound of each shard's forwarded-request inbox [default: 4096].
    #[arg(long, env = "LEVEE_SHARD_QUEUE_MAX")]
    pub shard_queue_max: Option<usize>,
    /// Spin this many µs before parking a shard, 0 = off [default: 0].
    #[arg(long, env = "LEVEE_SPIN_BEFORE_PARK_US")]
    pub spin_before_park_us: Option<u64>,
    /// How appends reach segment files: pwrite | mmap [default: pwrite].
    #[arg(long, env = "LEVEE_SEGMENT_WRITE")]
    pub segment_write: Option<String>,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (names an unknown key).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid value for {key}: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        message: String,
    },
}

impl ConfigLayer {
    /// Reads a TOML layer.
    pub fn from_file(path: &std::path::Path) -> Result<ConfigLayer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Returns `self` with `over`'s values taking precedence.
    pub fn overlay(self, over: ConfigLayer) -> ConfigLayer {
        macro_rules! pick {
            ($($f:ident),*) => { ConfigLayer { $($f: over.$f.or(self.$f)),* } };
        }
        pick!(
            data_dir,
            listen,
            metrics_listen,
            kafka_listen,
            kafka_auto_create_topics,
            shards,
            fsync,
            pin_cpus,
            log_level,
            log_format,
            connections_max,
            idle_timeout_ms,
            frame_read_timeout_ms,
            frame_bytes_max,
            connection_inflight_max,
            connection_bytes_max,
            memory_bytes_max,
            request_items_max,
            fetch_bytes_max,
            topic_partitions_max,
            partitions_max,
            flush_threads,
            group_offsets_partitions,
            groups_max,
            group_members_max,
            delay_partitions,
            delayed_messages_max,
            delay_max_ms,
            segment_bytes,
            segment_ms,
            record_bytes_max,
            index_interval_bytes,
            retention_bytes,
            retention_ms,
            retention_check_ms,
            fetch_wait_max_ms,
            io_memory_bytes,
            shard_queue_max,
            spin_before_park_us,
            segment_write
        )
    }

    /// Applies the layer to the defaults and validates the result.
    pub fn resolve(self) -> Result<BrokerConfig, ConfigError> {
        let d = BrokerConfig::default();
        let invalid = |key, message: String| ConfigError::Invalid { key, message };
        let fsync = match self.fsync {
            Some(s) => s.parse().map_err(|m| invalid("fsync", m))?,
            None => d.fsync,
        };
        let log_format = match self.log_format {
            Some(s) => s.parse().map_err(|m| invalid("log_format", m))?,
            None => d.log_format,
        };
        let segment_write = match self.segment_write.as_deref() {
            None => d.segment_write,
            Some("pwrite") => crate::storage::WritePath::Pwrite,
            Some("mmap") => crate::storage::WritePath::Mmap,
            Some(other) => {
                return Err(invalid(
                    "segment_write",
                    format!("'{other}': expected pwrite or mmap"),
                ))
            }
        };
        // One meaning everywhere (catalog::retention_limit): 0 and u64::MAX are unlimited.
        let unlimited = |v: Option<u64>, default: Option<u64>| match v {
            Some(v) => crate::catalog::retention_limit(v),
            None => default,
        };
        let c = BrokerConfig {
            data_dir: self.data_dir.unwrap_or(d.data_dir),
            listen: self.listen.unwrap_or(d.listen),
            metrics_listen: self.metrics_listen.unwrap_or(d.metrics_listen),
            kafka_listen: self.kafka_listen.or(d.kafka_listen),
            kafka_auto_create_topics: self
                .kafka_auto_create_topics
                .unwrap_or(d.kafka_auto_create_topics),
            shards: self.shards.unwrap_or(d.shards),
            fsync,
            pin_cpus: self.pin_cpus.unwrap_or(d.pin_cpus),
            log_level: self.log_level.unwrap_or(d.log_level),
            log_format,
            connections_max: self.connections_max.unwrap_or(d.connections_max),
            idle_timeout_ms: self.idle_timeout_ms.unwrap_or(d.idle_timeout_ms),
            frame_read_timeout_ms: self
                .frame_read_timeout_ms
                .unwrap_or(d.frame_read_timeout_ms),
            frame_bytes_max: self.frame_bytes_max.unwrap_or(d.frame_bytes_max),
            connection_inflight_max: self
                .connection_inflight_max
                .unwrap_or(d.connection_inflight_max),
            connection_bytes_max: self.connection_bytes_max.unwrap_or(d.connection_bytes_max),
            memory_bytes_max: self.memory_bytes_max.unwrap_or(d.memory_bytes_max),
            request_items_max: self.request_items_max.unwrap_or(d.request_items_max),
            fetch_bytes_max: self.fetch_bytes_max.unwrap_or(d.fetch_bytes_max),
            topic_partitions_max: self.topic_partitions_max.unwrap_or(d.topic_partitions_max),
            partitions_max: self.partitions_max.unwrap_or(d.partitions_max),
            flush_threads: self.flush_threads.unwrap_or(d.flush_threads),
            group_offsets_partitions: self
                .group_offsets_partitions
                .unwrap_or(d.group_offsets_partitions),
            groups_max: self.groups_max.unwrap_or(d.groups_max),
            group_members_max: self.group_members_max.unwrap_or(d.group_members_max),
            delay_partitions: self.delay_partitions.unwrap_or(d.delay_partitions),
            delayed_messages_max: self.delayed_messages_max.unwrap_or(d.delayed_messages_max),
            delay_max_ms: self.delay_max_ms.unwrap_or(d.delay_max_ms),
            segment_bytes: self.segment_bytes.unwrap_or(d.segment_bytes),
            segment_ms: self.segment_ms.unwrap_or(d.segment_ms),
            record_bytes_max: self.record_bytes_max.unwrap_or(d.record_bytes_max),
            index_interval_bytes: self.index_interval_bytes.unwrap_or(d.index_interval_bytes),
            retention_bytes: unlimited(self.retention_bytes, d.retention_bytes),
            retention_ms: unlimited(self.retention_ms, d.retention_ms),
            retention_check_ms: self.retention_check_ms.unwrap_or(d.retention_check_ms),
            fetch_wait_max_ms: self.fetch_wait_max_ms.unwrap_or(d.fetch_wait_max_ms),
            io_memory_bytes: self.io_memory_bytes.unwrap_or(d.io_memory_bytes),
            shard_queue_max: self.shard_queue_max.unwrap_or(d.shard_queue_max),
            spin_before_park_us: self.spin_before_park_us.unwrap_or(d.spin_before_park_us),
            segment_write,
        };
        c.validate()?;
        Ok(c)
    }
}

impl BrokerConfig {
    /// Checks ranges and the relations between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.into(),
            })
        };
        if self.shards == 0 {
            return invalid("shards", "must be at least 1");
        }
        if let Some(k) = self.kafka_listen {
            if k.port() != 0 && u32::from(k.port()) + u32::from(self.shards) - 1 > 65_535 {
                return invalid(
                    "kafka_listen",
                    "the port plus the shard count must stay within 65535 (shard n listens on port + n)",
                );
            }
        }
        if self.connections_max == 0 {
            return invalid("connections_max", "must be at least 1");
        }
        if self.connection_inflight_max == 0 {
            return invalid("connection_inflight_max", "must be at least 1");
        }
        if self.frame_bytes_max < 1024 || self.frame_bytes_max > crate::protocol::FRAME_SIZE_MAX {
            return invalid("frame_bytes_max", "must be between 1 KiB and 64 MiB");
        }
        if self.connection_bytes_max < self.frame_bytes_max {
            return invalid(
                "connection_bytes_max",
                "must be at least frame_bytes_max (a connection must hold one whole frame)",
            );
        }
        if self.memory_bytes_max < self.connection_bytes_max {
            return invalid(
                "memory_bytes_max",
                "must be at least connection_bytes_max (one connection must fit)",
            );
        }
        if self.request_items_max == 0 {
            return invalid("request_items_max", "must be at least 1");
        }
        // One record of the largest size must fit, and a response stays a frame (with room for
        // the headers of the blocks).
        let record = crate::record::record_len(self.record_bytes_max);
        if self.fetch_bytes_max < record
            || self.fetch_bytes_max > crate::protocol::FRAME_SIZE_MAX / 2
        {
            return invalid(
                "fetch_bytes_max",
                "must hold one record of record_bytes_max and be at most 32 MiB",
            );
        }
        if self.topic_partitions_max == 0 || self.partitions_max == 0 {
            return invalid("topic_partitions_max/partitions_max", "must be at least 1");
        }
        if self.group_offsets_partitions == 0 || self.group_offsets_partitions > 1024 {
            return invalid("group_offsets_partitions", "must be 1..=1024");
        }
        if self.groups_max == 0 || self.group_members_max == 0 {
            return invalid("groups_max/group_members_max", "must be at least 1");
        }
        if self.delay_partitions == 0 || self.delay_partitions > 1024 {
            return invalid("delay_partitions", "must be 1..=1024");
        }
        if self.delayed_messages_max == 0 || self.delay_max_ms == 0 {
            return invalid("delayed_messages_max/delay_max_ms", "must be at least 1");
        }
        if self.flush_threads == 0 || self.flush_threads > 64 {
            return invalid("flush_threads", "must be 1..=64");
        }
        if self.shard_queue_max == 0 {
            return invalid("shard_queue_max", "must be at least 1");
        }
        if self.retention_check_ms == 0
            || self.idle_timeout_ms == 0
            || self.frame_read_timeout_ms == 0
        {
            return invalid(
                "retention_check_ms/idle_timeout_ms/frame_read_timeout_ms",
                "must be positive",
            );
        }
        self.log_config(None, None)
            .validate()
            .map_err(|e| ConfigError::Invalid {
                key: "segment_bytes/record_bytes_max/index_interval_bytes",
                message: e.to_string(),
            })
    }

    /// The storage configuration of a partition log of a topic with these retention settings.
    pub fn log_config(
        &self,
        retention_bytes: Option<u64>,
        retention_ms: Option<u64>,
    ) -> crate::storage::LogConfig {
        crate::storage::LogConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_ms,
            retention_bytes,
            retention_ms,
            record_bytes_max: self.record_bytes_max,
            index_interval_bytes: self.index_interval_bytes,
            durability: self.fsync.durability(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_layers_when_overlaid_should_follow_flags_env_file_default_precedence() {
        let file: ConfigLayer =
            toml::from_str("shards = 3\nfsync = \"never\"\nlisten = \"127.0.0.1:1\"").unwrap();
        let flags = ConfigLayer {
            shards: Some(5),
            ..ConfigLayer::default()
        };
        let c = file.overlay(flags).resolve().unwrap();
        assert_eq!(c.shards, 5);
        assert_eq!(c.fsync, FsyncPolicy::Never);
        assert_eq!(c.listen.port(), 1);
        assert_eq!(c.metrics_listen.port(), 9464);
    }

    #[test]
    fn given_unknown_toml_key_when_parsed_should_name_it() {
        let e = toml::from_str::<ConfigLayer>("shardz = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("shardz"), "{e}");
    }

    #[test]
    fn given_fsync_strings_when_parsed_should_accept_only_the_contract_forms() {
        assert_eq!("always".parse(), Ok(FsyncPolicy::Always));
        assert_eq!(
            "interval:250".parse(),
            Ok(FsyncPolicy::Interval(Duration::from_millis(250)))
        );
        for bad in ["interval:", "interval:0", "sometimes", "interval:x"] {
            assert!(bad.parse::<FsyncPolicy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn given_bounds_that_contradict_each_other_when_validated_should_name_the_key() {
        let refused = |layer: ConfigLayer| match layer.resolve() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("accepted: {other:?}"),
        };
        let base = ConfigLayer::default;
        assert_eq!(
            refused(ConfigLayer {
                connection_bytes_max: Some(1 << 20),
                ..base()
            }),
            "connection_bytes_max"
        );
        assert_eq!(
            refused(ConfigLayer {
                memory_bytes_max: Some(1 << 20),
                ..base()
            }),
            "memory_bytes_max"
        );
        assert_eq!(
            refused(ConfigLayer {
                fetch_bytes_max: Some(1024),
                ..base()
            }),
            "fetch_bytes_max"
        );
        assert_eq!(
            refused(ConfigLayer {
                frame_bytes_max: Some(128 << 20),
                ..base()
            }),
            "frame_bytes_max"
        );
        assert_eq!(
            refused(ConfigLayer {
                flush_threads: Some(0),
                ..base()
            }),
            "flush_threads"
        );
        let c = ConfigLayer {
            retention_bytes: Some(u64::MAX),
            retention_ms: Some(0),
            ..base()
        }
        .resolve()
        .unwrap();
        assert_eq!((c.retention_bytes, c.retention_ms), (None, None));
    }

    #[test]
    fn given_inconsistent_sizes_when_validated_should_refuse() {
        let layer = ConfigLayer {
            segment_bytes: Some(4096),
            record_bytes_max: Some(1 << 20),
            ..ConfigLayer::default()
        };
        assert!(matches!(layer.resolve(), Err(ConfigError::Invalid { .. })));
    }
}
