//! What can go wrong between the client and the broker, as one typed enum.

use std::io;
use std::sync::Arc;

use crate::protocol::{ApiKey, DecodeError, EncodeError, ErrorCode};
use crate::record::RecordError;

/// Every failure the client reports. Cloneable, because one broken connection or one failed batch
/// fails many requests or sends at once and each gets its own copy.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// No connection could be opened to an address (refused, unreachable, unresolvable).
    #[error("cannot connect to {addr}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The last I/O error seen.
        #[source]
        source: Arc<io::Error>,
    },
    /// The connection broke (or was already broken) before the response arrived. The request may
    /// or may not have reached the broker.
    #[error("connection to {addr} lost: {reason}")]
    Disconnected {
        /// The broker address of the connection.
        addr: String,
        /// Why the connection was closed.
        reason: String,
    },
    /// Waiting for something took longer than its limit.
    #[error("{what} timed out after {timeout_ms} ms")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// The limit.
        timeout_ms: u64,
    },
    /// The broker answered with an error code. For a top-level error the message is the one the
    /// broker sent; for a partition-level error it names the partition.
    #[error("{message} (broker error {code:?})")]
    Broker {
        /// The code.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// The broker did not take or serve a block for now (a full `block` backlog, or a quota
    /// spent): send it again after `throttle_ms`. Retriable; the producer does so itself for up
    /// to `max_block_ms`, consumers back off as told.
    #[error("{topic}/{partition} is throttled: send again in {throttle_ms} ms")]
    Throttled {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: u32,
        /// How long to wait.
        throttle_ms: u32,
    },
    /// A fetch asked for an offset outside the partition's log.
    #[error(
        "offset {requested} is out of range for {topic}/{partition} (earliest {earliest}, latest {latest})"
    )]
    OffsetOutOfRange {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: u32,
        /// The offset asked for.
        requested: u64,
        /// The first offset still stored.
        earliest: u64,
        /// The offset the next record will get.
        latest: u64,
    },
    /// The broker sent bytes that are not a valid response.
    #[error("malformed response from {addr}: {source}")]
    Protocol {
        /// The broker address of the connection.
        addr: String,
        /// What is wrong with the bytes.
        #[source]
        source: DecodeError,
    },
    /// A well-formed response that does not answer the request (wrong api, missing partition).
    #[error("unexpected response from the broker: {what}")]
    UnexpectedResponse {
        /// What did not match.
        what: String,
    },
    /// The broker does not speak a request version this client needs.
    #[error(
        "broker {broker:?} does not support {api:?} version {version} (it supports {supported:?})"
    )]
    UnsupportedVersion {
        /// The broker's name and version, from ApiVersions.
        broker: String,
        /// The api.
        api: ApiKey,
        /// The version this client sends.
        version: u16,
        /// The broker's `(min, max)` for this api, if it knows the api at all.
        supported: Option<(u16, u16)>,
    },
    /// A record could not be encoded, or a fetched record failed its checks.
    #[error("record error: {0}")]
    Record(#[from] RecordError),
    /// A record is too large to ever be sent with the current configuration.
    #[error("record of {size} bytes exceeds the limit of {max} bytes ({limit})")]
    RecordTooLarge {
        /// Encoded size of the record.
        size: usize,
        /// The limit it exceeds.
        max: usize,
        /// Which limit.
        limit: &'static str,
    },
    /// A configuration value is out of range.
    #[error("invalid config {field}: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A request could not be encoded (a name too long for the protocol, a frame over 64 MiB).
    #[error("cannot encode the request: {0}")]
    Encode(#[from] EncodeError),
    /// The producer or consumer was closed; it accepts no more calls.
    #[error("the producer or consumer is closed")]
    Closed,
    /// A background thread (a consumer's heartbeat) could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(String),
}

impl ClientError {
    /// True when the same request may succeed if sent again later: the connection broke or could
    /// not be opened (the client reconnects), the request timed out, or the broker answered with a
    /// retriable code ([`ErrorCode::is_retriable`]).
    ///
    /// A retried write may be applied twice: the first attempt may have reached the broker before
    /// the connection broke.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::Disconnected { .. }
            | ClientError::Timeout { .. }
            | ClientError::Throttled { .. } => true,
            ClientError::Broker { code, .. } => code.is_retriable(),
            _ => false,
        }
    }

    /// True for a broken or unreachable connection, which reconnecting may cure.
    pub fn is_disconnect(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. } | ClientError::Disconnected { .. }
        )
    }

    /// The broker's error code, if the broker answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Broker { code, .. } => Some(*code),
            ClientError::OffsetOutOfRange { .. } => Some(ErrorCode::OffsetOutOfRange),
            ClientError::Throttled { .. } => Some(ErrorCode::Throttled),
            _ => None,
        }
    }
}
