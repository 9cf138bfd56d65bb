//! The pod plan as the guest sees it.
//!
//! The host plans a pod exactly as for container mode, with host paths.
//! [`GuestStart::translate`] moves it into the guest's path space: the
//! pod's state directory is mirrored under [`GUEST_POD`] (its spec files
//! travel in the start frame, its volume directories are made empty), each
//! image's layers become one read-only disk mounted under [`GUEST_IMAGES`],
//! and the workspace is [`GUEST_WORKSPACE`]. Nothing else of the host is
//! named: a plan that needs another host path (a `hostPath` volume) is
//! refused, since the guest must see nothing of the host beyond the
//! workspace.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::runtime::plan::{BindMount, PodPlan, RootfsSource};
use crate::runtime::Network;

/// The host's pod state directory, mirrored.
pub const GUEST_POD: &str = "/run/berth/pod";
/// Image disks, one directory per disk.
pub const GUEST_IMAGES: &str = "/run/berth/images";
/// The workspace (virtio-fs, or a tmpfs directory when not shared).
pub const GUEST_WORKSPACE: &str = "/run/berth/workspace";
/// Read-only host files a volume names, copied in.
pub const GUEST_FILES: &str = "/run/berth/files";
/// The largest host file a volume may copy into the guest.
const MAX_COPIED_FILE: u64 = 64 << 20;
/// The guest's own run root (the pod process's state).
pub const GUEST_RUN_ROOT: &str = "/run/berth/state";

/// Everything the guest needs to run the pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestStart {
    pub plan: PodPlan,
    /// Files to write before the pod starts (spec files).
    pub files: Vec<GuestFile>,
    /// Empty directories to make (volumes, overlay upper and work dirs).
    pub dirs: Vec<PathBuf>,
    pub disks: Vec<GuestDisk>,
    /// The workspace is the virtio-fs share with this tag; `None`: a
    /// directory of the guest's memory.
    pub workspace_tag: Option<String>,
    /// Bring up the NIC (QEMU's user-mode network).
    pub network: bool,
    pub verbose: u8,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestFile {
    pub path: PathBuf,
    /// Base64 of the contents.
    pub data: String,
}

/// A read-only disk: found in the guest by its serial, mounted at `mount`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestDisk {
    pub serial: String,
    pub mount: PathBuf,
}

impl GuestFile {
    pub fn contents(&self) -> Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD.decode(&self.data)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    #[error("{what} {path} is outside the pod: with --isolation vm the guest sees nothing of the host but the workspace")]
    HostPath { what: String, path: PathBuf },
    #[error("container {0}: only pods of images run in a VM (its rootfs is a ready directory)")]
    ReadyRootfs(String),
    #[error("container {0}: a terminal (-t) is not available with --isolation vm")]
    Terminal(String),
    #[error("reading {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a runtime spec")]
    Spec { path: PathBuf, source: serde_json::Error },
}

/// The disk serial for image `k`.
pub fn disk_serial(k: usize) -> String {
    format!("berth-img{k}")
}

/// What the host must provide for a [`GuestStart`]: the images to flatten,
/// in disk order, each as its cached layers (bottom first).
pub type ImageLayers = Vec<Vec<PathBuf>>;

impl GuestStart {
    /// The guest's view of `plan`, whose state lives in `state_dir` on the
    /// host. `share_workspace`: the workspace is the host's (virtio-fs).
    pub fn translate(plan: &PodPlan, state_dir: &Path, share_workspace: bool, network: bool, verbose: u8) -> Result<(GuestStart, ImageLayers), TranslateError> {
        let mut t = Translator { state_dir, images: BTreeMap::new(), files: Vec::new(), dirs: Vec::new() };
        let mut guest = plan.clone();
        guest.workspace = PathBuf::from(GUEST_WORKSPACE);
        // Inside, the VM's own network is the pod's: its NIC when the pod
        // asked for outbound access, else loopback only.
        guest.network = if network { Network::Host } else { Network::None };
        guest.ports = Vec::new();
        if network && plan.host_loopback {
            guest.extra_hosts.push((crate::vm::qemu::HOST_LOOPBACK.to_string(), vec![crate::net::HOST_NAME.to_string()]));
        }
        guest.host_loopback = false;
        for c in &mut guest.containers {
            if c.tty {
                return Err(TranslateError::Terminal(c.name.clone()));
            }
            let bundle = t.mirror("bundle", &c.bundle)?;
            t.copy_spec_dir(&c.bundle, &bundle)?;
            c.rootfs = t.tree(&c.rootfs, &c.name)?;
            c.bundle = bundle;
            let mounts = std::mem::take(&mut c.mounts);
            c.mounts = mounts.into_iter().map(|m| t.volume(m)).collect::<Result<_, TranslateError>>()?;
        }
        for v in &mut guest.image_volumes {
            v.tree = t.tree(&v.tree, &v.name)?;
            v.path = t.mirror_dir("image volume", &v.path)?;
        }
        let mut images: Vec<(usize, Vec<PathBuf>)> = t.images.into_iter().map(|(layers, k)| (k, layers)).collect();
        images.sort();
        let disks = images.iter().map(|(k, _)| GuestDisk { serial: disk_serial(*k), mount: image_dir(*k) }).collect();
        let mut dirs = t.dirs;
        dirs.sort();
        dirs.dedup();
        let start = GuestStart {
            plan: guest,
            files: t.files,
            dirs,
            disks,
            workspace_tag: share_workspace.then(|| crate::vm::virtiofs::TAG.to_string()),
            network,
            verbose,
        };
        Ok((start, images.into_iter().map(|(_, l)| l).collect()))
    }
}

fn image_dir(k: usize) -> PathBuf {
    Path::new(GUEST_IMAGES).join(k.to_string())
}

struct Translator<'a> {
    state_dir: &'a Path,
    /// Layer lists (bottom first) → disk number.
    images: BTreeMap<Vec<PathBuf>, usize>,
    files: Vec<GuestFile>,
    dirs: Vec<PathBuf>,
}

impl Translator<'_> {
    /// The guest path of a host path inside the pod's state directory.
    fn mirror(&self, what: &str, host: &Path) -> Result<PathBuf, TranslateError> {
        let outside = || TranslateError::HostPath { what: what.to_string(), path: host.to_path_buf() };
        let rel = host.strip_prefix(self.state_dir).map_err(|_| outside())?;
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(outside());
        }
        Ok(Path::new(GUEST_POD).join(rel))
    }

    /// As [`Self::mirror`], for a directory the guest makes empty.
    fn mirror_dir(&mut self, what: &str, host: &Path) -> Result<PathBuf, TranslateError> {
        let g = self.mirror(what, host)?;
        self.dirs.push(g.clone());
        Ok(g)
    }

    /// A volume's bind mount: a directory of the pod's state is mirrored;
    /// a read-only host *file* (agent.jar, a secret) travels in the start
    /// frame; any other host path is refused.
    fn volume(&mut self, m: BindMount) -> Result<BindMount, TranslateError> {
        let what = format!("volume for {}", m.destination);
        if m.source.starts_with(self.state_dir) {
            return Ok(BindMount { source: self.mirror_dir(&what, &m.source)?, ..m });
        }
        let small_file = std::fs::metadata(&m.source).is_ok_and(|md| md.is_file() && md.len() <= MAX_COPIED_FILE);
        if !(m.read_only && small_file) {
            return Err(TranslateError::HostPath { what, path: m.source });
        }
        let data = std::fs::read(&m.source).map_err(|source| TranslateError::Read { path: m.source.clone(), source })?;
        let name = m.source.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "file".into());
        let guest = Path::new(GUEST_FILES).join(self.files.len().to_string()).join(name);
        self.files.push(GuestFile { path: guest.clone(), data: base64::engine::general_purpose::STANDARD.encode(&data) });
        Ok(BindMount { source: guest, ..m })
    }

    /// A rootfs or image volume's tree in the guest: its layers become one
    /// disk (the flattened image), which a copy takes as its one layer.
    fn tree(&mut self, source: &RootfsSource, name: &str) -> Result<RootfsSource, TranslateError> {
        Ok(match source {
            RootfsSource::Overlay { lowers, upper, work, .. } => {
                let bottom_first: Vec<PathBuf> = lowers.iter().rev().cloned().collect();
                let (upper, work) = (self.mirror_dir("overlay", upper)?, self.mirror_dir("overlay", work)?);
                RootfsSource::Overlay { lowers: vec![self.image(bottom_first)], upper, work, fallback: false }
            }
            RootfsSource::Copy { layers } => RootfsSource::Copy { layers: vec![self.image(layers.clone())] },
            RootfsSource::Bundle | RootfsSource::Dir(_) => return Err(TranslateError::ReadyRootfs(name.to_string())),
        })
    }

    fn image(&mut self, layers: Vec<PathBuf>) -> PathBuf {
        let next = self.images.len();
        image_dir(*self.images.entry(layers).or_insert(next))
    }

    /// Sends the spec directory's files, with `config.json`'s paths into
    /// the state directory rewritten.
    fn copy_spec_dir(&mut self, host: &Path, guest: &Path) -> Result<(), TranslateError> {
        self.dirs.push(guest.to_path_buf());
        let read_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TranslateError::Read { path, source }
        };
        for entry in std::fs::read_dir(host).map_err(read_err(host))? {
            let entry = entry.map_err(read_err(host))?;
            let path = entry.path();
            if !entry.file_type().map_err(read_err(&path))?.is_file() {
                continue;
            }
            let mut data = std::fs::read(&path).map_err(read_err(&path))?;
            if entry.file_name() == "config.json" {
                data = self.rewrite_spec(&path, &data)?;
            }
            self.files.push(GuestFile {
                path: guest.join(entry.file_name()),
                data: base64::engine::general_purpose::STANDARD.encode(&data),
            });
        }
        Ok(())
    }

    fn rewrite_spec(&self, path: &Path, data: &[u8]) -> Result<Vec<u8>, TranslateError> {
        let spec_err = |source| TranslateError::Spec { path: path.to_path_buf(), source };
        let mut spec: serde_json::Value = serde_json::from_slice(data).map_err(spec_err)?;
        if let Some(mounts) = spec.get_mut("mounts").and_then(|m| m.as_array_mut()) {
            for m in mounts {
                let bind = m.get("type").and_then(|t| t.as_str()) == Some("bind")
                    || m.get("options").and_then(|o| o.as_array()).is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"));
                let dest = m.get("destination").and_then(|d| d.as_str()).unwrap_or("?").to_string();
                let Some(s) = m.get("source").and_then(|s| s.as_str()) else { continue };
                if bind && s.starts_with('/') {
                    let g = self.mirror(&format!("bind mount source for {dest}"), Path::new(s))?;
                    m["source"] = serde_json::Value::String(g.to_string_lossy().into_owned());
                }
            }
        }
        if let Some(root) = spec.get_mut("root").and_then(|r| r.get_mut("path")) {
            // The plan's rootfs source is what the guest mounts; the spec's
            // own root (the image's top layer on the host) is not used there.
            if root.as_str().is_some_and(|p| p.starts_with('/')) {
                *root = serde_json::Value::String("rootfs".into());
            }
        }
        serde_json::to_vec_pretty(&spec).map_err(spec_err)
    }
}
