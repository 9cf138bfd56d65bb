//! The pod options `berth run` and `berth agent` share, and the library
//! settings they become.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use berth::planner::{PodOverrides, RunSettings, UsernsMode};
use berth::provision::Fetch;

use super::Global;

#[derive(Debug, Args)]
pub struct PodOptions {
    /// Pod name [default: from the pod file, else the file's name with a
    /// random suffix, or generated].
    #[arg(long)]
    pub name: Option<String>,
    /// Give a pod file's volume NAME this host file or directory instead of
    /// its own source: how a secret or configMap volume (mounted read-only,
    /// as on a cluster) gets its content (repeatable).
    #[arg(long, value_name = "NAME=PATH", value_parser = parse_volume_from, requires = "pod")]
    pub volume_from: Vec<(String, PathBuf)>,
    /// Which container is the main one [default: the first].
    #[arg(long, value_name = "NAME")]
    pub main: Option<String>,
    /// Add a sidecar container NAME=IMAGE (repeatable).
    #[arg(long, value_name = "NAME=IMAGE")]
    pub sidecar: Vec<String>,
    /// Command for a sidecar: 'NAME=CMD ARGS...' (shell-style quoting; repeatable).
    #[arg(long, value_name = "NAME=CMD")]
    pub sidecar_cmd: Vec<String>,
    /// Environment variable for the main container (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// User of the main container, UID[:GID] [default: the pod file's
    /// runAsUser, else the image's User].
    #[arg(short = 'u', long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Host directory shared by every container [default: a fresh, empty one, removed with the pod].
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Keep the workspace and state after the pod ends (until `berth rm NAME`).
    #[arg(long)]
    pub keep: bool,
    /// The pod's network: `outbound` (its own namespace with outbound access
    /// through pasta or slirp4netns; the host is `host.containers.internal`),
    /// `none` (its own namespace, loopback only; `private` is the old name) or
    /// `host` [default: the pod file's hostNetwork, else outbound].
    #[arg(long, value_enum, value_name = "MODE")]
    pub network: Option<berth::pod::Network>,
    /// Forward a host port to a port in the pod, [HOSTIP:]HOSTPORT:PORT
    /// (repeatable; outbound network only).
    #[arg(short = 'p', long = "publish", value_name = "[HOSTIP:]HOSTPORT:PORT")]
    pub publish: Vec<berth::pod::PortMapping>,
    /// Pass berth's HTTP_PROXY, HTTPS_PROXY, FTP_PROXY and NO_PROXY (either
    /// case) to the containers, unless the image or pod sets them.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub http_proxy: bool,
    /// Let the outbound network reach the host's loopback services as
    /// host.containers.internal.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub host_loopback: bool,
    /// Memory limit of the main container, a Kubernetes quantity (512Mi,
    /// 2Gi) [default: the pod file's resources.limits.memory].
    #[arg(long, value_name = "QUANTITY", value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// CPU limit of the main container in cores (1.5, or 500m for half a
    /// core) [default: the pod file's resources.limits.cpu].
    #[arg(long, value_name = "QUANTITY", value_parser = parse_cpus)]
    pub cpus: Option<u64>,
    /// Most tasks (processes and threads) in the whole pod [default: no limit].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=berth::planner::MAX_PIDS))]
    pub pids_limit: Option<u64>,
    /// Do not echo sidecar output to stderr.
    #[arg(long)]
    pub quiet_sidecars: bool,
    /// How each container gets its root filesystem: `overlay` (an overlay
    /// mount over the layer cache), `copy` (a private copy of the layers:
    /// slower, for where overlay is not allowed) or `auto` (overlay, else copy).
    #[arg(long, value_enum, value_name = "MODE", default_value_t)]
    pub rootfs: berth::planner::RootfsMode,
    /// Platform to pull [default: the host's].
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Verify registry TLS certificates.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub tls_verify: bool,
    #[command(flatten)]
    pub vm: VmOptions,
}

/// `--isolation vm` and how the VM is made.
#[derive(Debug, Args)]
#[command(next_help_heading = "Isolation")]
pub struct VmOptions {
    /// What isolates the pod from the host: `container` (containers on the
    /// host's kernel, in your user namespace) or `vm` (the whole pod inside
    /// one QEMU microVM with its own kernel, for untrusted builds; needs
    /// `berth vm setup` once) [default: the pod file's annotation
    /// berth.dev/isolation, else container].
    #[arg(long, value_enum, value_name = "MODE")]
    pub isolation: Option<berth::pod::Isolation>,
    /// How the VM's CPU runs: `kvm`, `tcg` (software emulation: slow, but
    /// works where KVM does not) or `auto` (KVM where /dev/kvm opens).
    #[arg(long, value_enum, value_name = "ACCEL", default_value_t)]
    pub accel: berth::vm::qemu::Accel,
    /// The guest kernel (a bzImage) [default: the one `berth vm setup` got].
    #[arg(long, value_name = "PATH", requires = "modules")]
    pub kernel: Option<PathBuf>,
    /// The guest kernel's modules, lib/modules/VERSION [default: with the kernel].
    #[arg(long, value_name = "DIR", requires = "kernel")]
    pub modules: Option<PathBuf>,
    /// The QEMU binary [default: qemu-system-x86_64 on PATH].
    #[arg(long, value_name = "PATH")]
    pub qemu: Option<PathBuf>,
    /// The VM's vCPUs [default: from the pod's CPU limits, else 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub vm_cpus: Option<u32>,
    /// The VM's memory, a Kubernetes quantity (1Gi) [default: the pod's
    /// memory limits plus 256Mi, at least 512Mi, else 1Gi].
    #[arg(long, value_name = "QUANTITY", value_parser = parse_memory)]
    pub vm_memory: Option<u64>,
    /// How long the guest may take to reach berth's init, e.g. 30s
    /// [default: 10s with KVM, 60s with tcg].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub boot_timeout: Option<Duration>,
}

impl VmOptions {
    pub fn settings(&self) -> berth::vm::host::VmSettings {
        berth::vm::host::VmSettings {
            accel: self.accel,
            kernel: self.kernel.clone(),
            modules: self.modules.clone(),
            qemu: self.qemu.clone(),
            cpus: self.vm_cpus,
            memory_mib: self.vm_memory.map(|b| b.div_ceil(1 << 20)),
            boot_timeout: self.boot_timeout,
        }
    }
}

impl PodOptions {
    /// What the command line changes in the pod; `workdir` is the main
    /// container's working directory.
    pub fn overrides(&self, workdir: Option<String>) -> PodOverrides {
        PodOverrides {
            name: self.name.clone(),
            main: self.main.clone(),
            network: self.network,
            ports: self.publish.clone(),
            memory_bytes: self.memory,
            cpu_millis: self.cpus,
            env: self.env.clone(),
            workdir,
            volume_from: self.volume_from.clone(),
            user: self.user.clone(),
        }
    }

    /// How the pod runs.
    pub fn settings(&self, g: &Global, workspace_path: &str, grace: Option<Duration>, userns: UsernsMode) -> RunSettings {
        RunSettings {
            workspace: self.workspace.clone(),
            workspace_path: workspace_path.to_string(),
            keep: self.keep,
            rootfs: self.rootfs,
            grace,
            quiet_sidecars: self.quiet_sidecars,
            pids_limit: self.pids_limit,
            fetch: Fetch { platform: self.platform.clone(), tls_verify: self.tls_verify, quiet: false },
            verbose: g.verbose,
            http_proxy: self.http_proxy,
            host_loopback: self.host_loopback,
            userns,
            isolation: self.vm.isolation,
            vm: self.vm.settings(),
        }
    }
}

pub(super) fn parse_volume_from(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && path.starts_with('/') => Ok((name.to_string(), PathBuf::from(path))),
        Some((name, _)) if !name.is_empty() => Err("the host path must be absolute".into()),
        _ => Err("expected NAME=PATH".into()),
    }
}

fn parse_memory(s: &str) -> Result<u64, String> {
    match berth::pod::quantity::bytes(s) {
        Ok(0) => Err("must be more than 0".into()),
        Ok(b) if i64::try_from(b).is_err() => Err(format!("must be at most {} bytes", i64::MAX)),
        r => r.map_err(|e| e.to_string()),
    }
}

fn parse_cpus(s: &str) -> Result<u64, String> {
    match berth::pod::quantity::millis(s) {
        Ok(0) => Err("must be more than 0".into()),
        Ok(m) if m > berth::planner::MAX_CPU_MILLIS => Err(format!("must be at most {} cores", berth::planner::MAX_CPU_MILLIS / 1000)),
        r => r.map_err(|e| e.to_string()),
    }
}
