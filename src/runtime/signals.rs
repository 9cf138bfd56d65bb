//! Signal handling for the single-threaded pod process (and `berth exec`).
//!
//! The signals berth acts on stay blocked and are read from a signalfd in the
//! event loop. Container processes, however, are cloned by libcontainer from
//! this process and would inherit the blocked mask (libcontainer does not
//! reset it, and a mask survives execve). So around every libcontainer call
//! that clones, [`Signals::unblocked`] opens a window in which the signals
//! are unblocked and caught by a handler that only records them; the loop
//! picks those up afterwards. Nothing is lost: a PID-1 process would
//! otherwise silently drop signals that have no handler.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// The signals the pod process handles. SIGWINCH (berth's terminal was
/// resized) only matters with a pseudo-terminal.
pub const HANDLED: [Signal; 5] = [Signal::SIGCHLD, Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGWINCH];

/// Signals forwarded to the main container.
pub const FORWARDED: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

static PENDING: AtomicU64 = AtomicU64::new(0);

extern "C" fn record(sig: libc::c_int) {
    if (0..64).contains(&sig) {
        PENDING.fetch_or(1 << sig, Ordering::SeqCst);
    }
}

pub fn handled_set() -> SigSet {
    let mut s = SigSet::empty();
    for sig in HANDLED {
        s.add(sig);
    }
    s
}

pub struct Signals {
    fd: SignalFd,
    set: SigSet,
}

impl Signals {
    /// Blocks the handled signals, installs the recording handler and opens
    /// a non-blocking signalfd.
    pub fn install() -> nix::Result<Signals> {
        let set = handled_set();
        signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
        let act = SigAction::new(SigHandler::Handler(record), SaFlags::SA_RESTART, SigSet::empty());
        for sig in HANDLED {
            // SAFETY: the handler only does an atomic OR.
            unsafe { signal::sigaction(sig, &act) }?;
        }
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { fd, set })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Runs `f` with the signals unblocked and `SIGPIPE` at its default, so
    /// processes it clones start with an empty mask and no ignored signal
    /// (Rust ignores `SIGPIPE` in berth itself, and an ignored disposition
    /// survives execve).
    pub fn unblocked<T>(&self, f: impl FnOnce() -> T) -> T {
        // SAFETY: setting a default/ignore disposition has no handler code.
        let old = unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) };
        let _ = signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&self.set), None);
        let out = f();
        let _ = signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&self.set), None);
        if let Ok(old) = old {
            // SAFETY: as above.
            let _ = unsafe { signal::signal(Signal::SIGPIPE, old) };
        }
        out
    }

    /// Every signal received since the last call, each at most once.
    pub fn drain(&self) -> Vec<Signal> {
        let mut mask = PENDING.swap(0, Ordering::SeqCst);
        // As PID 1 of the pod's namespace (the pod process), a sender with
        // a pid is a process of the pod (shareProcessNamespace: `kill 1`);
        // berth's own side is outside, where the kernel reports pid 0.
        let init = nix::unistd::getpid().as_raw() == 1;
        while let Ok(Some(info)) = self.fd.read_signal() {
            if init && info.ssi_pid != 0 && info.ssi_signo != Signal::SIGCHLD as u32 {
                tracing::debug!("ignoring signal {} sent by pid {} inside the pod", info.ssi_signo, info.ssi_pid);
                continue;
            }
            if info.ssi_signo < 64 {
                mask |= 1 << info.ssi_signo;
            }
        }
        HANDLED.into_iter().filter(|s| mask & (1 << (*s as i32)) != 0).collect()
    }
}
