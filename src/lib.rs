//! Levee: a single-node message broker that takes a flood of traffic and releases it downstream at
//! the pace the consumers can hold, without losing a message.
//!
//! # Architecture
//!
//! ```text
//!   protocol  sans-IO frames: requests, responses, error codes (no sockets, no runtime)
//!   record    the unit of data: a 32-byte header + one rkyv archive, identical on wire and disk
//!     │
//!   storage   partition logs: memory-mapped segments, sparse indexes, group commit, recovery
//! ```
//!
//! Dependencies point one way, downwards in the picture: `record` imports nothing of Levee and no
//! runtime, so a client (built with `--no-default-features`) and the fuzzers compile it alone;
//! `storage` (feature `broker`) builds on `record` and never touches the network or the runtime.
//!
//! See docs/storage.md for the on-disk formats and tuning.md for every knob.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(feature = "broker")]
pub mod catalog;
pub mod client;
#[cfg(feature = "broker")]
pub mod config;
pub mod failpoint;
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
