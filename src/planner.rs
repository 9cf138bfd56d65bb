//! A [`Pod`] and its images become a [`PodPlan`], which the runtime runs.
//!
//! Every entry point that runs a pod (`berth run IMAGE`, `--pod FILE`, the
//! hidden `--bundle` mode, and the modes to come) goes through [`run`]: the
//! workspace, the pod's state directory, cleanup and the plan itself are
//! made here once. Commands describe what they want with [`RunSettings`]
//! and [`PodOverrides`], plain structs with no command-line types.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::bundle::{self, ContainerSettings, UserSpec};
use crate::paths::Paths;
use crate::pod::{self, Container, Pod, PullPolicy, VolumeSource};
use crate::provision::{Fetch, Provision};
use crate::runtime::{self, BindMount, ImageVolume, PlannedContainer, PodDir, PodPlan, Role, RootfsSource};
use crate::store::Image;
use crate::unpack::cache::LayerLease;
use crate::userns::IdMapping;

/// Seconds between SIGTERM and SIGKILL when neither the settings nor the pod
/// file say.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// How each container gets its root filesystem, in the spirit of podman's
/// storage driver choice (overlay or vfs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RootfsMode {
    /// An overlay over the layer cache, else a private copy.
    #[default]
    Auto,
    /// An overlay mount over the layer cache.
    Overlay,
    /// A private copy of the layers: slower, for where overlay is not allowed.
    Copy,
}

/// Which user namespace the pod runs in (podman's `--userns`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum UsernsMode {
    /// Container uid 0 is the invoking user, 1.. its subordinate ids.
    #[default]
    Default,
    /// The main container's user is the invoking user (the subordinate ids
    /// fill the others), so the files it writes in the workspace are yours.
    KeepId,
}

/// How a pod runs, whatever it is made of.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Host directory shared by every container; `None`: a fresh one,
    /// removed when the pod ends (unless `keep`).
    pub workspace: Option<PathBuf>,
    /// Where the workspace appears in the containers.
    pub workspace_path: String,
    /// Keep the workspace and state after the pod ends.
    pub keep: bool,
    pub rootfs: RootfsMode,
    /// SIGTERM to SIGKILL at teardown; `None`: the pod file's, else
    /// [`DEFAULT_GRACE`].
    pub grace: Option<Duration>,
    /// Do not echo sidecar output to stderr.
    pub quiet_sidecars: bool,
    /// Most tasks in the whole pod.
    pub pids_limit: Option<u64>,
    /// How missing images are pulled.
    pub fetch: Fetch,
    /// berth's `-v` count, for the processes it re-executes.
    pub verbose: u8,
    /// Pass berth's proxy variables (`HTTP_PROXY`, ...) to the containers
    /// where neither the image nor the pod sets them.
    pub http_proxy: bool,
    /// The outbound network reaches the host's loopback as
    /// `host.containers.internal`.
    pub host_loopback: bool,
    pub userns: UsernsMode,
    /// Container or VM; `None`: what the pod file asks (annotation
    /// `berth.dev/isolation`), else container.
    pub isolation: Option<pod::Isolation>,
    /// How the VM is made, with [`pod::Isolation::Vm`].
    pub vm: crate::vm::host::VmSettings,
}

impl RunSettings {
    /// The isolation `pod` runs with under these settings.
    pub fn isolation_of(&self, pod: &Pod) -> pod::Isolation {
        self.isolation.unwrap_or(pod.isolation)
    }
}

impl Default for RunSettings {
    fn default() -> RunSettings {
        RunSettings {
            workspace: None,
            workspace_path: "/workspace".into(),
            keep: false,
            rootfs: RootfsMode::Auto,
            grace: None,
            quiet_sidecars: false,
            pids_limit: None,
            fetch: Fetch::default(),
            verbose: 0,
            http_proxy: true,
            host_loopback: true,
            userns: UsernsMode::Default,
            isolation: None,
            vm: Default::default(),
        }
    }
}

/// What the command line changes in a pod read from a file, or adds to one
/// built from an image.
#[derive(Debug, Clone, Default)]
pub struct PodOverrides {
    pub name: Option<String>,
    /// Which container is the main one.
    pub main: Option<String>,
    pub network: Option<pod::Network>,
    /// Host ports forwarded to the main container (`-p`).
    pub ports: Vec<pod::PortMapping>,
    /// Limits of the main container.
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
    /// `K=V` for the main container (pod files only: the shorthand takes
    /// them itself).
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// Volumes of a pod file mapped to host paths, `(NAME, PATH)`
    /// (`--volume-from`): applied while the file is read, so a secret or
    /// configMap volume mapped here is valid.
    pub volume_from: Vec<(String, PathBuf)>,
    /// `UID[:GID]` of the main container (as runAsUser/runAsGroup).
    pub user: Option<String>,
}

/// Reads and validates a pod file, with the command line's changes; its
/// warnings go to the log.
pub fn pod_from_file(file: &Path, o: &PodOverrides) -> anyhow::Result<Pod> {
    let (pod, warnings) = read_pod_file(file, o)?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    Ok(pod)
}

/// [`pod_from_file`] with the warnings returned instead of logged.
pub fn read_pod_file(file: &Path, o: &PodOverrides) -> anyhow::Result<(Pod, Vec<pod::Warning>)> {
    let opts = pod::kube::ReadOptions { name: o.name.clone(), volume_from: o.volume_from.clone() };
    let (mut pod, warnings) = pod::kube::read_file(file, &opts)?;
    if let Some(main) = &o.main {
        pod.select_main(main)?;
    }
    if let Some(network) = o.network {
        pod.network = network;
    }
    if !o.env.is_empty() || o.workdir.is_some() {
        let main = pod.main_container_mut().context("the pod has no main container")?;
        for kv in &o.env {
            let (k, v) = kv.split_once('=').with_context(|| format!("-e {kv:?}: expected K=V"))?;
            main.env.push((k.to_string(), v.to_string()));
        }
        if let Some(w) = &o.workdir {
            main.working_dir = Some(w.clone());
        }
    }
    Ok((finish(pod, o)?, warnings))
}

/// Refuses a pod with the Jenkins agent container (a template's `jnlp`
/// without an image): only `berth agent` knows what runs there.
pub fn refuse_agent(pod: &Pod) -> anyhow::Result<()> {
    match pod.containers.iter().find(|c| c.agent) {
        Some(c) => anyhow::bail!(
            "container {} is the Jenkins agent's (it has no image): run this pod file with `berth agent --pod FILE`",
            c.name
        ),
        None => Ok(()),
    }
}

/// Builds and validates the pod of `berth run IMAGE`.
pub fn pod_from_image(a: &pod::shorthand::ShorthandArgs, o: &PodOverrides) -> anyhow::Result<Pod> {
    finish(pod::shorthand::from_args(a)?, o)
}

fn finish(mut pod: Pod, o: &PodOverrides) -> anyhow::Result<Pod> {
    if !o.ports.is_empty() {
        let main = pod.main_container_mut().context("the pod has no main container")?;
        main.host_ports.extend(o.ports.iter().cloned());
    }
    if let Some(u) = &o.user {
        let bad = || anyhow::anyhow!("--user {u:?}: expected UID or UID:GID (numbers)");
        let (uid, gid) = match u.split_once(':') {
            Some((uid, gid)) => (uid, Some(gid.parse::<u32>().map_err(|_| bad())?)),
            None => (u.as_str(), None),
        };
        let main = pod.main_container_mut().context("the pod has no main container")?;
        main.run_as_user = Some(uid.parse().map_err(|_| bad())?);
        main.run_as_group = gid;
    }
    if o.memory_bytes.is_some() || o.cpu_millis.is_some() {
        let main = pod.main_container_mut().context("the pod has no main container")?;
        main.limits.memory_bytes = o.memory_bytes.or(main.limits.memory_bytes);
        main.limits.cpu_millis = o.cpu_millis.or(main.limits.cpu_millis);
    }
    pod.validate()?;
    for c in pod.init_containers.iter().chain(&pod.containers) {
        check_limits(&c.name, &c.limits)?;
    }
    Ok(pod)
}

/// Most CPUs a limit may name: NR_CPUS of distribution kernels; no host has
/// more, so a bigger limit is a typo (`1e9`).
pub const MAX_CPU_MILLIS: u64 = 8192 * 1000;

/// Most tasks a pids limit may name: the kernel's PID_MAX_LIMIT (pids.max
/// refuses more).
pub const MAX_PIDS: u64 = 4 * 1024 * 1024;

/// Limits the kernel can apply: the runtime spec holds them as i64.
fn check_limits(name: &str, l: &runtime::Limits) -> anyhow::Result<()> {
    if let Some(m) = l.cpu_millis.filter(|m| *m > MAX_CPU_MILLIS) {
        anyhow::bail!("container {name}: resources.limits.cpu of {} cores is more than {} (no host has more)", m / 1000, MAX_CPU_MILLIS / 1000);
    }
    if let Some(b) = l.memory_bytes.filter(|b| i64::try_from(*b).is_err()) {
        anyhow::bail!("container {name}: resources.limits.memory of {b} bytes is more than the kernel takes ({})", i64::MAX);
    }
    if let Some(p) = l.pids.filter(|p| *p > MAX_PIDS) {
        anyhow::bail!("container {name}: a pids limit of {p} is more than the kernel's {MAX_PIDS}");
    }
    Ok(())
}

/// Where the workspace appears: an absolute, plain path other than `/`
/// (`..` or `.` would leave the place the user named).
fn check_workspace_path(path: &str) -> anyhow::Result<()> {
    use std::path::Component;
    let p = Path::new(path);
    let plain = p.is_absolute() && !path.contains('\0') && p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    anyhow::ensure!(plain, "--workspace-path {path:?}: expected an absolute path without '.' or '..'");
    anyhow::ensure!(p.components().count() > 1, "--workspace-path {path:?}: the workspace cannot replace the container's root");
    Ok(())
}

/// The image's (or pod file's) user and groups must be mapped in the pod's
/// user namespace, or libcontainer fails at setuid with EINVAL.
fn check_ids(container: &str, spec: &oci_spec::runtime::Spec, mapping: &IdMapping) -> anyhow::Result<()> {
    let Some(user) = spec.process().as_ref().map(|p| p.user()) else { return Ok(()) };
    let name = nix::unistd::User::from_uid(nix::unistd::geteuid()).ok().flatten().map_or_else(|| "this user".to_string(), |u| u.name);
    let outside = |what: &str, id: u32, max: u32| {
        let subordinate = max;
        anyhow::anyhow!(
            "container {container}: {what} {id} is outside the ids mapped for {name} (0 to {max}: the user and {subordinate} subordinate ids); \
             add subordinate ids (/etc/sub{what}) or set another user (securityContext.runAsUser)"
        )
    };
    if mapping.host_uid(user.uid()).is_none() {
        return Err(outside("uid", user.uid(), mapping.max_uid()));
    }
    for gid in std::iter::once(user.gid()).chain(user.additional_gids().clone().unwrap_or_default()) {
        if mapping.host_gid(gid).is_none() {
            return Err(outside("gid", gid, mapping.max_gid()));
        }
    }
    Ok(())
}

/// Runs `pod`: images from the store (pulled if missing), layers from the
/// cache. Provisioning errors are `Err` (exit 125), the main container's
/// status is `Ok`.
pub fn run_pod(paths: &Paths, pod: &Pod, s: &RunSettings) -> anyhow::Result<u8> {
    run_pod_adjusted(paths, pod.clone(), s, |_, _| Ok(()))
}

/// The images of a pod, in the store, and their layers, in the cache.
pub struct Provisioned {
    images: HashMap<String, Image>,
    layers: HashMap<String, Vec<PathBuf>>,
}

impl Provisioned {
    pub fn image(&self, reference: &str) -> anyhow::Result<&Image> {
        self.images.get(reference).with_context(|| format!("image {reference} is not part of the pod"))
    }

    /// The unpacked layers of `reference`, bottom first.
    pub fn layers(&self, reference: &str) -> anyhow::Result<&[PathBuf]> {
        self.layers.get(reference).map(Vec::as_slice).with_context(|| format!("image {reference} is not part of the pod"))
    }
}

/// [`run_pod`], with `adjust` changing the pod once its images are there
/// (the agent sets its command from what it finds in an image); it may not
/// add images.
pub fn run_pod_adjusted(
    paths: &Paths,
    mut pod: Pod,
    s: &RunSettings,
    adjust: impl FnOnce(&mut Pod, &Provisioned) -> anyhow::Result<()>,
) -> anyhow::Result<u8> {
    ensure_run_root(paths)?;
    let mut prov = Provision::open(paths, false, s.verbose)?;
    let volume_images = pod.volumes.iter().filter_map(|v| match &v.source {
        VolumeSource::Image { reference } => Some(reference.clone()),
        _ => None,
    });
    let mut wanted: Vec<(String, PullPolicy)> = pod
        .init_containers
        .iter()
        .chain(&pod.containers)
        .map(|c| (c.image.clone(), c.pull_policy))
        .chain(volume_images.map(|r| (r, PullPolicy::default())))
        .collect();
    wanted.sort_by(|a, b| a.0.cmp(&b.0));
    // One image used twice is pulled once, by the stronger policy.
    wanted.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 = kept.1.merge(later.1);
        }
        same
    });
    let refs: Vec<String> = wanted.iter().map(|(r, _)| r.clone()).collect();
    // gc waits until the layers are unpacked and leased: it cannot take
    // the blobs they are unpacked from.
    let provisioning = prov.store.lock_shared()?;
    let images: HashMap<String, Image> = refs.iter().cloned().zip(prov.images_by_policy(&wanted, &s.fetch)?).collect();
    // In a VM the guest's root writes the shared workspace as the invoking
    // user already (virtiofsd runs as root of the user namespace).
    if s.userns == UsernsMode::KeepId && s.isolation_of(&pod) == pod::Isolation::Vm {
        tracing::debug!("--userns keep-id does not apply with --isolation vm");
    } else if s.userns == UsernsMode::KeepId {
        use_keep_id(&mut prov, &pod, &images)?;
    }
    let mut layers: HashMap<String, Vec<PathBuf>> = HashMap::new();
    // Held until the pod has ended: `gc` passes these layers by.
    let mut lease = LayerLease::none();
    for (r, image) in &images {
        let (dirs, held) = prov.layers(image)?;
        layers.insert(r.clone(), dirs);
        lease = lease.join(held);
    }
    let provisioned = Provisioned { images, layers };
    adjust(&mut pod, &provisioned)?;
    let Provisioned { images, layers } = provisioned;
    drop(provisioning);
    let dir = PodDir::create(&paths.run_root, &pod.name)?;
    let mut manifests: Vec<String> = images.values().map(|i| i.record.manifest.to_string()).collect();
    manifests.sort();
    manifests.dedup();
    if let Err(e) = dir.write_images(&manifests) {
        let _ = dir.remove();
        return Err(e.into());
    }
    let shape = PodShape {
        name: pod.name.clone(),
        network: pod.network,
        ports: pod.published_ports().cloned().collect(),
        share_pid: pod.share_process_namespace,
        grace: pod.grace_seconds.map(Duration::from_secs),
        isolation: s.isolation_of(&pod),
    };
    let status = launch(paths, dir, &shape, s, &prov.mapping, |dir| {
        image_containers(&pod, s, &prov.mapping, &images, &layers, dir)
    });
    drop(lease);
    status
}

/// A pod of ready OCI bundles (tests and benchmarks): no store involved.
#[derive(Debug, Clone, Default)]
pub struct BundlePod {
    pub name: Option<String>,
    pub network: pod::Network,
    /// Host ports forwarded into the pod.
    pub ports: Vec<pod::PortMapping>,
    /// Init containers (run in order), then sidecars, then the main one.
    pub containers: Vec<BundleContainer>,
}

#[derive(Debug, Clone)]
pub struct BundleContainer {
    pub name: String,
    pub role: Role,
    pub bundle: PathBuf,
    /// Replaces the bundle's `process.args`.
    pub command: Option<Vec<String>>,
    /// A TCP port on 127.0.0.1 that answers once the container is ready.
    pub ready_port: Option<u16>,
    pub limits: runtime::Limits,
    pub tty: bool,
}

/// Runs a [`BundlePod`]; statuses as [`run_pod`].
pub fn run_bundles(paths: &Paths, b: &BundlePod, s: &RunSettings) -> anyhow::Result<u8> {
    ensure_run_root(paths)?;
    anyhow::ensure!(s.userns == UsernsMode::Default, "--userns keep-id needs an image: a ready bundle's ids are fixed");
    let mapping = IdMapping::for_current_user()?;
    let name = match &b.name {
        Some(n) => {
            runtime::plan::check_label(n)?;
            n.clone()
        }
        None => pod::shorthand::generated_name(),
    };
    let dir = PodDir::create(&paths.run_root, &name)?;
    let isolation = s.isolation.unwrap_or_default();
    let shape = PodShape { name, network: b.network, ports: b.ports.clone(), share_pid: false, grace: None, isolation };
    let containers = b
        .containers
        .iter()
        .map(|c| PlannedContainer {
            name: c.name.clone(),
            role: c.role,
            bundle: std::path::absolute(&c.bundle).unwrap_or(c.bundle.clone()),
            rootfs: RootfsSource::Bundle,
            command: c.command.clone(),
            readiness: c.ready_port.map(|port| runtime::Probe {
                action: runtime::ProbeAction::Tcp(port),
                initial_delay: Duration::ZERO,
                period: Duration::from_millis(100),
                timeout: Duration::from_secs(1),
                failure_threshold: 100,
            }),
            limits: c.limits.clone(),
            mounts: Vec::new(),
            tty: c.tty,
            open_stdin: false,
        })
        .collect();
    launch(paths, dir, &shape, s, &mapping, |_| Ok((containers, Vec::new())))
}

/// What the plan takes from the pod besides its containers.
struct PodShape {
    name: String,
    network: pod::Network,
    ports: Vec<pod::PortMapping>,
    share_pid: bool,
    /// The pod's own grace period (its file's), if any.
    grace: Option<Duration>,
    isolation: pod::Isolation,
}

/// The one path from containers to a running pod: the workspace, the plan,
/// the launch, and cleanup of whatever this run made, on every outcome.
/// A pod that never started leaves nothing, `--keep` or not.
fn launch(
    paths: &Paths,
    dir: PodDir,
    shape: &PodShape,
    s: &RunSettings,
    mapping: &IdMapping,
    containers: impl FnOnce(&PodDir) -> anyhow::Result<(Vec<PlannedContainer>, Vec<ImageVolume>)>,
) -> anyhow::Result<u8> {
    let result = check_workspace_path(&s.workspace_path).and_then(|()| workspace(&dir, s)).and_then(|workspace| {
        let (containers, image_volumes) = containers(&dir)?;
        let plan = PodPlan {
            name: shape.name.clone(),
            containers,
            workspace: workspace.clone(),
            workspace_path: s.workspace_path.clone(),
            network: shape.network,
            ports: shape.ports.clone(),
            host_loopback: s.host_loopback,
            share_pid: shape.share_pid,
            extra_hosts: Vec::new(),
            // Grace given explicitly wins over the pod file's.
            grace: s.grace.or(shape.grace).unwrap_or(DEFAULT_GRACE),
            quiet_sidecars: s.quiet_sidecars,
            pids_limit: s.pids_limit,
            image_volumes,
        };
        let status = match shape.isolation {
            pod::Isolation::Container => {
                let opts = runtime::LaunchOptions { mapping, verbose: s.verbose, keep_state: s.keep };
                runtime::launch(&plan, &dir, &opts)?
            }
            pod::Isolation::Vm => {
                let l = crate::vm::host::VmLaunch { paths, mapping, verbose: s.verbose, share_workspace: s.workspace.is_some() || s.keep };
                let status = crate::vm::host::launch(&plan, &dir, &l, &s.vm)?;
                // The runtime's own cleanup, for the host's side of the VM.
                if s.keep {
                    dir.mark_kept()?;
                } else if let Err(e) = dir.remove() {
                    tracing::warn!("removing pod state {}: {}", dir.dir.display(), runtime::error_chain(&e));
                }
                status
            }
        };
        if s.keep && s.workspace.is_none() {
            crate::exit::say(&format!("berth: kept the workspace of pod {} in {} (`berth rm {}` removes it)", shape.name, workspace.display(), shape.name));
        }
        Ok(status)
    });
    // On success the runtime removed the state (with the workspace) unless
    // kept.
    if result.is_err() {
        if let Err(e) = dir.remove() {
            tracing::warn!("removing pod state {}: {}", dir.dir.display(), runtime::error_chain(&e));
        }
    }
    result
}

fn ensure_run_root(paths: &Paths) -> anyhow::Result<()> {
    Paths::ensure_private_dir(&paths.run_root).with_context(|| format!("creating {}", paths.run_root.display()))
}

/// The workspace directory: the one given, or a fresh, empty one in the
/// pod's state directory, which goes with the pod.
fn workspace(dir: &PodDir, s: &RunSettings) -> anyhow::Result<PathBuf> {
    match &s.workspace {
        Some(w) => {
            let w = std::path::absolute(w).unwrap_or(w.clone());
            anyhow::ensure!(w.is_dir(), "workspace {} is not a directory", w.display());
            Ok(w)
        }
        None => {
            let w = dir.workspace();
            std::fs::create_dir(&w).with_context(|| format!("creating workspace {}", w.display()))?;
            Ok(w)
        }
    }
}

/// One planned container per pod container, in the plan's order: init
/// containers, sidecars, then main; each with its `config.json` written.
/// Also the image volumes they mount.
fn image_containers(
    pod: &Pod,
    s: &RunSettings,
    mapping: &IdMapping,
    images: &HashMap<String, Image>,
    layers: &HashMap<String, Vec<PathBuf>>,
    dir: &PodDir,
) -> anyhow::Result<(Vec<PlannedContainer>, Vec<ImageVolume>)> {
    let mut volumes: HashMap<&str, PathBuf> = HashMap::new();
    let mut image_volumes = Vec::new();
    for v in &pod.volumes {
        let path = match &v.source {
            VolumeSource::EmptyDir => {
                let p = dir.dir.join("volumes").join(&v.name);
                std::fs::create_dir_all(&p).with_context(|| format!("creating volume {}", p.display()))?;
                p
            }
            VolumeSource::HostPath(p) => {
                anyhow::ensure!(p.exists(), "volume {}: hostPath {} does not exist", v.name, p.display());
                p.clone()
            }
            VolumeSource::Image { reference } => {
                let base = dir.dir.join("images").join(&v.name);
                let tree = tree_source(s.rootfs, &layers[reference], &base)?;
                let path = base.join("tree");
                std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
                image_volumes.push(ImageVolume { name: v.name.clone(), tree, path: path.clone() });
                path
            }
        };
        volumes.insert(&v.name, path);
    }

    let single_id = !mapping.is_full();
    let proxy = if s.http_proxy { proxy_env(std::env::vars(), pod.network) } else { Vec::new() };
    let mut containers = Vec::new();
    for (c, role) in roles(pod) {
        let image = &images[&c.image];
        let lowers = &layers[&c.image];
        let spec_dir = dir.dir.join("specs").join(&c.name);
        std::fs::create_dir_all(&spec_dir).with_context(|| format!("creating {}", spec_dir.display()))?;
        // Only the main container gets a terminal (the pod file parser
        // warns about the others).
        let tty = role == Role::Main && c.tty;
        let mut settings = settings_for(c, &pod.name, pod.network, single_id)?.terminal(tty).provide_user(bundle::ProvideUser { dir: spec_dir.clone(), name: invoking_user_name() });
        let image_env = image.config.config().as_ref().and_then(|cfg| cfg.env().clone()).unwrap_or_default();
        let set = |k: &str| c.env.iter().any(|(ck, _)| ck == k) || image_env.iter().any(|e| e.split_once('=').is_some_and(|(ik, _)| ik == k));
        for (k, v) in proxy.iter().filter(|(k, _)| !set(k)) {
            settings = settings.env(k.clone(), v.clone());
        }
        let spec = bundle::runtime_spec(&image.config, &user_db_root(lowers), &settings)
            .with_context(|| format!("container {}", c.name))?;
        check_ids(&c.name, &spec, mapping)?;
        bundle::write_pod_config(&spec_dir, &spec)?;
        let rootfs = tree_source(s.rootfs, lowers, &dir.dir.join("rw").join(&c.name))?;
        // A volume mounted where the workspace goes *is* the workspace (so a
        // pod file that also runs on Kubernetes can declare it): berth's
        // workspace bind takes its place.
        let mounts = volume_mounts(c, &s.workspace_path)
            .map(|m| BindMount {
                source: volumes[m.name.as_str()].clone(),
                destination: m.mount_path.clone(),
                // An image's tree is never written through a volume.
                read_only: m.read_only || image_volumes.iter().any(|v: &ImageVolume| v.name == m.name),
            })
            .collect();
        containers.push(PlannedContainer {
            name: c.name.clone(),
            role,
            bundle: spec_dir,
            rootfs,
            command: None,
            readiness: c.readiness.clone(),
            limits: c.limits.clone(),
            mounts,
            tty,
            // A terminal keeps a sidecar's `cat` waiting; an open pipe does too.
            open_stdin: role != Role::Main && c.tty,
        });
    }
    Ok((containers, image_volumes))
}

/// The pod's containers in the plan's order, with their roles: init
/// containers in turn (a native sidecar among them as a sidecar started in
/// its place), the other sidecars, then the main container.
pub fn roles(pod: &Pod) -> Vec<(&Container, Role)> {
    pod.init_containers
        .iter()
        .map(|c| (c, if c.sidecar { Role::Sidecar } else { Role::Init }))
        .chain(pod.containers.iter().enumerate().filter(|(i, _)| *i != pod.main).map(|(_, c)| (c, Role::Sidecar)))
        .chain(pod.containers.get(pod.main).map(|c| (c, Role::Main)))
        .collect()
}

/// A container's volume mounts besides the workspace. A volume mounted
/// where the workspace goes *is* the workspace (so a pod file that also
/// runs on Kubernetes can declare it): berth's workspace bind takes its place.
fn volume_mounts<'c>(c: &'c Container, workspace_path: &'c str) -> impl Iterator<Item = &'c pod::VolumeMount> {
    c.volume_mounts.iter().filter(move |m| m.mount_path.trim_end_matches('/') != workspace_path.trim_end_matches('/'))
}

/// What a pod would run, made without images or any change on disk: what
/// `berth check` and `berth run --dry-run` print.
#[derive(Debug, Clone)]
pub struct PlanDescription {
    pub name: String,
    pub isolation: pod::Isolation,
    pub network: pod::Network,
    pub workspace: String,
    pub grace: Duration,
    /// In start order.
    pub containers: Vec<DescribedContainer>,
    pub volumes: Vec<(String, String)>,
    pub warnings: Vec<pod::Warning>,
}

#[derive(Debug, Clone)]
pub struct DescribedContainer {
    pub name: String,
    pub role: Role,
    /// The Jenkins agent's container: its image comes from `berth agent`.
    pub agent: bool,
    /// A native sidecar (an init container that keeps running).
    pub native_sidecar: bool,
    pub image: String,
    pub pull_policy: PullPolicy,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    /// As the container gets it (`fieldRef`s and `$(VAR)`s resolved).
    pub env: Vec<(String, String)>,
    /// (where in the container, volume name, read-only)
    pub mounts: Vec<(String, String, bool)>,
    pub readiness: Option<pod::ProbeAction>,
    pub tty: bool,
}

/// Describes the plan of a valid `pod` under settings `s`.
pub fn describe(pod: &Pod, s: &RunSettings, warnings: Vec<pod::Warning>) -> PlanDescription {
    let containers = roles(pod)
        .into_iter()
        .map(|(c, role)| DescribedContainer {
            name: c.name.clone(),
            role,
            agent: c.agent,
            native_sidecar: c.sidecar,
            image: c.image.clone(),
            pull_policy: c.pull_policy,
            command: c.command.clone(),
            args: c.args.clone(),
            env: c.env.clone(),
            mounts: volume_mounts(c, &s.workspace_path).map(|m| (m.mount_path.clone(), m.name.clone(), m.read_only)).collect(),
            readiness: c.readiness.as_ref().map(|p| p.action.clone()),
            tty: role == Role::Main && c.tty,
        })
        .collect();
    let volumes = pod
        .volumes
        .iter()
        .map(|v| {
            let what = match &v.source {
                VolumeSource::EmptyDir => "emptyDir".to_string(),
                VolumeSource::HostPath(p) => format!("hostPath {}", p.display()),
                VolumeSource::Image { reference } => format!("image {reference}"),
            };
            (v.name.clone(), what)
        })
        .collect();
    PlanDescription {
        name: pod.name.clone(),
        isolation: s.isolation_of(pod),
        network: pod.network,
        workspace: s.workspace_path.clone(),
        grace: s.grace.or(pod.grace_seconds.map(Duration::from_secs)).unwrap_or(DEFAULT_GRACE),
        containers,
        volumes,
        warnings,
    }
}

/// How the cached layers `lowers` (bottom first) become a tree: an overlay
/// with its upper and work directories under `rw`, or a private copy.
fn tree_source(mode: RootfsMode, lowers: &[PathBuf], rw: &Path) -> anyhow::Result<RootfsSource> {
    if mode == RootfsMode::Copy {
        return Ok(RootfsSource::Copy { layers: lowers.to_vec() });
    }
    let (upper, work) = (rw.join("upper"), rw.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // overlayfs wants the top layer first.
    let lowers = lowers.iter().rev().cloned().collect();
    Ok(RootfsSource::Overlay { lowers, upper, work, fallback: mode == RootfsMode::Auto })
}

/// The proxy variables podman passes (both spellings), from `vars`. On the
/// outbound network a proxy on the host's loopback is reached through
/// `host.containers.internal`: `localhost` and `127.0.0.1` are rewritten.
fn proxy_env(vars: impl Iterator<Item = (String, String)>, network: pod::Network) -> Vec<(String, String)> {
    const NAMES: [&str; 4] = ["HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY"];
    vars.filter(|(k, _)| NAMES.contains(&k.to_ascii_uppercase().as_str()))
        .map(|(k, v)| {
            if network != pod::Network::Outbound || k.eq_ignore_ascii_case("NO_PROXY") {
                return (k, v);
            }
            let host = crate::net::HOST_NAME;
            let mut v = ["localhost", "127.0.0.1"].iter().fold(v, |v, lo| {
                v.replace(&format!("://{lo}:"), &format!("://{host}:")).replace(&format!("://{lo}/"), &format!("://{host}/"))
            });
            for lo in ["localhost", "127.0.0.1"] {
                if let Some(scheme) = v.strip_suffix(&format!("://{lo}")) {
                    v = format!("{scheme}://{host}");
                }
            }
            (k, v)
        })
        .collect()
}

/// The container's settings on top of its image's config.
fn settings_for(c: &Container, pod: &str, network: pod::Network, single_id: bool) -> anyhow::Result<ContainerSettings> {
    let mut s = ContainerSettings::new(pod)
        .host_network(network == pod::Network::Host)
        .user_namespace(if single_id { bundle::UserNamespace::InheritedSingleId } else { bundle::UserNamespace::Inherited });
    if let Some(cmd) = &c.command {
        s = s.command(cmd.clone());
    }
    if let Some(args) = &c.args {
        s = s.args(args.clone());
    }
    for (k, v) in &c.env {
        s = s.env(k.clone(), v.clone());
    }
    if let Some(w) = &c.working_dir {
        s = s.working_dir(w.clone());
    }
    match (c.run_as_user, c.run_as_group) {
        (Some(uid), gid) => s = s.user(UserSpec::ids(uid, gid)),
        (None, Some(_)) => anyhow::bail!("container {}: runAsGroup needs runAsUser", c.name),
        (None, None) => {}
    }
    Ok(s)
}

/// Where to read the image's `/etc/passwd` and `/etc/group` from before
/// the layers are mounted: the topmost layer that has `etc/passwd` (a
/// whiteout there, or none at all, means the top layer, where it is absent).
/// Reads are resolved in-root by the bundle stage.
fn user_db_root(lowers: &[PathBuf]) -> PathBuf {
    use std::os::unix::fs::FileTypeExt;
    for l in lowers.iter().rev() {
        match std::fs::symlink_metadata(l.join("etc/passwd")) {
            Ok(m) if m.file_type().is_char_device() => break,
            Ok(_) => return l.clone(),
            Err(_) => {
                if std::fs::symlink_metadata(l.join("etc")).map(|m| m.file_type().is_char_device()).unwrap_or(false) {
                    break;
                }
            }
        }
    }
    lowers.last().cloned().unwrap_or_default()
}

/// `--userns keep-id`: resolves the main container's user and gid against
/// its image (layers of the default mapping, which most often are cached
/// already) and switches `prov` to the mapping that makes them the invoking
/// user's. Every image of the pod then unpacks once more for that mapping
/// (the cache is keyed by it): the cost of a new uid.
fn use_keep_id(prov: &mut Provision, pod: &Pod, images: &HashMap<String, Image>) -> anyhow::Result<()> {
    let main = &pod.containers[pod.main];
    let image = &images[&main.image];
    let settings = settings_for(main, &pod.name, pod.network, !prov.mapping.is_full())?;
    let spec = bundle::runtime_spec(&image.config, &user_db_root(&prov.layers(image)?.0), &settings)
        .with_context(|| format!("container {}", main.name))?;
    let user = spec.process().as_ref().map(|p| (p.user().uid(), p.user().gid())).unwrap_or_default();
    if user == (0, 0) {
        return Ok(()); // the default mapping is keep-id of root
    }
    let mapping = IdMapping::keep_id_for_current_user(user.0, user.1)?;
    tracing::debug!(uid = user.0, gid = user.1, ?mapping, "keep-id");
    prov.use_mapping(mapping).with_context(|| format!("--userns keep-id for uid {}", user.0))
}

/// The name a provided passwd entry takes: the invoking user's.
fn invoking_user_name() -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::current())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "berth".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_variables_are_picked_and_host_loopback_rewritten() {
        let vars = [("HTTP_PROXY", "http://127.0.0.1:3128"), ("https_proxy", "http://localhost"), ("NO_PROXY", "localhost"), ("PATH", "/bin")]
            .map(|(k, v)| (k.to_string(), v.to_string()));
        let got = proxy_env(vars.clone().into_iter(), pod::Network::Outbound);
        let want = [("HTTP_PROXY", "http://host.containers.internal:3128"), ("https_proxy", "http://host.containers.internal"), ("NO_PROXY", "localhost")]
            .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(got, want);
        let host = proxy_env(vars.into_iter(), pod::Network::Host);
        assert_eq!(host[0].1, "http://127.0.0.1:3128", "the host's loopback is the pod's there");
    }
}
