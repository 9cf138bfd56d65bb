//! Exit statuses, as podman uses them.
//!
//! berth's own failures (pull, unpack, create, readiness) exit [`PROVISION`];
//! the main container's own status passes through unchanged.

/// berth itself failed: the container never ran (or could not be started).
pub const PROVISION: u8 = 125;
/// The command was found but could not be executed.
pub const CANNOT_EXEC: u8 = 126;
/// The command was not found.
pub const NOT_FOUND: u8 = 127;


/// Converts a `waitpid` outcome into a shell-style exit status: the code
/// itself, or 128+N for a process killed by signal N.
pub fn from_wait(status: nix::sys::wait::WaitStatus) -> Option<u8> {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, code) => Some(code as u8),
        WaitStatus::Signaled(_, sig, _) => Some(128u8.wrapping_add(sig as i32 as u8)),
        _ => None,
    }
}

/// One line on stderr: `berth: outer context: inner cause`. Never panics,
/// even with stderr closed: a lost report must not kill work in progress.
pub fn report(err: &(dyn std::error::Error + 'static)) {
    use std::io::Write as _;
    let line = format!("berth: {}\n", chain(err));
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// An error and its causes on one line (`a: b: c`), the way `anyhow`'s
/// `{:#}` prints them.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use nix::sys::wait::WaitStatus;
    use nix::unistd::Pid;

    #[test]
    fn signals_map_to_128_plus_n() {
        let p = Pid::from_raw(1);
        assert_eq!(from_wait(WaitStatus::Exited(p, 3)), Some(3));
        assert_eq!(from_wait(WaitStatus::Signaled(p, Signal::SIGKILL, false)), Some(137));
        assert_eq!(from_wait(WaitStatus::Signaled(p, Signal::SIGTERM, true)), Some(143));
        assert_eq!(from_wait(WaitStatus::StillAlive), None);
    }
}
