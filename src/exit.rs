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
    say(&format!("berth: {}", chain(err)));
}

/// `line` and a newline on stderr, in one write; a failure is ignored.
/// `eprintln!` panics when stderr is a pipe whose reader has gone (EPIPE,
/// berth ignoring SIGPIPE): a closed stderr must not stop a pull or a pod.
pub fn say(line: &str) {
    use std::io::Write as _;
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    let _ = std::io::stderr().write_all(buf.as_bytes());
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

    /// The first `: `-separated segment of `line` that appears twice.
    fn repeated_segment(line: &str) -> Option<&str> {
        let segments: Vec<&str> = line.split(": ").collect();
        segments.iter().enumerate().find(|(i, s)| segments[..*i].contains(s)).map(|(_, s)| *s)
    }

    /// Each error enum that wraps an OS (or other) error says what failed and
    /// leaves the cause to `source()`: the report's one line names it once.
    #[test]
    fn an_error_line_never_repeats_a_segment() {
        use crate::image::digest::Digest;
        use std::path::PathBuf;
        let os = || std::io::Error::from_raw_os_error(libc::ENOENT);
        let path = || PathBuf::from("/no/such");
        let pathrs_err = || pathrs::Root::open("/no/such/root").expect_err("no such root");
        let unpack = |kind| crate::unpack::UnpackError { layer: "sha256:ab".into(), entry: Some("etc/x".into()), kind };
        let store_io = || crate::store::StoreError::Io { path: path(), source: os() };
        use crate::unpack::ErrorKind;
        let errors: Vec<Box<dyn std::error::Error + 'static>> = vec![
            Box::new(store_io()),
            Box::new(crate::fetch::archive::ArchiveError::Io { path: path(), source: os() }),
            Box::new(crate::unpack::cache::LayersError::Io { op: "creating", path: path(), source: os() }),
            Box::new(crate::unpack::cache::LayersError::MediaType {
                diff_id: Digest::of(b"x"),
                source: crate::unpack::UnsupportedMediaType::Unknown("x/y".into()),
            }),
            Box::new(crate::unpack::cache::LayersError::Unpack(unpack(ErrorKind::Io { op: "writing", source: os() }))),
            Box::new(unpack(ErrorKind::Io { op: "writing", source: os() })),
            Box::new(unpack(ErrorKind::Resolve { op: "opening", source: pathrs_err() })),
            Box::new(unpack(ErrorKind::Destination { path: "/no/such".into(), source: pathrs_err() })),
            Box::new(crate::bundle::BundleError::Write { path: path(), source: os() }),
            Box::new(crate::bundle::BundleError::RootfsIo { rootfs: path(), op: "reading", path: "etc/passwd", source: os() }),
            Box::new(crate::bundle::BundleError::Rootfs { rootfs: path(), op: "opening", path: "etc", source: pathrs_err() }),
            Box::new(crate::bundle::BundleError::Spec(oci_spec::OciSpecError::Other("bad".into()))),
            Box::new(crate::config::ConfigError::Read { path: path(), source: os() }),
            Box::new(crate::registry::RegistryError::Config(crate::config::ConfigError::Read { path: path(), source: os() })),
            Box::new(crate::store::manifest::ManifestError::Json(serde_json::from_str::<u8>("x").unwrap_err())),
            Box::new(crate::runtime::pod::seccomp::SeccompError::Compile(
                libseccomp::ScmpSyscall::from_name("no_such_syscall").unwrap_err(),
            )),
            Box::new(crate::pod::shorthand::ShorthandError::Invalid(crate::pod::InvalidPod {
                path: "spec".into(),
                message: "invalid pod name \"a/b\"".into(),
            })),
            Box::new(crate::pod::kube::PodFileError::Read { file: "/no/such".into(), source: os() }),
            Box::new(crate::fetch::pull::PullError::Blob {
                reference: "r".into(),
                what: "layer",
                digest: Digest::of(b"x"),
                source: Box::new(crate::fetch::pull::BlobError::Store(store_io())),
            }),
        ];
        for e in &errors {
            let line = chain(e.as_ref());
            assert_eq!(repeated_segment(&line), None, "{line}");
            assert_eq!(line.matches("os error").count(), usize::from(line.contains("os error")), "{line}");
        }
        assert_eq!(repeated_segment("a: b: a"), Some("a"));
    }

    #[test]
    fn signals_map_to_128_plus_n() {
        let p = Pid::from_raw(1);
        assert_eq!(from_wait(WaitStatus::Exited(p, 3)), Some(3));
        assert_eq!(from_wait(WaitStatus::Signaled(p, Signal::SIGKILL, false)), Some(137));
        assert_eq!(from_wait(WaitStatus::Signaled(p, Signal::SIGTERM, true)), Some(143));
        assert_eq!(from_wait(WaitStatus::StillAlive), None);
    }
}
