//! Finds how to start the agent image's Java inside any build image: the
//! `java` binary (the image's `JAVA_HOME`, else its `PATH`), the dynamic
//! loader java was linked for, and the library directories, all as paths
//! under the agent image's mount point.
//!
//! java is started *through* that loader (`ld.so --library-path … java`) so
//! it never touches the build image's libc: a busybox or musl build image
//! works. Everything is read from the unpacked layers on the host, before
//! the pod exists, following symlinks inside the image, never the host's.

use std::collections::VecDeque;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

/// Where a Java runtime cannot be started from the agent image.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum JavaError {
    #[error("agent image {image} has no Java: no JAVA_HOME in its config and no java on its PATH")]
    NoJava { image: String },
    #[error("agent image {image}: {path} is not a 64-bit little-endian ELF executable")]
    NotElf { image: String, path: String },
    #[error("agent image {image}: {java} names no dynamic loader (a static java cannot load libjvm)")]
    NoInterpreter { image: String, java: String },
    #[error("agent image {image}: java's dynamic loader {loader} is not in the image")]
    NoLoader { image: String, loader: String },
}

/// How to start java: `loader --library-path LIBS java ARGS…`, paths as
/// they appear in the container.
#[derive(Debug, Clone, PartialEq)]
pub struct JavaCommand {
    pub loader: String,
    pub library_path: Vec<String>,
    pub java: String,
}

impl JavaCommand {
    /// The argv up to and including `java`.
    pub fn argv(&self) -> Vec<String> {
        vec![self.loader.clone(), "--library-path".into(), self.library_path.join(":"), self.java.clone()]
    }
}

/// Library directories the loader would search by default (glibc and musl,
/// the common architectures' multiarch names); only those in the image count.
const DEFAULT_LIB_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

/// Finds java in the image (its config `env`, its layers `layers` bottom
/// first) mounted at `mount` in the container.
pub fn find(image: &str, env: &[String], layers: &[PathBuf], mount: &str) -> Result<JavaCommand, JavaError> {
    let tree = ImageTree { layers };
    let var = |k: &str| env.iter().find_map(|e| e.strip_prefix(k).and_then(|v| v.strip_prefix('=')));
    let mut candidates = Vec::new();
    if let Some(home) = var("JAVA_HOME").filter(|h| !h.is_empty()) {
        candidates.push(format!("{}/bin/java", home.trim_end_matches('/')));
    }
    let path = var("PATH").unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    candidates.extend(path.split(':').filter(|d| d.starts_with('/')).map(|d| format!("{}/java", d.trim_end_matches('/'))));
    let (java, java_host) = candidates
        .iter()
        .find_map(|c| tree.resolve(c).filter(|(_, host)| is_executable_file(host)))
        .ok_or_else(|| JavaError::NoJava { image: image.to_string() })?;
    let interp = elf_interpreter(&java_host).map_err(|_| JavaError::NotElf { image: image.to_string(), path: java.clone() })?;
    let interp = interp.ok_or_else(|| JavaError::NoInterpreter { image: image.to_string(), java: java.clone() })?;
    let (loader, _) = tree
        .resolve(&interp)
        .filter(|(_, host)| is_executable_file(host))
        .ok_or_else(|| JavaError::NoLoader { image: image.to_string(), loader: interp.clone() })?;

    // JAVA_HOME is two levels above the real java (…/bin/java).
    let java_home = Path::new(&java).parent().and_then(Path::parent).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let mut dirs: Vec<String> = vec![format!("{java_home}/lib"), format!("{java_home}/lib/server")];
    // The loader's own directory first among the system ones: its libc.
    if let Some(d) = Path::new(&loader).parent() {
        dirs.push(d.to_string_lossy().into_owned());
    }
    dirs.extend(tree.ld_so_conf_dirs());
    dirs.extend(DEFAULT_LIB_DIRS.iter().map(|d| d.to_string()));
    let mut library_path: Vec<String> = Vec::new();
    for d in dirs {
        if let Some((real, host)) = tree.resolve(&d) {
            let in_mount = format!("{mount}{real}");
            if host.is_dir() && !library_path.contains(&in_mount) {
                library_path.push(in_mount);
            }
        }
    }
    Ok(JavaCommand { loader: format!("{mount}{loader}"), library_path, java: format!("{mount}{java}") })
}

fn is_executable_file(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// `PT_INTERP` of a 64-bit little-endian ELF file: `Ok(None)` for a static one.
fn elf_interpreter(path: &Path) -> std::io::Result<Option<String>> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not a 64-bit little-endian ELF file");
    let mut f = std::fs::File::open(path)?;
    let mut h = [0u8; 64];
    f.read_exact(&mut h)?;
    if &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return Err(bad());
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let (phoff, phentsize, phnum) = (u64_at(&h, 0x20), u16_at(&h, 0x36) as u64, u16_at(&h, 0x38) as u64);
    if phentsize < 56 || phnum > 4096 {
        return Err(bad());
    }
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        f.seek(SeekFrom::Start(phoff + i * phentsize))?;
        f.read_exact(&mut ph)?;
        if u32::from_le_bytes(ph[..4].try_into().expect("4 bytes")) == 3 {
            let (off, size) = (u64_at(&ph, 8), u64_at(&ph, 32));
            if size == 0 || size > 4096 {
                return Err(bad());
            }
            let mut name = vec![0u8; size as usize];
            f.seek(SeekFrom::Start(off))?;
            f.read_exact(&mut name)?;
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            return Ok(Some(String::from_utf8_lossy(&name[..end]).into_owned()));
        }
    }
    Ok(None)
}

/// An image's file tree as the stack of its unpacked layers (overlay form:
/// whiteouts are `c 0 0` nodes, opaque directories carry an xattr).
struct ImageTree<'a> {
    /// Bottom first.
    layers: &'a [PathBuf],
}

impl ImageTree<'_> {
    /// The host path of the topmost entry at `rel` (no symlink followed), or
    /// None where it is absent or deleted by an upper layer.
    fn lookup(&self, rel: &Path) -> Option<PathBuf> {
        let ancestors: Vec<&Path> = rel.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()).collect();
        for layer in self.layers.iter().rev() {
            let mut hides_lower = false;
            let mut blocked = false;
            for a in ancestors.iter().rev() {
                match std::fs::symlink_metadata(layer.join(a)) {
                    Err(_) => break,
                    Ok(m) if !m.is_dir() => {
                        blocked = true;
                        break;
                    }
                    Ok(_) => hides_lower |= is_opaque(&layer.join(a)),
                }
            }
            if !blocked {
                let p = layer.join(rel);
                if let Ok(m) = std::fs::symlink_metadata(&p) {
                    return (!is_whiteout(&m)).then_some(p);
                }
            }
            if blocked || hides_lower {
                return None;
            }
        }
        None
    }

    /// Resolves `path` in the image, following symlinks the way the kernel
    /// would inside it: the real in-image path and the host path of its entry.
    fn resolve(&self, path: &str) -> Option<(String, PathBuf)> {
        let mut done = PathBuf::new();
        let mut todo: VecDeque<PathBuf> = components(Path::new(path));
        let mut links = 0;
        while let Some(c) = todo.pop_front() {
            if c.as_os_str() == ".." {
                done.pop();
                continue;
            }
            let cand = done.join(&c);
            let host = self.lookup(&cand)?;
            let m = std::fs::symlink_metadata(&host).ok()?;
            if m.file_type().is_symlink() {
                links += 1;
                if links > 40 {
                    return None;
                }
                let target = std::fs::read_link(&host).ok()?;
                if target.is_absolute() {
                    done = PathBuf::new();
                }
                for t in components(&target).into_iter().rev() {
                    todo.push_front(t);
                }
            } else {
                done = cand;
            }
        }
        let host = if done.as_os_str().is_empty() { self.layers.last()?.clone() } else { self.lookup(&done)? };
        Some((format!("/{}", done.display()), host))
    }

    /// Names in a directory of the merged tree.
    fn read_dir(&self, rel: &Path) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        let mut gone: Vec<String> = Vec::new();
        for layer in self.layers.iter().rev() {
            let dir = layer.join(rel);
            let Ok(rd) = std::fs::read_dir(&dir) else { continue };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if names.contains(&name) || gone.contains(&name) {
                    continue;
                }
                match e.metadata() {
                    Ok(m) if is_whiteout(&m) => gone.push(name),
                    _ => names.push(name),
                }
            }
            if is_opaque(&dir) {
                break;
            }
        }
        names.sort();
        names
    }

    /// Directories `/etc/ld.so.conf` lists, with its `include`s (globs with
    /// one `*` in the file name, as distributions write them).
    fn ld_so_conf_dirs(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.read_ld_so_conf("/etc/ld.so.conf", &mut out, 0);
        out
    }

    fn read_ld_so_conf(&self, file: &str, out: &mut Vec<String>, depth: u8) {
        let Some((_, host)) = self.resolve(file) else { return };
        let Ok(text) = std::fs::read_to_string(host) else { return };
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if let Some(pattern) = line.strip_prefix("include").map(str::trim) {
                if depth > 4 || pattern.is_empty() {
                    continue;
                }
                let pattern = if pattern.starts_with('/') { pattern.to_string() } else { format!("/etc/{pattern}") };
                let (dir, name) = pattern.rsplit_once('/').unwrap_or(("", &pattern));
                let Some((real_dir, _)) = self.resolve(if dir.is_empty() { "/" } else { dir }) else { continue };
                let (pre, post) = name.split_once('*').unwrap_or((name, ""));
                for n in self.read_dir(Path::new(real_dir.trim_start_matches('/'))) {
                    let matches = if name.contains('*') { n.starts_with(pre) && n.ends_with(post) && n.len() >= pre.len() + post.len() } else { n == name };
                    if matches {
                        self.read_ld_so_conf(&format!("{real_dir}/{n}"), out, depth + 1);
                    }
                }
            } else if line.starts_with('/') {
                out.push(line.to_string());
            }
        }
    }
}

fn components(p: &Path) -> VecDeque<PathBuf> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect()
}

fn is_whiteout(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else { return false };
    let name = std::ffi::CString::new(crate::unpack::whiteout::OPAQUE_XATTR).expect("no NUL");
    let mut buf = [0u8; 4];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its length.
    let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    n == 1 && buf[0] == b'y'
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A Debian-like JRE split over two layers: merged /lib, a java
    /// symlink chain, and an ld.so.conf include.
    fn layers(dir: &Path) -> Vec<PathBuf> {
        let (l0, l1) = (dir.join("0"), dir.join("1"));
        for d in ["usr/lib/x86_64-linux-gnu", "etc/ld.so.conf.d", "usr/lib/jvm/j17/bin", "usr/lib/jvm/j17/lib/server", "opt/extra"] {
            std::fs::create_dir_all(l0.join(d)).unwrap();
        }
        symlink("usr/lib", l0.join("lib")).unwrap();
        std::fs::create_dir_all(l0.join("lib64")).unwrap();
        std::fs::create_dir_all(l1.join("usr/bin")).unwrap();
        symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", l0.join("lib64/ld-linux-x86-64.so.2")).unwrap();
        write_exec(&l0.join("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"), &elf(None));
        write_exec(&l0.join("usr/lib/jvm/j17/bin/java"), &elf(Some("/lib64/ld-linux-x86-64.so.2")));
        std::fs::write(l0.join("etc/ld.so.conf"), "include /etc/ld.so.conf.d/*.conf\n").unwrap();
        std::fs::write(l0.join("etc/ld.so.conf.d/extra.conf"), "# comment\n/opt/extra\n").unwrap();
        symlink("../lib/jvm/j17/bin/java", l1.join("usr/bin/java")).unwrap();
        vec![l0, l1]
    }

    fn write_exec(p: &Path, bytes: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(p, bytes).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A minimal ELF64 header with one program header (PT_INTERP or PT_LOAD).
    fn elf(interp: Option<&str>) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        match interp {
            Some(i) => {
                b[ph..ph + 4].copy_from_slice(&3u32.to_le_bytes());
                b[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes());
                b[ph + 32..ph + 40].copy_from_slice(&(i.len() as u64 + 1).to_le_bytes());
                b.extend_from_slice(i.as_bytes());
                b.push(0);
            }
            None => b[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()),
        }
        b
    }

    #[test]
    fn java_on_path_through_symlinks_with_the_images_loader() {
        let dir = tempfile::tempdir().unwrap();
        let layers = layers(dir.path());
        let env = vec!["PATH=/usr/local/bin:/usr/bin:/bin".to_string()];
        let j = find("jre", &env, &layers, "/.berth/agent/jre").unwrap();
        assert_eq!(j.java, "/.berth/agent/jre/usr/lib/jvm/j17/bin/java");
        assert_eq!(j.loader, "/.berth/agent/jre/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
        assert_eq!(
            j.library_path,
            [
                "/.berth/agent/jre/usr/lib/jvm/j17/lib",
                "/.berth/agent/jre/usr/lib/jvm/j17/lib/server",
                "/.berth/agent/jre/usr/lib/x86_64-linux-gnu",
                "/.berth/agent/jre/opt/extra",
                "/.berth/agent/jre/lib64",
                "/.berth/agent/jre/usr/lib",
            ]
        );
    }

    #[test]
    fn java_home_wins_and_a_whiteout_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let mut layers = layers(dir.path());
        let env = vec!["JAVA_HOME=/usr/lib/jvm/j17/".to_string(), "PATH=/nowhere".to_string()];
        assert_eq!(find("jre", &env, &layers, "/m").unwrap().java, "/m/usr/lib/jvm/j17/bin/java");
        // A third layer deletes the JVM's bin directory.
        let l2 = dir.path().join("2");
        std::fs::create_dir_all(l2.join("usr/lib/jvm/j17")).unwrap();
        nix::sys::stat::mknod(&l2.join("usr/lib/jvm/j17/bin"), nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
            .unwrap_or_else(|_| std::fs::write(l2.join("usr/lib/jvm/j17/bin"), b"").map(|_| ()).unwrap());
        layers.push(l2);
        let env = vec!["JAVA_HOME=/usr/lib/jvm/j17".to_string()];
        assert!(find("jre", &env, &layers, "/m").is_err());
    }

    #[test]
    fn no_java_and_no_loader_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let layers = layers(dir.path());
        let env = vec!["PATH=/bin".to_string()];
        std::fs::remove_file(layers[1].join("usr/bin/java")).unwrap();
        assert_eq!(find("img", &env, &layers, "/m"), Err(JavaError::NoJava { image: "img".into() }));
        std::fs::remove_file(layers[0].join("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")).unwrap();
        let env = vec!["JAVA_HOME=/usr/lib/jvm/j17".to_string()];
        let e = find("img", &env, &layers, "/m").unwrap_err();
        assert_eq!(e, JavaError::NoLoader { image: "img".into(), loader: "/lib64/ld-linux-x86-64.so.2".into() });
    }
}
