//! Reusable 16-byte aligned frame buffers, shared by the server's and the client's connections.
//!
//! A fresh large buffer costs a page fault per page (about 2 µs each on a VM), more than the copy
//! into it. A reused one is warm and, since it keeps its length, is not zeroed again: a frame is
//! the first `len` bytes of the buffer it was read into. No locking here: the server keeps one
//! per connection task, the client wraps one in a mutex.

use rkyv::util::AlignedVec;

/// Spare frame buffers, at most `bytes_max` bytes of them. Each spare buffer carries a tag `T`
/// that travels with it (the server keeps each buffer's memory-budget charge there).
#[derive(Debug)]
pub struct FrameBuffers<T = ()> {
    spare: Vec<(AlignedVec<16>, T)>,
    bytes_max: usize,
}

impl<T> FrameBuffers<T> {
    /// An empty pool that keeps at most `bytes_max` bytes of spare buffers.
    pub fn new(bytes_max: usize) -> FrameBuffers<T> {
        FrameBuffers {
            spare: Vec::new(),
            bytes_max,
        }
    }

    /// The most recently returned spare buffer and its tag, if any.
    pub fn take_spare(&mut self) -> Option<(AlignedVec<16>, T)> {
        self.spare.pop()
    }

    /// Keeps `buf` for reuse, unless that would hold more than the bound; a buffer not kept is
    /// handed back.
    pub fn give_tagged(&mut self, buf: AlignedVec<16>, tag: T) -> Result<(), (AlignedVec<16>, T)> {
        if self.held_bytes() + buf.len() <= self.bytes_max {
            self.spare.push((buf, tag));
            Ok(())
        } else {
            Err((buf, tag))
        }
    }

    /// Bytes of the spare buffers held.
    pub fn held_bytes(&self) -> usize {
        self.spare.iter().map(|(b, _)| b.len()).sum()
    }

    /// Drops every spare buffer.
    pub fn clear(&mut self) {
        self.spare.clear();
    }
}

impl FrameBuffers<()> {
    /// A buffer of at least `len` initialized bytes (a spare one if there is one).
    pub fn take(&mut self, len: usize) -> AlignedVec<16> {
        let mut buf = self.take_spare().map(|(b, ())| b).unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        buf
    }

    /// Keeps `buf` for reuse, unless that would hold more than the bound.
    pub fn give(&mut self, buf: AlignedVec<16>) {
        let _ = self.give_tagged(buf, ());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_a_returned_buffer_when_a_shorter_frame_takes_it_should_keep_its_length() {
        let mut pool = FrameBuffers::new(1 << 20);
        let mut big = pool.take(1000);
        assert!(big.len() >= 1000);
        big[999] = 7;
        pool.give(big);
        // Reused whole: no shrinking, so no zeroing when a longer frame comes back later.
        let again = pool.take(10);
        assert_eq!(again.len(), 1000);
        assert_eq!(again[999], 7);
        assert_eq!(again.as_ptr() as usize % 16, 0);
    }

    #[test]
    fn given_a_full_pool_when_more_is_returned_should_drop_it() {
        let mut pool = FrameBuffers::new(4096);
        let (a, b) = (pool.take(4096), pool.take(16));
        pool.give(a);
        pool.give(b);
        assert_eq!(pool.held_bytes(), 4096);
        assert_eq!(pool.take(1).len(), 4096);
        assert_eq!(pool.held_bytes(), 0);
    }
}
