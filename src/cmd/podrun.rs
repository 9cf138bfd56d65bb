//! `berth run IMAGE` and `berth run --pod FILE`: a [`Pod`] becomes a
//! [`PodPlan`] of prepared bundles (images pulled, layers unpacked into the
//! cache, one `config.json` per container), which the runtime then runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::provision::{Fetch, Provision};
use super::run::{RootfsMode, RunArgs};
use crate::bundle::{self, ContainerSettings, UserSpec};
use crate::cli::Global;
use crate::pod::{self, Container, Pod, VolumeSource};
use crate::runtime::{self, BindMount, PlannedContainer, PodDir, PodPlan, Role, RootfsSource};
use crate::store::Image;

/// Reads the pod from `--pod FILE` or builds it from the shorthand options.
pub fn pod_from_args(a: &RunArgs) -> anyhow::Result<Pod> {
    let network = match a.network.as_str() {
        "private" => pod::Network::Private,
        "host" => pod::Network::Host,
        other => anyhow::bail!("--network {other:?}: expected private or host"),
    };
    let mut pod = if let Some(file) = &a.pod {
        let mut pod = pod::kube::from_file(file)?;
        if let Some(name) = &a.name {
            pod.name = name.clone();
        }
        if let Some(main) = &a.main {
            pod.select_main(main)?;
        }
        if network == pod::Network::Host {
            pod.network = network;
        }
        pod
    } else {
        let image = a.image.clone().context("an IMAGE or --pod FILE is needed")?;
        pod::shorthand::from_args(&pod::shorthand::ShorthandArgs {
            image,
            command: a.command.clone(),
            name: a.name.clone(),
            main: a.main.clone(),
            sidecars: a.sidecar.clone(),
            sidecar_cmds: a.sidecar_cmd.clone(),
            env: a.env.clone(),
            workdir: a.workdir.clone(),
            tty: a.tty,
            network,
        })?
    };
    if a.memory.is_some() || a.cpus.is_some() {
        let main = pod.main_container_mut().context("the pod has no main container")?;
        main.limits.memory_bytes = a.memory.or(main.limits.memory_bytes);
        main.limits.cpu_millis = a.cpus.or(main.limits.cpu_millis);
    }
    if a.pod.is_some() && (!a.env.is_empty() || a.workdir.is_some()) {
        let main = pod.main_container_mut().context("the pod has no main container")?;
        for kv in &a.env {
            let (k, v) = kv.split_once('=').with_context(|| format!("-e {kv:?}: expected K=V"))?;
            main.env.push((k.to_string(), v.to_string()));
        }
        if let Some(w) = &a.workdir {
            main.working_dir = Some(w.clone());
        }
    }
    pod.validate()?;
    Ok(pod)
}

/// Runs `pod`: provisioning errors are `Err` (exit 125), the main
/// container's status is `Ok`.
pub fn run_pod(g: &Global, a: &RunArgs, pod: Pod) -> anyhow::Result<u8> {
    let paths = g.paths();
    crate::paths::Paths::ensure_private_dir(&paths.run_root)
        .with_context(|| format!("creating {}", paths.run_root.display()))?;

    let prov = Provision::open(g, false)?;
    let all: Vec<&Container> = pod.init_containers.iter().chain(&pod.containers).collect();
    let mut refs: Vec<String> = all.iter().map(|c| c.image.clone()).collect();
    refs.dedup();
    refs.sort();
    refs.dedup();
    let fetch = Fetch { platform: a.platform.clone(), tls_verify: a.tls_verify, quiet: false };
    let images: HashMap<String, Image> = refs.iter().cloned().zip(prov.images(&refs, &fetch)?).collect();
    let mut layers: HashMap<String, Vec<PathBuf>> = HashMap::new();
    for (r, image) in &images {
        layers.insert(r.clone(), prov.layers(image)?);
    }

    let dir = PodDir::create(&paths.run_root, &pod.name)?;
    let result = plan_and_launch(g, a, &pod, &prov, &images, &layers, &dir, &paths.run_root);
    if result.is_err() && !a.keep {
        let _ = dir.remove();
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn plan_and_launch(
    g: &Global,
    a: &RunArgs,
    pod: &Pod,
    prov: &Provision,
    images: &HashMap<String, Image>,
    layers: &HashMap<String, Vec<PathBuf>>,
    dir: &PodDir,
    run_root: &Path,
) -> anyhow::Result<u8> {
    let (workspace, own_workspace) = match &a.workspace {
        Some(w) => {
            let w = std::path::absolute(w).unwrap_or(w.clone());
            anyhow::ensure!(w.is_dir(), "workspace {} is not a directory", w.display());
            (w, false)
        }
        None => {
            let w = run_root.join("workspaces").join(&pod.name);
            std::fs::create_dir_all(&w).with_context(|| format!("creating workspace {}", w.display()))?;
            (w, true)
        }
    };

    let mut volumes: HashMap<&str, PathBuf> = HashMap::new();
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
        };
        volumes.insert(&v.name, path);
    }

    let single_id = !prov.mapping.is_full();
    let mut containers = Vec::new();
    let roles = pod
        .init_containers
        .iter()
        .map(|c| (c, Role::Init))
        .chain(pod.containers.iter().enumerate().filter(|(i, _)| *i != pod.main).map(|(_, c)| (c, Role::Sidecar)))
        .chain(std::iter::once((&pod.containers[pod.main], Role::Main)));
    for (c, role) in roles {
        let image = &images[&c.image];
        let lowers = &layers[&c.image];
        let spec_dir = dir.dir.join("specs").join(&c.name);
        std::fs::create_dir_all(&spec_dir).with_context(|| format!("creating {}", spec_dir.display()))?;
        // Only the main container gets a terminal (the pod file parser
        // warns about the others).
        let tty = role == Role::Main && c.tty;
        let settings = settings_for(c, &pod.name, pod.network, single_id)?.terminal(tty);
        let spec = bundle::runtime_spec(&image.config, &user_db_root(lowers), &settings)
            .with_context(|| format!("container {}", c.name))?;
        bundle::write_pod_config(&spec_dir, &spec)?;
        let rootfs = match a.rootfs {
            RootfsMode::Copy => RootfsSource::Copy { layers: lowers.clone() },
            mode => {
                let rw = dir.dir.join("rw").join(&c.name);
                let (upper, work) = (rw.join("upper"), rw.join("work"));
                for d in [&upper, &work] {
                    std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                }
                // overlayfs wants the top layer first.
                let lowers = lowers.iter().rev().cloned().collect();
                RootfsSource::Overlay { lowers, upper, work, fallback: mode == RootfsMode::Auto }
            }
        };
        // A volume mounted where the workspace goes *is* the workspace (so a
        // pod file that also runs on Kubernetes can declare it): berth's
        // workspace bind takes its place.
        let mounts = c
            .volume_mounts
            .iter()
            .filter(|m| m.mount_path.trim_end_matches('/') != a.workspace_path.trim_end_matches('/'))
            .map(|m| BindMount { source: volumes[m.name.as_str()].clone(), destination: m.mount_path.clone(), read_only: m.read_only })
            .collect();
        containers.push(PlannedContainer {
            name: c.name.clone(),
            role,
            bundle: spec_dir,
            rootfs,
            command: None,
            readiness: c.readiness.as_ref().map(Into::into),
            limits: (&c.limits).into(),
            mounts,
            tty,
        });
    }

    let plan = PodPlan {
        name: pod.name.clone(),
        containers,
        workspace: workspace.clone(),
        workspace_path: a.workspace_path.clone(),
        network: pod.network.into(),
        share_pid: pod.share_process_namespace,
        extra_hosts: Vec::new(),
        // --grace given explicitly wins over the pod file's.
        grace: std::time::Duration::from_secs(a.grace.or(pod.grace_seconds).unwrap_or(super::run::DEFAULT_GRACE)),
        quiet_sidecars: a.quiet_sidecars,
        pids_limit: a.pids_limit,
    };
    let opts = runtime::LaunchOptions { mapping: &prov.mapping, verbose: g.verbose, keep_state: a.keep };
    let result = runtime::launch(&plan, dir, &opts);
    if own_workspace && !a.keep {
        if let Err(e) = runtime::cleanup::remove_tree(&workspace) {
            tracing::warn!("removing workspace {}: {e}", workspace.display());
        }
    }
    Ok(result?)
}

/// The container's settings on top of its image's config.
fn settings_for(c: &Container, pod: &str, network: pod::Network, single_id: bool) -> anyhow::Result<ContainerSettings> {
    let mut s = ContainerSettings::new(pod)
        .network(match network {
            pod::Network::Private => bundle::Network::Private,
            pod::Network::Host => bundle::Network::Host,
        })
        .id_mapping(if single_id { bundle::IdMapping::InheritedSingleId } else { bundle::IdMapping::Inherited });
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
