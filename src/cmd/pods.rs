//! `berth ps`, `exec`, `logs`, `stop`, `rm`.

use clap::Args;

use crate::cli::Global;

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

pub fn ps(_g: &Global, _a: PsArgs) -> anyhow::Result<u8> {
    anyhow::bail!("ps is not written yet")
}
pub fn exec(_g: &Global, _a: ExecArgs) -> anyhow::Result<u8> {
    anyhow::bail!("exec is not written yet")
}
pub fn logs(_g: &Global, _a: LogsArgs) -> anyhow::Result<u8> {
    anyhow::bail!("logs is not written yet")
}
pub fn stop(_g: &Global, _a: StopArgs) -> anyhow::Result<u8> {
    anyhow::bail!("stop is not written yet")
}
pub fn rm(_g: &Global, _a: RmArgs) -> anyhow::Result<u8> {
    anyhow::bail!("rm is not written yet")
}
