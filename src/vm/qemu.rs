//! The VMM: Debian's `qemu-system-x86_64 -M microvm`, started by berth as
//! the invoking user, hardened with `-sandbox`, `-nodefaults` and
//! `-no-user-config`, and tied to berth's life by a parent-death signal.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::pod::PortMapping;

/// The host's loopback as QEMU's user-mode network shows it to the guest.
pub const HOST_LOOPBACK: &str = "10.0.2.2";
/// The guest's address on QEMU's user-mode network.
pub const GUEST_ADDR: &str = "10.0.2.15";
/// QEMU's user-mode DNS forwarder.
pub const GUEST_DNS: &str = "10.0.2.3";

/// How the guest's CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Accel {
    /// KVM where /dev/kvm opens and answers, else TCG.
    #[default]
    Auto,
    Kvm,
    /// Software emulation: slow but works everywhere.
    Tcg,
}

impl Accel {
    /// `Auto` resolved against this host.
    pub fn resolve(self) -> Accel {
        match self {
            Accel::Auto if kvm_usable() => Accel::Kvm,
            Accel::Auto => Accel::Tcg,
            a => a,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// /dev/kvm opens read-write and speaks the stable API. Whether it can
/// boot this guest is another matter (a nested paravirtual KVM may not):
/// the boot timeout tells.
pub fn kvm_usable() -> bool {
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") else {
        return false;
    };
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns a value.
    let v = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    v == 12
}

/// Finds the QEMU binary: `explicit`, else `qemu-system-x86_64` on PATH.
pub fn find_binary(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    crate::paths::find_executable("qemu-system-x86_64")
}

/// A path inside a QEMU option list, where a comma is written twice.
fn esc(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// A read-only disk image for the guest.
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub serial: String,
}

/// Everything on QEMU's command line.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub binary: PathBuf,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The guest's console (kernel messages), for diagnosis.
    pub console_log: PathBuf,
    pub disks: Vec<Disk>,
    /// User-mode network with these forwards; `None`: no NIC at all.
    pub network: Option<Vec<PortMapping>>,
    /// virtiofsd's socket for the workspace share.
    pub virtiofs: Option<PathBuf>,
    /// The VM's name in `ps` (`-name`): the pod's.
    pub name: String,
}

impl VmConfig {
    /// The kernel command line: quiet (the serial console costs a trap per
    /// byte), no reboot (a panic or reboot ends QEMU), and berth as init.
    pub fn kernel_cmdline(&self) -> String {
        let mut c = String::from("console=ttyS0 loglevel=1 quiet panic=-1 reboot=t rdinit=/init");
        if self.accel == Accel::Tcg {
            // Under TCG the kernel has no timer to calibrate the TSC against
            // and stalls at boot without this.
            c.push_str(" tsc_early_khz=2000000");
        }
        c.push_str(" -- __internal vm-init");
        c
    }

    /// QEMU's arguments; `control` is the fd of the control port's socket
    /// in QEMU's process.
    pub fn args(&self, control: RawFd) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(OsString::from));
        let accel = match self.accel {
            Accel::Kvm => "kvm",
            _ => "tcg",
        };
        let cpu = if self.accel == Accel::Kvm { "host" } else { "max" };
        let mem = format!("{}M", self.memory_mib);
        let smp = self.cpus.to_string();
        push(&["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]);
        let name = format!("berth-{}", self.name.replace(',', ",,"));
        push(&["-name", &name]);
        push(&["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]);
        push(&["-accel", accel, "-cpu", cpu, "-smp", &smp, "-m", &mem]);
        push(&["-M", "microvm"]);
        // Modern virtio on every virtio-mmio device: vhost-user (virtio-fs)
        // requires it, and the others are faster for it.
        push(&["-global", "virtio-mmio.force-legacy=false"]);
        if let Some(sock) = &self.virtiofs {
            // Also shares the guest's memory with virtiofsd.
            let fs = super::virtiofs::qemu_args(sock, self.memory_mib << 20);
            push(&fs.iter().map(String::as_str).collect::<Vec<_>>());
        }
        let con = format!("file,id=con,path={}", esc(&self.console_log));
        push(&["-chardev", &con, "-serial", "chardev:con"]);
        let ctl = format!("socket,id=ctl,fd={control}");
        push(&["-chardev", &ctl, "-device", "virtio-serial-device,max_ports=2"]);
        let port = format!("virtserialport,chardev=ctl,name={}", super::proto::PORT_NAME);
        push(&["-device", &port]);
        for (k, d) in self.disks.iter().enumerate() {
            let drive = format!("id=disk{k},file={},format=raw,if=none,readonly=on", esc(&d.path));
            let dev = format!("virtio-blk-device,drive=disk{k},serial={}", d.serial);
            push(&["-drive", &drive, "-device", &dev]);
        }
        if let Some(ports) = &self.network {
            let mut netdev = String::from("user,id=net0");
            for p in ports {
                let ip = p.host_ip.map(|i| i.to_string()).unwrap_or_default();
                netdev.push_str(&format!(",hostfwd=tcp:{ip}:{}-:{}", p.host_port, p.container_port));
            }
            push(&["-netdev", &netdev, "-device", "virtio-net-device,netdev=net0"]);
        }
        push(&["-kernel"]);
        a.push(self.kernel.clone().into());
        a.push("-initrd".into());
        a.push(self.initrd.clone().into());
        a.push("-append".into());
        a.push(self.kernel_cmdline().into());
        a
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("starting {binary}")]
    Spawn { binary: PathBuf, source: std::io::Error },
    #[error("opening {path}")]
    Log { path: PathBuf, source: std::io::Error },
}

/// Starts QEMU with `control` as its end of the control socket. Its stderr
/// goes to `stderr_log`. Call from the thread that outlives it (the main
/// thread): the parent-death signal is tied to the thread that forks.
pub fn spawn(cfg: &VmConfig, control: &OwnedFd, stderr_log: &Path, jail: std::sync::Arc<super::jail::Jail>) -> Result<Child, QemuError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stderr_log)
        .map_err(|source| QemuError::Log { path: stderr_log.to_path_buf(), source })?;
    let fd = control.as_raw_fd();
    let parent = nix::unistd::getpid();
    let mut cmd = Command::new(&cfg.binary);
    cmd.args(cfg.args(fd)).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
    // Its own process group: a terminal's ^C is the pod's to handle (berth
    // forwards it), not QEMU's to die of.
    cmd.process_group(0);
    // SAFETY: only async-signal-safe calls on values prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // berth died between fork and prctl: nothing would kill us.
            if libc::getppid() != parent.as_raw() {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            // berth keeps its handled signals blocked; QEMU starts clean.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            jail.enter()?;
            // Once more, in case the new credentials cleared it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| QemuError::Spawn { binary: cfg.binary.clone(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        VmConfig {
            binary: "qemu".into(),
            accel: Accel::Tcg,
            cpus: 2,
            memory_mib: 512,
            kernel: "/k".into(),
            initrd: "/i".into(),
            console_log: "/c".into(),
            disks: vec![Disk { path: "/img,0".into(), serial: "berth-img0".into() }],
            network: None,
            virtiofs: None,
            name: "p".into(),
        }
    }

    fn joined(c: &VmConfig) -> String {
        c.args(9).iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn hardened_and_read_only() {
        let s = joined(&cfg());
        assert!(s.starts_with("-nodefaults -no-user-config"));
        assert!(s.contains("-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"));
        assert!(s.contains("file=/img,,0,format=raw,if=none,readonly=on"), "commas doubled");
        assert!(s.contains("socket,id=ctl,fd=9"));
        assert!(!s.contains("-netdev"), "no network unless asked");
        assert!(s.contains("tsc_early_khz"));
        assert!(s.ends_with("-- __internal vm-init"));
    }

    #[test]
    fn network_forwards_and_shared_memory() {
        let mut c = cfg();
        c.accel = Accel::Kvm;
        c.network = Some(vec![PortMapping { host_ip: Some("127.0.0.1".parse().unwrap()), host_port: 8080, container_port: 80 }]);
        c.virtiofs = Some("/s/fs.sock".into());
        let s = joined(&c);
        assert!(s.contains("user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80"));
        assert!(s.contains("memory-backend-memfd,id=mem,size=536870912,share=on -machine memory-backend=mem"));
        assert!(s.contains("vhost-user-fs-device,chardev=virtiofs,tag="));
        assert!(!s.contains("tsc_early_khz"));
        assert!(s.contains("-cpu host"));
    }
}
