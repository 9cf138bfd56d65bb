//! `berth images`, `berth rmi`, `berth gc`.

use clap::Args;

use crate::cli::Global;

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Print only digests.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Images to remove.
    #[arg(value_name = "REF", required = true)]
    pub references: Vec<String>,
}

#[derive(Debug, Args)]
pub struct GcArgs {}

pub fn images(_g: &Global, _a: ImagesArgs) -> anyhow::Result<u8> {
    anyhow::bail!("images is not written yet")
}

pub fn rmi(_g: &Global, _a: RmiArgs) -> anyhow::Result<u8> {
    anyhow::bail!("rmi is not written yet")
}

pub fn gc(_g: &Global, _a: GcArgs) -> anyhow::Result<u8> {
    anyhow::bail!("gc is not written yet")
}
