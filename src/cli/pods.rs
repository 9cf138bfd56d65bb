//! `berth ps`, `exec`, `logs`, `stop`, `rm`.

use std::io::{Read, Write};

use anyhow::Context;
use clap::Args;

use berth::runtime::{self, state, PodDir, Role};

use super::Global;

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Include pods that have ended but left state behind.
    #[arg(short, long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Allocate a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    pub pod: String,
    pub container: String,
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep following the log.
    #[arg(short, long)]
    pub follow: bool,
    pub pod: String,
    pub container: Option<String>,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    pub pod: String,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    pub pod: String,
}

pub fn ps(g: &Global, a: PsArgs) -> anyhow::Result<u8> {
    let paths = g.paths();
    let mut out = String::from("NAME\tSTATUS\tCONTAINERS\tPEAK MEMORY\tAGE\n");
    for pod in state::list(&paths.run_root) {
        let live = pod.is_live();
        if !live && !a.all {
            continue;
        }
        let status = pod.read_status().ok();
        let phase = match (&status, live) {
            (Some(s), true) => format!("{:?}", s.phase).to_lowercase(),
            (Some(s), false) => format!("exited ({})", s.exit_code.map(|c| c.to_string()).unwrap_or("?".into())),
            (None, _) => "creating".into(),
        };
        let containers = status
            .as_ref()
            .map(|s| s.containers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        let peak = pod
            .peak_memory(live)
            .map(|b| format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64))
            .unwrap_or_else(|| "-".into());
        let age = pod
            .read_owner()
            .map(|o| humantime::format_duration(std::time::Duration::from_secs(state::now_unix().saturating_sub(o.created))).to_string())
            .unwrap_or_else(|_| "-".into());
        out.push_str(&format!("{}\t{phase}\t{containers}\t{peak}\t{age}\n", pod.name()));
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(0)
}

pub fn exec(g: &Global, a: ExecArgs) -> anyhow::Result<u8> {
    let dir = PodDir::open(&g.paths().run_root, &a.pod)?;
    let code = runtime::host::exec::exec(&dir, &a.container, a.command, a.tty)
        .with_context(|| format!("exec in {}/{}", a.pod, a.container))?;
    Ok(code)
}

pub fn logs(g: &Global, a: LogsArgs) -> anyhow::Result<u8> {
    let dir = PodDir::open(&g.paths().run_root, &a.pod)?;
    let plan = dir.read_plan()?;
    let names: Vec<String> = match &a.container {
        Some(c) => {
            if !plan.containers.iter().any(|x| &x.name == c) {
                anyhow::bail!("no container {c} in pod {}", a.pod);
            }
            vec![c.clone()]
        }
        None => plan.containers.iter().filter(|c| c.role != Role::Main).map(|c| c.name.clone()).collect(),
    };
    let prefix = names.len() > 1;
    let mut files: Vec<(String, Option<std::fs::File>, Vec<u8>)> = names.into_iter().map(|n| (n, None, Vec::new())).collect();
    let mut stdout = std::io::stdout().lock();
    loop {
        for (name, file, partial) in files.iter_mut() {
            if file.is_none() {
                *file = std::fs::File::open(dir.log_path(name)).ok();
            }
            let Some(f) = file else { continue };
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            if !prefix {
                stdout.write_all(&buf)?;
                continue;
            }
            partial.extend_from_slice(&buf);
            while let Some(i) = partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = partial.drain(..=i).collect();
                stdout.write_all(format!("[{name}] ").as_bytes())?;
                stdout.write_all(&line)?;
            }
        }
        stdout.flush()?;
        if !a.follow || !dir.dir.exists() || !dir.is_live() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Ok(0)
}

pub fn stop(g: &Global, a: StopArgs) -> anyhow::Result<u8> {
    let dir = PodDir::open(&g.paths().run_root, &a.pod)?;
    if !dir.is_live() {
        anyhow::bail!("pod {} is not running", a.pod);
    }
    let owner = dir.read_owner()?;
    let plan = dir.read_plan()?;
    // The pod process forwards SIGTERM to the main container, then tears down.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(owner.pod_pid), nix::sys::signal::Signal::SIGTERM)
        .with_context(|| format!("signalling pod {}", a.pod))?;
    let deadline = std::time::Instant::now() + plan.grace * 2 + std::time::Duration::from_secs(10);
    while dir.is_live() && dir.dir.exists() {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("pod {} did not stop in time", a.pod);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(0)
}

pub fn rm(g: &Global, a: RmArgs) -> anyhow::Result<u8> {
    let dir = PodDir::open(&g.paths().run_root, &a.pod)?;
    if dir.is_live() {
        anyhow::bail!("pod {} is running: `berth stop {}` first", a.pod, a.pod);
    }
    dir.remove()?;
    Ok(0)
}
