//! The pod process: `berth __internal pod STATE_DIR`.
//!
//! It starts as PID 1 of a fresh user + PID namespace (made by
//! [`super::launch`]), makes the namespaces every container shares (mount,
//! cgroup, network, IPC, UTS), and drives libcontainer as uid 0 of the user
//! namespace: init containers in order, then sidecars, readiness probes and
//! the main container with berth's own stdio. A single-threaded
//! [`super::event_loop`] over a signalfd, the sidecar pipes and the terminal
//! relay waits for the main container to end, then
//! tears the pod down and exits with the main container's status. If it dies
//! (berth was SIGKILLed: parent-death signal), the kernel kills every process
//! of its PID namespace, and its mounts vanish with its mount namespace.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libcontainer::container::Container;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::container::{self, CommandProblem, ContainerError, PodContext};
use super::event_loop::{EventLoop, SourceId};
use super::plan::{Network, PodPlan, ProbeAction, Role};
use super::signals::{self, Signals};
use super::state::{Phase, PodDir, StateError, Status};
use super::pty::{ConsoleSocket, Relay};
use super::seccomp::{Filter, Filters};
use super::stdio::LogPump;

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("invalid pod plan")]
    Plan(#[from] super::plan::PlanError),
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
    Tty { name: String, source: super::pty::PtyError },
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
}

/// Runs the pod described in `dir` and returns the main container's exit
/// status.
pub fn run(dir: &Path) -> Result<u8, PodError> {
    if let Err(e) = super::stdio::avoid_readonly_dev_null() {
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
    let mut pod = Pod { dir, plan, signals, events: EventLoop::new(), tty: None, members, others: HashMap::new(), stop: None, kill_main_at: None, state_root, own_cgroup: false };
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
    /// The namespaces and files shared by every container.
    fn setup(&mut self) -> Result<(), PodError> {
        let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWCGROUP | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
        if self.plan.network == Network::Private {
            flags |= CloneFlags::CLONE_NEWNET;
        }
        unshare(flags).map_err(setup_err("unshare"))?;
        // Nothing mounted here may propagate back to the host.
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
            .map_err(setup_err("making / a slave mount"))?;
        // A /proc of our PID namespace: pids from waitpid are valid in it.
        let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(Some("proc"), "/proc", Some("proc"), nosuid, None::<&str>).map_err(setup_err("mounting /proc"))?;
        // libcontainer rewrites its state files at every step and deletes
        // them at teardown: keep them in memory, in this mount namespace
        // (where `berth exec` finds them too), instead of the disk.
        mount(Some("tmpfs"), &self.state_root, Some("tmpfs"), nosuid, Some("mode=700,size=16m"))
            .map_err(setup_err("mounting a tmpfs for the containers' state"))?;
        // A private cgroup2 view: libcontainer then sees a pure cgroup v2
        // host even on a hybrid one. Its root is the pod's own cgroup where
        // berth made one. Elsewhere it is read-only: libcontainer tolerates
        // EROFS and leaves every process where it is, rather than make
        // cgroups or enable controllers in a cgroup that is not the pod's.
        let cg = Path::new("/sys/fs/cgroup");
        let own = self.dir.read_cgroup();
        let view = if own.is_some() { nosuid } else { nosuid | MsFlags::MS_RDONLY };
        match mount(Some("tmpfs"), cg, Some("tmpfs"), nosuid, Some("mode=755"))
            .and_then(|()| mount(Some("cgroup2"), cg, Some("cgroup2"), view, None::<&str>))
        {
            Ok(()) => {
                if let Some(own) = own {
                    match super::cgroup::enter_leaf(cg, &own.controllers) {
                        Ok(()) => self.own_cgroup = true,
                        Err(e) => tracing::warn!("setting up the pod cgroup {}: {e}: no resource limits", own.dir.display()),
                    }
                }
            }
            Err(e) => tracing::warn!("cannot mount a cgroup2 view at /sys/fs/cgroup ({e}): no resource limits"),
        }
        if self.plan.network == Network::Private {
            super::net::loopback_up().map_err(|source| PodError::Setup { what: "bringing up lo", source })?;
        }
        nix::unistd::sethostname(&self.plan.name).map_err(setup_err("sethostname"))?;

        let w = |p: PathBuf, text: &str| fs::write(&p, text).map_err(|source| PodError::Setup { what: "writing /etc files", source });
        w(self.dir.etc("hosts"), &hosts_file(&self.plan))?;
        w(self.dir.etc("hostname"), &format!("{}\n", self.plan.name))?;
        if let Ok(r) = fs::read("/etc/resolv.conf") {
            fs::write(self.dir.etc("resolv.conf"), r).map_err(|source| PodError::Setup { what: "writing /etc files", source })?;
        }
        Ok(())
    }

    fn run_containers(&mut self) -> Result<u8, PodError> {
        let single_id = single_gid_mapped();
        let hosts = self.dir.etc("hosts");
        let hostname = self.dir.etc("hostname");
        let resolv = self.dir.etc("resolv.conf");
        let ctx = PodContext {
            pod: &self.plan.name,
            network: self.plan.network,
            share_pid: self.plan.share_pid,
            single_id,
            cgroups: self.own_cgroup,
            hosts: &hosts,
            hostname: &hostname,
            resolv_conf: resolv.exists().then_some(resolv.as_path()),
            workspace: &self.plan.workspace,
            workspace_path: &self.plan.workspace_path,
        };
        // Every bundle first: a broken one fails before anything runs.
        // Each distinct seccomp profile is compiled once (see `seccomp`).
        let mut filters = Filters::new(self.dir.seccomp_cache());
        let mut bundles = Vec::new();
        for (i, c) in self.plan.containers.iter().enumerate() {
            let rootfs = container::prepare_rootfs(c, &self.dir.rootfs(&c.name))?;
            let mut spec = container::pod_spec(c, &rootfs, &ctx)?;
            if c.role == Role::Main {
                container::check_command(&spec, &rootfs).map_err(|(path, why)| ContainerError::Command { name: c.name.clone(), path, why })?;
            }
            let b = self.dir.bundle(&c.name);
            let invalid = |e: super::seccomp::SeccompError| ContainerError::Invalid { name: c.name.clone(), what: super::error_chain(&e) };
            let filter = filters.take(&mut spec).map_err(invalid)?;
            if let Some(f) = &filter {
                super::seccomp::add_to_bundle(&b, &mut spec, f).map_err(invalid)?;
            }
            self.members[i].seccomp = filter;
            container::write_bundle(&b, &spec).map_err(|source| ContainerError::Io { name: c.name.clone(), source })?;
            bundles.push(b);
        }

        for (i, bundle) in bundles.iter().enumerate() {
            if self.members[i].role != Role::Init {
                continue;
            }
            self.start(i, bundle)?;
            let name = self.members[i].name.clone();
            let code = self.wait_for(|p| p.members[i].exit)?;
            if code != 0 {
                return Err(PodError::InitFailed { name, code });
            }
        }
        for (i, bundle) in bundles.iter().enumerate() {
            if self.members[i].role == Role::Sidecar {
                self.start(i, bundle)?;
            }
        }
        for i in 0..self.members.len() {
            if self.members[i].role == Role::Sidecar {
                self.wait_ready(i)?;
            }
        }
        let main = self.members.iter().position(|m| m.role == Role::Main).unwrap_or(self.members.len() - 1);
        self.start(main, &bundles[main])?;
        self.write_status(Phase::Running, None);
        // Only the main container holds berth's stdin/stdout now: their EOF
        // must follow its end, not the sidecars' teardown.
        super::stdio::release_stdin_stdout();
        loop {
            if let Some(code) = self.members[main].exit {
                if let Some(tty) = self.tty.take() {
                    self.events.finish(tty);
                }
                return Ok(code);
            }
            // A main container that outlives a stop signal by the grace
            // period is killed, as `podman stop` does.
            let timeout = match self.kill_main_at {
                Some(at) if at <= Instant::now() => {
                    if let Some(pid) = self.members[main].pid {
                        tracing::info!("main container ignored the stop signal: SIGKILL");
                        let _ = kill(pid, Signal::SIGKILL);
                    }
                    self.kill_main_at = None;
                    None
                }
                Some(at) => Some(at - Instant::now()),
                None => None,
            };
            self.step(timeout)?;
        }
    }

    /// Creates and starts container `i`; init containers and sidecars get
    /// /dev/null and a log pipe, the main one our own fds 0/1/2.
    fn start(&mut self, i: usize, bundle: &Path) -> Result<(), PodError> {
        if let Some(sig) = self.stop {
            return Err(PodError::Interrupted(sig));
        }
        let name = self.members[i].name.clone();
        let stdio = if self.members[i].role == Role::Main {
            None
        } else {
            let echo = !self.plan.quiet_sidecars;
            let (pump, stdio) = LogPump::new(&name, &self.dir.log_path(&name), echo)
                .map_err(|source| ContainerError::Io { name: name.clone(), source })?;
            self.events.add(Box::new(pump));
            Some(stdio)
        };
        let console = if self.members[i].role == Role::Main && self.plan.containers[i].tty {
            let path = self.dir.dir.join("console.sock");
            Some(ConsoleSocket::bind(&path).map_err(|source| PodError::Tty { name: name.clone(), source })?)
        } else {
            None
        };
        let state_root = self.state_root.clone();
        let console_path = console.as_ref().map(|c| c.path().to_path_buf());
        let seccomp = self.members[i].seccomp.clone();
        let mut c = self.signals.unblocked(|| container::create(&name, &state_root, bundle, stdio, console_path.as_deref(), seccomp))?;
        let pid = c.pid();
        // Recorded before start(): teardown deletes (and reaps) it either way.
        self.members[i].container = Some(c.clone());
        if let Some(console) = console {
            // The init sent the master before build() returned.
            let relay = console
                .receive()
                .and_then(|master| Relay::new(master).map_err(super::pty::PtyError::Receive));
            match relay {
                Ok(r) => self.tty = Some(self.events.add(Box::new(r))),
                Err(source) => {
                    if let Some(pid) = pid {
                        let _ = kill(pid, Signal::SIGKILL);
                        self.members[i].pid = Some(pid);
                    }
                    return Err(PodError::Tty { name, source });
                }
            }
        }
        if let Err(source) = c.start() {
            if let Some(pid) = pid {
                let _ = kill(pid, Signal::SIGKILL);
                self.members[i].pid = Some(pid);
            }
            return Err(ContainerError::Libcontainer { name, source: Box::new(source) }.into());
        }
        self.members[i].container = Some(c);
        self.members[i].pid = pid;
        tracing::debug!("started {name} as pid {pid:?}");
        // The main container's start is recorded as Running by the caller.
        if self.members[i].role != Role::Main {
            self.write_status(Phase::Starting, None);
        }
        Ok(())
    }

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

    /// Waits until sidecar `i` passes its readiness probe (if any).
    fn wait_ready(&mut self, i: usize) -> Result<(), PodError> {
        let Some(probe) = self.plan.containers[i].readiness.clone() else { return Ok(()) };
        let name = self.members[i].name.clone();
        self.sleep(probe.initial_delay)?;
        let mut failures = 0;
        loop {
            self.check_provisioning()?;
            let attempt = Instant::now();
            let result = match &probe.action {
                ProbeAction::Tcp(port) => {
                    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
                    std::net::TcpStream::connect_timeout(&addr, probe.timeout).map(drop).map_err(|e| e.to_string())
                }
                ProbeAction::Exec(cmd) => self.probe_exec(&name, cmd.clone(), probe.timeout),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(why) => {
                    failures += 1;
                    tracing::debug!("readiness of {name}: {why}");
                    if failures >= probe.failure_threshold {
                        return Err(PodError::NotReady { name, why: format!("{why} ({failures} tries)") });
                    }
                }
            }
            self.sleep(probe.period.saturating_sub(attempt.elapsed()))?;
        }
    }

    fn probe_exec(&mut self, name: &str, cmd: Vec<String>, timeout: Duration) -> Result<(), String> {
        let null = || fs::File::open("/dev/null").map(Into::into);
        let stdio = match (null(), null(), null()) {
            (Ok(stdin), Ok(stdout), Ok(stderr)) => super::stdio::ContainerStdio { stdin, stdout, stderr },
            _ => return Err("cannot open /dev/null".into()),
        };
        let state_root = self.state_root.clone();
        let pid = self
            .signals
            .unblocked(|| container::exec(name, &state_root, cmd, HashMap::new(), Some(stdio)))
            .map_err(|e| super::error_chain(&e))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(code) = self.others.remove(&pid) {
                return if code == 0 { Ok(()) } else { Err(format!("probe command exited with {code}")) };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = kill(pid, Signal::SIGKILL);
                return Err(format!("probe command timed out after {timeout:?}"));
            }
            if self.step(Some(left)).is_err() || self.stop.is_some() {
                let _ = kill(pid, Signal::SIGKILL);
                return Err("interrupted".into());
            }
        }
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

    /// Reaps every exited child, recording statuses and peak RSS.
    fn reap(&mut self) {
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: rusage is plain data filled by the kernel.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: valid pointers; WNOHANG never blocks.
            let r = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut ru) };
            if r <= 0 {
                return;
            }
            let pid = Pid::from_raw(r);
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status) as u8
            } else if libc::WIFSIGNALED(status) {
                128u8.wrapping_add(libc::WTERMSIG(status) as u8)
            } else {
                continue;
            };
            if let Some(m) = self.members.iter_mut().find(|m| m.pid == Some(pid)) {
                tracing::debug!("{} exited with {code}", m.name);
                m.exit = Some(code);
                m.max_rss_kib = ru.ru_maxrss.max(0) as u64;
            } else {
                self.others.insert(pid, code);
            }
        }
    }

    /// Stops whatever still runs (SIGTERM, SIGKILL after the grace period),
    /// reaps it, deletes the containers' state and drains the logs.
    fn teardown(&mut self) {
        let running = |p: &Pod| p.members.iter().any(Member::running);
        // Nothing to stop: Exited follows at once.
        if running(self) {
            self.write_status(Phase::Stopping, None);
            for m in self.members.iter().filter(|m| m.running()) {
                if let Some(pid) = m.pid {
                    let _ = kill(pid, Signal::SIGTERM);
                }
            }
            let end = Instant::now() + self.plan.grace;
            while running(self) && Instant::now() < end {
                let _ = self.step(Some(end.saturating_duration_since(Instant::now())));
            }
            for m in self.members.iter().filter(|m| m.running()) {
                if let Some(pid) = m.pid {
                    tracing::debug!("{} ignored SIGTERM: SIGKILL", m.name);
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
            let end = Instant::now() + Duration::from_secs(5);
            while running(self) && Instant::now() < end {
                let _ = self.step(Some(Duration::from_millis(100)));
            }
        }
        for m in &mut self.members {
            if let Some(mut c) = m.container.take() {
                // Never delete(true)/kill(_, true): with no cgroup path of
                // its own they act on the whole cgroup (ours).
                if let Err(e) = c.delete(false) {
                    tracing::debug!("deleting container {}: {e}", m.name);
                }
            }
        }
        // Output still in the pipes (the writers are gone: EOF ends each).
        self.events.finish_all();
    }

    fn peak_memory(&self) -> Option<u64> {
        if self.own_cgroup {
            if let Some(peak) = super::cgroup::read_peak(Path::new("/sys/fs/cgroup")) {
                return Some(peak);
            }
        }
        let rss = |role: Role| self.members.iter().filter(move |m| m.role == role).map(|m| m.max_rss_kib);
        let inits = rss(Role::Init).max().unwrap_or(0);
        let rest: u64 = rss(Role::Sidecar).chain(rss(Role::Main)).sum();
        let kib = inits.max(rest);
        (kib > 0).then_some(kib * 1024)
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
            tracing::debug!("writing pod status: {}", super::error_chain(&e));
        }
    }
}

/// `/etc/hosts` for every container: localhost, the pod name and each
/// container name on 127.0.0.1, then the plan's extra entries.
pub fn hosts_file(plan: &PodPlan) -> String {
    let mut s = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    s.push_str("127.0.0.1\t");
    s.push_str(&plan.name);
    for c in &plan.containers {
        if c.name != plan.name {
            s.push(' ');
            s.push_str(&c.name);
        }
    }
    s.push('\n');
    for (addr, names) in &plan.extra_hosts {
        s.push_str(&format!("{addr}\t{}\n", names.join(" ")));
    }
    s
}

/// True when the user namespace maps a single gid (no subordinate range).
fn single_gid_mapped() -> bool {
    let map = fs::read_to_string("/proc/self/gid_map").unwrap_or_default();
    let total: u64 = map.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()).sum();
    total <= 1
}

