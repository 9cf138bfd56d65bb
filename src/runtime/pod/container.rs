//! One container of the pod: its bundle adjusted for the pod, its rootfs,
//! and libcontainer driven from the (single-threaded) pod process.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Mount, MountBuilder, RootBuilder, Spec};

use crate::runtime::plan::{BindMount, Network, PlannedContainer, RootfsSource};
use super::seccomp::{Filter, SeccompExecutor};
use super::stdio::ContainerStdio;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("container {name}: reading bundle {path}")]
    Spec { name: String, path: PathBuf, source: oci_spec::OciSpecError },
    #[error("container {name}: {what}")]
    Invalid { name: String, what: String },
    #[error("container {name}: mounting its root filesystem")]
    Rootfs { name: String, source: std::io::Error },
    #[error("container {name}")]
    Io { name: String, source: std::io::Error },
    #[error("container {name}")]
    Libcontainer { name: String, source: Box<libcontainer::error::LibcontainerError> },
    #[error("container {name}: {path}: {why}")]
    Command { name: String, path: String, why: CommandProblem },
}

/// Why the main command cannot run (exit 127 vs 126, like podman).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandProblem {
    #[error("executable file not found in $PATH or the image")]
    NotFound,
    #[error("permission denied: not an executable file")]
    NotExecutable,
}

/// Pod-wide facts every container's spec is adjusted to.
pub struct PodContext<'a> {
    pub pod: &'a str,
    pub network: Network,
    pub share_pid: bool,
    /// Only one gid is mapped: devpts cannot use `gid=5`.
    pub single_id: bool,
    /// Apply `linux.resources` (the cgroup tree is writable with the needed
    /// controllers); otherwise they are removed.
    pub cgroups: bool,
    pub hosts: &'a Path,
    pub hostname: &'a Path,
    pub resolv_conf: Option<&'a Path>,
    pub workspace: &'a Path,
    pub workspace_path: &'a str,
}

/// Reads the bundle's spec and adjusts it for a container of this pod:
/// the pod owns the user, network, IPC and UTS namespaces, so the container
/// keeps only its own mount (and PID, cgroup) namespace.
pub fn pod_spec(c: &PlannedContainer, rootfs: &Path, ctx: &PodContext<'_>) -> Result<Spec, ContainerError> {
    let path = c.bundle.join("config.json");
    let mut spec = Spec::load(&path).map_err(|source| ContainerError::Spec { name: c.name.clone(), path, source })?;
    spec.set_root(Some(
        RootBuilder::default()
            .path(rootfs)
            .readonly(spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false))
            .build()
            .map_err(|e| invalid(&c.name, e))?,
    ));
    spec.set_hostname(None);
    spec.set_domainname(None);
    let process = spec.process_mut().as_mut().ok_or_else(|| invalid(&c.name, "config.json has no process"))?;
    if let Some(cmd) = &c.command {
        if cmd.is_empty() {
            return Err(invalid(&c.name, "empty command"));
        }
        process.set_args(Some(cmd.clone()));
    }
    // Never a terminal unless asked for, whatever the bundle says.
    process.set_terminal(Some(c.tty));
    if c.tty {
        let mut env = process.env().clone().unwrap_or_default();
        if !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".into());
            process.set_env(Some(env));
        }
    }

    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    let keep = |t: LinuxNamespaceType| match t {
        LinuxNamespaceType::Mount | LinuxNamespaceType::Cgroup => true,
        LinuxNamespaceType::Pid => !ctx.share_pid,
        _ => false,
    };
    let mut namespaces: Vec<_> = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| keep(n.typ()))
        .map(|mut n| {
            n.set_path(None);
            n
        })
        .collect();
    for t in [LinuxNamespaceType::Mount, LinuxNamespaceType::Pid] {
        if keep(t) && !namespaces.iter().any(|n| n.typ() == t) {
            namespaces.push(oci_spec::runtime::LinuxNamespaceBuilder::default().typ(t).build().map_err(|e| invalid(&c.name, e))?);
        }
    }
    linux.set_namespaces(Some(namespaces));
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);
    if !ctx.cgroups {
        linux.set_resources(None);
    } else {
        // Relative to the pod process's cgroup view, rooted at the pod's cgroup.
        linux.set_cgroups_path(Some(PathBuf::from(format!("/{}", c.name))));
        if !c.limits.is_empty() {
            linux.set_resources(Some(resources(c).map_err(|e| invalid(&c.name, e))?));
        }
    }

    let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
    for m in mounts.iter_mut() {
        let typ = m.typ().clone().unwrap_or_default();
        if typ == "devpts" && ctx.single_id {
            if let Some(opts) = m.options_mut() {
                opts.retain(|o| !o.starts_with("gid="));
            }
        }
        // sysfs can only be mounted by the owner of the network namespace.
        if typ == "sysfs" && ctx.network == Network::Host {
            m.set_typ(Some("bind".into()));
            m.set_source(Some("/sys".into()));
            m.set_options(Some(vec!["rbind".into(), "nosuid".into(), "noexec".into(), "nodev".into(), "ro".into()]));
        }
    }
    // Mounts the pod provides replace the bundle's at the same place.
    let mut extra = vec![
        bind(ctx.hosts, "/etc/hosts", false),
        bind(ctx.hostname, "/etc/hostname", false),
        bind(ctx.workspace, ctx.workspace_path, false),
    ];
    if let Some(r) = ctx.resolv_conf {
        extra.push(bind(r, "/etc/resolv.conf", false));
    }
    for BindMount { source, destination, read_only } in &c.mounts {
        extra.push(bind(source, destination, *read_only));
    }
    // The container's own cgroup, read-only, where it has one: runtimes
    // like the JVM size themselves from its memory.max and cpu.max.
    if ctx.cgroups && !mounts.iter().any(|m| m.destination() == Path::new("/sys/fs/cgroup")) {
        extra.push(
            MountBuilder::default()
                .destination("/sys/fs/cgroup")
                .typ("cgroup")
                .source("cgroup")
                .options(["nosuid", "noexec", "nodev", "relatime", "ro"].map(String::from).to_vec())
                .build(),
        );
    }
    let extra: Vec<Mount> = extra.into_iter().collect::<Result<_, _>>().map_err(|e| invalid(&c.name, e))?;
    mounts.retain(|m| !extra.iter().any(|e| e.destination() == m.destination()));
    mounts.extend(extra);
    spec.set_mounts(Some(mounts));
    // libcontainer reads SCMP_CMP_MASKED_EQ operands swapped (see
    // bundle::libcontainer_compat): without this the clone rule fails open.
    crate::bundle::libcontainer_compat(&mut spec);
    Ok(spec)
}

fn invalid(name: &str, e: impl std::fmt::Display) -> ContainerError {
    ContainerError::Invalid { name: name.to_string(), what: e.to_string() }
}

fn bind(source: &Path, dest: &str, ro: bool) -> Result<Mount, oci_spec::OciSpecError> {
    let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
    if ro {
        options.push("ro".into());
    }
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(options)
        .build()
}

fn resources(c: &PlannedContainer) -> Result<oci_spec::runtime::LinuxResources, oci_spec::OciSpecError> {
    use oci_spec::runtime::*;
    let mut r = LinuxResourcesBuilder::default();
    if let Some(m) = c.limits.memory_bytes {
        r = r.memory(LinuxMemoryBuilder::default().limit(m as i64).build()?);
    }
    if let Some(mc) = c.limits.cpu_millis {
        let period = 100_000u64;
        r = r.cpu(LinuxCpuBuilder::default().quota((mc * period / 1000) as i64).period(period).build()?);
    }
    if let Some(p) = c.limits.pids {
        r = r.pids(LinuxPidsBuilder::default().limit(p as i64).build()?);
    }
    r.build()
}

/// Mounts (or picks, or copies) the container's root filesystem and
/// returns its path. `dir` is the container's own empty directory in the
/// pod's state: the overlay mount point, or where the copy goes.
pub fn prepare_rootfs(c: &PlannedContainer, dir: &Path) -> Result<PathBuf, ContainerError> {
    if let RootfsSource::Bundle | RootfsSource::Dir(_) = &c.rootfs {
        return prepare_tree(&c.name, &c.bundle, &c.rootfs, dir);
    }
    prepare_tree(&c.name, &c.bundle, &c.rootfs, dir)?;
    // The image may have made /dev, /proc, /etc/hosts… symlinks; fix them in
    // the private upper dir (or copy) before the runtime mounts there.
    crate::bundle::prepare_rootfs(dir).map_err(|e| invalid(&c.name, e))?;
    Ok(dir.to_path_buf())
}

/// Makes the tree `source` describes appear at `dir` (an overlay mount or a
/// copy; a bundle's own root or a ready directory stays where it is) and
/// returns where it is. `name` names the container or volume in errors.
pub fn prepare_tree(name: &str, bundle: &Path, source: &RootfsSource, dir: &Path) -> Result<PathBuf, ContainerError> {
    let rootfs_err = |source| ContainerError::Rootfs { name: name.to_string(), source };
    match source {
        RootfsSource::Bundle => {
            let spec_path = bundle.join("config.json");
            let spec = Spec::load(&spec_path).map_err(|source| ContainerError::Spec { name: name.to_string(), path: spec_path, source })?;
            let root = spec.root().as_ref().map(|r| r.path().clone()).unwrap_or_else(|| "rootfs".into());
            Ok(if root.is_absolute() { root } else { bundle.join(root) })
        }
        RootfsSource::Dir(d) => Ok(d.clone()),
        RootfsSource::Overlay { lowers, upper, work, fallback } => {
            fs::create_dir_all(dir).map_err(rootfs_err)?;
            // Once overlay has failed in this pod, the others copy at once.
            if !(*fallback && OVERLAY_UNAVAILABLE.load(Ordering::Relaxed)) {
                match mount_overlay(lowers, upper, work, dir) {
                    Ok(()) => {}
                    Err(e) if *fallback && e.allows_fallback() => {
                        if !OVERLAY_UNAVAILABLE.swap(true, Ordering::Relaxed) {
                            tracing::warn!(
                                "cannot mount an overlay root filesystem ({e}): copying the image's layers for each container instead (slower; --rootfs copy says so up front)"
                            );
                        }
                        copy_layers(name, lowers.iter().rev().cloned().collect(), dir)?;
                    }
                    Err(OverlayProblem::Mount(errno)) => return Err(rootfs_err(errno.into())),
                    Err(e) => return Err(invalid(name, e)),
                }
            } else {
                copy_layers(name, lowers.iter().rev().cloned().collect(), dir)?;
            }
            Ok(dir.to_path_buf())
        }
        RootfsSource::Copy { layers } => {
            fs::create_dir_all(dir).map_err(rootfs_err)?;
            copy_layers(name, layers.clone(), dir)?;
            Ok(dir.to_path_buf())
        }
    }
}

/// Set when an overlay mount failed in a way a copy avoids: warn once.
static OVERLAY_UNAVAILABLE: AtomicBool = AtomicBool::new(false);

/// Why a container's overlay root could not be mounted.
#[derive(Debug, thiserror::Error)]
enum OverlayProblem {
    #[error("{0}")]
    Options(crate::unpack::cache::LayersError),
    /// mount(2) takes one page of options and silently cuts the rest.
    #[error("the layer list is too long for one mount ({0} bytes of options, at most {1})")]
    TooLong(usize, usize),
    #[error("mount: {0}")]
    Mount(nix::errno::Errno),
}

impl OverlayProblem {
    /// True where a copy of the layers works instead: overlay is not
    /// allowed or not usable here (no overlayfs, no unprivileged overlay,
    /// an upper or lower fs it refuses, too many layers), as opposed to
    /// missing layer dirs or exhausted resources.
    fn allows_fallback(&self) -> bool {
        use nix::errno::Errno;
        match self {
            OverlayProblem::Options(_) | OverlayProblem::TooLong(..) => true,
            OverlayProblem::Mount(e) => {
                matches!(e, Errno::EPERM | Errno::EACCES | Errno::EINVAL | Errno::ENODEV | Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::ELOOP)
            }
        }
    }
}

fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<(), OverlayProblem> {
    let started = std::time::Instant::now();
    // `lowers` is top first; the options builder wants bottom first.
    let bottom_first: Vec<PathBuf> = lowers.iter().rev().cloned().collect();
    let opts = crate::unpack::cache::overlay_mount_options(&bottom_first, upper, work).map_err(OverlayProblem::Options)?;
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    if opts.len() >= page {
        return Err(OverlayProblem::TooLong(opts.len(), page - 1));
    }
    nix::mount::mount(Some("overlay"), target, Some("overlay"), nix::mount::MsFlags::empty(), Some(opts.as_str()))
        .map_err(OverlayProblem::Mount)?;
    tracing::debug!(layers = lowers.len(), elapsed = ?started.elapsed(), "mounted overlay root at {}", target.display());
    Ok(())
}

/// Copies cached layer dirs (bottom first) into the empty `dest`. The pod
/// process is uid 0 of the pod's user namespace, which maps the ids the
/// cache was unpacked under, so owners are kept as they are (a single
/// mapped id: the cache squashed them already).
fn copy_layers(name: &str, layers: Vec<PathBuf>, dest: &Path) -> Result<(), ContainerError> {
    let started = std::time::Instant::now();
    let ids = match crate::userns::IdMapping::of_current_process().counts() {
        (u, g) if u > 1 && g > 1 => crate::unpack::IdPolicy::Keep { max_uid: (u - 1) as u32, max_gid: (g - 1) as u32 },
        _ => crate::unpack::IdPolicy::Squash,
    };
    crate::unpack::cache::flatten_dirs(&layers, dest, ids)
        .map_err(|e| ContainerError::Invalid { name: name.to_string(), what: format!("copying its root filesystem: {e}") })?;
    tracing::debug!(layers = layers.len(), elapsed = ?started.elapsed(), "copied the layers of {name}");
    Ok(())
}

/// How many ids an id map file maps.
/// Resolves the process's `args[0]` inside `rootfs` against its `PATH`, as
/// the kernel would see it after pivot_root, so a missing or
/// non-executable command is reported as 127/126 before anything starts.
pub fn check_command(spec: &Spec, rootfs: &Path) -> Result<(), (String, CommandProblem)> {
    let Some(process) = spec.process() else { return Ok(()) };
    let Some(cmd) = process.args().as_ref().and_then(|a| a.first()) else { return Ok(()) };
    let root = match pathrs::Root::open(rootfs) {
        Ok(r) => r,
        Err(_) => return Ok(()), // libcontainer reports it
    };
    let candidates: Vec<PathBuf> = if cmd.contains('/') {
        let cwd = PathBuf::from(process.cwd());
        vec![cwd.join(cmd)]
    } else {
        let path = process
            .env()
            .as_ref()
            .and_then(|e| e.iter().find_map(|v| v.strip_prefix("PATH=")))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        path.split(':').filter(|d| !d.is_empty()).map(|d| Path::new(d).join(cmd)).collect()
    };
    // A command on a bind mount (tools injected through a volume, as
    // Kubernetes allows) is looked up in the mount's source.
    let mounted = |cand: &Path| -> Option<(pathrs::Root, PathBuf)> {
        let (_, source, rest) = spec
            .mounts()
            .iter()
            .flatten()
            .filter(|m| m.typ().as_deref() == Some("bind"))
            .filter_map(|m| Some((m.destination().components().count(), m.source().clone()?, cand.strip_prefix(m.destination()).ok()?)))
            .max_by_key(|(depth, _, _)| *depth)?;
        Some((pathrs::Root::open(&source).ok()?, Path::new("/").join(rest)))
    };
    let mut found_any = false;
    for cand in &candidates {
        let handle = match mounted(cand) {
            Some((mount, rest)) => mount.resolve(&rest),
            None => root.resolve(cand),
        };
        let Ok(handle) = handle else { continue };
        found_any = true;
        if let Ok(st) = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(&handle))) {
            let mode = fs::Permissions::from_mode(st.st_mode).mode();
            if st.st_mode & libc::S_IFMT == libc::S_IFREG && mode & 0o111 != 0 {
                return Ok(());
            }
        }
    }
    let why = if found_any { CommandProblem::NotExecutable } else { CommandProblem::NotFound };
    Err((cmd.clone(), why))
}

/// Writes the adjusted spec as the pod's bundle for this container.
pub fn write_bundle(dir: &Path, spec: &Spec) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    spec.save(dir.join("config.json")).map_err(std::io::Error::other)
}

/// Creates the container (libcontainer `build()`): its init is our child,
/// waiting for `start`. `stdio` None inherits our fds 0/1/2; with
/// `console_socket` (the spec has `process.terminal`) the init sends its
/// pty master there instead.
/// `seccomp` is the program of the profile taken out of the bundle's spec
/// (see [`super::seccomp`]), loaded by the init right before it execs.
pub fn create(
    name: &str,
    state_root: &Path,
    bundle: &Path,
    stdio: Option<ContainerStdio>,
    console_socket: Option<&Path>,
    seccomp: Option<Arc<Filter>>,
) -> Result<Container, ContainerError> {
    let lc = |source| ContainerError::Libcontainer { name: name.to_string(), source: Box::new(source) };
    let mut b = ContainerBuilder::new(name.to_string(), SyscallType::Linux)
        .with_root_path(state_root)
        .map_err(lc)?
        .with_executor(SeccompExecutor { filter: seccomp })
        .with_console_socket(console_socket);
    if let Some(s) = stdio {
        b = b.with_stdin(s.stdin).with_stdout(s.stdout).with_stderr(s.stderr);
    }
    b.validate_id().map_err(lc)?.as_init(bundle).with_systemd(false).with_detach(true).build().map_err(lc)
}

/// Starts a process in a running container (tenant exec); returns its pid,
/// our child. The caller must be in the pod's user and mount namespaces.
pub fn exec(
    name: &str,
    state_root: &Path,
    args: Vec<String>,
    env: HashMap<String, String>,
    stdio: Option<ContainerStdio>,
) -> Result<Pid, ContainerError> {
    let lc = |source| ContainerError::Libcontainer { name: name.to_string(), source: Box::new(source) };
    let bundle = Container::load(state_root.join(name)).map_err(lc)?.bundle().to_path_buf();
    let config = bundle.join("config.json");
    let spec = Spec::load(&config).map_err(|source| ContainerError::Spec { name: name.to_string(), path: config, source })?;
    let executor = tenant_executor(name, &bundle, &spec)?;
    let mut b = ContainerBuilder::new(name.to_string(), SyscallType::Linux).with_root_path(state_root).map_err(lc)?.with_executor(executor);
    if let Some(s) = stdio {
        b = b.with_stdin(s.stdin).with_stdout(s.stdout).with_stderr(s.stderr);
    }
    b.as_tenant().with_container_args(args).with_env(env).with_detach(true).build().map_err(lc)
}

/// Starts `args` in a running container with a pseudo-terminal whose master
/// is sent to `console_socket`; returns its pid, our child. The process is
/// what [`exec`] starts (libcontainer's tenant defaults: the container's
/// env, capabilities and no_new_privileges; uid 0; cwd /), plus the terminal
/// and `TERM`. libcontainer takes a terminal only from a process file,
/// written to `process_file` for the call.
pub fn exec_tty(
    name: &str,
    state_root: &Path,
    args: Vec<String>,
    console_socket: &Path,
    process_file: &Path,
) -> Result<Pid, ContainerError> {
    let io_err = |source| ContainerError::Io { name: name.to_string(), source };
    let container_dir = state_root.join(name);
    let bundle = Container::load(container_dir.clone())
        .map_err(|source| ContainerError::Libcontainer { name: name.to_string(), source: Box::new(source) })?
        .bundle()
        .to_path_buf();
    let config = bundle.join("config.json");
    let spec = Spec::load(&config).map_err(|source| ContainerError::Spec { name: name.to_string(), path: config, source })?;
    let process = tty_exec_process(&spec, args).map_err(|e| ContainerError::Invalid { name: name.to_string(), what: e.to_string() })?;
    let executor = tenant_executor(name, &bundle, &spec)?;
    let json = serde_json::to_vec(&process).map_err(|e| io_err(std::io::Error::other(e)))?;
    fs::write(process_file, json).map_err(io_err)?;
    let lc = |source| ContainerError::Libcontainer { name: name.to_string(), source: Box::new(source) };
    let result = ContainerBuilder::new(name.to_string(), SyscallType::Linux)
        .with_root_path(state_root)
        .map_err(lc)?
        .with_executor(executor)
        .with_console_socket(Some(console_socket))
        .as_tenant()
        .with_process(Some(process_file))
        .with_detach(true)
        .build()
        .map_err(lc);
    let _ = fs::remove_file(process_file);
    result
}

/// A tenant process loads the container's seccomp program, as its init did.
fn tenant_executor(name: &str, bundle: &Path, spec: &Spec) -> Result<SeccompExecutor, ContainerError> {
    let filter = super::seccomp::from_bundle(bundle, spec)
        .map_err(|e| ContainerError::Invalid { name: name.to_string(), what: crate::runtime::error_chain(&e) })?;
    Ok(SeccompExecutor { filter: filter.map(Arc::new) })
}

/// The process of a terminal exec: as libcontainer builds one for
/// `with_container_args`, with a terminal.
fn tty_exec_process(spec: &Spec, args: Vec<String>) -> Result<oci_spec::runtime::Process, oci_spec::OciSpecError> {
    use oci_spec::runtime::ProcessBuilder;
    let base = spec.process().as_ref();
    let mut env = base.and_then(|p| p.env().clone()).unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let mut b = ProcessBuilder::default().terminal(true).args(args).env(env);
    if let Some(caps) = base.and_then(|p| p.capabilities().clone()) {
        b = b.capabilities(caps);
    }
    if let Some(nnp) = base.and_then(|p| p.no_new_privileges()) {
        b = b.no_new_privileges(nnp);
    }
    b.build()
}
