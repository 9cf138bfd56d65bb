//! Seccomp filters compiled once and loaded by the container itself, as the
//! last step before it execs its command.
//!
//! libcontainer 0.7 compiles `linux.seccomp` with libseccomp inside every
//! container's init. For the default profile (three x86 ABIs, ~370 syscalls)
//! that is about 13 ms of CPU per container, the largest part of a
//! container's start. berth instead compiles each distinct profile once:
//! in memory for the pod, and as BPF in `<run_root>/seccomp/` for later
//! pods. libcontainer gets the spec without `linux.seccomp`, and
//! [`SeccompExecutor`] loads the program right before `execve`, later than
//! libcontainer would (nothing the container runs escapes it).
//!
//! The program does what libcontainer's would for the same spec: the same
//! translation (including its reading of `SCMP_CMP_MASKED_EQ`, which
//! [`crate::bundle::libcontainer_compat`] accounts for) by the same
//! libseccomp, laid out as a binary tree ([`OPTIMIZE`]). Only profiles
//! libcontainer could load after dropping privileges are taken over
//! (`no_new_privileges`, no filter flags, no `SCMP_ACT_NOTIFY`); others stay
//! in the spec for libcontainer.
//!
//! For `berth exec`, the program is kept in the container's bundle as
//! `seccomp.bpf`, named with its digest by the [`ANNOTATION`] in
//! `config.json`; a tenant process fails to start if it is missing or
//! altered.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, Spec};
use sha2::{Digest as _, Sha256};

/// Names the program of a bundle whose `linux.seccomp` berth loads itself:
/// `sha256:<hex>` of the BPF in the bundle's [`BUNDLE_FILE`].
pub const ANNOTATION: &str = "org.berth.seccomp.bpf";
/// The program's file in a bundle directory.
pub const BUNDLE_FILE: &str = "seccomp.bpf";

/// Bumped when the cache key or the file format changes.
const CACHE_VERSION: &str = "berth-seccomp-1";

/// libseccomp's binary-tree layout (`SCMP_FLTATR_CTL_OPTIMIZE` 2): a few
/// more instructions than the default linear list, but each syscall is
/// found in a logarithmic number of steps, both when the kernel checks the
/// program at load (about 1.5 ms instead of 2.5 ms for the default profile)
/// and at every syscall the container makes.
const OPTIMIZE: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("compiling the seccomp profile")]
    Compile(#[source] libseccomp::error::SeccompError),
    #[error("compiling the seccomp profile: {0}")]
    Profile(String),
    #[error("seccomp program {path}: {why}")]
    Program { path: PathBuf, why: String },
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
}

/// A compiled seccomp program (classic BPF, host byte order).
#[derive(Clone, PartialEq, Eq)]
pub struct Filter {
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Filter({} instructions, {})", self.len(), self.digest())
    }
}

/// One `struct sock_filter`.
const INSN: usize = std::mem::size_of::<libc::sock_filter>();

impl Filter {
    /// A program from its bytes, checked for shape (the kernel checks the
    /// rest when it loads it).
    fn from_bytes(bytes: Vec<u8>) -> Result<Filter, String> {
        let n = bytes.len() / INSN;
        if bytes.is_empty() || bytes.len() % INSN != 0 || n > libc::BPF_MAXINSNS as usize {
            return Err(format!("{} bytes is no BPF program", bytes.len()));
        }
        Ok(Filter { bytes })
    }

    pub fn len(&self) -> usize {
        self.bytes.len() / INSN
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// `sha256:<hex>` of the program.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.bytes)))
    }

    /// Installs the program on the calling thread, for good. Needs
    /// `no_new_privs` (or CAP_SYS_ADMIN).
    pub fn load(&self) -> io::Result<()> {
        let insns: Vec<libc::sock_filter> = self
            .bytes
            .chunks_exact(INSN)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        let prog = libc::sock_fprog { len: insns.len() as libc::c_ushort, filter: insns.as_ptr() as *mut libc::sock_filter };
        // SAFETY: `prog` points at `insns`, alive for the call; the kernel
        // copies the program.
        let r = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog as *const libc::sock_fprog) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads a program written by [`Filter::write`]: its sha256, then the
    /// program. None when the file is absent.
    fn read(path: &Path) -> Result<Option<Filter>, SeccompError> {
        let file = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(SeccompError::Io { path: path.to_path_buf(), source }),
        };
        // At most a digest and the largest program, plus a byte to notice more.
        let limit = 32 + INSN * libc::BPF_MAXINSNS as usize + 1;
        let mut data = Vec::new();
        io::Read::read_to_end(&mut io::Read::take(file, limit as u64), &mut data)
            .map_err(|source| SeccompError::Io { path: path.to_path_buf(), source })?;
        let bad = |why: String| SeccompError::Program { path: path.to_path_buf(), why };
        if data.len() < 32 {
            return Err(bad("truncated".into()));
        }
        let (sum, prog) = data.split_at(32);
        if Sha256::digest(prog).as_slice() != sum {
            return Err(bad("checksum mismatch".into()));
        }
        Filter::from_bytes(prog.to_vec()).map(Some).map_err(bad)
    }

    /// Writes the program atomically (a reader sees all of it or nothing),
    /// mode 0600, not synced: it is derived data.
    fn write(&self, path: &Path) -> Result<(), SeccompError> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Every pod process is pid 1 of its own PID namespace: the time
        // tells two of them apart (and one killed mid-write from the next).
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let tmp = path.with_extension(format!("tmp.{}.{nanos}.{n}", std::process::id()));
        let result = (|| {
            let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(&Sha256::digest(&self.bytes))?;
            f.write_all(&self.bytes)?;
            drop(f);
            fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|source| SeccompError::Io { path: path.to_path_buf(), source })
    }
}

/// True when berth can load `spec`'s profile itself: there is one, the
/// process has `no_new_privileges` (so loading needs no capability, and
/// libcontainer would also load it last), no filter flags, no notify action.
pub fn can_precompile(spec: &Spec) -> bool {
    let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else { return false };
    let nnp = spec.process().as_ref().and_then(|p| p.no_new_privileges()) == Some(true);
    let no_flags = profile.flags().as_ref().is_none_or(|f| f.is_empty());
    let notify = profile.default_action() == LinuxSeccompAction::ScmpActNotify
        || profile.syscalls().iter().flatten().any(|s| s.action() == LinuxSeccompAction::ScmpActNotify);
    nnp && no_flags && !notify
}

/// Compiles `profile` as libcontainer 0.7's `initialize_seccomp` does (with
/// the binary-tree layout), but exports the program instead of loading it.
pub fn compile(profile: &LinuxSeccomp) -> Result<Filter, SeccompError> {
    let c = SeccompError::Compile;
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(c)?;
    for &a in profile.architectures().iter().flatten() {
        ctx.add_arch(arch(a)).map_err(c)?;
    }
    ctx.set_ctl_nnp(false).map_err(c)?;
    ctx.set_ctl_optimize(OPTIMIZE).map_err(c)?;
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        // libseccomp refuses rules with the default action; they are no-ops.
        if act == default {
            continue;
        }
        for name in rule.names() {
            let Ok(sc) = ScmpSyscall::from_name(name) else {
                // Unknown to this libseccomp: the kernel lacks it as well.
                tracing::debug!("seccomp: unknown syscall {name:?} skipped");
                continue;
            };
            let Some(args) = rule.args() else {
                ctx.add_rule(act, sc).map_err(c)?;
                continue;
            };
            let cmps: Vec<ScmpArgCompare> = args
                .iter()
                .map(|a| {
                    let op = match a.op() {
                        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
                        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
                        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
                        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
                        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
                        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
                        // libcontainer's reading: valueTwo is the mask.
                        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(a.value_two().unwrap_or(0)),
                    };
                    ScmpArgCompare::new(a.index() as u32, op, a.value())
                })
                .collect();
            // One comparison per argument and rule: several on the same
            // argument become separate rules (runc and libcontainer alike).
            let mut seen = std::collections::HashSet::new();
            if args.iter().all(|a| seen.insert(a.index())) {
                ctx.add_rule_conditional(act, sc, &cmps).map_err(c)?;
            } else {
                for cmp in &cmps {
                    ctx.add_rule_conditional(act, sc, std::slice::from_ref(cmp)).map_err(c)?;
                }
            }
        }
    }
    let memfd = nix::sys::memfd::memfd_create(c"berth-seccomp", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(|e| SeccompError::Profile(format!("memfd_create: {e}")))?;
    ctx.export_bpf(&memfd).map_err(c)?;
    let mut file = fs::File::from(memfd);
    let mut bytes = Vec::new();
    io::Seek::rewind(&mut file)
        .and_then(|_| io::Read::read_to_end(&mut file, &mut bytes))
        .map_err(|e| SeccompError::Profile(format!("reading the exported program: {e}")))?;
    Filter::from_bytes(bytes).map_err(SeccompError::Profile)
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, SeccompError> {
    let errno = errno.map(|e| e as i32).unwrap_or(libc::EPERM);
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => ScmpAction::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno),
        LinuxSeccompAction::ScmpActTrace => {
            ScmpAction::Trace(u16::try_from(errno).map_err(|_| SeccompError::Profile(format!("trace errno {errno} out of range")))?)
        }
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
    })
}

fn arch(a: Arch) -> ScmpArch {
    match a {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
    }
}

/// What the program depends on besides the profile: the libseccomp that
/// compiles it and the kernel API level it detected.
fn cache_key(profile: &LinuxSeccomp) -> Result<String, SeccompError> {
    let v = libseccomp::ScmpVersion::current().map_err(SeccompError::Compile)?;
    let json = serde_json::to_vec(profile).map_err(|e| SeccompError::Profile(e.to_string()))?;
    let mut h = Sha256::new();
    h.update(format!("{CACHE_VERSION}\0{}.{}.{}\0{}\0{}\0{OPTIMIZE}\0", v.major, v.minor, v.micro, libseccomp::get_api(), std::env::consts::ARCH));
    h.update(&json);
    Ok(hex::encode(h.finalize()))
}

/// The programs of one pod: each distinct profile compiled once, or read
/// from the cache directory where an earlier pod left it.
pub struct Filters {
    cache_dir: Option<PathBuf>,
    by_key: HashMap<String, Arc<Filter>>,
}

impl Filters {
    /// `cache_dir`: where compiled programs are kept between pods (created
    /// on first use); None keeps them for this pod only.
    pub fn new(cache_dir: Option<PathBuf>) -> Filters {
        Filters { cache_dir, by_key: HashMap::new() }
    }

    /// Takes `linux.seccomp` out of `spec` when [`can_precompile`] says so
    /// and returns its program, which the caller must then load (see
    /// [`SeccompExecutor`]); None leaves the spec as it was.
    pub fn take(&mut self, spec: &mut Spec) -> Result<Option<Arc<Filter>>, SeccompError> {
        if !can_precompile(spec) {
            return Ok(None);
        }
        let Some(linux) = spec.linux_mut().as_mut() else { return Ok(None) };
        let Some(profile) = linux.seccomp().clone() else { return Ok(None) };
        let filter = self.get(&profile)?;
        linux.set_seccomp(None);
        Ok(Some(filter))
    }

    fn get(&mut self, profile: &LinuxSeccomp) -> Result<Arc<Filter>, SeccompError> {
        let key = cache_key(profile)?;
        if let Some(f) = self.by_key.get(&key) {
            return Ok(f.clone());
        }
        let path = self.cache_dir.as_ref().map(|d| d.join(format!("{key}.bpf")));
        let cached = match path.as_deref().map(Filter::read) {
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                tracing::debug!("ignoring cached seccomp program: {}", crate::runtime::error_chain(&e));
                None
            }
            None => None,
        };
        let filter = match cached {
            Some(f) => f,
            None => {
                let started = std::time::Instant::now();
                let f = compile(profile)?;
                tracing::debug!(instructions = f.len(), elapsed = ?started.elapsed(), "compiled the seccomp profile");
                if let (Some(dir), Some(path)) = (&self.cache_dir, &path) {
                    let kept = crate::paths::Paths::ensure_private_dir(dir)
                        .map_err(|source| SeccompError::Io { path: dir.clone(), source })
                        .and_then(|()| f.write(path));
                    if let Err(e) = kept {
                        tracing::debug!("not caching the seccomp program: {}", crate::runtime::error_chain(&e));
                    }
                }
                f
            }
        };
        let filter = Arc::new(filter);
        self.by_key.insert(key, filter.clone());
        Ok(filter)
    }
}

/// Puts `filter` into the bundle directory `dir` and names it in `spec`'s
/// annotations (write `spec` there afterwards).
pub fn add_to_bundle(dir: &Path, spec: &mut Spec, filter: &Filter) -> Result<(), SeccompError> {
    fs::create_dir_all(dir).map_err(|source| SeccompError::Io { path: dir.to_path_buf(), source })?;
    filter.write(&dir.join(BUNDLE_FILE))?;
    let mut annotations = spec.annotations().clone().unwrap_or_default();
    annotations.insert(ANNOTATION.to_string(), filter.digest());
    spec.set_annotations(Some(annotations));
    Ok(())
}

/// The program a bundle's spec names, checked against its digest; None when
/// the spec names none.
pub fn from_bundle(dir: &Path, spec: &Spec) -> Result<Option<Filter>, SeccompError> {
    let Some(want) = spec.annotations().as_ref().and_then(|a| a.get(ANNOTATION)) else { return Ok(None) };
    let path = dir.join(BUNDLE_FILE);
    let bad = |why: &str| SeccompError::Program { path: path.clone(), why: why.to_string() };
    let filter = Filter::read(&path)?.ok_or_else(|| bad("missing"))?;
    if &filter.digest() != want {
        return Err(bad("does not match its digest in config.json"));
    }
    Ok(Some(filter))
}

/// libcontainer's default executor, loading the container's seccomp program
/// (if any) right before it execs the command.
#[derive(Clone, Default)]
pub struct SeccompExecutor {
    pub filter: Option<Arc<Filter>>,
}

// libcontainer's own oci-spec version: it reads config.json itself.
impl Executor for SeccompExecutor {
    fn exec(&self, spec: &libcontainer::oci_spec::runtime::Spec) -> Result<(), ExecutorError> {
        if let Some(f) = &self.filter {
            f.load().map_err(|e| ExecutorError::Other(format!("loading the seccomp filter: {e}")))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &libcontainer::oci_spec::runtime::Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with_default_profile() -> Spec {
        let mut spec = Spec::default();
        spec.linux_mut().get_or_insert_with(Default::default).set_seccomp(Some(crate::bundle::default_seccomp()));
        if let Some(p) = spec.process_mut().as_mut() {
            p.set_no_new_privileges(Some(true));
        }
        crate::bundle::libcontainer_compat(&mut spec);
        spec
    }

    #[test]
    fn compiles_the_default_profile_once_and_reads_it_back_from_the_cache() {
        let t = tempfile::tempdir().unwrap();
        let cache = t.path().join("seccomp");
        let mut spec = spec_with_default_profile();
        let profile = spec.linux().as_ref().unwrap().seccomp().clone().unwrap();
        let mut filters = Filters::new(Some(cache.clone()));
        let f = filters.take(&mut spec).unwrap().expect("precompiled");
        assert!(spec.linux().as_ref().unwrap().seccomp().is_none());
        assert_eq!(*f, compile(&profile).unwrap());
        assert!(f.len() > 100, "{f:?}");
        let files: Vec<_> = fs::read_dir(&cache).unwrap().flatten().map(|e| e.path()).collect();
        assert_eq!(files.len(), 1, "{files:?}");

        // A later pod reads it; a corrupt file is compiled again and replaced.
        let mut spec2 = spec_with_default_profile();
        assert_eq!(*Filters::new(Some(cache.clone())).take(&mut spec2).unwrap().unwrap(), *f);
        let mut bytes = fs::read(&files[0]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&files[0], &bytes).unwrap();
        assert!(Filter::read(&files[0]).is_err());
        let mut spec3 = spec_with_default_profile();
        assert_eq!(*Filters::new(Some(cache.clone())).take(&mut spec3).unwrap().unwrap(), *f);
        assert_eq!(Filter::read(&files[0]).unwrap().as_ref(), Some(&*f));
    }

    #[test]
    fn leaves_profiles_libcontainer_must_load_in_the_spec() {
        let mut filters = Filters::new(None);
        // Without no_new_privileges.
        let mut spec = spec_with_default_profile();
        spec.process_mut().as_mut().unwrap().set_no_new_privileges(None);
        assert!(filters.take(&mut spec).unwrap().is_none());
        assert!(spec.linux().as_ref().unwrap().seccomp().is_some());
        // With a notify action.
        let mut spec = spec_with_default_profile();
        let seccomp = spec.linux_mut().as_mut().unwrap().seccomp_mut().as_mut().unwrap();
        let mut rules = seccomp.syscalls().clone().unwrap();
        rules[0].set_action(LinuxSeccompAction::ScmpActNotify);
        seccomp.set_syscalls(Some(rules));
        assert!(filters.take(&mut spec).unwrap().is_none());
        // Without a profile.
        let mut spec = Spec::default();
        assert!(filters.take(&mut spec).unwrap().is_none());
    }

    #[test]
    fn bundle_copy_is_checked_against_the_annotation() {
        let t = tempfile::tempdir().unwrap();
        let mut spec = spec_with_default_profile();
        let f = Filters::new(None).take(&mut spec).unwrap().unwrap();
        assert_eq!(from_bundle(t.path(), &spec).unwrap(), None);
        add_to_bundle(t.path(), &mut spec, &f).unwrap();
        assert_eq!(from_bundle(t.path(), &spec).unwrap().as_ref(), Some(&*f));
        // Another valid program in its place is refused, and so is none.
        let other = compile(&crate::bundle::seccomp_for(&Default::default())).unwrap();
        other.write(&t.path().join(BUNDLE_FILE)).unwrap();
        assert!(from_bundle(t.path(), &spec).is_err());
        fs::remove_file(t.path().join(BUNDLE_FILE)).unwrap();
        assert!(from_bundle(t.path(), &spec).is_err());
    }

    #[test]
    fn rejects_programs_of_the_wrong_shape() {
        assert!(Filter::from_bytes(Vec::new()).is_err());
        assert!(Filter::from_bytes(vec![0; 12]).is_err());
        assert!(Filter::from_bytes(vec![0; INSN * (libc::BPF_MAXINSNS as usize + 1)]).is_err());
        assert!(Filter::from_bytes(vec![0; INSN]).is_ok());
        // A file far larger than any program is refused without reading it all.
        let t = tempfile::tempdir().unwrap();
        let big = t.path().join("big.bpf");
        fs::write(&big, vec![0u8; 1 << 20]).unwrap();
        assert!(Filter::read(&big).is_err());
        assert!(Filter::read(&t.path().join("absent.bpf")).unwrap().is_none());
    }
}
