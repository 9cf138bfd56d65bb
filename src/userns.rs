//! User namespaces: the invoking user's subordinate id ranges, and spawning a
//! child in a fresh user namespace that is mapped before it runs a program.
//!
//! Mapping: container id 0 is the invoking user, ids `1..=N` are its
//! subordinate range from `/etc/subuid` / `/etc/subgid` (rootless podman's
//! layout); keep-id ([`IdMapping::keep_id`]) puts the user at another id
//! and the range around it. Without a range only id 0 is mapped (one warning). Real root
//! follows the same rule with root's own ranges, so a pod run by root is still
//! isolated in a user namespace.

use std::ffi::{CString, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Pid, Uid};

#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("{path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot resolve user {0}")]
    UnknownUser(u32),
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("clone(2) of a new user namespace failed: {0}")]
    Clone(nix::Error),
    #[error("{tool} {pid} failed: {detail}")]
    Map { tool: &'static str, pid: i32, detail: String },
    #[error("moving the new process into cgroup {path}")]
    Cgroup { path: PathBuf, source: io::Error },
    #[error("executing {program} in the new namespace failed")]
    Exec { program: PathBuf, source: io::Error },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// One contiguous range: `count` ids from `host` on the host appear from
/// `container` in the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub count: u32,
}

/// The uid and gid maps of a user namespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdMapping {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

impl IdMapping {
    /// The mapping for the invoking (real) user: 0 → the user, 1..=N → the
    /// first subordinate range. Warns once when no range is configured.
    pub fn for_current_user() -> Result<IdMapping, UsernsError> {
        let (uid, gid, subuid, subgid) = current_user_ranges()?;
        let mapping = IdMapping::from_ranges(uid, gid, subuid, subgid);
        if !mapping.is_full() {
            tracing::warn!(
                "no subordinate id range for uid {uid} in /etc/subuid and /etc/subgid: \
                 mapping only uid/gid 0; images with other owners may fail"
            );
        }
        Ok(mapping)
    }

    /// podman's `--userns keep-id` for the invoking user: container uid
    /// `uid` (gid `gid`) is the user, the subordinate range fills the other
    /// ids from 0 ([`IdMapping::keep_id`]). `(0, 0)` is the default mapping.
    pub fn keep_id_for_current_user(uid: u32, gid: u32) -> Result<IdMapping, UsernsError> {
        let (host_uid, host_gid, subuid, subgid) = current_user_ranges()?;
        Ok(IdMapping::keep_id((host_uid, uid), (host_gid, gid), subuid, subgid))
    }

    /// Maps container id `user.1` to host id `user.0` (and likewise for
    /// `group`); the subordinate range `(start, count)` fills container ids
    /// `0..user.1` and `user.1+1..=count`, in order, so `count + 1` ids are
    /// mapped. Without both ranges only the one id is mapped.
    pub fn keep_id(user: (u32, u32), group: (u32, u32), subuid: Option<(u32, u32)>, subgid: Option<(u32, u32)>) -> IdMapping {
        let around = |(host, id): (u32, u32), sub: Option<(u32, u32)>| {
            let own = IdRange { container: id, host, count: 1 };
            let Some((start, count)) = sub else { return vec![own] };
            let below = id.min(count);
            let mut rs = vec![
                IdRange { container: 0, host: start, count: below },
                own,
                IdRange { container: id + 1, host: start + below, count: count - below },
            ];
            rs.retain(|r| r.count > 0);
            rs
        };
        match (subuid, subgid) {
            (Some(u), Some(g)) if u.1 > 0 && g.1 > 0 => {
                IdMapping { uids: around(user, Some(u)), gids: around(group, Some(g)) }
            }
            _ => IdMapping { uids: around(user, None), gids: around(group, None) },
        }
    }

    /// Builds the mapping from the user's own ids and optional subordinate
    /// ranges `(start, count)`. Both ranges are needed for a full mapping.
    pub fn from_ranges(
        uid: u32,
        gid: u32,
        subuid: Option<(u32, u32)>,
        subgid: Option<(u32, u32)>,
    ) -> IdMapping {
        IdMapping::keep_id((uid, 0), (gid, 0), subuid, subgid)
    }

    /// The maps of the user namespace this process is in, read from
    /// `/proc/self/{uid,gid}_map` (unreadable maps read as empty).
    pub fn of_current_process() -> IdMapping {
        let read = |file: &str| -> Vec<IdRange> {
            fs::read_to_string(Path::new("/proc/self").join(file))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let mut f = l.split_whitespace().map(|n| n.parse::<u32>().ok());
                    Some(IdRange { container: f.next()??, host: f.next()??, count: f.next()?? })
                })
                .collect()
        };
        IdMapping { uids: read("uid_map"), gids: read("gid_map") }
    }

    /// True for the initial user namespace, which maps the whole 32-bit range
    /// onto itself.
    pub fn is_initial(&self) -> bool {
        self.uids == [IdRange { container: 0, host: 0, count: u32::MAX }]
    }

    /// How many uids and gids are mapped.
    pub fn counts(&self) -> (u64, u64) {
        let sum = |rs: &[IdRange]| rs.iter().map(|r| u64::from(r.count)).sum();
        (sum(&self.uids), sum(&self.gids))
    }

    /// True when more than one id is mapped.
    pub fn is_full(&self) -> bool {
        self.uids.len() > 1 && self.gids.len() > 1
    }

    /// True when container uid 0 exists: berth's pod and unpacking
    /// processes run as it.
    pub fn has_root(&self) -> bool {
        self.host_uid(0).is_some() && self.host_gid(0).is_some()
    }

    /// The highest uid and gid below which every id from 0 is mapped (what
    /// an unpack may keep), e.g. 65536 for keep-id of uid 100000 with a
    /// range of 65536 ids, where 65536..100000 are not mapped.
    pub fn contiguous_max(&self) -> (u32, u32) {
        let top = |rs: &[IdRange]| {
            let mut next = 0u32;
            while let Some(r) = rs.iter().find(|r| r.container <= next && next - r.container < r.count) {
                next = r.container + r.count;
            }
            next.saturating_sub(1)
        };
        (top(&self.uids), top(&self.gids))
    }

    /// A stable, file-name-safe key for caches that depend on the mapping
    /// (unpacked layers hold files owned by mapped ids), e.g.
    /// `u1000-100000x65536_g1000-100000x65536`.
    pub fn key(&self) -> String {
        let part = |rs: &[IdRange]| {
            rs.iter()
                .map(|r| {
                    if r.count == 1 && r.container == 0 {
                        r.host.to_string()
                    } else {
                        format!("{}x{}", r.host, r.count)
                    }
                })
                .collect::<Vec<_>>()
                .join("-")
        };
        format!("u{}_g{}", part(&self.uids), part(&self.gids))
    }

    /// The host uid that container uid `id` is, if mapped.
    pub fn host_uid(&self, id: u32) -> Option<u32> {
        to_host(&self.uids, id)
    }

    /// The host gid that container gid `id` is, if mapped.
    pub fn host_gid(&self, id: u32) -> Option<u32> {
        to_host(&self.gids, id)
    }

    /// The highest container uid that is mapped.
    pub fn max_uid(&self) -> u32 {
        self.uids.iter().map(|r| r.container + (r.count - 1)).max().unwrap_or(0)
    }

    /// The highest container gid that is mapped.
    pub fn max_gid(&self) -> u32 {
        self.gids.iter().map(|r| r.container + (r.count - 1)).max().unwrap_or(0)
    }

    fn map_text(ranges: &[IdRange]) -> String {
        ranges.iter().map(|r| format!("{} {} {}\n", r.container, r.host, r.count)).collect()
    }

    /// Writes the maps of process `pid` (a child in a new, unmapped user
    /// namespace). Root and single-id mappings write `/proc/PID/*_map`
    /// directly; an unprivileged user with ranges needs the setuid helpers.
    pub fn apply(&self, pid: Pid) -> Result<(), UsernsError> {
        let direct = Uid::effective().is_root() || !self.is_full();
        if direct {
            let proc = PathBuf::from(format!("/proc/{pid}"));
            if !Uid::effective().is_root() {
                // An unprivileged writer may map its own gid only after
                // giving up setgroups(2) in the namespace.
                write_proc(&proc.join("setgroups"), "deny")?;
            }
            write_proc(&proc.join("uid_map"), &IdMapping::map_text(&self.uids))?;
            write_proc(&proc.join("gid_map"), &IdMapping::map_text(&self.gids))?;
            return Ok(());
        }
        // The two setuid helpers write different files: run them at once.
        let uid = start_map_tool("newuidmap", pid, &self.uids)?;
        let gid = start_map_tool("newgidmap", pid, &self.gids);
        let uid = finish_map_tool(uid);
        let gid = gid.and_then(finish_map_tool);
        uid.and(gid)
    }
}

fn to_host(ranges: &[IdRange], id: u32) -> Option<u32> {
    ranges
        .iter()
        .find(|r| id >= r.container && id - r.container < r.count)
        .map(|r| r.host + (id - r.container))
}

fn write_proc(path: &Path, text: &str) -> Result<(), UsernsError> {
    fs::write(path, text).map_err(|source| UsernsError::Read { path: path.to_path_buf(), source })
}

/// A running newuidmap/newgidmap.
struct MapTool {
    tool: &'static str,
    pid: Pid,
    child: std::process::Child,
}

fn start_map_tool(tool: &'static str, pid: Pid, ranges: &[IdRange]) -> Result<MapTool, UsernsError> {
    let mut cmd = Command::new(tool);
    cmd.arg(pid.to_string());
    for r in ranges {
        cmd.args([r.container.to_string(), r.host.to_string(), r.count.to_string()]);
    }
    cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let child = cmd.spawn().map_err(|e| UsernsError::Map {
        tool,
        pid: pid.as_raw(),
        detail: format!("cannot run it ({e}); install the uidmap package"),
    })?;
    Ok(MapTool { tool, pid, child })
}

fn finish_map_tool(t: MapTool) -> Result<(), UsernsError> {
    let MapTool { tool, pid, child } = t;
    let out = child.wait_with_output().map_err(|e| UsernsError::Map { tool, pid: pid.as_raw(), detail: format!("waiting for it: {e}") })?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        return Err(UsernsError::Map {
            tool,
            pid: pid.as_raw(),
            detail: msg.trim().lines().last().unwrap_or("no output").to_string(),
        });
    }
    Ok(())
}

/// The invoking user's uid, gid and first subordinate uid and gid ranges.
#[allow(clippy::type_complexity)]
fn current_user_ranges() -> Result<(u32, u32, Option<(u32, u32)>, Option<(u32, u32)>), UsernsError> {
    let uid = Uid::current().as_raw();
    let gid = Gid::current().as_raw();
    let user = nix::unistd::User::from_uid(Uid::from_raw(uid)).ok().flatten();
    let name = user.as_ref().map(|u| u.name.clone());
    let subuid = read_subid(Path::new("/etc/subuid"), name.as_deref(), uid)?;
    let subgid = read_subid(Path::new("/etc/subgid"), name.as_deref(), uid)?;
    Ok((uid, gid, subuid, subgid))
}

/// The first range of `user` (name or numeric uid) in a subuid/subgid file.
/// A missing file means no range.
fn read_subid(path: &Path, name: Option<&str>, uid: u32) -> Result<Option<(u32, u32)>, UsernsError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(UsernsError::Read { path: path.to_path_buf(), source }),
    };
    Ok(parse_subid(&text, name, uid))
}

fn parse_subid(text: &str, name: Option<&str>, uid: u32) -> Option<(u32, u32)> {
    let uid_s = uid.to_string();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split(':');
            let (who, start, count) = (it.next()?, it.next()?, it.next()?);
            let matches = Some(who) == name || who == uid_s;
            let start: u32 = start.trim().parse().ok()?;
            let count: u32 = count.trim().parse().ok()?;
            // Ranges that would wrap around u32 are malformed.
            (matches && count > 0 && start.checked_add(count).is_some()).then_some((start, count))
        })
        .next()
}

/// How to start the child.
#[derive(Debug, Clone)]
pub struct SpawnOptions {
    /// Namespaces to create besides the user namespace (e.g. `CLONE_NEWPID`).
    pub extra_namespaces: CloneFlags,
    /// `PR_SET_PDEATHSIG` for the child. The kernel ties it to the *thread*
    /// that cloned the child: call [`spawn`] from the main thread (or a thread
    /// that lives as long as the child should), never from a pool thread.
    pub parent_death_signal: Option<Signal>,
    /// File descriptors the child keeps across exec (their `FD_CLOEXEC` is
    /// cleared in the child only). fds 0, 1 and 2 are always inherited.
    pub keep_fds: Vec<RawFd>,
    /// A cgroup (v2) directory the child is moved into before it runs, so
    /// that a cgroup namespace it makes is rooted there.
    pub cgroup: Option<PathBuf>,
    /// fds that become the child's stdout and stderr (e.g. a log file for a
    /// helper daemon: berth's stdout belongs to the container).
    pub stdout_stderr: Option<(RawFd, RawFd)>,
}

impl Default for SpawnOptions {
    fn default() -> Self {
        SpawnOptions { extra_namespaces: CloneFlags::empty(), parent_death_signal: None, keep_fds: Vec::new(), cgroup: None, stdout_stderr: None }
    }
}

/// Starts `program` with `args` (argv[1..]) in a new user namespace (plus
/// `opts.extra_namespaces`), mapped with `mapping` before `program` runs: it
/// starts as uid/gid 0 of the namespace with full capabilities there.
///
/// The caller may be multi-threaded: between `clone(2)` and `execve(2)` the
/// child does only async-signal-safe system calls on memory prepared before
/// the clone. The child inherits the caller's environment, signal mask and
/// file descriptors without `FD_CLOEXEC`; `SIGPIPE` is reset to its default.
/// Block the signals you want delivered to the child's event loop before
/// calling, so none is lost before the child sets up its own handling.
/// Returns the child's pid (in the caller's PID namespace); reap it with
/// `waitpid`.
pub fn spawn(
    mapping: &IdMapping,
    program: &Path,
    args: &[OsString],
    opts: &SpawnOptions,
) -> Result<Pid, UsernsError> {
    // Everything the child touches is allocated here, before the clone.
    let prog = CString::new(program.as_os_str().as_bytes()).map_err(|_| UsernsError::Nul { what: "program path" })?;
    let mut argv_c = vec![prog.clone()];
    for a in args {
        argv_c.push(CString::new(a.as_bytes()).map_err(|_| UsernsError::Nul { what: "argument" })?);
    }
    let mut argv: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp_c: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let mut envp: Vec<*const libc::c_char> = envp_c.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());

    // go: parent → child "maps are written" (EOF without a byte: give up).
    // err: child → parent errno of a failed step (EOF: exec succeeded).
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io_err)?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io_err)?;
    let pdeath = opts.parent_death_signal.map(|s| s as libc::c_int).unwrap_or(0);
    let full_groups = mapping.is_full() || Uid::effective().is_root();
    let flags = (CloneFlags::CLONE_NEWUSER | opts.extra_namespaces).bits() as libc::c_ulong
        | libc::SIGCHLD as libc::c_ulong;

    let child = ChildCtx {
        go_r: go_r.as_raw_fd(),
        go_w: go_w.as_raw_fd(),
        err_r: err_r.as_raw_fd(),
        err_w: err_w.as_raw_fd(),
        pdeath,
        full_groups,
        keep_fds: &opts.keep_fds,
        stdout_stderr: opts.stdout_stderr,
        prog: prog.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
    };

    // SAFETY: a fork-like clone (no new stack, no CLONE_VM): the child gets a
    // copy of this address space and runs only `child_after_clone`, which
    // uses async-signal-safe calls and never returns.
    let ret = unsafe {
        libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize)
    };
    if ret < 0 {
        return Err(UsernsError::Clone(nix::Error::last()));
    }
    if ret == 0 {
        // SAFETY: this is the child of the fork-like clone above, and
        // `child` was built before it: what `child_after_clone` asks.
        unsafe { child_after_clone(&child) }
    }
    let pid = Pid::from_raw(ret as i32);
    drop(go_r);
    drop(err_w);

    let mut go_w = fs::File::from(go_w);
    let mut mapped = mapping.apply(pid);
    if let (Ok(()), Some(cg)) = (&mapped, &opts.cgroup) {
        let procs = cg.join("cgroup.procs");
        mapped = fs::write(&procs, pid.as_raw().to_string()).map_err(|source| UsernsError::Cgroup { path: procs, source });
    }
    if let Err(e) = mapped {
        drop(go_w); // the child sees EOF and exits
        let _ = nix::sys::wait::waitpid(pid, None);
        return Err(e);
    }
    go_w.write_all(&[1])?;
    drop(go_w);

    let mut errno = [0u8; 4];
    let mut err_r = fs::File::from(err_r);
    let n = read_full(&mut err_r, &mut errno)?;
    if n == 4 {
        let _ = nix::sys::wait::waitpid(pid, None);
        return Err(UsernsError::Exec {
            program: program.to_path_buf(),
            source: io::Error::from_raw_os_error(i32::from_ne_bytes(errno)),
        });
    }
    Ok(pid)
}

struct ChildCtx<'a> {
    go_r: RawFd,
    go_w: RawFd,
    err_r: RawFd,
    err_w: RawFd,
    pdeath: libc::c_int,
    full_groups: bool,
    keep_fds: &'a [RawFd],
    stdout_stderr: Option<(RawFd, RawFd)>,
    prog: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
}

/// The child between clone and exec: only raw, async-signal-safe syscalls.
///
/// # Safety
///
/// Call it only in the child of a fork-like `clone` (no `CLONE_VM`), with
/// `c` built by [`spawn`] before the clone: its fds are open in the child's copy of the table and its pointers
/// point at NUL-terminated strings and NULL-terminated arrays in the child's
/// copy of the parent's memory, alive until `execve` replaces it. It never
/// returns: it execs or exits.
unsafe fn child_after_clone(c: &ChildCtx<'_>) -> ! {
    let fail = |err_w: RawFd| -> ! {
        // SAFETY: errno is this thread's own; `b` is a live 4-byte buffer;
        // `_exit` is async-signal-safe and skips the parent's atexit state.
        unsafe {
            let e = *libc::__errno_location();
            let b = e.to_ne_bytes();
            libc::write(err_w, b.as_ptr().cast(), 4);
            libc::_exit(127)
        }
    };
    // SAFETY: the caller guarantees the fds and pointers in `c` (see
    // `# Safety`); every call is an async-signal-safe syscall wrapper on
    // those fds or on `b`, a live local byte; nothing allocates or locks,
    // since another thread of the parent may have held a lock at the clone.
    unsafe {
        libc::close(c.go_w);
        libc::close(c.err_r);
        if c.pdeath != 0 && libc::prctl(libc::PR_SET_PDEATHSIG, c.pdeath as libc::c_ulong, 0, 0, 0) != 0 {
            fail(c.err_w);
        }
        // Wait for the parent to write our maps. EOF without a byte means the
        // parent failed or died (possibly before PR_SET_PDEATHSIG took effect).
        let mut b = 0u8;
        loop {
            let n = libc::read(c.go_r, (&mut b as *mut u8).cast(), 1);
            if n == 1 {
                break;
            }
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            libc::_exit(1);
        }
        libc::close(c.go_r);
        // Become root of the namespace explicitly and drop the host's
        // supplementary groups where setgroups(2) is allowed.
        if libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0 {
            fail(c.err_w);
        }
        if c.full_groups {
            libc::setgroups(0, std::ptr::null());
        }
        // A new effective uid clears the death signal: the case when uid 0 of
        // the namespace is not the caller's own id (keep-id). Set it again,
        // then make sure the parent did not die in between: it holds the read
        // end of `err` until the exec, so POLLERR on our end means it is gone.
        if c.pdeath != 0 {
            if libc::prctl(libc::PR_SET_PDEATHSIG, c.pdeath as libc::c_ulong, 0, 0, 0) != 0 {
                fail(c.err_w);
            }
            let mut p = libc::pollfd { fd: c.err_w, events: libc::POLLOUT, revents: 0 };
            if libc::poll(&mut p, 1, 0) == 1 && p.revents & libc::POLLERR != 0 {
                libc::_exit(1);
            }
        }
        for &fd in c.keep_fds {
            let fl = libc::fcntl(fd, libc::F_GETFD);
            if fl >= 0 {
                libc::fcntl(fd, libc::F_SETFD, fl & !libc::FD_CLOEXEC);
            }
        }
        if let Some((out, err)) = c.stdout_stderr {
            if libc::dup2(out, 1) < 0 || libc::dup2(err, 2) < 0 {
                fail(c.err_w);
            }
        }
        // berth ignores SIGPIPE; the program it runs gets the default back.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::execve(c.prog, c.argv, c.envp);
    }
    fail(c.err_w)
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn io_err(e: nix::Error) -> UsernsError {
    UsernsError::Io(io::Error::from(e))
}

/// Joins the user namespace `ns` (an open `/proc/PID/ns/user`), then
/// becomes root there. The caller must be single-threaded.
pub fn join_fd(ns: fs::File) -> Result<(), UsernsError> {
    nix::sched::setns(ns, CloneFlags::CLONE_NEWUSER).map_err(io_err)?;
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).map_err(io_err)?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).map_err(io_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_first_matching_range_by_name_or_uid() {
        let t = "# c\nalice:100000:65536\nbob:165536:65536\n1002:300000:10\nbad:x:1\nwrap:4294967295:2\n";
        assert_eq!(parse_subid(t, Some("bob"), 1001), Some((165536, 65536)));
        assert_eq!(parse_subid(t, None, 1002), Some((300000, 10)));
        assert_eq!(parse_subid(t, Some("carol"), 1003), None);
        assert_eq!(parse_subid(t, Some("bad"), 7), None);
        assert_eq!(parse_subid(t, Some("wrap"), 8), None);
    }

    #[test]
    fn mapping_layout_and_key() {
        let m = IdMapping::from_ranges(1000, 1001, Some((100000, 65536)), Some((200000, 65536)));
        assert!(m.is_full());
        assert_eq!(m.host_uid(0), Some(1000));
        assert_eq!(m.host_uid(1), Some(100000));
        assert_eq!(m.host_uid(65536), Some(165535));
        assert_eq!(m.host_uid(65537), None);
        assert_eq!(m.host_gid(0), Some(1001));
        assert_eq!(m.max_uid(), 65536);
        assert_eq!(m.key(), "u1000-100000x65536_g1001-200000x65536");
        let single = IdMapping::from_ranges(1000, 1000, Some((1, 5)), None);
        assert!(!single.is_full());
        assert_eq!(single.key(), "u1000_g1000");
        assert_eq!(single.host_uid(1), None);
    }

    #[test]
    fn keep_id_layout() {
        let sub = Some((100000, 65536));
        let m = IdMapping::keep_id((1000, 1000), (1001, 50), sub, Some((200000, 65536)));
        assert_eq!(m.host_uid(1000), Some(1000));
        assert_eq!(m.host_uid(0), Some(100000));
        assert_eq!(m.host_uid(999), Some(100999));
        assert_eq!(m.host_uid(1001), Some(101000));
        assert_eq!(m.host_uid(65536), Some(165535));
        assert_eq!(m.host_uid(65537), None);
        assert_eq!(m.host_gid(50), Some(1001));
        assert_eq!(m.host_gid(51), Some(200050));
        assert_eq!(m.counts(), (65537, 65537));
        assert!(m.is_full() && m.has_root());
        assert_eq!(m.contiguous_max(), (65536, 65536));
        // Uid 0: the default layout, the same key.
        let d = IdMapping::keep_id((1000, 0), (1001, 0), sub, Some((200000, 65536)));
        assert_eq!(d, IdMapping::from_ranges(1000, 1001, sub, Some((200000, 65536))));
        assert_eq!(d.uids.len(), 2);
        // Above the range: the range from 0, then the one id.
        let hi = IdMapping::keep_id((1000, 100000), (1000, 100000), sub, sub);
        assert_eq!(hi.host_uid(65535), Some(165535));
        assert_eq!(hi.host_uid(65536), None);
        assert_eq!(hi.host_uid(100000), Some(1000));
        assert_eq!(hi.contiguous_max(), (65535, 65535));
        assert_eq!(hi.max_uid(), 100000);
        // Without ranges: only the one id, and no root.
        let one = IdMapping::keep_id((1000, 4242), (1000, 4242), None, sub);
        assert_eq!(one.uids, vec![IdRange { container: 4242, host: 1000, count: 1 }]);
        assert!(!one.is_full() && !one.has_root());
        assert_ne!(one.key(), IdMapping::from_ranges(1000, 1000, None, None).key());
    }

    /// The death signal survives becoming uid 0 of a namespace where that
    /// is another host id than the caller's (keep-id): the child dies with
    /// the thread that spawned it.
    #[test]
    fn death_signal_survives_a_new_uid() {
        if !Uid::effective().is_root() {
            return;
        }
        let m = IdMapping {
            uids: vec![IdRange { container: 0, host: 200000, count: 1 }],
            gids: vec![IdRange { container: 0, host: 200000, count: 1 }],
        };
        let opts = SpawnOptions { parent_death_signal: Some(Signal::SIGKILL), ..Default::default() };
        let pid = std::thread::spawn(move || spawn(&m, Path::new("/bin/sleep"), &["100".into()], &opts).unwrap()).join().unwrap();
        let st = nix::sys::wait::waitpid(pid, None).unwrap();
        assert_eq!(st, nix::sys::wait::WaitStatus::Signaled(pid, Signal::SIGKILL, false));
    }

    /// A real child in new user + PID namespaces (tests run as root, which
    /// may write any mapping directly).
    #[test]
    fn spawn_maps_before_exec_and_reports_exec_failure() {
        if !Uid::effective().is_root() {
            return; // CI runs tests as root; an ordinary user needs ranges
        }
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        // The child's root is host uid 200000: let it write here.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let m = IdMapping {
            uids: vec![IdRange { container: 0, host: 200000, count: 1 }, IdRange { container: 1, host: 300000, count: 10 }],
            gids: vec![IdRange { container: 0, host: 200000, count: 11 }],
        };
        let script = format!("echo $$ $(id -u) $(id -g) > {}; cat /proc/self/uid_map >> {}", out.display(), out.display());
        let opts = SpawnOptions { extra_namespaces: CloneFlags::CLONE_NEWPID, parent_death_signal: Some(Signal::SIGKILL), keep_fds: vec![], ..Default::default() };
        let pid = spawn(&m, Path::new("/bin/sh"), &["-c".into(), script.into()], &opts).unwrap();
        let st = nix::sys::wait::waitpid(pid, None).unwrap();
        assert_eq!(st, nix::sys::wait::WaitStatus::Exited(pid, 0));
        let text = fs::read_to_string(&out).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("1 0 0"), "PID 1, uid and gid 0");
        let maps: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(maps, vec![vec!["0", "200000", "1"], vec!["1", "300000", "10"]]);

        let err = spawn(&m, Path::new("/nonexistent/prog"), &[], &SpawnOptions::default()).unwrap_err();
        assert!(matches!(err, UsernsError::Exec { ref source, .. } if source.kind() == io::ErrorKind::NotFound), "{err}");
    }
}
