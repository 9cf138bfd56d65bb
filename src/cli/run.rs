//! `berth run`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use berth::planner::{self, BundleContainer, BundlePod, UsernsMode};
use berth::pod::shorthand::ShorthandArgs;
use berth::runtime::{self, Role};

use super::pod_options::PodOptions;
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
    #[command(flatten)]
    pub opts: PodOptions,
    /// Validate the pod file and print the plan on stdout (containers,
    /// images, roles, mounts, network, warnings); pull and run nothing.
    #[arg(long, requires = "pod")]
    pub dry_run: bool,
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
    /// Where the workspace appears in the containers.
    #[arg(long, value_name = "PATH", default_value = "/workspace")]
    pub workspace_path: String,
    /// Seconds between SIGTERM and SIGKILL at teardown [default: the pod
    /// file's terminationGracePeriodSeconds, else 5].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=i32::MAX as u64))]
    pub grace: Option<u64>,
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

pub fn run(g: &Global, a: RunArgs) -> anyhow::Result<u8> {
    let paths = g.paths();
    let settings = a.opts.settings(g, &a.workspace_path, a.grace.map(Duration::from_secs), a.userns);
    if let Some(main) = &a.bundle {
        return planner::run_bundles(&paths, &bundle_pod(&a, main)?, &settings);
    }
    let overrides = a.opts.overrides(a.workdir.clone());
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
                name: a.opts.name.clone(),
                main: a.opts.main.clone(),
                sidecars: a.opts.sidecar.clone(),
                sidecar_cmds: a.opts.sidecar_cmd.clone(),
                env: a.opts.env.clone(),
                workdir: a.workdir.clone(),
                tty: a.tty,
                network: a.opts.network.unwrap_or_default(),
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
    for s in &a.opts.sidecar_cmd {
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
            memory_bytes: a.opts.memory.filter(|_| role == Role::Main),
            cpu_millis: a.opts.cpus.filter(|_| role == Role::Main),
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
    Ok(BundlePod { name: a.opts.name.clone(), network: a.opts.network.unwrap_or_default(), ports: a.opts.publish.clone(), containers })
}
