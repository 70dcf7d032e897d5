//! A response as the writer sends it: a whole frame, or a Fetch response whose record runs are
//! written straight from the segment mappings.
//!
//! Handlers build these; a connection's writer sends them. Neither knows the other: this module
//! is what they share.

use crate::storage::{SegmentMap, Slice};

/// A response ready to be written.
pub enum Outgoing<M: SegmentMap> {
    /// A whole frame.
    Frame(Vec<u8>),
    /// A Fetch response: `head` with the record runs spliced in at `splits` (see
    /// `protocol::encode_fetch_response`).
    Fetch {
        head: Vec<u8>,
        splits: Vec<usize>,
        slices: Vec<Option<Slice<M>>>,
    },
}

impl<M: SegmentMap> Outgoing<M> {
    /// Anonymous memory it holds (record runs are mapped segment pages: page cache, not charged).
    pub fn heap_bytes(&self) -> usize {
        match self {
            Outgoing::Frame(f) => f.capacity(),
            Outgoing::Fetch { head, splits, .. } => head.capacity() + splits.capacity() * 8,
        }
    }
}
