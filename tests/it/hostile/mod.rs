//! Builds tar layers byte by byte, hostile ones included (`..` names,
//! absolute names, huge PAX headers), which `tar::Builder` refuses to
//! write; and snapshots the tree around a destination so a test can prove
//! nothing outside it changed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    Char(u32, u32),
    Fifo,
}

/// One tar entry to write.
#[derive(Clone)]
pub struct Entry {
    pub kind: Kind,
    pub name: Vec<u8>,
    pub link: Vec<u8>,
    pub data: Vec<u8>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub pax: Vec<(String, Vec<u8>)>,
}

impl Entry {
    fn new(kind: Kind, name: &str) -> Entry {
        let mode = match kind {
            Kind::Dir => 0o755,
            Kind::Symlink => 0o777,
            _ => 0o644,
        };
        Entry { kind, name: name.as_bytes().to_vec(), link: Vec::new(), data: Vec::new(), mode, uid: 0, gid: 0, mtime: 1_600_000_000, pax: Vec::new() }
    }
    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mtime(mut self, mtime: u64) -> Entry {
        self.mtime = mtime;
        self
    }
    pub fn xattr(mut self, name: &str, value: &[u8]) -> Entry {
        self.pax.push((format!("SCHILY.xattr.{name}"), value.to_vec()));
        self
    }
    pub fn pax(mut self, key: &str, value: &[u8]) -> Entry {
        self.pax.push((key.to_string(), value.to_vec()));
        self
    }
}

pub fn file(name: &str, data: &[u8]) -> Entry {
    let mut e = Entry::new(Kind::File, name);
    e.data = data.to_vec();
    e
}
pub fn dir(name: &str) -> Entry {
    Entry::new(Kind::Dir, name)
}
pub fn symlink(name: &str, target: &str) -> Entry {
    let mut e = Entry::new(Kind::Symlink, name);
    e.link = target.as_bytes().to_vec();
    e
}
pub fn hardlink(name: &str, target: &str) -> Entry {
    let mut e = Entry::new(Kind::Hardlink, name);
    e.link = target.as_bytes().to_vec();
    e
}
pub fn chardev(name: &str, major: u32, minor: u32) -> Entry {
    Entry::new(Kind::Char(major, minor), name)
}
pub fn fifo(name: &str) -> Entry {
    Entry::new(Kind::Fifo, name)
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // "LEN key=value\n", where LEN counts itself.
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn header(kind: u8, name: &[u8], link: &[u8], size: u64, e: &Entry) -> [u8; 512] {
    let mut h = tar::Header::new_ustar();
    {
        let raw = h.as_mut_bytes();
        raw[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
        raw[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
        raw[156] = kind;
    }
    h.set_mode(e.mode);
    h.set_uid(e.uid.min(0o7777777));
    h.set_gid(e.gid.min(0o7777777));
    h.set_mtime(e.mtime);
    h.set_size(size);
    if let Kind::Char(maj, min) = e.kind {
        h.set_device_major(maj).unwrap();
        h.set_device_minor(min).unwrap();
    }
    h.set_cksum();
    *h.as_bytes()
}

/// The uncompressed tar stream of `entries`, names written raw (PAX `path`
/// and `linkpath` when longer than 100 bytes).
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut pax = e.pax.clone();
        if e.name.len() > 100 {
            pax.push(("path".into(), e.name.clone()));
        }
        if e.link.len() > 100 {
            pax.push(("linkpath".into(), e.link.clone()));
        }
        if e.uid > 0o7777777 {
            pax.push(("uid".into(), e.uid.to_string().into_bytes()));
        }
        if e.gid > 0o7777777 {
            pax.push(("gid".into(), e.gid.to_string().into_bytes()));
        }
        if !pax.is_empty() {
            let body: Vec<u8> = pax.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
            out.extend_from_slice(&header(b'x', b"PaxHeader", b"", body.len() as u64, e));
            out.extend_from_slice(&body);
            pad(&mut out);
        }
        let (kind, size) = match e.kind {
            Kind::File => (b'0', e.data.len() as u64),
            Kind::Dir => (b'5', 0),
            Kind::Symlink => (b'2', 0),
            Kind::Hardlink => (b'1', 0),
            Kind::Char(..) => (b'3', 0),
            Kind::Fifo => (b'6', 0),
        };
        out.extend_from_slice(&header(kind, &e.name, &e.link, size, e));
        out.extend_from_slice(&e.data);
        pad(&mut out);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A raw PAX header of `size` bytes of junk, then a file: the header bomb.
pub fn tar_with_huge_pax(size: usize) -> Vec<u8> {
    let e = file("x", b"x");
    let mut out = Vec::new();
    let body = pax_record("comment", &vec![b'a'; size]);
    out.extend_from_slice(&header(b'x', b"PaxHeader", b"", body.len() as u64, &e));
    out.extend_from_slice(&body);
    pad(&mut out);
    out.extend(tar(&[e]));
    out
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

pub fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A place to unpack into: `outer/` holds sentinels (`outer/etc/passwd`,
/// `outer/secret`, `outer/sibling/keep`) around `outer/root/`, the
/// destination.
pub struct Arena {
    pub tmp: tempfile::TempDir,
    pub outer: PathBuf,
    pub dest: PathBuf,
    before: BTreeMap<PathBuf, String>,
}

impl Arena {
    pub fn new() -> Arena {
        let tmp = tempfile::tempdir().unwrap();
        let outer = tmp.path().join("outer");
        let dest = outer.join("root");
        fs::create_dir_all(outer.join("etc")).unwrap();
        fs::create_dir_all(outer.join("sibling")).unwrap();
        fs::create_dir_all(&dest).unwrap();
        fs::write(outer.join("etc/passwd"), "sentinel passwd\n").unwrap();
        fs::write(outer.join("secret"), "sentinel secret\n").unwrap();
        fs::write(outer.join("sibling/keep"), "keep me\n").unwrap();
        std::os::unix::fs::symlink("../secret", outer.join("sibling/link")).unwrap();
        let before = snapshot(&outer, &dest);
        Arena { tmp, outer, dest, before }
    }

    /// Panics if anything outside the destination was created, changed or
    /// deleted, in the arena or in the host's own /etc/passwd.
    pub fn assert_outside_untouched(&self) {
        let after = snapshot(&self.outer, &self.dest);
        assert_eq!(self.before, after, "the tree around the destination changed");
    }

    /// The absolute path of `outer/REL`, for absolute-symlink escapes.
    pub fn outside(&self, rel: &str) -> String {
        self.outer.join(rel).to_str().unwrap().to_string()
    }
}

/// Every path under `top` except `skip` and what it holds, with type, mode, size, content hash or
/// link target; plus the host's /etc/passwd and /etc/shadow.
pub fn snapshot(top: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    fn walk(p: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
        if p == skip {
            return;
        }
        let md = fs::symlink_metadata(p).unwrap();
        let desc = if md.file_type().is_symlink() {
            format!("link {:?}", fs::read_link(p).unwrap())
        } else if md.is_dir() {
            format!("dir {:o}", md.permissions().mode())
        } else {
            format!("file {:o} {} {}", md.permissions().mode(), md.size(), sha256(&fs::read(p).unwrap_or_default()))
        };
        out.insert(p.to_path_buf(), format!("{desc} uid={} mtime={}", md.uid(), md.mtime()));
        if md.is_dir() {
            let mut names: Vec<_> = fs::read_dir(p).unwrap().map(|e| e.unwrap().path()).collect();
            names.sort();
            for n in names {
                walk(&n, skip, out);
            }
        }
    }
    walk(top, skip, &mut out);
    for host in ["/etc/passwd", "/etc/shadow", "/etc/hostname"] {
        if let Ok(md) = fs::symlink_metadata(host) {
            out.insert(host.into(), format!("{} {} {}", md.size(), md.mtime(), sha256(&fs::read(host).unwrap_or_default())));
        }
    }
    out
}
