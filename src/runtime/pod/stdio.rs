//! Output of init containers and sidecars: a pipe per container, copied by
//! the pod process into `logs/NAME.log` and, unless quiet, onto berth's
//! stderr with a `[NAME] ` prefix per line. The main container never goes
//! through here: it writes to berth's own stdout/stderr.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::poll::PollFlags;

use crate::runtime::event_loop::EventSource;

/// The container's ends: stdin (/dev/null), stdout and stderr (one pipe).
pub struct ContainerStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// The pod process's end of one container's output.
pub struct LogPump {
    pub name: String,
    read: Option<OwnedFd>,
    log: File,
    echo: bool,
    partial: Vec<u8>,
}

impl LogPump {
    /// Makes the pipe and opens the log (appending: init containers may
    /// share nothing, but a restarted pod keeps its history).
    pub fn new(name: &str, log: &Path, echo: bool) -> io::Result<(LogPump, ContainerStdio)> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        // The container's end must block: clear O_NONBLOCK on it.
        nix::fcntl::fcntl(w.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))?;
        let w2 = w.try_clone()?;
        let null = File::open("/dev/null")?;
        let log = OpenOptions::new().create(true).append(true).open(log)?;
        Ok((
            LogPump { name: name.to_string(), read: Some(r), log, echo, partial: Vec::new() },
            ContainerStdio { stdin: null.into(), stdout: w, stderr: w2 },
        ))
    }

    /// Copies what is available; closes the pipe at EOF.
    fn pump(&mut self) {
        let Some(fd) = self.read.as_ref().map(|f| f.as_raw_fd()) else { return };
        let mut buf = [0u8; 16384];
        loop {
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => {
                    self.read = None;
                    self.flush_partial();
                    return;
                }
                Ok(n) => self.write(&buf[..n]),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(e) => {
                    tracing::warn!("reading output of {}: {e}", self.name);
                    self.read = None;
                    return;
                }
            }
        }
    }

    fn write(&mut self, data: &[u8]) {
        if let Err(e) = self.log.write_all(data) {
            tracing::warn!("writing log of {}: {e}", self.name);
        }
        if !self.echo {
            return;
        }
        self.partial.extend_from_slice(data);
        let mut out = Vec::new();
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            out.extend_from_slice(format!("[{}] ", self.name).as_bytes());
            out.extend_from_slice(&line);
        }
        // Bound the buffer for output without newlines.
        if self.partial.len() > 8192 {
            let rest = std::mem::take(&mut self.partial);
            out.extend_from_slice(format!("[{}] ", self.name).as_bytes());
            out.extend_from_slice(&rest);
            out.push(b'\n');
        }
        let _ = io::stderr().write_all(&out);
    }

    fn flush_partial(&mut self) {
        if self.echo && !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            let mut out = format!("[{}] ", self.name).into_bytes();
            out.extend_from_slice(&rest);
            out.push(b'\n');
            let _ = io::stderr().write_all(&out);
        }
    }
}

/// Copied when the pipe is readable; done at EOF.
impl EventSource for LogPump {
    fn interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        self.read.iter().map(|f| (f.as_fd(), PollFlags::POLLIN)).collect()
    }

    fn ready(&mut self, _fired: &[(RawFd, PollFlags)]) {
        self.pump();
    }

    fn done(&self) -> bool {
        self.read.is_none()
    }

    /// The container has ended: what is still in the pipe (the writers are
    /// gone, so EOF ends it).
    fn finish(&mut self) {
        self.pump();
    }
}

/// Points this process's fds 0 and 1 at /dev/null. berth and the pod process
/// call it once the main container holds the real ones, so the peer (Jenkins)
/// sees EOF on berth's stdout as soon as the main container closes it, not
/// after the sidecars' teardown.
pub fn release_stdin_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in [0, 1] {
            // SAFETY: dup2 onto our own standard fds; `null` is open.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Replaces a stdout or stderr that is `/dev/null` with a write-only
/// `/dev/zero`, which discards writes just the same. libcontainer 0.7
/// (`reopen_dev_null`) re-opens any stdio fd that is `/dev/null` as the
/// container's `/dev/null` *read-only*, so `berth run IMG -- cat >/dev/null`
/// would fail with EBADF in the container; `/dev/zero` is another device and
/// is passed through untouched.
pub fn avoid_readonly_dev_null() -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let null = std::fs::metadata("/dev/null")?;
    if !null.file_type().is_char_device() {
        return Ok(());
    }
    let null_rdev = std::os::unix::fs::MetadataExt::rdev(&null);
    for fd in [1, 2] {
        let Ok(st) = nix::sys::stat::fstat(fd) else { continue };
        let is_char = st.st_mode & libc::S_IFMT == libc::S_IFCHR;
        if is_char && st.st_rdev == null_rdev {
            let zero = OpenOptions::new().write(true).open("/dev/zero")?;
            nix::unistd::dup2(zero.as_raw_fd(), fd)?;
        }
    }
    Ok(())
}
