//! slirp4netns, where pasta is missing: configures `tap0` in the pinned
//! namespace (10.0.2.100, gateway 10.0.2.2 = the host's loopback unless
//! disabled, DNS forwarder 10.0.2.3) and says so on its ready fd.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{child_setup, Kind, NetError, NetOptions, Ready};

/// Its built-in DNS forwarder.
pub const DNS: &str = "10.0.2.3";
/// Its gateway, the host's loopback unless disabled.
pub const GATEWAY: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 2);

pub(super) fn spawn(exe: &Path, opts: &NetOptions<'_>) -> Result<(Child, Ready, PathBuf), NetError> {
    let helper = Kind::Slirp4netns.name();
    if !opts.ports.is_empty() {
        return Err(NetError::PortsNeedPasta);
    }
    let spawn_err = |source| NetError::Spawn { helper, source };
    let log = opts.work_dir.join("slirp4netns.log");
    let err = std::fs::File::create(&log).map_err(spawn_err)?;
    let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
    let mut cmd = Command::new(exe);
    cmd.args(["--configure", "--mtu=65520"]);
    if !opts.host_loopback {
        cmd.arg("--disable-host-loopback");
    }
    // The write end is the child's fd 3 (dup2 clears close-on-exec).
    cmd.arg("--ready-fd=3").args(["--netns-type=path"]).arg(opts.netns).arg("tap0");
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
    child_setup(&mut cmd);
    let w = write.as_raw_fd();
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: dup2 and fcntl are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let r = if w == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(w, 3) };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd.spawn().map_err(spawn_err)?;
    drop(write);
    nix::fcntl::fcntl(read.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).map_err(|e| spawn_err(e.into()))?;
    Ok((child, Ready::Pipe(std::fs::File::from(read)), log))
}
