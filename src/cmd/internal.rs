//! Hidden entry points that berth re-executes itself into. Namespace set-up
//! (`unshare`, `setns` into a user namespace) and libcontainer's `build()`
//! need a fresh single-threaded process, which the tokio-driven parent is not.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::cli::Global;
use crate::runtime;

#[derive(Debug, Args)]
pub struct InternalArgs {
    #[command(subcommand)]
    pub what: Internal,
}

#[derive(Debug, Subcommand)]
pub enum Internal {
    /// The pod process: PID 1 of the pod's user and PID namespaces.
    Pod { state_dir: PathBuf },
    /// Remove a tree as uid 0 of a mapped user namespace.
    Rmtree { path: PathBuf },
    /// Unpack image layers into the layer cache, inside the user namespace
    /// the pods use (see `cmd::provision`).
    Unpack { job: PathBuf },
}

pub fn run(g: &Global, a: InternalArgs) -> anyhow::Result<u8> {
    match a.what {
        Internal::Pod { state_dir } => match runtime::pod::run(&state_dir) {
            Ok(code) => Ok(code),
            Err(e) => {
                // The pod process reports its own failure: berth passes the
                // status (125, 126, 127 or 128+N) through unchanged.
                let code = e.exit_code();
                crate::exit::report(&anyhow::Error::new(e));
                Ok(code)
            }
        },
        Internal::Unpack { job } => super::provision::unpack_job(g, &job),
        Internal::Rmtree { path } => {
            runtime::cleanup::rmtree_in_namespace(&path)?;
            Ok(0)
        }
    }
}
