//! Starting the pod's containers: every bundle prepared first, then init
//! containers one after another, sidecars (and their readiness), and the
//! main container, which runs until the pod ends. A sidecar placed before an
//! init container (Kubernetes' native sidecar) starts in its turn and is
//! ready before the next container starts.

use std::path::Path;
use std::time::Instant;

use nix::sys::signal::{kill, Signal};

use super::container::{self, ContainerError, PodContext};
use super::pty::{ConsoleSocket, Relay};
use super::seccomp::Filters;
use super::stdio::LogPump;
use super::{Pod, PodError};
use crate::runtime::plan::Role;
use crate::runtime::state::Phase;

impl Pod {
    /// Prepares every bundle, starts the members in order and returns the
    /// main container's exit status.
    pub(super) fn run_containers(&mut self) -> Result<u8, PodError> {
        let single_id = super::setup::single_gid_mapped();
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
        // Image volumes before the containers that bind-mount them.
        for v in &self.plan.image_volumes {
            container::prepare_tree(&v.name, &v.path, &v.tree, &v.path)?;
        }
        // Every bundle first: a broken one fails before anything runs.
        // Each distinct seccomp profile is compiled once (see `seccomp`).
        let mut filters = Filters::new(self.dir.seccomp_cache());
        let mut bundles = Vec::new();
        // The main command may be one an init container puts on a volume:
        // where it is missing now, it is looked for again after the last.
        let last_init = self.members.iter().rposition(|m| m.role == Role::Init);
        let mut check_main_later = None;
        for (i, c) in self.plan.containers.iter().enumerate() {
            let rootfs = container::prepare_rootfs(c, &self.dir.rootfs(&c.name))?;
            let mut spec = container::pod_spec(c, &rootfs, &ctx)?;
            container::ensure_cwd(&spec, &rootfs).map_err(|e| ContainerError::Invalid {
                name: c.name.clone(),
                what: format!("creating its working directory {}: {e}", spec.process().as_ref().map_or(Path::new("/"), |p| p.cwd()).display()),
            })?;
            if c.role == Role::Main {
                if let Err((path, why)) = container::check_command(&spec, &rootfs) {
                    if last_init.is_none() {
                        return Err(ContainerError::Command { name: c.name.clone(), path, why }.into());
                    }
                    check_main_later = Some((c.name.clone(), spec.clone(), rootfs.clone()));
                }
            }
            let b = self.dir.bundle(&c.name);
            let invalid = |e: super::seccomp::SeccompError| ContainerError::Invalid { name: c.name.clone(), what: crate::runtime::error_chain(&e) };
            let filter = filters.take(&mut spec).map_err(invalid)?;
            if let Some(f) = &filter {
                super::seccomp::add_to_bundle(&b, &mut spec, f).map_err(invalid)?;
            }
            self.members[i].seccomp = filter;
            container::write_bundle(&b, &spec).map_err(|source| ContainerError::Io { name: c.name.clone(), source })?;
            bundles.push(b);
        }
        // The network helper set the namespace up meanwhile.
        if let Some(helper) = &mut self.net {
            helper.wait_ready()?;
        }

        // The sidecars after the last init container start together, then
        // are waited for together.
        let mut together = Vec::new();
        for (i, bundle) in bundles.iter().enumerate() {
            match self.members[i].role {
                Role::Init => {
                    self.start(i, bundle)?;
                    let name = self.members[i].name.clone();
                    let code = self.wait_for(|p| p.members[i].exit)?;
                    if code != 0 {
                        return Err(PodError::InitFailed { name, code });
                    }
                    if Some(i) == last_init {
                        if let Some((name, spec, rootfs)) = check_main_later.take() {
                            container::check_command(&spec, &rootfs).map_err(|(path, why)| ContainerError::Command { name, path, why })?;
                        }
                    }
                }
                Role::Sidecar if last_init.is_some_and(|l| i < l) => {
                    self.start(i, bundle)?;
                    self.wait_ready(i)?;
                }
                Role::Sidecar => {
                    self.start(i, bundle)?;
                    together.push(i);
                }
                Role::Main => {}
            }
        }
        for i in together {
            self.wait_ready(i)?;
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
            let (pump, mut stdio) = LogPump::new(&name, &self.dir.log_path(&name), echo)
                .map_err(|source| ContainerError::Io { name: name.clone(), source })?;
            self.events.add(Box::new(pump));
            if self.plan.containers[i].open_stdin {
                let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| ContainerError::Io { name: name.clone(), source: e.into() })?;
                stdio.stdin = read;
                // Never written, never closed: the pod process's end keeps
                // the pipe open until the pod process itself exits.
                std::mem::forget(write);
            }
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
}
