//! The tag index, `images.json`: which names point at which manifests.
//! Readers read it without locking (it is only ever replaced by rename);
//! writers hold `images.lock` across read-modify-write.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use nix::fcntl::FlockArg;
use serde::{Deserialize, Serialize};

use super::{lock_file, sync_dir, Store, StoreError, StoreLock};
use crate::image::digest::Digest;

/// One name in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `registry/repo:tag`, `registry/repo@sha256:…`, or `localhost/NAME:TAG`
    /// for an import.
    pub name: String,
    /// The image manifest (platform-specific).
    pub manifest: Digest,
    /// The image configuration.
    pub config: Digest,
    /// The index or manifest list the manifest was chosen from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Digest>,
    /// `os/arch[/variant]` of the image.
    #[serde(default)]
    pub platform: String,
    /// Bytes of manifest, config and (compressed) layers.
    pub size: u64,
    /// When it was pulled, in seconds since the epoch.
    pub created: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct IndexFile {
    images: Vec<ImageRecord>,
}

impl Store {
    fn index_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    pub(super) fn lock_index(&self) -> Result<StoreLock, StoreError> {
        Ok(StoreLock { _lock: lock_file(&self.root.join("images.lock"), FlockArg::LockExclusive)? })
    }

    fn read_index(&self) -> Result<IndexFile, StoreError> {
        let path = self.index_path();
        match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(IndexFile::default()),
            Err(e) => Err(StoreError::Io { path, source: e }),
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::CorruptIndex { path, reason: e.to_string() }),
        }
    }

    fn write_index(&self, index: &IndexFile) -> Result<(), StoreError> {
        let path = self.index_path();
        let tmp = self.root.join("images.json.tmp");
        let bytes = serde_json::to_vec_pretty(index)
            .map_err(|e| StoreError::CorruptIndex { path: path.clone(), reason: e.to_string() })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(StoreError::io(&tmp))?;
        if let Err(e) = f.write_all(&bytes).and_then(|_| f.sync_all()) {
            // A full disk leaves no empty index file behind.
            drop(f);
            let _ = std::fs::remove_file(&tmp);
            return Err(StoreError::Io { path: tmp, source: e });
        }
        std::fs::rename(&tmp, &path).map_err(StoreError::io(&path))?;
        sync_dir(&self.root)
    }

    /// Records an image under `record.name`, replacing what that name
    /// pointed at. Every blob the image needs must be present already.
    pub fn tag(&self, record: ImageRecord) -> Result<(), StoreError> {
        let _lock = self.lock_index()?;
        let mut index = self.read_index()?;
        index.images.retain(|r| r.name != record.name);
        index.images.push(record);
        index.images.sort_by(|a, b| a.name.cmp(&b.name));
        self.write_index(&index)
    }

    /// All images, sorted by name.
    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        Ok(self.read_index()?.images)
    }

    /// Finds an image by exact name, by manifest digest (`sha256:…`), or by
    /// an unambiguous prefix of at least 6 hex digits of it.
    pub fn lookup(&self, query: &str) -> Result<Option<ImageRecord>, StoreError> {
        let images = self.images()?;
        Ok(find(&images, query).into_iter().next().cloned())
    }

    /// Removes the name `query` (or, for a digest, every name of that image).
    /// Returns the records removed; [`StoreError::NotFound`] if none. Blobs
    /// stay until [`Store::gc`].
    pub fn untag(&self, query: &str) -> Result<Vec<ImageRecord>, StoreError> {
        let _lock = self.lock_index()?;
        let mut index = self.read_index()?;
        let gone: Vec<ImageRecord> = find(&index.images, query).into_iter().cloned().collect();
        if gone.is_empty() {
            return Err(StoreError::NotFound(query.to_string()));
        }
        index.images.retain(|r| !gone.contains(r));
        self.write_index(&index)?;
        Ok(gone)
    }
}

/// The records `query` names: one by exact name, else all of one manifest.
fn find<'a>(images: &'a [ImageRecord], query: &str) -> Vec<&'a ImageRecord> {
    if let Some(r) = images.iter().find(|r| r.name == query) {
        return vec![r];
    }
    let hex = query.strip_prefix("sha256:").unwrap_or(query);
    let is_hex = hex.len() >= 6 && hex.len() <= 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !is_hex {
        return vec![];
    }
    let hits: Vec<&ImageRecord> = images.iter().filter(|r| r.manifest.hex().starts_with(hex)).collect();
    // A prefix must name one image, not several.
    let first = hits.first().map(|r| r.manifest.clone());
    if hits.iter().all(|r| Some(&r.manifest) == first.as_ref()) {
        hits
    } else {
        vec![]
    }
}
