//! The binary protocol, sans-IO: bytes in, frames out, and back. No sockets, no runtime.
//!
//! Every request and response is one length-prefixed frame with a 16-byte header:
//!
//! ```text
//! request:   [size u32][api_key u16][api_version u16][correlation_id u32][reserved u32 = 0][body]
//! response:  [size u32][api_key u16][error_code  u16][correlation_id u32][reserved u32 = 0][body]
//! ```
//! `size` counts the bytes after itself (12 + body). All integers are little-endian. Many requests
//! may be in flight on one connection; responses carry the request's correlation id and may come
//! back in any order. docs/protocol.md draws every body byte by byte.
//!
//! Limits are checked before anything is allocated: a frame larger than [`FRAME_SIZE_MAX`] is
//! rejected from its first four bytes, array counts are checked against the bytes that remain, and
//! record runs are sliced out of the frame rather than copied.
//!
//! This module owns the wire format and the aligned frame buffers both ends read frames into
//! ([`FrameBuffers`]). It must not import storage, glommio or std::net.

pub mod admin;
mod buffers;
pub mod delivery;
pub mod groups;
mod messages;
pub mod wire;

pub use admin::{
    GroupLagStats, PartitionStats, QuotaEntity, QuotaLimits, ShardStats, StatsResponse,
};
pub use buffers::FrameBuffers;
pub use delivery::{
    DlqReplayResponse, NackOutcome, NackRequest, NackResponse, ProduceDelayedRequest,
    ProduceDelayedResponse,
};
pub use groups::{
    CommitOffset, CommitResult, FetchedOffset, GroupDescription, GroupState, GroupSummary,
    JoinGroupRequest, JoinGroupResponse, MemberDescription, OffsetCommitRequest, PartitionLag,
    TopicPartitions, NO_GENERATION,
};
pub use messages::*;

/// Bytes of the request and response headers, size field included.
pub const HEADER_LEN: usize = 16;
/// Maximum frame size, size field included, in both directions: the server's `frame_bytes_max`
/// may lower it for requests, and no response is ever larger (an encoder refuses to build one).
pub const FRAME_SIZE_MAX: usize = 64 << 20;
/// Longest topic name.
pub const TOPIC_NAME_LEN_MAX: usize = 249;
/// Longest client id the broker keeps from ApiVersions (longer ones are cut on a character
/// boundary), and so the longest a client-id quota may name.
pub const CLIENT_ID_LEN_MAX: usize = 256;

const _: () = assert!(HEADER_LEN % crate::record::RECORD_ALIGN == 0);

/// Request types. The value is the `api_key` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ApiKey {
    /// Handshake: which versions of which requests the broker speaks.
    ApiVersions = 0,
    /// Topics, partitions, and the shard (and its address) that owns each partition.
    Metadata = 1,
    /// Creates a topic.
    CreateTopic = 2,
    /// Deletes a topic and its data.
    DeleteTopic = 3,
    /// Changes a topic's partition count (up only) or retention.
    AlterTopic = 4,
    /// Names and partition counts of all topics.
    ListTopics = 5,
    /// A topic's configuration and its partitions' offsets.
    DescribeTopic = 6,
    /// Appends record batches.
    Produce = 7,
    /// Reads records, with long-poll.
    Fetch = 8,
    /// Earliest, latest, or by-timestamp offsets.
    ListOffsets = 9,
    /// Joins a consumer group; answered with the member's assignment once the group settles.
    JoinGroup = 10,
    /// Keeps a member alive; tells it when the group rebalances.
    Heartbeat = 11,
    /// Leaves a group at once (its partitions go to the others).
    LeaveGroup = 12,
    /// Stores a group's consumed positions, durably.
    OffsetCommit = 13,
    /// Reads a group's committed positions.
    OffsetFetch = 14,
    /// A group's members, assignments, committed offsets and lag.
    DescribeGroup = 15,
    /// Names of all groups.
    ListGroups = 16,
    /// Deletes a group with no members, and its committed offsets.
    DeleteGroup = 17,
    /// Records to append to a partition at a time, not before.
    ProduceDelayed = 18,
    /// A group member failed to process a record: retry it later or dead-letter it.
    Nack = 19,
    /// Gives a group's dead letters back to that group.
    DlqReplay = 20,
    /// Hands out a producer id for idempotent produce.
    InitProducer = 21,
    /// Sets rate limits on a client id or a topic.
    SetQuota = 22,
    /// Every quota.
    ListQuotas = 23,
    /// Lifts every limit on a client id or a topic.
    DeleteQuota = 24,
    /// The broker's counters, partitions and group lag, for `levee stats`.
    Stats = 25,
}

impl ApiKey {
    /// Every api key, in wire order.
    pub const ALL: [ApiKey; 26] = [
        ApiKey::ApiVersions,
        ApiKey::Metadata,
        ApiKey::CreateTopic,
        ApiKey::DeleteTopic,
        ApiKey::AlterTopic,
        ApiKey::ListTopics,
        ApiKey::DescribeTopic,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::JoinGroup,
        ApiKey::Heartbeat,
        ApiKey::LeaveGroup,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::DescribeGroup,
        ApiKey::ListGroups,
        ApiKey::DeleteGroup,
        ApiKey::ProduceDelayed,
        ApiKey::Nack,
        ApiKey::DlqReplay,
        ApiKey::InitProducer,
        ApiKey::SetQuota,
        ApiKey::ListQuotas,
        ApiKey::DeleteQuota,
        ApiKey::Stats,
    ];

    /// The api's name as docs/protocol.md writes it (metrics label it so).
    pub fn name(self) -> &'static str {
        const NAMES: [&str; ApiKey::ALL.len()] = [
            "ApiVersions",
            "Metadata",
            "CreateTopic",
            "DeleteTopic",
            "AlterTopic",
            "ListTopics",
            "DescribeTopic",
            "Produce",
            "Fetch",
            "ListOffsets",
            "JoinGroup",
            "Heartbeat",
            "LeaveGroup",
            "OffsetCommit",
            "OffsetFetch",
            "DescribeGroup",
            "ListGroups",
            "DeleteGroup",
            "ProduceDelayed",
            "Nack",
            "DlqReplay",
            "InitProducer",
            "SetQuota",
            "ListQuotas",
            "DeleteQuota",
            "Stats",
        ];
        NAMES[self as usize]
    }

    /// The key for a wire value.
    pub fn from_u16(v: u16) -> Option<ApiKey> {
        ApiKey::ALL.get(v as usize).copied()
    }

    /// Versions of this request this build speaks, as broker and as client: `(min, max)`.
    ///
    /// Version 1 of an API has the same body as version 0 and differs only in the error codes a
    /// response may carry: from version 1 on, a request that breaks a broker limit (blocks per
    /// request, partitions per topic or in total) gets [`ErrorCode::LimitExceeded`]; a version-0
    /// client gets the code it already knows instead ([`ErrorCode::for_version`]).
    ///
    /// Version 2 of CreateTopic and AlterTopic, and version 1 of DescribeTopic, carry a topic's
    /// read visibility (docs/protocol.md §6.3, §6.5, §6.7); version 1 of ListTopics can include
    /// the internal topics (§6.6); version 2 of Produce may answer the idempotence codes
    /// `OutOfOrderSequence` and `DuplicateSequence` (§6.8). Version 3 of CreateTopic and
    /// AlterTopic, and version 2 of DescribeTopic, carry a topic's backlog bound; version 3 of
    /// Produce answers each block with a `throttle_ms` and may answer `QueueFull` and
    /// `Throttled` (§6.8); version 2 of Fetch does the same for quotas (§6.9).
    pub fn versions(self) -> (u16, u16) {
        match self {
            ApiKey::CreateTopic | ApiKey::AlterTopic | ApiKey::Produce => (0, 3),
            ApiKey::DescribeTopic | ApiKey::Fetch => (0, 2),
            ApiKey::Metadata | ApiKey::ListOffsets | ApiKey::ListTopics => (0, 1),
            ApiKey::ApiVersions
            | ApiKey::DeleteTopic
            | ApiKey::JoinGroup
            | ApiKey::Heartbeat
            | ApiKey::LeaveGroup
            | ApiKey::OffsetCommit
            | ApiKey::OffsetFetch
            | ApiKey::DescribeGroup
            | ApiKey::ListGroups
            | ApiKey::DeleteGroup
            | ApiKey::ProduceDelayed
            | ApiKey::Nack
            | ApiKey::DlqReplay
            | ApiKey::InitProducer
            | ApiKey::SetQuota
            | ApiKey::ListQuotas
            | ApiKey::DeleteQuota
            | ApiKey::Stats => (0, 0),
        }
    }

    /// The version to speak with a peer that supports `peer` = `(min, max)`: the highest both
    /// sides speak, or `None` when the ranges do not overlap.
    pub fn negotiate(self, peer: (u16, u16)) -> Option<u16> {
        let (min, max) = self.versions();
        let v = max.min(peer.1);
        (v >= min.max(peer.0)).then_some(v)
    }
}

/// The error code carried by every response (top-level) and by each partition block of Produce,
/// Fetch and ListOffsets responses. Stable wire values: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// Success.
    None = 0,
    /// An unexpected server error; the message says more.
    Internal = 1,
    /// The request could not be decoded.
    InvalidRequest = 2,
    /// The api key is unknown.
    UnknownApiKey = 3,
    /// The api version is not supported (see ApiVersions).
    UnsupportedVersion = 4,
    /// The frame is larger than the broker accepts.
    FrameTooLarge = 5,
    /// A record failed its CRC or structural checks; nothing of its batch was stored.
    CorruptRecord = 6,
    /// A record is larger than `record_bytes_max`, or a batch larger than a segment.
    RecordTooLarge = 7,
    /// The topic does not exist.
    UnknownTopic = 8,
    /// The partition does not exist.
    UnknownPartition = 9,
    /// The offset is outside the log; the block carries the earliest and latest offsets.
    OffsetOutOfRange = 10,
    /// The topic already exists.
    TopicAlreadyExists = 11,
    /// The topic name is not valid.
    InvalidTopicName = 12,
    /// A configuration value is not valid (partitions, retention).
    InvalidConfig = 13,
    /// The disk is full; nothing was stored. Retriable.
    StorageFull = 14,
    /// The partition's log is read-only after a flush failure.
    StorageFailed = 15,
    /// The request did not complete in time (e.g. a durable ack). Retriable.
    Timeout = 16,
    /// The broker is shutting down. Retriable against the restarted broker.
    ShuttingDown = 17,
    /// The broker cannot take more of this right now (connections, queue). Retriable.
    Busy = 18,
    /// The request breaks a broker limit: blocks per request, partitions per topic or in total.
    /// Sent only to requests of version 1 or later (older ones get `InvalidRequest` or
    /// `InvalidConfig`, see [`ErrorCode::for_version`]).
    LimitExceeded = 19,
    /// The group does not know this member (it left, or its session expired): join again.
    UnknownMember = 20,
    /// The request carries an older generation of the group: the member was fenced (its
    /// partitions went to others); join again.
    IllegalGeneration = 21,
    /// The group is rebalancing: join again to get the new assignment. Retriable.
    RebalanceInProgress = 22,
    /// The group has live members: it cannot be deleted or reset now.
    GroupNotEmpty = 23,
    /// No such group.
    UnknownGroup = 24,
    /// An idempotent batch does not follow its producer's last stored batch: records are
    /// missing before it (an earlier batch failed). Sent from Produce version 2.
    OutOfOrderSequence = 25,
    /// An idempotent batch repeats sequences stored long ago (older than the broker remembers
    /// batches for): it was stored, but its offsets are no longer known. Sent from Produce
    /// version 2.
    DuplicateSequence = 26,
    /// The partition's backlog is full and its topic's policy is `reject`: nothing was stored.
    /// Sent from Produce version 3 (older versions get `LimitExceeded`).
    QueueFull = 27,
    /// The block must wait: its partition's backlog is full under policy `block`, or a quota
    /// of its client id or topic is spent. Nothing was stored (Produce) or read (Fetch); send
    /// again after the block's `throttle_ms`. Retriable. Sent from Produce version 3 and Fetch
    /// version 2 (older versions get `Busy`).
    Throttled = 28,
}

impl ErrorCode {
    /// The code for a wire value; unknown values map to `Internal`.
    pub fn from_u16(v: u16) -> ErrorCode {
        use ErrorCode::*;
        [
            None,
            Internal,
            InvalidRequest,
            UnknownApiKey,
            UnsupportedVersion,
            FrameTooLarge,
            CorruptRecord,
            RecordTooLarge,
            UnknownTopic,
            UnknownPartition,
            OffsetOutOfRange,
            TopicAlreadyExists,
            InvalidTopicName,
            InvalidConfig,
            StorageFull,
            StorageFailed,
            Timeout,
            ShuttingDown,
            Busy,
            LimitExceeded,
            UnknownMember,
            IllegalGeneration,
            RebalanceInProgress,
            GroupNotEmpty,
            UnknownGroup,
            OutOfOrderSequence,
            DuplicateSequence,
            QueueFull,
            Throttled,
        ]
        .get(v as usize)
        .copied()
        .unwrap_or(Internal)
    }

    /// The first version of `api` whose responses may carry this code.
    pub fn since(self, api: ApiKey) -> u16 {
        let group_api = (api as u16) >= ApiKey::JoinGroup as u16;
        match self {
            // The group codes exist for the group apis only (from their first version).
            ErrorCode::UnknownMember
            | ErrorCode::IllegalGeneration
            | ErrorCode::RebalanceInProgress
            | ErrorCode::GroupNotEmpty
            | ErrorCode::UnknownGroup => {
                if group_api {
                    0
                } else {
                    u16::MAX
                }
            }
            ErrorCode::OutOfOrderSequence | ErrorCode::DuplicateSequence => match api {
                ApiKey::Produce => 2,
                _ => u16::MAX,
            },
            ErrorCode::QueueFull => match api {
                ApiKey::Produce => 3,
                _ => u16::MAX,
            },
            ErrorCode::Throttled => match api {
                ApiKey::Produce => 3,
                ApiKey::Fetch => 2,
                _ => u16::MAX,
            },
            ErrorCode::LimitExceeded => match api {
                ApiKey::Metadata
                | ApiKey::CreateTopic
                | ApiKey::AlterTopic
                | ApiKey::Produce
                | ApiKey::Fetch
                | ApiKey::ListOffsets => 1,
                // The group apis have it from their first version.
                _ if group_api => 0,
                // Never defined for the others: they always get the fallback.
                _ => u16::MAX,
            },
            _ => 0,
        }
    }

    /// The code to send in a response to a request of `api` at `version`: this code if that
    /// version defines it, else the nearest code the client knows. New codes never reach a client
    /// that did not negotiate the version that defines them.
    pub fn for_version(self, api: ApiKey, version: u16) -> ErrorCode {
        if version >= self.since(api) {
            return self;
        }
        match (self, api) {
            (ErrorCode::LimitExceeded, ApiKey::CreateTopic | ApiKey::AlterTopic) => {
                ErrorCode::InvalidConfig
            }
            (ErrorCode::LimitExceeded, _) => ErrorCode::InvalidRequest,
            (ErrorCode::OutOfOrderSequence | ErrorCode::DuplicateSequence, _) => {
                ErrorCode::InvalidRequest
            }
            // A full `reject` backlog breaks a limit; a full `block` backlog is the broker not
            // taking more right now, which `Busy` (retriable) has always said.
            (ErrorCode::QueueFull, _) => ErrorCode::LimitExceeded.for_version(api, version),
            (ErrorCode::Throttled, _) => ErrorCode::Busy,
            (
                ErrorCode::UnknownMember
                | ErrorCode::IllegalGeneration
                | ErrorCode::RebalanceInProgress
                | ErrorCode::GroupNotEmpty
                | ErrorCode::UnknownGroup,
                _,
            ) => ErrorCode::Internal,
            (other, _) => other,
        }
    }

    /// True when retrying the same request later may succeed.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::StorageFull
                | ErrorCode::Timeout
                | ErrorCode::ShuttingDown
                | ErrorCode::Busy
                | ErrorCode::RebalanceInProgress
                | ErrorCode::Throttled
        )
    }
}

/// Why bytes are not a valid frame or body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame claims more than the maximum frame size.
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Claimed frame size, size field included.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// The frame claims less than a header.
    #[error("frame of {size} bytes is shorter than its header")]
    FrameTooShort {
        /// Claimed frame size, size field included.
        size: usize,
    },
    /// A field runs past the end of the frame.
    #[error("field at byte {position} needs {needed} bytes past the end of the frame")]
    Truncated {
        /// Where the field starts.
        position: usize,
        /// Bytes it needs.
        needed: usize,
    },
    /// A field holds a value the format does not allow.
    #[error("invalid field at byte {position}: {what}")]
    Invalid {
        /// Where.
        position: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// The api key is unknown.
    #[error("unknown api key {0}")]
    UnknownApiKey(u16),
    /// The version of a known api is not supported.
    #[error("api {key:?} version {version} is not supported")]
    UnsupportedVersion {
        /// The api.
        key: ApiKey,
        /// The version asked for.
        version: u16,
    },
    /// An array has more items than the broker takes in one request (`request_items_max`).
    #[error("array at byte {position} has {count} items, more than the limit of {max}")]
    TooManyItems {
        /// Where its count is.
        position: usize,
        /// Its count.
        count: usize,
        /// The limit.
        max: usize,
    },
}

impl DecodeError {
    /// The error code a response to this bad request carries.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::UnknownApiKey(_) => ErrorCode::UnknownApiKey,
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            DecodeError::TooManyItems { .. } => ErrorCode::LimitExceeded,
            _ => ErrorCode::InvalidRequest,
        }
    }
}

/// Why a frame could not be built. Encoders never panic on what they are given: a response too
/// large for the protocol becomes an error the server answers with instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string longer than a `u16` length can say.
    #[error("string of {len} bytes exceeds 65535")]
    StringTooLong {
        /// Its length.
        len: usize,
    },
    /// An array or run longer than a `u32` count can say.
    #[error("count {count} does not fit in u32")]
    TooMany {
        /// The count.
        count: usize,
    },
    /// A record run whose length is not a multiple of 16.
    #[error("record run of {len} bytes is not whole records")]
    RunNotAligned {
        /// Its length.
        len: usize,
    },
    /// The frame would exceed [`FRAME_SIZE_MAX`].
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Its size, size field included.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// The value is not something this encoder builds (a decoded Produce request, a Fetch
    /// response without its runs).
    #[error("cannot encode: {what}")]
    Unsupported {
        /// What was asked.
        what: &'static str,
    },
}

/// The fixed header of a request frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Raw api key (may be unknown).
    pub api_key: u16,
    /// Api version.
    pub api_version: u16,
    /// Echoed in the response.
    pub correlation_id: u32,
    /// Must be 0 ([`decode_request`] refuses anything else).
    pub reserved: u32,
}

/// The fixed header of a response frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeader {
    /// The request's api key.
    pub api_key: u16,
    /// Top-level outcome.
    pub error_code: ErrorCode,
    /// The request's correlation id.
    pub correlation_id: u32,
}

/// Looks at the start of `buf` for one whole frame. Returns `Ok(None)` while more bytes are needed
/// (`Incomplete`), `Ok(Some(len))` when `buf[..len]` is a whole frame, and an error for a size that
/// can never be valid, decided from the first four bytes before anything is allocated.
pub fn frame_len(buf: &[u8], frame_size_max: usize) -> Result<Option<usize>, DecodeError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as u64 + 4;
    if size > frame_size_max as u64 {
        return Err(DecodeError::FrameTooLarge {
            size,
            max: frame_size_max,
        });
    }
    let size = size as usize;
    if size < HEADER_LEN {
        return Err(DecodeError::FrameTooShort { size });
    }
    Ok((buf.len() >= size).then_some(size))
}

/// Reads the header of a request frame as sent, whatever its fields hold, so that even a request
/// refused for its header can be answered with its api key and correlation id.
pub fn request_header(frame: &[u8]) -> Result<RequestHeader, DecodeError> {
    let mut r = wire::Reader::new(frame, 4);
    Ok(RequestHeader {
        api_key: r.u16()?,
        api_version: r.u16()?,
        correlation_id: r.u32()?,
        reserved: r.u32()?,
    })
}

/// Reads the header of a whole response frame.
pub fn response_header(frame: &[u8]) -> Result<ResponseHeader, DecodeError> {
    let mut r = wire::Reader::new(frame, 4);
    let api_key = r.u16()?;
    let error_code = ErrorCode::from_u16(r.u16()?);
    let correlation_id = r.u32()?;
    let _reserved = r.u32()?;
    Ok(ResponseHeader {
        api_key,
        error_code,
        correlation_id,
    })
}

/// Starts a request frame of `key` at `version` in `out` (cleared); finish it with
/// [`finish_frame`].
pub fn begin_request(out: &mut Vec<u8>, key: ApiKey, version: u16, correlation_id: u32) {
    out.clear();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(key as u16).to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&correlation_id.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
}

/// Starts a response frame in `out` (cleared); finish it with [`finish_frame`].
pub fn begin_response(out: &mut Vec<u8>, api_key: u16, error: ErrorCode, correlation_id: u32) {
    out.clear();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&api_key.to_le_bytes());
    out.extend_from_slice(&(error as u16).to_le_bytes());
    out.extend_from_slice(&correlation_id.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
}

/// Writes the size field once the body is complete. `extra` counts bytes that follow `out` on the
/// wire without being copied into it (record runs of a zero-copy fetch response). Fails, leaving
/// the size field alone, when the whole frame would exceed [`FRAME_SIZE_MAX`].
pub fn finish_frame(out: &mut [u8], extra: usize) -> Result<(), EncodeError> {
    assert!(out.len() >= HEADER_LEN, "a frame starts with its header");
    let size = (out.len() as u64).saturating_add(extra as u64);
    if size > FRAME_SIZE_MAX as u64 {
        return Err(EncodeError::FrameTooLarge {
            size,
            max: FRAME_SIZE_MAX,
        });
    }
    // FRAME_SIZE_MAX is far below 4 GiB, so this cannot truncate.
    out[0..4].copy_from_slice(&((size - 4) as u32).to_le_bytes());
    Ok(())
}

/// An error response: the header with `error`, and a body holding a human-readable message
/// (`u16` length + UTF-8).
pub fn encode_error(
    out: &mut Vec<u8>,
    api_key: u16,
    correlation_id: u32,
    error: ErrorCode,
    message: &str,
) {
    begin_response(out, api_key, error, correlation_id);
    let mut msg = message;
    while msg.len() > 1024 {
        // Keep messages short, on a character boundary.
        let mut cut = 1024;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg = &msg[..cut];
    }
    let mut w = wire::Writer::new(out);
    w.str(msg);
    // A message of at most 1024 bytes in a 16-byte header cannot fail either check.
    let finished = w.finish().and_then(|()| finish_frame(out, 0));
    debug_assert!(finished.is_ok());
}

/// The message of an error response's body (empty if the body is not a message).
pub fn error_message(frame: &[u8]) -> String {
    wire::Reader::new(frame, HEADER_LEN)
        .string()
        .unwrap_or_default()
}

/// Checks a topic name: 1..=249 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= TOPIC_NAME_LEN_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Longest group name. Shorter than a topic name so that the internal topics named after a group
/// (`__dlq.` and `__retry.` followed by the whole group name) fit the topic name limit.
pub const GROUP_NAME_LEN_MAX: usize = 200;

/// Checks a consumer group name: 1..=200 characters of `[A-Za-z0-9._-]`.
pub fn valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= GROUP_NAME_LEN_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests;
