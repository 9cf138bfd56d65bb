//! The content store: verified blobs by digest, partial downloads, the tag
//! index, and garbage collection.
//!
//! ```text
//! ROOT/                  mode 0700
//!   store.lock           shared by pulls, exclusive for gc
//!   blobs/sha256/<hex>   verified blobs (manifests, configs, layers)
//!   ingest/<hex>.partial partial download, resumed by the next pull
//!   ingest/<hex>.lock    per-blob flock: one writer per blob, any process
//!   images.json          tag index, rewritten atomically under images.lock
//! ```
//!
//! Invariants:
//! * a file under `blobs/` has exactly the content its name says: it is
//!   written under `ingest/`, its size and sha256 checked, fsynced, renamed
//!   into place, and the directory fsynced;
//! * only one process writes a given blob at a time (its `.lock`); a waiter
//!   that then finds the blob present does not fetch it again;
//! * an image record is written only once every blob it needs is present.
//!
//! Concurrency with gc: every pull or import holds `store.lock` shared for
//! its whole run ([`Store::lock_shared`]); `gc` takes it exclusive, so it
//! waits for running pulls and a pull started during gc waits for it. Pulls
//! never wait for each other there; they only meet on per-blob locks.

mod blob;
mod image;
mod index;
pub mod manifest;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::image::digest::Digest;

pub use blob::Ingest;
pub use image::{Image, Layer};
pub use index::ImageRecord;
pub use manifest::{Compression, Descriptor, Document, ImageIndex, ImageManifest, ManifestError, Platform};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("blob {expected}: digest mismatch (content hashes to {actual})")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest}: size mismatch: expected {expected} bytes, got {actual}{}", if *at_least { " or more" } else { "" })]
    SizeMismatch { digest: Digest, expected: u64, actual: u64, at_least: bool },
    #[error("blob {digest} is larger than {limit} bytes")]
    TooLarge { digest: Digest, limit: u64 },
    #[error("blob {0} is not in the store")]
    MissingBlob(Digest),
    #[error("no image {0:?} in the store")]
    NotFound(String),
    #[error("image index {}: {reason}", path.display())]
    CorruptIndex { path: PathBuf, reason: String },
    #[error("manifest {digest}")]
    Manifest { digest: Digest, source: ManifestError },
    #[error("image config {digest}: {reason}")]
    Config { digest: Digest, reason: String },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }

    /// Whether the store's disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) || source.raw_os_error() == Some(libc::EDQUOT))
    }
}

/// Whether `err`, or any error under it, is a full disk (or quota).
pub fn is_disk_full(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        let full = e.downcast_ref::<StoreError>().is_some_and(StoreError::is_disk_full)
            || e.downcast_ref::<io::Error>().is_some_and(|e| matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)));
        if full {
            return true;
        }
        cur = e.source();
    }
    false
}

/// What to tell the user when a pull into `root` found the disk full: the
/// partial download stays (to resume), so every later pull would fail too
/// until space is freed.
pub fn disk_full_hint(root: &Path) -> String {
    format!(
        "the disk holding the store {} is full; the partial download is kept to resume the pull, \
         `berth gc` removes it with unused images and layers",
        root.display()
    )
}

/// A content store rooted at a directory. Cloning is cheap; all state is on
/// disk, so any number of processes may open the same root.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A held `flock`; released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _lock: Flock<File>,
}

impl Store {
    /// Opens the store at `root`, creating its directories (mode 0700).
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let store = Store { root: root.to_path_buf() };
        for dir in [store.root.clone(), store.blobs_dir(), store.ingest_dir()] {
            crate::paths::Paths::ensure_private_dir(&dir).map_err(StoreError::io(&dir))?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    fn ingest_dir(&self) -> PathBuf {
        self.root.join("ingest")
    }

    /// Where a verified blob lives (whether or not it is there yet).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// The size of a present blob.
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        std::fs::metadata(self.blob_path(digest)).ok().filter(|m| m.is_file()).map(|m| m.len())
    }

    /// Reads a small blob (a manifest or config) whole, checking its digest
    /// again: what was verified on the way in is verified on the way out.
    pub fn read_blob(&self, digest: &Digest, max_len: u64) -> Result<Vec<u8>, StoreError> {
        use std::io::Read;
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::MissingBlob(digest.clone())),
            r => r.map_err(StoreError::io(&path))?,
        };
        let mut bytes = Vec::new();
        file.take(max_len + 1).read_to_end(&mut bytes).map_err(StoreError::io(&path))?;
        if bytes.len() as u64 > max_len {
            return Err(StoreError::TooLarge { digest: digest.clone(), limit: max_len });
        }
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(StoreError::DigestMismatch { expected: digest.clone(), actual });
        }
        Ok(bytes)
    }

    /// Stores `bytes` under their own digest.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        self.put_blob_as(&digest, bytes)?;
        Ok(digest)
    }

    /// Stores `bytes`, which must hash to `digest`.
    pub fn put_blob_as(&self, digest: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        if let Some(mut w) = self.ingest(digest, bytes.len() as u64)? {
            w.restart()?;
            w.write(bytes)?;
            w.commit()?;
        }
        Ok(())
    }

    /// Copies a blob from `reader` (exactly `size` bytes hashing to `digest`).
    /// Returns whether it was written (false: it was already present).
    pub fn put_blob_from(&self, digest: &Digest, size: u64, reader: &mut impl io::Read) -> Result<bool, StoreError> {
        let Some(mut w) = self.ingest(digest, size)? else { return Ok(false) };
        w.restart()?;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::Io { path: PathBuf::from(format!("source of {digest}")), source: e }),
            };
            w.write(&buf[..n])?;
        }
        w.commit()?;
        Ok(true)
    }

    /// Starts (or resumes) writing blob `digest` of `size` bytes. Blocks until
    /// no other process is writing it; `None` when it is then present.
    pub fn ingest(&self, digest: &Digest, size: u64) -> Result<Option<Ingest>, StoreError> {
        let lock_path = self.ingest_dir().join(format!("{}.lock", digest.hex()));
        let lock = lock_file(&lock_path, FlockArg::LockExclusive)?;
        if self.has_blob(digest) {
            return Ok(None);
        }
        Ingest::open(
            lock,
            digest.clone(),
            size,
            self.ingest_dir().join(format!("{}.partial", digest.hex())),
            self.blob_path(digest),
        )
        .map(Some)
    }

    /// Holds the store shared for a pull or import: gc waits until it drops.
    pub fn lock_shared(&self) -> Result<StoreLock, StoreError> {
        Ok(StoreLock { _lock: lock_file(&self.root.join("store.lock"), FlockArg::LockShared)? })
    }

    fn lock_exclusive(&self) -> Result<StoreLock, StoreError> {
        Ok(StoreLock { _lock: lock_file(&self.root.join("store.lock"), FlockArg::LockExclusive)? })
    }

    /// Removes every blob no image refers to, and every leftover under
    /// `ingest/` (partial downloads included). Waits for running pulls.
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let _store = self.lock_exclusive()?;
        let _index = self.lock_index()?;
        let mut keep = std::collections::HashSet::new();
        for rec in self.images()? {
            keep.extend(rec.index.iter().cloned());
            keep.insert(rec.manifest.clone());
            keep.insert(rec.config.clone());
            match self.read_manifest(&rec.manifest) {
                Ok(m) => keep.extend(m.layers.into_iter().map(|l| l.digest)),
                // Its layers cannot be named: the image is broken already,
                // and keeping unknown blobs forever helps nobody.
                Err(e) => tracing::warn!("gc: image {}: {}", rec.name, crate::exit::chain(&e)),
            }
        }
        let mut report = GcReport::default();
        let dir = self.blobs_dir();
        for entry in std::fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
            let entry = entry.map_err(StoreError::io(&dir))?;
            let name = entry.file_name();
            let wanted = name.to_str().and_then(Digest::from_hex).is_some_and(|d| keep.contains(&d));
            if !wanted {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                remove(&entry.path())?;
                report.blobs_removed += 1;
                report.bytes_freed += size;
            }
        }
        let dir = self.ingest_dir();
        for entry in std::fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
            let entry = entry.map_err(StoreError::io(&dir))?;
            report.bytes_freed += entry.metadata().map(|m| m.len()).unwrap_or(0);
            remove(&entry.path())?;
            report.ingest_removed += 1;
        }
        Ok(report)
    }

    /// Reads and parses an image manifest blob.
    pub fn read_manifest(&self, digest: &Digest) -> Result<ImageManifest, StoreError> {
        let bytes = self.read_blob(digest, manifest::MAX_MANIFEST_SIZE)?;
        match manifest::parse(&bytes, None) {
            Ok(Document::Manifest(m)) => Ok(m),
            Ok(Document::Index(_)) => Err(StoreError::Manifest {
                digest: digest.clone(),
                source: ManifestError::MediaType("an index where an image manifest was expected".into()),
            }),
            Err(source) => Err(StoreError::Manifest { digest: digest.clone(), source }),
        }
    }
}

/// What `gc` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub ingest_removed: usize,
    pub bytes_freed: u64,
}

fn remove(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::Io { path: path.into(), source: e }),
        _ => Ok(()),
    }
}

/// Opens (creating, mode 0600, never truncating) a file of the store's own:
/// a lock file or a partial download.
pub(crate) fn open_private(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(StoreError::io(path))
}

/// Opens (creating) a lock file and flocks it, waiting as long as it takes.
fn lock_file(path: &Path, arg: FlockArg) -> Result<Flock<File>, StoreError> {
    let mut file = open_private(path)?;
    loop {
        match Flock::lock(file, arg) {
            Ok(l) => return Ok(l),
            Err((f, Errno::EINTR)) => file = f,
            Err((_, e)) => return Err(StoreError::Io { path: path.into(), source: e.into() }),
        }
    }
}

/// fsyncs a directory so a rename in it survives a crash.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(StoreError::io(dir))
}

#[cfg(test)]
mod tests;
