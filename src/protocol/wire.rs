//! Primitive encodings shared by every message body: little-endian integers, length-prefixed
//! strings and byte strings, counted arrays, and 16-byte aligned record runs.
//!
//! [`Reader`] checks every length against what remains before it slices or allocates, so a hostile
//! length can never make the decoder allocate more than the frame it already holds.

use super::{DecodeError, EncodeError};
use crate::record::RECORD_ALIGN;

/// Appends primitives to a frame being built. Positions for alignment are counted from the start
/// of the frame (its size field), so the frame must start at index 0 of `buf`.
///
/// A value the format cannot carry (a string over 65 535 bytes, a count over `u32`) is not a
/// panic: the writer remembers the first such error, and [`Writer::finish`] returns it.
pub struct Writer<'a> {
    buf: &'a mut Vec<u8>,
    error: Option<EncodeError>,
}

impl<'a> Writer<'a> {
    /// Writes into `buf`, which holds the frame from its first byte.
    pub fn new(buf: &'a mut Vec<u8>) -> Self {
        Writer { buf, error: None }
    }

    fn fail(&mut self, e: EncodeError) {
        self.error.get_or_insert(e);
    }

    /// The first value that could not be encoded, if any.
    pub fn finish(self) -> Result<(), EncodeError> {
        self.error.map_or(Ok(()), Err)
    }

    /// Appends a `u8`.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// Appends a `u16`.
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a `u32`.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a `u64`.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends an `i64`.
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// Appends a string: `u16` byte length, then UTF-8 bytes. A string over 65 535 bytes is
    /// an [`EncodeError::StringTooLong`] (written as empty, so later positions stay consistent).
    pub fn str(&mut self, s: &str) {
        match u16::try_from(s.len()) {
            Ok(len) => {
                self.u16(len);
                self.buf.extend_from_slice(s.as_bytes());
            }
            Err(_) => {
                self.fail(EncodeError::StringTooLong { len: s.len() });
                self.u16(0);
            }
        }
    }
    /// Appends an optional `u64`: a `u8` flag (0 absent, 1 present), then the value if present.
    pub fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
            None => self.u8(0),
        }
    }
    /// Appends an array count.
    pub fn count(&mut self, n: usize) {
        match u32::try_from(n) {
            Ok(n) => self.u32(n),
            Err(_) => {
                self.fail(EncodeError::TooMany { count: n });
                self.u32(0);
            }
        }
    }
    /// Appends a record run: `u32` length, zero padding up to the next multiple of 16 from the
    /// frame start, then the run itself (whose length is a multiple of 16).
    pub fn run(&mut self, run: &[u8]) {
        self.run_header(run.len());
        self.buf.extend_from_slice(run);
    }
    /// Appends only the length and padding of a run whose bytes are sent separately (zero-copy
    /// fetch responses).
    pub fn run_header(&mut self, len: usize) {
        if len % RECORD_ALIGN != 0 {
            self.fail(EncodeError::RunNotAligned { len });
        }
        self.count(len);
        self.pad();
    }
    fn pad(&mut self) {
        let rem = self.buf.len() % RECORD_ALIGN;
        if rem != 0 {
            self.buf.resize(self.buf.len() + RECORD_ALIGN - rem, 0);
        }
    }
    /// Bytes written so far (the whole frame).
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Reads primitives from a frame. `position` is counted from the frame start, for alignment.
pub struct Reader<'a> {
    frame: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    /// Reads `frame` (from its size field) starting at `position`.
    pub fn new(frame: &'a [u8], position: usize) -> Self {
        Reader { frame, position }
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.frame.len().saturating_sub(self.position)
    }

    /// Current position from the frame start.
    pub fn position(&self) -> usize {
        self.position
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                position: self.position,
                needed: n,
            });
        }
        let s = &self.frame[self.position..self.position + n];
        self.position += n;
        Ok(s)
    }

    /// Reads a `u8`.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    /// Reads a `u16`.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    /// Reads a `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// Reads a `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// Reads an `i64`.
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.u64()? as i64)
    }
    /// Reads a string.
    pub fn str(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.u16()? as usize;
        let at = self.position;
        std::str::from_utf8(self.take(len)?).map_err(|_| DecodeError::Invalid {
            position: at,
            what: "string is not UTF-8",
        })
    }
    /// Reads an owned string.
    pub fn string(&mut self) -> Result<String, DecodeError> {
        self.str().map(str::to_owned)
    }
    /// Reads an optional `u64`.
    pub fn opt_u64(&mut self) -> Result<Option<u64>, DecodeError> {
        let at = self.position;
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.u64()?)),
            _ => Err(DecodeError::Invalid {
                position: at,
                what: "option flag is not 0 or 1",
            }),
        }
    }
    /// Reads an array count and checks that `count * min_item_bytes` could still fit, so a hostile
    /// count can never drive an allocation larger than the frame.
    pub fn count(&mut self, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let at = self.position;
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item_bytes.max(1)) > self.remaining() {
            return Err(DecodeError::Invalid {
                position: at,
                what: "array count larger than the frame",
            });
        }
        Ok(n)
    }
    /// Reads a record run: returns its byte range within the frame (aligned to 16 from the frame
    /// start), so the caller can append it in place.
    pub fn run(&mut self) -> Result<std::ops::Range<usize>, DecodeError> {
        let at = self.position;
        let len = self.u32()? as usize;
        if len % RECORD_ALIGN != 0 {
            return Err(DecodeError::Invalid {
                position: at,
                what: "record run length is not a multiple of 16",
            });
        }
        let rem = self.position % RECORD_ALIGN;
        if rem != 0 {
            let pad = self.take(RECORD_ALIGN - rem)?;
            if pad.iter().any(|&b| b != 0) {
                return Err(DecodeError::Invalid {
                    position: at,
                    what: "run padding is not zero",
                });
            }
        }
        let start = self.position;
        self.take(len)?;
        Ok(start..start + len)
    }
    /// Fails unless every byte was consumed: trailing bytes mean the peer and we disagree on the
    /// format, which must not pass silently.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(DecodeError::Invalid {
                position: self.position,
                what: "trailing bytes after the body",
            });
        }
        Ok(())
    }
}
