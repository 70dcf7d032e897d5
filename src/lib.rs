//! Levee: a single-node message broker that takes a flood of traffic and releases it downstream at
//! the pace the consumers can hold, without losing a message.
//!
//! # Architecture
//!
//! ```text
//!   protocol  sans-IO frames: requests, responses, error codes, versions (no sockets, no runtime)
//!   record    the unit of data: a 32-byte header + one rkyv archive, identical on wire and disk
//!   client    the Rust client library: connections, producer, consumer (protocol + record only)
//!     │
//!   storage   partition logs: memory-mapped segments, sparse indexes, recovery, the Io seam,
//!     │       FlushPool (group commit and segment preparation on threads shared by every log)
//!   catalog   topics on disk; immutable snapshots for readers, serialized writers
//!     │
//!   shard     Shard<I: Io>: the partitions one core owns, typed operations, `on_owner` (the hop)
//!     │
//!   server    listeners, sessions, connections under a memory budget, handlers (wire <-> shard),
//!             metrics and health, lifecycle (start, graceful shutdown, fail-stop)
//!   runtime   the only module that names glommio: spawn, timers, sockets, blocking work
//!   config    flags > env > TOML > defaults, validated once; failpoint: test-only failures
//! ```
//!
//! Dependencies point one way, downwards in the picture: `record` and `protocol` import nothing
//! of Levee's storage and no runtime, so a client (built with `--no-default-features`) and the
//! fuzzers compile them alone; `storage` (feature `broker`) never touches the network or the
//! runtime; `shard` speaks domain types, never wire types; `server` translates.
//!
//! docs/architecture.md draws the produce and fetch paths from socket to segment, docs/protocol.md
//! every frame, docs/storage.md the on-disk formats, and tuning.md every knob.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(feature = "broker")]
pub mod catalog;
pub mod client;
#[cfg(feature = "broker")]
pub mod config;
#[cfg(feature = "broker")]
pub mod delay;
pub mod failpoint;
#[cfg(feature = "broker")]
pub mod flow;
#[cfg(feature = "broker")]
pub mod group;
pub mod protocol;
pub mod record;
#[cfg(feature = "broker")]
pub mod runtime;
#[cfg(feature = "broker")]
pub mod server;
#[cfg(feature = "broker")]
pub mod shard;
#[cfg(feature = "broker")]
pub mod storage;
