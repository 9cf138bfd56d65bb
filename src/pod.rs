//! The pod model: what to run, independent of where it came from (a
//! Kubernetes Pod manifest or the `berth run IMAGE` shorthand).
//!
//! The runtime consumes a [`Pod`]; parsing lives in submodules.

use std::path::PathBuf;

/// A validated pod: names are unique DNS labels, the main container exists,
/// every volume mount names a declared volume.
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    pub name: String,
    /// Run in order, each to completion, before `containers` start.
    pub init_containers: Vec<Container>,
    /// Long-running containers; `containers[main]` is the main one.
    pub containers: Vec<Container>,
    pub main: usize,
    pub volumes: Vec<Volume>,
    /// All containers share one PID namespace.
    pub share_process_namespace: bool,
    pub network: Network,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// A private network namespace with loopback only.
    #[default]
    Private,
    /// The host's network namespace.
    Host,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Container {
    pub name: String,
    pub image: String,
    /// Replaces the image's Entrypoint (Kubernetes `command`).
    pub command: Option<Vec<String>>,
    /// Replaces the image's Cmd (Kubernetes `args`).
    pub args: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub volume_mounts: Vec<VolumeMount>,
    pub ports: Vec<u16>,
    pub limits: Limits,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub readiness: Option<Probe>,
    pub tty: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// CPU in thousandths of a core (Kubernetes millicores).
    pub cpu_millis: Option<u64>,
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VolumeMount {
    pub name: String,
    pub mount_path: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Volume {
    pub name: String,
    pub source: VolumeSource,
}

#[derive(Debug, Clone, PartialEq)]
pub enum VolumeSource {
    /// A fresh directory under the pod's state, removed with it.
    EmptyDir,
    HostPath(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub action: ProbeAction,
    pub initial_delay_ms: u64,
    pub period_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failures after which the pod fails to start. With the
    /// period this bounds how long berth waits for readiness.
    pub failure_threshold: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProbeAction {
    Exec(Vec<String>),
    TcpSocket(u16),
}
