//! The pod model: what to run, independent of where it came from (a
//! Kubernetes Pod manifest or the `berth run IMAGE` shorthand).
//!
//! The runtime consumes a [`Pod`]; parsing lives in submodules:
//! [`kube`] reads Pod manifests, [`shorthand`] builds a pod from `berth run`
//! options. Both end in [`Pod::validate`], so the rules are the same.

pub mod kube;
pub mod shorthand;
pub mod quantity;

use std::collections::HashSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

pub use kube::{PodFileError, Warning};
pub use quantity::QuantityError;

/// A validated pod: names are unique DNS labels, the main container exists,
/// every volume mount names a declared volume.
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    pub name: String,
    /// Run in order, each to completion, before `containers` start; those
    /// marked [`Container::sidecar`] are started instead and keep running.
    pub init_containers: Vec<Container>,
    /// Long-running containers; `containers[main]` is the main one.
    pub containers: Vec<Container>,
    pub main: usize,
    pub volumes: Vec<Volume>,
    /// All containers share one PID namespace.
    pub share_process_namespace: bool,
    pub network: Network,
    /// Seconds between SIGTERM and SIGKILL at teardown (Kubernetes
    /// `terminationGracePeriodSeconds`); `None`: berth's default.
    pub grace_seconds: Option<u64>,
    /// What isolates the pod from the host (annotation
    /// `berth.dev/isolation`); the command line's `--isolation` wins.
    pub isolation: Isolation,
}

/// The annotation that asks for a pod's isolation.
pub const ISOLATION_ANNOTATION: &str = "berth.dev/isolation";

/// What isolates a pod from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Containers on the host's kernel, in berth's user namespace.
    #[default]
    Container,
    /// The whole pod in a QEMU microVM: its own kernel.
    Vm,
}

/// The pod's network, one for all its containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// A private network namespace with outbound access through a user-mode
    /// network stack (pasta, else slirp4netns) started for the pod.
    #[default]
    Outbound,
    /// A private network namespace with loopback only (`private` is the
    /// older name).
    #[serde(alias = "private")]
    #[value(alias = "private")]
    None,
    /// The host's network namespace.
    Host,
}

/// A host port forwarded to a port in the pod: `[HOSTIP:]HOSTPORT:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortMapping {
    /// Host address to listen on; `None`: all of them.
    pub host_ip: Option<std::net::IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
}

impl FromStr for PortMapping {
    type Err = String;

    /// `PORT`, `HOSTPORT:PORT` or `HOSTIP:HOSTPORT:PORT` (IPv6 in brackets).
    fn from_str(s: &str) -> Result<PortMapping, String> {
        let bad = || format!("invalid port mapping {s:?}: expected [HOSTIP:]HOSTPORT:PORT");
        let port = |p: &str| p.parse::<u16>().ok().filter(|&n| n > 0).ok_or_else(bad);
        let (rest, container_port) = match s.rsplit_once(':') {
            Some((rest, p)) => (Some(rest), port(p)?),
            None => (None, port(s)?),
        };
        let (host_ip, host_port) = match rest {
            None => (None, container_port),
            Some(rest) => match rest.rsplit_once(':') {
                None => (None, port(rest)?),
                Some((ip, hp)) => {
                    let ip = ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')).unwrap_or(ip);
                    (Some(ip.parse().map_err(|_| bad())?), port(hp)?)
                }
            },
        };
        Ok(PortMapping { host_ip, host_port, container_port })
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(std::net::IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(f, "{}:{}", self.host_port, self.container_port)
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Container {
    pub name: String,
    pub image: String,
    /// Replaces the image's Entrypoint (Kubernetes `command`).
    pub command: Option<Vec<String>>,
    /// Replaces the image's Cmd (Kubernetes `args`). `Some(vec![])` drops
    /// the image's Cmd: a pod file's `command` without `args` does that, as
    /// in Kubernetes. The process is `command.unwrap_or(Entrypoint)` followed
    /// by `args.unwrap_or(Cmd)`.
    pub args: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub volume_mounts: Vec<VolumeMount>,
    pub ports: Vec<u16>,
    /// Host ports forwarded to this container's ports (`hostPort`, `-p`
    /// for the main container). The pod's network is shared, so they are
    /// the pod's: see [`Pod::published_ports`].
    pub host_ports: Vec<PortMapping>,
    pub limits: Limits,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub readiness: Option<Probe>,
    /// A pseudo-terminal; the runtime honours it for the main container only.
    pub tty: bool,
    /// The Jenkins agent container: a pod template's `jnlp` container with
    /// no image, whose image and command `berth agent` supplies. `image` is
    /// empty; `berth run` refuses such a pod.
    pub agent: bool,
    /// An init container that keeps running (Kubernetes' native sidecar,
    /// `restartPolicy: Always`): started in its turn, ready before the next
    /// container starts, stopped with the sidecars.
    pub sidecar: bool,
    /// When the image is pulled (`imagePullPolicy`).
    pub pull_policy: PullPolicy,
}

/// When a container's image is pulled. berth's default is podman's
/// `missing`, not Kubernetes' `Always` for `:latest`: a build host keeps
/// its images, and a pod should not depend on a registry it already pulled
/// from (rate limits, outages) unless the file asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum PullPolicy {
    /// Pull even when the store has the image (`Always`).
    Always,
    /// Pull only when the store lacks it (`IfNotPresent`, the default).
    #[default]
    IfNotPresent,
    /// Never pull: an image missing from the store is an error.
    Never,
}

impl PullPolicy {
    /// The stronger of two policies for one image used twice: `Always`
    /// wins, `Never` only when both say so.
    pub fn merge(self, other: PullPolicy) -> PullPolicy {
        use PullPolicy::*;
        match (self, other) {
            (Always, _) | (_, Always) => Always,
            (Never, Never) => Never,
            _ => IfNotPresent,
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        })
    }
}

/// A container's resource limits (the pod plan carries them as they are).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// CPU in thousandths of a core (Kubernetes millicores).
    pub cpu_millis: Option<u64>,
    pub pids: Option<u64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.memory_bytes.is_none() && self.cpu_millis.is_none() && self.pids.is_none()
    }
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
    /// An image's file tree, read-only (Kubernetes' `image` volume): e.g. a
    /// Java runtime for the Jenkins agent, from an image of its own.
    Image { reference: String },
}

/// A readiness probe (the pod plan carries it as it is).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Probe {
    pub action: ProbeAction,
    pub initial_delay: Duration,
    /// At least a millisecond in a valid pod, as is `timeout`.
    pub period: Duration,
    pub timeout: Duration,
    /// Consecutive failures after which the pod fails to start. With the
    /// period this bounds how long berth waits for readiness.
    pub failure_threshold: u32,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeAction {
    /// Run in the container (tenant exec); exit 0 is ready.
    Exec(Vec<String>),
    /// Connect to 127.0.0.1:PORT in the pod's network namespace (Kubernetes
    /// `tcpSocket`).
    Tcp(u16),
}

/// A pod that breaks a rule. `path` names the offending field the way a Pod
/// manifest spells it (`spec.containers[1].name`), so the pod-file reader
/// can point at its line; the message alone stands on its own.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct InvalidPod {
    pub path: String,
    pub message: String,
}

impl InvalidPod {
    fn new(path: impl Into<String>, message: impl Into<String>) -> InvalidPod {
        InvalidPod { path: path.into(), message: message.into() }
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(s: &str) -> Result<Network, String> {
        match s {
            "outbound" => Ok(Network::Outbound),
            "none" | "private" => Ok(Network::None),
            "host" => Ok(Network::Host),
            _ => Err(format!("invalid network {s:?}: expected \"outbound\", \"none\" or \"host\"")),
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isolation::Container => "container",
            Isolation::Vm => "vm (the pod in a QEMU microVM)",
        })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Network::Outbound => "outbound",
            Network::None => "none",
            Network::Host => "host",
        })
    }
}

/// Whether `s` is an RFC 1123 label as Kubernetes checks it: at most 63 of
/// `a-z`, `0-9` and `-`, starting and ending with a letter or digit.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(inner)
        && b.last().is_some_and(inner)
        && b.iter().all(|c| inner(c) || *c == b'-')
}

pub(crate) const LABEL_RULE: &str =
    "a name is a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit";

impl Pod {
    /// The container whose stdio is berth's own and whose exit is the pod's.
    /// `None` only for a pod that fails [`Pod::validate`].
    pub fn main_container(&self) -> Option<&Container> {
        self.containers.get(self.main)
    }

    pub fn main_container_mut(&mut self) -> Option<&mut Container> {
        self.containers.get_mut(self.main)
    }

    /// Makes the container called `name` the main one (`--main NAME`).
    pub fn select_main(&mut self, name: &str) -> Result<(), InvalidPod> {
        if let Some(i) = self.containers.iter().position(|c| c.name == name) {
            self.main = i;
            return Ok(());
        }
        let message = if self.init_containers.iter().any(|c| c.name == name) {
            format!("{name:?} is an init container; the main container must be one of spec.containers")
        } else {
            let names: Vec<&str> = self.containers.iter().map(|c| c.name.as_str()).collect();
            format!("no container named {name:?} to make the main one (containers: {})", names.join(", "))
        };
        Err(InvalidPod::new("spec.containers", message))
    }

    /// Checks the rules Kubernetes checks for the fields berth uses, and the
    /// ones the runtime relies on (absolute paths, no NUL bytes in what
    /// becomes an `execve` argument).
    pub fn validate(&self) -> Result<(), InvalidPod> {
        if !is_dns_label(&self.name) {
            return Err(InvalidPod::new("metadata.name", format!("invalid pod name {:?}: {LABEL_RULE}", self.name)));
        }
        if self.containers.is_empty() {
            return Err(InvalidPod::new("spec.containers", "a pod needs at least one container"));
        }
        if self.main >= self.containers.len() {
            return Err(InvalidPod::new("spec.containers", "the main container is not one of spec.containers"));
        }

        let mut volume_names = HashSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let path = format!("spec.volumes[{i}]");
            if !is_dns_label(&v.name) {
                return Err(InvalidPod::new(format!("{path}.name"), format!("invalid volume name {:?}: {LABEL_RULE}", v.name)));
            }
            if !volume_names.insert(v.name.as_str()) {
                return Err(InvalidPod::new(format!("{path}.name"), format!("volume name {:?} is used twice", v.name)));
            }
            match &v.source {
                VolumeSource::HostPath(p) => {
                    check_host_path(p).map_err(|m| InvalidPod::new(format!("{path}.hostPath.path"), m))?;
                }
                VolumeSource::Image { reference } => {
                    crate::image::reference::parse(reference)
                        .map_err(|e| InvalidPod::new(format!("{path}.image.reference"), crate::exit::chain(&e)))?;
                }
                VolumeSource::EmptyDir => {}
            }
        }

        let mut names = HashSet::new();
        let all = self.init_containers.iter().map(|c| (c, true)).chain(self.containers.iter().map(|c| (c, false)));
        let mut index = [0usize, 0usize];
        for (c, init) in all {
            let i = &mut index[usize::from(init)];
            let path = if init { format!("spec.initContainers[{i}]") } else { format!("spec.containers[{i}]") };
            *i += 1;
            if !is_dns_label(&c.name) {
                return Err(InvalidPod::new(format!("{path}.name"), format!("invalid container name {:?}: {LABEL_RULE}", c.name)));
            }
            if !names.insert(c.name.as_str()) {
                return Err(InvalidPod::new(format!("{path}.name"), format!("container name {:?} is used twice", c.name)));
            }
            validate_container(c, init, &path, &volume_names)?;
            if !c.host_ports.is_empty() && self.network != Network::Outbound {
                let why = match self.network {
                    Network::Host => "with the host's network the container's ports are the host's already",
                    _ => "published ports need the outbound network (--network outbound)",
                };
                return Err(InvalidPod::new(format!("{path}.ports"), format!("container {:?} publishes a host port: {why}", c.name)));
            }
        }
        let mut host_ports = HashSet::new();
        for m in self.published_ports() {
            if !host_ports.insert((m.host_ip, m.host_port)) {
                return Err(InvalidPod::new("spec.containers", format!("host port {} is published twice", m.host_port)));
            }
        }
        Ok(())
    }

    /// Every host port forwarded into the pod.
    pub fn published_ports(&self) -> impl Iterator<Item = &PortMapping> {
        self.init_containers.iter().chain(&self.containers).flat_map(|c| &c.host_ports)
    }
}

fn validate_container(c: &Container, init: bool, path: &str, volumes: &HashSet<&str>) -> Result<(), InvalidPod> {
    let err = |field: &str, message: String| Err(InvalidPod::new(format!("{path}.{field}"), message));
    let name = &c.name;
    if c.agent {
        if init {
            return err("name", format!("init container {name:?} cannot be the Jenkins agent container"));
        }
        if !c.image.is_empty() {
            return err("image", format!("the agent container {name:?} takes its image from berth agent, not the file"));
        }
    } else if c.image.trim().is_empty() {
        return err("image", format!("container {name:?} needs an image"));
    } else if c.image.trim() != c.image || c.image.contains(|ch: char| ch.is_control()) {
        return err("image", format!("container {name:?}: image {:?} has whitespace or control characters", c.image));
    }
    if c.sidecar && !init {
        return err("restartPolicy", format!("container {name:?}: only init containers can be native sidecars"));
    }
    for (field, list) in [("command", &c.command), ("args", &c.args)] {
        if let Some(j) = list.iter().flatten().position(|a| a.contains('\0')) {
            return err(&format!("{field}[{j}]"), format!("container {name:?}: {field} contains a NUL byte"));
        }
    }
    if c.command.as_ref().is_some_and(|cmd| cmd.first().is_some_and(|a| a.is_empty())) {
        return err("command[0]", format!("container {name:?}: the command is empty"));
    }
    for (j, (k, v)) in c.env.iter().enumerate() {
        if k.is_empty() || k.contains('=') || !k.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return err(
                &format!("env[{j}].name"),
                format!("container {name:?}: invalid environment variable name {k:?} (printable ASCII without '=' or spaces)"),
            );
        }
        if v.contains('\0') {
            return err(&format!("env[{j}].value"), format!("container {name:?}: the value of {k} contains a NUL byte"));
        }
    }
    if let Some(dir) = &c.working_dir {
        if !dir.starts_with('/') || dir.contains('\0') {
            return err("workingDir", format!("container {name:?}: workingDir {dir:?} must be an absolute path"));
        }
    }
    let mut mount_paths = HashSet::new();
    for (j, m) in c.volume_mounts.iter().enumerate() {
        let mp = format!("volumeMounts[{j}]");
        if !volumes.contains(m.name.as_str()) {
            return err(&format!("{mp}.name"), format!("container {name:?} mounts volume {:?}, which is not in spec.volumes", m.name));
        }
        if !m.mount_path.starts_with('/') || m.mount_path.contains('\0') {
            return err(&format!("{mp}.mountPath"), format!("container {name:?}: mountPath {:?} must be an absolute path", m.mount_path));
        }
        if Path::new(&m.mount_path).components().any(|c| c == Component::ParentDir) {
            return err(&format!("{mp}.mountPath"), format!("container {name:?}: mountPath {:?} must not contain '..'", m.mount_path));
        }
        // A volume cannot replace the container's root filesystem.
        if Path::new(&m.mount_path).components().all(|c| c == Component::RootDir || c == Component::CurDir) {
            return err(&format!("{mp}.mountPath"), format!("container {name:?}: mountPath {:?} would cover the container's root", m.mount_path));
        }
        if !mount_paths.insert(Path::new(&m.mount_path).components().collect::<PathBuf>()) {
            return err(&format!("{mp}.mountPath"), format!("container {name:?} mounts {:?} twice", m.mount_path));
        }
    }
    if let Some(j) = c.ports.iter().position(|p| *p == 0) {
        return err(&format!("ports[{j}].containerPort"), format!("container {name:?}: port 0 is not a port"));
    }
    if c.limits.memory_bytes == Some(0) {
        return err("resources.limits.memory", format!("container {name:?}: a memory limit must be more than 0"));
    }
    if c.limits.cpu_millis == Some(0) {
        return err("resources.limits.cpu", format!("container {name:?}: a cpu limit must be more than 0"));
    }
    if c.limits.pids == Some(0) {
        return err("resources.limits", format!("container {name:?}: a pids limit must be more than 0"));
    }
    if let Some(p) = &c.readiness {
        if init && !c.sidecar {
            return err("readinessProbe", format!("init container {name:?} cannot have a readinessProbe"));
        }
        match &p.action {
            ProbeAction::Exec(cmd) if cmd.is_empty() || cmd[0].is_empty() => {
                return err("readinessProbe.exec.command", format!("container {name:?}: the probe command is empty"));
            }
            ProbeAction::Exec(cmd) if cmd.iter().any(|a| a.contains('\0')) => {
                return err("readinessProbe.exec.command", format!("container {name:?}: the probe command contains a NUL byte"));
            }
            ProbeAction::Tcp(0) => {
                return err("readinessProbe.tcpSocket.port", format!("container {name:?}: port 0 is not a port"));
            }
            _ => {}
        }
        for (field, zero) in [
            ("periodSeconds", p.period.is_zero()),
            ("timeoutSeconds", p.timeout.is_zero()),
            ("failureThreshold", p.failure_threshold == 0),
        ] {
            if zero {
                return err(&format!("readinessProbe.{field}"), format!("container {name:?}: readinessProbe {field} must be at least 1"));
            }
        }
    }
    Ok(())
}

fn check_host_path(p: &Path) -> Result<(), String> {
    if !p.is_absolute() {
        return Err(format!("hostPath {p:?} must be an absolute path"));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(format!("hostPath {p:?} must not contain '..'"));
    }
    Ok(())
}

/// `n` random characters from `a-z0-9`, for generated names. Not secret:
/// the process's hash seed, the time and the pid are plenty.
pub(crate) fn random_suffix(n: usize) -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};

    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut h = RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    let mut x = h.finish();
    (0..n)
        .map(|_| {
            let c = ALPHABET[(x % ALPHABET.len() as u64) as usize];
            x /= ALPHABET.len() as u64;
            char::from(c)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn container(name: &str) -> Container {
        Container { name: name.into(), image: "busybox".into(), ..Container::default() }
    }

    fn pod() -> Pod {
        Pod {
            name: "p".into(),
            init_containers: vec![container("init")],
            containers: vec![container("main"), container("web")],
            main: 0,
            volumes: vec![Volume { name: "ws".into(), source: VolumeSource::EmptyDir }],
            share_process_namespace: false,
            network: Network::None,
            grace_seconds: None,
            isolation: Isolation::Container,
        }
    }

    #[test]
    fn dns_labels() {
        for ok in ["a", "web", "db-1", "0", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "Web", "a_b", "a.b", "é", &"a".repeat(64), "a b"] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn a_good_pod_validates() {
        pod().validate().unwrap();
    }

    type Case = (Box<dyn Fn(&mut Pod)>, &'static str);

    #[test]
    fn each_rule_names_its_field() {
        let cases: Vec<Case> = vec![
            (Box::new(|p| p.name = "Bad".into()), "metadata.name"),
            (Box::new(|p| p.containers.clear()), "spec.containers"),
            (Box::new(|p| p.main = 2), "spec.containers"),
            (Box::new(|p| p.containers[1].name = "init".into()), "spec.containers[1].name"),
            (Box::new(|p| p.containers[1].name = "x_y".into()), "spec.containers[1].name"),
            (Box::new(|p| p.containers[0].image = " ".into()), "spec.containers[0].image"),
            (Box::new(|p| p.init_containers[0].image = "a b\n".into()), "spec.initContainers[0].image"),
            (Box::new(|p| p.containers[0].args = Some(vec!["a".into(), "b\0".into()])), "spec.containers[0].args[1]"),
            (Box::new(|p| p.containers[0].env = vec![("A=B".into(), "v".into())]), "spec.containers[0].env[0].name"),
            (Box::new(|p| p.containers[0].working_dir = Some("rel".into())), "spec.containers[0].workingDir"),
            (Box::new(|p| p.volumes.push(Volume { name: "ws".into(), source: VolumeSource::EmptyDir })), "spec.volumes[1].name"),
            (Box::new(|p| p.volumes[0].source = VolumeSource::HostPath("/a/../b".into())), "spec.volumes[0].hostPath.path"),
            (
                Box::new(|p| p.containers[1].volume_mounts = vec![VolumeMount { name: "nope".into(), mount_path: "/x".into(), read_only: false }]),
                "spec.containers[1].volumeMounts[0].name",
            ),
            (
                Box::new(|p| p.containers[1].volume_mounts = vec![VolumeMount { name: "ws".into(), mount_path: "x".into(), read_only: false }]),
                "spec.containers[1].volumeMounts[0].mountPath",
            ),
            (
                Box::new(|p| {
                    let m = VolumeMount { name: "ws".into(), mount_path: "/x".into(), read_only: false };
                    p.containers[1].volume_mounts = vec![m.clone(), VolumeMount { mount_path: "/x/".into(), ..m }];
                }),
                "spec.containers[1].volumeMounts[1].mountPath",
            ),
            (Box::new(|p| p.containers[0].limits.memory_bytes = Some(0)), "spec.containers[0].resources.limits.memory"),
            (
                Box::new(|p| {
                    p.init_containers[0].readiness = Some(Probe {
                        action: ProbeAction::Tcp(80),
                        initial_delay: Duration::ZERO,
                        period: Duration::from_secs(1),
                        timeout: Duration::from_secs(1),
                        failure_threshold: 3,
                    })
                }),
                "spec.initContainers[0].readinessProbe",
            ),
            (
                Box::new(|p| {
                    p.containers[1].readiness = Some(Probe {
                        action: ProbeAction::Exec(vec![]),
                        initial_delay: Duration::ZERO,
                        period: Duration::from_secs(1),
                        timeout: Duration::from_secs(1),
                        failure_threshold: 3,
                    })
                }),
                "spec.containers[1].readinessProbe.exec.command",
            ),
            (
                Box::new(|p| {
                    p.init_containers[0].agent = true;
                    p.init_containers[0].image.clear();
                }),
                "spec.initContainers[0].name",
            ),
            (Box::new(|p| p.containers[0].agent = true), "spec.containers[0].image"),
            (Box::new(|p| p.containers[1].sidecar = true), "spec.containers[1].restartPolicy"),
        ];
        for (i, (break_it, path)) in cases.into_iter().enumerate() {
            let mut p = pod();
            break_it(&mut p);
            let e = p.validate().expect_err(&format!("case {i} validates"));
            assert_eq!(e.path, path, "case {i}: {}", e.message);
        }
    }

    #[test]
    fn agent_and_native_sidecars_validate() {
        let mut p = pod();
        p.containers[0].agent = true;
        p.containers[0].image.clear();
        p.init_containers[0].sidecar = true;
        p.init_containers[0].readiness = Some(Probe {
            action: ProbeAction::Tcp(80),
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            failure_threshold: 3,
        });
        p.validate().unwrap();
    }

    #[test]
    fn select_main() {
        let mut p = pod();
        p.select_main("web").unwrap();
        assert_eq!(p.main_container().map(|c| c.name.as_str()), Some("web"));
        assert!(p.select_main("init").unwrap_err().message.contains("init container"));
        assert!(p.select_main("nope").unwrap_err().message.contains("main, web"));
    }

    #[test]
    fn network_parses() {
        assert_eq!("host".parse(), Ok(Network::Host));
        assert_eq!("private".parse(), Ok(Network::None));
        assert_eq!("none".parse(), Ok(Network::None));
        assert_eq!("outbound".parse(), Ok(Network::Outbound));
        assert_eq!(Network::default(), Network::Outbound);
        let v: Network = serde_json::from_str("\"private\"").unwrap();
        assert_eq!(v, Network::None);
        assert_eq!(<Network as clap::ValueEnum>::from_str("private", false), Ok(Network::None));
        assert!("bridge".parse::<Network>().is_err());
    }

    #[test]
    fn port_mappings_parse() {
        let m = |s: &str| s.parse::<PortMapping>();
        let pm = |ip: Option<&str>, h, c| PortMapping { host_ip: ip.map(|i| i.parse().unwrap()), host_port: h, container_port: c };
        assert_eq!(m("8080"), Ok(pm(None, 8080, 8080)));
        assert_eq!(m("8080:80"), Ok(pm(None, 8080, 80)));
        assert_eq!(m("127.0.0.1:8080:80"), Ok(pm(Some("127.0.0.1"), 8080, 80)));
        assert_eq!(m("[::1]:8080:80"), Ok(pm(Some("::1"), 8080, 80)));
        for bad in ["", ":", "0:80", "80:0", "x:80", "65536:80", "1.2.3:80:80", "a:b:c:d", "8080:80:"] {
            assert!(m(bad).is_err(), "{bad}");
        }
        assert_eq!(pm(Some("::1"), 1, 2).to_string(), "[::1]:1:2");
        assert_eq!(m("127.0.0.1:8080:80").unwrap().to_string(), "127.0.0.1:8080:80");
    }
}
