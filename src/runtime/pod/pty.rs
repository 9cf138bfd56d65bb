//! A pseudo-terminal for the main container (`berth run -t`) or an exec
//! (`berth exec -t`): the only place where berth copies a container's stdio.
//!
//! libcontainer creates the pty pair inside the container (from its own
//! devpts) and sends the master over a unix socket ([`ConsoleSocket`],
//! `SCM_RIGHTS`). A [`Relay`] then copies berth's stdin to the master and the
//! master to berth's stdout, as a source of the caller's single-threaded
//! [`crate::runtime::event_loop`]. berth itself puts its terminal in raw
//! mode ([`RawMode`]) so that keys like ^C reach the container's line
//! discipline, and restores it when the pod process or exec helper ends,
//! whatever the reason.
//!
//! berth's stdin and stdout are never made non-blocking: their open file
//! descriptions are shared with the user's shell. The master is ours and is.

use std::fs;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::PollFlags;
use nix::sys::signal::Signal;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices, Termios};

use crate::runtime::event_loop::EventSource;

#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error("console socket {path}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("receiving the container's terminal")]
    Receive(#[source] io::Error),
    #[error("the container did not send its terminal")]
    NoMaster,
    #[error("the container sent something that is not a terminal")]
    NotATerminal,
}

/// The listening socket libcontainer's `with_console_socket` connects to.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listens at `path` (a stale socket there is replaced). The path may be
    /// longer than `sun_path`: it is bound through its directory's fd.
    pub fn bind(path: &Path) -> Result<ConsoleSocket, PtyError> {
        let err = |source| PtyError::Bind { path: path.to_path_buf(), source };
        let (dir, name) = match (path.parent(), path.file_name()) {
            (Some(d), Some(n)) => (d, n),
            _ => return Err(err(io::Error::from(io::ErrorKind::InvalidInput))),
        };
        let _ = fs::remove_file(path);
        let dir = fs::File::open(dir).map_err(err)?;
        let short = Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()).join(name);
        let listener = UnixListener::bind(&short).map_err(err)?;
        Ok(ConsoleSocket { listener, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the pty master that the container's init (or exec) sent. Call
    /// after libcontainer's `build()` succeeded: the connection is queued and
    /// the master sent (or the sender gone, which is [`PtyError::NoMaster`]).
    pub fn receive(self) -> Result<OwnedFd, PtyError> {
        let _ = fs::remove_file(&self.path);
        let (conn, _) = self.listener.accept().map_err(PtyError::Receive)?;
        let mut name = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = loop {
            match recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r.map_err(|e| PtyError::Receive(e.into()))?,
            }
        };
        let mut master = None;
        for cmsg in msg.cmsgs().map_err(|e| PtyError::Receive(e.into()))? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for fd in fds {
                    // SAFETY: the kernel just installed this fd for us.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    if master.is_none() {
                        master = Some(fd);
                    }
                }
            }
        }
        let master = master.ok_or(PtyError::NoMaster)?;
        if !nix::unistd::isatty(master.as_raw_fd()).unwrap_or(false) {
            return Err(PtyError::NotATerminal);
        }
        Ok(master)
    }
}

/// Copies the window size of `from` (berth's terminal) to `to` (the
/// master); the kernel then sends SIGWINCH to the container's foreground
/// process group. Nothing happens when `from` is no terminal.
pub fn copy_window_size(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ fills a winsize; TIOCSWINSZ reads one.
    unsafe {
        if libc::ioctl(from.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
            libc::ioctl(to.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        }
    }
}

/// Input waiting for the master is bounded: while it is full, berth's stdin
/// is not read (the container is not reading its terminal).
const PENDING_MAX: usize = 64 * 1024;

/// Copies berth's stdin to the master and the master to berth's stdout.
pub struct Relay {
    master: OwnedFd,
    /// None once stdin reached EOF or failed.
    input: Option<OwnedFd>,
    /// None once stdout failed (EPIPE): output is then read and dropped.
    output: Option<OwnedFd>,
    /// A terminal to take window sizes from (berth's stdin), if it is one.
    size_source: Option<OwnedFd>,
    pending: Vec<u8>,
    /// False once the last slave is closed (EIO/EOF on the master).
    master_open: bool,
}

impl Relay {
    /// A relay between this process's fds 0/1 (duplicated, so the caller may
    /// point 0/1 elsewhere) and `master`, which is made non-blocking and
    /// given the window size of fd 0.
    pub fn new(master: OwnedFd) -> io::Result<Relay> {
        let input = io::stdin().as_fd().try_clone_to_owned()?;
        let output = io::stdout().as_fd().try_clone_to_owned()?;
        let flags = OFlag::from_bits_truncate(fcntl(master.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(master.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        let size_source = if nix::unistd::isatty(input.as_raw_fd()).unwrap_or(false) { Some(input.try_clone()?) } else { None };
        let relay = Relay { master, input: Some(input), output: Some(output), size_source, pending: Vec::new(), master_open: true };
        relay.resize();
        Ok(relay)
    }

    /// Copies berth's current window size to the container's terminal.
    pub fn resize(&self) {
        if let Some(src) = &self.size_source {
            copy_window_size(src.as_fd(), self.master.as_fd());
        }
    }

    fn input_wanted(&self) -> Option<BorrowedFd<'_>> {
        self.input.as_ref().filter(|_| self.master_open && self.pending.len() < PENDING_MAX).map(|f| f.as_fd())
    }

    /// Copies what the container already wrote, once it has ended; the
    /// relay is done after this.
    fn drain(&mut self) {
        // Bounded: a leftover background process may keep writing.
        for _ in 0..1024 {
            if !self.read_master_once() {
                return;
            }
        }
    }

    fn read_input(&mut self) {
        let Some(fd) = self.input.as_ref().map(|f| f.as_raw_fd()) else { return };
        let mut buf = [0u8; 16384];
        let room = (PENDING_MAX - self.pending.len().min(PENDING_MAX)).min(buf.len());
        if room == 0 {
            return;
        }
        match retry(|| nix::unistd::read(fd, &mut buf[..room])) {
            Ok(0) | Err(_) => {
                // No more input. A program reading the terminal in canonical
                // mode (a shell) sees end of file as after ^D.
                self.input = None;
                if let Ok(t) = termios::tcgetattr(self.master.as_fd()) {
                    if t.local_flags.contains(LocalFlags::ICANON) {
                        self.pending.push(t.control_chars[SpecialCharacterIndices::VEOF as usize]);
                    }
                }
            }
            Ok(n) => self.pending.extend_from_slice(&buf[..n]),
        }
        self.flush_pending();
    }

    fn flush_pending(&mut self) {
        while self.master_open && !self.pending.is_empty() {
            match retry(|| nix::unistd::write(&self.master, &self.pending)) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(_) => {
                    self.close_master();
                    return;
                }
            }
        }
    }

    fn read_master(&mut self) {
        while self.read_master_once() {}
    }

    /// One read from the master; false when there is nothing more for now.
    fn read_master_once(&mut self) -> bool {
        if !self.master_open {
            return false;
        }
        let mut buf = [0u8; 16384];
        match retry(|| nix::unistd::read(self.master.as_raw_fd(), &mut buf)) {
            Ok(n) if n > 0 => {
                self.write_output(&buf[..n]);
                true
            }
            Err(nix::errno::Errno::EAGAIN) => false,
            // EOF or EIO: every slave fd is closed.
            _ => {
                self.close_master();
                false
            }
        }
    }

    fn close_master(&mut self) {
        self.master_open = false;
        self.pending.clear();
        self.input = None;
    }

    fn write_output(&mut self, mut data: &[u8]) {
        let Some(out) = &self.output else { return };
        while !data.is_empty() {
            match retry(|| nix::unistd::write(out, data)) {
                Ok(n) => data = &data[n..],
                Err(e) => {
                    tracing::debug!("writing the terminal's output: {e}");
                    self.output = None;
                    return;
                }
            }
        }
    }
}

/// Watches stdin (while there is room for input) and the master (for
/// output, and for writing while input is pending); resizes on SIGWINCH.
impl EventSource for Relay {
    fn interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let mut fds = Vec::new();
        if let Some(fd) = self.input_wanted() {
            fds.push((fd, PollFlags::POLLIN));
        }
        if self.master_open {
            let flags = if self.pending.is_empty() { PollFlags::POLLIN } else { PollFlags::POLLIN | PollFlags::POLLOUT };
            fds.push((self.master.as_fd(), flags));
        }
        fds
    }

    fn ready(&mut self, fired: &[(RawFd, PollFlags)]) {
        let fired = |fd: Option<RawFd>| fd.is_some_and(|fd| fired.iter().any(|(f, _)| *f == fd));
        if fired(self.input.as_ref().map(|f| f.as_raw_fd())) {
            self.read_input();
        }
        if fired(Some(self.master.as_raw_fd())) {
            self.read_master();
            self.flush_pending();
        }
    }

    /// Every slave is closed: nothing more can come through.
    fn done(&self) -> bool {
        !self.master_open
    }

    fn signal(&mut self, sig: Signal) {
        if sig == Signal::SIGWINCH {
            self.resize();
        }
    }

    fn finish(&mut self) {
        self.drain();
    }
}

fn retry<T>(mut f: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    loop {
        match f() {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r,
        }
    }
}

/// berth's terminal in raw mode while it lives; restored on drop.
pub struct RawMode {
    fd: OwnedFd,
    saved: Termios,
}

impl RawMode {
    /// Puts the terminal on fd 0 in raw mode; None when fd 0 is no terminal
    /// (or cannot be changed, which only loses line editing niceties).
    pub fn stdin() -> Option<RawMode> {
        let fd = io::stdin().as_fd().try_clone_to_owned().ok()?;
        if !nix::unistd::isatty(fd.as_raw_fd()).unwrap_or(false) {
            return None;
        }
        let saved = termios::tcgetattr(fd.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        // Output processing stays: the container's output already has CRLF
        // (an extra CR is invisible), and berth's own log lines and sidecar
        // echoes on stderr still start at the left margin.
        raw.output_flags = saved.output_flags;
        if let Err(e) = termios::tcsetattr(fd.as_fd(), SetArg::TCSANOW, &raw) {
            tracing::debug!("cannot put the terminal in raw mode: {e}");
            return None;
        }
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd.as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{sendmsg, ControlMessage};
    use std::io::IoSlice;
    use std::os::unix::net::UnixStream;

    /// Connects as libcontainer does (through a symlink in another
    /// directory) and sends `fds` with a name.
    fn send(socket: &Path, fds: &[RawFd]) {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("console-socket");
        std::os::unix::fs::symlink(socket, &link).unwrap();
        let conn = UnixStream::connect(&link).unwrap();
        let iov = [IoSlice::new(b"/dev/ptmx")];
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        sendmsg::<()>(conn.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).unwrap();
    }

    /// A directory whose socket path is longer than `sun_path` (108).
    fn long_dir() -> (tempfile::TempDir, PathBuf) {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("d".repeat(60)).join("e".repeat(60));
        fs::create_dir_all(&dir).unwrap();
        (top, dir)
    }

    #[test]
    fn receives_a_master_through_a_long_path() {
        let (_top, dir) = long_dir();
        let path = dir.join("console.sock");
        assert!(path.as_os_str().len() > 108);
        let console = ConsoleSocket::bind(&path).unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        send(console.path(), &[pty.master.as_raw_fd()]);
        let master = console.receive().unwrap();
        assert!(nix::unistd::isatty(master.as_raw_fd()).unwrap());
        assert!(!path.exists(), "the socket file is removed once used");
        // The same terminal: what the slave writes, the received master reads.
        nix::unistd::write(&pty.slave, b"x").unwrap();
        let mut b = [0u8; 1];
        assert_eq!(nix::unistd::read(master.as_raw_fd(), &mut b).unwrap(), 1);
    }

    #[test]
    fn refuses_what_is_not_a_terminal() {
        let (_top, dir) = long_dir();
        let console = ConsoleSocket::bind(&dir.join("a.sock")).unwrap();
        let file = fs::File::open("/dev/null").unwrap();
        send(console.path(), &[file.as_raw_fd()]);
        assert!(matches!(console.receive(), Err(PtyError::NotATerminal)));

        let console = ConsoleSocket::bind(&dir.join("b.sock")).unwrap();
        send(console.path(), &[]);
        assert!(matches!(console.receive(), Err(PtyError::NoMaster)));
    }

    #[test]
    fn window_size_is_copied_only_from_a_terminal() {
        let ws = nix::pty::Winsize { ws_row: 33, ws_col: 97, ws_xpixel: 0, ws_ypixel: 0 };
        let outer = nix::pty::openpty(Some(&ws), None).unwrap();
        let inner = nix::pty::openpty(None, None).unwrap();
        copy_window_size(outer.slave.as_fd(), inner.master.as_fd());
        let size = |fd: &OwnedFd| {
            let mut w = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
            // SAFETY: TIOCGWINSZ fills a winsize.
            unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut w) };
            (w.ws_row, w.ws_col)
        };
        assert_eq!(size(&inner.slave), (33, 97));
        let null = OwnedFd::from(fs::File::open("/dev/null").unwrap());
        copy_window_size(null.as_fd(), inner.master.as_fd());
        assert_eq!(size(&inner.slave), (33, 97), "unchanged");
    }
}
