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
use crate::pod::{self, Container, Pod, VolumeSource};
use crate::provision::{Fetch, Provision};
use crate::runtime::{self, BindMount, ImageVolume, PlannedContainer, PodDir, PodPlan, Role, RootfsSource};
use crate::store::Image;
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
    pub userns: UsernsMode,
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
            userns: UsernsMode::Default,
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
    /// Limits of the main container.
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
    /// `K=V` for the main container (pod files only: the shorthand takes
    /// them itself).
    pub env: Vec<String>,
    pub workdir: Option<String>,
    /// `UID[:GID]` of the main container (as runAsUser/runAsGroup).
    pub user: Option<String>,
}

/// Reads and validates a pod file, with the command line's changes.
pub fn pod_from_file(file: &Path, o: &PodOverrides) -> anyhow::Result<Pod> {
    let mut pod = pod::kube::from_file(file)?;
    if let Some(name) = &o.name {
        pod.name = name.clone();
    }
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
    finish(pod, o)
}

/// Builds and validates the pod of `berth run IMAGE`.
pub fn pod_from_image(a: &pod::shorthand::ShorthandArgs, o: &PodOverrides) -> anyhow::Result<Pod> {
    finish(pod::shorthand::from_args(a)?, o)
}

fn finish(mut pod: Pod, o: &PodOverrides) -> anyhow::Result<Pod> {
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
    Ok(pod)
}

/// Runs `pod`: images from the store (pulled if missing), layers from the
/// cache. Provisioning errors are `Err` (exit 125), the main container's
/// status is `Ok`.
pub fn run_pod(paths: &Paths, pod: &Pod, s: &RunSettings) -> anyhow::Result<u8> {
    ensure_run_root(paths)?;
    let mut prov = Provision::open(paths, false, s.verbose)?;
    let volume_images = pod.volumes.iter().filter_map(|v| match &v.source {
        VolumeSource::Image { reference } => Some(reference.clone()),
        _ => None,
    });
    let mut refs: Vec<String> =
        pod.init_containers.iter().chain(&pod.containers).map(|c| c.image.clone()).chain(volume_images).collect();
    refs.sort();
    refs.dedup();
    let images: HashMap<String, Image> = refs.iter().cloned().zip(prov.images(&refs, &s.fetch)?).collect();
    if s.userns == UsernsMode::KeepId {
        use_keep_id(&mut prov, pod, &images)?;
    }
    let mut layers: HashMap<String, Vec<PathBuf>> = HashMap::new();
    for (r, image) in &images {
        layers.insert(r.clone(), prov.layers(image)?);
    }
    let dir = PodDir::create(&paths.run_root, &pod.name)?;
    let shape = PodShape {
        name: pod.name.clone(),
        network: pod.network,
        share_pid: pod.share_process_namespace,
        grace: pod.grace_seconds.map(Duration::from_secs),
    };
    launch(paths, dir, &shape, s, &prov.mapping, |dir| {
        image_containers(pod, s, &prov.mapping, &images, &layers, dir)
    })
}

/// A pod of ready OCI bundles (tests and benchmarks): no store involved.
#[derive(Debug, Clone, Default)]
pub struct BundlePod {
    pub name: Option<String>,
    pub network: pod::Network,
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
    let shape = PodShape { name, network: b.network, share_pid: false, grace: None };
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
        })
        .collect();
    launch(paths, dir, &shape, s, &mapping, |_| Ok((containers, Vec::new())))
}

/// What the plan takes from the pod besides its containers.
struct PodShape {
    name: String,
    network: pod::Network,
    share_pid: bool,
    /// The pod's own grace period (its file's), if any.
    grace: Option<Duration>,
}

/// The one path from containers to a running pod: the workspace, the plan,
/// the launch, and cleanup of whatever this run made, on every outcome.
fn launch(
    paths: &Paths,
    dir: PodDir,
    shape: &PodShape,
    s: &RunSettings,
    mapping: &IdMapping,
    containers: impl FnOnce(&PodDir) -> anyhow::Result<(Vec<PlannedContainer>, Vec<ImageVolume>)>,
) -> anyhow::Result<u8> {
    let result = workspace(paths, &shape.name, s).and_then(|(workspace, own)| {
        let result = containers(&dir).and_then(|(containers, image_volumes)| {
            let plan = PodPlan {
                name: shape.name.clone(),
                containers,
                workspace: workspace.clone(),
                workspace_path: s.workspace_path.clone(),
                network: shape.network,
                share_pid: shape.share_pid,
                extra_hosts: Vec::new(),
                // Grace given explicitly wins over the pod file's.
                grace: s.grace.or(shape.grace).unwrap_or(DEFAULT_GRACE),
                quiet_sidecars: s.quiet_sidecars,
                pids_limit: s.pids_limit,
                image_volumes,
            };
            let opts = runtime::LaunchOptions { mapping, verbose: s.verbose, keep_state: s.keep };
            Ok(runtime::launch(&plan, &dir, &opts)?)
        });
        if own && !s.keep {
            if let Err(e) = runtime::host::cleanup::remove_tree(&workspace) {
                tracing::warn!("removing workspace {}: {e}", workspace.display());
            }
        }
        result
    });
    if result.is_err() && !s.keep {
        let _ = dir.remove();
    }
    result
}

fn ensure_run_root(paths: &Paths) -> anyhow::Result<()> {
    Paths::ensure_private_dir(&paths.run_root).with_context(|| format!("creating {}", paths.run_root.display()))
}

/// The workspace directory, and whether this run made it.
fn workspace(paths: &Paths, pod: &str, s: &RunSettings) -> anyhow::Result<(PathBuf, bool)> {
    match &s.workspace {
        Some(w) => {
            let w = std::path::absolute(w).unwrap_or(w.clone());
            anyhow::ensure!(w.is_dir(), "workspace {} is not a directory", w.display());
            Ok((w, false))
        }
        None => {
            let w = paths.run_root.join("workspaces").join(pod);
            std::fs::create_dir_all(&w).with_context(|| format!("creating workspace {}", w.display()))?;
            Ok((w, true))
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
    let roles = pod
        .init_containers
        .iter()
        .map(|c| (c, Role::Init))
        .chain(pod.containers.iter().enumerate().filter(|(i, _)| *i != pod.main).map(|(_, c)| (c, Role::Sidecar)))
        .chain(std::iter::once((&pod.containers[pod.main], Role::Main)));
    let mut containers = Vec::new();
    for (c, role) in roles {
        let image = &images[&c.image];
        let lowers = &layers[&c.image];
        let spec_dir = dir.dir.join("specs").join(&c.name);
        std::fs::create_dir_all(&spec_dir).with_context(|| format!("creating {}", spec_dir.display()))?;
        // Only the main container gets a terminal (the pod file parser
        // warns about the others).
        let tty = role == Role::Main && c.tty;
        let settings = settings_for(c, &pod.name, pod.network, single_id)?
            .terminal(tty)
            .provide_user(bundle::ProvideUser { dir: spec_dir.clone(), name: invoking_user_name() });
        let spec = bundle::runtime_spec(&image.config, &user_db_root(lowers), &settings)
            .with_context(|| format!("container {}", c.name))?;
        bundle::write_pod_config(&spec_dir, &spec)?;
        let rootfs = tree_source(s.rootfs, lowers, &dir.dir.join("rw").join(&c.name))?;
        // A volume mounted where the workspace goes *is* the workspace (so a
        // pod file that also runs on Kubernetes can declare it): berth's
        // workspace bind takes its place.
        let mounts = c
            .volume_mounts
            .iter()
            .filter(|m| m.mount_path.trim_end_matches('/') != s.workspace_path.trim_end_matches('/'))
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
        });
    }
    Ok((containers, image_volumes))
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
    let spec = bundle::runtime_spec(&image.config, &user_db_root(&prov.layers(image)?), &settings)
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
