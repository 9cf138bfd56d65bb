//! The pod process: `berth __internal pod STATE_DIR`.
//!
//! It starts as PID 1 of a fresh user + PID namespace (made by
//! [`crate::runtime::host::launch`]), makes the namespaces every container
//! shares (mount, cgroup, network, IPC, UTS), and drives libcontainer as uid
//! 0 of the user namespace: init containers in order, then sidecars,
//! readiness probes and the main container with berth's own stdio. A
//! single-threaded [`crate::runtime::event_loop`] over a signalfd, the
//! sidecar pipes and the terminal relay waits for the main container to end,
//! then tears the pod down and exits with the main container's status. If it
//! dies (berth was SIGKILLed: parent-death signal), the kernel kills every
//! process of its PID namespace, and its mounts vanish with its mount
//! namespace.
//!
//! Here: [`run`], the `Pod` state and its event-loop turn. By concern:
//! `setup` (namespaces, mounts, /etc files), `start` (bundles, start order,
//! starting a member), `probe` (readiness), `reap` (exit statuses),
//! `teardown` (stopping, cleanup, peak memory). Beside them, what the pod
//! process uses: [`container`] (one container's spec and libcontainer
//! calls), [`stdio`] (sidecar logs), [`pty`] (`-t`), [`seccomp`] (filters
//! compiled once, loaded by the container), [`net`] (the network namespace
//! by mode, and the outbound network's helper).

pub mod container;
pub mod net;
pub mod pty;
pub mod seccomp;
pub mod stdio;

mod probe;
mod reap;
mod setup;
mod start;
mod teardown;

pub use setup::hosts_file;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libcontainer::container::Container;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::runtime::event_loop::{EventLoop, SourceId};
use crate::runtime::plan::{PodPlan, Role};
use crate::runtime::signals::{self, Signals};
use crate::runtime::state::{Phase, PodDir, StateError, Status};
use container::{CommandProblem, ContainerError};
use seccomp::Filter;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("invalid pod plan")]
    Plan(#[from] crate::runtime::plan::PlanError),
    #[error("setting up the pod's namespaces: {what}")]
    Setup { what: &'static str, source: io::Error },
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("init container {name} exited with status {code}")]
    InitFailed { name: String, code: u8 },
    #[error("sidecar {name} exited with status {code} before the main container started")]
    SidecarExited { name: String, code: u8 },
    #[error("sidecar {name} did not become ready: {why}")]
    NotReady { name: String, why: String },
    #[error("interrupted by {0} while the pod was starting")]
    Interrupted(Signal),
    #[error("container {name}: its terminal")]
    Tty { name: String, source: pty::PtyError },
    #[error("the pod's outbound network")]
    Network(#[from] crate::net::NetError),
}

impl PodError {
    /// The exit status berth reports for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            PodError::Container(ContainerError::Command { why: CommandProblem::NotFound, .. }) => crate::exit::NOT_FOUND,
            PodError::Container(ContainerError::Command { why: CommandProblem::NotExecutable, .. }) => crate::exit::CANNOT_EXEC,
            PodError::Interrupted(sig) => 128u8.wrapping_add(*sig as i32 as u8),
            _ => crate::exit::PROVISION,
        }
    }
}

fn setup_err(what: &'static str) -> impl FnOnce(nix::Error) -> PodError {
    move |e| PodError::Setup { what, source: e.into() }
}

/// One container's life in the pod process.
struct Member {
    name: String,
    role: Role,
    container: Option<Container>,
    pid: Option<Pid>,
    exit: Option<u8>,
    /// Peak RSS (KiB) of the init and the descendants it waited for.
    max_rss_kib: u64,
    /// The seccomp program its init loads (taken out of its spec).
    seccomp: Option<Arc<Filter>>,
}

impl Member {
    fn running(&self) -> bool {
        self.pid.is_some() && self.exit.is_none()
    }
}

/// The pod process's state: its plan, its members and its event loop.
struct Pod {
    dir: PodDir,
    plan: PodPlan,
    signals: Signals,
    /// The sidecars' log pumps and the main container's terminal relay.
    events: EventLoop,
    /// The main container's terminal (`-t`) in `events`.
    tty: Option<SourceId>,
    members: Vec<Member>,
    /// Exit statuses of other children (probe execs) by pid.
    others: HashMap<Pid, u8>,
    /// A stop signal that arrived before the main container ran.
    stop: Option<Signal>,
    /// When a main container that got a stop signal is killed.
    kill_main_at: Option<Instant>,
    /// The pod has a cgroup of its own (the root of its cgroup view), with
    /// controllers for the containers' limits.
    own_cgroup: bool,
    state_root: PathBuf,
    /// The outbound network's helper, stopped at teardown.
    net: Option<crate::net::Helper>,
}

/// Runs the pod described in `dir` and returns the main container's exit
/// status.
pub fn run(dir: &Path) -> Result<u8, PodError> {
    if let Err(e) = stdio::avoid_readonly_dev_null() {
        tracing::warn!("checking stdio for /dev/null: {e}");
    }
    let signals = Signals::install().map_err(setup_err("signals"))?;
    let dir = PodDir { dir: dir.to_path_buf() };
    let plan = dir.read_plan()?;
    plan.validate()?;
    let members = plan
        .containers
        .iter()
        .map(|c| Member { name: c.name.clone(), role: c.role, container: None, pid: None, exit: None, max_rss_kib: 0, seccomp: None })
        .collect();
    let state_root = dir.containers_root();
    let mut pod = Pod { dir, plan, signals, events: EventLoop::new(), tty: None, members, others: HashMap::new(), stop: None, kill_main_at: None, state_root, own_cgroup: false, net: None };
    pod.write_status(Phase::Starting, None);
    let outcome = pod.setup().and_then(|()| pod.run_containers());
    pod.teardown();
    let code = outcome.as_ref().ok().copied();
    pod.write_status(Phase::Exited, code);
    if let Some(peak) = pod.peak_memory() {
        let how = if pod.own_cgroup { "the pod cgroup's memory.peak" } else { "sum of the containers' peak RSS" };
        tracing::info!("pod {}: peak memory {} MiB ({how})", pod.plan.name, peak >> 20);
    }
    outcome
}

impl Pod {
    /// Runs the event loop until `done` yields a value; a stop signal or a
    /// sidecar's exit ends the wait with an error.
    fn wait_for<T>(&mut self, mut done: impl FnMut(&Pod) -> Option<T>) -> Result<T, PodError> {
        loop {
            if let Some(v) = done(self) {
                return Ok(v);
            }
            self.check_provisioning()?;
            self.step(None)?;
        }
    }

    fn check_provisioning(&self) -> Result<(), PodError> {
        if let Some(sig) = self.stop {
            return Err(PodError::Interrupted(sig));
        }
        if let Some(m) = self.members.iter().find(|m| m.role == Role::Sidecar && m.exit.is_some()) {
            return Err(PodError::SidecarExited { name: m.name.clone(), code: m.exit.unwrap_or(0) });
        }
        Ok(())
    }

    /// Runs the event loop for `d`.
    fn sleep(&mut self, d: Duration) -> Result<(), PodError> {
        let end = Instant::now() + d;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            self.check_provisioning()?;
            self.step(Some(left))?;
        }
    }

    /// One turn of the event loop: waits for a signal, sidecar output, the
    /// terminal or the timeout, and handles what came.
    fn step(&mut self, timeout: Option<Duration>) -> Result<(), PodError> {
        // The relay resizes itself on SIGWINCH.
        let drained = self.events.turn(Some(&self.signals), timeout).map_err(setup_err("poll"))?;
        for sig in drained {
            if sig == Signal::SIGCHLD {
                self.reap();
            } else if signals::FORWARDED.contains(&sig) {
                match self.members.iter().find(|m| m.role == Role::Main && m.running()).and_then(|m| m.pid) {
                    Some(pid) => {
                        tracing::debug!("forwarding {sig} to the main container");
                        let _ = kill(pid, sig);
                        self.kill_main_at.get_or_insert(Instant::now() + self.plan.grace);
                    }
                    None => self.stop = Some(sig),
                }
            }
        }
        Ok(())
    }

    fn write_status(&self, phase: Phase, exit_code: Option<u8>) {
        let s = Status {
            phase,
            containers: self.members.iter().map(|m| (m.name.clone(), m.pid.map(|p| p.as_raw()).unwrap_or(0))).collect(),
            main: self.plan.main().name.clone(),
            exit_code,
            peak_memory: self.peak_memory(),
        };
        if let Err(e) = self.dir.write_status(&s) {
            tracing::debug!("writing pod status: {}", crate::runtime::error_chain(&e));
        }
    }
}
