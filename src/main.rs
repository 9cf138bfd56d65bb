//! The `berth` binary: a thin CLI over the library (see `cli`).

#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

use std::process::ExitCode;

mod cli;

fn main() -> ExitCode {
    cli::main()
}
