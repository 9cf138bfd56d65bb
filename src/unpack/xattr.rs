//! Extended attributes from a layer's PAX `SCHILY.xattr.*` records.
//!
//! Decisions:
//! - `security.capability` v3 carries the root id of the namespace that
//!   wrote it, meaningless here: it is rewritten as v2, which the kernel
//!   stores relative to the writer's own user namespace root (so file
//!   capabilities work inside the container's namespace).
//! - `trusted.*` and `security.*` cannot be written without privilege: when
//!   the kernel refuses, they are skipped with one warning per layer.
//! - `user.*` exists only on regular files and directories; elsewhere it is
//!   skipped (debug). Nothing is set on symlinks at all.
//! - `user.overlay.*` from an image would be *interpreted* by overlayfs (an
//!   image could make a directory opaque or redirect it). In overlay mode
//!   it is escaped as `user.overlay.overlay.*`, which overlayfs (>= 6.7)
//!   shows to the container under the original name; in flatten mode it is
//!   written as is (a plain directory gives it no meaning).
//! - `user.rootlesscontainers` is the rootless-ownership record of other
//!   tools, not ours: ignored.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};

pub const OVERLAY_XATTR_PREFIX: &str = "user.overlay.";
const ESCAPED_PREFIX: &str = "user.overlay.overlay.";
const PAX_XATTR: &str = "SCHILY.xattr.";

const VFS_CAP_REVISION_MASK: u32 = 0xff00_0000;
const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
const VFS_CAP_REVISION_3: u32 = 0x0300_0000;
const VFS_CAP_V2_SIZE: usize = 20;
const VFS_CAP_V3_SIZE: usize = 24;

/// The xattr name a PAX record key carries, if it is one.
pub fn from_pax_key(key: &str) -> Option<&str> {
    key.strip_prefix(PAX_XATTR).filter(|n| !n.is_empty())
}

/// What to write for an xattr of the image, or why not.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    Write(String, Vec<u8>),
    Skip(&'static str),
}

/// Decides what to write for `name=value` on an inode of the given kind.
pub fn plan(name: &str, value: &[u8], overlay: bool, regular_or_dir: bool) -> Plan {
    if !regular_or_dir {
        return Plan::Skip("xattrs are only set on regular files and directories");
    }
    if name == "user.rootlesscontainers" {
        return Plan::Skip("user.rootlesscontainers belongs to other tools");
    }
    if name == "security.capability" {
        return match capability_v2(value) {
            Some(v) => Plan::Write(name.to_string(), v),
            None => Plan::Skip("malformed security.capability"),
        };
    }
    if overlay {
        if let Some(rest) = name.strip_prefix(OVERLAY_XATTR_PREFIX) {
            return Plan::Write(format!("{ESCAPED_PREFIX}{rest}"), value.to_vec());
        }
    }
    Plan::Write(name.to_string(), value.to_vec())
}

/// An xattr name as read from a cached overlay-mode layer dir, as it should
/// be written into a flattened rootfs: escaped overlay names are unescaped,
/// overlay's own (whiteout/opaque markers) are dropped.
pub fn unescape_overlay(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix(ESCAPED_PREFIX) {
        return Some(format!("{OVERLAY_XATTR_PREFIX}{rest}"));
    }
    if name.starts_with(OVERLAY_XATTR_PREFIX) {
        return None;
    }
    Some(name.to_string())
}

/// `security.capability` as revision 2. v1 and v2 pass unchanged; v3 loses
/// its root id.
pub fn capability_v2(value: &[u8]) -> Option<Vec<u8>> {
    let magic = u32::from_le_bytes(value.get(..4)?.try_into().ok()?);
    match magic & VFS_CAP_REVISION_MASK {
        VFS_CAP_REVISION_3 if value.len() == VFS_CAP_V3_SIZE => {
            let mut v = value[..VFS_CAP_V2_SIZE].to_vec();
            let magic = (magic & !VFS_CAP_REVISION_MASK) | VFS_CAP_REVISION_2;
            v[..4].copy_from_slice(&magic.to_le_bytes());
            Some(v)
        }
        VFS_CAP_REVISION_2 if value.len() == VFS_CAP_V2_SIZE => Some(value.to_vec()),
        0x0100_0000 if value.len() == 12 => Some(value.to_vec()),
        _ => None,
    }
}

pub fn fset(fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> std::io::Result<()> {
    let cname = CString::new(name).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid fd, NUL-terminated name, value pointer/length from a slice.
    let rc = unsafe {
        libc::fsetxattr(fd.as_raw_fd(), cname.as_ptr(), value.as_ptr().cast(), value.len(), 0)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Names and values of the xattrs of an open inode.
pub fn flist(fd: BorrowedFd<'_>) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let raw = fd.as_raw_fd();
    let mut names = vec![0u8; 4096];
    let n = loop {
        // SAFETY: buffer pointer and length from a live Vec.
        let n = unsafe { libc::flistxattr(raw, names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && names.len() < (1 << 20) {
            names.resize(names.len() * 4, 0);
            continue;
        }
        return Err(err);
    };
    let mut out = Vec::new();
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let Ok(cname) = CString::new(name) else { continue };
        let mut value = vec![0u8; 256];
        let len = loop {
            // SAFETY: as above.
            let len = unsafe { libc::fgetxattr(raw, cname.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
            if len >= 0 {
                break len as usize;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ERANGE) && value.len() < (1 << 20) {
                value.resize(value.len() * 8, 0);
                continue;
            }
            return Err(err);
        };
        value.truncate(len);
        out.push((String::from_utf8_lossy(name).into_owned(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(rev: u32, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        v[..4].copy_from_slice(&(rev | 1).to_le_bytes());
        v[4..8].copy_from_slice(&0x400u32.to_le_bytes()); // cap_net_bind_service
        if len == 24 {
            v[20..24].copy_from_slice(&100000u32.to_le_bytes());
        }
        v
    }

    #[test]
    fn capability_v3_becomes_v2() {
        let v2 = capability_v2(&cap(VFS_CAP_REVISION_3, 24)).unwrap();
        assert_eq!(v2, cap(VFS_CAP_REVISION_2, 20));
        assert_eq!(capability_v2(&cap(VFS_CAP_REVISION_2, 20)).unwrap(), cap(VFS_CAP_REVISION_2, 20));
        assert!(capability_v2(&cap(VFS_CAP_REVISION_3, 20)).is_none());
        assert!(capability_v2(b"xx").is_none());
    }

    #[test]
    fn overlay_names_are_escaped_only_in_overlay_mode() {
        assert_eq!(
            plan("user.overlay.opaque", b"y", true, true),
            Plan::Write("user.overlay.overlay.opaque".into(), b"y".to_vec())
        );
        assert_eq!(plan("user.overlay.opaque", b"y", false, true), Plan::Write("user.overlay.opaque".into(), b"y".to_vec()));
        assert!(matches!(plan("user.foo", b"", false, false), Plan::Skip(_)));
        assert!(matches!(plan("user.rootlesscontainers", b"", false, true), Plan::Skip(_)));
        assert_eq!(unescape_overlay("user.overlay.overlay.opaque").as_deref(), Some("user.overlay.opaque"));
        assert_eq!(unescape_overlay("user.overlay.opaque"), None);
        assert_eq!(unescape_overlay("user.x").as_deref(), Some("user.x"));
    }
}
