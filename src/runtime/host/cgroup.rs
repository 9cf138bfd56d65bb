//! The pod's own cgroup (v2), where the host lets berth make one.
//!
//! Limits need a cgroup v2 tree the user may write: one delegated to the
//! user (systemd's `Delegate=yes`, or a directory chowned to them), or any
//! as real root. In the cgroup C that berth was started in, berth makes:
//!
//! ```text
//! C/
//!   berth.supervisor/   berth itself, moved here when C held only berth:
//!                       cgroup v2 gives no controllers to the children of a
//!                       cgroup that holds processes (the root excepted)
//!   <pod>.pod/          the pod: its memory.peak, pids.max
//!     berth.init/       the pod process (PID 1 of the pod), from its start
//!     <container>/      one per container, with its limits (libcontainer)
//! ```
//!
//! The pod process starts in `<pod>.pod`, so that its cgroup namespace is
//! rooted there, then moves itself into `berth.init` ([`enter_leaf`]).
//! Elsewhere (cgroup v1 or hybrid hosts, a C shared with other processes,
//! a C not delegated) [`PodCgroup::create`] says why, and the pod runs in C
//! without limits.
//!
//! Plain file I/O, not libcgroups: its v2 manager enables controllers best-effort (hiding the EBUSY acted on here).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The controllers berth uses, in the order cgroup.subtree_control takes them.
pub const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Where berth itself goes when it must leave C.
const SUPERVISOR: &str = "berth.supervisor";
/// Where the pod process goes inside the pod's cgroup. Container names are
/// DNS labels, so no container's cgroup can take this name.
pub const POD_LEAF: &str = "berth.init";

/// Why the pod gets no cgroup of its own.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("no cgroup v2 hierarchy is mounted at /sys/fs/cgroup or /sys/fs/cgroup/unified")]
    NoHierarchy,
    #[error("berth's cgroup {0} has none of the cpu, memory and pids controllers")]
    NoControllers(PathBuf),
    #[error("berth's cgroup {0} also holds other processes; run berth in a cgroup of its own, e.g. `systemd-run --user --scope -p Delegate=yes berth ...`")]
    Shared(PathBuf),
    #[error("{path} (is the cgroup delegated to this user?)")]
    Io { path: PathBuf, source: io::Error },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> Unavailable + '_ {
    move |source| Unavailable::Io { path: path.to_path_buf(), source }
}

/// A pod's cgroup on the host, as recorded in its state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodCgroup {
    /// The pod's cgroup directory (`C/<pod>.pod`).
    pub dir: PathBuf,
    /// The controllers enabled for its children.
    pub controllers: Vec<String>,
}

impl PodCgroup {
    /// Makes the cgroup of pod `name` under the caller's own cgroup, moving
    /// the caller into `berth.supervisor` when that is needed and allowed,
    /// and caps the pod's task count at `pids_limit`.
    pub fn create(name: &str, pids_limit: Option<u64>) -> Result<PodCgroup, Unavailable> {
        let own = own_cgroup(&fs::read_to_string("/proc/self/cgroup").map_err(io_at(Path::new("/proc/self/cgroup")))?)
            .ok_or(Unavailable::NoHierarchy)?;
        let mount = v2_mount().ok_or(Unavailable::NoHierarchy)?;
        let c = mount.join(own.trim_start_matches('/'));
        Self::create_under(&c, name, pids_limit)
    }

    fn create_under(c: &Path, name: &str, pids_limit: Option<u64>) -> Result<PodCgroup, Unavailable> {
        let available = read_list(&c.join("cgroup.controllers"))?;
        let controllers: Vec<String> = CONTROLLERS.iter().filter(|x| available.iter().any(|a| a == *x)).map(|x| x.to_string()).collect();
        if controllers.is_empty() {
            return Err(Unavailable::NoControllers(c.to_path_buf()));
        }
        let enabled = read_list(&c.join("cgroup.subtree_control"))?;
        if controllers.iter().any(|x| !enabled.contains(x)) {
            let control = c.join("cgroup.subtree_control");
            match fs::write(&control, enable_line(&controllers)) {
                Ok(()) => {}
                // C holds processes (berth at least) and is not the root.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    leave_for_supervisor(c)?;
                    write(&control, &enable_line(&controllers))?;
                }
                Err(e) => return Err(io_at(&control)(e)),
            }
        }
        let dir = c.join(format!("{name}.pod"));
        match fs::create_dir(&dir) {
            Ok(()) => {}
            // A pod of this name that was killed before it could clean up.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                remove_cgroups(&dir).map_err(io_at(&dir))?;
                fs::create_dir(&dir).map_err(io_at(&dir))?;
            }
            Err(e) => return Err(io_at(&dir)(e)),
        }
        let cg = PodCgroup { dir, controllers };
        if let Some(n) = pids_limit.filter(|_| cg.controllers.iter().any(|x| x == "pids")) {
            if let Err(e) = write(&cg.dir.join("pids.max"), &n.to_string()) {
                let _ = cg.remove();
                return Err(e);
            }
        }
        Ok(cg)
    }

    /// The pod's peak memory use, from `memory.peak` (Linux 5.19 and later).
    pub fn peak_memory(&self) -> Option<u64> {
        read_peak(&self.dir)
    }

    /// Removes the pod's cgroup and those below it. Every process in them
    /// must have exited.
    pub fn remove(&self) -> io::Result<()> {
        // The path comes from a file in the state directory: never act on
        // anything but a cgroup.
        match nix::sys::statfs::statfs(&self.dir) {
            Ok(s) if s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => remove_cgroups(&self.dir),
            Ok(_) => Err(io::Error::other(format!("{} is not a cgroup", self.dir.display()))),
            Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The path of the calling process's cgroup v2 (`0::PATH`).
fn own_cgroup(proc_self_cgroup: &str) -> Option<String> {
    proc_self_cgroup.lines().find_map(|l| l.strip_prefix("0::")).map(|p| p.trim().to_string())
}

/// The cgroup v2 mount: the whole tree on a unified host, or the hybrid
/// layout's `unified` (which then usually has no controllers).
fn v2_mount() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"].into_iter().map(PathBuf::from).find(|p| {
        nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
    })
}

/// Moves the calling process out of `c` so that `c` may give its children
/// controllers. Only when berth is alone in `c`: other processes there are
/// not berth's to move.
fn leave_for_supervisor(c: &Path) -> Result<(), Unavailable> {
    let procs_path = c.join("cgroup.procs");
    let procs = fs::read_to_string(&procs_path).map_err(io_at(&procs_path))?;
    let me = std::process::id().to_string();
    if procs.lines().any(|p| p.trim() != me) {
        return Err(Unavailable::Shared(c.to_path_buf()));
    }
    let sup = c.join(SUPERVISOR);
    match fs::create_dir(&sup) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_at(&sup)(e)),
        _ => {}
    }
    write(&sup.join("cgroup.procs"), &me)
}

/// In the pod process, right after it mounted its cgroup namespace's view
/// at `root`: moves itself into the leaf [`POD_LEAF`] and gives the pod's
/// cgroup the controllers for the containers' own.
pub fn enter_leaf(root: &Path, controllers: &[String]) -> io::Result<()> {
    let leaf = root.join(POD_LEAF);
    fs::create_dir(&leaf)?;
    fs::write(leaf.join("cgroup.procs"), "0")?;
    fs::write(root.join("cgroup.subtree_control"), enable_line(controllers))
}

/// `memory.peak` of the cgroup at `dir`.
pub fn read_peak(dir: &Path) -> Option<u64> {
    fs::read_to_string(dir.join("memory.peak")).ok()?.trim().parse().ok()
}

fn enable_line(controllers: &[String]) -> String {
    controllers.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" ")
}

fn read_list(path: &Path) -> Result<Vec<String>, Unavailable> {
    let text = fs::read_to_string(path).map_err(io_at(path))?;
    Ok(text.split_whitespace().map(String::from).collect())
}

fn write(path: &Path, text: &str) -> Result<(), Unavailable> {
    fs::write(path, text).map_err(io_at(path))
}

/// Removes a cgroup directory and every cgroup below it, deepest first
/// (cgroupfs removes a directory's files with it; rmdir is the only way).
fn remove_cgroups(dir: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        if e.file_type()?.is_dir() {
            remove_cgroups(&e.path())?;
        }
    }
    // A process that has just been reaped may still be leaving the cgroup.
    let mut tries = 0;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cgroup_is_the_v2_line() {
        assert_eq!(own_cgroup("4:memory:/x\n0::/user.slice/a.scope\n").as_deref(), Some("/user.slice/a.scope"));
        assert_eq!(own_cgroup("0::/\n").as_deref(), Some("/"));
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn enable_line_is_what_subtree_control_takes() {
        assert_eq!(enable_line(&["cpu".into(), "pids".into()]), "+cpu +pids");
    }

    #[test]
    fn a_plain_directory_is_no_cgroup() {
        // Not a cgroup: no cgroup.controllers, so the error names the file.
        let d = tempfile::tempdir().unwrap();
        let e = PodCgroup::create_under(d.path(), "p", None).unwrap_err();
        assert!(matches!(e, Unavailable::Io { ref path, .. } if path.ends_with("cgroup.controllers")), "{e:?}");
    }

    #[test]
    fn remove_refuses_what_is_not_a_cgroup() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.pod");
        fs::create_dir(&p).unwrap();
        let cg = PodCgroup { dir: p.clone(), controllers: vec![] };
        assert!(cg.remove().is_err());
        assert!(p.exists());
        fs::remove_dir(&p).unwrap();
        cg.remove().unwrap();
    }

    #[test]
    fn remove_cgroups_removes_nested_directories_and_tolerates_absence() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.pod");
        fs::create_dir_all(p.join("berth.init")).unwrap();
        fs::create_dir_all(p.join("web")).unwrap();
        remove_cgroups(&p).unwrap();
        assert!(!p.exists());
        remove_cgroups(&p).unwrap();
    }
}
