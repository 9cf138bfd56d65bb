//! A pod's state directory and the records in it.
//!
//! ```text
//! <run_root>/pods/<name>/
//!   plan.json              the PodPlan (written by berth before the pod process starts)
//!   owner.json             berth's pid (+ start time) and the pod process's host pid
//!   status.json            phase, containers, exit status, peak memory (pod process)
//!   cgroup.json            the pod's own cgroup, where it has one (see `cgroup`)
//!   logs/<container>.log   output of init containers and sidecars
//!   etc/hosts, etc/hostname, etc/resolv.conf   bind-mounted into every container
//!   bundles/<container>/config.json            the bundle adjusted for the pod
//!   bundles/<container>/seccomp.bpf            its seccomp program (see `seccomp`)
//!   rootfs/<container>/    overlay mount point, or the private copy (--rootfs copy)
//!   containers/            libcontainer's state root (a tmpfs in the pod's mount namespace)
//!   workspace/             the pod's own workspace (when not given with --workspace)
//!   images.json            manifest digests of the images the pod runs (for `rmi`)
//!   kept                   present when `berth run --keep` asked to keep the state
//! ```
//!
//! The workspace lives in the state directory so that it is made fresh
//! with every pod and goes with it: removed when the pod ends, when a dead
//! pod's state is cleaned, or by `berth rm` when kept.
//!
//! Next to `pods/`, `<run_root>/seccomp/<key>.bpf` keeps compiled seccomp
//! programs for later pods.
//!
//! A pod is live while its owner (the `berth run` process) is alive; any berth
//! command removes the directories of dead owners, except kept ones (those
//! go with `berth rm`). Mounts need no cleanup:
//! they live in the pod's private mount namespace and vanish with it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("pod {0:?} is already running")]
    Exists(String),
    #[error("no pod named {0:?}")]
    NotFound(String),
    #[error("pod {0:?} was kept with --keep: `berth rm {0}` first")]
    Kept(String),
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}")]
    Json { path: PathBuf, source: serde_json::Error },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_path_buf(), source }
}

/// Who runs a pod: written by `berth run` once the pod process exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: i32,
    /// `/proc/PID/stat` start time, so a reused pid is not taken for the owner.
    pub start_time: u64,
    /// The pod process, as seen from the host.
    pub pod_pid: i32,
    /// Unix seconds.
    pub created: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Starting,
    Running,
    Stopping,
    Exited,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub phase: Phase,
    /// Container names with the pid of their init in the pod's PID namespace
    /// (0 while not started).
    pub containers: Vec<(String, i32)>,
    pub main: String,
    pub exit_code: Option<u8>,
    /// Peak memory of the pod in bytes, where known.
    pub peak_memory: Option<u64>,
}

/// The state directory of one pod.
#[derive(Debug, Clone)]
pub struct PodDir {
    pub dir: PathBuf,
}

impl PodDir {
    pub fn pods_root(run_root: &Path) -> PathBuf {
        run_root.join("pods")
    }

    /// Opens an existing pod's directory.
    pub fn open(run_root: &Path, name: &str) -> Result<PodDir, StateError> {
        if super::plan::check_label(name).is_err() {
            return Err(StateError::NotFound(name.to_string()));
        }
        let dir = Self::pods_root(run_root).join(name);
        if !dir.is_dir() {
            return Err(StateError::NotFound(name.to_string()));
        }
        Ok(PodDir { dir })
    }

    /// Creates the directory for a new pod; a dead pod's leftovers of the
    /// same name are removed first.
    pub fn create(run_root: &Path, name: &str) -> Result<PodDir, StateError> {
        let root = Self::pods_root(run_root);
        crate::paths::Paths::ensure_private_dir(&root).map_err(io_at(&root))?;
        let dir = root.join(name);
        for attempt in 0..2 {
            match fs::create_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt == 0 => {
                    let old = PodDir { dir: dir.clone() };
                    if old.is_live() {
                        return Err(StateError::Exists(name.to_string()));
                    }
                    // Its workspace was kept on purpose: never reused, never
                    // dropped by another run.
                    if old.is_kept() {
                        return Err(StateError::Kept(name.to_string()));
                    }
                    old.remove()?;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(StateError::Exists(name.to_string()))
                }
                Err(e) => return Err(io_at(&dir)(e)),
            }
        }
        let d = PodDir { dir };
        for sub in ["logs", "etc", "bundles", "rootfs", "containers"] {
            let p = d.dir.join(sub);
            fs::create_dir(&p).map_err(io_at(&p))?;
        }
        Ok(d)
    }

    pub fn name(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
    pub fn plan_path(&self) -> PathBuf {
        self.dir.join("plan.json")
    }
    pub fn log_path(&self, container: &str) -> PathBuf {
        self.logs_dir().join(format!("{container}.log"))
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub fn etc(&self, file: &str) -> PathBuf {
        self.dir.join("etc").join(file)
    }
    pub fn bundle(&self, container: &str) -> PathBuf {
        self.dir.join("bundles").join(container)
    }
    pub fn rootfs(&self, container: &str) -> PathBuf {
        self.dir.join("rootfs").join(container)
    }
    pub fn containers_root(&self) -> PathBuf {
        self.dir.join("containers")
    }
    /// The pod's own workspace (made by the planner when `--workspace` is
    /// not given).
    pub fn workspace(&self) -> PathBuf {
        self.dir.join("workspace")
    }
    pub fn write_images(&self, manifests: &[String]) -> Result<(), StateError> {
        write_json(&self.dir.join("images.json"), &manifests)
    }
    /// Manifest digests of the pod's images (none recorded: empty).
    pub fn read_images(&self) -> Vec<String> {
        read_json(&self.dir.join("images.json")).unwrap_or_default()
    }
    /// `<run_root>/seccomp`: compiled seccomp programs shared by all pods
    /// (see [`super::seccomp`]).
    pub fn seccomp_cache(&self) -> Option<PathBuf> {
        let pods = self.dir.parent().filter(|p| p.file_name() == Some("pods".as_ref()))?;
        Some(pods.parent()?.join("seccomp"))
    }

    pub fn write_plan(&self, plan: &super::PodPlan) -> Result<(), StateError> {
        write_json(&self.plan_path(), plan)
    }
    pub fn read_plan(&self) -> Result<super::PodPlan, StateError> {
        read_json(&self.plan_path())
    }
    /// Where a VM pod keeps its host-side files (QEMU's root, console,
    /// sockets).
    pub fn vm_dir(&self) -> PathBuf {
        self.dir.join("vm")
    }

    /// The pod runs in a VM: its containers are not on this host.
    pub fn is_vm(&self) -> bool {
        self.vm_dir().is_dir()
    }

    pub fn write_owner(&self, o: &Owner) -> Result<(), StateError> {
        write_json(&self.dir.join("owner.json"), o)
    }
    pub fn read_owner(&self) -> Result<Owner, StateError> {
        read_json(&self.dir.join("owner.json"))
    }
    pub fn write_status(&self, s: &Status) -> Result<(), StateError> {
        write_json(&self.dir.join("status.json"), s)
    }
    pub fn read_status(&self) -> Result<Status, StateError> {
        read_json(&self.dir.join("status.json"))
    }
    pub fn write_cgroup(&self, c: &super::host::cgroup::PodCgroup) -> Result<(), StateError> {
        write_json(&self.dir.join("cgroup.json"), c)
    }
    /// The pod's cgroup, or None when it runs in berth's.
    pub fn read_cgroup(&self) -> Option<super::host::cgroup::PodCgroup> {
        read_json(&self.dir.join("cgroup.json")).ok()
    }

    /// Marks the state as wanted after the pod ends (`--keep`): leftover
    /// cleanup passes it by.
    pub fn mark_kept(&self) -> Result<(), StateError> {
        let p = self.dir.join("kept");
        fs::write(&p, b"").map_err(io_at(&p))
    }

    pub fn is_kept(&self) -> bool {
        self.dir.join("kept").exists()
    }

    /// True while the berth process that owns the pod is alive. A directory
    /// without an owner record is live for a minute (berth is creating it).
    pub fn is_live(&self) -> bool {
        match self.read_owner() {
            Ok(o) => process_start_time(Pid::from_raw(o.pid)) == Some(o.start_time),
            Err(_) => fs::metadata(&self.dir)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() < 60),
        }
    }

    /// Removes the directory. Containers may have left files owned by
    /// subordinate ids (overlay upper dirs), which the user cannot remove on
    /// the host: those are removed from inside a user namespace.
    pub fn remove(&self) -> Result<(), StateError> {
        super::host::cleanup::remove_tree(&self.dir).map_err(io_at(&self.dir))
    }

    /// The pod's peak memory: its cgroup's memory.peak where it has one,
    /// else the sum of its processes' peak RSS (while it runs) or of its
    /// containers' (recorded at their exit).
    pub fn peak_memory(&self, live: bool) -> Option<u64> {
        if let Some(peak) = self.read_cgroup().and_then(|c| c.peak_memory()) {
            return Some(peak);
        }
        let recorded = self.read_status().ok().and_then(|s| s.peak_memory);
        let now = if live { self.read_owner().ok().and_then(|o| live_peak_rss(Pid::from_raw(o.pod_pid))) } else { None };
        recorded.max(now)
    }
}

/// Every pod directory under `run_root`, sorted by name.
pub fn list(run_root: &Path) -> Vec<PodDir> {
    let mut out: Vec<PodDir> = fs::read_dir(PodDir::pods_root(run_root))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter(|e| e.file_name().to_str().is_some_and(|n| super::plan::check_label(n).is_ok()))
        .map(|e| PodDir { dir: e.path() })
        .collect();
    out.sort_by(|a, b| a.dir.cmp(&b.dir));
    out
}

/// The names of the live pods that run the image with this manifest.
pub fn pods_using(run_root: &Path, manifest: &str) -> Vec<String> {
    list(run_root).into_iter().filter(|p| p.is_live() && p.read_images().iter().any(|m| m == manifest)).map(|p| p.name()).collect()
}

/// Removes the state of pods whose owner is gone (berth was SIGKILLed),
/// unless it was kept on purpose. Failures are logged, never fatal: this
/// runs before every berth command.
pub fn clean_dead(run_root: &Path) {
    for pod in list(run_root) {
        if pod.is_live() {
            continue;
        }
        // Every process of the pod died with its PID 1: the cgroup is empty.
        if let Some(cg) = pod.read_cgroup() {
            match cg.remove() {
                Ok(()) => {
                    let _ = fs::remove_file(pod.dir.join("cgroup.json"));
                }
                Err(e) => tracing::warn!("cannot remove cgroup {} of dead pod {}: {e}", cg.dir.display(), pod.name()),
            }
        }
        if !pod.is_kept() {
            tracing::info!("removing state of dead pod {}", pod.name());
            if let Err(e) = pod.remove() {
                tracing::warn!("cannot remove state of dead pod {}: {}", pod.name(), super::error_chain(&e));
            }
        }
    }
}

/// The start time (clock ticks since boot) of a process, or None if gone.
pub fn process_start_time(pid: Pid) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and ')': fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')': state is field 3; starttime is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The sum of the peak RSS (`VmHWM`) of the processes descended from
/// `pod_pid` (the pod process, as the host sees it): the pod's containers
/// while they run, in bytes. None when there are none to read. Each process
/// counts its own peak, so the sum may exceed what was in use at any one
/// time; processes that have ended are not counted (the pod process adds
/// their peaks at exit).
pub fn live_peak_rss(pod_pid: Pid) -> Option<u64> {
    let mut children: std::collections::HashMap<i32, Vec<i32>> = std::collections::HashMap::new();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if let Some(ppid) = parent_pid(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut total = None;
    let mut stack = children.get(&pod_pid.as_raw()).cloned().unwrap_or_default();
    while let Some(pid) = stack.pop() {
        if let Some(kib) = peak_rss_kib(pid) {
            *total.get_or_insert(0u64) += kib * 1024;
        }
        stack.extend(children.get(&pid).into_iter().flatten());
    }
    total
}

fn parent_pid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the last ')': state, then ppid.
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

fn peak_rss_kib(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.split_whitespace().next()?.parse().ok()
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let data = serde_json::to_vec_pretty(value).map_err(|source| StateError::Json { path: path.to_path_buf(), source })?;
    if let Err(e) = fs::write(&tmp, data) {
        // A full disk leaves no half-written file behind.
        let _ = fs::remove_file(&tmp);
        return Err(io_at(&tmp)(e));
    }
    fs::rename(&tmp, path).map_err(io_at(path))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StateError> {
    let data = fs::read(path).map_err(io_at(path))?;
    serde_json::from_slice(&data).map_err(|source| StateError::Json { path: path.to_path_buf(), source })
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_and_of_a_gone_process() {
        let me = process_start_time(Pid::this()).unwrap();
        assert!(me > 0);
        assert_eq!(process_start_time(Pid::from_raw(i32::MAX)), None);
    }

    #[test]
    fn live_peak_rss_sums_descendants() {
        // A child holding 32 MiB it has touched, under this test process.
        let mut child = std::process::Command::new("/bin/busybox")
            .args(["sh", "-c", "x=$(/bin/busybox head -c 33554432 /dev/zero | /bin/busybox tr '\\0' a); /bin/busybox sleep 30"])
            .spawn()
            .unwrap();
        let me = Pid::this();
        let mut peak = 0;
        for _ in 0..200 {
            peak = live_peak_rss(me).unwrap_or(0);
            if peak >= 32 << 20 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(peak >= 32 << 20, "peak {peak}");
        assert_eq!(live_peak_rss(Pid::from_raw(i32::MAX)), None);
    }

    #[test]
    fn create_refuses_a_live_pod_and_replaces_a_dead_one() {
        let t = tempfile::tempdir().unwrap();
        let d = PodDir::create(t.path(), "p").unwrap();
        let me = Owner { pid: std::process::id() as i32, start_time: process_start_time(Pid::this()).unwrap(), pod_pid: 1, created: 0 };
        d.write_owner(&me).unwrap();
        assert!(matches!(PodDir::create(t.path(), "p"), Err(StateError::Exists(_))));
        // A dead owner (a pid with another start time).
        d.write_owner(&Owner { start_time: me.start_time + 1, ..me }).unwrap();
        fs::write(d.log_path("x"), "old").unwrap();
        let d2 = PodDir::create(t.path(), "p").unwrap();
        assert!(!d2.log_path("x").exists());
        assert_eq!(list(t.path()).len(), 1);
        assert!(matches!(PodDir::open(t.path(), "../p"), Err(StateError::NotFound(_))));
        // Compiled seccomp programs are kept next to `pods/`, and only there.
        assert_eq!(d2.seccomp_cache(), Some(t.path().join("seccomp")));
        assert_eq!(PodDir { dir: t.path().join("elsewhere") }.seccomp_cache(), None);
    }
}
