//! The workspace in the guest: one directory shared through virtio-fs.
//!
//! berth runs a `virtiofsd` as uid 0 of a user namespace mapped from the
//! invoking user's subordinate ids (the pods' mapping), so files the guest's
//! root writes belong to the user on the host and the user's files are
//! root's in the guest. The daemon sandboxes itself (its own mount, PID and
//! network namespaces, `pivot_root` into the shared directory): it can reach
//! nothing above the export, whatever the guest asks for.
//!
//! Two daemons do this, with different command lines: the C one Debian's
//! QEMU ships (`/usr/lib/qemu/virtiofsd`, deprecated upstream but what CI
//! has) and the Rust one (`cargo install virtiofsd`). [`find_daemon`] tells
//! them apart by their `--help`.
//!
//! berth binds the vhost-user socket itself and hands the daemon the
//! listening descriptor (`--fd`): the socket exists before the daemon runs,
//! is owned by the user, and the C daemon needs no lock file under
//! `/var/run/virtiofsd`, which it could not create rootless.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::userns::{self, IdMapping, SpawnOptions, UsernsError};

/// The virtio-fs tag the guest mounts: `mount -t virtiofs workspace DIR`.
pub const TAG: &str = "workspace";

/// Where a daemon is looked for, after `virtiofsd` on `PATH`.
const WELL_KNOWN: &[&str] = &["/usr/libexec/virtiofsd", "/usr/lib/qemu/virtiofsd"];

/// The most open files the daemon asks for: it holds one descriptor per
/// inode the guest has looked up, so the soft limit (often 1024) is too few.
const MAX_NOFILE: u64 = 1_000_000;

#[derive(Debug, thiserror::Error)]
pub enum VirtiofsError {
    #[error("no virtiofsd found (looked for virtiofsd on PATH, {}); install qemu-system-x86 or `cargo install virtiofsd`", WELL_KNOWN.join(", "))]
    NoDaemon,
    #[error("running {path} --help")]
    Probe { path: PathBuf, source: io::Error },
    #[error("{path} is neither QEMU's virtiofsd nor the Rust virtiofsd (unknown --help output)")]
    UnknownDaemon { path: PathBuf },
    #[error("the shared directory {path}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("opening the daemon's log {path}")]
    Log { path: PathBuf, source: io::Error },
    #[error("the shared directory {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("the vhost-user socket {path}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("starting {path}")]
    Spawn { path: PathBuf, source: UsernsError },
    #[error("{path} ended before it served the socket ({status})")]
    Exited { path: PathBuf, status: String },
    #[error("{path} did not wait for the VMM within {after:?}")]
    Timeout { path: PathBuf, after: Duration },
}

/// Which implementation a daemon binary is: their options differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonKind {
    /// QEMU's C daemon (`-o source=DIR`, `--fd=N`).
    Qemu,
    /// The Rust daemon (`--shared-dir DIR`, `--fd N`).
    Rust,
}

/// A daemon binary and its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    pub path: PathBuf,
    pub kind: DaemonKind,
}

#[derive(Debug, Clone)]
pub struct VirtiofsOptions {
    /// The daemon to run; `None`: `virtiofsd` on `PATH`, then
    /// `/usr/libexec/virtiofsd`, then `/usr/lib/qemu/virtiofsd`.
    pub daemon: Option<PathBuf>,
    /// How long [`Virtiofsd::start`] waits for the daemon to listen.
    pub timeout: Duration,
    /// Where the daemon's output goes; `None`: /dev/null. Never berth's
    /// own stdout, which is the container's.
    pub log: Option<PathBuf>,
}

impl Default for VirtiofsOptions {
    fn default() -> Self {
        VirtiofsOptions { daemon: None, timeout: Duration::from_secs(10), log: None }
    }
}

/// The first daemon found: `explicit` when given (and nothing else), else
/// the search order of [`VirtiofsOptions::daemon`].
pub fn find_daemon(explicit: Option<&Path>) -> Result<Daemon, VirtiofsError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => candidates().into_iter().find(|p| is_executable(p)).ok_or(VirtiofsError::NoDaemon)?,
    };
    let out = Command::new(&path)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| VirtiofsError::Probe { path: path.clone(), source })?;
    let mut text = out.stdout;
    text.extend_from_slice(&out.stderr);
    // The C daemon calls setgroups(2) before it parses its options, so as
    // an unprivileged user even `--help` only fails: then its help text is
    // looked for in the binary itself.
    let kind = kind_from_help(&text)
        .or_else(|| std::fs::read(&path).ok().and_then(|bin| kind_from_help(&bin)))
        .ok_or_else(|| VirtiofsError::UnknownDaemon { path: path.clone() })?;
    Ok(Daemon { path, kind })
}

fn candidates() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).filter(|d| d.is_absolute()).map(|d| d.join("virtiofsd")).collect())
        .unwrap_or_default();
    found.extend(WELL_KNOWN.iter().map(PathBuf::from));
    found
}

fn is_executable(p: &Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file()
}

/// The kind a daemon's `--help` text names: the Rust daemon has
/// `--shared-dir`, the C one FUSE-style `-o source=`.
pub fn kind_from_help(help: &[u8]) -> Option<DaemonKind> {
    let has = |needle: &[u8]| help.windows(needle.len()).any(|w| w == needle);
    if has(b"--shared-dir") {
        Some(DaemonKind::Rust)
    } else if has(b"-o source=") {
        Some(DaemonKind::Qemu)
    } else {
        None
    }
}

/// The daemon's arguments: serve `dir` on the listening socket `fd`,
/// sandboxed in its own namespaces, with up to `nofile` open files.
pub fn daemon_args(kind: DaemonKind, dir: &Path, fd: i32, nofile: u64) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    match kind {
        DaemonKind::Qemu => {
            let mut source = OsString::from("source=");
            source.push(fuse_opt_escape(dir));
            args.push(format!("--fd={fd}").into());
            args.extend(["-o".into(), source]);
            // Warnings and errors only: berth's stderr is the user's.
            for o in ["sandbox=namespace", "cache=auto", "log_level=err"] {
                args.extend(["-o".into(), o.into()]);
            }
            args.push(format!("--rlimit-nofile={nofile}").into());
        }
        DaemonKind::Rust => {
            args.extend(["--fd".into(), fd.to_string().into(), "--shared-dir".into(), dir.as_os_str().to_owned()]);
            for (k, v) in [("--sandbox", "namespace"), ("--cache", "auto"), ("--log-level", "error")] {
                args.extend([k.into(), v.into()]);
            }
            args.extend(["--rlimit-nofile".into(), nofile.to_string().into()]);
        }
    }
    args
}

/// FUSE's `-o` lists split at commas; a backslash escapes one.
fn fuse_opt_escape(p: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in p.as_os_str().as_bytes() {
        if b == b',' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    OsString::from_vec(out)
}

/// QEMU's arguments for the workspace device on `socket`, for a microvm
/// with `mem_bytes` of RAM: vhost-user needs the guest's RAM in shared
/// memory the daemon maps. The caller's `-m` must be the same size (or
/// absent) and its `-M microvm` is merged with the `-machine` here.
pub fn qemu_args(socket: &Path, mem_bytes: u64) -> Vec<String> {
    // QEMU's option lists escape a comma by doubling it.
    let path = socket.to_string_lossy().replace(',', ",,");
    vec![
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem_bytes},share=on"),
        "-machine".into(),
        "memory-backend=mem".into(),
        // virtio-mmio devices are legacy (virtio 0.9) by default, which the
        // daemons' vhost-user libraries refuse: the modern transport.
        "-global".into(),
        "virtio-mmio.force-legacy=false".into(),
        "-chardev".into(),
        format!("socket,id=virtiofs,path={path}"),
        // microvm has virtio-mmio only: the -device variant, not -pci.
        "-device".into(),
        format!("vhost-user-fs-device,chardev=virtiofs,tag={TAG}"),
    ]
}

/// A running virtio-fs daemon. Dropping it kills and reaps the daemon and
/// removes its socket.
#[derive(Debug)]
pub struct Virtiofsd {
    pid: Pid,
    socket: PathBuf,
    daemon: Daemon,
    reaped: bool,
}

impl Virtiofsd {
    /// Shares `dir` on a new vhost-user socket at `socket` (in a private
    /// directory of the caller's) through a daemon run as uid 0 of a user
    /// namespace with `mapping`. Returns once the socket accepts and the
    /// daemon waits for the VMM on it, or fails after `opts.timeout`.
    ///
    /// The daemon gets `PR_SET_PDEATHSIG=SIGKILL`, which the kernel ties to
    /// the calling *thread*: call this from a thread that lives as long as
    /// the VM (berth's main thread).
    pub fn start(dir: &Path, socket: &Path, mapping: &IdMapping, opts: &VirtiofsOptions) -> Result<Virtiofsd, VirtiofsError> {
        let daemon = find_daemon(opts.daemon.as_deref())?;
        // The daemon resolves the path itself, inside its namespace: give
        // it an absolute one with no symbolic link left to follow.
        let dir = std::fs::canonicalize(dir).map_err(|source| VirtiofsError::Dir { path: dir.to_path_buf(), source })?;
        if !dir.is_dir() {
            return Err(VirtiofsError::NotADirectory { path: dir });
        }
        let listener = bind(socket)?;
        let mut vfs = Virtiofsd { pid: Pid::from_raw(0), socket: socket.to_path_buf(), daemon, reaped: true };
        let args = daemon_args(vfs.daemon.kind, &dir, listener.as_raw_fd(), nofile_limit());
        let log_path = opts.log.clone().unwrap_or_else(|| PathBuf::from("/dev/null"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| VirtiofsError::Log { path: log_path.clone(), source })?;
        let spawn_opts = SpawnOptions {
            parent_death_signal: Some(Signal::SIGKILL),
            keep_fds: vec![listener.as_raw_fd()],
            stdout_stderr: Some((log.as_raw_fd(), log.as_raw_fd())),
            ..SpawnOptions::default()
        };
        let t0 = Instant::now();
        // On failure `vfs` (reaped, pid 0) only removes the socket.
        vfs.pid = userns::spawn(mapping, &vfs.daemon.path, &args, &spawn_opts)
            .map_err(|source| VirtiofsError::Spawn { path: vfs.daemon.path.clone(), source })?;
        vfs.reaped = false;
        // The daemon has its own copy; a dead daemon then refuses the VMM.
        drop(listener);
        vfs.wait_listening(opts.timeout)?;
        tracing::debug!(
            "virtiofsd ({:?}, {}) pid {} serves {} on {} after {:?}",
            vfs.daemon.kind,
            vfs.daemon.path.display(),
            vfs.pid,
            dir.display(),
            vfs.socket.display(),
            t0.elapsed()
        );
        Ok(vfs)
    }

    /// The vhost-user socket, for [`qemu_args`].
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's pid (the process berth started; the sandboxed server is
    /// its child once the VMM has connected).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The daemon binary and its kind.
    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    /// The daemon's exit, if it has ended (it does when the VMM closes the
    /// connection); reaps it.
    pub fn try_wait(&mut self) -> Option<WaitStatus> {
        if self.reaped {
            return None;
        }
        match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => None,
            Ok(s) => {
                self.reaped = true;
                Some(s)
            }
            // Reaped elsewhere: gone all the same.
            Err(_) => {
                self.reaped = true;
                None
            }
        }
    }

    /// Polls until a thread of the daemon (or of the sandboxed child it
    /// forks) blocks in accept(2) on the socket.
    fn wait_listening(&mut self, timeout: Duration) -> Result<(), VirtiofsError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = self.try_wait() {
                return Err(VirtiofsError::Exited { path: self.daemon.path.clone(), status: describe(status) });
            }
            match in_accept(self.pid) {
                Some(true) => return Ok(()),
                // /proc/PID/syscall unreadable: settle for the daemon
                // sleeping, which it first does to wait for the VMM.
                None if process_state(self.pid) == Some('S') => return Ok(()),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(VirtiofsError::Timeout { path: self.daemon.path.clone(), after: timeout });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        if !self.reaped {
            // The sandboxed server has its own death signal tied to this one.
            let _ = kill(self.pid, Signal::SIGKILL);
            while let Err(nix::errno::Errno::EINTR) = waitpid(self.pid, None) {}
            self.reaped = true;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A listening socket at `path`; a stale socket left there by a killed
/// berth is replaced, anything else is an error.
fn bind(path: &Path) -> Result<UnixListener, VirtiofsError> {
    let err = |source| VirtiofsError::Socket { path: path.to_path_buf(), source };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(err(io::Error::from(io::ErrorKind::AlreadyExists)));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    UnixListener::bind(path).map_err(err)
}

/// The hard limit on open files (the daemon may raise its soft limit to
/// it, and no further, in a user namespace), at most [`MAX_NOFILE`].
fn nofile_limit() -> u64 {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((_, hard)) => hard.min(MAX_NOFILE),
        Err(_) => 1024,
    }
}

/// Whether a thread of `pid` or of a descendant is blocked in accept(2);
/// `None` when no thread's `/proc/…/syscall` could be read.
fn in_accept(pid: Pid) -> Option<bool> {
    let mut todo = vec![pid.as_raw()];
    let mut readable = false;
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for t in tasks.flatten() {
            let dir = t.path();
            if let Ok(text) = std::fs::read_to_string(dir.join("syscall")) {
                readable = true;
                let nr = text.split_whitespace().next().and_then(|n| n.parse::<libc::c_long>().ok());
                if nr == Some(libc::SYS_accept) || nr == Some(libc::SYS_accept4) {
                    return Some(true);
                }
            }
            if let Ok(children) = std::fs::read_to_string(dir.join("children")) {
                todo.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
            }
        }
    }
    readable.then_some(false)
}

fn process_state(pid: Pid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces.
    stat.rsplit_once(')')?.1.split_whitespace().next()?.chars().next()
}

fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU_HELP: &str = "usage: /usr/lib/qemu/virtiofsd [options]\n    -o source=PATH             shared directory tree\n    --fd=FDNUM                 fd number of vhost-user socket\n";
    const RUST_HELP: &str = "Usage: virtiofsd [OPTIONS]\n      --shared-dir <SHARED_DIR>  Shared directory path\n      --fd <FD>  File descriptor for the listening socket\n";

    #[test]
    fn tells_the_daemons_apart_by_their_help() {
        assert_eq!(kind_from_help(QEMU_HELP.as_bytes()), Some(DaemonKind::Qemu));
        assert_eq!(kind_from_help(RUST_HELP.as_bytes()), Some(DaemonKind::Rust));
        assert_eq!(kind_from_help(b"usage: something else\n"), None);
    }

    fn strings(a: Vec<OsString>) -> Vec<String> {
        a.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    #[test]
    fn qemu_daemon_command_line_escapes_the_option_list() {
        let a = strings(daemon_args(DaemonKind::Qemu, Path::new("/w/a,b\\c"), 5, 4096));
        assert_eq!(
            a,
            [
                "--fd=5",
                "-o",
                "source=/w/a\\,b\\\\c",
                "-o",
                "sandbox=namespace",
                "-o",
                "cache=auto",
                "-o",
                "log_level=err",
                "--rlimit-nofile=4096"
            ]
        );
    }

    #[test]
    fn rust_daemon_command_line() {
        let a = strings(daemon_args(DaemonKind::Rust, Path::new("/w/a,b"), 7, 20000));
        assert_eq!(
            a,
            [
                "--fd",
                "7",
                "--shared-dir",
                "/w/a,b",
                "--sandbox",
                "namespace",
                "--cache",
                "auto",
                "--log-level",
                "error",
                "--rlimit-nofile",
                "20000"
            ]
        );
    }

    #[test]
    fn qemu_arguments_share_the_guest_memory_and_escape_commas() {
        let a = qemu_args(Path::new("/run/x,y/vfs.sock"), 512 << 20);
        assert_eq!(
            a,
            [
                "-object",
                "memory-backend-memfd,id=mem,size=536870912,share=on",
                "-machine",
                "memory-backend=mem",
                "-global",
                "virtio-mmio.force-legacy=false",
                "-chardev",
                "socket,id=virtiofs,path=/run/x,,y/vfs.sock",
                "-device",
                "vhost-user-fs-device,chardev=virtiofs,tag=workspace"
            ]
        );
    }

    #[test]
    fn explicit_daemon_that_is_neither_is_refused() {
        let e = find_daemon(Some(Path::new("/bin/true"))).unwrap_err();
        assert!(matches!(e, VirtiofsError::UnknownDaemon { .. }), "{e}");
        let e = find_daemon(Some(Path::new("/nonexistent/virtiofsd"))).unwrap_err();
        assert!(matches!(e, VirtiofsError::Probe { .. }), "{e}");
    }

    #[test]
    fn a_non_socket_in_the_way_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s");
        std::fs::write(&p, "keep").unwrap();
        assert!(matches!(bind(&p), Err(VirtiofsError::Socket { .. })));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "keep");
        // A stale socket is replaced.
        let q = d.path().join("q");
        drop(UnixListener::bind(&q).unwrap());
        bind(&q).unwrap();
    }
}
