//! The unpacked-layer cache: each layer unpacked once, into its own
//! directory, and shared by every bundle made from it.
//!
//! ```text
//! <store>/layers/<mapping-key>/<diff_id hex>/        a layer, overlay representation
//! <store>/layers/<mapping-key>/<diff_id hex>.lock    flock while it is unpacked or removed
//! <store>/layers/<mapping-key>/<diff_id hex>.use     shared flock per pod using it (a lease)
//! <store>/layers/<mapping-key>/.tmp-<hex>-<pid>-<n>/ an unpack in progress
//! ```
//!
//! The mapping key names the id mapping the files were written under (and
//! rootless vs rootful, and the ownership policy), so a layer unpacked
//! under one mapping is never reused under another: its owners, and its
//! setuid bits, would be wrong.
//!
//! A layer is unpacked into a temporary directory under the layer's lock
//! and renamed into place only when complete and its diff_id verified: a
//! layer directory that exists is complete. Layers are stored in overlay
//! form (whiteouts as `c 0 0`, opaque directories with
//! `user.overlay.opaque=y`), ready to be overlay lower dirs (mounted with
//! `userxattr`); [`LayerCache::flatten`] copies them into a self-contained
//! rootfs where overlay is not available. Nothing handed out ever lets a
//! container write into the cache: overlay writes go to a private upper
//! dir, and flattening copies (never hard-links) file contents.
//!
//! A pod holds a [`LayerLease`] (a shared flock on each layer's `.use`
//! file) from before its layers are unpacked until it ends; `gc` removes a
//! layer only with that flock taken exclusively, so a layer under a running
//! pod is never collected, and a pod killed with SIGKILL stops holding it.
//!
//! Ownership: with [`IdPolicy::Keep`], `ensure`, `flatten` and `gc` must run
//! inside the user namespace whose mapping the key describes (as its uid 0),
//! since the files belong to the mapped ids.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};

use crate::image::digest::Digest;
use crate::unpack::apply::{Applier, Meta};
use crate::unpack::name::Name;
use crate::unpack::sys;
use crate::unpack::{self, xattr, ErrorKind, IdPolicy, Limits, UnpackError, UnpackOptions, UnsupportedMediaType, WhiteoutMode};

/// A layer blob to unpack.
#[derive(Debug, Clone)]
pub struct LayerSource {
    /// The verified blob in the store.
    pub blob: PathBuf,
    pub media_type: String,
    /// The uncompressed digest from the image config; checked while
    /// unpacking, and the cache key.
    pub diff_id: Digest,
}

#[derive(Debug, thiserror::Error)]
pub enum LayersError {
    #[error("invalid layer cache key {0:?}")]
    BadKey(String),
    #[error("{op} {}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("layer {diff_id}")]
    MediaType { diff_id: Digest, source: UnsupportedMediaType },
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("overlay mount option path {0:?} contains a comma")]
    OverlayPath(PathBuf),
    #[error("a layer unpack thread panicked")]
    Panicked,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayersError + 'a {
    move |source| LayersError::Io { op, path: path.to_path_buf(), source }
}

pub use crate::userns::IdRange;

/// A short key for the cache directory naming an id mapping: the same
/// mapping and policy always give the same key, any difference another.
pub fn mapping_key(rootless: bool, uid_map: &[IdRange], gid_map: &[IdRange], ids: IdPolicy) -> String {
    let mut h = Sha256::new();
    let mut line = |tag: &str, m: &[IdRange]| {
        for r in m {
            h.update(format!("{tag} {} {} {}\n", r.container, r.host, r.count));
        }
    };
    line("uid", uid_map);
    line("gid", gid_map);
    h.update(format!("rootless={rootless}\nids={ids:?}\n"));
    let kind = if rootless { "rootless" } else { "root" };
    format!("{kind}-{}", &hex::encode(h.finalize())[..16])
}

/// The options for mounting a container's rootfs as overlayfs over cached
/// layer dirs (`lowers` bottom first, as [`LayerCache::ensure`] returns
/// them), with a private `upper` and `work`, in a user namespace.
pub fn overlay_mount_options(lowers: &[PathBuf], upper: &Path, work: &Path) -> Result<String, LayersError> {
    Ok(format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        lowerdir(lowers)?,
        escape_option(upper, false)?,
        escape_option(work, false)?
    ))
}

/// The options for a read-only overlay of cached layer dirs alone (bottom
/// first; overlayfs before 6.7 wants at least two without an upper dir).
pub fn overlay_lower_options(lowers: &[PathBuf]) -> Result<String, LayersError> {
    Ok(format!("lowerdir={},userxattr", lowerdir(lowers)?))
}

fn lowerdir(lowers: &[PathBuf]) -> Result<String, LayersError> {
    let lowers = lowers.iter().rev().map(|l| escape_option(l, true)).collect::<Result<Vec<_>, _>>()?;
    Ok(lowers.join(":"))
}

/// Mount data is split at commas with no escape; `:` and `\` in a
/// lowerdir are escaped with a backslash.
fn escape_option(p: &Path, lower: bool) -> Result<String, LayersError> {
    let s = p.to_string_lossy();
    if s.contains(',') || s.as_bytes() != p.as_os_str().as_bytes() {
        return Err(LayersError::OverlayPath(p.to_path_buf()));
    }
    Ok(if lower { s.replace('\\', "\\\\").replace(':', "\\:") } else { s.into_owned() })
}

/// The cache for one id mapping.
#[derive(Debug, Clone)]
pub struct LayerCache {
    dir: PathBuf,
    ids: IdPolicy,
    limits: Limits,
    jobs: usize,
}

static TMP_SEQ: AtomicUsize = AtomicUsize::new(0);

impl LayerCache {
    /// Opens (creating, mode 0700) `<store_root>/layers/<mapping_key>/`.
    /// `ids` is the ownership policy layers are unpacked with; it must
    /// match what the key was made from.
    pub fn open(store_root: &Path, mapping_key: &str, ids: IdPolicy) -> Result<LayerCache, LayersError> {
        let key_ok = !mapping_key.is_empty()
            && mapping_key.len() <= 64
            && mapping_key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !mapping_key.starts_with('.');
        if !key_ok {
            return Err(LayersError::BadKey(mapping_key.to_string()));
        }
        let dir = store_root.join("layers").join(mapping_key);
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io_err("creating", &dir))?;
        let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Ok(LayerCache { dir, ids, limits: Limits::default(), jobs })
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// At most this many layers unpack at once (default: the cores).
    pub fn with_jobs(mut self, jobs: usize) -> Self {
        self.jobs = jobs.max(1);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the layer with this diff_id lives (whether or not it is there).
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.dir.join(diff_id.hex())
    }

    /// Makes sure every layer is unpacked, unpacking the missing ones in
    /// parallel; returns their directories in the order given (bottom
    /// first). Safe against concurrent callers for the same layers.
    pub fn ensure(&self, layers: &[LayerSource]) -> Result<Vec<PathBuf>, LayersError> {
        let missing: Vec<&LayerSource> = {
            let mut seen = HashSet::new();
            layers.iter().filter(|l| !self.layer_dir(&l.diff_id).is_dir() && seen.insert(&l.diff_id)).collect()
        };
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let first_error: Mutex<Option<LayersError>> = Mutex::new(None);
        let workers = self.jobs.min(missing.len());
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| {
                        while !failed.load(Ordering::Relaxed) {
                            let Some(layer) = missing.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
                            if let Err(e) = self.ensure_one(layer) {
                                failed.store(true, Ordering::Relaxed);
                                first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                            }
                        }
                    })
                })
                .collect();
            for h in handles {
                if h.join().is_err() {
                    first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(LayersError::Panicked);
                }
            }
        });
        if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        Ok(layers.iter().map(|l| self.layer_dir(&l.diff_id)).collect())
    }

    fn lock(&self, hex: &str) -> Result<File, LayersError> {
        let path = self.dir.join(format!("{hex}.lock"));
        let f = File::options().create(true).truncate(false).write(true).open(&path).map_err(io_err("opening", &path))?;
        sys::flock_exclusive(f.as_fd(), true).map_err(io_err("locking", &path))?;
        Ok(f)
    }

    fn ensure_one(&self, layer: &LayerSource) -> Result<(), LayersError> {
        let hex = layer.diff_id.hex();
        let target = self.layer_dir(&layer.diff_id);
        let _lock = self.lock(hex)?;
        if target.is_dir() {
            return Ok(()); // another process did it while we waited
        }
        // Left by a process that died mid-unpack: we hold the lock now.
        self.remove_tmp(&format!(".tmp-{hex}-"))?;
        let tmp = self.dir.join(format!(".tmp-{hex}-{}-{}", std::process::id(), TMP_SEQ.fetch_add(1, Ordering::Relaxed)));
        fs::DirBuilder::new().mode(0o755).create(&tmp).map_err(io_err("creating", &tmp))?;
        let result = self.unpack_into(layer, &tmp);
        match result.and_then(|()| fs::rename(&tmp, &target).map_err(io_err("renaming into place", &target))) {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Err(rm) = remove_tree(&tmp) {
                    tracing::warn!("removing {}: {rm}", tmp.display());
                }
                Err(e)
            }
        }
    }

    fn unpack_into(&self, layer: &LayerSource, dest: &Path) -> Result<(), LayersError> {
        let started = std::time::Instant::now();
        let blob = File::open(&layer.blob).map_err(io_err("opening", &layer.blob))?;
        let reader = unpack::decompress(&layer.media_type, blob)
            .map_err(|source| LayersError::MediaType { diff_id: layer.diff_id.clone(), source })?;
        // Decompress on a second thread, ahead of the writes.
        let reader = unpack::read_ahead(reader);
        let mut opts = UnpackOptions::new(layer.diff_id.to_string(), WhiteoutMode::Overlay, self.ids);
        opts.diff_id = Some(layer.diff_id.clone());
        opts.limits = self.limits.clone();
        let stats = unpack::apply_layer(reader, dest, &opts)?;
        tracing::debug!(layer = %layer.diff_id, entries = stats.entries, bytes = stats.bytes, elapsed = ?started.elapsed(), "unpacked layer");
        Ok(())
    }

    fn remove_tmp(&self, prefix: &str) -> Result<(), LayersError> {
        for entry in fs::read_dir(&self.dir).map_err(io_err("listing", &self.dir))? {
            let entry = entry.map_err(io_err("listing", &self.dir))?;
            if entry.file_name().as_bytes().starts_with(prefix.as_bytes()) {
                remove_tree(&entry.path()).map_err(io_err("removing", &entry.path()))?;
            }
        }
        Ok(())
    }

    /// Holds the layers with these diff_ids (present or not yet unpacked)
    /// against [`LayerCache::gc`] until the lease is dropped. Waits while gc
    /// is removing one of them.
    pub fn lease(&self, diff_ids: &[Digest]) -> Result<LayerLease, LayersError> {
        let mut held = Vec::new();
        let mut seen = HashSet::new();
        for d in diff_ids.iter().filter(|d| seen.insert(*d)) {
            let path = self.dir.join(format!("{}.use", d.hex()));
            let f = File::options().create(true).truncate(false).write(true).open(&path).map_err(io_err("opening", &path))?;
            held.push(flock(f, nix::fcntl::FlockArg::LockShared).map_err(io_err("locking", &path))?);
        }
        Ok(LayerLease { held })
    }

    /// Removes every layer dir whose diff_id is not in `keep` and no pod
    /// holds, leftovers of interrupted unpacks, and job files of dead
    /// unpacking processes. Returns how many layers were removed.
    pub fn gc(&self, keep: &HashSet<Digest>) -> Result<usize, LayersError> {
        Ok(self.gc_counting(keep)?.removed)
    }

    /// [`LayerCache::gc`], also counting the layers kept for running pods.
    pub fn gc_counting(&self, keep: &HashSet<Digest>) -> Result<GcCount, LayersError> {
        let mut count = GcCount::default();
        for entry in fs::read_dir(&self.dir).map_err(io_err("listing", &self.dir))? {
            let entry = entry.map_err(io_err("listing", &self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(".job-") && name.ends_with(".json") {
                // Locked by the berth that wrote it for as long as it lives.
                if try_flock(&entry.path())?.is_some() {
                    fs::remove_file(entry.path()).or_else(ignore_missing).map_err(io_err("removing", &entry.path()))?;
                }
                continue;
            }
            if let Some(rest) = name.strip_prefix(".tmp-") {
                // `.tmp-<hex>-…`: stale only if nobody holds the layer's lock.
                let hex = rest.split('-').next().unwrap_or("");
                if Digest::from_hex(hex).is_some() && self.try_lock(hex)?.is_some() {
                    remove_tree(&entry.path()).map_err(io_err("removing", &entry.path()))?;
                }
                continue;
            }
            let Some(digest) = Digest::from_hex(name) else { continue };
            if keep.contains(&digest) {
                continue;
            }
            let _lock = self.lock(name)?;
            // Held until removed: a pod leasing it meanwhile waits, then
            // finds it gone and unpacks it again.
            let Some(_unused) = try_flock(&self.dir.join(format!("{name}.use")))? else {
                tracing::info!("layer {name} is in use by a running pod: kept");
                count.in_use += 1;
                continue;
            };
            // Out of sight first (atomically), then deleted.
            let doomed = self.dir.join(format!(".tmp-{name}-gc-{}", std::process::id()));
            match fs::rename(entry.path(), &doomed) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(LayersError::Io { op: "removing", path: entry.path(), source: e }),
            }
            remove_tree(&doomed).map_err(io_err("removing", &doomed))?;
            count.removed += 1;
        }
        Ok(count)
    }

    fn try_lock(&self, hex: &str) -> Result<Option<File>, LayersError> {
        try_flock(&self.dir.join(format!("{hex}.lock")))
    }

    /// Writes a self-contained rootfs into `dest` (an existing, empty
    /// directory) from cached layer dirs, bottom first: every layer is
    /// copied over the ones below with its whiteouts applied, with the same
    /// in-root safety as unpacking. File contents are copied, never
    /// hard-linked, so the rootfs can be modified without touching the cache.
    pub fn flatten(&self, dirs: &[PathBuf], dest: &Path) -> Result<(), LayersError> {
        let opts: Vec<UnpackOptions> = dirs
            .iter()
            .map(|d| {
                let mut o = UnpackOptions::new(d.display().to_string(), WhiteoutMode::Flatten, self.ids);
                o.limits = self.limits.clone();
                o
            })
            .collect();
        let mut lower: Option<Applier<'_>> = None;
        for (dir, opts) in dirs.iter().zip(&opts) {
            let fail = |entry: Option<&Name>, kind| UnpackError { layer: opts.layer.clone(), entry: entry.map(Name::display), kind };
            let mut ap = Applier::new(dest, opts).map_err(|k| fail(None, k))?;
            if let Some(mut l) = lower.take() {
                ap.inherit_dirs(&mut l);
            }
            let src = File::open(dir).map_err(io_err("opening", dir))?;
            let root = Name::clean(b"", &opts.limits).map_err(|k| fail(None, k))?;
            let mut inodes = HashMap::new();
            copy_tree(&mut ap, OwnedFd::from(src), &root, &mut inodes).map_err(|(n, k)| fail(Some(&n), k))?;
            lower = Some(ap);
        }
        if let Some(mut ap) = lower {
            ap.finish_dirs().map_err(|(e, kind)| UnpackError {
                layer: dest.display().to_string(),
                entry: Some(String::from_utf8_lossy(&e).into_owned()),
                kind,
            })?;
        }
        Ok(())
    }
}

/// Layers held for a pod: see [`LayerCache::lease`].
#[derive(Debug)]
pub struct LayerLease {
    held: Vec<nix::fcntl::Flock<File>>,
}

impl LayerLease {
    /// Holds nothing (a pod of ready bundles).
    pub fn none() -> LayerLease {
        LayerLease { held: Vec::new() }
    }

    /// One lease holding both.
    pub fn join(mut self, other: LayerLease) -> LayerLease {
        self.held.extend(other.held);
        self
    }
}

/// What [`LayerCache::gc_counting`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcCount {
    pub removed: usize,
    /// Unreferenced layers kept because a running pod holds them.
    pub in_use: usize,
}

/// Opens (creating) `path` and takes an exclusive flock without waiting:
/// `None` when someone holds it.
pub fn try_flock(path: &Path) -> Result<Option<File>, LayersError> {
    let f = File::options().create(true).truncate(false).write(true).open(path).map_err(io_err("opening", path))?;
    Ok(sys::flock_exclusive(f.as_fd(), false).map_err(io_err("locking", path))?.then_some(f))
}

/// A blocking flock, retried on EINTR.
fn flock(mut f: File, arg: nix::fcntl::FlockArg) -> io::Result<nix::fcntl::Flock<File>> {
    loop {
        match nix::fcntl::Flock::lock(f, arg) {
            Ok(l) => return Ok(l),
            Err((back, nix::errno::Errno::EINTR)) => f = back,
            Err((_, e)) => return Err(e.into()),
        }
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) }
}

/// [`LayerCache::flatten`] from layer dirs alone, for a caller that knows
/// the dirs and the cache's ownership policy but not the cache (the pod
/// process copying a container's rootfs where overlay is not allowed).
pub fn flatten_dirs(dirs: &[PathBuf], dest: &Path, ids: IdPolicy) -> Result<(), LayersError> {
    LayerCache { dir: PathBuf::new(), ids, limits: Limits::default(), jobs: 1 }.flatten(dirs, dest)
}

type CopyResult = Result<(), (Name, ErrorKind)>;

/// Applies the layer directory open as `src` (its subtree `rel`) through
/// `ap`, translating the overlay representation back into whiteouts.
fn copy_tree(ap: &mut Applier<'_>, src: OwnedFd, rel: &Name, inodes: &mut HashMap<(u64, u64), Name>) -> CopyResult {
    let io = |op: &'static str, n: &Name| {
        let n = n.clone();
        move |source| (n, ErrorKind::Io { op, source })
    };
    let dup = src.try_clone().map_err(io("duplicating a directory fd", rel))?;
    let mut names = sys::read_dir_names(dup).map_err(io("listing a layer directory", rel))?;
    names.sort();
    for child in names {
        let name = rel.join(child.to_bytes());
        let st = sys::lstatat(src.as_fd(), &child).map_err(io("inspecting", &name))?;
        let fmt = st.st_mode & libc::S_IFMT;
        let owner = match ap.opts.ids {
            IdPolicy::Keep { .. } => Some((st.st_uid, st.st_gid)),
            IdPolicy::Squash => None,
        };
        let mut meta = Meta { mode: st.st_mode & 0o7777, owner, mtime: (st.st_mtime, st.st_mtime_nsec as u32), xattrs: Vec::new() };
        let ap_err = |k| (name.clone(), k);
        match fmt {
            libc::S_IFCHR if st.st_rdev == 0 => ap.whiteout(rel, child.to_bytes()).map_err(ap_err)?,
            libc::S_IFDIR => {
                let fd = sys::open_dir(src.as_fd(), &child).map_err(io("opening", &name))?;
                let raw = xattr::flist(fd.as_fd()).map_err(io("reading xattrs", &name))?;
                let opaque = raw.iter().any(|(k, v)| k == unpack::whiteout::OPAQUE_XATTR && v == b"y");
                meta.xattrs = unescape(raw);
                ap.dir(&name, &meta).map_err(ap_err)?;
                if opaque {
                    ap.whiteout(&name, b".wh..opq").map_err(ap_err)?;
                }
                copy_tree(ap, fd, &name, inodes)?;
            }
            libc::S_IFREG => {
                let key = (st.st_dev, st.st_ino);
                if st.st_nlink > 1 {
                    if let Some(first) = inodes.get(&key) {
                        let first = first.as_bytes().to_vec();
                        ap.hardlink(&name, &first).map_err(ap_err)?;
                        continue;
                    }
                }
                let fd = sys::openat(src.as_fd(), &child, libc::O_RDONLY, 0).map_err(io("opening", &name))?;
                meta.xattrs = unescape(xattr::flist(fd.as_fd()).map_err(io("reading xattrs", &name))?);
                let mut file = File::from(fd);
                ap.file(&name, &mut file, &meta).map_err(ap_err)?;
                if st.st_nlink > 1 {
                    inodes.insert(key, name.clone());
                }
            }
            libc::S_IFLNK => {
                let target = sys::readlinkat(src.as_fd(), &child).map_err(io("reading a symlink", &name))?;
                ap.symlink(&name, &target, &meta).map_err(ap_err)?;
            }
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO => ap.node(&name, fmt, st.st_rdev, &meta).map_err(ap_err)?,
            _ => tracing::debug!(entry = %name.display(), "skipping a socket in a layer directory"),
        }
    }
    Ok(())
}

fn unescape(raw: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    raw.into_iter().filter_map(|(k, v)| xattr::unescape_overlay(&k).map(|k| (k, v))).collect()
}

/// `rm -rf` that copes with directories left without write permission
/// (an image's 0555 dirs, unpacked by an unprivileged user) and never
/// follows symlinks.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(first) => {
            if !make_writable(path)? {
                return Err(first);
            }
            fs::remove_dir_all(path)
        }
    }
}

/// Adds u+rwx to every directory under `path` (not following symlinks);
/// false if there were none to change.
fn make_writable(path: &Path) -> io::Result<bool> {
    let md = fs::symlink_metadata(path)?;
    if !md.is_dir() {
        return Ok(false);
    }
    let mut changed = false;
    let mode = md.permissions().mode();
    if mode & 0o700 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o700))?;
        changed = true;
    }
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            changed |= make_writable(&entry.path())?;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_keys_differ_by_mapping_and_mode() {
        let m = [IdRange { container: 0, host: 1000, count: 1 }, IdRange { container: 1, host: 100000, count: 65536 }];
        let keep = IdPolicy::Keep { max_uid: 65536, max_gid: 65536 };
        let a = mapping_key(true, &m, &m, keep);
        assert_eq!(a, mapping_key(true, &m, &m, keep));
        assert!(a.starts_with("rootless-") && a.len() == "rootless-".len() + 16);
        assert_ne!(a, mapping_key(false, &m, &m, keep));
        assert_ne!(a, mapping_key(true, &m[..1], &m, keep));
        assert_ne!(a, mapping_key(true, &m, &m, IdPolicy::Squash));
    }

    #[test]
    fn overlay_options() {
        let o = overlay_mount_options(&[PathBuf::from("/s/l1"), PathBuf::from("/s/a:b")], Path::new("/u"), Path::new("/w")).unwrap();
        assert_eq!(o, "lowerdir=/s/a\\:b:/s/l1,upperdir=/u,workdir=/w,userxattr");
        assert!(overlay_mount_options(&[PathBuf::from("/a,b")], Path::new("/u"), Path::new("/w")).is_err());
        let o = overlay_lower_options(&[PathBuf::from("/s/l1"), PathBuf::from("/s/a:b")]).unwrap();
        assert_eq!(o, "lowerdir=/s/a\\:b:/s/l1,userxattr");
    }

    #[test]
    fn bad_keys_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        for key in ["", "../x", "a/b", ".hidden", &"k".repeat(65)] {
            assert!(LayerCache::open(tmp.path(), key, IdPolicy::Squash).is_err(), "{key}");
        }
    }
}
