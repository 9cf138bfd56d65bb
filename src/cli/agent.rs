//! `berth agent`: the command a Jenkins node runs ("Launch agent via
//! execution of command on the controller"). Jenkins adds no arguments and
//! uses no shell, so what it does not say on the command line comes from
//! the environment it sets (`AGENTJAR_URL`, `JENKINS_URL`, `WORKSPACE`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use berth::agent::{self, AgentSettings};
use berth::planner::{self, UsernsMode};
use berth::pod::shorthand::ShorthandArgs;

use super::pod_options::PodOptions;
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
    #[command(flatten)]
    pub opts: PodOptions,
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
    /// Where the workspace appears in the containers, and the agent's -workDir
    /// [default: $WORKSPACE, else /workspace].
    #[arg(long, value_name = "PATH", env = "WORKSPACE", default_value = "/workspace")]
    pub workspace_path: String,
    /// Seconds between SIGTERM and SIGKILL at teardown [default: the pod
    /// file's, else 3: Jenkins SIGKILLs berth 5 s after its SIGTERM].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(0..=i32::MAX as u64))]
    pub grace: Option<u64>,
    /// User namespace: `keep-id` (the build's user is you, so what it writes
    /// in the workspace is yours: Jenkins can read and clean it) or `default`
    /// (container root is you, other ids your subordinate ids).
    #[arg(long, value_enum, value_name = "MODE", default_value_t = UsernsMode::KeepId)]
    pub userns: UsernsMode,
    /// The build image (the agent's container).
    #[arg(value_name = "IMAGE")]
    pub image: Option<String>,
}

/// Seconds of grace when neither the option nor the pod file says.
const AGENT_GRACE: Duration = Duration::from_secs(3);

pub fn run(g: &Global, a: AgentArgs) -> anyhow::Result<u8> {
    let paths = g.paths();
    let agent_jar = a.agent_jar.clone().filter(|j| !j.is_empty()).context("no agent jar: give --agent-jar PATH|URL or set AGENTJAR_URL")?;
    let overrides = a.opts.overrides(Some(a.workspace_path.clone()));
    let pod = match &a.pod {
        Some(file) => planner::pod_from_file(file, &overrides)?,
        None => {
            let shorthand = ShorthandArgs {
                image: a.image.clone().context("a build IMAGE or --pod FILE is needed")?,
                command: Vec::new(),
                name: a.opts.name.clone(),
                main: a.opts.main.clone(),
                sidecars: a.opts.sidecar.clone(),
                sidecar_cmds: a.opts.sidecar_cmd.clone(),
                env: a.opts.env.clone(),
                workdir: Some(a.workspace_path.clone()),
                tty: false,
                network: a.opts.network.unwrap_or_default(),
            };
            planner::pod_from_image(&shorthand, &overrides)?
        }
    };
    let grace = a.grace.map(Duration::from_secs).or(pod.grace_seconds.map(Duration::from_secs)).unwrap_or(AGENT_GRACE);
    let settings = a.opts.settings(g, &a.workspace_path, Some(grace), a.userns);
    let agent = AgentSettings {
        agent_image: a.agent_image.clone(),
        agent_jar,
        jenkins_url: a.jenkins_url.clone(),
        agent_args: a.agent_arg.clone(),
        tls_verify: a.opts.tls_verify,
    };
    agent::run(&paths, pod, &agent, &settings)
}
