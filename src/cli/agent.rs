//! `berth agent`: the command a Jenkins node runs ("Launch agent via
//! execution of command on the controller"). Jenkins adds no arguments and
//! uses no shell, so what it does not say on the command line comes from
//! the environment it sets (`AGENTJAR_URL`, `JENKINS_URL`, `WORKSPACE`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use berth::agent::{self, AgentSettings};
use berth::planner::{self, PodOverrides, RootfsMode, RunSettings, UsernsMode};
use berth::pod::{self, shorthand::ShorthandArgs};
use berth::provision::Fetch;

use super::run::{parse_cpus, parse_memory};
use super::Global;

/// Shown by `berth agent --help`.
const AGENT_EXAMPLES: &str = "\
Jenkins node, launch method \"Launch agent via execution of command on the controller\":
  /usr/local/bin/berth agent --workspace /var/lib/jenkins/agent maven:3-eclipse-temurin-17
  berth agent --pod /etc/berth/build-with-db.yaml
  ssh build-host-3 berth agent --pod /etc/berth/build.yaml

Jenkins sets AGENTJAR_URL (agent.jar is fetched from it and cached),
JENKINS_URL (one jar cache per controller) and WORKSPACE (the node's remote
root: the workspace's path in the container). Pull progress and errors go to
stderr, the node's launch log; stdout is the agent's from its first byte.";

#[derive(Debug, Args)]
#[command(after_long_help = AGENT_EXAMPLES)]
pub struct AgentArgs {
    /// Kubernetes Pod manifest: its main container becomes the agent.
    #[arg(long, value_name = "FILE", conflicts_with = "image")]
    pub pod: Option<PathBuf>,
    /// The image whose Java runs the agent (its JAVA_HOME, else java on its PATH).
    #[arg(long, value_name = "IMAGE", default_value = agent::DEFAULT_AGENT_IMAGE)]
    pub agent_image: String,
    /// agent.jar: a file or an http(s) URL [default: $AGENTJAR_URL].
    #[arg(long, value_name = "PATH|URL", env = "AGENTJAR_URL")]
    pub agent_jar: Option<String>,
    /// The controller's URL: one jar cache per controller [default: $JENKINS_URL].
    #[arg(long, value_name = "URL", env = "JENKINS_URL")]
    pub jenkins_url: Option<String>,
    /// Another argument for agent.jar (repeatable).
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub agent_arg: Vec<String>,
    /// Pod name [default: from the pod file, or generated].
    #[arg(long)]
    pub name: Option<String>,
    /// Which container is the agent [default: the pod's main one].
    #[arg(long, value_name = "NAME")]
    pub main: Option<String>,
    /// Add a sidecar container NAME=IMAGE (repeatable).
    #[arg(long, value_name = "NAME=IMAGE")]
    pub sidecar: Vec<String>,
    /// Command for a sidecar: 'NAME=CMD ARGS...' (repeatable).
    #[arg(long, value_name = "NAME=CMD")]
    pub sidecar_cmd: Vec<String>,
    /// Environment variable for the agent's container (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Host directory shared by every container [default: a fresh one, removed at exit].
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Where the workspace appears in the containers, and the agent's -workDir
    /// [default: $WORKSPACE, else /workspace].
    #[arg(long, value_name = "PATH", env = "WORKSPACE", default_value = "/workspace")]
    pub workspace_path: String,
    /// Keep the workspace and state after the pod ends.
    #[arg(long)]
    pub keep: bool,
    /// The pod's network: `private` or `host`.
    #[arg(long, value_enum, value_name = "MODE")]
    pub network: Option<pod::Network>,
    /// Memory limit of the agent's container (512Mi, 2Gi).
    #[arg(long, value_name = "QUANTITY", value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// CPU limit of the agent's container in cores (1.5, 500m).
    #[arg(long, value_name = "QUANTITY", value_parser = parse_cpus)]
    pub cpus: Option<u64>,
    /// Most tasks in the whole pod.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub pids_limit: Option<u64>,
    /// Do not echo sidecar output to stderr.
    #[arg(long)]
    pub quiet_sidecars: bool,
    /// Seconds between SIGTERM and SIGKILL at teardown [default: the pod
    /// file's, else 3: Jenkins SIGKILLs berth 5 s after its SIGTERM].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=i32::MAX as u64))]
    pub grace: Option<u64>,
    /// How each container gets its root filesystem: `overlay`, `copy` or `auto`.
    #[arg(long, value_enum, value_name = "MODE", default_value_t)]
    pub rootfs: RootfsMode,
    /// Platform to pull [default: the host's].
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Verify registry (and agent.jar) TLS certificates.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub tls_verify: bool,
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
    /// User of the build container, UID[:GID] [default: the pod file's
    /// runAsUser, else the image's User].
    #[arg(short = 'u', long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// User namespace: `keep-id` (the build's user is you, so what it writes
    /// in the workspace is yours: Jenkins can read and clean it) or `default`
    /// (container root is you, other ids your subordinate ids).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = UsernsMode::KeepId)]
    pub userns: UsernsMode,
    /// Map a pod file's secret, configMap or projected volume NAME to a
    /// host file or directory (read-only; repeatable).
    #[arg(long, value_name = "NAME=PATH", value_parser = super::run::parse_volume_from, requires = "pod")]
    pub volume_from: Vec<(String, std::path::PathBuf)>,
    /// The build image (the agent's container).
    #[arg(value_name = "IMAGE")]
    pub image: Option<String>,
}

/// Seconds of grace when neither the option nor the pod file says.
const AGENT_GRACE: Duration = Duration::from_secs(3);

pub fn run(g: &Global, a: AgentArgs) -> anyhow::Result<u8> {
    let paths = g.paths();
    let agent_jar = a.agent_jar.clone().filter(|j| !j.is_empty()).context("no agent jar: give --agent-jar PATH|URL or set AGENTJAR_URL")?;
    let overrides = PodOverrides {
        name: a.name.clone(),
        main: a.main.clone(),
        network: a.network,
        memory_bytes: a.memory,
        cpu_millis: a.cpus,
        env: a.env.clone(),
        workdir: Some(a.workspace_path.clone()),
        volume_from: a.volume_from.clone(),
        ports: a.publish.clone(),
        user: a.user.clone(),
    };
    let pod = match &a.pod {
        Some(file) => planner::pod_from_file(file, &overrides)?,
        None => {
            let shorthand = ShorthandArgs {
                image: a.image.clone().context("a build IMAGE or --pod FILE is needed")?,
                command: Vec::new(),
                name: a.name.clone(),
                main: a.main.clone(),
                sidecars: a.sidecar.clone(),
                sidecar_cmds: a.sidecar_cmd.clone(),
                env: a.env.clone(),
                workdir: Some(a.workspace_path.clone()),
                tty: false,
                network: a.network.unwrap_or_default(),
            };
            planner::pod_from_image(&shorthand, &overrides)?
        }
    };
    let grace = a.grace.map(Duration::from_secs).or(pod.grace_seconds.map(Duration::from_secs)).unwrap_or(AGENT_GRACE);
    let settings = RunSettings {
        workspace: a.workspace.clone(),
        workspace_path: a.workspace_path.clone(),
        keep: a.keep,
        rootfs: a.rootfs,
        grace: Some(grace),
        quiet_sidecars: a.quiet_sidecars,
        pids_limit: a.pids_limit,
        fetch: Fetch { platform: a.platform.clone(), tls_verify: a.tls_verify, quiet: false },
        verbose: g.verbose,
        http_proxy: a.http_proxy,
        host_loopback: a.host_loopback,
        userns: a.userns,
    };
    let agent = AgentSettings {
        agent_image: a.agent_image.clone(),
        agent_jar,
        jenkins_url: a.jenkins_url.clone(),
        agent_args: a.agent_arg.clone(),
        tls_verify: a.tls_verify,
    };
    agent::run(&paths, pod, &agent, &settings)
}
