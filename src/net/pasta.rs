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
    let mut cmd = Command::new(exe);
    cmd.args(args(opts, &pid_file));
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
    child_setup(&mut cmd);
    let child = cmd.spawn().map_err(|source| NetError::Spawn { helper, source })?;
    Ok((child, Ready::PidFile(pid_file), log))
}

/// pasta's command line: configure the namespace, forward only the
/// published TCP ports (never "auto"), nothing from the namespace out.
fn args(opts: &NetOptions<'_>, pid_file: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec!["--foreground".into(), "--quiet".into(), "--config-net".into()];
    a.extend(["--netns".into(), opts.netns.display().to_string()]);
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
        let a = args(&opts, Path::new("/s/pasta.pid")).join(" ");
        assert_eq!(
            a,
            "--foreground --quiet --config-net --netns /s/netns --pid /s/pasta.pid --no-map-gw \
             -t 127.0.0.1/8080:80 -t 9000:9001 -u none -T none -U none"
        );
        let opts = NetOptions { ports: &[], host_loopback: true, ..opts };
        let a = args(&opts, Path::new("/p")).join(" ");
        assert!(a.contains("-t none") && !a.contains("--no-map-gw"), "{a}");
    }
}
