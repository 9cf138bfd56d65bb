//! `berth pull`.

use clap::Args;

use crate::cli::Global;

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Platform to pick from a multi-platform image [default: the host's].
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Verify the registry's TLS certificate (false also allows plain HTTP).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub tls_verify: bool,
    /// No progress output.
    #[arg(short, long)]
    pub quiet: bool,
    /// Image reference.
    #[arg(value_name = "REF")]
    pub reference: String,
}

pub fn run(_g: &Global, _a: PullArgs) -> anyhow::Result<u8> {
    anyhow::bail!("pull is not written yet")
}
