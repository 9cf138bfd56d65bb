//! Writing one blob: a partial file under `ingest/`, hashed as it grows,
//! renamed into `blobs/` once its size and digest are right.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use nix::fcntl::Flock;

use super::{sync_dir, StoreError};
use crate::image::digest::{Digest, Hasher};

/// A blob being written, holding the blob's lock. Dropping it without
/// [`commit`](Ingest::commit) keeps the partial file for the next pull to
/// resume; a verification failure deletes it.
pub struct Ingest {
    _lock: Flock<File>,
    digest: Digest,
    size: u64,
    file: File,
    partial: PathBuf,
    target: PathBuf,
    hasher: Hasher,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest").field("digest", &self.digest).field("size", &self.size).field("offset", &self.offset()).finish()
    }
}

impl Ingest {
    /// Opens the partial file and hashes what an earlier attempt left there.
    pub(super) fn open(lock: Flock<File>, digest: Digest, size: u64, partial: PathBuf, target: PathBuf) -> Result<Ingest, StoreError> {
        let mut file = super::open_private(&partial)?;
        let mut hasher = Hasher::new();
        let len = file.metadata().map_err(StoreError::io(&partial))?.len();
        if len > size {
            // Longer than the blob can be: nothing in it is worth keeping.
            file.set_len(0).map_err(StoreError::io(&partial))?;
        } else if len > 0 {
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = file.read(&mut buf).map_err(StoreError::io(&partial))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            if hasher.len() != len {
                return Err(StoreError::io(&partial)(std::io::Error::other("partial file changed while being read")));
            }
        }
        file.seek(SeekFrom::End(0)).map_err(StoreError::io(&partial))?;
        Ok(Ingest { _lock: lock, digest, size, file, partial, target, hasher })
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The expected size of the whole blob.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes already written (and hashed): where a download resumes.
    pub fn offset(&self) -> u64 {
        self.hasher.len()
    }

    /// Throws away what was written, for a source that starts over from 0.
    pub fn restart(&mut self) -> Result<(), StoreError> {
        if self.hasher.is_empty() {
            return Ok(());
        }
        self.file.set_len(0).map_err(StoreError::io(&self.partial))?;
        self.file.seek(SeekFrom::Start(0)).map_err(StoreError::io(&self.partial))?;
        self.hasher = Hasher::new();
        Ok(())
    }

    /// Appends bytes. More bytes than the blob's size is an error, and the
    /// partial file is discarded (the source is wrong, not interrupted).
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let after = self.hasher.len() + bytes.len() as u64;
        if after > self.size {
            self.discard();
            return Err(StoreError::SizeMismatch { digest: self.digest.clone(), expected: self.size, actual: after, at_least: true });
        }
        self.file.write_all(bytes).map_err(StoreError::io(&self.partial))?;
        self.hasher.update(bytes);
        Ok(())
    }

    /// Verifies size and digest, then makes the blob visible: fsync, rename
    /// into `blobs/`, fsync the directory. On a mismatch the partial file is
    /// deleted so no later pull resumes from bad bytes.
    pub fn commit(mut self) -> Result<(), StoreError> {
        let len = self.hasher.len();
        if len != self.size {
            if len > self.size {
                self.discard();
            }
            return Err(StoreError::SizeMismatch { digest: self.digest.clone(), expected: self.size, actual: len, at_least: false });
        }
        let actual = std::mem::take(&mut self.hasher).finish();
        if actual != self.digest {
            self.discard();
            return Err(StoreError::DigestMismatch { expected: self.digest.clone(), actual });
        }
        self.file.sync_all().map_err(StoreError::io(&self.partial))?;
        std::fs::rename(&self.partial, &self.target).map_err(StoreError::io(&self.target))?;
        if let Some(dir) = self.target.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }

    fn discard(&mut self) {
        let _ = std::fs::remove_file(&self.partial);
        self.hasher = Hasher::new();
    }
}
