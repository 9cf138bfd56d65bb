//! The pod's shared namespaces and files: what every container of the pod
//! joins or bind-mounts (mount, cgroup, network, IPC and UTS namespaces,
//! /proc, the cgroup view, /etc/hosts, hostname, resolv.conf).

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::{setup_err, Pod, PodError};
use crate::runtime::plan::{Network, PodPlan};

impl Pod {
    /// The namespaces and files shared by every container.
    pub(super) fn setup(&mut self) -> Result<(), PodError> {
        // The network namespace comes later, by mode (after the mount
        // namespace, where the outbound one is pinned).
        let flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWCGROUP | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
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
                    match crate::runtime::host::cgroup::enter_leaf(cg, &own.controllers) {
                        Ok(()) => self.own_cgroup = true,
                        Err(e) => tracing::warn!("setting up the pod cgroup {}: {e}: no resource limits", own.dir.display()),
                    }
                }
            }
            Err(e) => tracing::warn!("cannot mount a cgroup2 view at /sys/fs/cgroup ({e}): no resource limits"),
        }
        let mut host_address = None;
        match self.plan.network {
            Network::None => {
                unshare(CloneFlags::CLONE_NEWNET).map_err(setup_err("unshare"))?;
                super::net::loopback_up().map_err(|source| PodError::Setup { what: "bringing up lo", source })?;
            }
            Network::Outbound => {
                let helper = super::net::outbound(&self.plan, &self.dir.dir)?;
                host_address = helper.host_address();
                self.net = Some(helper);
            }
            Network::Host => {}
        }
        nix::unistd::sethostname(&self.plan.name).map_err(setup_err("sethostname"))?;

        let w = |p: PathBuf, text: &str| fs::write(&p, text).map_err(|source| PodError::Setup { what: "writing /etc files", source });
        w(self.dir.etc("hosts"), &hosts_file(&self.plan, host_address))?;
        w(self.dir.etc("hostname"), &format!("{}\n", self.plan.name))?;
        // Read from the host's root: the pod's mount namespace still has it.
        if let Ok(r) = fs::read_to_string("/etc/resolv.conf") {
            let text = match &self.net {
                Some(helper) => crate::net::dns::resolv_conf(&r, helper.kind(), host_address),
                None => r,
            };
            w(self.dir.etc("resolv.conf"), &text)?;
        }
        Ok(())
    }
}

/// `/etc/hosts` for every container: localhost, the pod name and each
/// container name on 127.0.0.1, the host as `host.containers.internal`
/// where it is reachable (`host`), then the plan's extra entries.
pub fn hosts_file(plan: &PodPlan, host: Option<Ipv4Addr>) -> String {
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
    if let Some(host) = host {
        s.push_str(&format!("{host}\t{}\n", crate::net::HOST_NAME));
    }
    for (addr, names) in &plan.extra_hosts {
        s.push_str(&format!("{addr}\t{}\n", names.join(" ")));
    }
    s
}

/// True when the user namespace maps a single gid (no subordinate range).
pub(super) fn single_gid_mapped() -> bool {
    crate::userns::IdMapping::of_current_process().counts().1 <= 1
}

