//! What the pod process runs: a [`PodPlan`] of prepared bundles.
//!
//! berth's tokio process builds the plan (from a [`crate::pod::Pod`] and the
//! bundles it unpacked), writes it as JSON into the pod's state directory and
//! re-executes itself as the pod process, which reads it back. The plan is the
//! whole contract between the two: plain data, no handles.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pod;
pub use crate::pod::{Limits, Network, PortMapping, Probe, ProbeAction};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodPlan {
    /// Pod name: the hostname, a name in every container's /etc/hosts, and
    /// the state directory's name. A DNS label.
    pub name: String,
    /// In start order: init containers (run in order), sidecars, and
    /// exactly one main container, after every init container. A sidecar
    /// before an init container (Kubernetes' native sidecar) starts, and is
    /// ready, before that one runs. [`PodPlan::validate`] checks this.
    pub containers: Vec<PlannedContainer>,
    /// Host directory bind-mounted read-write into every container.
    pub workspace: PathBuf,
    /// Where the workspace appears in the containers (absolute).
    pub workspace_path: String,
    pub network: Network,
    /// Host ports forwarded into the pod (outbound network only).
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// The outbound network reaches the host's loopback as
    /// `host.containers.internal`.
    #[serde(default = "yes")]
    pub host_loopback: bool,
    /// All containers share the pod's PID namespace.
    pub share_pid: bool,
    /// Extra `/etc/hosts` entries: (address, names).
    #[serde(default)]
    pub extra_hosts: Vec<(String, Vec<String>)>,
    /// SIGTERM to SIGKILL delay for sidecars at teardown.
    pub grace: Duration,
    /// Do not echo sidecar output to berth's stderr.
    #[serde(default)]
    pub quiet_sidecars: bool,
    /// Most tasks in the whole pod (its cgroup's pids.max).
    #[serde(default)]
    pub pids_limit: Option<u64>,
    /// Image trees the pod process prepares before any container starts;
    /// containers bind-mount them (read-only) through their `mounts`.
    #[serde(default)]
    pub image_volumes: Vec<ImageVolume>,
}

fn yes() -> bool {
    true
}

/// An image's file tree as a volume: prepared at `path` from `tree` the way
/// a root filesystem is (an overlay of the cached layers, or a copy).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageVolume {
    /// The volume's name in the pod (for messages).
    pub name: String,
    pub tree: RootfsSource,
    /// Where the tree appears in the pod's mount namespace.
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedContainer {
    /// DNS label, unique in the pod.
    pub name: String,
    pub role: Role,
    /// Bundle directory holding `config.json`. Its `root.path` is used when
    /// `rootfs` is [`RootfsSource::Bundle`].
    pub bundle: PathBuf,
    pub rootfs: RootfsSource,
    /// Replaces the bundle's `process.args` when set.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub readiness: Option<Probe>,
    #[serde(default)]
    pub limits: Limits,
    /// Extra bind mounts (volumes), added to the bundle's own mounts.
    #[serde(default)]
    pub mounts: Vec<BindMount>,
    /// A pseudo-terminal instead of berth's own stdio (main container only;
    /// the bundle's `process.terminal` is overridden either way).
    #[serde(default)]
    pub tty: bool,
    /// For a sidecar: stdin is a pipe that stays open, and empty, for the
    /// pod's life instead of /dev/null. A pod file's `tty: true` on a
    /// sidecar asks for this: Jenkins templates keep a `cat` waiting on it.
    #[serde(default)]
    pub open_stdin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs to completion before the containers after it start; non-zero
    /// fails the pod.
    Init,
    /// Runs alongside main; stdin /dev/null, output to its log.
    Sidecar,
    /// Gets berth's stdin/stdout/stderr; its exit ends the pod.
    Main,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootfsSource {
    /// The bundle's own `root.path` (a ready directory).
    Bundle,
    /// A ready directory elsewhere.
    Dir(PathBuf),
    /// An overlay the pod process mounts (`lowers[0]` is the top layer, as
    /// in `lowerdir=`). With `fallback`, where overlay cannot be mounted (not
    /// allowed here, or too long a layer list for one mount) the layers are
    /// copied as with [`RootfsSource::Copy`]; without it that is an error.
    Overlay {
        lowers: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
        #[serde(default)]
        fallback: bool,
    },
    /// A private copy of cached layer dirs (`layers` bottom first) that the
    /// pod process writes into the container's rootfs dir in the pod's
    /// state: slower than overlay, but needs nothing of the kernel, and
    /// never touches the cache.
    Copy { layers: Vec<PathBuf> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("invalid name {0:?}: a pod or container name is a DNS label (a-z, 0-9, '-', at most 63)")]
    BadName(String),
    #[error("container name {0:?} is used twice")]
    Duplicate(String),
    #[error("a pod needs exactly one main container, found {0}")]
    Main(usize),
    #[error("init containers must come before the main container ({0:?} does not)")]
    Order(String),
    #[error("workspace path {0:?} must be absolute")]
    WorkspacePath(String),
    #[error("container {0:?} asks for a terminal: only the main container can have one")]
    Tty(String),
    #[error("published ports need the outbound network, not {0}")]
    Ports(Network),
}

impl PodPlan {
    /// Checks what the pod process relies on: DNS-label names, unique
    /// container names, no init container after the main one, exactly one
    /// main container.
    pub fn validate(&self) -> Result<(), PlanError> {
        check_label(&self.name)?;
        if !self.workspace_path.starts_with('/') {
            return Err(PlanError::WorkspacePath(self.workspace_path.clone()));
        }
        let mut seen = std::collections::HashSet::new();
        let mut past_main = false;
        for c in &self.containers {
            check_label(&c.name)?;
            if !seen.insert(c.name.as_str()) {
                return Err(PlanError::Duplicate(c.name.clone()));
            }
            if c.tty && c.role != Role::Main {
                return Err(PlanError::Tty(c.name.clone()));
            }
            match c.role {
                Role::Init if past_main => return Err(PlanError::Order(c.name.clone())),
                Role::Main => past_main = true,
                _ => {}
            }
        }
        let mains = self.containers.iter().filter(|c| c.role == Role::Main).count();
        if mains != 1 {
            return Err(PlanError::Main(mains));
        }
        if !self.ports.is_empty() && self.network != Network::Outbound {
            return Err(PlanError::Ports(self.network));
        }
        Ok(())
    }

    pub fn main(&self) -> &PlannedContainer {
        // validate() guarantees one; fall back to the last container.
        self.containers
            .iter()
            .find(|c| c.role == Role::Main)
            .or(self.containers.last())
            .expect("a validated plan has a main container")
    }
}

/// A DNS label (RFC 1123), as Kubernetes requires for names.
pub fn check_label(s: &str) -> Result<(), PlanError> {
    if pod::is_dns_label(s) { Ok(()) } else { Err(PlanError::BadName(s.to_string())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str, role: Role) -> PlannedContainer {
        PlannedContainer {
            name: name.into(),
            role,
            bundle: "/b".into(),
            rootfs: RootfsSource::Bundle,
            command: None,
            readiness: None,
            limits: Limits::default(),
            mounts: vec![],
            tty: false,
            open_stdin: false,
        }
    }

    fn plan(cs: Vec<PlannedContainer>) -> PodPlan {
        PodPlan {
            name: "p".into(),
            containers: cs,
            workspace: "/w".into(),
            workspace_path: "/workspace".into(),
            network: Network::None,
            ports: vec![],
            host_loopback: true,
            share_pid: false,
            extra_hosts: vec![],
            grace: Duration::from_secs(5),
            quiet_sidecars: false,
            image_volumes: vec![],
            pids_limit: None,
        }
    }

    #[test]
    fn published_ports_need_the_outbound_network() {
        let mut p = plan(vec![c("m", Role::Main)]);
        p.ports = vec!["8080:80".parse().unwrap()];
        assert_eq!(p.validate(), Err(PlanError::Ports(Network::None)));
        p.network = Network::Outbound;
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn validates_roles_names_and_order() {
        assert_eq!(plan(vec![c("a", Role::Init), c("web", Role::Sidecar), c("m", Role::Main)]).validate(), Ok(()));
        assert_eq!(plan(vec![c("a", Role::Sidecar)]).validate(), Err(PlanError::Main(0)));
        assert_eq!(plan(vec![c("a", Role::Main), c("b", Role::Main)]).validate(), Err(PlanError::Main(2)));
        assert_eq!(plan(vec![c("m", Role::Main), c("i", Role::Init)]).validate(), Err(PlanError::Order("i".into())));
        // A native sidecar: started between two init containers.
        let native = vec![c("a", Role::Init), c("db", Role::Sidecar), c("b", Role::Init), c("web", Role::Sidecar), c("m", Role::Main)];
        assert_eq!(plan(native).validate(), Ok(()));
        assert_eq!(plan(vec![c("m", Role::Main), c("m", Role::Sidecar)]).validate(), Err(PlanError::Duplicate("m".into())));
        for bad in ["", "A", "-a", "a-", "a_b", "../x", &"a".repeat(64)] {
            assert_eq!(plan(vec![c(bad, Role::Main)]).validate(), Err(PlanError::BadName(bad.into())));
        }
        let mut side = c("web", Role::Sidecar);
        side.tty = true;
        assert_eq!(plan(vec![side, c("m", Role::Main)]).validate(), Err(PlanError::Tty("web".into())));
        let mut main = c("m", Role::Main);
        main.tty = true;
        assert_eq!(plan(vec![main]).validate(), Ok(()));
    }

    #[test]
    fn round_trips_through_json() {
        let mut p = plan(vec![c("m", Role::Main)]);
        p.containers[0].readiness = Some(Probe {
            action: ProbeAction::Tcp(80),
            initial_delay: Duration::ZERO,
            period: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
            failure_threshold: 3,
        });
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<PodPlan>(&j).unwrap(), p);
    }
}
