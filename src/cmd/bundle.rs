//! `berth bundle`.

use std::path::PathBuf;

use clap::Args;

use crate::cli::Global;

#[derive(Debug, Args)]
pub struct BundleArgs {
    /// Container name (the bundle's hostname) [default: the image's base name].
    #[arg(long)]
    pub name: Option<String>,
    /// Map every file owner outside the subordinate id range to the user.
    #[arg(long)]
    pub squash_ids: bool,
    /// Override the image's Entrypoint.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Set an environment variable (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// User (NAME or UID[:GID]) to run as.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Image to bundle (pulled if not in the store).
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Directory to write the bundle into (created; must be empty if it exists).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Command overriding the image's Cmd.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub fn run(_g: &Global, _a: BundleArgs) -> anyhow::Result<u8> {
    anyhow::bail!("bundle is not written yet")
}
