//! A pod's outbound network: a user-mode network stack (pasta, else
//! slirp4netns) attached to a network namespace, so a rootless pod can reach
//! the host and beyond without privileges.
//!
//! One job, independent of the pod process so that the VM host can reuse it:
//! [`netns::create`] pins a fresh network namespace at a file, [`Helper::start`]
//! attaches pasta or slirp4netns to it (or [`Helper::spawn`], and
//! [`Helper::wait_ready`] once the caller has done its other work: pasta
//! takes ~60 ms to start), [`Helper::stop`] ends and reaps it.
//! The helper runs in the caller's network namespace (where the host network
//! is) and dies with its starter (`PR_SET_PDEATHSIG`); started from the pod
//! process it is also in the pod's PID namespace, which the kernel empties
//! when the pod ends. [`dns`] writes the pod's resolv.conf and finds the
//! address the host is reachable at.

pub mod dns;
pub mod netns;

mod pasta;
mod slirp;

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::pod::PortMapping;

/// The name containers reach the host by (podman's).
pub const HOST_NAME: &str = "host.containers.internal";

/// The tap device every user-mode stack needs.
const TUN: &str = "/dev/net/tun";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "the outbound network needs pasta or slirp4netns and neither is installed: install Debian's `passt` package \
         (apt-get install passt), or run with --network none"
    )]
    NoHelper,
    #[error(
        "cannot open {TUN} ({cause}): the outbound network needs it; as root, restore Debian's default mode with \
         `chmod 0666 {TUN}`, or run with --network none"
    )]
    Tun { cause: io::Error },
    #[error("starting {helper}")]
    Spawn { helper: &'static str, source: io::Error },
    #[error("{helper} failed to set up the pod network: {message}")]
    Failed { helper: &'static str, message: String },
    #[error("{helper} did not set up the pod network within {0:?}", TIMEOUT)]
    Timeout { helper: &'static str },
    #[error("{what}")]
    Namespace { what: &'static str, source: io::Error },
    #[error("publishing ports needs pasta (Debian package `passt`); slirp4netns is installed instead")]
    PortsNeedPasta,
}

/// How long a helper may take to configure the namespace.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Which user-mode stack serves the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pasta,
    Slirp4netns,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pasta => "pasta",
            Kind::Slirp4netns => "slirp4netns",
        }
    }
}

/// What the helper is asked for.
#[derive(Debug, Clone)]
pub struct NetOptions<'a> {
    /// The network namespace, pinned at a file ([`netns::create`]).
    pub netns: &'a Path,
    /// Host ports forwarded into the namespace.
    pub ports: &'a [PortMapping],
    /// Let the namespace reach the host's loopback through the gateway
    /// address (`host.containers.internal`).
    pub host_loopback: bool,
    /// Where the helper's own log and pid files go.
    pub work_dir: &'a Path,
}

/// A running helper, a child of the caller.
#[derive(Debug)]
pub struct Helper {
    kind: Kind,
    child: Child,
    /// How to tell it is ready; `None` once it is.
    ready: Option<Ready>,
    log: PathBuf,
    started: Instant,
    host: Option<Ipv4Addr>,
}

/// The sign a helper gives when the namespace is set up.
#[derive(Debug)]
enum Ready {
    /// pasta writes its pid file.
    PidFile(PathBuf),
    /// slirp4netns writes a byte to this (non-blocking) pipe.
    Pipe(fs::File),
}

impl Ready {
    fn check(&mut self) -> bool {
        match self {
            Ready::PidFile(p) => fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false),
            Ready::Pipe(f) => {
                use std::io::Read;
                let mut b = [0u8; 1];
                matches!(f.read(&mut b), Ok(1))
            }
        }
    }
}

/// pasta, else slirp4netns, from `PATH`.
pub fn find() -> Result<(Kind, PathBuf), NetError> {
    for kind in [Kind::Pasta, Kind::Slirp4netns] {
        if let Some(path) = crate::paths::find_executable(kind.name()) {
            return Ok((kind, path));
        }
    }
    Err(NetError::NoHelper)
}


/// Fails where this process cannot open the tap device (Debian's mode is
/// 0666; some hosts have 0600): the helper would fail the same way, less
/// clearly.
pub fn check_tun() -> Result<(), NetError> {
    fs::OpenOptions::new().read(true).write(true).open(TUN).map(drop).map_err(|cause| NetError::Tun { cause })
}

impl Helper {
    /// Starts the helper found on `PATH` for `opts.netns` and returns once
    /// the namespace has its interface, address and default route.
    pub fn start(opts: &NetOptions<'_>) -> Result<Helper, NetError> {
        let mut helper = Helper::spawn(opts)?;
        helper.wait_ready()?;
        Ok(helper)
    }

    /// Starts the helper without waiting for it: the caller does other work
    /// and calls [`Helper::wait_ready`] before the namespace is used. Call it
    /// from the network namespace the helper is to serve the pod from (the
    /// host's).
    pub fn spawn(opts: &NetOptions<'_>) -> Result<Helper, NetError> {
        check_tun()?;
        let (kind, path) = find()?;
        let started = Instant::now();
        let (child, ready, log) = match kind {
            Kind::Pasta => pasta::spawn(&path, opts)?,
            Kind::Slirp4netns => slirp::spawn(&path, opts)?,
        };
        let host = match kind {
            _ if !opts.host_loopback => None,
            // pasta copies the host's addresses and routes into the namespace.
            Kind::Pasta => dns::default_gateway(),
            Kind::Slirp4netns => Some(slirp::GATEWAY),
        };
        Ok(Helper { kind, child, ready: Some(ready), log, started, host })
    }

    /// Waits until the helper has set up the namespace (at once when it
    /// has already).
    pub fn wait_ready(&mut self) -> Result<(), NetError> {
        let Some(mut ready) = self.ready.take() else { return Ok(()) };
        wait_ready(self.kind, &mut self.child, &self.log, || ready.check())?;
        tracing::debug!("{} (pid {}) ready {:?} after its start", self.kind.name(), self.child.id(), self.started.elapsed());
        Ok(())
    }

    /// The address the host's loopback is reachable at from the namespace
    /// (`host.containers.internal`), where it is.
    pub fn host_address(&self) -> Option<Ipv4Addr> {
        self.host
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Ends the helper (SIGTERM, SIGKILL after a second) and reaps it. A
    /// helper already reaped elsewhere (a PID 1 reaping every child) counts
    /// as stopped.
    pub fn stop(self) {
        let pid = self.pid();
        let _ = kill(pid, Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(1);
        loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if Instant::now() < end => std::thread::sleep(Duration::from_millis(2)),
                Ok(WaitStatus::StillAlive) => {
                    tracing::debug!("{} ignored SIGTERM: SIGKILL", self.kind.name());
                    let _ = kill(pid, Signal::SIGKILL);
                    let _ = waitpid(pid, None);
                    return;
                }
                Err(nix::errno::Errno::EINTR) => {}
                _ => return,
            }
        }
    }
}

/// Waits until `ready` says the helper is set up, failing when it exits
/// first (with the last line of its log) or takes too long.
fn wait_ready(kind: Kind, child: &mut Child, log: &Path, mut ready: impl FnMut() -> bool) -> Result<(), NetError> {
    let helper = kind.name();
    let end = Instant::now() + TIMEOUT;
    let mut pause = Duration::from_micros(200);
    loop {
        if ready() {
            return Ok(());
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                let message = last_log_line(log).unwrap_or_else(|| format!("it exited with {status}"));
                return Err(NetError::Failed { helper, message });
            }
            Ok(None) => {}
            Err(source) => return Err(NetError::Spawn { helper, source }),
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return Err(NetError::Timeout { helper });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// The last meaningful line a helper wrote (pasta also complains when it
/// finds no syslog: those lines are skipped).
fn last_log_line(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    text.lines().rev().map(str::trim).find(|l| !l.is_empty() && !l.contains("to syslog")).map(String::from)
}

/// Makes the helper die with the process that starts it (berth or the pod
/// process being SIGKILLed included), and start with no blocked or ignored
/// signal: a starter that reads signals from a signalfd blocks them, and the
/// mask and ignored dispositions survive execve (a helper that never sees
/// SIGTERM costs its starter the stop timeout).
fn child_setup(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl, sigprocmask and signal are async-signal-safe; nothing
    // else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::{SigSet, SigmaskHow};

    fn status_field(pid: u32, field: &str) -> u64 {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        u64::from_str_radix(line[field.len()..].trim(), 16).unwrap()
    }

    #[test]
    fn a_helper_starts_with_no_blocked_or_ignored_signal() {
        // A starter like the pod process: SIGTERM blocked, SIGPIPE ignored
        // (Rust's default), in this thread.
        let mut term = SigSet::empty();
        term.add(Signal::SIGTERM);
        let mut old = SigSet::empty();
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&term), Some(&mut old)).unwrap();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        child_setup(&mut cmd);
        let child = cmd.spawn().unwrap();
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None).unwrap();
        // The mask is set before exec; wait until the child runs sleep.
        let end = Instant::now() + Duration::from_secs(5);
        while fs::read_to_string(format!("/proc/{}/comm", child.id())).unwrap_or_default().trim() != "sleep" && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (blocked, ignored) = (status_field(child.id(), "SigBlk:"), status_field(child.id(), "SigIgn:"));
        let helper = Helper { kind: Kind::Pasta, child, ready: None, log: PathBuf::new(), started: Instant::now(), host: None };
        let started = Instant::now();
        helper.stop();
        assert_eq!(blocked, 0, "blocked signals {blocked:x}");
        assert_eq!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "SIGPIPE ignored");
        assert!(started.elapsed() < Duration::from_millis(900), "SIGTERM did not end it: {:?}", started.elapsed());
    }
}
