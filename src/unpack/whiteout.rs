//! Whiteout entries: `.wh.NAME` deletes NAME of a lower layer,
//! `.wh..wh..opq` hides every lower child of its directory. Whiteouts
//! apply to lower layers only, so paths this layer wrote are left alone
//! whatever the order of the entries.
//!
//! In flatten mode the lower paths are deleted from the destination (which
//! holds the lower layers). In overlay mode the layer directory is a
//! future overlay lower dir on its own: a deletion is a `c 0 0` device node
//! (creatable without privilege since Linux 5.8) and an opaque directory
//! carries `user.overlay.opaque=y`, as overlayfs reads them with `userxattr`.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd};

use super::apply::Applier;
use super::name::Name;
use super::sys::{self, errno};
use super::xattr;
use super::{ErrorKind, WhiteoutMode};

const OPAQUE: &[u8] = b".wh..opq";
pub const OPAQUE_XATTR: &str = "user.overlay.opaque";

/// Applies the whiteout entry `PARENT/.wh.TARGET`.
pub(crate) fn apply(ap: &mut Applier<'_>, parent: &Name, target: &[u8]) -> Result<(), ErrorKind> {
    if target == OPAQUE {
        return opaque(ap, parent);
    }
    if target.starts_with(b".wh.") {
        return Err(ErrorKind::BadWhiteout("reserved .wh..wh. name"));
    }
    match target {
        b"" => return Err(ErrorKind::BadWhiteout("empty name")),
        b"." | b".." => return Err(ErrorKind::BadWhiteout("names . or ..")),
        _ => {}
    }
    let name = parent.join(target);
    if ap.written.contains_key(name.as_bytes()) {
        tracing::debug!(layer = %ap.opts.layer, entry = %name.display(), "ignoring a whiteout of a path of the same layer");
        return Ok(());
    }
    if ap.ancestors.contains(name.as_bytes()) {
        // This layer wrote below the whited-out path (without an entry for
        // the directory itself): the lower directory goes, this layer's
        // content in it stays. That is an opaque directory, which the
        // layer never described: it gets the fixed metadata of an implied
        // directory in both modes.
        ap.implied_dir(&name);
        return opaque(ap, &name);
    }
    let base = CString::new(target).map_err(|_| ErrorKind::BadName("contains a NUL byte"))?;
    match ap.opts.whiteouts {
        WhiteoutMode::Flatten => {
            let Some(dir) = ap.existing_dir_fd(parent)? else {
                return Ok(()); // nothing below to delete
            };
            ap.forget_parents();
            ap.remove(dir.as_fd(), &base, &name)
        }
        WhiteoutMode::Overlay => {
            let dir = ap.dir_fd(parent)?;
            match sys::mknodat(dir.as_fd(), &base, libc::S_IFCHR, 0) {
                Ok(()) => {}
                Err(e) if errno(&e) == libc::EEXIST => {
                    ap.remove(dir.as_fd(), &base, &name)?;
                    sys::mknodat(dir.as_fd(), &base, libc::S_IFCHR, 0).map_err(|source| ErrorKind::Io { op: "creating a whiteout", source })?;
                }
                Err(source) => return Err(ErrorKind::Io { op: "creating a whiteout", source }),
            }
            ap.whited.insert(name.as_bytes().to_vec());
            Ok(())
        }
    }
}

fn opaque(ap: &mut Applier<'_>, dir: &Name) -> Result<(), ErrorKind> {
    let fd = ap.dir_fd(dir)?;
    let readable = sys::open_dir(fd.as_fd(), c".").map_err(|source| ErrorKind::Io { op: "opening an opaque directory", source })?;
    match ap.opts.whiteouts {
        WhiteoutMode::Overlay => mark_opaque(readable.as_fd()),
        WhiteoutMode::Flatten => {
            ap.forget_parents();
            clear_lower(ap, dir, readable)
        }
    }
}

pub(super) fn mark_opaque(dir: BorrowedFd<'_>) -> Result<(), ErrorKind> {
    xattr::fset(dir, OPAQUE_XATTR, b"y").map_err(|source| ErrorKind::Io { op: "marking a directory opaque", source })
}

/// Deletes every child of `dir` that this layer did not write, keeping
/// (and clearing inside) directories that hold what it wrote.
fn clear_lower(ap: &mut Applier<'_>, dir: &Name, fd: std::os::fd::OwnedFd) -> Result<(), ErrorKind> {
    let dirfd = fd.try_clone().map_err(|source| ErrorKind::Io { op: "duplicating a directory fd", source })?;
    let names = sys::read_dir_names(fd).map_err(|source| ErrorKind::Io { op: "listing an opaque directory", source })?;
    for child in names {
        let name = dir.join(child.to_bytes());
        let keep = ap.written.contains_key(name.as_bytes()) || ap.ancestors.contains(name.as_bytes());
        if !keep {
            ap.remove(dirfd.as_fd(), &child, &name)?;
            continue;
        }
        let st = sys::lstatat(dirfd.as_fd(), &child).map_err(|source| ErrorKind::Io { op: "inspecting a directory entry", source })?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            let sub = sys::open_dir(dirfd.as_fd(), &child).map_err(|source| ErrorKind::Io { op: "opening a directory", source })?;
            clear_lower(ap, &name, sub)?;
        }
    }
    Ok(())
}
