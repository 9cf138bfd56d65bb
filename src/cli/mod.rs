//! The command line: argument definitions, logging set-up and exit statuses.
//!
//! This is the binary's side only (the library never sees clap types):
//! every subcommand lives in a file of its own here, builds the library's
//! plain settings from its arguments, and returns the exit status it wants;
//! an error from any of them is a provisioning failure (exit 125) reported as
//! one line on stderr. Nothing here writes to stdout: it belongs to the
//! container (only listing commands such as `berth images` print there).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use berth::exit;
use berth::paths::Paths;
use berth::reexec::Entry;

mod agent;
mod bundle;
mod check;
mod images;
mod pod_options;
mod pods;
mod pull;
mod run;
mod vm;

/// Run a CI build inside a pod of OCI containers: rootless, daemon-less.
///
/// berth pulls images from OCI registries into a verified content store,
/// unpacks them into OCI runtime bundles, and runs a pod of containers that
/// share a network namespace and a workspace. The main container gets berth's
/// own stdin and stdout, so Jenkins can launch berth as an agent command.
///
/// Exit status: the main container's own status (128+N when killed by signal
/// N); 125 when berth itself fails (pull, unpack, create, readiness); 126 when
/// the command cannot be run and 127 when it is not found.
#[derive(Debug, Parser)]
#[command(name = "berth", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand understands.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Store for images and unpacked layers [default: $XDG_DATA_HOME/berth].
    #[arg(long, global = true, env = "BERTH_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// State of running pods [default: $XDG_RUNTIME_DIR/berth or /tmp/berth-UID].
    #[arg(long, global = true, env = "BERTH_RUN_ROOT", value_name = "DIR")]
    pub run_root: Option<PathBuf>,
    /// More detail on stderr (-v: info, -vv: debug, -vvv: trace). $BERTH_LOG takes
    /// a full filter such as `berth=debug,libcontainer=warn`.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl Global {
    pub fn paths(&self) -> Paths {
        Paths::resolve(self.root.clone(), self.run_root.clone())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pull an image into the local store.
    ///
    /// REF is `[HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST]` as podman reads it
    /// (`busybox` is `docker.io/library/busybox:latest`, or a name from
    /// `unqualified-search-registries`), `oci:DIR[:TAG]` for an OCI image
    /// layout, or `oci-archive:FILE[:TAG]` for a tar of one.
    ///
    /// Credentials come from $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
    /// ~/.config/containers/auth.json or ~/.docker/config.json (credential helpers
    /// included); mirrors and insecure registries from registries.conf.
    Pull(pull::PullArgs),
    /// List images in the store: reference, digest, size, age.
    Images(images::ImagesArgs),
    /// Remove images from the store (their blobs go at the next `berth gc`).
    Rmi(images::RmiArgs),
    /// Remove blobs and unpacked layers no image refers to.
    Gc(images::GcArgs),
    /// Write an OCI runtime bundle (rootfs/ and config.json) for an image.
    Bundle(bundle::BundleArgs),
    /// Run a pod: from a Kubernetes Pod file (--pod) or an image and sidecars.
    Run(Box<run::RunArgs>),
    /// Check a pod file: validate it and print the plan on stdout (pulls and
    /// runs nothing). Exit 0 when valid, 125 with the reason when not.
    Check(check::CheckArgs),
    /// Run a Jenkins agent (stdio) in a pod, from any build image: the
    /// command of a node launched "via execution of command on the controller".
    Agent(Box<agent::AgentArgs>),
    /// List running pods.
    Ps(pods::PsArgs),
    /// Run a command in a running container of a pod.
    Exec(pods::ExecArgs),
    /// Show the logs of a pod's sidecars.
    Logs(pods::LogsArgs),
    /// Stop a running pod: SIGTERM to its main process, then the usual teardown.
    Stop(pods::StopArgs),
    /// Remove a stopped pod's leftover state.
    Rm(pods::RmArgs),
    /// The guest kernel and initramfs of `--isolation vm` (`berth vm setup`).
    Vm(vm::VmArgs),
}

/// Parses the command line, runs it, and maps the outcome to an exit status.
pub fn main() -> ExitCode {
    ignore_sigpipe();
    // A re-executed berth (see `berth::reexec`) is no command line to parse.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match Entry::parse(&args) {
        Some(Ok((entry, verbose))) => {
            init_logging(verbose);
            return ExitCode::from(entry.run());
        }
        Some(Err(e)) => {
            exit::report(&e);
            return ExitCode::from(exit::PROVISION);
        }
        None => {}
    }
    // Usage errors are berth's own failures too: exit 125 like podman, but
    // --help and --version still exit 0 on stdout.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(exit::PROVISION);
        }
    };
    init_logging(cli.global.verbose);
    let code = match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            report(&err);
            exit::PROVISION
        }
    };
    ExitCode::from(code)
}

fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    let g = &cli.global;
    // Any berth command removes what a SIGKILLed `berth run` left behind
    // (cheap: it reads one small file per pod).
    berth::runtime::state::clean_dead(&g.paths().run_root);
    match cli.command {
        Command::Pull(a) => pull::run(g, a),
        Command::Images(a) => images::images(g, a),
        Command::Rmi(a) => images::rmi(g, a),
        Command::Gc(a) => images::gc(g, a),
        Command::Bundle(a) => bundle::run(g, a),
        Command::Run(a) => run::run(g, *a),
        Command::Check(a) => check::run(g, a),
        Command::Agent(a) => agent::run(g, *a),
        Command::Ps(a) => pods::ps(g, a),
        Command::Exec(a) => pods::exec(g, a),
        Command::Logs(a) => pods::logs(g, a),
        Command::Stop(a) => pods::stop(g, a),
        Command::Rm(a) => pods::rm(g, a),
        Command::Vm(a) => vm::run(g, a),
    }
}

/// One line on stderr: `berth: outer context: inner cause`.
pub fn report(err: &anyhow::Error) {
    exit::report(err.as_ref());
}

/// A write to a closed pipe fails with EPIPE instead of killing berth: a
/// reader of stderr that goes away must not end a pull or a pod. (Rust's
/// runtime does this already; berth relies on it, so it says so.) Programs
/// berth starts get the default back (`userns::spawn`).
fn ignore_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_IGN installs no handler, so no code runs in signal context.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) };
}

/// Logs go to stderr, always: stdout belongs to the container.
fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    // libcontainer logs each failure at ERROR on its way up, several lines
    // for one cause; berth reports that cause in its one line, so its own
    // logs start at -v.
    let default = match verbose {
        0 => "berth=warn,libcontainer=off,libcgroups=off",
        1 => "berth=info,libcontainer=warn,libcgroups=warn",
        2 => "berth=debug,libcontainer=info,libcgroups=info",
        _ => "trace",
    };
    let filter = std::env::var("BERTH_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Its own report of a failed write is an `eprintln!`, which panics
        // on a closed stderr: a lost log line is better than a lost pull.
        .log_internal_errors(false)
        // Jenkins copies stderr into its launch log: colours only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none())
        .with_target(verbose >= 2)
        .without_time()
        .try_init();
}
