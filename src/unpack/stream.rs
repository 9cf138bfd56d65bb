//! The uncompressed layer stream: hashed as it is read (the diff_id) and
//! capped, both in total and while the tar reader parses headers.
//!
//! The `tar` crate reads a PAX extended header or a GNU long name into
//! memory whole before handing out the entry it describes; a compressed
//! bomb could make that gigabytes. So while the crate is looking for the
//! next entry, reads draw on a small header budget; running out is an I/O
//! error that the caller turns into `HeaderTooLarge`.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use crate::image::digest::{Digest, Hasher};

/// Which limit stopped the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tripped {
    Bytes,
    Header,
}

/// Shared between the reader (owned by the tar archive) and the apply loop.
#[derive(Debug, Default)]
pub struct Budget {
    /// Bytes the tar reader may still read for headers; `None` while entry
    /// data is being read.
    header_left: Cell<Option<u64>>,
    tripped: Cell<Option<Tripped>>,
}

impl Budget {
    pub fn start_headers(&self, bytes: u64) {
        self.header_left.set(Some(bytes));
    }
    pub fn end_headers(&self) {
        self.header_left.set(None);
    }
    pub fn tripped(&self) -> Option<Tripped> {
        self.tripped.get()
    }
}

pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    max_bytes: u64,
    budget: Rc<Budget>,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, max_bytes: u64, budget: Rc<Budget>) -> Self {
        HashingReader { inner, hasher: Hasher::new(), max_bytes, budget }
    }

    /// Reads what is left after the tar end-of-archive marker (so the digest
    /// covers the whole stream) and returns the digest.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        self.budget.end_headers();
        io::copy(&mut self, &mut io::sink())?;
        let len = self.hasher.len();
        Ok((self.hasher.finish(), len))
    }

    fn trip(&self, what: Tripped) -> io::Error {
        self.budget.tripped.set(Some(what));
        io::Error::other(match what {
            Tripped::Bytes => "layer byte limit exceeded",
            Tripped::Header => "header size limit exceeded",
        })
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut want = buf.len();
        if let Some(left) = self.budget.header_left.get() {
            if left == 0 {
                return Err(self.trip(Tripped::Header));
            }
            want = want.min(usize::try_from(left).unwrap_or(usize::MAX));
        }
        let n = self.inner.read(&mut buf[..want])?;
        if let Some(left) = self.budget.header_left.get() {
            self.budget.header_left.set(Some(left - n as u64));
        }
        self.hasher.update(&buf[..n]);
        if self.hasher.len() > self.max_bytes {
            return Err(self.trip(Tripped::Bytes));
        }
        Ok(n)
    }
}
