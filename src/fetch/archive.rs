//! Imports from an OCI image layout directory (`oci:DIR[:TAG]`) or a tar of
//! one (`oci-archive:FILE[:TAG]`), with the same verification as a pull:
//! every blob is copied into the store through [`Store::put_blob_from`],
//! which checks its size and digest, and the image is recorded last.
//!
//! An archive is not unpacked: one pass over its tar headers notes where
//! each `blobs/sha256/<hex>` file lies, and blobs are then read in place.
//! Only regular files count; links in an archive are refused as layout
//! blobs, so nothing in it can point outside it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::image::digest::Digest;
use crate::fetch::progress::Progress;
use crate::image::reference::RegistryRef;
use crate::store::manifest::{self, media, Descriptor, Document, ImageIndex, Platform};
use crate::store::{ImageRecord, Store, StoreError};

/// The annotation that tags an image in a layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not an OCI image layout: {reason}", path.display())]
    NotLayout { path: PathBuf, reason: String },
    #[error("{}: no image tagged {tag:?} (tags: {tags})", path.display())]
    NoTag { path: PathBuf, tag: String, tags: String },
    #[error("{}: {count} images in the layout; name one as :TAG (tags: {tags})", path.display())]
    Ambiguous { path: PathBuf, count: usize, tags: String },
    #[error("{}: no image for platform {platform} (the index has {available})", path.display())]
    NoPlatform { path: PathBuf, platform: String, available: String },
    #[error("{}: blob {digest} is missing", path.display())]
    MissingBlob { path: PathBuf, digest: Digest },
    #[error("{what} {digest}")]
    Manifest { path: PathBuf, what: &'static str, digest: Digest, source: manifest::ManifestError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where blobs come from.
trait Source {
    /// The layout's path, for messages and the image name.
    fn path(&self) -> &Path;
    /// A small file of the layout (`index.json`, `oci-layout`), whole.
    fn read_meta(&mut self, name: &str, max: u64) -> Result<Vec<u8>, ArchiveError>;
    /// A reader over blob `digest`, or `None` if the layout lacks it.
    fn open_blob(&mut self, digest: &Digest) -> Result<Option<Box<dyn Read + '_>>, ArchiveError>;
}

/// Imports `tag` (or the only image) from the OCI layout at `dir`.
pub fn import_layout(store: &Store, dir: &Path, tag: Option<&str>, platform: &Platform, progress: &Progress) -> Result<ImageRecord, ArchiveError> {
    let mut src = LayoutDir { dir: dir.to_path_buf() };
    import(store, &mut src, tag, platform, progress)
}

/// Imports `tag` (or the only image) from an `oci-archive` tar.
pub fn import_archive(store: &Store, file: &Path, tag: Option<&str>, platform: &Platform, progress: &Progress) -> Result<ImageRecord, ArchiveError> {
    let mut src = TarLayout::open(file)?;
    import(store, &mut src, tag, platform, progress)
}

fn import(store: &Store, src: &mut dyn Source, tag: Option<&str>, platform: &Platform, progress: &Progress) -> Result<ImageRecord, ArchiveError> {
    let path = src.path().to_path_buf();
    let not_layout = |reason: String| ArchiveError::NotLayout { path: path.clone(), reason };
    let layout = src.read_meta("oci-layout", 4096)?;
    let version = serde_json::from_slice::<serde_json::Value>(&layout)
        .ok()
        .and_then(|v| v.get("imageLayoutVersion").and_then(|s| s.as_str()).map(str::to_string))
        .ok_or_else(|| not_layout("oci-layout has no imageLayoutVersion".into()))?;
    if !version.starts_with("1.") {
        return Err(not_layout(format!("imageLayoutVersion {version} is not 1.x")));
    }
    let index_bytes = src.read_meta("index.json", manifest::MAX_MANIFEST_SIZE)?;
    let index = match manifest::parse(&index_bytes, Some(media::OCI_INDEX)) {
        Ok(Document::Index(i)) => i,
        Ok(Document::Manifest(_)) => return Err(not_layout("index.json is not an index".into())),
        Err(e) => return Err(not_layout(format!("index.json: {e}"))),
    };
    let _session = store.lock_shared()?;

    let entry = pick_tag(&path, &index, tag)?.clone();
    let mut chosen_index = None;
    let entry = match entry.media_type.as_str() {
        media::OCI_MANIFEST | media::DOCKER_MANIFEST => entry,
        media::OCI_INDEX | media::DOCKER_LIST => {
            let bytes = read_small(src, &entry, manifest::MAX_MANIFEST_SIZE)?;
            let nested = match manifest::parse(&bytes, Some(&entry.media_type)) {
                Ok(Document::Index(i)) => i,
                Ok(Document::Manifest(_)) => return Err(not_layout(format!("{} is not an index", entry.digest))),
                Err(source) => return Err(ArchiveError::Manifest { path, what: "index", digest: entry.digest, source }),
            };
            let Some(child) = platform.select(&nested) else {
                return Err(ArchiveError::NoPlatform {
                    path,
                    platform: platform.to_string(),
                    available: crate::fetch::pull::available(&nested.manifests),
                });
            };
            let child = child.clone();
            chosen_index = Some((entry.digest.clone(), bytes));
            child
        }
        other => {
            return Err(ArchiveError::Manifest {
                path,
                what: "manifest",
                digest: entry.digest.clone(),
                source: manifest::ManifestError::MediaType(other.to_string()),
            })
        }
    };
    let manifest_bytes = read_small(src, &entry, manifest::MAX_MANIFEST_SIZE)?;
    let m = match manifest::parse(&manifest_bytes, Some(&entry.media_type)) {
        Ok(Document::Manifest(m)) => m,
        Ok(Document::Index(_)) => return Err(not_layout(format!("{} is an index, not a manifest", entry.digest))),
        Err(source) => return Err(ArchiveError::Manifest { path, what: "manifest", digest: entry.digest, source }),
    };
    progress.event(&format!("importing {} ({} layers)", path.display(), m.layers.len()));
    for (what, desc) in std::iter::once(("config", &m.config)).chain(m.layers.iter().map(|l| ("layer", l))) {
        let bar = progress.blob(what, &desc.digest, desc.size);
        if store.has_blob(&desc.digest) {
            bar.done(false);
            continue;
        }
        bar.start(0);
        let Some(mut reader) = src.open_blob(&desc.digest)? else {
            bar.fail();
            return Err(ArchiveError::MissingBlob { path, digest: desc.digest.clone() });
        };
        match store.put_blob_from(&desc.digest, desc.size, &mut reader) {
            Ok(fetched) => bar.done(fetched),
            Err(source) => {
                bar.fail();
                return Err(ArchiveError::Store(source));
            }
        }
    }
    let name = image_name(&path, tag, entry.annotations.get(REF_NAME).map(String::as_str));
    let record = store.commit_image(&name, (&entry.digest, &manifest_bytes), chosen_index.as_ref().map(|(d, b)| (d, b.as_slice())))?;
    progress.event(&format!("stored {} {}", record.name, record.manifest));
    Ok(record)
}

/// The index entry for `tag`, or the only one.
fn pick_tag<'a>(path: &Path, index: &'a ImageIndex, tag: Option<&str>) -> Result<&'a Descriptor, ArchiveError> {
    let tags = || {
        let t: Vec<&str> = index.manifests.iter().filter_map(|d| d.annotations.get(REF_NAME).map(String::as_str)).collect();
        if t.is_empty() { "none".to_string() } else { t.join(", ") }
    };
    match tag {
        Some(tag) => index
            .manifests
            .iter()
            .find(|d| d.annotations.get(REF_NAME).map(String::as_str) == Some(tag))
            .ok_or_else(|| ArchiveError::NoTag { path: path.into(), tag: tag.into(), tags: tags() }),
        None if index.manifests.len() == 1 => Ok(&index.manifests[0]),
        None => Err(ArchiveError::Ambiguous { path: path.into(), count: index.manifests.len(), tags: tags() }),
    }
}

/// A full reference in `ref.name` is the image's name; otherwise it is
/// `localhost/<file name>:<tag>`, as podman names local images.
fn image_name(path: &Path, tag: Option<&str>, ref_name: Option<&str>) -> String {
    if let Some(r) = ref_name.and_then(|n| RegistryRef::parse(n).ok()).filter(|r| r.qualified) {
        return r.name();
    }
    let stem = path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let stem = stem.strip_suffix(".tar").unwrap_or(&stem);
    let mut base: String = stem
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' { c } else { '-' })
        .collect();
    base = base.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string();
    if base.is_empty() {
        base = "image".into();
    }
    let tag = tag.or(ref_name).filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
    format!("localhost/{base}:{}", tag.unwrap_or("latest"))
}

/// Reads a manifest or index blob whole, checking its size and digest.
fn read_small(src: &mut dyn Source, desc: &Descriptor, max: u64) -> Result<Vec<u8>, ArchiveError> {
    let path = src.path().to_path_buf();
    let bad = ArchiveError::Store;
    if desc.size > max {
        return Err(bad(StoreError::TooLarge { digest: desc.digest.clone(), limit: max }));
    }
    let Some(reader) = src.open_blob(&desc.digest)? else {
        return Err(ArchiveError::MissingBlob { path: path.clone(), digest: desc.digest.clone() });
    };
    let mut bytes = Vec::new();
    reader.take(desc.size + 1).read_to_end(&mut bytes).map_err(|e| ArchiveError::Io { path: path.clone(), source: e })?;
    if bytes.len() as u64 != desc.size {
        return Err(bad(StoreError::SizeMismatch { digest: desc.digest.clone(), expected: desc.size, actual: bytes.len() as u64, at_least: bytes.len() as u64 > desc.size }));
    }
    let actual = Digest::of(&bytes);
    if actual != desc.digest {
        return Err(bad(StoreError::DigestMismatch { expected: desc.digest.clone(), actual }));
    }
    Ok(bytes)
}

/// An image layout directory.
struct LayoutDir {
    dir: PathBuf,
}

impl Source for LayoutDir {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn read_meta(&mut self, name: &str, max: u64) -> Result<Vec<u8>, ArchiveError> {
        let path = self.dir.join(name);
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ArchiveError::NotLayout { path: self.dir.clone(), reason: format!("no {name}") },
            _ => ArchiveError::Io { path: path.clone(), source: e },
        })?;
        let mut bytes = Vec::new();
        file.take(max + 1).read_to_end(&mut bytes).map_err(|e| ArchiveError::Io { path: path.clone(), source: e })?;
        if bytes.len() as u64 > max {
            return Err(ArchiveError::NotLayout { path: self.dir.clone(), reason: format!("{name} is larger than {max} bytes") });
        }
        Ok(bytes)
    }

    fn open_blob(&mut self, digest: &Digest) -> Result<Option<Box<dyn Read + '_>>, ArchiveError> {
        // The digest is strictly parsed: its hex is a plain file name.
        let path = self.dir.join("blobs/sha256").join(digest.hex());
        match File::open(&path) {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ArchiveError::Io { path, source: e }),
        }
    }
}

/// A tar of an image layout, read in place.
struct TarLayout {
    path: PathBuf,
    file: File,
    /// Layout-relative path → (offset of the data, size).
    entries: HashMap<String, (u64, u64)>,
}

impl TarLayout {
    fn open(path: &Path) -> Result<TarLayout, ArchiveError> {
        let io_err = |e| ArchiveError::Io { path: path.to_path_buf(), source: e };
        let file = File::open(path).map_err(io_err)?;
        let mut entries = HashMap::new();
        {
            let mut archive = tar::Archive::new(&file);
            for entry in archive.entries_with_seek().map_err(io_err)? {
                let entry = entry.map_err(|e| ArchiveError::NotLayout { path: path.into(), reason: format!("bad tar: {e}") })?;
                let name = entry.path().map_err(io_err)?.to_string_lossy().to_string();
                let name = name.trim_start_matches("./").to_string();
                if entry.header().entry_type().is_file() {
                    entries.insert(name, (entry.raw_file_position(), entry.size()));
                } else if !entry.header().entry_type().is_dir() {
                    // A link where a blob should be could point anywhere.
                    entries.remove(&name);
                }
            }
        }
        Ok(TarLayout { path: path.to_path_buf(), file, entries })
    }

    fn reader(&mut self, name: &str) -> Result<Option<impl Read + '_>, ArchiveError> {
        let Some(&(offset, size)) = self.entries.get(name) else { return Ok(None) };
        self.file.seek(SeekFrom::Start(offset)).map_err(|e| ArchiveError::Io { path: self.path.clone(), source: e })?;
        Ok(Some((&self.file).take(size)))
    }
}

impl Source for TarLayout {
    fn path(&self) -> &Path {
        &self.path
    }

    fn read_meta(&mut self, name: &str, max: u64) -> Result<Vec<u8>, ArchiveError> {
        let path = self.path.clone();
        let Some(r) = self.reader(name)? else {
            return Err(ArchiveError::NotLayout { path, reason: format!("no {name} in the archive") });
        };
        let mut bytes = Vec::new();
        r.take(max + 1).read_to_end(&mut bytes).map_err(|e| ArchiveError::Io { path: path.clone(), source: e })?;
        if bytes.len() as u64 > max {
            return Err(ArchiveError::NotLayout { path, reason: format!("{name} is larger than {max} bytes") });
        }
        Ok(bytes)
    }

    fn open_blob(&mut self, digest: &Digest) -> Result<Option<Box<dyn Read + '_>>, ArchiveError> {
        let name = format!("blobs/sha256/{}", digest.hex());
        Ok(self.reader(&name)?.map(|r| Box::new(r) as Box<dyn Read + '_>))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_for_imports() {
        let p = Path::new("/tmp/My Image.tar");
        assert_eq!(image_name(p, Some("v1"), None), "localhost/my-image:v1");
        assert_eq!(image_name(p, None, Some("2.0")), "localhost/my-image:2.0");
        assert_eq!(image_name(p, None, None), "localhost/my-image:latest");
        assert_eq!(image_name(p, None, Some("quay.io/a/b:3")), "quay.io/a/b:3");
        assert_eq!(image_name(Path::new("/"), None, Some("../x")), "localhost/image:latest");
    }
}
