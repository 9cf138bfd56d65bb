//! Apply one OCI image layer (a tar stream) to a directory, safely.
//!
//! The `tar` crate is used to *read* entries only; every write is done here
//! through a handle on the destination that resolves paths with
//! `openat2(RESOLVE_IN_ROOT)` semantics (the `pathrs` crate), and the last
//! component of every path is operated on with `*at` calls that never follow
//! it. A hostile layer is either applied with in-root semantics or refused
//! with an error naming the layer and the entry; it never writes or deletes
//! outside the destination. See `shared/notes/image-unpack-security.md`.
//!
//! Submodules, one job each:
//! - [`decompress`]: media type → decoder;
//! - `stream`: hashes the uncompressed stream (diff_id) and enforces byte limits;
//! - `name`: cleans entry names and checks path limits;
//! - `apply`: creates inodes in-root (files, dirs, links, nodes) and sets metadata;
//! - `whiteout`: `.wh.` entries in the two modes (flatten, overlay);
//! - `xattr`: which extended attributes are written, and how;
//! - `ids`: the ownership policy;
//! - [`cache`]: the unpacked-layer cache (one directory per layer and id
//!   mapping), parallel unpack, flattening for standalone bundles.

pub(crate) mod apply;
pub mod cache;
pub mod decompress;
mod ids;
pub(crate) mod name;
mod stream;
pub(crate) mod sys;
pub(crate) mod whiteout;
pub(crate) mod xattr;

use std::io::Read;
use std::path::Path;

use crate::image::digest::Digest;

pub use decompress::{decompress, read_ahead, UnsupportedMediaType};
pub use ids::IdPolicy;
pub use xattr::OVERLAY_XATTR_PREFIX;

/// What to do with whiteout entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// Delete the whited-out paths of lower layers in the destination: for
    /// applying layers one on top of another into a self-contained rootfs.
    Flatten,
    /// Record them in the layer directory the way overlayfs understands them
    /// when mounted with `userxattr`: a `c 0 0` device node for a deleted path,
    /// `user.overlay.opaque=y` on an opaque directory. For a layer unpacked
    /// into its own empty directory, used as an overlay lower dir.
    Overlay,
}

/// Resource limits against tar bombs. Exceeding one is an error naming the
/// layer and the entry.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most bytes of extension headers (PAX, GNU long name and long link,
    /// together) before one entry.
    pub max_header_bytes: u64,
    /// Longest entry name (after cleaning), in bytes.
    pub max_path_bytes: usize,
    /// Most components in an entry name.
    pub max_depth: usize,
    /// Most entries in one layer.
    pub max_entries: u64,
    /// Most uncompressed bytes in one layer (the whole tar stream).
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 1 << 20,
            max_path_bytes: 4096,
            max_depth: 256,
            max_entries: 1_000_000,
            max_bytes: 64 << 30,
        }
    }
}

/// How to apply a layer.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Names the layer in errors and logs (e.g. its diff_id).
    pub layer: String,
    /// The expected digest of the uncompressed stream; checked at the end.
    pub diff_id: Option<Digest>,
    pub whiteouts: WhiteoutMode,
    pub ids: IdPolicy,
    pub limits: Limits,
    /// Clear setuid/setgid bits on every file.
    pub strip_setid: bool,
}

impl UnpackOptions {
    pub fn new(layer: impl Into<String>, whiteouts: WhiteoutMode, ids: IdPolicy) -> Self {
        UnpackOptions {
            layer: layer.into(),
            diff_id: None,
            whiteouts,
            ids,
            limits: Limits::default(),
            strip_setid: false,
        }
    }
}

/// What was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerStats {
    /// sha256 of the whole uncompressed stream.
    pub diff_id: Digest,
    /// Tar entries read (extension headers not counted).
    pub entries: u64,
    /// Uncompressed bytes read.
    pub bytes: u64,
}

/// A failure to apply a layer: which layer, which entry (when one is to
/// blame), and why.
#[derive(Debug)]
pub struct UnpackError {
    pub layer: String,
    pub entry: Option<String>,
    pub kind: ErrorKind,
}

impl std::fmt::Display for UnpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "layer {}", self.layer)?;
        if let Some(e) = &self.entry {
            write!(f, ", entry {e:?}")?;
        }
        write!(f, ": {}", self.kind)
    }
}

impl std::error::Error for UnpackError {
    /// The kind is part of this message; its cause (an OS error) comes next.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("reading the layer: {0}")]
    Read(std::io::Error),
    #[error("opening the destination {path}")]
    Destination { path: String, source: pathrs::error::Error },
    #[error("entry name {0}")]
    BadName(&'static str),
    #[error("entry name is {len} bytes, more than the limit of {max}")]
    PathTooLong { len: usize, max: usize },
    #[error("entry name has {depth} components, more than the limit of {max}")]
    PathTooDeep { depth: usize, max: usize },
    #[error("more than {max} entries")]
    TooManyEntries { max: u64 },
    #[error("more than {max} uncompressed bytes")]
    TooManyBytes { max: u64 },
    #[error("an extended header (PAX or GNU long name) is larger than {max} bytes")]
    HeaderTooLarge { max: u64 },
    #[error("a {0} cannot replace the root directory")]
    RootReplaced(&'static str),
    #[error("invalid whiteout: {0}")]
    BadWhiteout(&'static str),
    #[error("hard link target {target:?} is not a file of this layer")]
    LinkTarget { target: String },
    #[error("hard link target name {0}")]
    BadLinkName(&'static str),
    #[error("symlink without a target")]
    EmptySymlink,
    #[error("{what} {id} is outside the mapped range 0-{max}; the image needs at least {need} ids (or squash ids)", need = *id as u64 + 1)]
    IdOutOfRange { what: &'static str, id: u32, max: u32 },
    #[error("invalid device numbers")]
    BadDevice,
    #[error("{op}")]
    Io { op: &'static str, source: std::io::Error },
    #[error("{op}")]
    Resolve { op: &'static str, source: pathrs::error::Error },
    #[error("uncompressed digest {actual} does not match the diff_id {expected}")]
    DiffIdMismatch { expected: Digest, actual: Digest },
}

/// Reads the tar stream `reader` (already decompressed) and applies it to
/// the directory `dest`, which must exist.
pub fn apply_layer(reader: impl Read, dest: &Path, opts: &UnpackOptions) -> Result<LayerStats, UnpackError> {
    apply::apply_layer(reader, dest, opts)
}
