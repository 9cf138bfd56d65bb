//! `berth run`.

use std::path::PathBuf;

use clap::Args;

use crate::cli::Global;

#[derive(Debug, Args)]
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
    /// Command for a sidecar: NAME=CMD ARGS... (split on whitespace; repeatable).
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
    /// Do not echo sidecar output to stderr.
    #[arg(long)]
    pub quiet_sidecars: bool,
    /// Seconds between SIGTERM and SIGKILL for sidecars at teardown.
    #[arg(long, default_value_t = 5)]
    pub grace: u64,
    /// Platform to pull [default: the host's].
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Verify registry TLS certificates.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub tls_verify: bool,
    /// Image of the main container.
    #[arg(value_name = "IMAGE")]
    pub image: Option<String>,
    /// Command for the main container.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub fn run(_g: &Global, _a: RunArgs) -> anyhow::Result<u8> {
    anyhow::bail!("run is not written yet")
}
