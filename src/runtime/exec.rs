//! `berth exec`: a process in a running container of a pod.
//!
//! The caller joins the pod process's user, mount and cgroup namespaces
//! (where libcontainer's state, the container rootfs mounts and the pod's
//! /proc live) and then does a libcontainer tenant exec, which joins the
//! container's own namespaces. stdio is passed through untouched.

use std::collections::HashMap;
use std::fs::File;

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::SigmaskHow;
use nix::unistd::Pid;

use super::container::{self, ContainerError};
use super::launch::{wait_forwarding, LaunchError};
use super::signals::Signals;
use super::state::{PodDir, StateError};

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("pod {0} is not running")]
    NotRunning(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("no container {container} in pod {pod}")]
    NoContainer { pod: String, container: String },
    #[error("joining the pod's namespaces: {0}")]
    Join(std::io::Error),
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Wait(#[from] LaunchError),
}

/// Runs `cmd` in container `name` of the pod in `dir`, with this process's
/// stdio, and returns its exit status. The caller must be single-threaded.
pub fn exec(dir: &PodDir, name: &str, cmd: Vec<String>) -> Result<u8, ExecError> {
    let pod = dir.name();
    if !dir.is_live() {
        return Err(ExecError::NotRunning(pod));
    }
    let plan = dir.read_plan()?;
    if !plan.containers.iter().any(|c| c.name == name) {
        return Err(ExecError::NoContainer { pod, container: name.to_string() });
    }
    let owner = dir.read_owner()?;
    let join_err = |e: std::io::Error| ExecError::Join(e);
    let open = |ns: &str| File::open(format!("/proc/{}/ns/{ns}", owner.pod_pid)).map_err(join_err);
    let (user, mnt, cgroup) = (open("user")?, open("mnt")?, open("cgroup")?);
    crate::userns::join_fd(user).map_err(|e| ExecError::Join(std::io::Error::other(e)))?;
    setns(mnt, CloneFlags::CLONE_NEWNS).map_err(|e| join_err(e.into()))?;
    setns(cgroup, CloneFlags::CLONE_NEWCGROUP).map_err(|e| join_err(e.into()))?;
    nix::unistd::chdir("/").map_err(|e| join_err(e.into()))?;

    let signals = Signals::install().map_err(|e| join_err(e.into()))?;
    let state_root = dir.containers_root();
    let pid: Pid = signals.unblocked(|| container::exec(name, &state_root, cmd, HashMap::new(), None))?;
    let code = wait_forwarding(pid, &super::signals::handled_set())?;
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&super::signals::handled_set()), None);
    Ok(code)
}
