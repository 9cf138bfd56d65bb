//! The guest's initramfs: berth itself as `/init`, the dynamic loader and
//! the shared libraries berth runs with, the guest kernel's modules and a
//! few files of `/etc`. Generated without root (a cpio archive needs no
//! owners on disk: every entry is 0:0) and cached under
//! `ROOT/vm/initramfs`, named by a hash of what went in.
//!
//! Libraries are found the way they are actually used: the loader is the
//! binary's PT_INTERP and the libraries are what this process has mapped
//! (`/proc/self/maps`), so the guest gets exactly what runs here. Each sits
//! at its host path, with the host's symlinks on the way (Debian's `/lib ->
//! usr/lib`) and the SONAME links, so that the loader finds them through its
//! built-in search path; the guest has no `ld.so.cache`.
//!
//! The archive is uncompressed: the kernel unpacks it faster than it would
//! inflate it, and QEMU reads it once per boot from the page cache.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{BufWriter, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::kernel::{self, elf, GuestKernel, KernelError, GUEST_MODULES};
use crate::paths::Paths;

/// Bumped whenever what goes into an archive changes shape, so that an
/// older berth's archive is never taken for the new one.
const FORMAT: u32 = 1;

/// The guest's list of modules to load, in order, one absolute path a line.
pub const MODULES_LIST: &str = "/etc/berth/modules";

/// Archives and stripped binaries unused for this long are removed when a
/// new archive is made (each build of berth makes a new one).
const KEEP_UNUSED: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Elf(#[from] elf::ElfError),
    #[error("objcopy --strip-debug of berth failed: {0}")]
    Strip(String),
    #[error("guest path /{path}: {why}")]
    Layout { path: String, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InitramfsError + '_ {
    move |source| InitramfsError::Io { path: path.to_path_buf(), source }
}

/// Where archives are cached.
pub fn cache_dir(paths: &Paths) -> PathBuf {
    paths.root.join("vm/initramfs")
}

/// The initramfs for this berth and `kernel`: from the cache, or made now.
/// Safe against concurrent builds (each writes a temporary name and renames
/// it into place; the contents are the same).
pub fn build(paths: &Paths, kernel: &GuestKernel) -> Result<PathBuf, InitramfsError> {
    let dir = cache_dir(paths);
    Paths::ensure_private_dir(&dir).map_err(io_err(&dir))?;
    let exe = Exe::current()?;
    let tree = layout(&exe, kernel)?;

    let mut h = Sha256::new();
    h.update(format!("berth-initramfs {FORMAT}\nexe {}\nkernel {}\n", exe.identity, kernel.version));
    tree.hash(&mut h);
    let id = hex::encode(h.finalize());
    let archive = dir.join(format!("initramfs-{}.cpio", &id[..32]));
    if archive.is_file() {
        // Refresh its time: pruning goes by it.
        if let Ok(f) = File::options().append(true).open(&archive) {
            let _ = f.set_modified(SystemTime::now());
        }
        tracing::debug!("initramfs from the cache: {}", archive.display());
        return Ok(archive);
    }

    let started = std::time::Instant::now();
    let init = exe.for_guest(&dir)?;
    let tmp = TempFile::new(&dir, "initramfs")?;
    let out = File::create(&tmp.path).map_err(io_err(&tmp.path))?;
    let mut w = super::cpio::Writer::new(BufWriter::with_capacity(1 << 20, out));
    let write = |w: &mut super::cpio::Writer<_>| -> std::io::Result<()> {
        w.file_from("init", 0o755, &init)?;
        tree.write(w)
    };
    write(&mut w).map_err(io_err(&tmp.path))?;
    let out = w.finish().map_err(io_err(&tmp.path))?;
    out.into_inner().map_err(|e| io_err(&tmp.path)(e.into_error()))?;
    tmp.persist(&archive)?;
    tracing::info!(
        "initramfs {} ({} MB) in {:.1?}",
        archive.display(),
        fs::metadata(&archive).map_or(0, |m| m.len() >> 20),
        started.elapsed()
    );
    prune(&dir, &[archive.as_path(), init.as_path()]);
    Ok(archive)
}

/// Everything but `/init`, in archive order.
fn layout(exe: &Exe, kernel: &GuestKernel) -> Result<Tree, InitramfsError> {
    let mut tree = Tree::default();
    // Host paths first: the host's symlinked directories (`lib`) must be
    // symlinks before anything is put beneath them.
    if let Some(interp) = &exe.interpreter {
        tree.add_host(Path::new(interp))?;
    }
    let libs = mapped_libraries(exe)?;
    for lib in &libs {
        tree.add_host(lib)?;
        for link in soname_links(lib) {
            tree.add_host(&link)?;
        }
    }
    // glibc may dlopen it to read /etc/passwd (getpwnam).
    if let Some(nss) = libs.iter().find(|l| l.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libc.so"))).and_then(|libc| {
        let p = libc.with_file_name("libnss_files.so.2");
        p.exists().then_some(p)
    }) {
        tree.add_host(&nss)?;
    }

    for (d, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("tmp", 0o1777),
        ("run", 0o755),
        ("mnt", 0o755),
        ("root", 0o700),
        ("newroot", 0o755),
        ("etc", 0o755),
        ("etc/berth", 0o755),
    ] {
        tree.put(d, Node::Dir(mode))?;
    }
    // The kernel opens /dev/console for init's stdio before anything is
    // mounted; its built-in initramfs has one too, this one does not rely on it.
    tree.put("dev/console", Node::CharDevice(0o600, 5, 1))?;
    for (p, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
        ("etc/resolv.conf", "nameserver 10.0.2.3\n"),
        ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
    ] {
        tree.put(p, Node::Bytes(text.as_bytes().to_vec(), 0o644))?;
    }

    let mut list = String::new();
    for rel in kernel::modules_in_load_order(kernel, GUEST_MODULES)? {
        let host = kernel.modules.join(&rel);
        let guest = format!("lib/modules/{}/{}", kernel.version, rel.to_string_lossy());
        let meta = fs::metadata(&host).map_err(io_err(&host))?;
        tree.put(&guest, Node::HostFile(host, 0o644, FileId::of(&meta)))?;
        list.push('/');
        list.push_str(&guest);
        list.push('\n');
    }
    tree.put(&MODULES_LIST[1..], Node::Bytes(list.into_bytes(), 0o644))?;
    Ok(tree)
}

/// The running berth binary.
struct Exe {
    /// `/proc/PID/exe`: still this binary if the file was replaced since.
    proc_path: PathBuf,
    /// Host path, size, mtime, inode: the cache key.
    identity: String,
    dev_ino: (u64, u64),
    interpreter: Option<String>,
    has_debug_info: bool,
}

impl Exe {
    fn current() -> Result<Exe, InitramfsError> {
        let proc_path = PathBuf::from(format!("/proc/{}/exe", std::process::id()));
        let file = File::open(&proc_path).map_err(io_err(&proc_path))?;
        let meta = file.metadata().map_err(io_err(&proc_path))?;
        let host = fs::read_link(&proc_path).unwrap_or_default();
        let e = elf::Elf::from_file(file, proc_path.display().to_string())?;
        Ok(Exe {
            identity: format!("{} {}", host.display(), FileId::of(&meta).0),
            dev_ino: (meta.dev(), meta.ino()),
            interpreter: e.interpreter()?,
            has_debug_info: e.has_debug_info()?,
            proc_path,
        })
    }

    /// The file to store as `/init`: the binary itself, or, for a build
    /// with DWARF (a debug build is ~200 MB), a copy without it, made once
    /// per binary and cached beside the archives.
    fn for_guest(&self, dir: &Path) -> Result<PathBuf, InitramfsError> {
        if !self.has_debug_info {
            return Ok(self.proc_path.clone());
        }
        let id = hex::encode(Sha256::digest(format!("strip-debug {}", self.identity)));
        let stripped = dir.join(format!("exe-{}", &id[..32]));
        if stripped.is_file() {
            return Ok(stripped);
        }
        let tmp = TempFile::new(dir, "exe")?;
        let out = match Command::new("objcopy")
            .arg("--strip-debug")
            .arg(&self.proc_path)
            .arg(&tmp.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!("no objcopy (binutils): the guest gets berth with its debug info");
                return Ok(self.proc_path.clone());
            }
            Err(e) => return Err(InitramfsError::Strip(e.to_string())),
        };
        if !out.status.success() {
            return Err(InitramfsError::Strip(String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        tmp.persist(&stripped)?;
        Ok(stripped)
    }
}

/// A file's identity without reading it: size, mtime, device and inode.
#[derive(Debug, Clone)]
struct FileId(String);

impl FileId {
    fn of(m: &fs::Metadata) -> FileId {
        FileId(format!("size={} mtime={}.{} dev={} ino={}", m.len(), m.mtime(), m.mtime_nsec(), m.dev(), m.ino()))
    }
}

/// The ELF files this process has mapped, by the paths the kernel reports
/// (symlinks resolved), the binary itself left out.
fn mapped_libraries(exe: &Exe) -> Result<Vec<PathBuf>, InitramfsError> {
    let maps_path = Path::new("/proc/self/maps");
    let maps = fs::read_to_string(maps_path).map_err(io_err(maps_path))?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path (the path may hold spaces)
        let mut rest = line;
        let mut inode = "";
        for i in 0..5 {
            let Some((field, r)) = rest.trim_start().split_once(' ') else {
                rest = "";
                break;
            };
            if i == 4 {
                inode = field;
            }
            rest = r;
        }
        let path = rest.trim_start();
        if inode == "0" || !path.starts_with('/') || path.ends_with(" (deleted)") || !seen.insert(path.to_string()) {
            continue;
        }
        let p = PathBuf::from(path);
        let Ok(meta) = fs::metadata(&p) else { continue };
        if (meta.dev(), meta.ino()) == exe.dev_ino || !meta.is_file() || !is_elf(&p) {
            continue;
        }
        out.push(p);
    }
    Ok(out)
}

fn is_elf(p: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(p).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"\x7fELF"
}

/// Links in a library's directory that name it by a shorter version, as
/// its SONAME does: `libseccomp.so.2 -> libseccomp.so.2.5.4`.
fn soname_links(lib: &Path) -> Vec<PathBuf> {
    let (Some(name), Ok(real)) = (lib.file_name().and_then(|n| n.to_str()), fs::canonicalize(lib)) else {
        return Vec::new();
    };
    let mut links = Vec::new();
    let mut candidate = name;
    while let Some((shorter, _)) = candidate.rsplit_once('.') {
        candidate = shorter;
        if !candidate.contains(".so") {
            break;
        }
        let p = lib.with_file_name(candidate);
        if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) && fs::canonicalize(&p).is_ok_and(|r| r == real) {
            links.push(p);
        }
    }
    links
}

#[derive(Debug)]
enum Node {
    Dir(u32),
    Symlink(String),
    HostFile(PathBuf, u32, FileId),
    Bytes(Vec<u8>, u32),
    CharDevice(u32, u32, u32),
}

/// The archive's entries by path (no leading `/`). Sorted order puts every
/// directory before what it holds.
#[derive(Default)]
struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    /// Host file `path` at the same path, with every symlink met on the way
    /// (in directories or at the end) recreated and followed, as the
    /// loader will follow them in the guest.
    fn add_host(&mut self, path: &Path) -> Result<(), InitramfsError> {
        let mut pending: Vec<String> = components(path);
        pending.reverse();
        let mut at: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            if c == ".." {
                at.pop();
                continue;
            }
            at.push(c);
            let rel = at.join("/");
            let host = PathBuf::from(format!("/{rel}"));
            let meta = fs::symlink_metadata(&host).map_err(io_err(&host))?;
            if meta.file_type().is_symlink() {
                hops += 1;
                if hops > 40 {
                    return Err(InitramfsError::Layout { path: rel, why: "too many symbolic links".into() });
                }
                let target = fs::read_link(&host).map_err(io_err(&host))?;
                let target_s = target.to_str().ok_or_else(|| InitramfsError::Layout { path: rel.clone(), why: "link target is not UTF-8".into() })?;
                self.insert(&rel, Node::Symlink(target_s.to_string()))?;
                at.pop();
                if target.is_absolute() {
                    at.clear();
                }
                let mut t = components(&target);
                t.reverse();
                pending.extend(t);
            } else if meta.is_dir() {
                self.insert(&rel, Node::Dir(meta.mode() & 0o7777))?;
            } else if meta.is_file() && pending.is_empty() {
                self.insert(&rel, Node::HostFile(host, meta.mode() & 0o7777, FileId::of(&meta)))?;
            } else {
                return Err(InitramfsError::Layout { path: rel, why: "neither a directory, a file nor a link".into() });
            }
        }
        Ok(())
    }

    /// `path` as the guest will resolve it: through the links already in
    /// the tree (so `lib/modules` lands in `usr/lib/modules` when `lib` is
    /// a link), with missing directories added.
    fn put(&mut self, path: &str, node: Node) -> Result<(), InitramfsError> {
        let mut pending: Vec<String> = path.split('/').filter(|c| !c.is_empty()).map(String::from).collect();
        let last = pending.pop().ok_or_else(|| InitramfsError::Layout { path: path.into(), why: "empty".into() })?;
        pending.reverse();
        let mut at: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            match c.as_str() {
                "." => continue,
                ".." => {
                    at.pop();
                    continue;
                }
                _ => {}
            }
            at.push(c);
            let rel = at.join("/");
            match self.nodes.get(&rel) {
                Some(Node::Symlink(target)) => {
                    hops += 1;
                    if hops > 40 {
                        return Err(InitramfsError::Layout { path: rel, why: "too many symbolic links".into() });
                    }
                    let target = target.clone();
                    at.pop();
                    if target.starts_with('/') {
                        at.clear();
                    }
                    pending.extend(target.split('/').filter(|c| !c.is_empty()).map(String::from).rev());
                }
                Some(Node::Dir(_)) => {}
                Some(_) => return Err(InitramfsError::Layout { path: rel, why: "not a directory".into() }),
                None => {
                    self.nodes.insert(rel, Node::Dir(0o755));
                }
            }
        }
        at.push(last);
        self.insert(&at.join("/"), node)
    }

    /// Adds `node`; the same path twice must be the same kind of thing.
    fn insert(&mut self, rel: &str, node: Node) -> Result<(), InitramfsError> {
        match (self.nodes.get(rel), &node) {
            (None, _) => {}
            (Some(Node::Dir(_)), Node::Dir(_)) => return Ok(()),
            (Some(Node::Symlink(a)), Node::Symlink(b)) if a == b => return Ok(()),
            (Some(Node::HostFile(a, ..)), Node::HostFile(b, ..)) if a == b => return Ok(()),
            (Some(old), _) => {
                return Err(InitramfsError::Layout { path: rel.into(), why: format!("wanted as {node:?}, already {old:?}") });
            }
        }
        self.nodes.insert(rel.to_string(), node);
        Ok(())
    }

    fn hash(&self, h: &mut Sha256) {
        for (path, node) in &self.nodes {
            match node {
                Node::Dir(m) => h.update(format!("dir {path} {m:o}\n")),
                Node::Symlink(t) => h.update(format!("link {path} {t}\n")),
                Node::HostFile(src, m, id) => h.update(format!("file {path} {m:o} {} {}\n", src.display(), id.0)),
                Node::Bytes(b, m) => {
                    h.update(format!("bytes {path} {m:o} {}\n", b.len()));
                    h.update(b);
                }
                Node::CharDevice(m, a, b) => h.update(format!("chr {path} {m:o} {a} {b}\n")),
            }
        }
    }

    fn write<W: std::io::Write>(&self, w: &mut super::cpio::Writer<W>) -> std::io::Result<()> {
        for (path, node) in &self.nodes {
            match node {
                Node::Dir(m) => w.dir(path, *m)?,
                Node::Symlink(t) => w.symlink(path, t)?,
                Node::HostFile(src, m, _) => w.file_from(path, *m, src)?,
                Node::Bytes(b, m) => w.file(path, *m, b)?,
                Node::CharDevice(m, a, b) => w.char_device(path, *m, *a, *b)?,
            }
        }
        Ok(())
    }
}

/// Normal components of a path, `..` kept (resolved against links later).
fn components(p: &Path) -> Vec<String> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// A file being written under a temporary name in the cache directory;
/// removed unless [`TempFile::persist`]ed.
struct TempFile {
    path: PathBuf,
    kept: bool,
}

impl TempFile {
    fn new(dir: &Path, what: &str) -> Result<TempFile, InitramfsError> {
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        Ok(TempFile { path: dir.join(format!(".tmp-{what}-{}-{nanos}", std::process::id())), kept: false })
    }

    fn persist(mut self, to: &Path) -> Result<(), InitramfsError> {
        fs::rename(&self.path, to).map_err(io_err(to))?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Removes cached files unused for [`KEEP_UNUSED`] (and temporary ones a
/// killed berth left, after an hour), never those in `keep`.
fn prune(dir: &Path, keep: &[&Path]) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let now = SystemTime::now();
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let max_age = if name.starts_with(".tmp-") {
            Duration::from_secs(3600)
        } else if name.starts_with("initramfs-") || name.starts_with("exe-") {
            KEEP_UNUSED
        } else {
            continue;
        };
        let age = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| now.duration_since(t).ok());
        if age.is_some_and(|a| a > max_age) && !keep.contains(&p.as_path()) {
            tracing::debug!("removing unused {}", p.display());
            let _ = fs::remove_file(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_follows_links_already_in_the_tree() {
        let mut t = Tree::default();
        t.insert("lib", Node::Symlink("usr/lib".into())).unwrap();
        t.insert("usr", Node::Dir(0o755)).unwrap();
        t.insert("usr/lib", Node::Dir(0o755)).unwrap();
        t.put("lib/modules/v/kernel/a.ko", Node::Bytes(vec![], 0o644)).unwrap();
        assert!(t.nodes.contains_key("usr/lib/modules/v/kernel/a.ko"));
        assert!(!t.nodes.keys().any(|k| k.starts_with("lib/")));
        // Parents sort before children: the archive creates them first.
        let keys: Vec<&String> = t.nodes.keys().collect();
        for (i, k) in keys.iter().enumerate() {
            if let Some((parent, _)) = k.rsplit_once('/') {
                assert!(keys[..i].iter().any(|p| *p == parent), "{k} before {parent}");
            }
        }
        // A file cannot become a directory.
        assert!(t.put("lib/modules/v/kernel/a.ko/x", Node::Dir(0o755)).is_err());
    }

    #[test]
    fn host_paths_keep_their_links() {
        let mut t = Tree::default();
        let libc = fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .find_map(|l| l.split_whitespace().last().filter(|p| p.contains("/libc.so")).map(String::from))
            .expect("libc is mapped");
        t.add_host(Path::new(&libc)).unwrap();
        assert!(matches!(t.nodes.get(&libc[1..]), Some(Node::HostFile(..))));
        if fs::symlink_metadata("/lib").unwrap().file_type().is_symlink() {
            t.add_host(Path::new("/lib/x86_64-linux-gnu/libc.so.6")).unwrap();
            assert!(matches!(t.nodes.get("lib"), Some(Node::Symlink(_))));
        }
    }
}
