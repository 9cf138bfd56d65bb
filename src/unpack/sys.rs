//! Thin `*at` syscall wrappers on a directory fd and a single name
//! component (never a path): the last component is never followed.

use std::ffi::CStr;
use std::io::{Error, Result};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

fn check(rc: libc::c_int) -> Result<libc::c_int> {
    if rc < 0 {
        Err(Error::last_os_error())
    } else {
        Ok(rc)
    }
}

pub fn errno(e: &Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int, mode: libc::mode_t) -> Result<OwnedFd> {
    // SAFETY: valid fd and C string; the returned fd is owned by us.
    let fd = check(unsafe {
        libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NOFOLLOW, mode)
    })?;
    // SAFETY: fd was just returned by openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the directory `name` in `dir` for reading (not following it).
pub fn open_dir(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd> {
    openat(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> Result<()> {
    // SAFETY: valid fd and C string.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t, dev: libc::dev_t) -> Result<()> {
    // SAFETY: valid fd and C string.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, dev) }).map(drop)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    // SAFETY: valid fd and C strings.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// `linkat` without `AT_SYMLINK_FOLLOW`: a link to a symlink links the
/// symlink itself.
pub fn linkat(odir: BorrowedFd<'_>, oname: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    // SAFETY: valid fds and C strings.
    check(unsafe { libc::linkat(odir.as_raw_fd(), oname.as_ptr(), dir.as_raw_fd(), name.as_ptr(), 0) }).map(drop)
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> Result<()> {
    // SAFETY: valid fd and C string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub fn lstatat(dir: BorrowedFd<'_>, name: &CStr) -> Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: valid fd, C string and a stat buffer.
    check(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) })?;
    // SAFETY: fstatat filled it.
    Ok(unsafe { st.assume_init() })
}

pub fn lchownat(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> Result<()> {
    // SAFETY: valid fd and C string.
    check(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
}

pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }).map(drop)
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
}

/// `fchmodat` on a name just created as a fifo or device node by this
/// (single) writer in a directory only it writes to; it cannot be a symlink.
pub fn chmodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<()> {
    // SAFETY: valid fd and C string.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) }).map(drop)
}

fn times(mtime: (i64, u32)) -> [libc::timespec; 2] {
    let ts = libc::timespec { tv_sec: mtime.0 as libc::time_t, tv_nsec: mtime.1 as libc::c_long };
    [ts, ts]
}

pub fn futimens(fd: BorrowedFd<'_>, mtime: (i64, u32)) -> Result<()> {
    let t = times(mtime);
    // SAFETY: valid fd and a 2-element timespec array.
    check(unsafe { libc::futimens(fd.as_raw_fd(), t.as_ptr()) }).map(drop)
}

pub fn lutimesat(dir: BorrowedFd<'_>, name: &CStr, mtime: (i64, u32)) -> Result<()> {
    let t = times(mtime);
    // SAFETY: valid fd, C string and a 2-element timespec array.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), t.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
}

/// Names in the directory open as `fd` (without `.` and `..`).
pub fn read_dir_names(fd: OwnedFd) -> Result<Vec<std::ffi::CString>> {
    let mut dir = nix::dir::Dir::from(fd).map_err(Error::from)?;
    let mut out = Vec::new();
    for ent in dir.iter() {
        let ent = ent.map_err(Error::from)?;
        let name = ent.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            out.push(name.to_owned());
        }
    }
    Ok(out)
}

pub fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: valid fd, C string and buffer.
    let n = unsafe { libc::readlinkat(dir.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// `flock(LOCK_EX)` (blocking) or `LOCK_EX|LOCK_NB`; returns false when a
/// non-blocking attempt finds the lock taken.
pub fn flock_exclusive(fd: BorrowedFd<'_>, wait: bool) -> Result<bool> {
    let op = if wait { libc::LOCK_EX } else { libc::LOCK_EX | libc::LOCK_NB };
    loop {
        // SAFETY: valid fd.
        if unsafe { libc::flock(fd.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = Error::last_os_error();
        match errno(&e) {
            libc::EINTR => continue,
            libc::EWOULDBLOCK if !wait => return Ok(false),
            _ => return Err(e),
        }
    }
}
