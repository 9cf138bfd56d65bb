//! A writer of "newc" cpio archives (magic `070701`), the format the Linux
//! kernel unpacks as an initramfs: a 110-byte ASCII header per entry, the
//! NUL-terminated name, the data, each padded to four bytes, and a last
//! entry named `TRAILER!!!`.
//!
//! Every entry is owned by 0:0 with mtime 0, so an archive depends only on
//! its contents. Names are written without a leading `/` (as `cpio -o`
//! does from `.`); the kernel reads them relative to its root either way.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Writes entries in the order given: a directory must come before what it
/// holds (the kernel creates each entry as it reads it).
pub struct Writer<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why)
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Writer<W> {
        Writer { out, next_ino: 1, written: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        self.header(path, S_IFDIR | (mode & 0o7777), 2, 0, (0, 0))
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.header(path, S_IFREG | (mode & 0o7777), 1, data.len() as u64, (0, 0))?;
        self.put(data)?;
        self.pad()
    }

    /// A regular file with the contents of host file `src`, streamed. The
    /// size is taken when it is opened; a file that changes size meanwhile
    /// is an error, not a corrupt archive entry.
    pub fn file_from(&mut self, path: &str, mode: u32, src: &Path) -> io::Result<()> {
        let f = File::open(src)?;
        let size = f.metadata()?.len();
        self.header(path, S_IFREG | (mode & 0o7777), 1, size, (0, 0))?;
        let copied = io::copy(&mut f.take(size), &mut self.out)?;
        self.written += copied;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was archived ({copied} of {size} bytes)", src.display()),
            ));
        }
        self.pad()
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        if target.is_empty() || target.contains('\0') {
            return Err(invalid(format!("symlink {path}: bad target {target:?}")));
        }
        self.header(path, S_IFLNK | 0o777, 1, target.len() as u64, (0, 0))?;
        self.put(target.as_bytes())?;
        self.pad()
    }

    /// A character device node (the kernel creates it as it unpacks).
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.header(path, S_IFCHR | (mode & 0o7777), 1, 0, (major, minor))
    }

    /// Writes the trailer and returns the writer underneath.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry(TRAILER, 0, 0, 1, 0, (0, 0))?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn header(&mut self, path: &str, mode: u32, nlink: u32, size: u64, rdev: (u32, u32)) -> io::Result<()> {
        let name = path.trim_start_matches('/');
        if name.is_empty()
            || name.contains('\0')
            || name.split('/').any(|c| c.is_empty() || c == "." || c == "..")
            || name == TRAILER
        {
            return Err(invalid(format!("bad archive path {path:?}")));
        }
        let ino = self.next_ino;
        self.next_ino = self.next_ino.checked_add(1).ok_or_else(|| invalid("too many archive entries".into()))?;
        self.entry(name, ino, mode, nlink, size, rdev)
    }

    fn entry(&mut self, name: &str, ino: u32, mode: u32, nlink: u32, size: u64, rdev: (u32, u32)) -> io::Result<()> {
        let size = u32::try_from(size).map_err(|_| invalid(format!("{name}: over 4 GiB, more than newc can hold")))?;
        let namesize = u32::try_from(name.len() + 1).map_err(|_| invalid("name too long".into()))?;
        // ino mode uid gid nlink mtime filesize devmajor devminor
        // rdevmajor rdevminor namesize check
        let fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0];
        let mut h = Vec::with_capacity(110 + name.len() + 4);
        h.extend_from_slice(MAGIC);
        for f in fields {
            h.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        h.extend_from_slice(name.as_bytes());
        h.push(0);
        self.put(&h)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    /// Zeros up to the next multiple of four.
    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0; 3][..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(h: &[u8], i: usize) -> u32 {
        u32::from_str_radix(std::str::from_utf8(&h[6 + i * 8..14 + i * 8]).unwrap(), 16).unwrap()
    }

    #[test]
    fn one_file_and_the_trailer_byte_for_byte() {
        let mut w = Writer::new(Vec::new());
        w.file("/etc/hosts", 0o644, b"hello").unwrap();
        let out = w.finish().unwrap();
        // Header + "etc/hosts\0" (10) = 120, a multiple of 4; data 5 -> 8.
        assert_eq!(&out[..6], b"070701");
        assert_eq!(field(&out, 0), 1); // ino
        assert_eq!(field(&out, 1), 0o100644);
        assert_eq!((field(&out, 2), field(&out, 3), field(&out, 5)), (0, 0, 0)); // uid gid mtime
        assert_eq!(field(&out, 6), 5);
        assert_eq!(field(&out, 11), 10);
        assert_eq!(&out[110..120], b"etc/hosts\0");
        assert_eq!(&out[120..128], b"hello\0\0\0");
        let trailer = &out[128..];
        assert_eq!(&trailer[..6], b"070701");
        assert_eq!(&trailer[110..121], b"TRAILER!!!\0");
        assert_eq!(trailer.len(), 124);
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn every_entry_starts_aligned() {
        let mut w = Writer::new(Vec::new());
        for (i, name) in ["a", "ab", "abc", "abcd", "abcde"].iter().enumerate() {
            w.dir(name, 0o755).unwrap();
            w.file(&format!("{name}/f"), 0o600, &vec![b'x'; i]).unwrap();
            w.symlink(&format!("{name}/l"), &"t".repeat(i + 1)).unwrap();
        }
        let out = w.finish().unwrap();
        let mut at = 0;
        let mut names = Vec::new();
        while at < out.len() {
            assert_eq!(at % 4, 0);
            assert_eq!(&out[at..at + 6], b"070701", "entry at {at}");
            let size = field(&out[at..], 6) as usize;
            let namesize = field(&out[at..], 11) as usize;
            names.push(String::from_utf8(out[at + 110..at + 110 + namesize - 1].to_vec()).unwrap());
            at = (at + 110 + namesize).next_multiple_of(4);
            at = (at + size).next_multiple_of(4);
        }
        assert_eq!(at, out.len());
        assert_eq!(names.len(), 16);
        assert_eq!(names.last().unwrap(), "TRAILER!!!");
    }

    #[test]
    fn refuses_bad_names() {
        let mut w = Writer::new(Vec::new());
        for bad in ["", "/", "a//b", "../x", "a/./b", "TRAILER!!!", "a\0b"] {
            assert!(w.file(bad, 0o644, b"").is_err(), "{bad:?}");
        }
        assert!(w.symlink("l", "").is_err());
    }
}
