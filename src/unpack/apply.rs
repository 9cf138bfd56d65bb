//! The apply loop: tar entries in, inodes created in-root.
//!
//! Every entry's *parent* is resolved inside the destination with
//! `RESOLVE_IN_ROOT` (pathrs), so `..` and symlinks in the path — absolute
//! or relative — can never leave it. The last component is then created
//! with an `*at` call on that directory fd that never follows it
//! (`O_CREAT|O_EXCL|O_NOFOLLOW`, `mkdirat`, `symlinkat`, `linkat` without
//! `AT_SYMLINK_FOLLOW`), so an existing symlink there is replaced, never
//! written through. An existing non-directory is replaced by a fresh inode;
//! directories merge. Owner before mode (chown clears setuid), directory
//! modes and mtimes last (children would change the mtime; a read-only
//! directory would stop the children).

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use pathrs::Root;
use tar::EntryType;

use super::name::Name;
use super::stream::{Budget, HashingReader, Tripped};
use super::sys::{self, errno};
use super::whiteout;
use super::xattr::{self, Plan};
use super::{ErrorKind, LayerStats, UnpackError, UnpackOptions, WhiteoutMode};

const COPY_BUF: usize = 256 * 1024;

/// Mode and mtime of a directory, applied after everything else.
#[derive(Debug, Clone, Copy)]
struct DirMeta {
    mode: u32,
    mtime: (i64, u32),
}

/// What an entry carries besides its data.
pub(crate) struct Meta {
    pub mode: u32,
    pub owner: Option<(u32, u32)>,
    pub mtime: (i64, u32),
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Writes one layer's worth of entries into a destination, in-root. Driven
/// by a tar stream here, and by a walk of a cached layer directory when
/// flattening (`crate::unpack::cache`).
pub(crate) struct Applier<'a> {
    pub root: Root,
    root_fd: Rc<OwnedFd>,
    pub opts: &'a UnpackOptions,
    /// Names this layer wrote, and whether each is a directory. Whiteouts
    /// never touch these (they apply to lower layers only), and hard links
    /// may only point at them.
    pub written: HashMap<Vec<u8>, bool>,
    /// Proper ancestors of written names.
    pub ancestors: HashSet<Vec<u8>>,
    /// Overlay mode: names where this layer put a whiteout node.
    pub whited: HashSet<Vec<u8>>,
    dirs: HashMap<Vec<u8>, DirMeta>,
    /// The parent of the previous entry; consecutive entries usually share it.
    parent_cache: Option<(Name, Rc<OwnedFd>)>,
    xattr_warned: bool,
    buf: Vec<u8>,
    pub data_bytes: u64,
}

fn cstr(bytes: &[u8]) -> Result<CString, ErrorKind> {
    CString::new(bytes).map_err(|_| ErrorKind::BadName("contains a NUL byte"))
}

fn io(op: &'static str) -> impl Fn(io::Error) -> ErrorKind {
    move |source| ErrorKind::Io { op, source }
}

fn resolve_err(op: &'static str) -> impl Fn(pathrs::error::Error) -> ErrorKind {
    move |source| ErrorKind::Resolve { op, source }
}

pub(super) fn pathrs_errno(e: &pathrs::error::Error) -> Option<i32> {
    match e.kind() {
        pathrs::error::ErrorKind::OsError(n) => n,
        _ => None,
    }
}

pub(super) fn apply_layer(reader: impl Read, dest: &Path, opts: &UnpackOptions) -> Result<LayerStats, UnpackError> {
    let fail = |entry: Option<&[u8]>, kind| UnpackError {
        layer: opts.layer.clone(),
        entry: entry.map(|e| String::from_utf8_lossy(e).into_owned()),
        kind,
    };
    let mut ap = Applier::new(dest, opts).map_err(|k| fail(None, k))?;
    let budget = Rc::new(Budget::default());
    let mut reader = HashingReader::new(reader, opts.limits.max_bytes, budget.clone());

    let mut entries = 0u64;
    let result = {
        let mut archive = tar::Archive::new(&mut reader);
        ap.run(&mut archive, &budget, &mut entries)
    };
    // A limit trips as an I/O error somewhere inside the tar reader; name it.
    let tripped = |kind: ErrorKind| match budget.tripped() {
        Some(Tripped::Bytes) => ErrorKind::TooManyBytes { max: opts.limits.max_bytes },
        Some(Tripped::Header) => ErrorKind::HeaderTooLarge { max: opts.limits.max_header_bytes },
        None => kind,
    };
    if let Err((entry, kind)) = result {
        return Err(fail(entry.as_deref(), tripped(kind)));
    }
    ap.finish_dirs().map_err(|(e, k)| fail(Some(&e), k))?;
    let (diff_id, bytes) = reader.finish().map_err(|e| fail(None, tripped(ErrorKind::Read(e))))?;
    if let Some(expected) = &opts.diff_id {
        if *expected != diff_id {
            return Err(fail(None, ErrorKind::DiffIdMismatch { expected: expected.clone(), actual: diff_id }));
        }
    }
    Ok(LayerStats { diff_id, entries, bytes })
}

impl<'a> Applier<'a> {
    pub fn new(dest: &Path, opts: &'a UnpackOptions) -> Result<Self, ErrorKind> {
        let root = Root::open(dest).map_err(|source| ErrorKind::Destination { path: dest.display().to_string(), source })?;
        let root_fd = root.as_fd().try_clone_to_owned().map_err(io("duplicating the root fd"))?;
        Ok(Applier {
            root,
            root_fd: Rc::new(root_fd),
            opts,
            written: HashMap::new(),
            ancestors: HashSet::new(),
            whited: HashSet::new(),
            dirs: HashMap::new(),
            parent_cache: None,
            xattr_warned: false,
            buf: vec![0; COPY_BUF],
            data_bytes: 0,
        })
    }

    fn run<R: Read>(
        &mut self,
        archive: &mut tar::Archive<R>,
        budget: &Budget,
        count: &mut u64,
    ) -> Result<(), (Option<Vec<u8>>, ErrorKind)> {
        let limits = &self.opts.limits;
        // The extension headers of one entry, plus the tar headers and
        // padding around them.
        let header_budget = limits.max_header_bytes.saturating_add(16 * 512);
        let mut entries = archive.entries().map_err(|e| (None, ErrorKind::Read(e)))?;
        loop {
            budget.start_headers(header_budget);
            let next = entries.next();
            budget.end_headers();
            let mut entry = match next {
                None => return Ok(()),
                Some(Ok(entry)) => entry,
                Some(Err(e)) => return Err((None, ErrorKind::Read(e))),
            };
            let raw_name = entry.path_bytes().into_owned();
            *count += 1;
            if *count > limits.max_entries {
                return Err((Some(raw_name), ErrorKind::TooManyEntries { max: limits.max_entries }));
            }
            self.apply(&mut entry).map_err(|k| (Some(raw_name.clone()), k))?;
            // Whatever the entry carried that was not used (data of a
            // symlink, say) is read here, under the byte limit, not skipped
            // by the tar reader under the header budget.
            io::copy(&mut entry, &mut io::sink()).map_err(|e| (Some(raw_name), ErrorKind::Read(e)))?;
        }
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ErrorKind> {
        let name = Name::clean(&entry.path_bytes(), &self.opts.limits)?;
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink) {
            return Ok(());
        }
        if name.is_root() {
            // Never act on the root itself: its metadata belongs to the
            // caller, and nothing may replace it.
            return match kind {
                EntryType::Directory => Ok(()),
                EntryType::Symlink => Err(ErrorKind::RootReplaced("symlink")),
                EntryType::Link => Err(ErrorKind::RootReplaced("hard link")),
                _ => Err(ErrorKind::RootReplaced("non-directory")),
            };
        }
        let (parent, base) = name.split();
        if let Some(target) = base.strip_prefix(b".wh.") {
            return whiteout::apply(self, &parent, target);
        }
        let meta = self.meta(entry)?;
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => self.file(&name, entry, &meta),
            EntryType::Directory => self.dir(&name, &meta),
            EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or(ErrorKind::EmptySymlink)?;
                self.symlink(&name, &target, &meta)
            }
            EntryType::Link => {
                let target = entry.link_name_bytes().ok_or(ErrorKind::BadLinkName("is missing"))?;
                self.hardlink(&name, &target)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let header = entry.header();
                let (fmt, dev) = match kind {
                    EntryType::Fifo => (libc::S_IFIFO, 0),
                    _ => {
                        let major = header.device_major().ok().flatten().ok_or(ErrorKind::BadDevice)?;
                        let minor = header.device_minor().ok().flatten().ok_or(ErrorKind::BadDevice)?;
                        let fmt = if kind == EntryType::Char { libc::S_IFCHR } else { libc::S_IFBLK };
                        (fmt, libc::makedev(major, minor))
                    }
                };
                self.node(&name, fmt, dev, &meta)
            }
            other => {
                tracing::warn!(layer = %self.opts.layer, entry = %name.display(), "skipping tar entry of unsupported type {other:?}");
                Ok(())
            }
        }
    }

    /// Applies the whiteout `PARENT/.wh.TARGET`.
    pub fn whiteout(&mut self, parent: &Name, target: &[u8]) -> Result<(), ErrorKind> {
        whiteout::apply(self, parent, target)
    }

    pub fn mark_written(&mut self, name: &Name, is_dir: bool) {
        for a in name.ancestors() {
            if !self.ancestors.insert(a.to_vec()) {
                break;
            }
        }
        self.written.insert(name.as_bytes().to_vec(), is_dir);
        self.whited.remove(name.as_bytes());
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> Result<Meta, ErrorKind> {
        let header = entry.header();
        let mut mode = header.mode().map_err(ErrorKind::Read)? & 0o7777;
        if self.opts.strip_setid && header.entry_type() != EntryType::Directory {
            mode &= !(libc::S_ISUID | libc::S_ISGID);
        }
        let uid = header.uid().map_err(ErrorKind::Read)?;
        let gid = header.gid().map_err(ErrorKind::Read)?;
        let owner = self.opts.ids.owner(uid, gid)?;
        let mut mtime = (i64::try_from(header.mtime().map_err(ErrorKind::Read)?).unwrap_or(i64::MAX), 0);
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(ErrorKind::Read)? {
            for ext in pax {
                let ext = ext.map_err(ErrorKind::Read)?;
                let Ok(key) = ext.key() else { continue };
                if let Some(name) = xattr::from_pax_key(key) {
                    xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                } else if key == "mtime" {
                    if let Some(t) = ext.value().ok().and_then(parse_pax_time) {
                        mtime = t;
                    }
                }
            }
        }
        Ok(Meta { mode, owner, mtime, xattrs })
    }

    /// The directory that will hold `name`, resolved in-root; missing
    /// directories on the way are created (0755, the caller's owner, mtime
    /// 0) so the result never depends on the umask.
    pub fn parent_fd(&mut self, name: &Name) -> Result<Rc<OwnedFd>, ErrorKind> {
        let (parent, _) = name.split();
        self.dir_fd(&parent)
    }

    /// `dir` resolved in-root (following symlinks inside the root), created
    /// if missing.
    pub fn dir_fd(&mut self, dir: &Name) -> Result<Rc<OwnedFd>, ErrorKind> {
        if dir.is_root() {
            return Ok(self.root_fd.clone());
        }
        if let Some((cached, fd)) = &self.parent_cache {
            if cached == dir {
                return Ok(fd.clone());
            }
        }
        let fd = match self.root.resolve(dir.as_path()) {
            Ok(handle) => OwnedFd::from(handle),
            Err(e) if pathrs_errno(&e) == Some(libc::ENOENT) => self.create_dirs(dir)?,
            Err(e) => return Err(ErrorKind::Resolve { op: "resolving the parent directory", source: e }),
        };
        let fd = Rc::new(fd);
        self.parent_cache = Some((dir.clone(), fd.clone()));
        Ok(fd)
    }

    fn create_dirs(&mut self, dir: &Name) -> Result<OwnedFd, ErrorKind> {
        let mut cur: OwnedFd = (*self.root_fd).try_clone().map_err(io("duplicating the root fd"))?;
        let mut prefix = Name::clean(b"", &self.opts.limits)?;
        for comp in dir.as_bytes().split(|&b| b == b'/') {
            prefix = prefix.join(comp);
            match sys::mkdirat(cur.as_fd(), &cstr(comp)?, 0o755) {
                Ok(()) => {
                    self.dirs.entry(prefix.as_bytes().to_vec()).or_insert(DirMeta { mode: 0o755, mtime: (0, 0) });
                }
                Err(e) if errno(&e) == libc::EEXIST => {}
                Err(e) => return Err(ErrorKind::Io { op: "creating a missing parent directory", source: e }),
            }
            cur = OwnedFd::from(self.root.resolve(prefix.as_path()).map_err(resolve_err("resolving the parent directory"))?);
        }
        Ok(cur)
    }

    /// Gives `dir` the metadata of a directory the layer implies but does
    /// not describe (0755, mtime 0), unless it has an entry of its own.
    pub fn implied_dir(&mut self, dir: &Name) {
        if self.written.get(dir.as_bytes()) != Some(&true) {
            self.dirs.insert(dir.as_bytes().to_vec(), DirMeta { mode: 0o755, mtime: (0, 0) });
        }
    }

    /// `dir` resolved in-root if it exists, as a directory.
    pub fn existing_dir_fd(&self, dir: &Name) -> Result<Option<Rc<OwnedFd>>, ErrorKind> {
        if dir.is_root() {
            return Ok(Some(self.root_fd.clone()));
        }
        match self.root.resolve(dir.as_path()) {
            Ok(h) => Ok(Some(Rc::new(OwnedFd::from(h)))),
            Err(e) if matches!(pathrs_errno(&e), Some(libc::ENOENT | libc::ENOTDIR)) => Ok(None),
            Err(source) => Err(ErrorKind::Resolve { op: "resolving a directory", source }),
        }
    }

    pub fn forget_parents(&mut self) {
        self.parent_cache = None;
    }

    /// Removes whatever is at `name` (in `dir`), without following it.
    pub fn remove(&mut self, dir: BorrowedFd<'_>, base: &CStr, name: &Name) -> Result<(), ErrorKind> {
        match sys::unlinkat(dir, base, 0) {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == libc::ENOENT => Ok(()),
            Err(e) if errno(&e) == libc::EISDIR => {
                self.forget_parents();
                self.root.remove_all(name.as_path()).map_err(resolve_err("removing a directory"))
            }
            Err(e) => Err(ErrorKind::Io { op: "removing an existing entry", source: e }),
        }
    }

    /// Runs `create`; if the name is taken, removes what is there and
    /// retries once, so the result is always a fresh inode.
    fn replace<T>(
        &mut self,
        dir: BorrowedFd<'_>,
        base: &CStr,
        name: &Name,
        op: &'static str,
        mut create: impl FnMut() -> io::Result<T>,
    ) -> Result<T, ErrorKind> {
        match create() {
            Err(e) if errno(&e) == libc::EEXIST => {
                self.remove(dir, base, name)?;
                create().map_err(io(op))
            }
            other => other.map_err(io(op)),
        }
    }

    /// A regular file with the contents of `data`.
    pub fn file(&mut self, name: &Name, data: &mut impl Read, meta: &Meta) -> Result<(), ErrorKind> {
        let dir = self.parent_fd(name)?;
        let base = cstr(name.split().1)?;
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        let fd = self.replace(dir.as_fd(), &base, name, "creating a file", || sys::openat(dir.as_fd(), &base, flags, 0o600))?;
        let mut file = std::fs::File::from(fd);
        let max = self.opts.limits.max_bytes;
        loop {
            let n = match data.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ErrorKind::Read(e)),
            };
            // Sparse files expand: count what is written, not what is read.
            self.data_bytes += n as u64;
            if self.data_bytes > max {
                return Err(ErrorKind::TooManyBytes { max });
            }
            file.write_all(&self.buf[..n]).map_err(io("writing a file"))?;
        }
        let fd = file.as_fd();
        self.own(fd, meta)?;
        sys::fchmod(fd, meta.mode).map_err(io("setting a file mode"))?;
        self.xattrs(fd, name, meta, true);
        sys::futimens(fd, meta.mtime).map_err(io("setting a file mtime"))?;
        self.mark_written(name, false);
        Ok(())
    }

    pub fn dir(&mut self, name: &Name, meta: &Meta) -> Result<(), ErrorKind> {
        let dir = self.parent_fd(name)?;
        let base = cstr(name.split().1)?;
        let mut replaced_whiteout = false;
        match sys::mkdirat(dir.as_fd(), &base, 0o700) {
            Ok(()) => {}
            Err(e) if errno(&e) == libc::EEXIST => {
                let st = sys::lstatat(dir.as_fd(), &base).map_err(io("inspecting an existing entry"))?;
                if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                    replaced_whiteout = self.whited.contains(name.as_bytes());
                    self.remove(dir.as_fd(), &base, name)?;
                    sys::mkdirat(dir.as_fd(), &base, 0o700).map_err(io("creating a directory"))?;
                }
            }
            Err(e) => return Err(ErrorKind::Io { op: "creating a directory", source: e }),
        }
        let fd = sys::open_dir(dir.as_fd(), &base).map_err(io("opening a directory"))?;
        self.own(fd.as_fd(), meta)?;
        self.xattrs(fd.as_fd(), name, meta, true);
        if replaced_whiteout && self.opts.whiteouts == WhiteoutMode::Overlay {
            // This layer deleted the lower path, then made a directory
            // there: overlay must not merge the lower one back in.
            whiteout::mark_opaque(fd.as_fd())?;
        }
        self.dirs.insert(name.as_bytes().to_vec(), DirMeta { mode: meta.mode, mtime: meta.mtime });
        self.mark_written(name, true);
        Ok(())
    }

    pub fn symlink(&mut self, name: &Name, target: &[u8], meta: &Meta) -> Result<(), ErrorKind> {
        if target.is_empty() {
            return Err(ErrorKind::EmptySymlink);
        }
        // The target is data, stored verbatim; it is resolved in-root (or
        // by the container) only when used.
        let target = CString::new(target).map_err(|_| ErrorKind::BadLinkName("contains a NUL byte"))?;
        let dir = self.parent_fd(name)?;
        let base = cstr(name.split().1)?;
        self.replace(dir.as_fd(), &base, name, "creating a symlink", || sys::symlinkat(&target, dir.as_fd(), &base))?;
        if let Some((uid, gid)) = meta.owner {
            sys::lchownat(dir.as_fd(), &base, uid, gid).map_err(io("setting a symlink owner"))?;
        }
        sys::lutimesat(dir.as_fd(), &base, meta.mtime).map_err(io("setting a symlink mtime"))?;
        self.mark_written(name, false);
        Ok(())
    }

    /// A hard link to `raw_target`, a file this layer wrote.
    pub fn hardlink(&mut self, name: &Name, raw_target: &[u8]) -> Result<(), ErrorKind> {
        let target = Name::clean(raw_target, &self.opts.limits).map_err(|k| match k {
            ErrorKind::BadName(why) => ErrorKind::BadLinkName(why),
            other => other,
        })?;
        // Only files this layer wrote: never a lower layer's (overlay could
        // not represent it), never a whited-out one, never a directory, and
        // never anything outside.
        if target.is_root() || self.written.get(target.as_bytes()) != Some(&false) {
            return Err(ErrorKind::LinkTarget { target: target.display() });
        }
        if target == *name {
            return Ok(());
        }
        let tdir = self.parent_fd(&target)?;
        let tbase = cstr(target.split().1)?;
        let dir = self.parent_fd(name)?;
        let base = cstr(name.split().1)?;
        self.replace(dir.as_fd(), &base, name, "creating a hard link", || {
            sys::linkat(tdir.as_fd(), &tbase, dir.as_fd(), &base)
        })?;
        self.mark_written(name, false);
        Ok(())
    }

    /// A device node or fifo (`fmt` is `S_IFCHR`, `S_IFBLK` or `S_IFIFO`).
    /// Skipped, with a debug line, where creating it is not permitted
    /// (rootless).
    pub fn node(&mut self, name: &Name, fmt: libc::mode_t, dev: libc::dev_t, meta: &Meta) -> Result<(), ErrorKind> {
        let dir = self.parent_fd(name)?;
        let base = cstr(name.split().1)?;
        let made = self.replace(dir.as_fd(), &base, name, "creating a device node or fifo", || {
            match sys::mknodat(dir.as_fd(), &base, fmt | 0o600, dev) {
                Err(e) if errno(&e) == libc::EPERM => Ok(false),
                other => other.map(|()| true),
            }
        })?;
        if !made {
            tracing::debug!(layer = %self.opts.layer, entry = %name.display(), "skipping device node: not permitted here");
            return Ok(());
        }
        if let Some((uid, gid)) = meta.owner {
            sys::lchownat(dir.as_fd(), &base, uid, gid).map_err(io("setting a node owner"))?;
        }
        sys::chmodat(dir.as_fd(), &base, meta.mode).map_err(io("setting a node mode"))?;
        sys::lutimesat(dir.as_fd(), &base, meta.mtime).map_err(io("setting a node mtime"))?;
        self.mark_written(name, false);
        Ok(())
    }

    fn own(&self, fd: BorrowedFd<'_>, meta: &Meta) -> Result<(), ErrorKind> {
        match meta.owner {
            Some((uid, gid)) => sys::fchown(fd, uid, gid).map_err(io("setting an owner")),
            None => Ok(()),
        }
    }

    fn xattrs(&mut self, fd: BorrowedFd<'_>, name: &Name, meta: &Meta, regular_or_dir: bool) {
        let overlay = self.opts.whiteouts == WhiteoutMode::Overlay;
        for (key, value) in &meta.xattrs {
            match xattr::plan(key, value, overlay, regular_or_dir) {
                Plan::Skip(why) => {
                    tracing::debug!(layer = %self.opts.layer, entry = %name.display(), xattr = %key, "skipping xattr: {why}")
                }
                Plan::Write(key, value) => {
                    if let Err(e) = xattr::fset(fd, &key, &value) {
                        if !self.xattr_warned {
                            self.xattr_warned = true;
                            tracing::warn!(
                                layer = %self.opts.layer,
                                "skipping extended attributes that cannot be written here (first: {key} on {}: {e})",
                                name.display()
                            );
                        } else {
                            tracing::debug!(layer = %self.opts.layer, entry = %name.display(), xattr = %key, "skipping xattr: {e}");
                        }
                    }
                }
            }
        }
    }

    /// Takes over the directories whose mode and mtime `lower` has not
    /// applied yet, so a stack of layers sets them once, at the very end (a
    /// lower layer's read-only directory must not stop an upper layer).
    pub fn inherit_dirs(&mut self, lower: &mut Applier<'_>) {
        let mut dirs = std::mem::take(&mut lower.dirs);
        dirs.extend(self.dirs.drain());
        self.dirs = dirs;
    }

    /// Directory modes and mtimes, deepest first.
    pub fn finish_dirs(&mut self) -> Result<(), (Vec<u8>, ErrorKind)> {
        let mut dirs: Vec<_> = std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by(|a, b| b.0.cmp(&a.0));
        for (raw, meta) in dirs {
            let fail = |k| (raw.clone(), k);
            let name = Name::clean(&raw, &self.opts.limits).map_err(fail)?;
            let (parent, base) = name.split();
            let Some(pfd) = self.existing_dir_fd(&parent).map_err(fail)? else {
                continue; // removed by a later entry
            };
            let base = cstr(base).map_err(fail)?;
            let fd = match sys::open_dir(pfd.as_fd(), &base) {
                Ok(fd) => fd,
                Err(e) if matches!(errno(&e), libc::ENOENT | libc::ENOTDIR | libc::ELOOP) => continue,
                Err(e) => return Err(fail(ErrorKind::Io { op: "opening a directory", source: e })),
            };
            sys::fchmod(fd.as_fd(), meta.mode).map_err(|e| fail(ErrorKind::Io { op: "setting a directory mode", source: e }))?;
            sys::futimens(fd.as_fd(), meta.mtime).map_err(|e| fail(ErrorKind::Io { op: "setting a directory mtime", source: e }))?;
        }
        Ok(())
    }
}

/// A PAX time, `SECONDS[.FRACTION]`.
fn parse_pax_time(s: &str) -> Option<(i64, u32)> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanos = if digits.is_empty() { 0 } else { format!("{digits:0<9}").parse().ok()? };
    Some((secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::parse_pax_time;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time("1700000000.5"), Some((1700000000, 500_000_000)));
        assert_eq!(parse_pax_time("12"), Some((12, 0)));
        assert_eq!(parse_pax_time("x"), None);
    }
}
