//! pasta (Debian's `passt` package): attached to the pinned namespace with
//! `--netns FILE`, in the foreground so it stays the starter's child; it
//! writes its pid file once the namespace is configured, which is the sign
//! that it is ready.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{child_setup, Kind, NetError, NetOptions, Ready};
use crate::pod::PortMapping;

pub(super) fn spawn(exe: &Path, opts: &NetOptions<'_>) -> Result<(Child, Ready, PathBuf), NetError> {
    let helper = Kind::Pasta.name();
    let (log, pid_file) = (opts.work_dir.join("pasta.log"), opts.work_dir.join("pasta.pid"));
    let _ = fs::remove_file(&pid_file);
    let err = fs::File::create(&log).map_err(|source| NetError::Spawn { helper, source })?;
    // pasta opens the namespace by a descriptor we hand it: it may run as
    // an id that cannot search the state directory (under keep-id, uid 0
    // of the pod is a subordinate id), and a descriptor needs no search.
    let ns = fs::File::open(opts.netns).map_err(|source| NetError::Spawn { helper, source })?;
    // Its pid file likewise, writable through the descriptor by whatever
    // id pasta runs as (the state directory around it stays private).
    let pid = {
        use std::os::unix::fs::OpenOptionsExt as _;
        let f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o666).open(&pid_file);
        let f = f.and_then(|f| {
            use std::os::unix::fs::PermissionsExt as _;
            f.set_permissions(fs::Permissions::from_mode(0o666)).map(|()| f)
        });
        f.map_err(|source| NetError::Spawn { helper, source })?
    };
    let mut cmd = Command::new(exe);
    cmd.args(args(opts, Path::new(NETNS_FD_PATH), Path::new(PID_FD_PATH)));
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
    child_setup(&mut cmd);
    {
        use std::os::fd::AsRawFd as _;
        use std::os::unix::process::CommandExt as _;
        let (ns_fd, pid_fd) = (ns.as_raw_fd(), pid.as_raw_fd());
        // SAFETY: fcntl and dup2 are async-signal-safe; both fds stay open
        // in the parent until spawn returns, so they are open in the child.
        // Each is first copied above the targets, so one dup2 cannot close
        // the other's source; dup2 clears close-on-exec on the target.
        unsafe {
            cmd.pre_exec(move || {
                let ns_hi = libc::fcntl(ns_fd, libc::F_DUPFD_CLOEXEC, 10);
                let pid_hi = libc::fcntl(pid_fd, libc::F_DUPFD_CLOEXEC, 10);
                if ns_hi < 0 || pid_hi < 0 || libc::dup2(ns_hi, NETNS_FD) < 0 || libc::dup2(pid_hi, PID_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd.spawn().map_err(|source| NetError::Spawn { helper, source })?;
    drop((ns, pid));
    Ok((child, Ready::PidFile(pid_file), log))
}

/// The descriptor pasta finds the namespace at (dup2'd before exec; 0-2
/// are its stdio).
const NETNS_FD: i32 = 3;
const NETNS_FD_PATH: &str = "/proc/self/fd/3";
/// And its pid file.
const PID_FD: i32 = 4;
const PID_FD_PATH: &str = "/proc/self/fd/4";

/// pasta's command line: configure the namespace, forward only the
/// published TCP ports (never "auto"), nothing from the namespace out.
fn args(opts: &NetOptions<'_>, netns: &Path, pid_file: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec!["--foreground".into(), "--quiet".into(), "--config-net".into()];
    a.extend(["--netns".into(), netns.display().to_string()]);
    a.extend(["--pid".into(), pid_file.display().to_string()]);
    if !opts.host_loopback {
        a.push("--no-map-gw".into());
    }
    if opts.ports.is_empty() {
        a.extend(["-t".into(), "none".into()]);
    }
    for p in opts.ports {
        a.extend(["-t".into(), port_spec(p)]);
    }
    for flag in ["-u", "-T", "-U"] {
        a.extend([flag.into(), "none".into()]);
    }
    a
}

/// `[ADDR/]HOSTPORT:PORT`, pasta's spelling of a mapping.
fn port_spec(p: &PortMapping) -> String {
    match p.host_ip {
        Some(ip) => format!("{ip}/{}:{}", p.host_port, p.container_port),
        None => format!("{}:{}", p.host_port, p.container_port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let ports = ["127.0.0.1:8080:80".parse().unwrap(), "9000:9001".parse().unwrap()];
        let opts = NetOptions { netns: Path::new("/s/netns"), ports: &ports, host_loopback: false, work_dir: Path::new("/s") };
        let a = args(&opts, Path::new(NETNS_FD_PATH), Path::new("/s/pasta.pid")).join(" ");
        assert_eq!(
            a,
            "--foreground --quiet --config-net --netns /proc/self/fd/3 --pid /s/pasta.pid --no-map-gw \
             -t 127.0.0.1/8080:80 -t 9000:9001 -u none -T none -U none"
        );
        let opts = NetOptions { ports: &[], host_loopback: true, ..opts };
        let a = args(&opts, Path::new(NETNS_FD_PATH), Path::new("/p")).join(" ");
        assert!(a.contains("-t none") && !a.contains("--no-map-gw"), "{a}");
    }
}
