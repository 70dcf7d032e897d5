//! The storage engine: partition logs of records in memory-mapped segment files.
//!
//! ```text
//! Log ── owns ──> Segment* ── maps ──> <dir>/<base offset, 20 digits>.log   (records)
//!  │                  └──────────────> <dir>/<base offset, 20 digits>.index (checkpoint)
//!  ├─ Flusher: group commit on a shared FlushPool thread, durable watermark, checkpoints
//!  └─ preparation (a FlushPool job): reserves the next segment before the active one fills
//! ```
//! Everything touches the disk through the [`io`] seam, so tests swap in [`io::SimIo`] to cut
//! power, fail a flush or run out of space at any point.
//!
//! Rules the code asserts where they live:
//! - offsets are consecutive and timestamps never decrease inside a log;
//! - a segment is never written past its reservation, and written bytes never change again except
//!   when a tail is cut (recovery, truncation) with no reader holding them;
//! - every record is CRC-checked before it is written (with its archive validated) and again on
//!   every read path; a record that fails is never served;
//! - a checkpoint is written only for bytes already durable, so it never vouches for lost data.
//!
//! docs/storage.md draws the formats byte by byte. This module must not import the protocol,
//! the runtime or the network: a shard owns a log and drives it.

pub mod flush;
mod index;
pub mod io;
mod log;
mod recovery;
mod segment;
mod sim;

use std::path::PathBuf;
use std::time::Duration;

pub use flush::{DurableWait, FlushError, FlushPool, FlushSnapshot, FLUSH_BUCKETS_US};
pub use index::{Checkpoint, IndexEntry};
pub use io::{create_dir_durable, Io, SegmentMap};
#[cfg(feature = "broker")]
pub use io::{MmapIo, MmapSegment, WritePath};
pub use log::{Appended, Clock, Log, Slice, FAILED_MARKER};
pub use recovery::{RecoveryReport, Truncation, TruncationReason, QUARANTINE_SUFFIX};
pub use sim::{SimFile, SimIo, SIM_PAGE_BYTES};

use crate::record::RecordError;

/// Offsets stay below this (Kafka's offsets are `i64`, and clients in other languages may only have
/// signed 64-bit integers). A segment named past it is not a segment; an append that would reach
/// it fails with [`StorageError::OffsetsExhausted`].
pub const OFFSET_MAX: u64 = i64::MAX as u64;

/// When appended bytes are made durable. The broker's `--fsync` maps onto it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every append is followed by a flush request; a caller acknowledges only after
    /// [`Log::wait_durable`] resolves. Concurrent appends share one flush.
    Sync,
    /// A background flush every interval while bytes are unflushed.
    Interval(Duration),
    /// Left to the OS (a caller can still ask for a flush with [`Log::wait_durable`]).
    None,
}

/// Limits and policies of one log. Every field has a default and a line in tuning.md.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Reservation of each segment file; a segment rolls when the next record does not fit.
    pub segment_bytes: usize,
    /// A non-empty active segment older than this rolls at the next append.
    pub segment_ms: u64,
    /// Delete the oldest sealed segments while the log holds more than this.
    pub retention_bytes: Option<u64>,
    /// Delete sealed segments whose newest record is older than this.
    pub retention_ms: Option<u64>,
    /// Largest archive (one record's content) accepted.
    pub record_bytes_max: usize,
    /// One index entry per this many bytes of records.
    pub index_interval_bytes: usize,
    /// When bytes become durable.
    pub durability: Durability,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 128 << 20,
            segment_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: None,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            record_bytes_max: 1 << 20,
            index_interval_bytes: 4096,
            durability: Durability::Interval(Duration::from_millis(1000)),
        }
    }
}

impl LogConfig {
    /// Checks the relations between the limits.
    pub fn validate(&self) -> Result<(), StorageError> {
        let bad = |reason: String| Err(StorageError::Config { reason });
        if self.record_bytes_max == 0 || self.record_bytes_max > crate::record::ARCHIVE_LEN_MAX {
            return bad(format!(
                "record_bytes_max must be 1..={}",
                crate::record::ARCHIVE_LEN_MAX
            ));
        }
        if self.segment_bytes < crate::record::record_len(self.record_bytes_max) {
            return bad(format!(
                "segment_bytes ({}) must hold one record of record_bytes_max ({}) with its header",
                self.segment_bytes, self.record_bytes_max
            ));
        }
        if self.segment_bytes > u32::MAX as usize || self.segment_bytes % 4096 != 0 {
            return bad("segment_bytes must be a multiple of 4096 below 4 GiB".into());
        }
        if self.index_interval_bytes == 0 {
            return bad("index_interval_bytes must be positive".into());
        }
        if let Durability::Interval(d) = self.durability {
            if d.is_zero() {
                return bad("a flush interval must be positive".into());
            }
        }
        Ok(())
    }
}

/// What can go wrong in the storage engine.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // Variant fields are named by the variant's message.
pub enum StorageError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The disk has no room for a new segment: nothing was written.
    #[error("no space to reserve {bytes} bytes for segment {path}")]
    NoSpace { path: PathBuf, bytes: usize },
    /// A flush failed earlier; the log takes no more writes (fail-stop).
    #[error("log {dir} is read-only after a failed flush: {source}")]
    Failed {
        dir: PathBuf,
        #[source]
        source: FlushError,
    },
    /// A flush failed in an earlier run: the log stays closed until an operator has checked the
    /// disk and removed the marker file.
    #[error("log is fail-stopped since a flush failed ({reason}); check the disk, then remove {marker} to reopen it")]
    FailStopped { marker: PathBuf, reason: String },
    /// A record offered for append is not valid; nothing of the batch was written.
    #[error("record {index} of the batch is invalid: {source}")]
    InvalidRecord {
        index: usize,
        #[source]
        source: RecordError,
    },
    /// A stored record failed its checks on a read path; it is not served.
    #[error("record at offset {offset} in segment {segment} is corrupt: {source}")]
    Corrupt {
        offset: u64,
        segment: u64,
        #[source]
        source: RecordError,
    },
    /// The offset is not in the log.
    #[error("offset {requested} is out of range [{earliest}, {next})")]
    OffsetOutOfRange {
        requested: u64,
        earliest: u64,
        next: u64,
    },
    /// The log has used up its offset space ([`OFFSET_MAX`]).
    #[error("log {dir} has no offsets left after {next}")]
    OffsetsExhausted { dir: PathBuf, next: u64 },
    /// A truncation would cut bytes a reader still holds.
    #[error("cannot truncate to {offset}: a reader holds a slice of the tail")]
    ReadersActive { offset: u64 },
    /// The configuration is inconsistent.
    #[error("invalid log configuration: {reason}")]
    Config { reason: String },
}

impl StorageError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
