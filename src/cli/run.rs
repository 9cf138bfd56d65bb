//! `berth run`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use berth::planner::{self, BundleContainer, BundlePod, PodOverrides, RootfsMode, RunSettings, UsernsMode};
use berth::pod::{self, shorthand::ShorthandArgs};
use berth::provision::Fetch;
use berth::runtime::{self, Role};

use super::Global;

/// Shown by `berth run --help`.
const RUN_EXAMPLES: &str = "\
Examples:
  berth run busybox -- sh -c 'echo hello'
      one container; its stdin and stdout are berth's own
  berth run --sidecar db=postgres:16 maven:3-eclipse-temurin-17 -- mvn -B verify
      the build reaches the database as db:5432 (every container name and the
      pod name resolve to 127.0.0.1 in the pod's own network), and the
      internet and the host (host.containers.internal) through pasta
  berth run -p 127.0.0.1:8080:80 IMAGE -- httpd -f -p 80
      the host's 127.0.0.1:8080 reaches port 80 in the pod
  berth run --pod bundles/demo.yaml
      a Kubernetes Pod file: init containers run first, readiness probes gate
      the main container (the first of spec.containers, or --main NAME)
  berth check KubernetesPod.yaml   (or berth run --pod FILE --dry-run)
      validate a pod file or Jenkins pod template and print its plan
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
    /// Pod name [default: from the pod file, else the file's name with a
    /// random suffix, or generated].
    #[arg(long)]
    pub name: Option<String>,
    /// Give a pod file's volume NAME this host file or directory instead of
    /// its own source: how a secret or configMap volume (mounted read-only,
    /// as on a cluster) gets its content (repeatable).
    #[arg(long, value_name = "NAME=PATH", value_parser = parse_volume_from, requires = "pod")]
    pub volume_from: Vec<(String, PathBuf)>,
    /// Validate the pod file and print the plan on stdout (containers,
    /// images, roles, mounts, network, warnings); pull and run nothing.
    #[arg(long, requires = "pod")]
    pub dry_run: bool,
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
    /// User namespace: `default` (container root is you, other ids your
    /// subordinate ids) or `keep-id` (the main container's user is you, so
    /// what it writes in the workspace is yours).
    #[arg(long, value_enum, value_name = "MODE", default_value_t)]
    pub userns: UsernsMode,
    /// Working directory of the main container.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// Allocate a pseudo-terminal for the main container (never for Jenkins).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Host directory shared by every container [default: a fresh, empty one, removed with the pod].
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Where the workspace appears in the containers.
    #[arg(long, value_name = "PATH", default_value = "/workspace")]
    pub workspace_path: String,
    /// Keep the workspace and state after the pod ends (until `berth rm NAME`).
    #[arg(long)]
    pub keep: bool,
    /// The pod's network: `outbound` (its own namespace with outbound access
    /// through pasta or slirp4netns; the host is `host.containers.internal`),
    /// `none` (its own namespace, loopback only; `private` is the old name) or
    /// `host` [default: the pod file's hostNetwork, else outbound].
    #[arg(long, value_enum, value_name = "MODE")]
    pub network: Option<pod::Network>,
    /// Forward a host port to a port in the pod, [HOSTIP:]HOSTPORT:PORT
    /// (repeatable; outbound network only).
    #[arg(short = 'p', long = "publish", value_name = "[HOSTIP:]HOSTPORT:PORT")]
    pub publish: Vec<pod::PortMapping>,
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
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=planner::MAX_PIDS))]
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
    #[arg(long, value_enum, value_name = "MODE", default_value_t)]
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

pub(super) fn parse_volume_from(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, path)) if !name.is_empty() && path.starts_with('/') => Ok((name.to_string(), PathBuf::from(path))),
        Some((name, _)) if !name.is_empty() => Err("the host path must be absolute".into()),
        _ => Err("expected NAME=PATH".into()),
    }
}

pub(super) fn parse_memory(s: &str) -> Result<u64, String> {
    match berth::pod::quantity::bytes(s) {
        Ok(0) => Err("must be more than 0".into()),
        Ok(b) if i64::try_from(b).is_err() => Err(format!("must be at most {} bytes", i64::MAX)),
        r => r.map_err(|e| e.to_string()),
    }
}

pub(super) fn parse_cpus(s: &str) -> Result<u64, String> {
    match berth::pod::quantity::millis(s) {
        Ok(0) => Err("must be more than 0".into()),
        Ok(m) if m > planner::MAX_CPU_MILLIS => Err(format!("must be at most {} cores", planner::MAX_CPU_MILLIS / 1000)),
        r => r.map_err(|e| e.to_string()),
    }
}

pub fn run(g: &Global, a: RunArgs) -> anyhow::Result<u8> {
    let paths = g.paths();
    let settings = RunSettings {
        workspace: a.workspace.clone(),
        workspace_path: a.workspace_path.clone(),
        keep: a.keep,
        rootfs: a.rootfs,
        grace: a.grace.map(Duration::from_secs),
        quiet_sidecars: a.quiet_sidecars,
        pids_limit: a.pids_limit,
        fetch: Fetch { platform: a.platform.clone(), tls_verify: a.tls_verify, quiet: false },
        verbose: g.verbose,
        http_proxy: a.http_proxy,
        host_loopback: a.host_loopback,
        userns: a.userns,
    };
    if let Some(main) = &a.bundle {
        return planner::run_bundles(&paths, &bundle_pod(&a, main)?, &settings);
    }
    let overrides = PodOverrides {
        name: a.name.clone(),
        main: a.main.clone(),
        network: a.network,
        ports: a.publish.clone(),
        memory_bytes: a.memory,
        cpu_millis: a.cpus,
        env: a.env.clone(),
        workdir: a.workdir.clone(),
        volume_from: a.volume_from.clone(),
        user: a.user.clone(),
    };
    if let (Some(file), true) = (&a.pod, a.dry_run) {
        return super::check::print_plan(file, &overrides, &settings);
    }
    let pod = match &a.pod {
        Some(file) => {
            let (pod, warnings) = planner::read_pod_file(file, &overrides)?;
            // Refused before its warnings: the one line says what to do.
            planner::refuse_agent(&pod)?;
            for w in &warnings {
                tracing::warn!("{w}");
            }
            pod
        }
        None => {
            let shorthand = ShorthandArgs {
                image: a.image.clone().context("an IMAGE or --pod FILE is needed")?,
                command: a.command.clone(),
                name: a.name.clone(),
                main: a.main.clone(),
                sidecars: a.sidecar.clone(),
                sidecar_cmds: a.sidecar_cmd.clone(),
                env: a.env.clone(),
                workdir: a.workdir.clone(),
                tty: a.tty,
                network: a.network.unwrap_or_default(),
            };
            planner::pod_from_image(&shorthand, &overrides)?
        }
    };
    planner::run_pod(&paths, &pod, &settings)
}

/// `--bundle DIR` and its companions: a pod of ready bundles.
fn bundle_pod(a: &RunArgs, main: &std::path::Path) -> anyhow::Result<BundlePod> {
    let pair = |flag: &str, s: &str, what: &str| -> anyhow::Result<(String, String)> {
        let (k, v) = s.split_once('=').with_context(|| format!("{flag} {s:?}: expected {what}"))?;
        Ok((k.to_string(), v.to_string()))
    };
    let mut sidecar_cmds = HashMap::new();
    for s in &a.sidecar_cmd {
        let (name, cmd) = pair("--sidecar-cmd", s, "NAME=CMD")?;
        sidecar_cmds.insert(name, cmd.split_whitespace().map(String::from).collect::<Vec<_>>());
    }
    let container = |name: String, role, bundle: PathBuf, command| BundleContainer {
        name,
        role,
        bundle,
        command,
        ready_port: None,
        limits: runtime::Limits {
            memory_bytes: a.memory.filter(|_| role == Role::Main),
            cpu_millis: a.cpus.filter(|_| role == Role::Main),
            pids: None,
        },
        tty: role == Role::Main && a.tty,
    };
    let mut containers = Vec::new();
    for s in &a.init_bundle {
        let (name, dir) = pair("--init-bundle", s, "NAME=DIR")?;
        containers.push(container(name, Role::Init, dir.into(), None));
    }
    for s in &a.sidecar_bundle {
        let (name, dir) = pair("--sidecar-bundle", s, "NAME=DIR")?;
        let cmd = sidecar_cmds.remove(&name);
        containers.push(container(name, Role::Sidecar, dir.into(), cmd));
    }
    if let Some(name) = sidecar_cmds.keys().next() {
        anyhow::bail!("--sidecar-cmd names {name:?}, which is no sidecar");
    }
    for s in &a.sidecar_ready {
        let (name, port) = pair("--sidecar-ready", s, "NAME=PORT")?;
        let port: u16 = port.parse().with_context(|| format!("--sidecar-ready {s:?}: bad port"))?;
        let c = containers
            .iter_mut()
            .find(|c| c.name == name && c.role == Role::Sidecar)
            .with_context(|| format!("--sidecar-ready names {name:?}, which is no sidecar"))?;
        c.ready_port = Some(port);
    }
    let command = (!a.command.is_empty()).then(|| a.command.clone());
    containers.push(container("main".into(), Role::Main, main.to_path_buf(), command));
    Ok(BundlePod { name: a.name.clone(), network: a.network.unwrap_or_default(), ports: a.publish.clone(), containers })
}
