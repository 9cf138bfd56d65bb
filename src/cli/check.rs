//! `berth check FILE` (and `berth run --pod FILE --dry-run`): a pod file
//! validated and its plan printed, with nothing pulled or run, so CI can
//! test pod templates themselves. The plan is the planner's own
//! ([`planner::describe`]); this file only prints it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;

use berth::planner::{self, PlanDescription, PodOverrides, RunSettings};
use berth::pod::ProbeAction;
use berth::runtime::Role;

use super::Global;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Kubernetes Pod manifest or Jenkins pod template.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Pod name [default: the file's, else its file name with a random suffix].
    #[arg(long)]
    pub name: Option<String>,
    /// Which container is the main one [default: the agent's, else the first].
    #[arg(long, value_name = "NAME")]
    pub main: Option<String>,
    /// Map the pod file's volume NAME to a host file or directory (repeatable).
    #[arg(long, value_name = "NAME=PATH", value_parser = super::pod_options::parse_volume_from)]
    pub volume_from: Vec<(String, PathBuf)>,
    /// Where the workspace appears in the containers.
    #[arg(long, value_name = "PATH", default_value = "/workspace")]
    pub workspace_path: String,
}

pub fn run(_g: &Global, a: CheckArgs) -> anyhow::Result<u8> {
    let overrides = PodOverrides { name: a.name, main: a.main, volume_from: a.volume_from, ..PodOverrides::default() };
    let settings = RunSettings { workspace_path: a.workspace_path, ..RunSettings::default() };
    print_plan(&a.file, &overrides, &settings)
}

/// Validates `file` and prints its plan on stdout; exit status 0.
pub fn print_plan(file: &Path, o: &PodOverrides, s: &RunSettings) -> anyhow::Result<u8> {
    let (pod, warnings) = planner::read_pod_file(file, o)?;
    let text = render(&planner::describe(&pod, s, warnings));
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(0)
}

fn render(d: &PlanDescription) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "pod {}: valid", d.name);
    let _ = writeln!(out, "isolation: {}", d.isolation);
    let _ = writeln!(out, "network: {}", d.network);
    let _ = writeln!(out, "workspace: {} (every container)", d.workspace);
    let _ = writeln!(out, "grace: {}s", d.grace.as_secs());
    for c in &d.containers {
        let role = match c.role {
            Role::Init => "init",
            Role::Sidecar if c.native_sidecar => "sidecar (native: started in init order)",
            Role::Sidecar => "sidecar",
            Role::Main if c.agent => "main (the Jenkins agent: berth agent supplies image and command)",
            Role::Main => "main",
        };
        let _ = writeln!(out, "container {}: {role}", c.name);
        if !c.agent {
            let _ = writeln!(out, "  image: {} (pull: {})", c.image, c.pull_policy);
        }
        if let Some(cmd) = &c.command {
            let _ = writeln!(out, "  command: {cmd:?}");
        }
        if let Some(args) = &c.args {
            let _ = writeln!(out, "  args: {args:?}");
        }
        for (k, v) in &c.env {
            let _ = writeln!(out, "  env: {k}={v:?}");
        }
        for (path, volume, ro) in &c.mounts {
            let _ = writeln!(out, "  mount: {path} <- volume {volume}{}", if *ro { " (read-only)" } else { "" });
        }
        match &c.readiness {
            Some(ProbeAction::Tcp(port)) => {
                let _ = writeln!(out, "  ready: tcp port {port}");
            }
            Some(ProbeAction::Exec(cmd)) => {
                let _ = writeln!(out, "  ready: exec {cmd:?}");
            }
            None => {}
        }
        if c.tty {
            let _ = writeln!(out, "  tty: yes");
        }
    }
    for (name, what) in &d.volumes {
        let _ = writeln!(out, "volume {name}: {what}");
    }
    for w in &d.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}
