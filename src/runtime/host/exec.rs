//! `berth exec`: a process in a running container of a pod.
//!
//! The caller joins the pod process's user, mount and cgroup namespaces
//! (where libcontainer's state, the container rootfs mounts and the pod's
//! /proc live) and then does a libcontainer tenant exec, which joins the
//! container's own namespaces. stdio is passed through untouched, or with
//! `-t` relayed through a pseudo-terminal by the forked helper (see
//! [`crate::runtime::pod::pty`]).

use std::collections::HashMap;
use std::fs::File;

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::runtime::event_loop::EventLoop;
use crate::runtime::pod::container::{self, ContainerError};
use crate::runtime::pod::pty::{ConsoleSocket, PtyError, RawMode, Relay};
use crate::runtime::signals::{self, Signals};
use crate::runtime::state::{PodDir, StateError};

use super::launch::{wait_forwarding, LaunchError};

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("pod {0} runs in a VM (--isolation vm): berth exec does not reach into it")]
    InVm(String),
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
    #[error("the terminal")]
    Tty(#[from] PtyError),
    #[error("waiting for the command: {0}")]
    Poll(nix::Error),
}

/// Runs `cmd` in container `name` of the pod in `dir`, with this process's
/// stdio (or, with `tty`, a pseudo-terminal relayed to it), and returns its
/// exit status. The caller must be single-threaded.
pub fn exec(dir: &PodDir, name: &str, cmd: Vec<String>, tty: bool) -> Result<u8, ExecError> {
    let pod = dir.name();
    if let Err(e) = crate::runtime::pod::stdio::avoid_readonly_dev_null() {
        tracing::warn!("checking stdio for /dev/null: {e}");
    }
    if !dir.is_live() {
        return Err(ExecError::NotRunning(pod));
    }
    if dir.is_vm() {
        return Err(ExecError::InVm(pod));
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
    let join_cgroup = enter_pod_cgroup(dir);
    crate::userns::join_fd(user).map_err(|e| ExecError::Join(std::io::Error::other(e)))?;
    setns(mnt, CloneFlags::CLONE_NEWNS).map_err(|e| join_err(e.into()))?;
    if join_cgroup {
        setns(cgroup, CloneFlags::CLONE_NEWCGROUP).map_err(|e| join_err(e.into()))?;
    }
    setns(pidns, CloneFlags::CLONE_NEWPID).map_err(|e| join_err(e.into()))?;
    // The pod's shared namespaces, which container specs do not list (so a
    // tenant exec does not join them itself).
    for (fd, flag) in shared {
        setns(fd, flag).map_err(|e| join_err(e.into()))?;
    }
    nix::unistd::chdir("/").map_err(|e| join_err(e.into()))?;

    let signals = Signals::install().map_err(|e| join_err(e.into()))?;
    let set = crate::runtime::signals::handled_set();
    // The pod's /proc (in its mount namespace) only shows processes of its
    // PID namespace, and libcontainer reads /proc/self: only a child made
    // after setns(CLONE_NEWPID) is in it.
    // Raw until the helper ends (drop restores it, on errors too).
    let raw = if tty { RawMode::stdin() } else { None };
    // SAFETY: single-threaded caller (setns of the user namespace above
    // succeeds only then).
    let code = match unsafe { nix::unistd::fork() }.map_err(|e| join_err(e.into()))? {
        nix::unistd::ForkResult::Child => {
            // The parent restores the terminal, never the helper.
            std::mem::forget(raw);
            let state_root = dir.containers_root();
            let code = container::check_exec(name, &state_root, &cmd).map_err(ExecError::from).and_then(|()| if tty {
                relay_tty(dir, name, &state_root, cmd, &signals)
            } else {
                signals
                    .unblocked(|| container::exec(name, &state_root, cmd, HashMap::new(), None))
                    .map_err(ExecError::from)
                    .and_then(|pid| Ok(wait_forwarding(pid, &set, false)?))
            });
            let code = code.unwrap_or_else(|e| {
                crate::exit::report(&e);
                match e {
                    ExecError::Container(ContainerError::Command { why: container::CommandProblem::NotFound, .. }) => crate::exit::NOT_FOUND,
                    ExecError::Container(ContainerError::Command { why: container::CommandProblem::NotExecutable, .. }) => crate::exit::CANNOT_EXEC,
                    _ => crate::exit::PROVISION,
                }
            });
            std::process::exit(code.into());
        }
        nix::unistd::ForkResult::Parent { child } => wait_forwarding(child, &set, tty)?,
    };
    drop(raw);
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
    Ok(code)
}

/// Where the pod has a cgroup of its own, moves this process into it, so
/// that libcontainer can then move the command into its container's cgroup
/// (its limits apply). That needs write access to a cgroup above both the
/// caller's and the pod's, which a delegated tree gives only to processes
/// started inside it; from elsewhere the command runs in the caller's
/// cgroup, and then must not join the pod's cgroup namespace (whose root
/// would not hold it). Returns whether to join that namespace.
fn enter_pod_cgroup(dir: &PodDir) -> bool {
    let Some(cg) = dir.read_cgroup() else { return true };
    let procs = cg.dir.join(super::cgroup::POD_LEAF).join("cgroup.procs");
    match std::fs::write(&procs, "0") {
        Ok(()) => true,
        Err(e) => {
            tracing::info!("the command runs outside the pod's cgroup, without its limits: {}: {e}", procs.display());
            false
        }
    }
}

/// The helper's side of `exec -t`: starts `cmd` with a terminal and relays
/// it until the command ends, forwarding signals and window size changes.
fn relay_tty(dir: &PodDir, name: &str, state_root: &std::path::Path, cmd: Vec<String>, signals: &Signals) -> Result<u8, ExecError> {
    let me = std::process::id();
    let console = ConsoleSocket::bind(&dir.dir.join(format!("exec-{me}.sock")))?;
    let process_file = dir.dir.join(format!("exec-{me}.json"));
    let pid = signals.unblocked(|| container::exec_tty(name, state_root, cmd, console.path(), &process_file))?;
    let relay = match console.receive().and_then(|m| Relay::new(m).map_err(PtyError::Receive)) {
        Ok(r) => r,
        Err(e) => {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
            return Err(e.into());
        }
    };
    let mut events = EventLoop::new();
    let tty = events.add(Box::new(relay));
    loop {
        // The relay resizes itself on SIGWINCH.
        for sig in events.turn(Some(signals), None).map_err(ExecError::Poll)? {
            if sig == Signal::SIGCHLD {
                if let Some(code) = exited(pid)? {
                    events.finish(tty);
                    return Ok(code);
                }
            } else if signals::FORWARDED.contains(&sig) {
                let _ = kill(pid, sig);
            }
        }
    }
}

/// The exit status of `pid` if it has ended (reaped now).
fn exited(pid: Pid) -> Result<Option<u8>, ExecError> {
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return Ok(None),
            Ok(status) => {
                if let Some(code) = crate::exit::from_wait(status) {
                    return Ok(Some(code));
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(ExecError::Poll(e)),
        }
    }
}
