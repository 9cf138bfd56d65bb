//! The `berth` binary: parse the command line, set up logging on stderr, run,
//! and turn the outcome into an exit status.

use std::process::ExitCode;

fn main() -> ExitCode {
    berth::cli::main()
}
