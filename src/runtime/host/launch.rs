//! berth's side of a running pod: start the pod process, relay signals,
//! wait, clean up.
//!
//! Call [`launch`] from the process's main thread once no other thread
//! (tokio's) runs: the pod process gets `PR_SET_PDEATHSIG=SIGKILL`, which the
//! kernel ties to the thread that created it, so if berth is SIGKILLed the
//! pod process dies, and with it (PID 1 of the pod's PID namespace) every
//! container.


use std::os::fd::AsRawFd as _;

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::cgroup::{self, PodCgroup};
use crate::reexec::Entry;
use crate::runtime::signals;
use crate::runtime::state::{self, Owner, PodDir, StateError};
use crate::runtime::PodPlan;
use crate::userns::{IdMapping, SpawnOptions, UsernsError};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("invalid pod plan")]
    Plan(#[from] crate::runtime::plan::PlanError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("opening the pod's state directory")]
    StateDir(#[source] std::io::Error),
    #[error("starting the pod process")]
    Spawn(#[from] UsernsError),
    #[error("waiting for the pod process: {0}")]
    Wait(nix::Error),
}

/// What [`launch`] needs besides the plan.
pub struct LaunchOptions<'a> {
    pub mapping: &'a IdMapping,
    /// berth's `-v` count, passed on to the pod process.
    pub verbose: u8,
    /// Keep the state directory after the pod ends.
    pub keep_state: bool,
}

/// Runs `plan` in the new pod directory `dir` and returns the exit status:
/// the main container's (128+N for signal N), or 125/126/127 when the pod
/// could not start (the pod process has then printed why on stderr).
///
/// While it waits, SIGINT, SIGTERM and SIGHUP are forwarded to the pod
/// process (which forwards them to the main container), and berth's own
/// stdin/stdout are released so their EOF follows the main container.
pub fn launch(plan: &PodPlan, dir: &PodDir, opts: &LaunchOptions<'_>) -> Result<u8, LaunchError> {
    plan.validate()?;
    dir.write_plan(plan)?;
    if opts.keep_state {
        dir.mark_kept()?;
    }
    // Blocked before the clone: the pod process inherits the mask and reads
    // these from its signalfd, so none is lost while it starts.
    let set = signals::handled_set();
    let mut old = nix::sys::signal::SigSet::empty();
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old)).map_err(LaunchError::Wait)?;
    // With a terminal, berth's own is raw while the pod runs (restored on
    // drop, whatever ends the pod); the pod process copies to and from it.
    let tty = plan.main().tty;
    let raw = if tty { crate::runtime::pod::pty::RawMode::stdin() } else { None };
    let cgroup = pod_cgroup(plan, dir);
    let result = run_pod_process(dir, opts, &set, tty, cgroup.as_ref());
    drop(raw);
    if let Some(cg) = cgroup {
        if let Err(e) = cg.remove() {
            tracing::warn!("removing cgroup {}: {e}", cg.dir.display());
        }
    }
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    if !opts.keep_state {
        if let Err(e) = dir.remove() {
            tracing::warn!("removing pod state {}: {}", dir.dir.display(), crate::runtime::error_chain(&e));
        }
    }
    result
}

/// The pod's own cgroup, where berth can make one: it gives the containers
/// their limits and the pod a boundary. Elsewhere the pod runs without,
/// and a warning says so when the plan asked for limits.
fn pod_cgroup(plan: &PodPlan, dir: &PodDir) -> Option<PodCgroup> {
    let wants_limits = plan.pids_limit.is_some() || plan.containers.iter().any(|c| !c.limits.is_empty());
    let cg = match PodCgroup::create(&plan.name, plan.pids_limit) {
        Ok(cg) => cg,
        Err(e) if wants_limits => {
            tracing::warn!("resource limits are not applied: {}", crate::runtime::error_chain(&e));
            return None;
        }
        Err(e) => {
            tracing::debug!("the pod gets no cgroup of its own: {}", crate::runtime::error_chain(&e));
            return None;
        }
    };
    if wants_limits {
        let missing: Vec<&str> = cgroup::CONTROLLERS.into_iter().filter(|c| !cg.controllers.iter().any(|x| x == c)).collect();
        if !missing.is_empty() {
            tracing::warn!("the {} controllers are not available in {}: those limits are not applied", missing.join(", "), cg.dir.display());
        }
    }
    if let Err(e) = dir.write_cgroup(&cg) {
        tracing::warn!("recording the pod's cgroup: {}; running without it", crate::runtime::error_chain(&e));
        let _ = cg.remove();
        return None;
    }
    tracing::debug!("pod cgroup {}", cg.dir.display());
    Some(cg)
}

fn run_pod_process(
    dir: &PodDir,
    opts: &LaunchOptions<'_>,
    set: &nix::sys::signal::SigSet,
    tty: bool,
    cgroup: Option<&PodCgroup>,
) -> Result<u8, LaunchError> {
    // The pod process finds its state through an inherited descriptor: its
    // command line, which every container of a shared PID namespace can
    // read as /proc/1/cmdline, names no host path.
    let state = std::fs::File::open(&dir.dir).map_err(LaunchError::StateDir)?;
    let spawn_opts = SpawnOptions {
        extra_namespaces: CloneFlags::CLONE_NEWPID,
        parent_death_signal: Some(Signal::SIGKILL),
        keep_fds: vec![state.as_raw_fd()],
        cgroup: cgroup.map(|c| c.dir.clone()),
        stdout_stderr: None,
    };
    let pid = Entry::pod_by_fd(&state).spawn(opts.mapping, opts.verbose, &spawn_opts)?;
    drop(state);
    let me = Pid::this();
    dir.write_owner(&Owner {
        pid: me.as_raw(),
        start_time: state::process_start_time(me).unwrap_or(0),
        pod_pid: pid.as_raw(),
        created: state::now_unix(),
    })?;
    crate::runtime::pod::stdio::release_stdin_stdout();
    wait_forwarding(pid, set, tty)
}

/// Waits for `pid`, forwarding SIGINT/SIGTERM/SIGHUP to it, and SIGWINCH
/// when `winch` (`pid` relays a terminal). The signals in `set` must be
/// blocked in the calling thread.
pub fn wait_forwarding(pid: Pid, set: &nix::sys::signal::SigSet, winch: bool) -> Result<u8, LaunchError> {
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => {
                if let Some(code) = crate::exit::from_wait(status) {
                    return Ok(code);
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(LaunchError::Wait(e)),
        }
        match set.wait() {
            Ok(sig) if signals::FORWARDED.contains(&sig) || (winch && sig == Signal::SIGWINCH) => {
                tracing::debug!("forwarding {sig} to the pod");
                let _ = kill(pid, sig);
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(LaunchError::Wait(e)),
        }
    }
}

