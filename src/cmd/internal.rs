//! Hidden entry points that berth re-executes itself into. Namespace set-up
//! (`unshare`, `setns` into a user namespace) and libcontainer's `build()`
//! need a fresh single-threaded process, which the tokio-driven parent is not.

use clap::{Args, Subcommand};

use crate::cli::Global;

#[derive(Debug, Args)]
pub struct InternalArgs {
    #[command(subcommand)]
    pub what: Internal,
}

#[derive(Debug, Subcommand)]
pub enum Internal {}

pub fn run(_g: &Global, a: InternalArgs) -> anyhow::Result<u8> {
    match a.what {}
}
