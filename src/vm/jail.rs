//! QEMU's own view of the host: a user namespace (the user's one id), a
//! mount namespace whose root is an empty tmpfs holding only what QEMU
//! opens (its binary and libraries under /usr, a few /dev nodes, the
//! guest's kernel, initramfs and disks, its log and sockets), and a network
//! namespace of its own when the guest has no NIC. A guest that escapes
//! into QEMU then finds no user files to read or write, and no /proc.
//!
//! Everything is prepared before the fork; [`Jail::enter`] runs in the
//! child between fork and exec and makes only system calls.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// One bind mount into the new root.
#[derive(Debug)]
struct Bind {
    src: CString,
    /// The target under the tmpfs, before pivot_root.
    dst: CString,
    dir: bool,
    writable: bool,
}

#[derive(Debug)]
pub struct Jail {
    root: CString,
    old: CString,
    /// Directories to make under the tmpfs, parents first.
    dirs: Vec<CString>,
    binds: Vec<Bind>,
    /// (link path under the tmpfs, target)
    symlinks: Vec<(CString, CString)>,
    new_net: bool,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("a path with a NUL byte: {0}")]
pub struct NulInPath(PathBuf);

fn c(p: &Path) -> Result<CString, NulInPath> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| NulInPath(p.to_path_buf()))
}

impl Jail {
    /// A jail rooted at `root`, an empty directory berth owns (the tmpfs is
    /// mounted over it in the child's mount namespace only).
    pub fn new(root: &Path, new_net: bool) -> Result<Jail, NulInPath> {
        let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        let mut j = Jail {
            root: c(root)?,
            old: c(&root.join(".old"))?,
            dirs: Vec::new(),
            binds: Vec::new(),
            symlinks: Vec::new(),
            new_net,
            uid_map: format!("{uid} {uid} 1\n").into_bytes(),
            gid_map: format!("{gid} {gid} 1\n").into_bytes(),
        };
        j.dirs.push(j.old.clone());
        Ok(j)
    }

    fn under(&self, inside: &Path) -> PathBuf {
        let root = Path::new(std::ffi::OsStr::from_bytes(self.root.as_bytes()));
        root.join(inside.strip_prefix("/").unwrap_or(inside))
    }

    fn parents(&mut self, inside: &Path) -> Result<(), NulInPath> {
        let mut parts = Vec::new();
        let mut p = inside.parent();
        while let Some(d) = p.filter(|d| *d != Path::new("/") && !d.as_os_str().is_empty()) {
            parts.push(d.to_path_buf());
            p = d.parent();
        }
        for d in parts.into_iter().rev() {
            let under = c(&self.under(&d))?;
            if !self.dirs.contains(&under) {
                self.dirs.push(under);
            }
        }
        Ok(())
    }

    /// `src` (a file or directory of the host) at `inside`.
    pub fn bind(&mut self, src: &Path, inside: &Path, writable: bool) -> Result<(), NulInPath> {
        self.parents(inside)?;
        let dst = c(&self.under(inside))?;
        self.binds.push(Bind { src: c(src)?, dst, dir: src.is_dir(), writable });
        Ok(())
    }

    /// A symbolic link at `inside` to `target`.
    pub fn symlink(&mut self, inside: &Path, target: &Path) -> Result<(), NulInPath> {
        self.parents(inside)?;
        self.symlinks.push((c(&self.under(inside))?, c(target)?));
        Ok(())
    }

    /// The host's usrmerged top-level links (`/lib -> usr/lib`, …) and
    /// /usr itself, read-only: QEMU, its libraries, modules and firmware.
    pub fn system(&mut self) -> Result<(), NulInPath> {
        self.bind(Path::new("/usr"), Path::new("/usr"), false)?;
        for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(top);
            match std::fs::read_link(&host) {
                Ok(target) => self.symlink(&host, &target)?,
                Err(_) if host.is_dir() => self.bind(&host, &host, false)?,
                Err(_) => {}
            }
        }
        if Path::new("/etc/ld.so.cache").exists() {
            self.bind(Path::new("/etc/ld.so.cache"), Path::new("/etc/ld.so.cache"), false)?;
        }
        for dev in ["null", "zero", "urandom", "random"] {
            let p = Path::new("/dev").join(dev);
            self.bind(&p, &p, true)?;
        }
        Ok(())
    }

    /// Enters the jail. Call it in the child between fork and exec: it makes
    /// only system calls, on memory prepared before the fork.
    ///
    /// # Safety
    ///
    /// Only in a forked child that execs (or exits) right after.
    pub unsafe fn enter(&self) -> io::Result<()> {
        let check = |r: libc::c_int| if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
        let mut flags = libc::CLONE_NEWUSER | libc::CLONE_NEWNS | libc::CLONE_NEWIPC;
        if self.new_net {
            flags |= libc::CLONE_NEWNET;
        }
        // SAFETY: plain system calls on NUL-terminated strings and buffers
        // owned by `self`, alive until exec.
        unsafe {
            check(libc::unshare(flags))?;
            write_file(c"/proc/self/setgroups", b"deny")?;
            write_file(c"/proc/self/uid_map", &self.uid_map)?;
            write_file(c"/proc/self/gid_map", &self.gid_map)?;
            check(libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
            check(libc::mount(c"tmpfs".as_ptr(), self.root.as_ptr(), c"tmpfs".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV, c"mode=0755".as_ptr().cast()))?;
            for d in &self.dirs {
                check(libc::mkdir(d.as_ptr(), 0o755))?;
            }
            for b in &self.binds {
                if b.dir {
                    check(libc::mkdir(b.dst.as_ptr(), 0o755))?;
                } else {
                    let fd = libc::open(b.dst.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o600);
                    check(fd)?;
                    libc::close(fd);
                }
                check(libc::mount(b.src.as_ptr(), b.dst.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()))?;
                if !b.writable {
                    // A bind remount keeps the flags the original mount has
                    // locked (nosuid, nodev, ...), or it is refused.
                    let mut st: libc::statvfs = std::mem::zeroed();
                    check(libc::statvfs(b.dst.as_ptr(), &mut st))?;
                    let locked = [
                        (libc::ST_NOSUID, libc::MS_NOSUID),
                        (libc::ST_NODEV, libc::MS_NODEV),
                        (libc::ST_NOEXEC, libc::MS_NOEXEC),
                        (libc::ST_NOATIME, libc::MS_NOATIME),
                        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
                        (libc::ST_RELATIME, libc::MS_RELATIME),
                    ]
                    .iter()
                    .filter(|(st_flag, _)| st.f_flag & st_flag != 0)
                    .fold(0, |acc, (_, ms)| acc | ms);
                    let flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | locked;
                    check(libc::mount(std::ptr::null(), b.dst.as_ptr(), std::ptr::null(), flags, std::ptr::null()))?;
                }
            }
            for (link, target) in &self.symlinks {
                check(libc::symlink(target.as_ptr(), link.as_ptr()))?;
            }
            check(libc::syscall(libc::SYS_pivot_root, self.root.as_ptr(), self.old.as_ptr()) as libc::c_int)?;
            check(libc::chdir(c"/".as_ptr()))?;
            check(libc::umount2(c"/.old".as_ptr(), libc::MNT_DETACH))?;
            check(libc::rmdir(c"/.old".as_ptr()))?;
            // Nothing more is made: the root itself read-only.
            check(libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV, std::ptr::null()))?;
        }
        Ok(())
    }
}

/// Writes `data` to `path` with open/write/close only.
unsafe fn write_file(path: &std::ffi::CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: a NUL-terminated path and a live buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = io::Error::last_os_error();
        libc::close(fd);
        if n != data.len() as isize {
            return Err(err);
        }
    }
    Ok(())
}
