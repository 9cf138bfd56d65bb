//! Images as read-only EROFS disks for the VM mode.
//!
//! [`flatten`] merges an image's cached layer dirs into one EROFS image,
//! made once per set of layers and reused:
//!
//! ```text
//! <root>/vm/rootfs/<key>.erofs      an image, complete once it has this name
//! <root>/vm/rootfs/<key>.lock       flock while it is made
//! <root>/vm/rootfs/<key>.layers     the layer dirs it was made from, for gc
//! <root>/vm/rootfs/.tmp-<key>-<pid>/ a build in progress (job, mount point, output)
//! ```
//!
//! The key is a sha256 of [`FORMAT`] and the layer dirs' names in the
//! layer cache (`<mapping key>/<diff_id hex>`): those name the content and
//! the id mapping the owners were written under, so equal keys are equal
//! trees.
//!
//! The work runs in a re-executed berth ([`Entry::VmRootfs`]) as uid 0 of
//! the pods' user namespace, in a private mount namespace: there the
//! layers' owners read back as in the image (root is 0, not the invoking
//! user), which is what `mkfs.erofs` records. It mounts a read-only overlay
//! of the layers (with `userxattr`, as the pods do), so overlayfs itself
//! applies whiteouts and opaque dirs and hides its own xattrs, and runs
//! `mkfs.erofs` on it; where overlay cannot be mounted the layers are copied
//! with the same code as `--rootfs copy`. The image is uncompressed (quick
//! to make, quick to read under TCG) and keeps every file's mtime, mode,
//! owner and xattrs (`security.capability` included).
//!
//! Image xattrs named `user.overlay.*` pass through (kernels >= 6.7 show
//! the cache's escaped form under the original name; older ones hide them):
//! the guest's overlay must use `trusted.*` (no `userxattr`) so they stay
//! inert.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::paths::Paths;
use crate::reexec::Entry;
use crate::unpack::cache::{self, LayersError};
use crate::userns::{IdMapping, SpawnOptions, UsernsError};

/// Versions how images are made: a change of options or layout makes
/// new keys instead of reusing old images.
pub const FORMAT: &str = "berth-vm-rootfs-1 erofs uncompressed preserve-mtime";

const MKFS: &str = "mkfs.erofs";

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mkfs.erofs is not installed: --isolation vm needs the package erofs-utils")]
    MissingMkfs,
    #[error("{} is not a directory of berth's layer cache", .0.display())]
    NotACacheLayer(PathBuf),
    #[error("{op} {}", path.display())]
    Io { op: &'static str, path: PathBuf, source: io::Error },
    #[error("starting the flattening process")]
    Spawn(#[source] UsernsError),
    #[error("waiting for the flattening process: {0}")]
    Wait(nix::errno::Errno),
    /// The process in the namespace said why (its message).
    #[error("{0}")]
    InNamespace(String),
    #[error("the flattening process failed (status {0})")]
    Status(u8),
    #[error("the flattening process ended abnormally")]
    Abnormal,
    #[error("the flattening job {}", path.display())]
    Job { path: PathBuf, source: serde_json::Error },
    #[error("copying the layers")]
    Copy(#[source] LayersError),
    #[error("mkfs.erofs failed ({status}): {output}")]
    Mkfs { status: std::process::ExitStatus, output: String },
    #[error("mounting the layers' overlay: {0}")]
    Mount(nix::errno::Errno),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io { op, path: path.to_path_buf(), source }
}

/// What the process in the namespace does; written to `job.json` in the
/// build's temporary directory.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    /// Cached layer dirs, bottom first.
    layers: Vec<PathBuf>,
    /// The build's temporary directory (mount point, copy, output).
    work: PathBuf,
    /// `mkfs.erofs` as found on the caller's PATH.
    mkfs: PathBuf,
}

impl Job {
    fn output(&self) -> PathBuf {
        self.work.join("image.erofs")
    }
    fn error_file(&self) -> PathBuf {
        self.work.join("error")
    }
}

/// An EROFS image of the merged tree of `layers` (unpacked cache dirs,
/// bottom first, as `planner::Provisioned::layers` gives them, each under
/// a lease the caller holds), made in the user namespace of `mapping` (the
/// one the layers were unpacked under) unless it exists already. Safe
/// against concurrent callers; a failed or killed build leaves no image.
/// `verbose` is the `-v` count the flattening process logs at.
pub fn flatten(paths: &Paths, mapping: &IdMapping, layers: &[PathBuf], verbose: u8) -> Result<PathBuf, RootfsError> {
    let key = cache_key(layers)?;
    let dir = paths.root.join("vm/rootfs");
    let image = dir.join(format!("{key}.erofs"));
    if image.is_file() {
        return Ok(image);
    }
    let mkfs = crate::paths::find_executable(MKFS).ok_or(RootfsError::MissingMkfs)?;
    Paths::ensure_private_dir(&dir).map_err(io_err("creating", &dir))?;
    let lock_path = dir.join(format!("{key}.lock"));
    let lock = File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(io_err("opening", &lock_path))?;
    crate::unpack::sys::flock_exclusive(std::os::fd::AsFd::as_fd(&lock), true).map_err(io_err("locking", &lock_path))?;
    if image.is_file() {
        return Ok(image); // another process made it while we waited
    }
    remove_abandoned(&dir, &key);
    let started = Instant::now();
    let work = dir.join(format!(".tmp-{key}-{}", std::process::id()));
    fs::DirBuilder::new().mode(0o700).create(&work).map_err(io_err("creating", &work))?;
    let job = Job { layers: layers.to_vec(), work: work.clone(), mkfs };
    let record = dir.join(format!("{key}.layers"));
    let listed: String = layers.iter().map(|l| format!("{}\n", l.display())).collect();
    let result = build(mapping, &job, verbose)
        .and_then(|()| fs::write(&record, listed).map_err(io_err("writing", &record)))
        .and_then(|()| fs::rename(job.output(), &image).map_err(io_err("renaming into place", &image)));
    if let Err(e) = crate::runtime::host::cleanup::remove_tree(&work) {
        tracing::warn!("removing {}: {e}", work.display());
    }
    result?;
    tracing::debug!(layers = layers.len(), elapsed = ?started.elapsed(), "made {}", image.display());
    Ok(image)
}

/// Removes the images whose layers are gone from the layer cache (`berth
/// gc` removed them) or that name none; returns how many and their bytes.
/// An image in use stays readable by the QEMU that has it open.
pub fn gc(paths: &Paths) -> (usize, u64) {
    let dir = paths.root.join("vm/rootfs");
    let Ok(entries) = fs::read_dir(&dir) else { return (0, 0) };
    let (mut n, mut bytes) = (0, 0);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(key) = name.strip_suffix(".erofs") else { continue };
        let Ok(Some(_lock)) = cache::try_flock(&dir.join(format!("{key}.lock"))) else { continue };
        let record = dir.join(format!("{key}.layers"));
        let layers = fs::read_to_string(&record).unwrap_or_default();
        let alive = !layers.is_empty() && layers.lines().all(|l| Path::new(l).is_dir());
        if alive {
            continue;
        }
        let size = e.metadata().map(|m| m.len()).unwrap_or(0);
        if fs::remove_file(e.path()).is_ok() {
            n += 1;
            bytes += size;
            let _ = fs::remove_file(&record);
            let _ = fs::remove_file(dir.join(format!("{key}.lock")));
        }
    }
    (n, bytes)
}

/// The cache name for `layers`: see the module doc.
fn cache_key(layers: &[PathBuf]) -> Result<String, RootfsError> {
    let mut h = Sha256::new();
    h.update(FORMAT.as_bytes());
    h.update(b"\n");
    for l in layers {
        let name = |p: Option<&Path>| p.and_then(Path::file_name).and_then(|n| n.to_str()).map(str::to_owned);
        let (Some(key), Some(layer)) = (name(l.parent()), name(Some(l))) else {
            return Err(RootfsError::NotACacheLayer(l.clone()));
        };
        h.update(format!("{key}/{layer}\n").as_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

/// Removes the temporary dirs of builds that died (SIGKILL, power loss):
/// those of `own` (whose lock we hold) and of keys whose lock nobody
/// holds. Best effort.
fn remove_abandoned(dir: &Path, own: &str) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(key) = name.to_str().and_then(|n| n.strip_prefix(".tmp-")).and_then(|n| n.rsplit_once('-')).map(|(k, _)| k) else {
            continue;
        };
        // The lock only needs holding while the removal runs.
        let _held;
        if key != own {
            match cache::try_flock(&dir.join(format!("{key}.lock"))) {
                Ok(Some(lock)) => _held = lock,
                _ => continue, // a build in progress
            }
        }
        tracing::debug!("removing an abandoned build, {}", entry.path().display());
        if let Err(e) = crate::runtime::host::cleanup::remove_tree(&entry.path()) {
            tracing::warn!("removing {}: {e}", entry.path().display());
        }
    }
}

/// Runs the job in a re-executed berth in the user namespace of `mapping`
/// and a new mount namespace, and waits for it.
fn build(mapping: &IdMapping, job: &Job, verbose: u8) -> Result<(), RootfsError> {
    let job_path = job.work.join("job.json");
    let bytes = serde_json::to_vec(job).map_err(|source| RootfsError::Job { path: job_path.clone(), source })?;
    fs::write(&job_path, bytes).map_err(io_err("writing", &job_path))?;
    let opts = SpawnOptions {
        extra_namespaces: nix::sched::CloneFlags::CLONE_NEWNS,
        parent_death_signal: Some(nix::sys::signal::Signal::SIGKILL),
        ..Default::default()
    };
    let pid = Entry::VmRootfs { job: job_path }.spawn(mapping, verbose, &opts).map_err(RootfsError::Spawn)?;
    let status = loop {
        match nix::sys::wait::waitpid(pid, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(RootfsError::Wait(e)),
            Ok(status) => break crate::exit::from_wait(status),
        }
    };
    match status {
        Some(0) => Ok(()),
        Some(code) => match fs::read_to_string(job.error_file()) {
            Ok(msg) if !msg.trim().is_empty() => Err(RootfsError::InNamespace(msg.trim().to_string())),
            _ => Err(RootfsError::Status(code)),
        },
        None => Err(RootfsError::Abnormal),
    }
}

/// [`Entry::VmRootfs`]: runs as uid 0 of the user namespace, in a mount
/// namespace of its own. Its failure is written to the job's error file
/// for the caller to report (in one line, once); returns the exit status.
pub fn run_job(job_path: &Path) -> u8 {
    let job = match fs::read(job_path)
        .map_err(io_err("reading", job_path))
        .and_then(|b| serde_json::from_slice::<Job>(&b).map_err(|source| RootfsError::Job { path: job_path.to_path_buf(), source }))
    {
        Ok(job) => job,
        Err(e) => {
            crate::exit::report(&e);
            return crate::exit::PROVISION;
        }
    };
    match make_image(&job) {
        Ok(()) => 0,
        Err(e) => {
            let msg = crate::runtime::error_chain(&e);
            if fs::write(job.error_file(), &msg).is_err() {
                crate::exit::report(&e);
            }
            crate::exit::PROVISION
        }
    }
}

fn make_image(job: &Job) -> Result<(), RootfsError> {
    use nix::mount::{mount, MsFlags};
    // Nothing mounted here may reach the caller's namespace.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).map_err(RootfsError::Mount)?;
    let started = Instant::now();
    let source = merged_tree(job)?;
    let merged = started.elapsed();
    let made = mkfs(&job.mkfs, &source, &job.output());
    if source.ends_with("copy") {
        // Its files belong to the namespace's ids: remove them from here.
        if let Err(e) = cache::remove_tree(&source) {
            tracing::warn!("removing {}: {e}", source.display());
        }
    }
    made?;
    tracing::debug!(layers = job.layers.len(), ?merged, elapsed = ?started.elapsed(), "made an EROFS image of {}", source.display());
    Ok(())
}

/// The merged tree of the job's layers: an overlay mount, or a copy where
/// overlay cannot be mounted.
fn merged_tree(job: &Job) -> Result<PathBuf, RootfsError> {
    let mkdir = |name: &str| -> Result<PathBuf, RootfsError> {
        let d = job.work.join(name);
        fs::DirBuilder::new().mode(0o755).create(&d).map_err(io_err("creating", &d))?;
        Ok(d)
    };
    let empty = mkdir("empty")?;
    // overlayfs before 6.7 wants two lower dirs without an upper one: an
    // empty bottom dir changes nothing (a merged dir's attributes are the
    // topmost one's).
    let lowers: Vec<PathBuf> = match job.layers.len() {
        0 => return Ok(empty),
        1 => vec![empty, job.layers[0].clone()],
        _ => job.layers.clone(),
    };
    let merged = mkdir("merged")?;
    match mount_overlay(&lowers, &merged) {
        Ok(()) => return Ok(merged),
        Err(Fallback(why)) => tracing::info!("cannot mount an overlay of the layers ({why}): copying them instead"),
    }
    let copy = mkdir("copy")?;
    // The ids this namespace maps, as the pod process decides for --rootfs copy.
    let ids = match IdMapping::of_current_process().counts() {
        (u, g) if u > 1 && g > 1 => crate::unpack::IdPolicy::Keep { max_uid: (u - 1) as u32, max_gid: (g - 1) as u32 },
        _ => crate::unpack::IdPolicy::Squash,
    };
    cache::flatten_dirs(&job.layers, &copy, ids).map_err(RootfsError::Copy)?;
    Ok(copy)
}

/// Why an overlay was not mounted (the copy then does the job).
struct Fallback(String);

fn mount_overlay(lowers: &[PathBuf], target: &Path) -> Result<(), Fallback> {
    use nix::mount::{mount, MsFlags};
    let opts = cache::overlay_lower_options(lowers).map_err(|e| Fallback(e.to_string()))?;
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    if opts.len() >= page {
        // mount(2) takes one page of options and silently cuts the rest.
        return Err(Fallback(format!("{} bytes of options, at most {}", opts.len(), page - 1)));
    }
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(Some("overlay"), target, Some("overlay"), flags, Some(opts.as_str())).map_err(|e| Fallback(format!("mount: {e}")))
}

/// `mkfs.erofs OUT DIR`: uncompressed, mtimes kept. Its output (a banner
/// on stdout, which belongs to the container) is kept for the error.
fn mkfs(program: &Path, source: &Path, out: &Path) -> Result<(), RootfsError> {
    let mut cmd = Command::new(program);
    cmd.arg("--preserve-mtime").arg(out).arg(source).stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            // Dies with us (and so with the berth that waits for us).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(RootfsError::MissingMkfs),
        Err(e) => return Err(RootfsError::Io { op: "running", path: program.to_path_buf(), source: e }),
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    if !output.status.success() {
        let mut all = text(&output.stderr);
        if all.is_empty() {
            all = text(&output.stdout);
        }
        // The last lines say why; keep the error to one line.
        let tail: Vec<&str> = all.lines().rev().take(3).collect();
        let output_tail = tail.into_iter().rev().collect::<Vec<_>>().join(" / ");
        return Err(RootfsError::Mkfs { status: output.status, output: output_tail });
    }
    tracing::trace!(stdout = %text(&output.stdout), stderr = %text(&output.stderr), "mkfs.erofs");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_layers_and_their_order() {
        let l = |s: &str| PathBuf::from(format!("/s/layers/rootless-abc/{s}"));
        let a = cache_key(&[l("aa"), l("bb")]).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(a, cache_key(&[l("aa"), l("bb")]).unwrap());
        // The store's location does not matter, the order and mapping do.
        assert_eq!(a, cache_key(&[PathBuf::from("/t/rootless-abc/aa"), PathBuf::from("/u/rootless-abc/bb")]).unwrap());
        assert_ne!(a, cache_key(&[l("bb"), l("aa")]).unwrap());
        assert_ne!(a, cache_key(&[PathBuf::from("/s/layers/rootless-abd/aa"), l("bb")]).unwrap());
        assert_ne!(a, cache_key(&[l("aa")]).unwrap());
        assert!(matches!(cache_key(&[PathBuf::from("/")]), Err(RootfsError::NotACacheLayer(_))));
    }
}
