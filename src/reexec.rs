//! The hidden entry points berth re-executes itself into, in one place.
//!
//! Namespace set-up (`unshare`, a new user namespace) and libcontainer's
//! `build()` need a fresh single-threaded process, which a tokio-driven
//! berth is not, so berth runs `/proc/self/exe __internal KIND ARGS` inside a
//! user namespace made by [`crate::userns::spawn`]. [`Entry::argv`] writes
//! that command line and [`Entry::parse`] reads it back; nothing else builds
//! or parses it. The CLI checks for an entry before it parses anything else.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use nix::unistd::Pid;

use crate::userns::{self, IdMapping, SpawnOptions, UsernsError};

/// The first argument that marks a re-executed berth.
const MARKER: &str = "__internal";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// The pod process: PID 1 of the pod's user and PID namespaces
    /// ([`crate::runtime::pod`]).
    Pod { state_dir: PathBuf },
    /// Unpack layers into the cache, or collect unused ones, inside the user
    /// namespace the pods use ([`crate::provision`]).
    Unpack { job: PathBuf },
    /// Remove a tree as uid 0 of a mapped user namespace
    /// ([`crate::runtime::host::cleanup`]).
    Rmtree { path: PathBuf },
    /// berth as a VM guest's init, PID 1 ([`crate::vm::guest`]); the
    /// kernel's command line names it.
    VmInit,
    /// The pod's launcher in a VM guest, with the start frame in `start`.
    VmPod { start: PathBuf },
    /// Flatten an image's cached layers into an EROFS image for the VM
    /// mode, in the pods' user namespace and a private mount namespace
    /// ([`crate::vm::rootfs`]).
    VmRootfs { job: PathBuf },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed internal command line (berth runs `{MARKER}` itself; it is not for users)")]
pub struct ParseError;

impl Entry {
    /// berth's arguments (after argv[0]) for this entry; `verbose` is the
    /// `-v` count the child logs at.
    pub fn argv(&self, verbose: u8) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if verbose > 0 {
            args.push(format!("-{}", "v".repeat(verbose.min(3) as usize)).into());
        }
        let (kind, path) = match self {
            Entry::VmInit => {
                args.extend([MARKER.into(), "vm-init".into()]);
                return args;
            }
            Entry::VmPod { start } => ("vm-pod", start),
            Entry::Pod { state_dir } => ("pod", state_dir),
            Entry::Unpack { job } => ("unpack", job),
            Entry::Rmtree { path } => ("rmtree", path),
            Entry::VmRootfs { job } => ("vm-rootfs", job),
        };
        args.extend([MARKER.into(), kind.into(), path.as_os_str().to_owned()]);
        args
    }

    /// The entry and `-v` count that `args` (berth's arguments, after
    /// argv[0]) name; `None` when they are an ordinary command line.
    pub fn parse(args: &[OsString]) -> Option<Result<(Entry, u8), ParseError>> {
        let flags = args.iter().take_while(|a| is_verbose_flag(a)).count();
        if args.get(flags).map(OsString::as_os_str) != Some(OsStr::new(MARKER)) {
            return None;
        }
        let verbose = args[..flags].iter().map(|a| a.len() - 1).sum::<usize>().min(3) as u8;
        let rest = &args[flags + 1..];
        let entry = match rest {
            [kind] if kind == "vm-init" => Entry::VmInit,
            [kind, path] => {
                let path = PathBuf::from(path);
                match kind.to_str() {
                    Some("pod") => Entry::Pod { state_dir: path },
                    Some("unpack") => Entry::Unpack { job: path },
                    Some("rmtree") => Entry::Rmtree { path },
                    Some("vm-pod") => Entry::VmPod { start: path },
                    Some("vm-rootfs") => Entry::VmRootfs { job: path },
                    _ => return Some(Err(ParseError)),
                }
            }
            _ => return Some(Err(ParseError)),
        };
        Some(Ok((entry, verbose)))
    }

    /// The pod process for the state directory open as `dir`, which the
    /// child inherits (name its fd in `SpawnOptions::keep_fds`): its command
    /// line, `/proc/1/cmdline` inside the pod, then names no host path.
    pub fn pod_by_fd(dir: &std::fs::File) -> Entry {
        use std::os::fd::AsRawFd as _;
        Entry::Pod { state_dir: PathBuf::from(format!("{FD_DIR}{}", dir.as_raw_fd())) }
    }

    /// Starts this entry in a new user namespace with `mapping` (see
    /// [`userns::spawn`]); the caller waits for the returned pid.
    pub fn spawn(&self, mapping: &IdMapping, verbose: u8, opts: &SpawnOptions) -> Result<Pid, UsernsError> {
        userns::spawn(mapping, executable(), &self.argv(verbose), opts)
    }

    /// Runs the entry in this (re-executed) process and returns its exit
    /// status; failures are reported on stderr in one line.
    pub fn run(self) -> u8 {
        let outcome = match self {
            // The pod process reports its own failure: berth passes the
            // status (125, 126, 127 or 128+N) through unchanged.
            Entry::Pod { state_dir } => match crate::runtime::pod::run(&inherited(state_dir)) {
                Ok(code) => return code,
                Err(e) => {
                    crate::exit::report(&e);
                    return e.exit_code();
                }
            },
            Entry::VmInit => return crate::vm::guest::init(),
            Entry::VmPod { start } => match crate::vm::guest::run_pod(&start) {
                Ok(code) => return code,
                Err(e) => Err(e),
            },
            // Its failure goes back to the caller, which reports it once.
            Entry::VmRootfs { job } => return crate::vm::rootfs::run_job(&job),
            Entry::Unpack { job } => crate::provision::unpack_job(&job),
            Entry::Rmtree { path } => crate::runtime::host::cleanup::rmtree_in_namespace(&path)
                .map_err(|e| anyhow::Error::new(e).context(format!("removing {}", path.display()))),
        };
        match outcome {
            Ok(()) => 0,
            Err(e) => {
                crate::exit::report(e.as_ref());
                crate::exit::PROVISION
            }
        }
    }
}

static EXECUTABLE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Names the berth binary that entries run in, for a process that links
/// berth's library but is not berth (an integration test calling
/// [`crate::vm::rootfs::flatten`]); berth itself re-executes
/// `/proc/self/exe`. The first call wins.
pub fn use_executable(path: PathBuf) {
    let _ = EXECUTABLE.set(path);
}

fn executable() -> &'static Path {
    EXECUTABLE.get().map_or(Path::new("/proc/self/exe"), PathBuf::as_path)
}

/// Where inherited descriptors are named in a command line.
const FD_DIR: &str = "/proc/self/fd/";

/// A path given as an inherited descriptor ([`Entry::pod_by_fd`]) becomes
/// the path it stands for, and the descriptor is closed: nothing of it
/// reaches the containers. Other paths are returned as they are.
fn inherited(path: PathBuf) -> PathBuf {
    let Some(fd) = path.to_str().and_then(|p| p.strip_prefix(FD_DIR)).and_then(|n| n.parse::<i32>().ok()) else {
        return path;
    };
    match std::fs::read_link(&path) {
        Ok(real) => {
            let _ = nix::unistd::close(fd);
            real
        }
        Err(_) => path,
    }
}

fn is_verbose_flag(a: &OsStr) -> bool {
    let b = a.as_encoded_bytes();
    b.len() >= 2 && b[0] == b'-' && b[1..].iter().all(|&c| c == b'v')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(e: Entry, verbose: u8) {
        assert_eq!(Entry::parse(&e.argv(verbose)), Some(Ok((e, verbose))));
    }

    #[test]
    fn every_entry_round_trips() {
        round_trip(Entry::Pod { state_dir: "/run/berth/pods/a b".into() }, 0);
        round_trip(Entry::Unpack { job: "/s/layers/k/.job-1.json".into() }, 2);
        round_trip(Entry::Rmtree { path: "/tmp/x".into() }, 3);
        round_trip(Entry::VmRootfs { job: "/s/vm/rootfs/.tmp-k-1/job.json".into() }, 1);
    }

    #[test]
    fn ordinary_command_lines_are_not_entries() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(Entry::parse(&args(&["run", "busybox"])), None);
        assert_eq!(Entry::parse(&args(&["-v", "run", "__internal"])), None);
        assert_eq!(Entry::parse(&args(&[])), None);
        assert_eq!(Entry::parse(&args(&["__internal", "pod"])), Some(Err(ParseError)));
        assert_eq!(Entry::parse(&args(&["__internal", "shell", "/x"])), Some(Err(ParseError)));
        assert_eq!(Entry::parse(&args(&["-vv", "-v", "__internal", "pod", "/x"])), Some(Ok((Entry::Pod { state_dir: "/x".into() }, 3))));
    }
}
