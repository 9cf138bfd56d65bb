//! Readiness of sidecars: a TCP connect or a command run in the container,
//! retried at the probe's period while the event loop keeps running.

use std::collections::HashMap;
use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};

use super::container;
use super::{Pod, PodError};
use crate::runtime::plan::ProbeAction;

impl Pod {
    /// Waits until sidecar `i` passes its readiness probe (if any).
    pub(super) fn wait_ready(&mut self, i: usize) -> Result<(), PodError> {
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
            .map_err(|e| crate::runtime::error_chain(&e))?;
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
}
