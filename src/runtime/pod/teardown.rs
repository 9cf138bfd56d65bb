//! The pod's end: stop what still runs (SIGTERM, then SIGKILL after the
//! grace period), reap it, delete the containers' state, drain the logs, stop
//! the network helper; and the pod's peak memory for its status.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};

use super::{Member, Pod};
use crate::runtime::plan::Role;
use crate::runtime::state::Phase;

impl Pod {
    /// Stops whatever still runs (SIGTERM, SIGKILL after the grace period),
    /// reaps it, deletes the containers' state and drains the logs.
    pub(super) fn teardown(&mut self) {
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
        // The network outlives every container that used it.
        if let Some(helper) = self.net.take() {
            helper.stop();
        }
    }

    pub(super) fn peak_memory(&self) -> Option<u64> {
        if self.own_cgroup {
            if let Some(peak) = crate::runtime::host::cgroup::read_peak(Path::new("/sys/fs/cgroup")) {
                return Some(peak);
            }
        }
        let rss = |role: Role| self.members.iter().filter(move |m| m.role == role).map(|m| m.max_rss_kib);
        let inits = rss(Role::Init).max().unwrap_or(0);
        let rest: u64 = rss(Role::Sidecar).chain(rss(Role::Main)).sum();
        let kib = inits.max(rest);
        (kib > 0).then_some(kib * 1024)
    }
}
