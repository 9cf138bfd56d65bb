//! Removing trees that hold files owned by subordinate ids.
//!
//! Containers write files as their own uids (e.g. an overlay upper directory
//! with files of uid 1 = the first subordinate uid). The invoking user cannot
//! remove those on the host, but uid 0 of a user namespace with the same
//! mapping can: removal falls back to [`Entry::Rmtree`] run there.

use std::io;
use std::path::Path;

use crate::reexec::Entry;
use crate::userns::{IdMapping, SpawnOptions};

/// Removes `path` recursively; a missing path is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    // Most often a directory of ours without write permission, such as the
    // mode-0000 `work/work` overlayfs leaves in every container's work dir:
    // the cache's remover fixes modes, far cheaper than a user namespace.
    match crate::unpack::cache::remove_tree(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() != io::ErrorKind::PermissionDenied => return Err(e),
        Err(_) => {}
    }
    // Already uid 0 of a user namespace (e.g. inside the pod process): no
    // other mapping would do better.
    if nix::unistd::Uid::effective().is_root() && in_user_namespace() {
        return std::fs::remove_dir_all(path);
    }
    let mapping = IdMapping::for_current_user().map_err(io::Error::other)?;
    let pid = Entry::Rmtree { path: path.to_path_buf() }
        .spawn(&mapping, 0, &SpawnOptions::default())
        .map_err(io::Error::other)?;
    let status = nix::sys::wait::waitpid(pid, None).map_err(io::Error::from)?;
    match status {
        nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
        other => Err(io::Error::other(format!("removing {} in a user namespace: {other:?}", path.display()))),
    }
}

/// The body of [`Entry::Rmtree`]: runs as uid 0 of a mapped
/// user namespace.
pub fn rmtree_in_namespace(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// True when this process is not in the initial user namespace.
pub fn in_user_namespace() -> bool {
    let m = IdMapping::of_current_process();
    !m.uids.is_empty() && !m.is_initial()
}
