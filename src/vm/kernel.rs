//! The guest kernel: Debian's `linux-image-cloud-amd64`, never installed.
//!
//! `berth vm setup` ([`setup`]) downloads the package with the host's apt
//! (`apt-get download`, no root), extracts it with `dpkg -x` and keeps only
//! `vmlinuz` and the modules the guest loads ([`GUEST_MODULES`] and what they
//! depend on, about 1.6 MB of the package's 100 MB) under
//! `ROOT/vm/kernel/<version>`, with a `current` symlink naming the one kept.
//! [`GuestKernel::find`] finds it again, or takes `--kernel`/`--modules`.
//!
//! The package was never `depmod`ed, so there is no modules.dep: each
//! module's dependencies come from its `.modinfo` section (`depends=`).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::paths::Paths;

pub(crate) mod elf;

/// The modules the guest init loads, dependencies left out: virtio over
/// microvm's MMIO transport, the control port, image disks, the network,
/// the workspace (virtio-fs over FUSE), EROFS images and the overlay on them.
pub const GUEST_MODULES: &[&str] =
    &["virtio_mmio", "virtio_console", "virtio_blk", "virtio_net", "fuse", "virtiofs", "erofs", "overlay"];

/// The Debian package whose dependency is the current cloud kernel.
const META_PACKAGE: &str = "linux-image-cloud-amd64";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestKernel {
    /// The kernel image QEMU boots (`-kernel`).
    pub vmlinuz: PathBuf,
    /// `.../lib/modules/<version>`.
    pub modules: PathBuf,
    /// The kernel release, e.g. `6.1.0-57-cloud-amd64`.
    pub version: String,
}

#[derive(Debug, Clone, Default)]
pub struct SetupOptions {
    /// Kernel packages to extract instead of downloading one with apt.
    pub debs: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("no guest kernel in {0}: run `berth vm setup` (or pass --kernel and --modules)")]
    NotSetUp(PathBuf),
    #[error("{0}")]
    BadOverride(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{what}: {why}")]
    Tool { what: String, why: String },
    #[error("{0}: no boot/vmlinuz-* in the kernel package(s)")]
    NoKernelInPackage(String),
    #[error("module {name} (wanted by {by}) is not under {dir}{hint}")]
    ModuleMissing { name: String, by: String, dir: PathBuf, hint: &'static str },
    #[error("module dependencies form a cycle through {0}")]
    DependencyCycle(String),
    #[error(transparent)]
    Elf(#[from] elf::ElfError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io { path: path.to_path_buf(), source }
}

/// Where `berth vm setup` keeps the kernel.
pub fn store_dir(paths: &Paths) -> PathBuf {
    paths.root.join("vm/kernel")
}

impl GuestKernel {
    /// The kernel to boot: the overrides when given, else the one `berth vm
    /// setup` keeps. With only one override, the other is looked for beside
    /// it as in an extracted package (`boot/vmlinuz-V`, `lib/modules/V`).
    pub fn find(paths: &Paths, kernel: Option<&Path>, modules: Option<&Path>) -> Result<GuestKernel, KernelError> {
        match (kernel, modules) {
            (None, None) => {
                let current = store_dir(paths).join("current");
                // The symlink names the version directory; resolving it once
                // keeps a concurrent setup from switching halves under us.
                let dir = match fs::canonicalize(&current) {
                    Ok(d) => d,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(KernelError::NotSetUp(store_dir(paths))),
                    Err(e) => return Err(io_err(&current)(e)),
                };
                let version = dir.file_name().and_then(OsStr::to_str).unwrap_or_default().to_string();
                let k = GuestKernel {
                    vmlinuz: dir.join("boot").join(format!("vmlinuz-{version}")),
                    modules: dir.join("lib/modules").join(&version),
                    version,
                };
                if !k.vmlinuz.is_file() || !k.modules.is_dir() {
                    return Err(KernelError::NotSetUp(store_dir(paths)));
                }
                Ok(k)
            }
            (Some(kernel), Some(modules)) => {
                let version = modules.file_name().and_then(OsStr::to_str).unwrap_or_default().to_string();
                let k = GuestKernel { vmlinuz: kernel.to_path_buf(), modules: modules.to_path_buf(), version };
                k.check_override()?;
                Ok(k)
            }
            (Some(kernel), None) => {
                let name = kernel.file_name().and_then(OsStr::to_str).unwrap_or_default();
                let version = name.strip_prefix("vmlinuz-").filter(|v| !v.is_empty()).ok_or_else(|| {
                    KernelError::BadOverride(format!("--kernel {}: pass --modules too (the name is not vmlinuz-VERSION)", kernel.display()))
                })?;
                let top = kernel.parent().and_then(Path::parent).unwrap_or(Path::new("/"));
                let k = GuestKernel {
                    vmlinuz: kernel.to_path_buf(),
                    modules: top.join("lib/modules").join(version),
                    version: version.to_string(),
                };
                k.check_override()?;
                Ok(k)
            }
            (None, Some(modules)) => {
                let version = modules.file_name().and_then(OsStr::to_str).unwrap_or_default().to_string();
                let top = modules.ancestors().nth(3).unwrap_or(Path::new("/"));
                let k = GuestKernel {
                    vmlinuz: top.join("boot").join(format!("vmlinuz-{version}")),
                    modules: modules.to_path_buf(),
                    version,
                };
                k.check_override()?;
                Ok(k)
            }
        }
    }

    fn check_override(&self) -> Result<(), KernelError> {
        if !self.vmlinuz.is_file() {
            return Err(KernelError::BadOverride(format!("guest kernel {}: no such file", self.vmlinuz.display())));
        }
        if self.version.is_empty() || !self.modules.is_dir() {
            return Err(KernelError::BadOverride(format!(
                "guest modules {}: not a directory (give .../lib/modules/VERSION)",
                self.modules.display()
            )));
        }
        Ok(())
    }
}

/// Downloads (or takes `opts.debs`), extracts and keeps the guest kernel;
/// returns it as [`GuestKernel::find`] will find it. Needs no root.
pub fn setup(paths: &Paths, opts: &SetupOptions) -> Result<GuestKernel, KernelError> {
    let vm = paths.root.join("vm");
    let store = store_dir(paths);
    Paths::ensure_private_dir(&store).map_err(io_err(&store))?;
    remove_stale_temps(&vm);
    let tmp = TempDir::new(&vm, "setup")?;

    let debs = if opts.debs.is_empty() {
        let dl = tmp.path.join("download");
        fs::create_dir(&dl).map_err(io_err(&dl))?;
        download(&dl)?
    } else {
        opts.debs.clone()
    };
    let extracted = tmp.path.join("extracted");
    for deb in &debs {
        tracing::info!("extracting {}", deb.display());
        run_tool(Command::new("dpkg").arg("-x").arg(deb).arg(&extracted), &format!("dpkg -x {}", deb.display()))?;
    }
    let names = || debs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
    let boot = extracted.join("boot");
    let mut images: Vec<String> = fs::read_dir(&boot)
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    images.retain(|n| n.starts_with("vmlinuz-") && n.len() > "vmlinuz-".len());
    images.sort();
    // Several packages: the newest release wins (Debian's names sort by ABI).
    let name = images.pop().ok_or_else(|| KernelError::NoKernelInPackage(names()))?;
    let version = name["vmlinuz-".len()..].to_string();
    let modules = [extracted.join("lib/modules").join(&version), extracted.join("usr/lib/modules").join(&version)]
        .into_iter()
        .find(|d| d.is_dir())
        .ok_or_else(|| KernelError::Tool { what: names(), why: format!("no lib/modules/{version} beside {name}") })?;
    let full = GuestKernel { vmlinuz: boot.join(&name), modules, version: version.clone() };

    // The kept tree: vmlinuz, the wanted modules at their usual paths, and
    // modules.builtin (names the guest need not load).
    let out = tmp.path.join("out").join(&version);
    let out_mods = out.join("lib/modules").join(&version);
    fs::create_dir_all(out.join("boot")).map_err(io_err(&out))?;
    fs::create_dir_all(&out_mods).map_err(io_err(&out_mods))?;
    let vmlinuz = out.join("boot").join(&name);
    fs::rename(&full.vmlinuz, &vmlinuz).map_err(io_err(&full.vmlinuz))?;
    for rel in modules_in_load_order(&full, GUEST_MODULES)? {
        let dst = out_mods.join(&rel);
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        fs::rename(full.modules.join(&rel), &dst).map_err(io_err(&dst))?;
    }
    let builtin = full.modules.join("modules.builtin");
    if builtin.is_file() {
        fs::rename(&builtin, out_mods.join("modules.builtin")).map_err(io_err(&builtin))?;
    }

    // Into place: the version directory, then `current`, then the old ones go.
    let dest = store.join(&version);
    if dest.exists() {
        let old = tmp.path.join("old");
        fs::rename(&dest, &old).map_err(io_err(&dest))?;
    }
    fs::rename(&out, &dest).map_err(io_err(&dest))?;
    let link_tmp = store.join(format!(".current.{}", std::process::id()));
    let _ = fs::remove_file(&link_tmp);
    std::os::unix::fs::symlink(&version, &link_tmp).map_err(io_err(&link_tmp))?;
    fs::rename(&link_tmp, store.join("current")).map_err(io_err(&link_tmp))?;
    for e in fs::read_dir(&store).map_err(io_err(&store))?.flatten() {
        let n = e.file_name();
        if n != OsStr::new("current") && n != OsStr::new(&version) && !n.to_string_lossy().starts_with('.') {
            tracing::info!("removing the previous guest kernel {}", n.to_string_lossy());
            let _ = fs::remove_dir_all(e.path());
        }
    }
    drop(tmp);
    GuestKernel::find(paths, None, None)
}

/// Removes what a killed setup left under `vm` (its working directories
/// are named `.tmp-setup-*`), once they are an hour old: a concurrent setup
/// may still be using a younger one.
fn remove_stale_temps(vm: &Path) {
    let Ok(rd) = fs::read_dir(vm) else { return };
    for e in rd.flatten() {
        let old = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
        if e.file_name().to_string_lossy().starts_with(".tmp-setup-") && old.is_some_and(|a| a.as_secs() > 3600) {
            tracing::debug!("removing {}, left by an interrupted setup", e.path().display());
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// `apt-get download` of the versioned package the meta package depends
/// on, into `dir`: the host's apt sources and cache, nothing else.
fn download(dir: &Path) -> Result<Vec<PathBuf>, KernelError> {
    let out = Command::new("apt-cache")
        .args(["depends", META_PACKAGE])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| KernelError::Tool { what: "apt-cache".into(), why: format!("{e} (berth vm setup needs apt; or pass --deb FILE)") })?;
    if !out.status.success() {
        return Err(KernelError::Tool {
            what: format!("apt-cache depends {META_PACKAGE}"),
            why: last_line(&out.stderr),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let pkg = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && !p.starts_with('<'))
        .ok_or_else(|| KernelError::Tool {
            what: format!("apt-cache depends {META_PACKAGE}"),
            why: "names no linux-image package (is the package known to apt? try apt-get update)".into(),
        })?
        .to_string();
    tracing::info!("downloading {pkg} with apt-get");
    run_tool(Command::new("apt-get").args(["download", "-q", &pkg]).current_dir(dir), &format!("apt-get download {pkg}"))?;
    let debs: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension() == Some(OsStr::new("deb")))
        .collect();
    if debs.is_empty() {
        return Err(KernelError::Tool { what: format!("apt-get download {pkg}"), why: "left no .deb".into() });
    }
    Ok(debs)
}

/// Runs a helper with its stdout on berth's stderr (stdout is the
/// container's); fails with the last line it printed.
fn run_tool(cmd: &mut Command, what: &str) -> Result<(), KernelError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| KernelError::Tool { what: what.to_string(), why: e.to_string() })?;
    if !out.status.success() {
        let mut why = last_line(&out.stderr);
        if why.is_empty() {
            why = last_line(&out.stdout);
        }
        return Err(KernelError::Tool { what: what.to_string(), why: format!("{} ({why})", out.status) });
    }
    for l in String::from_utf8_lossy(&out.stdout).lines().chain(String::from_utf8_lossy(&out.stderr).lines()) {
        tracing::debug!("{what}: {l}");
    }
    Ok(())
}

fn last_line(b: &[u8]) -> String {
    String::from_utf8_lossy(b).lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_string()
}

/// The module files (relative to `kernel.modules`) for `wanted` and their
/// dependencies, each once, dependencies before the modules needing them.
/// Names built into the kernel (modules.builtin) are satisfied already.
pub fn modules_in_load_order(kernel: &GuestKernel, wanted: &[&str]) -> Result<Vec<PathBuf>, KernelError> {
    let index = index_modules(&kernel.modules)?;
    let builtin = builtin_names(&kernel.modules);
    let mut order = Vec::new();
    let mut done = HashSet::new();
    let mut visiting = Vec::new();
    for w in wanted {
        visit(&normalize(w), "berth", kernel, &index, &builtin, &mut done, &mut visiting, &mut order)?;
    }
    Ok(order)
}

/// Module names use `_` and `-` alike (`crc32c-intel` is `crc32c_intel`).
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

#[allow(clippy::too_many_arguments)]
fn visit(
    name: &str,
    by: &str,
    kernel: &GuestKernel,
    index: &ModuleIndex,
    builtin: &HashSet<String>,
    done: &mut HashSet<String>,
    visiting: &mut Vec<String>,
    order: &mut Vec<PathBuf>,
) -> Result<(), KernelError> {
    if done.contains(name) {
        return Ok(());
    }
    if visiting.iter().any(|v| v == name) {
        return Err(KernelError::DependencyCycle(format!("{} -> {name}", visiting.join(" -> "))));
    }
    let Some(rel) = index.plain.get(name) else {
        if builtin.contains(name) {
            done.insert(name.to_string());
            return Ok(());
        }
        let hint = if index.compressed.contains(name) { " (only compressed; berth loads plain .ko files)" } else { "" };
        return Err(KernelError::ModuleMissing { name: name.into(), by: by.into(), dir: kernel.modules.clone(), hint });
    };
    let path = kernel.modules.join(rel);
    let info = elf::Elf::open(&path)?.section(".modinfo")?.unwrap_or_default();
    let deps: Vec<String> = elf::modinfo_values(&info, "depends")
        .flat_map(|d| d.split(','))
        .filter(|d| !d.is_empty())
        .map(normalize)
        .collect();
    visiting.push(name.to_string());
    for d in &deps {
        visit(d, name, kernel, index, builtin, done, visiting, order)?;
    }
    visiting.pop();
    done.insert(name.to_string());
    order.push(rel.clone());
    Ok(())
}

struct ModuleIndex {
    /// Module name to its `.ko` path, relative to the modules directory.
    plain: HashMap<String, PathBuf>,
    /// Names only found as `.ko.xz`/`.ko.zst`/`.ko.gz`.
    compressed: HashSet<String>,
}

fn index_modules(dir: &Path) -> Result<ModuleIndex, KernelError> {
    let mut index = ModuleIndex { plain: HashMap::new(), compressed: HashSet::new() };
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        for e in fs::read_dir(&abs).map_err(io_err(&abs))? {
            let e = e.map_err(io_err(&abs))?;
            let name = e.file_name();
            let Some(n) = name.to_str() else { continue };
            let ft = e.file_type().map_err(io_err(&abs))?;
            if ft.is_dir() {
                stack.push(rel.join(n));
            } else if let Some(stem) = n.strip_suffix(".ko") {
                index.plain.insert(normalize(stem), rel.join(n));
            } else if let Some(stem) = [".ko.xz", ".ko.zst", ".ko.gz"].iter().find_map(|s| n.strip_suffix(s)) {
                index.compressed.insert(normalize(stem));
            }
        }
    }
    Ok(index)
}

/// Names from modules.builtin (`kernel/crypto/crc32c_generic.ko` lines).
fn builtin_names(dir: &Path) -> HashSet<String> {
    fs::read_to_string(dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko"))
        .map(normalize)
        .collect()
}

/// A private working directory under `parent`, removed on drop: a failed
/// or interrupted setup leaves nothing the next one trips on.
pub(crate) struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub(crate) fn new(parent: &Path, what: &str) -> Result<TempDir, KernelError> {
        Paths::ensure_private_dir(parent).map_err(io_err(parent))?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = parent.join(format!(".tmp-{what}-{}-{nanos}", std::process::id()));
        Paths::ensure_private_dir(&path).map_err(io_err(&path))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(root: &Path) -> Paths {
        Paths { root: root.to_path_buf(), run_root: root.join("run") }
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("berth-kernel-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn find_without_setup_says_what_to_run() {
        let d = scratch("none");
        let err = GuestKernel::find(&paths(&d), None, None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("berth vm setup") && msg.contains("--kernel") && !msg.contains('\n'), "{msg}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn overrides_find_the_other_half_beside_them() {
        let d = scratch("override");
        fs::create_dir_all(d.join("boot")).unwrap();
        fs::create_dir_all(d.join("lib/modules/6.1.0-1-cloud-amd64")).unwrap();
        fs::write(d.join("boot/vmlinuz-6.1.0-1-cloud-amd64"), b"k").unwrap();
        let p = paths(&d.join("store"));
        let by_kernel = GuestKernel::find(&p, Some(&d.join("boot/vmlinuz-6.1.0-1-cloud-amd64")), None).unwrap();
        let by_modules = GuestKernel::find(&p, None, Some(&d.join("lib/modules/6.1.0-1-cloud-amd64"))).unwrap();
        assert_eq!(by_kernel, by_modules);
        assert_eq!(by_kernel.version, "6.1.0-1-cloud-amd64");
        assert!(GuestKernel::find(&p, Some(&d.join("boot/nope")), None).is_err());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn builtin_names_satisfy_and_missing_ones_fail() {
        let d = scratch("builtin");
        let m = d.join("lib/modules/v");
        fs::create_dir_all(m.join("kernel")).unwrap();
        fs::write(m.join("modules.builtin"), "kernel/crypto/crc32c_generic.ko\n").unwrap();
        fs::write(m.join("kernel/gone.ko.xz"), b"").unwrap();
        let k = GuestKernel { vmlinuz: d.join("x"), modules: m, version: "v".into() };
        assert!(modules_in_load_order(&k, &["crc32c-generic"]).unwrap().is_empty());
        let err = modules_in_load_order(&k, &["gone"]).unwrap_err().to_string();
        assert!(err.contains("compressed"), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }
}
