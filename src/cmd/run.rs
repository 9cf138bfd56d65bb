//! `berth run`.

use std::path::PathBuf;

use clap::Args;

use crate::cli::Global;

/// Shown by `berth run --help`.
const RUN_EXAMPLES: &str = "\
Examples:
  berth run busybox -- sh -c 'echo hello'
      one container; its stdin and stdout are berth's own
  berth run --sidecar db=postgres:16 maven:3-eclipse-temurin-17 -- mvn -B verify
      the build reaches the database as db:5432 (every container name and the
      pod name resolve to 127.0.0.1 in the pod's private network)
  berth run --pod bundles/demo.yaml
      a Kubernetes Pod file: init containers run first, readiness probes gate
      the main container (the first of spec.containers, or --main NAME)
  berth run --workspace ~/src/app IMAGE -- make
      the host directory is /workspace in every container; files written
      there by container root belong to you

Jenkins (\"Launch agent via execution of command on the controller\"):
  berth run --pod /etc/berth/jenkins-agent.yaml --workspace /var/lib/jenkins-agent
      progress and errors go to stderr (the launch log); stdout is the agent's";

#[derive(Debug, Args)]
#[command(after_long_help = RUN_EXAMPLES)]
pub struct RunArgs {
    /// Kubernetes Pod manifest (v1, kind Pod) to run.
    #[arg(long, value_name = "FILE", conflicts_with = "image")]
    pub pod: Option<PathBuf>,
    /// Pod name [default: from the pod file, or generated].
    #[arg(long)]
    pub name: Option<String>,
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
    /// Working directory of the main container.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// Allocate a pseudo-terminal for the main container (never for Jenkins).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Host directory shared by every container [default: a fresh one, removed at exit].
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Where the workspace appears in the containers.
    #[arg(long, value_name = "PATH", default_value = "/workspace")]
    pub workspace_path: String,
    /// Keep the workspace and state after the pod ends.
    #[arg(long)]
    pub keep: bool,
    /// `private` (loopback only) or `host`.
    #[arg(long, default_value = "private")]
    pub network: String,
    /// Memory limit of the main container, a Kubernetes quantity (512Mi,
    /// 2Gi) [default: the pod file's resources.limits.memory].
    #[arg(long, value_name = "QUANTITY", value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// CPU limit of the main container in cores (1.5, or 500m for half a
    /// core) [default: the pod file's resources.limits.cpu].
    #[arg(long, value_name = "QUANTITY", value_parser = parse_cpus)]
    pub cpus: Option<u64>,
    /// Most tasks (processes and threads) in the whole pod [default: no limit].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub pids_limit: Option<u64>,
    /// Do not echo sidecar output to stderr.
    #[arg(long)]
    pub quiet_sidecars: bool,
    /// Seconds between SIGTERM and SIGKILL at teardown [default: the pod
    /// file's terminationGracePeriodSeconds, else 5].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=i32::MAX as u64))]
    pub grace: Option<u64>,
    /// How each container gets its root filesystem: `overlay` (an overlay
    /// mount over the layer cache), `copy` (a private copy of the layers:
    /// slower, for where overlay is not allowed) or `auto` (overlay, else copy).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = RootfsMode::Auto)]
    pub rootfs: RootfsMode,
    /// Platform to pull [default: the host's].
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Verify registry TLS certificates.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub tls_verify: bool,
    /// Run a ready OCI bundle (config.json + rootfs) as the main container
    /// instead of an image (tests and benchmarks).
    #[arg(long, hide = true, value_name = "DIR", conflicts_with_all = ["pod", "image"])]
    pub bundle: Option<PathBuf>,
    /// Add a sidecar from a ready bundle, NAME=DIR (with --bundle; repeatable).
    #[arg(long, hide = true, value_name = "NAME=DIR", requires = "bundle")]
    pub sidecar_bundle: Vec<String>,
    /// Add an init container from a ready bundle, NAME=DIR (with --bundle;
    /// repeatable, run in order).
    #[arg(long, hide = true, value_name = "NAME=DIR", requires = "bundle")]
    pub init_bundle: Vec<String>,
    /// Readiness of a sidecar: NAME=PORT, a TCP connect to 127.0.0.1:PORT
    /// every 100 ms for up to 10 s (with --bundle).
    #[arg(long, hide = true, value_name = "NAME=PORT", requires = "bundle")]
    pub sidecar_ready: Vec<String>,
    /// Image of the main container.
    #[arg(value_name = "IMAGE")]
    pub image: Option<String>,
    /// Command for the main container.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `--rootfs`: in the spirit of podman's storage driver choice (overlay or vfs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RootfsMode {
    Auto,
    Overlay,
    Copy,
}

fn parse_memory(s: &str) -> Result<u64, String> {
    match crate::pod::quantity::bytes(s) {
        Ok(0) => Err("must be more than 0".into()),
        r => r.map_err(|e| e.to_string()),
    }
}

fn parse_cpus(s: &str) -> Result<u64, String> {
    match crate::pod::quantity::millis(s) {
        Ok(0) => Err("must be more than 0".into()),
        r => r.map_err(|e| e.to_string()),
    }
}

/// Seconds between SIGTERM and SIGKILL when neither `--grace` nor the pod
/// file says.
pub const DEFAULT_GRACE: u64 = 5;

pub fn run(g: &Global, a: RunArgs) -> anyhow::Result<u8> {
    if let Some(bundle) = a.bundle.clone() {
        return run_bundles(g, &a, bundle);
    }
    let pod = super::podrun::pod_from_args(&a)?;
    super::podrun::run_pod(g, &a, pod)
}

/// `--bundle`: a pod of ready bundles, no image store involved.
fn run_bundles(g: &Global, a: &RunArgs, main_bundle: PathBuf) -> anyhow::Result<u8> {
    use anyhow::Context;
    use crate::runtime::{self, PlannedContainer, PodPlan, Role, RootfsSource};

    let paths = g.paths();
    crate::paths::Paths::ensure_private_dir(&paths.run_root)
        .with_context(|| format!("creating {}", paths.run_root.display()))?;

    let mut sidecar_cmds = std::collections::HashMap::new();
    for s in &a.sidecar_cmd {
        let (name, cmd) = s.split_once('=').with_context(|| format!("--sidecar-cmd {s:?}: expected NAME=CMD"))?;
        sidecar_cmds.insert(name.to_string(), cmd.split_whitespace().map(String::from).collect::<Vec<_>>());
    }
    let container = |name: &str, role, bundle: PathBuf, command: Option<Vec<String>>| PlannedContainer {
        name: name.to_string(),
        role,
        bundle: std::path::absolute(&bundle).unwrap_or(bundle),
        rootfs: RootfsSource::Bundle,
        command,
        readiness: None,
        limits: runtime::Limits { memory_bytes: a.memory.filter(|_| role == Role::Main), cpu_millis: a.cpus.filter(|_| role == Role::Main), pids: None },
        mounts: Vec::new(),
        tty: role == Role::Main && a.tty,
    };
    let mut containers = Vec::new();
    for s in &a.init_bundle {
        let (name, dir) = s.split_once('=').with_context(|| format!("--init-bundle {s:?}: expected NAME=DIR"))?;
        containers.push(container(name, Role::Init, dir.into(), None));
    }
    for s in &a.sidecar_bundle {
        let (name, dir) = s.split_once('=').with_context(|| format!("--sidecar-bundle {s:?}: expected NAME=DIR"))?;
        containers.push(container(name, Role::Sidecar, dir.into(), sidecar_cmds.remove(name)));
    }
    if let Some(name) = sidecar_cmds.keys().next() {
        anyhow::bail!("--sidecar-cmd names {name:?}, which is no sidecar");
    }
    for s in &a.sidecar_ready {
        let (name, port) = s.split_once('=').with_context(|| format!("--sidecar-ready {s:?}: expected NAME=PORT"))?;
        let port: u16 = port.parse().with_context(|| format!("--sidecar-ready {s:?}: bad port"))?;
        let c = containers
            .iter_mut()
            .find(|c| c.name == name && c.role == Role::Sidecar)
            .with_context(|| format!("--sidecar-ready names {name:?}, which is no sidecar"))?;
        c.readiness = Some(runtime::Probe {
            action: runtime::ProbeAction::Tcp(port),
            initial_delay: std::time::Duration::ZERO,
            period: std::time::Duration::from_millis(100),
            timeout: std::time::Duration::from_secs(1),
            failure_threshold: 100,
        });
    }
    let command = (!a.command.is_empty()).then(|| a.command.clone());
    containers.push(container("main", Role::Main, main_bundle, command));

    let network = match a.network.as_str() {
        "private" => runtime::Network::Private,
        "host" => runtime::Network::Host,
        other => anyhow::bail!("--network {other:?}: expected private or host"),
    };
    let mapping = crate::userns::IdMapping::for_current_user()?;
    let (name, dir) = create_pod_dir(&paths.run_root, a.name.as_deref())?;
    let (workspace, own_workspace) = match &a.workspace {
        Some(w) => (std::path::absolute(w).unwrap_or(w.clone()), false),
        None => {
            let w = paths.run_root.join("workspaces").join(&name);
            std::fs::create_dir_all(&w).with_context(|| format!("creating workspace {}", w.display()))?;
            (w, true)
        }
    };
    let plan = PodPlan {
        name,
        containers,
        workspace: workspace.clone(),
        workspace_path: a.workspace_path.clone(),
        network,
        share_pid: false,
        extra_hosts: Vec::new(),
        grace: std::time::Duration::from_secs(a.grace.unwrap_or(DEFAULT_GRACE)),
        quiet_sidecars: a.quiet_sidecars,
        pids_limit: a.pids_limit,
    };
    let opts = runtime::LaunchOptions { mapping: &mapping, verbose: g.verbose, keep_state: a.keep };
    let result = runtime::launch(&plan, &dir, &opts);
    if result.is_err() && !a.keep {
        let _ = dir.remove();
    }
    if own_workspace && !a.keep {
        if let Err(e) = runtime::cleanup::remove_tree(&workspace) {
            tracing::warn!("removing workspace {}: {e}", workspace.display());
        }
    }
    Ok(result?)
}

/// The pod's state directory: `--name`, or a generated name.
fn create_pod_dir(run_root: &std::path::Path, name: Option<&str>) -> anyhow::Result<(String, crate::runtime::PodDir)> {
    use crate::runtime::{plan::check_label, PodDir};
    if let Some(n) = name {
        check_label(n)?;
        return Ok((n.to_string(), PodDir::create(run_root, n)?));
    }
    let mut last = None;
    for i in 0..16u64 {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos() as u64).unwrap_or(0);
        let n = format!("berth-{:06x}", (u64::from(std::process::id()) * 7919 + t + i * 104729) & 0xff_ffff);
        match PodDir::create(run_root, &n) {
            Ok(d) => return Ok((n, d)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map(anyhow::Error::new).unwrap_or_else(|| anyhow::anyhow!("cannot name the pod")))
}
