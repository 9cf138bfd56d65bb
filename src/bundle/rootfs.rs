//! Rootfs hand-off fixes, like Docker's init layer: before a runtime mounts
//! over `/dev`, `/proc`, `/sys` and `/etc/{hosts,hostname,resolv.conf}`,
//! make them real directories and regular files. A symlink there (say
//! `/proc -> /host/proc`, or `/etc/hosts -> ../../etc/shadow`) could steer
//! a runtime's mount or write to the wrong place (runc CVE-2026-41579,
//! crun CVE-2026-88264/5). Everything is done through a pathrs [`Root`]:
//! each path is resolved inside the rootfs, its last component never
//! followed, so nothing outside the rootfs is read, written or removed.

use std::path::Path;

use pathrs::error::ErrorKind;
use nix::sys::stat::SFlag;
use std::os::fd::{AsFd, AsRawFd};
use pathrs::{InodeType, Root};
use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;

use super::BundleError;

const DIRS: [&str; 4] = ["/dev", "/proc", "/sys", "/etc"];
const FILES: [&str; 3] = ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"];

/// Makes the mount points of the runtime safe in `rootfs`: `/dev`,
/// `/proc`, `/sys`, `/etc` directories, `/etc/hosts`, `/etc/hostname`,
/// `/etc/resolv.conf` regular files. What is already right is kept (with
/// its contents); anything else there (symlink, file, device, FIFO, or a
/// directory where a file belongs) is replaced by an empty one.
pub fn prepare_rootfs(rootfs: &Path) -> Result<(), BundleError> {
    let root = Root::open(rootfs).map_err(|source| err(rootfs, "opening", "/", source))?;
    for dir in DIRS {
        ensure(&root, rootfs, dir, Kind::Dir)?;
    }
    for file in FILES {
        ensure(&root, rootfs, file, Kind::File)?;
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Dir,
    File,
}

fn ensure(root: &Root, rootfs: &Path, path: &'static str, want: Kind) -> Result<(), BundleError> {
    match root.resolve_nofollow(path) {
        Ok(handle) => {
            // fstat of the O_PATH handle itself: a symlink is seen as one,
            // and a FIFO or device is never opened.
            let st = nix::sys::stat::fstat(handle.as_fd().as_raw_fd())
                .map_err(|e| BundleError::RootfsIo {
                    rootfs: rootfs.to_path_buf(),
                    op: "inspecting",
                    path,
                    source: e.into(),
                })?;
            let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            match (want, fmt) {
                (Kind::Dir, SFlag::S_IFDIR) | (Kind::File, SFlag::S_IFREG) => Ok(()),
                _ => replace(root, rootfs, path, want, fmt == SFlag::S_IFDIR),
            }
        }
        Err(e) if e.kind() == ErrorKind::OsError(Some(libc::ENOENT)) => create(root, rootfs, path, want),
        Err(source) => Err(err(rootfs, "resolving", path, source)),
    }
}

fn replace(root: &Root, rootfs: &Path, path: &'static str, want: Kind, is_dir: bool) -> Result<(), BundleError> {
    tracing::debug!(path, "rootfs: replacing a non-{} entry", if want == Kind::Dir { "directory" } else { "file" });
    let removed = if is_dir { root.remove_all(path) } else { root.remove_file(path) };
    removed.map_err(|source| err(rootfs, "removing", path, source))?;
    create(root, rootfs, path, want)
}

fn create(root: &Root, rootfs: &Path, path: &'static str, want: Kind) -> Result<(), BundleError> {
    let inode = match want {
        Kind::Dir => InodeType::Directory(Permissions::from_mode(0o755)),
        Kind::File => InodeType::File(Permissions::from_mode(0o644)),
    };
    root.create(path, &inode).map_err(|source| err(rootfs, "creating", path, source))
}

fn err(rootfs: &Path, op: &'static str, path: &'static str, source: pathrs::error::Error) -> BundleError {
    BundleError::Rootfs { rootfs: rootfs.to_path_buf(), op, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// A rootfs inside a sandbox directory with "host" files next to it;
    /// returns (sandbox, rootfs).
    fn sandbox() -> (tempfile::TempDir, std::path::PathBuf) {
        let sb = tempfile::tempdir().unwrap();
        let rootfs = sb.path().join("rootfs");
        fs::create_dir(&rootfs).unwrap();
        for d in ["host/etc", "host/dev", "host/proc"] {
            fs::create_dir_all(sb.path().join(d)).unwrap();
        }
        fs::write(sb.path().join("host/etc/hosts"), "HOST").unwrap();
        fs::write(sb.path().join("host/dev/null"), "HOST").unwrap();
        (sb, rootfs)
    }

    /// Every path and its contents under `dir`, symlinks not followed.
    fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, String)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = fs::symlink_metadata(&p).unwrap();
                let what = if m.is_dir() {
                    stack.push(p.clone());
                    "dir".to_string()
                } else if m.file_type().is_symlink() {
                    format!("-> {}", fs::read_link(&p).unwrap().display())
                } else {
                    fs::read_to_string(&p).unwrap_or_default()
                };
                out.push((p, what));
            }
        }
        out.sort();
        out
    }

    fn check_prepared(rootfs: &Path) {
        for d in DIRS {
            let m = fs::symlink_metadata(rootfs.join(&d[1..])).unwrap();
            assert!(m.is_dir(), "{d} should be a directory");
        }
        for f in FILES {
            let m = fs::symlink_metadata(rootfs.join(&f[1..])).unwrap();
            assert!(m.is_file(), "{f} should be a regular file");
        }
    }

    #[test]
    fn empty_rootfs_gets_everything() {
        let (_sb, rootfs) = sandbox();
        prepare_rootfs(&rootfs).unwrap();
        check_prepared(&rootfs);
        // Idempotent.
        prepare_rootfs(&rootfs).unwrap();
        check_prepared(&rootfs);
    }

    #[test]
    fn existing_good_entries_are_kept_with_their_contents() {
        let (_sb, rootfs) = sandbox();
        fs::create_dir_all(rootfs.join("etc")).unwrap();
        fs::create_dir_all(rootfs.join("dev/pts")).unwrap();
        fs::write(rootfs.join("etc/hosts"), "127.0.0.1 image").unwrap();
        prepare_rootfs(&rootfs).unwrap();
        check_prepared(&rootfs);
        assert_eq!(fs::read_to_string(rootfs.join("etc/hosts")).unwrap(), "127.0.0.1 image");
        assert!(rootfs.join("dev/pts").is_dir());
    }

    #[test]
    fn hostile_symlinks_are_replaced_and_nothing_outside_is_touched() {
        let (sb, rootfs) = sandbox();
        let host = sb.path().join("host");
        let abs_host = host.display().to_string();
        fs::create_dir(rootfs.join("etc")).unwrap();
        // Absolute escapes (to the real host paths and to the sandbox's
        // "host"), relative escapes, a loop, and a dangling link.
        symlink(format!("{abs_host}/dev"), rootfs.join("dev")).unwrap();
        symlink("../../../../../../proc", rootfs.join("proc")).unwrap();
        symlink("/sys", rootfs.join("sys")).unwrap();
        symlink(format!("{abs_host}/etc/hosts"), rootfs.join("etc/hosts")).unwrap();
        symlink("../../host/etc/hosts", rootfs.join("etc/resolv.conf")).unwrap();
        symlink("hostname", rootfs.join("etc/hostname")).unwrap();
        let before = snapshot(&host);
        prepare_rootfs(&rootfs).unwrap();
        check_prepared(&rootfs);
        assert_eq!(snapshot(&host), before);
        assert_eq!(fs::read_to_string(host.join("etc/hosts")).unwrap(), "HOST");
        assert!(Path::new("/proc/self").exists() && Path::new("/sys/kernel").exists());
        assert_eq!(fs::read_dir(rootfs.join("dev")).unwrap().count(), 0);
    }

    #[test]
    fn symlinked_etc_becomes_a_directory() {
        let (sb, rootfs) = sandbox();
        let host = sb.path().join("host");
        symlink(host.join("etc"), rootfs.join("etc")).unwrap();
        let before = snapshot(&host);
        prepare_rootfs(&rootfs).unwrap();
        check_prepared(&rootfs);
        assert_eq!(snapshot(&host), before);

        // /etc -> /proc inside the root: /etc/hosts must not land in /proc.
        let (_sb2, rootfs) = sandbox();
        symlink("/proc", rootfs.join("etc")).unwrap();
        prepare_rootfs(&rootfs).unwrap();
        check_prepared(&rootfs);
        assert_eq!(fs::read_dir(rootfs.join("proc")).unwrap().count(), 0);
    }

    #[test]
    fn wrong_kinds_are_replaced() {
        let (_sb, rootfs) = sandbox();
        fs::write(rootfs.join("proc"), "not a dir").unwrap();
        fs::create_dir_all(rootfs.join("etc/hosts/sub")).unwrap();
        fs::write(rootfs.join("etc/hosts/sub/x"), "x").unwrap();
        nix::unistd::mkfifo(&rootfs.join("etc/hostname"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        prepare_rootfs(&rootfs).unwrap();
        check_prepared(&rootfs);
    }

    #[test]
    fn missing_rootfs_is_an_error() {
        let (sb, _) = sandbox();
        let e = prepare_rootfs(&sb.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
    }
}
