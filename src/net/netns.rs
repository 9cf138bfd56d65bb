//! A network namespace pinned at a file: made by a short-lived child (so the
//! caller stays in its own namespace, where a helper it starts must run) and
//! bind-mounted onto the file, which a helper opens by path. A helper cannot
//! use `/proc/PID/ns/net` of a process holding more capabilities than it has
//! kept (the kernel refuses it: EACCES), which a pod process always does.

use std::fs;
use std::io;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

/// Makes a network namespace owned by the current user namespace and pins
/// it at `file` (created). The caller needs a mount namespace of its own
/// and must be single-threaded.
pub fn create(file: &Path) -> io::Result<()> {
    fs::File::create(file)?;
    // SAFETY: the process is single-threaded (the caller's contract); the
    // child makes only syscalls, then leaves with _exit.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let r = unshare(CloneFlags::CLONE_NEWNET)
                .and_then(|()| mount(Some("/proc/self/ns/net"), file, None::<&str>, MsFlags::MS_BIND, None::<&str>));
            // The errno is the exit status.
            // SAFETY: leaves the forked child without running destructors.
            unsafe { libc::_exit(r.err().map_or(0, |e| (e as i32).clamp(1, 255))) }
        }
        ForkResult::Parent { child } => match waitpid(child, None)? {
            WaitStatus::Exited(_, 0) => Ok(()),
            WaitStatus::Exited(_, errno) => Err(io::Error::from_raw_os_error(errno)),
            other => Err(io::Error::other(format!("the child making the namespace ended with {other:?}"))),
        },
    }
}

/// Moves the calling thread into the namespace pinned at `file`.
pub fn enter(file: &Path) -> io::Result<()> {
    let f = fs::File::open(file)?;
    setns(&f, CloneFlags::CLONE_NEWNET)?;
    Ok(())
}
