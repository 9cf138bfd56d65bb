//! Just enough of ELF64 (little-endian) for the guest's files: a section's
//! bytes (`.modinfo` of a kernel module), whether any `.debug_*` section
//! exists, and the program interpreter. Reads with `pread` at the offsets
//! the headers name, so a 200 MB debug binary costs a few small reads;
//! every offset and size is checked against the file before use.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("reading {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {why}")]
    Malformed { path: String, why: &'static str },
}

const SHN_XINDEX: u16 = 0xffff;
const PT_INTERP: u32 = 3;
/// Sections and program headers berth reads are small; this bounds what a
/// hostile or corrupt file can make it allocate.
const MAX_READ: u64 = 64 << 20;

pub struct Section {
    pub name: String,
    pub offset: u64,
    pub size: u64,
    /// SHT_NOBITS (.bss): no bytes in the file.
    pub nobits: bool,
}

pub struct Elf {
    file: File,
    path: String,
    len: u64,
    shoff: u64,
    shentsize: u64,
    phoff: u64,
    phentsize: u64,
    phnum: u64,
}

impl Elf {
    pub fn open(path: &Path) -> Result<Elf, ElfError> {
        let p = path.display().to_string();
        let file = File::open(path).map_err(|source| ElfError::Io { path: p.clone(), source })?;
        Elf::from_file(file, p)
    }

    pub fn from_file(file: File, path: String) -> Result<Elf, ElfError> {
        let len = file.metadata().map_err(|source| ElfError::Io { path: path.clone(), source })?.len();
        let mut elf = Elf { file, path, len, shoff: 0, shentsize: 0, phoff: 0, phentsize: 0, phnum: 0 };
        let h = elf.read(0, 64)?;
        if &h[..4] != b"\x7fELF" {
            return Err(elf.bad("not an ELF file"));
        }
        if h[4] != 2 || h[5] != 1 {
            return Err(elf.bad("not a 64-bit little-endian ELF file"));
        }
        elf.phoff = u64_at(&h, 0x20);
        elf.shoff = u64_at(&h, 0x28);
        elf.phentsize = u16_at(&h, 0x36) as u64;
        elf.phnum = u16_at(&h, 0x38) as u64;
        elf.shentsize = u16_at(&h, 0x3a) as u64;
        if elf.phnum > 0 && elf.phentsize < 0x38 {
            return Err(elf.bad("program header entries too small"));
        }
        Ok(elf)
    }

    fn bad(&self, why: &'static str) -> ElfError {
        ElfError::Malformed { path: self.path.clone(), why }
    }

    /// `len` bytes at `offset`, all inside the file.
    fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, ElfError> {
        if len > MAX_READ || offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(self.bad("a header points outside the file"));
        }
        let mut buf = vec![0; len as usize];
        self.file.read_exact_at(&mut buf, offset).map_err(|source| ElfError::Io { path: self.path.clone(), source })?;
        Ok(buf)
    }

    /// Every section with its name.
    pub fn sections(&self) -> Result<Vec<Section>, ElfError> {
        if self.shoff == 0 {
            return Ok(Vec::new());
        }
        if self.shentsize < 0x40 {
            return Err(self.bad("section header entries too small"));
        }
        let h = self.read(0, 64)?;
        let first = self.read(self.shoff, self.shentsize)?;
        // Past 0xff00 sections the real count and string-table index live in
        // section 0 (ELF's extended numbering).
        let mut shnum = u16_at(&h, 0x3c) as u64;
        if shnum == 0 {
            shnum = u64_at(&first, 0x20);
        }
        let mut shstrndx = u16_at(&h, 0x3e) as u64;
        if shstrndx == SHN_XINDEX as u64 {
            shstrndx = u32_at(&first, 0x28) as u64;
        }
        let table = self.read(self.shoff, shnum.checked_mul(self.shentsize).ok_or_else(|| self.bad("section count overflows"))?)?;
        let entry = |i: u64| &table[(i * self.shentsize) as usize..((i + 1) * self.shentsize) as usize];
        if shstrndx >= shnum {
            return Err(self.bad("no section name table"));
        }
        let strtab = entry(shstrndx);
        let names = self.read(u64_at(strtab, 0x18), u64_at(strtab, 0x20))?;
        let mut out = Vec::with_capacity(shnum as usize);
        for i in 0..shnum {
            let e = entry(i);
            let name_off = u32_at(e, 0) as usize;
            let name = names
                .get(name_off..)
                .and_then(|s| s.iter().position(|&b| b == 0).map(|end| &s[..end]))
                .ok_or_else(|| self.bad("a section name lies outside the name table"))?;
            out.push(Section {
                name: String::from_utf8_lossy(name).into_owned(),
                nobits: u32_at(e, 4) == 8,
                offset: u64_at(e, 0x18),
                size: u64_at(e, 0x20),
            });
        }
        Ok(out)
    }

    /// The bytes of the first section called `name`, if any.
    pub fn section(&self, name: &str) -> Result<Option<Vec<u8>>, ElfError> {
        match self.sections()?.into_iter().find(|s| s.name == name) {
            Some(s) if s.nobits => Ok(Some(Vec::new())),
            Some(s) => self.read(s.offset, s.size).map(Some),
            None => Ok(None),
        }
    }

    /// Whether the file carries DWARF (`.debug_*` sections).
    pub fn has_debug_info(&self) -> Result<bool, ElfError> {
        Ok(self.sections()?.iter().any(|s| s.name.starts_with(".debug_")))
    }

    /// The program interpreter (PT_INTERP), e.g. `/lib64/ld-linux-x86-64.so.2`;
    /// None for a static binary.
    pub fn interpreter(&self) -> Result<Option<String>, ElfError> {
        if self.phnum == 0 {
            return Ok(None);
        }
        let table = self.read(self.phoff, self.phnum * self.phentsize)?;
        for i in 0..self.phnum {
            let e = &table[(i * self.phentsize) as usize..];
            if u32_at(e, 0) == PT_INTERP {
                let bytes = self.read(u64_at(e, 8), u64_at(e, 0x20))?;
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                let s = std::str::from_utf8(&bytes[..end]).map_err(|_| self.bad("interpreter path is not UTF-8"))?;
                return Ok(Some(s.to_string()));
            }
        }
        Ok(None)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

/// The `key=value` strings of a `.modinfo` section.
pub fn modinfo_values<'a>(modinfo: &'a [u8], key: &str) -> impl Iterator<Item = &'a str> + 'a {
    let prefix = format!("{key}=");
    modinfo
        .split(|&b| b == 0)
        .filter_map(|s| std::str::from_utf8(s).ok())
        .filter_map(move |s| s.strip_prefix(prefix.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_test_binary() {
        let elf = Elf::open(Path::new("/proc/self/exe")).unwrap();
        let sections = elf.sections().unwrap();
        assert!(sections.iter().any(|s| s.name == ".text"));
        let interp = elf.interpreter().unwrap().expect("a dynamic test binary");
        assert!(interp.contains("ld-linux"), "{interp}");
    }

    #[test]
    fn rejects_what_is_not_elf() {
        let dir = std::env::temp_dir().join(format!("berth-elf-test-{}", std::process::id()));
        std::fs::write(&dir, vec![0u8; 100]).unwrap();
        let r = Elf::open(&dir);
        std::fs::remove_file(&dir).unwrap();
        assert!(matches!(r, Err(ElfError::Malformed { .. })));
        // Truncated header: an error, not a panic.
        std::fs::write(&dir, b"\x7fELF\x02\x01").unwrap();
        let r = Elf::open(&dir);
        std::fs::remove_file(&dir).unwrap();
        assert!(r.is_err());
    }

    #[test]
    fn splits_modinfo() {
        let m = b"license=GPL\0depends=virtio,virtio_ring\0name=virtio_mmio\0";
        assert_eq!(modinfo_values(m, "depends").collect::<Vec<_>>(), ["virtio,virtio_ring"]);
        assert_eq!(modinfo_values(m, "name").collect::<Vec<_>>(), ["virtio_mmio"]);
    }
}
