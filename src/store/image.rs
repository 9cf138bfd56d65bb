//! The parsed view of a stored image that the unpack stage consumes.

use std::path::PathBuf;

use oci_spec::image::ImageConfiguration;

use super::manifest::{Compression, ImageManifest, MAX_CONFIG_SIZE};
use super::{ImageRecord, Store, StoreError};
use crate::image::digest::Digest;

/// A stored image, every blob of it present and its documents verified.
#[derive(Debug, Clone)]
pub struct Image {
    pub record: ImageRecord,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
    /// Bottom layer first.
    pub layers: Vec<Layer>,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Digest of the blob as stored (compressed).
    pub digest: Digest,
    pub media_type: String,
    pub compression: Compression,
    /// Size of the blob as stored.
    pub size: u64,
    /// Digest of the uncompressed tar, from the config's `rootfs.diff_ids`:
    /// the unpacker checks it as it decompresses.
    pub diff_id: Digest,
    /// The verified blob.
    pub path: PathBuf,
}

impl Store {
    /// The image a name or digest refers to (see [`Store::lookup`]).
    pub fn image(&self, name_or_digest: &str) -> Result<Image, StoreError> {
        let record = self.lookup(name_or_digest)?.ok_or_else(|| StoreError::NotFound(name_or_digest.to_string()))?;
        self.image_of(record)
    }

    /// Reads and checks everything a record points at.
    pub fn image_of(&self, record: ImageRecord) -> Result<Image, StoreError> {
        let manifest = self.read_manifest(&record.manifest)?;
        let config = self.read_config(&manifest.config.digest)?;
        let layers = layers_of(self, &manifest, &config)?;
        Ok(Image { record, manifest, config, layers })
    }

    /// Reads and parses an image configuration blob.
    pub fn read_config(&self, digest: &Digest) -> Result<ImageConfiguration, StoreError> {
        let bytes = self.read_blob(digest, MAX_CONFIG_SIZE)?;
        parse_config(digest, &bytes)
    }
}

/// Parses an image configuration and checks its `rootfs`.
pub(crate) fn parse_config(digest: &Digest, bytes: &[u8]) -> Result<ImageConfiguration, StoreError> {
    let bad = |reason: String| StoreError::Config { digest: digest.clone(), reason };
    let config: ImageConfiguration = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if config.rootfs().typ() != "layers" {
        return Err(bad(format!("rootfs type {:?} is not \"layers\"", config.rootfs().typ())));
    }
    for id in config.rootfs().diff_ids() {
        Digest::parse(id).map_err(|e| bad(format!("rootfs.diff_ids: {e}")))?;
    }
    Ok(config)
}

/// Pairs the manifest's layers with the config's diff_ids.
pub(crate) fn layers_of(store: &Store, manifest: &ImageManifest, config: &ImageConfiguration) -> Result<Vec<Layer>, StoreError> {
    let digest = &manifest.config.digest;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers.len() {
        return Err(StoreError::Config {
            digest: digest.clone(),
            reason: format!("{} diff_ids for {} layers", diff_ids.len(), manifest.layers.len()),
        });
    }
    manifest
        .layers
        .iter()
        .zip(diff_ids)
        .map(|(l, id)| {
            let diff_id = Digest::parse(id).map_err(|e| StoreError::Config { digest: digest.clone(), reason: e.to_string() })?;
            let compression = Compression::of_media_type(&l.media_type)
                .map_err(|source| StoreError::Manifest { digest: digest.clone(), source })?;
            let path = store.blob_path(&l.digest);
            match store.blob_size(&l.digest) {
                None => return Err(StoreError::MissingBlob(l.digest.clone())),
                Some(n) if n != l.size => {
                    return Err(StoreError::SizeMismatch { digest: l.digest.clone(), expected: l.size, actual: n, at_least: false })
                }
                Some(_) => {}
            }
            Ok(Layer { digest: l.digest.clone(), media_type: l.media_type.clone(), compression, size: l.size, diff_id, path })
        })
        .collect()
}

impl Store {
    /// Records an image once its config and layers are present: stores the
    /// manifest (and the index it was chosen from), then points `name` at
    /// it. Fails, recording nothing, if any blob is missing or wrong.
    pub fn commit_image(
        &self,
        name: &str,
        manifest: (&Digest, &[u8]),
        index: Option<(&Digest, &[u8])>,
    ) -> Result<ImageRecord, StoreError> {
        let (digest, bytes) = manifest;
        let parsed = match super::manifest::parse(bytes, None) {
            Ok(super::Document::Manifest(m)) => m,
            Ok(super::Document::Index(_)) => {
                return Err(StoreError::Manifest {
                    digest: digest.clone(),
                    source: super::ManifestError::MediaType("an index where an image manifest was expected".into()),
                })
            }
            Err(source) => return Err(StoreError::Manifest { digest: digest.clone(), source }),
        };
        let config = self.read_config(&parsed.config.digest)?;
        let layers = layers_of(self, &parsed, &config)?;
        self.put_blob_as(digest, bytes)?;
        if let Some((d, b)) = index {
            self.put_blob_as(d, b)?;
        }
        let mut platform = format!("{}/{}", config.os(), config.architecture());
        if let Some(v) = config.variant().as_deref().filter(|v| !v.is_empty()) {
            platform.push('/');
            platform.push_str(v);
        }
        let record = ImageRecord {
            name: name.to_string(),
            manifest: digest.clone(),
            config: parsed.config.digest.clone(),
            index: index.map(|(d, _)| d.clone()),
            platform,
            size: bytes.len() as u64 + parsed.config.size + layers.iter().map(|l| l.size).sum::<u64>(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        self.tag(record.clone())?;
        Ok(record)
    }
}
