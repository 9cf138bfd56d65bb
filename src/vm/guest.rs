//! berth as the guest's init (`/init __internal vm-init`, PID 1).
//!
//! It makes the guest a host for the pod (mounts, modules, the image disks,
//! the workspace share, the NIC), reads the start frame from the control
//! port, and runs the pod with the same runtime as on the host: a child
//! (`__internal vm-pod`) calls [`crate::runtime::launch`] with pipes for its
//! stdio, which this process relays over the port. When the pod ends it
//! sends the exit status and powers the VM off.

use std::cell::RefCell;
use std::fs;
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use nix::poll::PollFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::plan::{GuestStart, GUEST_RUN_ROOT, GUEST_WORKSPACE};
use super::proto::{Decoder, Frame, PORT_NAME, VERSION};
use crate::runtime::event_loop::{EventLoop, EventSource};
use crate::runtime::signals::Signals;

/// Where the start frame is kept for the `vm-pod` child.
const START_FILE: &str = "/run/berth/start.json";
/// How long devices may take to appear once their driver is loaded.
const DEVICE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("berth's guest init must run as PID 1 of a VM")]
    NotInit,
    #[error("{what}")]
    Setup { what: String, source: io::Error },
    #[error("the control port {PORT_NAME} did not appear")]
    NoPort,
    #[error("disk {0} did not appear")]
    NoDisk(String),
    #[error("the control stream: {0}")]
    Proto(#[from] super::proto::ProtoError),
    #[error("the host closed the control port before the start frame")]
    Closed,
    #[error("the start frame")]
    Start(#[source] serde_json::Error),
}

fn setup<E: Into<io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> GuestError {
    let what = what.into();
    move |e| GuestError::Setup { what, source: e.into() }
}

/// PID 1's whole life; never returns on success (the VM powers off).
pub fn init() -> u8 {
    if nix::unistd::getpid().as_raw() != 1 {
        crate::exit::report(&GuestError::NotInit);
        return crate::exit::PROVISION;
    }
    let init_ms = guest_clock_ms();
    let code = match boot(init_ms) {
        Ok(code) => code,
        Err((e, port)) => {
            let line = format!("berth: in the VM: {}\n", crate::exit::chain(&e));
            match port {
                Some(mut p) => {
                    let _ = write_frames(&mut p, &[Frame::Stderr(line.into_bytes()), Frame::Exit(crate::exit::PROVISION)]);
                }
                None => {
                    let _ = io::stderr().write_all(line.as_bytes());
                }
            }
            crate::exit::PROVISION
        }
    };
    power_off(code)
}

fn power_off(code: u8) -> u8 {
    nix::unistd::sync();
    // SAFETY: reboot(2) with a valid command; no memory is passed.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    // Only reached if reboot(2) failed (not PID 1 of the initial namespace).
    code
}

type Failure = (GuestError, Option<fs::File>);

/// The guest's clock: ms since its kernel started.
fn guest_clock_ms() -> u32 {
    // SAFETY: clock_gettime writes one timespec into `t`.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above; a valid clock id and pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut t) } != 0 {
        return 0;
    }
    (t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000) as u32
}

fn boot(init_ms: u32) -> Result<u8, Failure> {
    let no_port = |e: GuestError| (e, None);
    system_mounts().map_err(no_port)?;
    load_modules().map_err(no_port)?;
    let port = open_port().map_err(no_port)?;
    let mut port_w = port.try_clone().map_err(|e| (setup("the control port")(e), None))?;
    let spare = port.try_clone().ok();
    let fail = |e: GuestError| (e, spare.as_ref().and_then(|p| p.try_clone().ok()));
    write_frames(&mut port_w, &[Frame::Hello { version: VERSION, init_ms, now_ms: guest_clock_ms() }]).map_err(|e| fail(setup("the control port")(e)))?;
    let (start, raw, decoder) = read_start(&port).map_err(fail)?;
    if start.verbose > 0 {
        tracing::debug!("start frame: {} containers, {} disks", start.plan.containers.len(), start.disks.len());
    }
    prepare(&start, &raw).map_err(fail)?;
    let signals = Signals::install().map_err(|e| fail(setup("signals")(e)))?;
    let (mut child, relay) = start_pod(&start, port).map_err(fail)?;
    // Frames that came with the start frame (stdin, signals), and the
    // start of the next one.
    relay.borrow_mut().decoder = decoder;
    relay.borrow_mut().take_frames();
    let code = relay_until_exit(&signals, &mut child, relay.clone());
    relay.borrow_mut().finish(Frame::Exit(code));
    Ok(code)
}

/// Writes frames with the port in blocking mode.
fn write_frames(port: &mut fs::File, frames: &[Frame]) -> io::Result<()> {
    let mut bytes = Vec::new();
    for f in frames {
        f.encode(&mut bytes);
    }
    super::set_nonblocking(port.as_fd(), false)?;
    port.write_all(&bytes)?;
    port.flush()
}

fn mnt(src: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) -> Result<(), GuestError> {
    let _ = fs::create_dir_all(target);
    match mount(Some(src), target, Some(fstype), flags, data) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(setup(format!("mounting {fstype} on {target}"))(e)),
    }
}

/// The guest's filesystems. First it leaves the initramfs's root for a
/// bind mount of it: pivot_root(2), which libcontainer uses for every
/// container, refuses a root that is the initial ramfs itself.
fn system_mounts() -> Result<(), GuestError> {
    let none = MsFlags::empty();
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    fs::create_dir_all("/newroot").map_err(setup("creating /newroot"))?;
    mount(Some("/"), "/newroot", None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).map_err(setup("binding / to /newroot"))?;
    std::env::set_current_dir("/newroot").map_err(setup("entering /newroot"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(setup("moving /newroot to /"))?;
    nix::unistd::chroot(".").map_err(setup("chroot into the new root"))?;
    std::env::set_current_dir("/").map_err(setup("entering /"))?;
    mnt("proc", "/proc", "proc", nosuid, None)?;
    mnt("sysfs", "/sys", "sysfs", nosuid, None)?;
    mnt("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755"))?;
    mnt("devpts", "/dev/pts", "devpts", MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("mode=0620,ptmxmode=0666"))?;
    mnt("shm", "/dev/shm", "tmpfs", nosuid, Some("mode=1777"))?;
    mnt("tmp", "/tmp", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"))?;
    mnt("run", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"))?;
    mnt("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, None)?;
    // Controllers for the pod's cgroup, one at a time: one missing from
    // this kernel must not cost the others.
    for c in ["+cpu", "+memory", "+pids"] {
        let _ = fs::write("/sys/fs/cgroup/cgroup.subtree_control", c);
    }
    let _ = none;
    // The kernel starts init with 1024/4096 open files; containers' specs
    // ask for what a host session has, which only root here can grant.
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, 1 << 20, 1 << 20);
    Ok(())
}

/// Loads the modules the initramfs lists, in order (dependencies first).
fn load_modules() -> Result<(), GuestError> {
    let list = fs::read_to_string("/etc/berth/modules").map_err(setup("reading /etc/berth/modules"))?;
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let f = fs::File::open(path).map_err(setup(format!("opening module {path}")))?;
        let params = c"";
        // SAFETY: a valid fd and a NUL-terminated empty parameter string.
        let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(setup(format!("loading module {path}"))(e));
            }
        }
    }
    Ok(())
}

/// Polls `f` until it gives a value or [`DEVICE_WAIT`] passes.
fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + DEVICE_WAIT;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The control port, by name.
fn open_port() -> Result<fs::File, GuestError> {
    let dev = wait_for(|| {
        let entries = fs::read_dir("/sys/class/virtio-ports").ok()?;
        entries.flatten().find_map(|e| {
            let name = fs::read_to_string(e.path().join("name")).ok()?;
            let dev = Path::new("/dev").join(e.file_name());
            (name.trim() == PORT_NAME && dev.exists()).then_some(dev)
        })
    })
    .ok_or(GuestError::NoPort)?;
    fs::OpenOptions::new().read(true).write(true).open(&dev).map_err(setup(format!("opening {}", dev.display())))
}

/// Reads until the start frame; returns it, its raw bytes, and the decoder
/// with whatever came after it.
fn read_start(mut port: &fs::File) -> Result<(GuestStart, Vec<u8>, Decoder), GuestError> {
    let mut decoder = Decoder::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        while let Some(f) = decoder.next_frame()? {
            if let Frame::Start(raw) = f {
                let start: GuestStart = serde_json::from_slice(&raw).map_err(GuestError::Start)?;
                return Ok((start, raw, decoder));
            }
        }
        match port.read(&mut buf) {
            // No host on the other end yet: virtio-serial reports EOF.
            Ok(0) => std::thread::sleep(Duration::from_millis(5)),
            Ok(n) => decoder.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(setup("reading the control port")(e)),
        }
    }
}

/// Disks, workspace, network, spec files: the guest side of the plan.
fn prepare(start: &GuestStart, raw: &[u8]) -> Result<(), GuestError> {
    for d in &start.disks {
        let dev = wait_for(|| find_disk(&d.serial)).ok_or_else(|| GuestError::NoDisk(d.serial.clone()))?;
        fs::create_dir_all(&d.mount).map_err(setup(format!("creating {}", d.mount.display())))?;
        let flags = MsFlags::MS_RDONLY | MsFlags::MS_NODEV;
        mount(Some(&dev), &d.mount, Some("erofs"), flags, None::<&str>).map_err(setup(format!("mounting {} ({})", dev.display(), d.serial)))?;
    }
    fs::create_dir_all(GUEST_WORKSPACE).map_err(setup("creating the workspace"))?;
    if let Some(tag) = &start.workspace_tag {
        mount(Some(tag.as_str()), GUEST_WORKSPACE, Some("virtiofs"), MsFlags::MS_NODEV, None::<&str>).map_err(setup("mounting the workspace share"))?;
    }
    crate::runtime::pod::net::loopback_up().map_err(setup("bringing up lo"))?;
    if start.network {
        let nic = wait_for(|| {
            fs::read_dir("/sys/class/net").ok()?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).find(|n| n != "lo")
        })
        .ok_or_else(|| GuestError::Setup { what: "the VM's network card did not appear".into(), source: io::ErrorKind::NotFound.into() })?;
        super::guest_net::configure(&nic).map_err(setup(format!("configuring {nic}")))?;
    }
    for d in &start.dirs {
        fs::create_dir_all(d).map_err(setup(format!("creating {}", d.display())))?;
    }
    for f in &start.files {
        let data = f.contents().map_err(|e| setup(format!("decoding {}", f.path.display()))(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        if let Some(parent) = f.path.parent() {
            fs::create_dir_all(parent).map_err(setup(format!("creating {}", parent.display())))?;
        }
        fs::write(&f.path, data).map_err(setup(format!("writing {}", f.path.display())))?;
    }
    fs::create_dir_all(GUEST_RUN_ROOT).map_err(setup("creating the run root"))?;
    fs::write(START_FILE, raw).map_err(setup("writing the start file"))?;
    Ok(())
}

/// The block device whose virtio serial is `serial`.
fn find_disk(serial: &str) -> Option<PathBuf> {
    fs::read_dir("/sys/block").ok()?.flatten().find_map(|e| {
        let s = fs::read_to_string(e.path().join("serial")).ok()?;
        let dev = Path::new("/dev").join(e.file_name());
        (s.trim() == serial && dev.exists()).then_some(dev)
    })
}

/// Starts `__internal vm-pod` with pipes for its stdio and puts the relay
/// between them and the port.
fn start_pod(start: &GuestStart, port: fs::File) -> Result<(Child, Rc<RefCell<Relay>>), GuestError> {
    let entry = crate::reexec::Entry::VmPod { start: PathBuf::from(START_FILE) };
    let child = Command::new("/proc/self/exe")
        .args(entry.argv(start.verbose))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(setup("starting the pod"))?;
    let mut child = child;
    let stdin: OwnedFd = child.stdin.take().expect("piped").into();
    let stdout: OwnedFd = child.stdout.take().expect("piped").into();
    let stderr: OwnedFd = child.stderr.take().expect("piped").into();
    for fd in [port.as_fd(), stdin.as_fd(), stdout.as_fd(), stderr.as_fd()] {
        super::set_nonblocking(fd, true).map_err(setup("the relay's descriptors"))?;
    }
    let relay = Relay {
        port,
        decoder: Decoder::new(),
        to_host: Vec::new(),
        written: 0,
        read_buf: Vec::new(),
        stdin: Some(stdin),
        stdin_buf: Vec::new(),
        stdin_pos: 0,
        stdin_eof: false,
        stdout: Some(stdout),
        stderr: Some(stderr),
        child: Pid::from_raw(child.id() as i32),
        host_gone: false,
        logs: log_files(start),
    };
    Ok((child, Rc::new(RefCell::new(relay))))
}

/// Where the pod process in the guest keeps each container's log (the
/// main container's output is berth's stdout, not a log).
fn log_files(start: &GuestStart) -> Vec<(String, PathBuf, u64)> {
    let dir = crate::runtime::state::PodDir { dir: crate::runtime::state::PodDir::pods_root(Path::new(GUEST_RUN_ROOT)).join(&start.plan.name) };
    start.plan.containers.iter().filter(|c| c.role != crate::runtime::plan::Role::Main).map(|c| (c.name.clone(), dir.log_path(&c.name), 0)).collect()
}

/// How often the containers' logs are looked at for news.
const LOG_PERIOD: Duration = Duration::from_millis(200);

/// Runs the loop until the pod's launcher has exited and its output is all
/// queued for the host; returns its status.
fn relay_until_exit(signals: &Signals, child: &mut Child, relay: Rc<RefCell<Relay>>) -> u8 {
    let mut events = EventLoop::new();
    events.add(Box::new(Shared(relay.clone())));
    let pid = Pid::from_raw(child.id() as i32);
    let mut status = None;
    loop {
        let wait = if status.is_some() { Duration::from_millis(50) } else { LOG_PERIOD };
        let _ = events.turn(Some(signals), Some(wait));
        relay.borrow_mut().send_logs(HIGH_WATER);
        // PID 1 reaps everything: the pod's launcher and any orphan.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(ws) => {
                    if ws.pid() == Some(pid) {
                        status = crate::exit::from_wait(ws).or(status);
                    }
                }
            }
        }
        let r = relay.borrow();
        if let Some(code) = status {
            if r.outputs_closed() || r.host_gone {
                return code;
            }
        }
    }
}

/// The guest's end of the control stream.
struct Relay {
    port: fs::File,
    decoder: Decoder,
    /// Encoded frames for the port; the first `written` bytes are out.
    to_host: Vec<u8>,
    written: usize,
    /// Reused for reads from the port.
    read_buf: Vec<u8>,
    stdin: Option<OwnedFd>,
    /// Bytes for the main container's stdin; the first `stdin_pos` are out.
    stdin_buf: Vec<u8>,
    stdin_pos: usize,
    stdin_eof: bool,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    child: Pid,
    host_gone: bool,
    /// The containers' log files in the guest's pod state, and how much of
    /// each the host has.
    logs: Vec<(String, PathBuf, u64)>,
}

/// Stop reading output when this much waits for the host.
const HIGH_WATER: usize = 1 << 20;
/// The most one read(2) takes from a pipe or the port.
const READ_CHUNK: usize = 256 << 10;

impl Relay {
    fn outputs_closed(&self) -> bool {
        self.stdout.is_none() && self.stderr.is_none()
    }

    fn frame(&mut self, f: Frame) {
        match f {
            Frame::Stdin(data) => {
                // Moved rarely: when all is out, or once much of it is.
                if self.stdin_pos == self.stdin_buf.len() || self.stdin_pos > HIGH_WATER {
                    self.stdin_buf.drain(..self.stdin_pos);
                    self.stdin_pos = 0;
                }
                self.stdin_buf.extend_from_slice(&data)
            }
            Frame::StdinEof => self.stdin_eof = true,
            Frame::Signal(n) => {
                if let Ok(sig) = Signal::try_from(n) {
                    let _ = kill(self.child, sig);
                }
            }
            other => tracing::debug!("unexpected frame from the host: {other:?}"),
        }
        self.close_stdin_if_done();
    }

    fn close_stdin_if_done(&mut self) {
        if self.stdin_eof && self.stdin_left() == 0 {
            self.stdin = None;
        }
    }

    fn pump_output(&mut self, stdout: bool) {
        let slot = if stdout { &mut self.stdout } else { &mut self.stderr };
        let Some(fd) = slot else { return };
        match super::proto::read_data_frame(&mut self.to_host, stdout, fd.as_fd(), READ_CHUNK) {
            Ok(0) => *slot = None,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(_) => *slot = None,
        }
    }

    fn stdin_left(&self) -> usize {
        self.stdin_buf.len() - self.stdin_pos
    }

    /// Unwritten bytes of `to_host`.
    fn pending(&self) -> usize {
        self.to_host.len() - self.written
    }

    fn write_port(&mut self) {
        while self.pending() > 0 {
            match (&self.port).write(&self.to_host[self.written..]) {
                Ok(0) => break,
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        // Moved only when all is out, or once much of it is: not at every
        // partial write.
        if self.pending() == 0 || self.written > HIGH_WATER {
            self.to_host.drain(..self.written);
            self.written = 0;
        }
    }

    fn read_port(&mut self) {
        // One buffer for every read: no allocation per read in the guest.
        let mut buf = std::mem::take(&mut self.read_buf);
        buf.resize(READ_CHUNK, 0);
        match (&self.port).read(&mut buf) {
            // virtio-serial: EOF while the host end is not connected.
            Ok(0) => self.host_gone = true,
            Ok(n) => {
                self.decoder.push(&buf[..n]);
                self.take_frames();
            }
            Err(_) => {}
        }
        self.read_buf = buf;
    }

    fn take_frames(&mut self) {
        loop {
            match self.decoder.next_frame() {
                Ok(Some(f)) => self.frame(f),
                Ok(None) => return,
                Err(e) => {
                    // A broken stream from the host: no input can be
                    // trusted any more, so the pod ends.
                    tracing::warn!("control stream: {e}; stopping the pod");
                    let _ = kill(self.child, Signal::SIGKILL);
                    self.host_gone = true;
                    return;
                }
            }
        }
    }

    fn write_stdin(&mut self) {
        if let Some(fd) = &self.stdin {
            match nix::unistd::write(fd, &self.stdin_buf[self.stdin_pos..]) {
                Ok(n) => self.stdin_pos += n,
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
                // The main container closed its stdin: drop what is left.
                Err(_) => {
                    self.stdin_buf.clear();
                    self.stdin_pos = 0;
                    self.stdin = None;
                }
            }
        } else {
            self.stdin_buf.clear();
            self.stdin_pos = 0;
        }
        self.close_stdin_if_done();
    }

    /// The port, blocking, after the queued frames are written.
    /// What the containers' logs gained since the last look, as frames
    /// (while the host keeps up).
    fn send_logs(&mut self, limit: usize) {
        use std::io::{Seek as _, SeekFrom};
        for k in 0..self.logs.len() {
            while self.pending() < limit {
                let (name, path, offset) = &self.logs[k];
                let Ok(mut f) = fs::File::open(path) else { break };
                let mut buf = vec![0u8; READ_CHUNK.min(super::proto::MAX_PAYLOAD - 256)];
                let n = match f.seek(SeekFrom::Start(*offset)).and_then(|_| f.read(&mut buf)) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.truncate(n);
                let container = name.clone();
                self.logs[k].2 += n as u64;
                Frame::Log { container, data: buf }.encode(&mut self.to_host);
            }
        }
        self.write_port();
    }

    /// Writes what is queued, then `last`, with the port blocking: the
    /// exit status goes after every byte of output.
    fn finish(&mut self, last: Frame) {
        // All of the logs' last lines, then the status.
        self.send_logs(usize::MAX);
        let mut pending = std::mem::take(&mut self.to_host).split_off(self.written);
        self.written = 0;
        last.encode(&mut pending);
        let _ = super::set_nonblocking(self.port.as_fd(), false);
        let _ = (&self.port).write_all(&pending);
    }
}

struct Shared(Rc<RefCell<Relay>>);

impl EventSource for Shared {
    fn interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        // The fds live in the shared relay (its RefCell borrow ends here);
        // they are borrowed raw below for the one turn that polls them.
        let r = self.0.borrow();
        let mut v = Vec::new();
        let raw = |fd: &OwnedFd| fd.as_raw_fd();
        let mut port = PollFlags::empty();
        if r.stdin_left() < HIGH_WATER && !r.host_gone {
            port |= PollFlags::POLLIN;
        }
        if r.pending() > 0 {
            port |= PollFlags::POLLOUT;
        }
        let mut fds: Vec<(RawFd, PollFlags)> = vec![(r.port.as_raw_fd(), port)];
        if r.pending() < HIGH_WATER {
            for fd in [&r.stdout, &r.stderr].into_iter().flatten() {
                fds.push((raw(fd), PollFlags::POLLIN));
            }
        }
        if let Some(fd) = &r.stdin {
            if r.stdin_left() > 0 {
                fds.push((raw(fd), PollFlags::POLLOUT));
            }
        }
        for (fd, flags) in fds {
            // SAFETY: each fd is owned by the relay, which outlives the turn
            // that polls it (the loop holds this source during the turn).
            v.push((unsafe { BorrowedFd::borrow_raw(fd) }, flags));
        }
        v
    }

    fn ready(&mut self, fired: &[(RawFd, PollFlags)]) {
        let mut r = self.0.borrow_mut();
        let port = r.port.as_raw_fd();
        let out = r.stdout.as_ref().map(|f| f.as_raw_fd());
        let err = r.stderr.as_ref().map(|f| f.as_raw_fd());
        let inp = r.stdin.as_ref().map(|f| f.as_raw_fd());
        for &(fd, flags) in fired {
            if fd == port {
                if flags.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
                    r.read_port();
                }
                if flags.contains(PollFlags::POLLOUT) {
                    r.write_port();
                }
            } else if Some(fd) == out {
                r.pump_output(true);
            } else if Some(fd) == err {
                r.pump_output(false);
            } else if Some(fd) == inp {
                r.write_stdin();
            }
        }
        r.write_port();
    }

    fn done(&self) -> bool {
        false
    }
}

/// `__internal vm-pod START`: the pod's launcher in the guest, with the
/// relay's pipes as stdio.
pub fn run_pod(start_file: &Path) -> anyhow::Result<u8> {
    use anyhow::Context as _;
    let raw = fs::read(start_file).with_context(|| format!("reading {}", start_file.display()))?;
    let start: GuestStart = serde_json::from_slice(&raw).context("the start file")?;
    let dir = crate::runtime::state::PodDir::create(Path::new(GUEST_RUN_ROOT), &start.plan.name)?;
    // Identity for every id but the last: the pod's user namespace then
    // differs from the initial one, so libcontainer takes the same path as
    // on the host (it tests the maps, and a whole-range identity reads as
    // "no user namespace": it would mknod devices, which no user
    // namespace may).
    let ids = vec![crate::userns::IdRange { container: 0, host: 0, count: u32::MAX - 1 }];
    let mapping = crate::userns::IdMapping { uids: ids.clone(), gids: ids };
    let opts = crate::runtime::LaunchOptions { mapping: &mapping, verbose: start.verbose, keep_state: false };
    Ok(crate::runtime::launch(&start.plan, &dir, &opts)?)
}
