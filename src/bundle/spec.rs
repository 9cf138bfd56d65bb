//! The runtime [`Spec`] of one container: the image config's process
//! (Entrypoint, Cmd, Env, WorkingDir, User, Labels) with the caller's
//! overrides, on top of the defaults of runc's `runc spec` and Docker:
//! mounts, masked and read-only paths, capabilities, `noNewPrivileges`,
//! `RLIMIT_NOFILE`, namespaces and the seccomp profile.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capabilities, Capability, Linux, LinuxCapabilities, LinuxIdMapping, LinuxNamespace,
    LinuxNamespaceType, LinuxIdMappingBuilder, Mount, PosixRlimitBuilder, PosixRlimitType, Process, Root, Spec, User,
};

use super::seccomp::seccomp_for;
use super::user::{UserDb, UserSpec};
use super::BundleError;

/// `PATH` when the image sets none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `RLIMIT_NOFILE` wanted, as podman and Docker give (capped, see
/// [`ContainerSettings::rlimit_nofile`]).
pub const DEFAULT_NOFILE: u64 = 1 << 20;

const OCI_VERSION: &str = "1.0.2";

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Docker's default capability set.
pub fn default_capabilities() -> Capabilities {
    [
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fsetid,
        Capability::Fowner,
        Capability::Mknod,
        Capability::NetRaw,
        Capability::Setgid,
        Capability::Setuid,
        Capability::Setfcap,
        Capability::Setpcap,
        Capability::NetBindService,
        Capability::SysChroot,
        Capability::Kill,
        Capability::AuditWrite,
    ]
    .into_iter()
    .collect()
}

/// Which ids exist in the container, and who makes its user namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UserNamespace {
    /// No `user` namespace entry: the runtime runs as real root, or inside
    /// a user namespace made beforehand that maps a full range (berth's
    /// pod with a subordinate range).
    #[default]
    Inherited,
    /// No `user` namespace entry, inside a user namespace that maps one id
    /// only (no subordinate range): devpts gets no `gid=5`, and no
    /// supplementary groups are set.
    InheritedSingleId,
    /// A `user` namespace entry with these mappings, made by the runtime
    /// itself (a standalone bundle for rootless runc).
    Private { uid: Vec<LinuxIdMapping>, gid: Vec<LinuxIdMapping> },
}

impl UserNamespace {
    /// What `runc spec --rootless` asks for: container root is the calling
    /// user (effective uid and gid), nothing else is mapped.
    pub fn rootless_self() -> Self {
        let one = |host: u32| vec![id_map(0, host, 1)];
        UserNamespace::Private {
            uid: one(nix::unistd::geteuid().as_raw()),
            gid: one(nix::unistd::getegid().as_raw()),
        }
    }

    /// Whether container gid `gid` exists; `None` when unknown (inherited).
    fn has_gid(&self, gid: u32) -> Option<bool> {
        match self {
            UserNamespace::Inherited => None,
            UserNamespace::InheritedSingleId => Some(gid == 0),
            UserNamespace::Private { gid: maps, .. } => Some(maps.iter().any(|m| {
                gid >= m.container_id() && u64::from(gid) < u64::from(m.container_id()) + u64::from(m.size())
            })),
        }
    }

    /// Only one gid: setgroups(2) is denied in such a user namespace.
    fn single_gid(&self) -> bool {
        match self {
            UserNamespace::Inherited => false,
            UserNamespace::InheritedSingleId => true,
            UserNamespace::Private { gid, .. } => gid.iter().map(|m| u64::from(m.size())).sum::<u64>() <= 1,
        }
    }
}

/// What the caller sets on top of the image config. Start from
/// [`ContainerSettings::new`]; everything is checked by [`runtime_spec`].
#[derive(Debug, Clone)]
pub struct ContainerSettings {
    hostname: String,
    command: Option<Vec<String>>,
    args: Option<Vec<String>>,
    env: Vec<(String, String)>,
    working_dir: Option<String>,
    user: Option<UserSpec>,
    terminal: bool,
    mounts: Vec<Mount>,
    read_only_rootfs: bool,
    rlimit_nofile: Option<(u64, u64)>,
    /// Join the host's (or the surrounding) network namespace: no `network`
    /// namespace entry, and `/sys` is a read-only rbind of the host's, since
    /// sysfs can only be mounted by the owner of the network namespace.
    host_network: bool,
    user_namespace: UserNamespace,
    provide_user: Option<ProvideUser>,
}

/// Where and under which name to provide a passwd entry for a non-root
/// uid that has none in the image (see [`ContainerSettings::provide_user`]).
#[derive(Debug, Clone)]
pub struct ProvideUser {
    /// A host directory [`runtime_spec`] writes `passwd` and `group` into.
    pub dir: PathBuf,
    /// The name wanted for the entry (e.g. the invoking user's).
    pub name: String,
}

impl ContainerSettings {
    /// Defaults: the image's command, env, working dir and user; private
    /// network; inherited id mapping; no terminal; writable rootfs.
    pub fn new(hostname: impl Into<String>) -> Self {
        ContainerSettings {
            hostname: hostname.into(),
            command: None,
            args: None,
            env: Vec::new(),
            working_dir: None,
            user: None,
            terminal: false,
            mounts: Vec::new(),
            read_only_rootfs: false,
            rlimit_nofile: None,
            host_network: false,
            user_namespace: UserNamespace::default(),
            provide_user: None,
        }
    }

    /// Kubernetes `command`: replaces the image's Entrypoint and drops its
    /// Cmd. An empty list counts as not set, as in Kubernetes.
    pub fn command(mut self, command: Vec<String>) -> Self {
        self.command = Some(command).filter(|c| !c.is_empty());
        self
    }

    /// Kubernetes `args`: replaces the image's Cmd. An empty list counts as
    /// not set.
    pub fn args(mut self, args: Vec<String>) -> Self {
        self.args = Some(args).filter(|a| !a.is_empty());
        self
    }

    /// Sets a variable, replacing the image's value (last call wins).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Replaces the image's WorkingDir (absolute).
    pub fn working_dir(mut self, dir: impl Into<String>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    /// Replaces the image's User.
    pub fn user(mut self, user: UserSpec) -> Self {
        self.user = Some(user);
        self
    }

    /// Gives the process a pseudo-terminal (and `TERM=xterm` if unset).
    pub fn terminal(mut self, terminal: bool) -> Self {
        self.terminal = terminal;
        self
    }

    /// Adds a mount after the defaults; one at the same destination as a
    /// default replaces it.
    pub fn mount(mut self, mount: Mount) -> Self {
        self.mounts.push(mount);
        self
    }

    pub fn read_only_rootfs(mut self, read_only: bool) -> Self {
        self.read_only_rootfs = read_only;
        self
    }

    /// `RLIMIT_NOFILE` as given. Without it: [`DEFAULT_NOFILE`] capped to
    /// this process's hard limit, since raising a hard limit needs
    /// CAP_SYS_RESOURCE in the initial user namespace, which a rootless
    /// runtime (or any runtime inside a user namespace) does not have.
    pub fn rlimit_nofile(mut self, soft: u64, hard: u64) -> Self {
        self.rlimit_nofile = Some((soft, hard));
        self
    }

    pub fn host_network(mut self, host: bool) -> Self {
        self.host_network = host;
        self
    }

    pub fn user_namespace(mut self, user_namespace: UserNamespace) -> Self {
        self.user_namespace = user_namespace;
        self
    }

    /// When the process's uid is not 0 and has no `/etc/passwd` entry in
    /// the image, write the image's passwd and group with one added into
    /// `p.dir`, bind them over `/etc/passwd` and `/etc/group`, and give the
    /// user a writable home (a tmpfs it owns) as `HOME`, so that `whoami`,
    /// git and ssh work.
    pub fn provide_user(mut self, p: ProvideUser) -> Self {
        self.provide_user = Some(p);
        self
    }
}

/// Builds the runtime spec of a container of `image` whose root filesystem
/// is `rootfs`, written as given into `root.path` (pass an absolute path,
/// or one that is right both from here and from the bundle). The image's `/etc/passwd` and `/etc/group` are
/// read in-root when a user must be resolved.
pub fn runtime_spec(image: &ImageConfiguration, rootfs: &Path, settings: &ContainerSettings) -> Result<Spec, BundleError> {
    let config = image.config().as_ref();
    check_hostname(&settings.hostname)?;

    let args = process_args(
        config.and_then(|c| c.entrypoint().as_deref()),
        config.and_then(|c| c.cmd().as_deref()),
        settings,
    )?;

    let user_spec = match (&settings.user, config.and_then(|c| c.user().as_deref())) {
        (Some(u), _) => u.clone(),
        (None, Some(u)) if !u.is_empty() => UserSpec::parse(u)?,
        _ => UserSpec::ids(0, None),
    };
    let db = UserDb::read(rootfs)?;
    let mut user = user_spec.resolve_in_db(&db)?;
    let mut user_mounts = Vec::new();
    if let (Some(p), None, false) = (&settings.provide_user, &user.name, user.uid == 0) {
        let (files, home) = db.with_entry_for(&user, &p.name);
        for (name, text) in [("passwd", &files.passwd), ("group", &files.group)] {
            let path = p.dir.join(name);
            std::fs::write(&path, text).map_err(|source| BundleError::Write { path: path.clone(), source })?;
            let dest = format!("/etc/{name}");
            user_mounts.push(mount(&dest, "bind", &path.to_string_lossy(), &["rbind", "rprivate", "nosuid", "nodev"]));
        }
        // One option each: runtimes pass them to fsconfig(2) one by one.
        let (uid, gid) = (format!("uid={}", user.uid), format!("gid={}", user.gid));
        user_mounts.push(mount(&home, "tmpfs", "tmpfs", &["nosuid", "nodev", "mode=0700", &uid, &gid]));
        user.home = home;
    }

    let env = merge_env(config.and_then(|c| c.env().as_deref()).unwrap_or_default(), settings, &user.home)?;

    let cwd = match (&settings.working_dir, config.and_then(|c| c.working_dir().as_deref())) {
        (Some(d), _) => d.as_str(),
        (None, Some(d)) if !d.is_empty() => d,
        _ => "/",
    };
    if !cwd.starts_with('/') || cwd.contains('\0') {
        return Err(invalid("working directory", format!("{cwd:?} is not an absolute path")));
    }
    if escapes_root(cwd) {
        return Err(invalid("working directory", format!("{cwd:?} reaches outside the container's root with '..'")));
    }

    let mut additional_gids = user.additional_gids.clone();
    if settings.user_namespace.single_gid() {
        additional_gids.clear();
    } else {
        additional_gids.retain(|g| settings.user_namespace.has_gid(*g).unwrap_or(true));
    }
    let mut process_user = User::default();
    process_user.set_uid(user.uid);
    process_user.set_gid(user.gid);
    process_user.set_additional_gids(Some(additional_gids).filter(|g| !g.is_empty()));

    let caps = default_capabilities();
    let mut capabilities = LinuxCapabilities::default();
    capabilities.set_bounding(Some(caps.clone()));
    capabilities.set_effective(Some(caps.clone()));
    capabilities.set_permitted(Some(caps.clone()));
    capabilities.set_inheritable(Some(Capabilities::new()));
    capabilities.set_ambient(None);

    let (soft, hard) = match settings.rlimit_nofile {
        Some((soft, hard)) if soft <= hard => (soft, hard),
        Some((soft, hard)) => return Err(invalid("RLIMIT_NOFILE", format!("soft limit {soft} above hard limit {hard}"))),
        None => {
            let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map(|(_, hard)| hard.min(DEFAULT_NOFILE))
                .unwrap_or(1024);
            (hard, hard)
        }
    };
    let nofile = PosixRlimitBuilder::default().typ(PosixRlimitType::RlimitNofile).soft(soft).hard(hard).build()?;

    let mut process = Process::default();
    process.set_terminal(Some(settings.terminal));
    process.set_user(process_user);
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(PathBuf::from(cwd));
    process.set_capabilities(Some(capabilities));
    process.set_rlimits(Some(vec![nofile]));
    process.set_no_new_privileges(Some(true));

    let mut linux = Linux::default();
    linux.set_resources(None);
    linux.set_namespaces(Some(namespaces(settings)));
    if let UserNamespace::Private { uid, gid } = &settings.user_namespace {
        if uid.is_empty() || gid.is_empty() || uid.iter().chain(gid).any(|m| m.size() == 0) {
            return Err(invalid("id mapping", "empty uid or gid mapping".into()));
        }
        linux.set_uid_mappings(Some(uid.clone()));
        linux.set_gid_mappings(Some(gid.clone()));
    }
    linux.set_masked_paths(Some(MASKED_PATHS.iter().map(|p| p.to_string()).collect()));
    linux.set_readonly_paths(Some(READONLY_PATHS.iter().map(|p| p.to_string()).collect()));
    linux.set_devices(None);
    linux.set_seccomp(Some(seccomp_for(&caps)));

    let mut root = Root::default();
    root.set_path(rootfs.to_path_buf());
    root.set_readonly(Some(settings.read_only_rootfs));

    let annotations: HashMap<String, String> = config
        .and_then(|c| c.labels().as_ref())
        .map(|l| l.iter().filter(|(k, _)| !k.is_empty()).map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_string());
    spec.set_root(Some(root));
    let mut mounts = mounts(settings)?;
    mounts.retain(|m| !user_mounts.iter().any(|u| u.destination() == m.destination()));
    mounts.extend(user_mounts);
    spec.set_mounts(Some(mounts));
    spec.set_process(Some(process));
    spec.set_hostname(Some(settings.hostname.clone()));
    spec.set_domainname(None);
    spec.set_annotations(Some(annotations).filter(|a| !a.is_empty()));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// Removes the namespace of type `typ`, if present (the container then
/// shares the runtime's).
pub fn remove_namespace(spec: &mut Spec, typ: LinuxNamespaceType) {
    if let Some(namespaces) = spec.linux_mut().as_mut().and_then(|l| l.namespaces_mut().as_mut()) {
        namespaces.retain(|n| n.typ() != typ);
    }
}

/// Adds the namespace of type `typ`, or replaces it: a new one (`path`
/// `None`) or the existing one at `path` (e.g. `/proc/PID/ns/net`).
pub fn set_namespace(spec: &mut Spec, typ: LinuxNamespaceType, path: Option<PathBuf>) {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns.set_path(path);
    let linux = spec.linux_mut().get_or_insert_with(Linux::default);
    let namespaces = linux.namespaces_mut().get_or_insert_with(Vec::new);
    match namespaces.iter_mut().find(|n| n.typ() == typ) {
        Some(existing) => *existing = ns,
        None => namespaces.push(ns),
    }
}

/// One id mapping: `size` ids from `container_id` onwards are `host_id`
/// onwards outside.
pub fn id_map(container_id: u32, host_id: u32, size: u32) -> LinuxIdMapping {
    // Every field has a default (`#[builder(default)]`): build cannot fail.
    LinuxIdMappingBuilder::default()
        .container_id(container_id)
        .host_id(host_id)
        .size(size)
        .build()
        .expect("LinuxIdMapping has defaults for all fields")
}

/// Kubernetes semantics: `command` replaces Entrypoint and drops Cmd;
/// `args` replaces Cmd.
fn process_args(entrypoint: Option<&[String]>, cmd: Option<&[String]>, s: &ContainerSettings) -> Result<Vec<String>, BundleError> {
    let mut args: Vec<String> = match (&s.command, &s.args) {
        (Some(command), args) => command.iter().chain(args.iter().flatten()).cloned().collect(),
        (None, Some(args)) => entrypoint.unwrap_or_default().iter().chain(args).cloned().collect(),
        (None, None) => entrypoint.unwrap_or_default().iter().chain(cmd.unwrap_or_default()).cloned().collect(),
    };
    if args.first().is_none_or(|a| a.is_empty()) {
        args.clear();
    }
    if args.is_empty() {
        return Err(BundleError::NoCommand);
    }
    if let Some(a) = args.iter().find(|a| a.contains('\0')) {
        return Err(invalid("command", format!("argument {a:?} contains a NUL byte")));
    }
    Ok(args)
}

/// The image's Env, then the caller's (replacing by name), then the
/// defaults Docker adds when missing: PATH, HOSTNAME, TERM (with a
/// terminal), HOME.
fn merge_env(image: &[String], s: &ContainerSettings, home: &str) -> Result<Vec<String>, BundleError> {
    let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_string();
    let mut env: Vec<String> = Vec::with_capacity(image.len() + s.env.len() + 4);
    let set = |entry: String, env: &mut Vec<String>| {
        let k = key(&entry);
        match env.iter_mut().find(|e| key(e) == k) {
            Some(e) => *e = entry,
            None => env.push(entry),
        }
    };
    for e in image {
        if e.contains('\0') || e.is_empty() {
            return Err(invalid("image environment", format!("{e:?}")));
        }
        set(e.clone(), &mut env);
    }
    for (k, v) in &s.env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(invalid("environment variable", format!("{k:?}")));
        }
        set(format!("{k}={v}"), &mut env);
    }
    let mut default = |k: &str, v: &str| {
        if !env.iter().any(|e| key(e) == k) {
            env.push(format!("{k}={v}"));
        }
    };
    default("PATH", DEFAULT_PATH);
    default("HOSTNAME", &s.hostname);
    if s.terminal {
        default("TERM", "xterm");
    }
    default("HOME", home);
    Ok(env)
}

fn namespaces(s: &ContainerSettings) -> Vec<LinuxNamespace> {
    let mut types = vec![LinuxNamespaceType::Pid];
    if !s.host_network {
        types.push(LinuxNamespaceType::Network);
    }
    types.extend([LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts, LinuxNamespaceType::Mount, LinuxNamespaceType::Cgroup]);
    if matches!(s.user_namespace, UserNamespace::Private { .. }) {
        types.push(LinuxNamespaceType::User);
    }
    types
        .into_iter()
        .map(|t| {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(t);
            ns
        })
        .collect()
}

fn mount(destination: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination));
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(PathBuf::from(source)));
    m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

/// runc's default mounts (without the cgroup one), then the caller's.
fn mounts(s: &ContainerSettings) -> Result<Vec<Mount>, BundleError> {
    let mut devpts = vec!["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"];
    if s.user_namespace.has_gid(5).unwrap_or(true) {
        devpts.push("gid=5");
    }
    let sys = match s.host_network {
        false => mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
        true => mount("/sys", "bind", "/sys", &["rbind", "nosuid", "noexec", "nodev", "ro"]),
    };
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        mount("/dev/pts", "devpts", "devpts", &devpts),
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        sys,
    ];
    for m in &s.mounts {
        if !m.destination().is_absolute() {
            return Err(invalid("mount", format!("destination {} is not absolute", m.destination().display())));
        }
        mounts.retain(|d| d.destination() != m.destination());
        mounts.push(m.clone());
    }
    Ok(mounts)
}

fn check_hostname(h: &str) -> Result<(), BundleError> {
    let ok = !h.is_empty() && h.len() <= 64 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid("hostname", format!("{h:?} (1 to 64 letters, digits, '-', '.', '_')")))
    }
}

/// True when `..` climbs above `/` (the kernel would stop at `/`, so the
/// path means something other than it says).
fn escapes_root(path: &str) -> bool {
    let mut depth = 0usize;
    for c in Path::new(path).components() {
        match c {
            std::path::Component::Normal(_) => depth += 1,
            std::path::Component::ParentDir if depth == 0 => return true,
            std::path::Component::ParentDir => depth -= 1,
            _ => {}
        }
    }
    false
}

fn invalid(what: &'static str, why: String) -> BundleError {
    BundleError::Invalid { what, why }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn image(json: serde_json::Value) -> ImageConfiguration {
        let mut full = serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}});
        full["config"] = json;
        serde_json::from_value(full).unwrap()
    }

    fn busybox_like() -> (tempfile::TempDir, ImageConfiguration) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\n").unwrap();
        fs::write(dir.path().join("etc/group"), "root:x:0:\nwheel:x:10:root\nwww:x:33:\n").unwrap();
        let img = image(serde_json::json!({
            "Entrypoint": ["/entry"], "Cmd": ["serve", "--port=80"],
            "Env": ["PATH=/opt/bin:/bin", "LANG=C.UTF-8"], "WorkingDir": "/srv",
            "Labels": {"org.example.version": "1.2", "": "dropped"}
        }));
        (dir, img)
    }

    fn args(spec: &Spec) -> Vec<String> {
        spec.process().as_ref().unwrap().args().clone().unwrap()
    }

    fn env(spec: &Spec) -> Vec<String> {
        spec.process().as_ref().unwrap().env().clone().unwrap()
    }

    #[test]
    fn kubernetes_command_and_args_semantics() {
        let (r, img) = busybox_like();
        let s = |settings: ContainerSettings| args(&runtime_spec(&img, r.path(), &settings).unwrap());
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(s(ContainerSettings::new("c")), v(&["/entry", "serve", "--port=80"]));
        // command replaces Entrypoint and drops Cmd.
        assert_eq!(s(ContainerSettings::new("c").command(v(&["sh"]))), v(&["sh"]));
        // args replace Cmd, Entrypoint kept.
        assert_eq!(s(ContainerSettings::new("c").args(v(&["check"]))), v(&["/entry", "check"]));
        assert_eq!(s(ContainerSettings::new("c").command(v(&["sh", "-c"])).args(v(&["id"]))), v(&["sh", "-c", "id"]));
        // Empty lists are "not set".
        assert_eq!(s(ContainerSettings::new("c").command(vec![]).args(vec![])), v(&["/entry", "serve", "--port=80"]));
    }

    #[test]
    fn no_command_is_an_error() {
        let r = tempfile::tempdir().unwrap();
        let e = runtime_spec(&image(serde_json::json!({})), r.path(), &ContainerSettings::new("c")).unwrap_err();
        assert_eq!(e.to_string(), "image has no command (no Entrypoint or Cmd, and none given)");
        let e = runtime_spec(&image(serde_json::json!({"Cmd": [""]})), r.path(), &ContainerSettings::new("c")).unwrap_err();
        assert!(matches!(e, BundleError::NoCommand));
        // An image without any config section at all.
        let bare: ImageConfiguration = serde_json::from_value(serde_json::json!(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        ))
        .unwrap();
        assert!(matches!(runtime_spec(&bare, r.path(), &ContainerSettings::new("c")), Err(BundleError::NoCommand)));
        let spec = runtime_spec(&bare, r.path(), &ContainerSettings::new("c").command(vec!["true".into()])).unwrap();
        assert_eq!(spec.process().as_ref().unwrap().cwd(), Path::new("/"));
    }

    #[test]
    fn env_merge() {
        let (r, img) = busybox_like();
        let spec = runtime_spec(&img, r.path(), &ContainerSettings::new("web").env("LANG", "de_DE").env("EXTRA", "a=b").terminal(true)).unwrap();
        assert_eq!(
            env(&spec),
            ["PATH=/opt/bin:/bin", "LANG=de_DE", "EXTRA=a=b", "HOSTNAME=web", "TERM=xterm", "HOME=/root"]
        );
        // Defaults when the image has none; no TERM without a terminal.
        let spec = runtime_spec(&image(serde_json::json!({"Cmd": ["x"]})), r.path(), &ContainerSettings::new("h")).unwrap();
        assert_eq!(env(&spec), [format!("PATH={DEFAULT_PATH}"), "HOSTNAME=h".into(), "HOME=/root".into()]);
        for (k, v) in [("", "x"), ("A=B", "x"), ("A", "x\0y")] {
            assert!(runtime_spec(&img, r.path(), &ContainerSettings::new("h").env(k, v)).is_err(), "{k:?}={v:?}");
        }
    }

    #[test]
    fn provided_user_entry_home_and_mounts() {
        let (r, img) = busybox_like();
        let out = tempfile::tempdir().unwrap();
        let provide = || ProvideUser { dir: out.path().to_path_buf(), name: "jenkins".into() };
        let s = ContainerSettings::new("c").user(UserSpec::ids(4242, Some(4242))).provide_user(provide());
        let spec = runtime_spec(&img, r.path(), &s).unwrap();
        assert!(env(&spec).contains(&"HOME=/home/jenkins".to_string()));
        let passwd = std::fs::read_to_string(out.path().join("passwd")).unwrap();
        assert!(passwd.starts_with("root:x:0:0") && passwd.ends_with("jenkins:x:4242:4242:jenkins:/home/jenkins:/bin/sh\n"), "{passwd}");
        assert!(std::fs::read_to_string(out.path().join("group")).unwrap().ends_with("jenkins:x:4242:\n"));
        assert_eq!(mount_of(&spec, "/etc/passwd").source().as_deref(), Some(out.path().join("passwd").as_path()));
        assert_eq!(mount_of(&spec, "/etc/group").typ().as_deref(), Some("bind"));
        let home = mount_of(&spec, "/home/jenkins");
        assert_eq!(home.typ().as_deref(), Some("tmpfs"));
        let opts = home.options().as_ref().unwrap();
        assert!(opts.contains(&"uid=4242".to_string()) && opts.contains(&"gid=4242".to_string()), "{opts:?}");
        // A user with an entry, root, or no provide_user: the image's files.
        for s in [
            ContainerSettings::new("c").user(UserSpec::parse("www").unwrap()).provide_user(provide()),
            ContainerSettings::new("c").user(UserSpec::ids(0, None)).provide_user(provide()),
            ContainerSettings::new("c").user(UserSpec::ids(4242, None)),
        ] {
            let spec = runtime_spec(&img, r.path(), &s).unwrap();
            assert!(spec.mounts().as_ref().unwrap().iter().all(|m| m.destination() != Path::new("/etc/passwd")));
        }
    }

    #[test]
    fn working_dir_user_and_annotations() {
        let (r, img) = busybox_like();
        let spec = runtime_spec(&img, r.path(), &ContainerSettings::new("c")).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.cwd(), Path::new("/srv"));
        assert_eq!((p.user().uid(), p.user().gid(), p.user().additional_gids().clone()), (0, 0, Some(vec![10])));
        let ann = spec.annotations().clone().unwrap();
        assert_eq!(ann.len(), 1);
        assert_eq!(ann["org.example.version"], "1.2");

        let settings = ContainerSettings::new("c").working_dir("/tmp").user(UserSpec::parse("www").unwrap());
        let spec = runtime_spec(&img, r.path(), &settings).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.cwd(), Path::new("/tmp"));
        assert_eq!((p.user().uid(), p.user().gid(), p.user().additional_gids().clone()), (33, 33, None));
        assert!(env(&spec).contains(&"HOME=/var/www".to_string()));

        // The image's USER, by name; unknown names are errors naming them.
        let img2 = image(serde_json::json!({"Cmd": ["x"], "User": "www:wheel"}));
        let u = runtime_spec(&img2, r.path(), &ContainerSettings::new("c")).unwrap().process().clone().unwrap();
        assert_eq!((u.user().uid(), u.user().gid()), (33, 10));
        let img3 = image(serde_json::json!({"Cmd": ["x"], "User": "ghost"}));
        let e = runtime_spec(&img3, r.path(), &ContainerSettings::new("c")).unwrap_err().to_string();
        assert!(e.contains("ghost"), "{e}");
        // Single-id mappings get no supplementary groups.
        let spec = runtime_spec(&img, r.path(), &ContainerSettings::new("c").user_namespace(UserNamespace::InheritedSingleId)).unwrap();
        assert_eq!(spec.process().as_ref().unwrap().user().additional_gids(), &None);

        assert!(runtime_spec(&img, r.path(), &ContainerSettings::new("c").working_dir("rel")).is_err());
        for escaping in ["/a/../../etc", "/..", "/x/../.."] {
            assert!(runtime_spec(&img, r.path(), &ContainerSettings::new("c").working_dir(escaping)).is_err(), "{escaping}");
        }
        assert!(runtime_spec(&img, r.path(), &ContainerSettings::new("c").working_dir("/a/../etc")).is_ok());
        for h in ["", "a/b", "a b", &"x".repeat(65)] {
            assert!(runtime_spec(&img, r.path(), &ContainerSettings::new(h)).is_err(), "{h:?}");
        }
    }

    #[test]
    fn security_defaults() {
        let (r, img) = busybox_like();
        let spec = runtime_spec(&img, r.path(), &ContainerSettings::new("c")).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.no_new_privileges(), Some(true));
        let caps = p.capabilities().as_ref().unwrap();
        assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
        assert_eq!(caps.bounding(), caps.effective());
        assert_eq!(caps.bounding(), caps.permitted());
        assert!(caps.inheritable().as_ref().unwrap().is_empty());
        assert!(caps.ambient().is_none());
        assert!(!caps.bounding().as_ref().unwrap().contains(&Capability::SysAdmin));
        let nofile = &p.rlimits().as_ref().unwrap()[0];
        let (_, host_hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((nofile.soft(), nofile.hard()), (host_hard.min(DEFAULT_NOFILE), host_hard.min(DEFAULT_NOFILE)));

        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.devices().is_none() && linux.resources().is_none());
        assert_eq!(linux.masked_paths().as_ref().unwrap().len(), MASKED_PATHS.len());
        assert!(linux.readonly_paths().as_ref().unwrap().contains(&"/proc/sys".to_string()));
        let ns: Vec<_> = linux.namespaces().as_ref().unwrap().iter().map(|n| n.typ()).collect();
        use LinuxNamespaceType::*;
        assert_eq!(ns, [Pid, Network, Ipc, Uts, Mount, Cgroup]);
        assert!(linux.seccomp().is_some());
        assert_eq!(spec.hostname().as_deref(), Some("c"));

        let dests: Vec<_> = spec.mounts().as_ref().unwrap().iter().map(|m| m.destination().to_str().unwrap().to_string()).collect();
        assert_eq!(dests, ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"]);
    }

    fn mount_of<'a>(spec: &'a Spec, dest: &str) -> &'a Mount {
        spec.mounts().as_ref().unwrap().iter().find(|m| m.destination() == Path::new(dest)).unwrap()
    }

    #[test]
    fn mappings_network_and_mount_variants() {
        let (r, img) = busybox_like();
        let has = |m: &Mount, o: &str| m.options().as_ref().unwrap().iter().any(|x| x == o);

        let spec = runtime_spec(&img, r.path(), &ContainerSettings::new("c")).unwrap();
        assert!(has(mount_of(&spec, "/dev/pts"), "gid=5"));
        assert_eq!(mount_of(&spec, "/sys").typ().as_deref(), Some("sysfs"));

        let spec = runtime_spec(&img, r.path(), &ContainerSettings::new("c").user_namespace(UserNamespace::rootless_self()).host_network(true)).unwrap();
        assert!(!has(mount_of(&spec, "/dev/pts"), "gid=5"));
        let sys = mount_of(&spec, "/sys");
        assert!(has(sys, "rbind") && has(sys, "ro"));
        let linux = spec.linux().as_ref().unwrap();
        let ns: Vec<_> = linux.namespaces().as_ref().unwrap().iter().map(|n| n.typ()).collect();
        assert!(ns.contains(&LinuxNamespaceType::User) && !ns.contains(&LinuxNamespaceType::Network));
        assert_eq!(linux.uid_mappings().as_ref().unwrap()[0].host_id(), nix::unistd::geteuid().as_raw());
        // A single gid: no supplementary groups.
        assert_eq!(spec.process().as_ref().unwrap().user().additional_gids(), &None);

        // A full mapping keeps gid=5 and the groups it covers.
        let full = UserNamespace::Private { uid: vec![id_map(0, 1000, 1), id_map(1, 100000, 65536)], gid: vec![id_map(0, 1000, 1), id_map(1, 100000, 65536)] };
        let spec = runtime_spec(&img, r.path(), &ContainerSettings::new("c").user_namespace(full)).unwrap();
        assert!(has(mount_of(&spec, "/dev/pts"), "gid=5"));
        assert_eq!(spec.process().as_ref().unwrap().user().additional_gids(), &Some(vec![10]));

        // An extra mount replaces a default at the same place.
        let mut shm = Mount::default();
        shm.set_destination("/dev/shm".into());
        shm.set_typ(Some("tmpfs".into()));
        shm.set_options(Some(vec!["size=1g".into()]));
        let spec = runtime_spec(&img, r.path(), &ContainerSettings::new("c").mount(shm.clone())).unwrap();
        assert_eq!(mount_of(&spec, "/dev/shm"), &shm);
        assert_eq!(spec.mounts().as_ref().unwrap().len(), 6);
    }

    #[test]
    fn namespace_helpers() {
        let (r, img) = busybox_like();
        let mut spec = runtime_spec(&img, r.path(), &ContainerSettings::new("c")).unwrap();
        remove_namespace(&mut spec, LinuxNamespaceType::Uts);
        set_namespace(&mut spec, LinuxNamespaceType::Network, Some("/run/netns/pod".into()));
        set_namespace(&mut spec, LinuxNamespaceType::Time, None);
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(!ns.iter().any(|n| n.typ() == LinuxNamespaceType::Uts));
        let net = ns.iter().find(|n| n.typ() == LinuxNamespaceType::Network).unwrap();
        assert_eq!(net.path().as_deref(), Some(Path::new("/run/netns/pod")));
        assert_eq!(ns.iter().filter(|n| n.typ() == LinuxNamespaceType::Network).count(), 1);
        assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Time));
    }

    #[test]
    fn config_json_round_trips_and_is_atomic() {
        let (r, img) = busybox_like();
        let settings = ContainerSettings::new("c").command(vec!["x".into()]).user(UserSpec::ids(5, Some(5)));
        let spec = runtime_spec(&img, r.path(), &settings).unwrap();
        let bundle = tempfile::tempdir().unwrap();
        crate::bundle::write_config(bundle.path(), &spec).unwrap();
        let back = Spec::load(bundle.path().join("config.json")).unwrap();
        assert_eq!(back, spec);
        let names: Vec<_> = fs::read_dir(bundle.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["config.json"]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(bundle.path().join("config.json")).unwrap().permissions().mode() & 0o777, 0o600);
        // Into a missing directory: an error, nothing left behind.
        assert!(crate::bundle::write_config(&bundle.path().join("missing"), &spec).is_err());
    }
}
