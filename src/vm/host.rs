//! berth's side of a pod in a VM: prepare the guest's kernel, initramfs,
//! image disks and workspace share, start QEMU, and relay berth's stdio
//! and signals over the control port until the guest reports the pod's
//! exit status.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use nix::poll::PollFlags;
use nix::sys::signal::Signal;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use super::plan::{disk_serial, GuestStart};
use super::proto::{Decoder, Frame, VERSION};
use super::jail::Jail;
use super::qemu::{self, Accel, Disk, VmConfig};
use crate::paths::Paths;
use crate::runtime::event_loop::{EventLoop, EventSource};
use crate::runtime::signals::{Signals, FORWARDED};
use crate::runtime::state::PodDir;
use crate::runtime::{Network, PodPlan};
use crate::userns::IdMapping;

/// How the VM is made (the command line's `--accel`, `--kernel`, ...).
#[derive(Debug, Clone, Default)]
pub struct VmSettings {
    pub accel: Accel,
    /// A guest kernel (bzImage) instead of `berth vm setup`'s.
    pub kernel: Option<PathBuf>,
    /// Its modules (`lib/modules/VERSION`).
    pub modules: Option<PathBuf>,
    /// The QEMU binary; default `qemu-system-x86_64` on PATH.
    pub qemu: Option<PathBuf>,
    /// vCPUs; default from the pod's CPU limits, at least 1, else 2.
    pub cpus: Option<u32>,
    /// Guest memory in MiB; default from the pod's memory limits.
    pub memory_mib: Option<u64>,
    /// How long the guest may take to reach berth's init.
    pub boot_timeout: Option<Duration>,
}

/// The boot timeout when none is given: KVM boots in well under a second,
/// software emulation in a few.
pub fn default_boot_timeout(accel: Accel) -> Duration {
    match accel {
        Accel::Kvm => Duration::from_secs(10),
        _ => Duration::from_secs(60),
    }
}

/// What [`launch`] needs besides the plan and the VM settings.
pub struct VmLaunch<'a> {
    pub paths: &'a Paths,
    /// The user namespace's mapping (images are flattened in it, virtiofsd
    /// runs in it).
    pub mapping: &'a IdMapping,
    pub verbose: u8,
    /// The workspace is the host's directory (given, or kept): share it.
    /// Otherwise it lives in the guest's memory.
    pub share_workspace: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Plan(#[from] crate::runtime::plan::PlanError),
    #[error(transparent)]
    State(#[from] crate::runtime::state::StateError),
    #[error(transparent)]
    Translate(#[from] super::plan::TranslateError),
    #[error(transparent)]
    Kernel(#[from] super::kernel::KernelError),
    #[error(transparent)]
    Initramfs(#[from] super::initramfs::InitramfsError),
    #[error(transparent)]
    Rootfs(#[from] super::rootfs::RootfsError),
    #[error(transparent)]
    Virtiofs(#[from] super::virtiofs::VirtiofsError),
    #[error("QEMU (qemu-system-x86_64) is not installed: install Debian's qemu-system-x86, or name it with --qemu")]
    NoQemu,
    #[error(transparent)]
    Qemu(#[from] qemu::QemuError),
    #[error("{what}")]
    Io { what: &'static str, source: io::Error },
    #[error("the VM did not reach berth's init within {secs} s ({accel}){hint}")]
    BootTimeout { secs: u64, accel: &'static str, hint: &'static str },
    #[error("QEMU exited ({status}) before the guest started{detail}{hint}")]
    QemuExited { status: String, detail: String, hint: &'static str },
    #[error("the VM stopped before the pod ended ({status})")]
    Stopped { status: String },
    #[error("the guest speaks protocol version {0}, this berth {VERSION}")]
    Version(u32),
    #[error("the control stream: {0}")]
    Proto(#[from] super::proto::ProtoError),
    #[error("interrupted by {0} while the VM was starting")]
    Interrupted(Signal),
    #[error("the VM did not end within {secs} s of {sig}: killed")]
    NotStopped { sig: Signal, secs: u64 },
}

impl VmError {
    /// berth's exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            VmError::Interrupted(sig) | VmError::NotStopped { sig, .. } => 128u8.wrapping_add(*sig as i32 as u8),
            _ => crate::exit::PROVISION,
        }
    }
}

/// Said when a guest under KVM did not come up: a nested or paravirtual
/// KVM may not run a stock kernel.
const KVM_HINT: &str = " (KVM here may not run this guest: try --accel tcg)";

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> VmError {
    move |source| VmError::Io { what, source }
}

/// Runs `plan` (planned on the host, state in `dir`) inside a VM and
/// returns the main container's exit status.
pub fn launch(plan: &PodPlan, dir: &PodDir, l: &VmLaunch<'_>, s: &VmSettings) -> Result<u8, VmError> {
    plan.validate()?;
    let network = plan.network != Network::None;
    let (start, images) = GuestStart::translate(plan, &dir.dir, l.share_workspace, network, l.verbose)?;
    let binary = qemu::find_binary(s.qemu.as_deref()).ok_or(VmError::NoQemu)?;
    let kernel = super::kernel::GuestKernel::find(l.paths, s.kernel.as_deref(), s.modules.as_deref())?;
    let started = Instant::now();
    let initrd = super::initramfs::build(l.paths, &kernel)?;
    let mut disks = Vec::new();
    for (k, layers) in images.iter().enumerate() {
        let path = super::rootfs::flatten(l.paths, l.mapping, layers, l.verbose)?;
        disks.push(Disk { path, serial: disk_serial(k) });
    }
    tracing::debug!("guest parts ready in {:?}", started.elapsed());
    let vm_dir = dir.vm_dir();
    std::fs::create_dir_all(&vm_dir).map_err(io_err("creating the VM's state directory"))?;
    let virtiofsd = if l.share_workspace {
        let opts = super::virtiofs::VirtiofsOptions { log: Some(vm_dir.join("virtiofsd.log")), ..Default::default() };
        Some(super::virtiofs::Virtiofsd::start(&plan.workspace, &vm_dir.join("fs.sock"), l.mapping, &opts)?)
    } else {
        None
    };
    let accel = s.accel.resolve();
    let cfg = VmConfig {
        binary,
        accel,
        cpus: s.cpus.unwrap_or_else(|| default_cpus(plan)),
        memory_mib: s.memory_mib.unwrap_or_else(|| default_memory_mib(plan)),
        kernel: kernel.vmlinuz.clone(),
        initrd,
        console_log: vm_dir.join("console.log"),
        disks,
        network: network.then(|| plan.ports.clone()),
        virtiofs: virtiofsd.as_ref().map(|v| v.socket().to_path_buf()),
        name: plan.name.clone(),
    };
    let (cfg, jail) = confine(cfg, &vm_dir)?;
    tracing::debug!("QEMU: {} {:?}", cfg.binary.display(), cfg.args(0));
    let start_frame = serde_json::to_vec(&start).map_err(|e| io_err("encoding the start frame")(e.into()))?;
    let timeout = s.boot_timeout.unwrap_or_else(|| default_boot_timeout(accel));
    // After a forwarded SIGTERM the guest tears the pod down within the
    // grace period; a guest that does not is killed a little after.
    let stop_limit = plan.grace + Duration::from_secs(10);
    // Other berth commands see the pod live while berth runs, and `berth
    // stop` signals berth itself, which forwards to the guest.
    let me = nix::unistd::Pid::this();
    let owner = crate::runtime::state::Owner {
        pid: me.as_raw(),
        start_time: crate::runtime::state::process_start_time(me).unwrap_or(0),
        pod_pid: me.as_raw(),
        created: crate::runtime::state::now_unix(),
    };
    dir.write_plan(plan)?;
    dir.write_owner(&owner)?;
    let names = plan.containers.iter().map(|c| c.name.clone()).collect();
    let result = run_vm(&cfg, jail, &vm_dir, start_frame, (timeout, stop_limit), (dir.logs_dir(), names));
    drop(virtiofsd);
    match result {
        // As in container mode: an interrupted start reports and ends with
        // the signal's status, not 125.
        Err(e @ (VmError::Interrupted(_) | VmError::NotStopped { .. })) => {
            crate::exit::report(&e);
            Ok(e.exit_code())
        }
        other => other,
    }
}

/// QEMU's view of the host (see [`super::jail`]): `cfg` with its paths as
/// QEMU sees them there, and the jail that shows them.
fn confine(cfg: VmConfig, vm_dir: &Path) -> Result<(VmConfig, Jail), VmError> {
    let root = vm_dir.join("root");
    std::fs::create_dir(&root).map_err(io_err("creating QEMU's root"))?;
    std::fs::File::create(&cfg.console_log).map_err(io_err("creating the console log"))?;
    let jail_err = |e: super::jail::NulInPath| io_err("QEMU's root")(io::Error::new(io::ErrorKind::InvalidInput, e));
    let mut jail = Jail::new(&root, cfg.network.is_none()).map_err(jail_err)?;
    jail.system().map_err(jail_err)?;
    let mut inner = cfg.clone();
    let vm = Path::new("/vm");
    let mut bind = |host: &Path, inside: PathBuf, writable: bool| -> Result<PathBuf, VmError> {
        jail.bind(host, &inside, writable).map_err(jail_err)?;
        Ok(inside)
    };
    if !cfg.binary.starts_with("/usr/") {
        inner.binary = bind(&cfg.binary, vm.join("qemu"), false)?;
    }
    inner.kernel = bind(&cfg.kernel, vm.join("vmlinuz"), false)?;
    inner.initrd = bind(&cfg.initrd, vm.join("initrd"), false)?;
    inner.console_log = bind(&cfg.console_log, vm.join("console.log"), true)?;
    for (k, d) in inner.disks.iter_mut().enumerate() {
        d.path = bind(&d.path, vm.join(format!("disk{k}")), false)?;
    }
    if let Some(sock) = &cfg.virtiofs {
        inner.virtiofs = Some(bind(sock, vm.join("fs.sock"), true)?);
    }
    // Where there is none, QEMU says so itself (and berth adds the hint).
    if cfg.accel == Accel::Kvm && Path::new("/dev/kvm").exists() {
        bind(Path::new("/dev/kvm"), PathBuf::from("/dev/kvm"), true)?;
    }
    Ok((inner, jail))
}

/// 1 vCPU per started 1000 millicores the pod may use, else 2 (at most the
/// host's CPUs).
fn default_cpus(plan: &PodPlan) -> u32 {
    let host = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let millis: Vec<u64> = plan.containers.iter().filter_map(|c| c.limits.cpu_millis).collect();
    let want = if millis.is_empty() { 2 } else { millis.iter().sum::<u64>().div_ceil(1000).max(1) as u32 };
    want.clamp(1, host.max(1))
}

/// The containers' memory limits plus 256 MiB for the guest itself, at
/// least 512 MiB (the guest's own tmpfs holds the containers' writes).
fn default_memory_mib(plan: &PodPlan) -> u64 {
    let limits: Vec<u64> = plan.containers.iter().filter_map(|c| c.limits.memory_bytes).collect();
    let mib = if limits.is_empty() { 1024 } else { limits.iter().sum::<u64>().div_ceil(1 << 20) + 256 };
    mib.max(512)
}

fn run_vm(
    cfg: &VmConfig,
    jail: Jail,
    vm_dir: &Path,
    start_frame: Vec<u8>,
    (timeout, stop_limit): (Duration, Duration),
    logs: (PathBuf, Vec<String>),
) -> Result<u8, VmError> {
    let signals = Signals::install().map_err(|e| io_err("signals")(e.into()))?;
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)
        .map_err(|e| io_err("the control socket")(e.into()))?;
    // QEMU's end blocks: its chardev expects that.
    super::set_nonblocking(theirs.as_fd(), false).map_err(io_err("the control socket"))?;
    let stderr_log = vm_dir.join("qemu.log");
    let booted = Instant::now();
    let mut child = qemu::spawn(cfg, &theirs, &stderr_log, std::sync::Arc::new(jail))?;
    drop(theirs);
    if let Some(t) = since_exec() {
        tracing::debug!("QEMU started {} ms after berth", t.as_millis());
    }
    let mut vm = Vm { child: &mut child, console: vm_dir.join("console.log"), stderr_log };
    let host = HostRelay::new(ours, start_frame, booted, logs);
    let result = relay(&mut vm, &signals, host, (timeout, stop_limit), cfg.accel);
    vm.stop();
    result
}

struct Vm<'a> {
    child: &'a mut Child,
    console: PathBuf,
    stderr_log: PathBuf,
}

impl Vm<'_> {
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits a moment for the guest's own power-off, then kills QEMU.
    fn stop(&mut self) {
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The console's last lines, for a failure's report.
    fn show_console(&self, say_if_empty: bool) {
        let text = std::fs::read(&self.console).unwrap_or_default();
        let text = String::from_utf8_lossy(&text[text.len().saturating_sub(4096)..]).into_owned();
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = &lines[lines.len().saturating_sub(12)..];
        if tail.is_empty() {
            if say_if_empty {
                crate::exit::say("berth: the VM's console is empty");
            }
        } else {
            crate::exit::say("berth: the VM's console, last lines:");
            for l in tail {
                crate::exit::say(&format!("  | {l}"));
            }
        }
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
        text.lines().rev().find(|l| !l.trim().is_empty()).map(|l| format!(": {}", l.trim())).unwrap_or_default()
    }
}

fn relay(vm: &mut Vm<'_>, signals: &Signals, host: HostRelay, (timeout, stop_limit): (Duration, Duration), accel: Accel) -> Result<u8, VmError> {
    let booted = host.spawned;
    let relay = std::rc::Rc::new(std::cell::RefCell::new(host));
    let mut events = EventLoop::new();
    events.add(Box::new(SharedHost(relay.clone())));
    let deadline = booted + timeout;
    // The first forwarded signal, and when the guest must have ended by.
    let mut stopping: Option<(Signal, Instant)> = None;
    loop {
        let waiting = relay.borrow().hello.is_none();
        let wait = match (waiting, stopping) {
            (true, _) => Some(deadline.saturating_duration_since(Instant::now())),
            (false, Some((_, by))) => Some(by.saturating_duration_since(Instant::now())),
            (false, None) => None,
        };
        let sigs = events.turn(Some(signals), wait).map_err(|e| io_err("waiting for the VM")(e.into()))?;
        let r = relay.borrow();
        if r.error.is_some() {
            drop(r);
            let e = relay.borrow_mut().error.take().expect("checked");
            vm.kill();
            return Err(e);
        }
        if let Some(code) = r.exit {
            tracing::debug!("pod ended with {code} after {:?}", booted.elapsed());
            return Ok(code);
        }
        let closed = r.closed;
        let hello = r.hello.is_some();
        drop(r);
        // Before the guest is up a signal ends the start; after, it is the
        // pod's (forwarded by the relay), and the guest has a while to end.
        match sigs.iter().copied().find(|s| FORWARDED.contains(s)) {
            Some(sig) if !hello => {
                vm.kill();
                return Err(VmError::Interrupted(sig));
            }
            Some(sig) if stopping.is_none() => stopping = Some((sig, Instant::now() + stop_limit)),
            _ => {}
        }
        if let Some((sig, by)) = stopping {
            if Instant::now() >= by && vm.exited().is_none() {
                vm.kill();
                return Err(VmError::NotStopped { sig, secs: stop_limit.as_secs() });
            }
        }
        // The control socket closes as QEMU ends: give its exit a moment.
        if closed && vm.exited().is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(status) = vm.exited() {
            // The socket may still hold frames QEMU wrote before it ended.
            relay.borrow_mut().drain();
            if let Some(code) = relay.borrow().exit {
                return Ok(code);
            }
            vm.show_console(false);
            let status = describe(status);
            let hint = if accel == Accel::Kvm { KVM_HINT } else { "" };
            return Err(if hello { VmError::Stopped { status } } else { VmError::QemuExited { status, detail: vm.stderr_tail(), hint } });
        }
        if !hello && Instant::now() >= deadline {
            vm.kill();
            vm.show_console(true);
            let hint = if accel == Accel::Kvm { KVM_HINT } else { "" };
            return Err(VmError::BootTimeout { secs: timeout.as_secs(), accel: accel.name(), hint });
        }
        if closed {
            vm.kill();
            vm.show_console(false);
            return Err(VmError::Stopped { status: "the control port closed".into() });
        }
    }
}

/// How long ago this process was exec'd (for the boot breakdown).
fn since_exec() -> Option<Duration> {
    let ticks = crate::runtime::state::process_start_time(nix::unistd::getpid())?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let uptime: f64 = std::fs::read_to_string("/proc/uptime").ok()?.split_whitespace().next()?.parse().ok()?;
    let started = ticks as f64 / hz.max(1) as f64;
    Some(Duration::from_secs_f64((uptime - started).max(0.0)))
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("status {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}

/// Writes all of `data` to `fd` (berth's stdout or stderr), waiting while
/// it is full even if someone made it non-blocking.
fn write_all_fd(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    // SAFETY: fd 1 and 2 stay open for berth's life.
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    while !data.is_empty() {
        match nix::unistd::write(b, data) {
            Ok(n) => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => {
                let mut p = [nix::poll::PollFd::new(b, PollFlags::POLLOUT)];
                let _ = nix::poll::poll(&mut p, nix::poll::PollTimeout::NONE);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Stop reading stdin when this much waits for the guest.
const HIGH_WATER: usize = 1 << 20;

/// The host's end of the control stream.
struct HostRelay {
    sock: OwnedFd,
    decoder: Decoder,
    to_guest: Vec<u8>,
    /// Sent at the guest's hello.
    start: Option<Vec<u8>>,
    hello: Option<u32>,
    /// Reading berth's stdin (after the start frame, until EOF).
    stdin_open: bool,
    /// berth's stdout is gone (EPIPE): the guest's output is dropped.
    stdout_gone: bool,
    exit: Option<u8>,
    closed: bool,
    error: Option<VmError>,
    /// When QEMU was started.
    spawned: Instant,
    /// The host's log directory of the pod, and the names it may hold.
    logs_dir: PathBuf,
    log_names: Vec<String>,
}

impl HostRelay {
    fn new(sock: OwnedFd, start: Vec<u8>, spawned: Instant, logs: (PathBuf, Vec<String>)) -> HostRelay {
        HostRelay {
            spawned,
            logs_dir: logs.0,
            log_names: logs.1,
            sock,
            decoder: Decoder::new(),
            to_guest: Vec::new(),
            start: Some(start),
            hello: None,
            stdin_open: false,
            stdout_gone: false,
            exit: None,
            closed: false,
            error: None,
        }
    }

    fn frame(&mut self, f: Frame) {
        match f {
            Frame::Hello { version, init_ms, now_ms } if version == VERSION => {
                self.hello = Some(version);
                let wall = self.spawned.elapsed().as_millis();
                // The guest's clock starts with its kernel: what came before
                // on the wall clock is QEMU's own start.
                tracing::debug!(
                    "guest up {wall} ms after QEMU started: QEMU {} ms, kernel {init_ms} ms, init {} ms",
                    wall.saturating_sub(now_ms as u128),
                    now_ms.saturating_sub(init_ms)
                );
                if let Some(start) = self.start.take() {
                    Frame::Start(start).encode(&mut self.to_guest);
                    self.stdin_open = true;
                }
            }
            Frame::Hello { version, .. } => self.error = Some(VmError::Version(version)),
            Frame::Stdout(data) => {
                if !self.stdout_gone && write_all_fd(1, &data).is_err() {
                    // Like a container whose reader left: its writes fail
                    // from now on, and the pod goes on to its end.
                    self.stdout_gone = true;
                }
            }
            Frame::Stderr(data) => {
                let _ = write_all_fd(2, &data);
            }
            Frame::Exit(code) => self.exit = Some(code),
            Frame::Log { container, data } => self.log(&container, &data),
            other => tracing::debug!("unexpected frame from the guest: {other:?}"),
        }
    }

    /// Appends to a container's log on the host, where `berth logs` reads
    /// it. Only the plan's own names: the guest is not trusted with paths.
    fn log(&mut self, container: &str, data: &[u8]) {
        use std::io::Write as _;
        if !self.log_names.iter().any(|n| n == container) {
            tracing::debug!("a log frame for {container:?}, which is no container of the pod");
            return;
        }
        let path = self.logs_dir.join(format!("{container}.log"));
        let written = std::fs::create_dir_all(&self.logs_dir)
            .and_then(|()| std::fs::OpenOptions::new().create(true).append(true).open(&path))
            .and_then(|mut f| f.write_all(data));
        if let Err(e) = written {
            tracing::debug!("writing {}: {e}", path.display());
        }
    }

    fn read_sock(&mut self) {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match nix::unistd::read(self.sock.as_raw_fd(), &mut buf) {
                Ok(0) => {
                    self.closed = true;
                    return;
                }
                Ok(n) => {
                    self.decoder.push(&buf[..n]);
                    loop {
                        match self.decoder.next_frame() {
                            Ok(Some(f)) => self.frame(f),
                            Ok(None) => break,
                            Err(e) => {
                                self.error = Some(e.into());
                                return;
                            }
                        }
                        if self.exit.is_some() {
                            return;
                        }
                    }
                    if n < buf.len() {
                        return;
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }

    /// What is left in the socket once QEMU has ended.
    fn drain(&mut self) {
        if self.exit.is_none() && self.error.is_none() {
            self.read_sock();
        }
    }

    fn write_sock(&mut self) {
        while !self.to_guest.is_empty() {
            match nix::unistd::write(&self.sock, &self.to_guest) {
                Ok(n) => {
                    self.to_guest.drain(..n);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }

    fn read_stdin(&mut self) {
        let mut buf = vec![0u8; 64 << 10];
        // SAFETY: fd 0 stays open for berth's life.
        let stdin = unsafe { BorrowedFd::borrow_raw(0) };
        match nix::unistd::read(stdin.as_raw_fd(), &mut buf) {
            Ok(0) => {
                self.stdin_open = false;
                Frame::StdinEof.encode(&mut self.to_guest);
            }
            Ok(n) => Frame::Stdin(buf[..n].to_vec()).encode(&mut self.to_guest),
            Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::EAGAIN) => {}
            Err(e) => {
                tracing::debug!("reading stdin: {e}; the pod sees its end");
                self.stdin_open = false;
                Frame::StdinEof.encode(&mut self.to_guest);
            }
        }
    }
}

struct SharedHost(std::rc::Rc<std::cell::RefCell<HostRelay>>);

impl EventSource for SharedHost {
    fn interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let r = self.0.borrow();
        let mut sock = PollFlags::empty();
        if !r.closed {
            sock |= PollFlags::POLLIN;
        }
        if !r.to_guest.is_empty() {
            sock |= PollFlags::POLLOUT;
        }
        let mut fds = vec![(r.sock.as_raw_fd(), sock)];
        if r.stdin_open && r.to_guest.len() < HIGH_WATER {
            fds.push((0, PollFlags::POLLIN));
        }
        fds.into_iter()
            // SAFETY: the socket lives in the relay this source keeps alive,
            // and fd 0 for berth's life; the loop uses them within the turn.
            .map(|(fd, f)| (unsafe { BorrowedFd::borrow_raw(fd) }, f))
            .collect()
    }

    fn ready(&mut self, fired: &[(RawFd, PollFlags)]) {
        let mut r = self.0.borrow_mut();
        let sock = r.sock.as_raw_fd();
        for &(fd, flags) in fired {
            if fd == sock {
                if flags.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                    r.read_sock();
                }
            } else if fd == 0 {
                if flags.contains(PollFlags::POLLNVAL) {
                    r.stdin_open = false;
                    Frame::StdinEof.encode(&mut r.to_guest);
                } else {
                    r.read_stdin();
                }
            }
        }
        r.write_sock();
    }

    fn done(&self) -> bool {
        false
    }

    fn signal(&mut self, sig: Signal) {
        let mut r = self.0.borrow_mut();
        if FORWARDED.contains(&sig) && r.hello.is_some() {
            Frame::Signal(sig as i32).encode(&mut r.to_guest);
            r.write_sock();
        }
    }
}
