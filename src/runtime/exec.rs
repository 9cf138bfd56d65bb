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
    // All opened first: after joining the mount namespace, /proc is the pod's.
    let (user, mnt, cgroup, pidns) = (open("user")?, open("mnt")?, open("cgroup")?, open("pid")?);
    let shared = [(open("net")?, CloneFlags::CLONE_NEWNET), (open("ipc")?, CloneFlags::CLONE_NEWIPC), (open("uts")?, CloneFlags::CLONE_NEWUTS)];
    crate::userns::join_fd(user).map_err(|e| ExecError::Join(std::io::Error::other(e)))?;
    setns(mnt, CloneFlags::CLONE_NEWNS).map_err(|e| join_err(e.into()))?;
    setns(cgroup, CloneFlags::CLONE_NEWCGROUP).map_err(|e| join_err(e.into()))?;
    setns(pidns, CloneFlags::CLONE_NEWPID).map_err(|e| join_err(e.into()))?;
    // The pod's shared namespaces, which container specs do not list (so a
    // tenant exec does not join them itself).
    for (fd, flag) in shared {
        setns(fd, flag).map_err(|e| join_err(e.into()))?;
    }
    nix::unistd::chdir("/").map_err(|e| join_err(e.into()))?;

    let signals = Signals::install().map_err(|e| join_err(e.into()))?;
    let set = super::signals::handled_set();
    // The pod's /proc (in its mount namespace) only shows processes of its
    // PID namespace, and libcontainer reads /proc/self: only a child made
    // after setns(CLONE_NEWPID) is in it.
    // SAFETY: single-threaded caller (setns of the user namespace above
    // succeeds only then).
    let code = match unsafe { nix::unistd::fork() }.map_err(|e| join_err(e.into()))? {
        nix::unistd::ForkResult::Child => {
            let state_root = dir.containers_root();
            let code = match signals.unblocked(|| container::exec(name, &state_root, cmd, HashMap::new(), None)) {
                Ok(pid) => wait_forwarding(pid, &set).unwrap_or(crate::exit::PROVISION),
                Err(e) => {
                    crate::cli::report(&anyhow::Error::new(e));
                    crate::exit::PROVISION
                }
            };
            std::process::exit(code.into());
        }
        nix::unistd::ForkResult::Parent { child } => wait_forwarding(child, &set)?,
    };
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
    Ok(code)
}
