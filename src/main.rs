//! The `berth` binary: a thin CLI over the library (see `cli`).

use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    cli::main()
}
