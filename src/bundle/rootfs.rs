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
