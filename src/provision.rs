//! Images into the store and their layers into the unpacked-layer cache:
//! what every way of running an image (`run`, `bundle`, the agent) needs
//! before a bundle can be written.
//!
//! Layers are unpacked by a re-executed berth ([`Entry::Unpack`]) inside a
//! user namespace with exactly the mapping the pod will use, so a file owned
//! by uid 1000 in the image is owned by the mapped id on disk.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::config::Registries;
use crate::pod::PullPolicy;
use crate::paths::Paths;
use crate::reexec::Entry;
use crate::image::digest::Digest;
use crate::unpack::cache::{self, LayerCache, LayerLease, LayerSource};
use crate::fetch::progress::{Mode, Progress};
use crate::fetch::pull::{self, PullOptions};
use crate::image::reference::{self, ImageRef};
use crate::store::{Image, Platform, Store};
use crate::unpack::IdPolicy;
use crate::userns::{self, IdMapping};

/// How images are found or fetched.
#[derive(Debug, Clone, Default)]
pub struct Fetch {
    pub platform: Option<String>,
    pub tls_verify: bool,
    pub quiet: bool,
}

/// The store, the id mapping and the layer cache for that mapping.
pub struct Provision {
    pub store: Store,
    pub mapping: IdMapping,
    pub cache: LayerCache,
    root: PathBuf,
    key: String,
    ids: IdPolicy,
    verbose: u8,
}

impl Provision {
    /// Opens the store and the layer cache for the invoking user's mapping.
    /// `squash_ids` maps every owner to the user even where a range exists.
    /// `verbose` is the `-v` count the unpacking process logs at.
    pub fn open(paths: &Paths, squash_ids: bool, verbose: u8) -> anyhow::Result<Provision> {
        let root = paths.root.clone();
        let store = Store::open(&root).with_context(|| format!("cannot open the store at {}", root.display()))?;
        let mapping = IdMapping::for_current_user()?;
        let ids = ids_policy(&mapping, squash_ids);
        let key = cache_key(&mapping, ids);
        let cache = LayerCache::open(&root, &key, ids)?;
        Ok(Provision { store, mapping, cache, root, key, ids, verbose })
    }

    /// Switches to another mapping (chosen once the images' configs are
    /// known, e.g. keep-id of the main container's user) and its layer
    /// cache: layers unpack once per mapping, as the cache key says.
    pub fn use_mapping(&mut self, mapping: IdMapping) -> anyhow::Result<()> {
        anyhow::ensure!(
            mapping.has_root(),
            "this user namespace would have no uid 0 for berth to run as (no subordinate ids: see /etc/subuid and /etc/subgid)"
        );
        let ids = ids_policy(&mapping, self.ids == IdPolicy::Squash && self.mapping.is_full());
        let key = cache_key(&mapping, ids);
        self.cache = LayerCache::open(&self.root, &key, ids)?;
        (self.mapping, self.key, self.ids) = (mapping, key, ids);
        Ok(())
    }

    /// Each image, from the store if it is there, else pulled (one async
    /// runtime for all, dropped before returning: the caller may go on to
    /// create namespaces, which needs a single-threaded process).
    pub fn images(&self, refs: &[String], fetch: &Fetch) -> anyhow::Result<Vec<Image>> {
        let wanted: Vec<(String, PullPolicy)> = refs.iter().map(|r| (r.clone(), PullPolicy::default())).collect();
        self.images_by_policy(&wanted, fetch)
    }

    /// [`Provision::images`], each pulled as its policy says: `Always` even
    /// when stored, `IfNotPresent` when missing, `Never` not at all (a
    /// missing image is then an error that says so).
    pub fn images_by_policy(&self, wanted: &[(String, PullPolicy)], fetch: &Fetch) -> anyhow::Result<Vec<Image>> {
        let registries = Registries::load()?;
        let refs: Vec<&String> = wanted.iter().map(|(r, _)| r).collect();
        let mut out = Vec::with_capacity(wanted.len());
        let mut missing = Vec::new();
        let platform = fetch.platform.as_deref().map(Platform::parse).transpose()?;
        for (i, (r, policy)) in wanted.iter().enumerate() {
            let parsed = reference::parse(r)?;
            let stored = match policy {
                PullPolicy::Always => None,
                _ => self.stored(&parsed, &registries)?,
            };
            match stored {
                Some(image) => {
                    // A stored image is used only for the platform asked for.
                    if let Some(want) = &platform {
                        let mut parts = image.record.platform.splitn(3, '/');
                        let os_arch = format!("{}/{}", parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                        pull::check_platform(r, want, os_arch.trim_matches('/'), parts.next()).with_context(|| format!("{r} (stored)"))?;
                    }
                    out.push(Some(image))
                }
                // A layout or archive on disk is imported, not pulled.
                None if *policy == PullPolicy::Never && matches!(parsed, ImageRef::Registry(_)) => {
                    anyhow::bail!("image {r} is not in the store and its imagePullPolicy is Never: berth pull {r} first")
                }
                None => {
                    out.push(None);
                    missing.push((i, parsed));
                }
            }
        }
        if !missing.is_empty() {
            let opts = PullOptions { platform, tls_verify: fetch.tls_verify, ..PullOptions::default() };
            let progress = Progress::new(Mode::detect(fetch.quiet));
            let rt = crate::fetch::pull::runtime().context("cannot start the async runtime")?;
            for (i, parsed) in missing {
                let record = rt
                    .block_on(pull::pull(&self.store, &parsed, &opts, &progress))
                    .with_context(|| format!("pull {}", refs[i]))
                    .map_err(|e| if crate::store::is_disk_full(e.as_ref()) { e.context(crate::store::disk_full_hint(&self.root)) } else { e })?;
                out[i] = Some(self.store.image_of(record)?);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// A stored image by any of the names `r` could mean.
    fn stored(&self, r: &ImageRef, registries: &Registries) -> anyhow::Result<Option<Image>> {
        let ImageRef::Registry(r) = r else {
            // Layouts and archives are cheap to import, and may have changed.
            return Ok(None);
        };
        for name in registries.candidates(r).iter().map(|c| c.name()) {
            if let Some(record) = self.store.lookup(&name)? {
                return Ok(Some(self.store.image_of(record)?));
            }
        }
        Ok(None)
    }

    /// The cached layer directories of `image`, bottom first, unpacking the
    /// missing ones in the pod's user namespace; and the lease that keeps
    /// them from `gc` while the pod lives (taken before they are unpacked).
    pub fn layers(&self, image: &Image) -> anyhow::Result<(Vec<PathBuf>, LayerLease)> {
        let lease = self.lease(image)?;
        let dirs: Vec<PathBuf> = image.layers.iter().map(|l| self.cache.layer_dir(&l.diff_id)).collect();
        if dirs.iter().all(|d| d.is_dir()) {
            return Ok((dirs, lease));
        }
        self.unpack_in_namespace(&self.job(image, None)).with_context(|| format!("unpack {}", image.record.name))?;
        Ok((dirs, lease))
    }

    /// Writes a self-contained rootfs of `image` into `dest` (an existing,
    /// empty directory), from the layer cache, in the pod's user namespace
    /// so every file keeps its mapped owner.
    pub fn flatten(&self, image: &Image, dest: &Path) -> anyhow::Result<()> {
        let _lease = self.lease(image)?;
        self.unpack_in_namespace(&self.job(image, Some(dest.to_path_buf())))
            .with_context(|| format!("unpack {} into {}", image.record.name, dest.display()))
    }

    fn lease(&self, image: &Image) -> anyhow::Result<LayerLease> {
        let ids: Vec<Digest> = image.layers.iter().map(|l| l.diff_id.clone()).collect();
        Ok(self.cache.lease(&ids)?)
    }

    fn job(&self, image: &Image, flatten_to: Option<PathBuf>) -> UnpackJob {
        UnpackJob {
            root: self.root.clone(),
            key: self.key.clone(),
            keep: match self.ids {
                IdPolicy::Keep { max_uid, max_gid } => Some((max_uid, max_gid)),
                IdPolicy::Squash => None,
            },
            layers: image
                .layers
                .iter()
                .map(|l| JobLayer { blob: l.path.clone(), media_type: l.media_type.clone(), diff_id: l.diff_id.clone() })
                .collect(),
            flatten_to,
            gc_keep: None,
        }
    }

    /// Removes cached layers that no image in the store refers to. Runs in
    /// the user namespace: the layer files belong to the mapped ids.
    pub fn gc_layers(&self) -> anyhow::Result<()> {
        let mut keep = Vec::new();
        for record in self.store.images()? {
            if let Ok(image) = self.store.image_of(record) {
                keep.extend(image.layers.into_iter().map(|l| l.diff_id));
            }
        }
        let job = UnpackJob { root: self.root.clone(), key: self.key.clone(), keep: None, layers: Vec::new(), flatten_to: None, gc_keep: Some(keep) };
        self.unpack_in_namespace(&job).context("removing unused layers")
    }

    fn unpack_in_namespace(&self, job: &UnpackJob) -> anyhow::Result<()> {
        let tmp = self.cache.dir().join(format!(".job-{}.json", std::process::id()));
        // Locked while this process lives: gc removes it only once we are
        // gone, whichever way we went.
        let mut held = cache::try_flock(&tmp)?.with_context(|| format!("{} is in use", tmp.display()))?;
        let bytes = serde_json::to_vec(job)?;
        held.set_len(0)
            .and_then(|()| std::io::Write::write_all(&mut held, &bytes))
            .with_context(|| format!("writing {}", tmp.display()))?;
        let opts = userns::SpawnOptions {
            parent_death_signal: Some(nix::sys::signal::Signal::SIGKILL),
            ..Default::default()
        };
        let result = Entry::Unpack { job: tmp.clone() }
            .spawn(&self.mapping, self.verbose, &opts)
            .map_err(anyhow::Error::new)
            .and_then(|pid| loop {
                match nix::sys::wait::waitpid(pid, None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => break Err(anyhow::Error::new(e)),
                    Ok(status) => break Ok(crate::exit::from_wait(status)),
                }
            });
        let _ = std::fs::remove_file(&tmp);
        match result? {
            Some(0) => Ok(()),
            // The child already said why on stderr, in one line.
            Some(code) => Err(anyhow::anyhow!("the unpacking process failed (status {code})")),
            None => Err(anyhow::anyhow!("the unpacking process ended abnormally")),
        }
    }
}

/// What the unpacking process is asked to do.
#[derive(Debug, Serialize, Deserialize)]
pub struct UnpackJob {
    /// The store whose layer cache is written.
    pub root: PathBuf,
    pub key: String,
    /// `(max_uid, max_gid)` to keep the image's owners; `None` squashes them.
    pub keep: Option<(u32, u32)>,
    pub layers: Vec<JobLayer>,
    /// Also write a self-contained rootfs here.
    #[serde(default)]
    pub flatten_to: Option<PathBuf>,
    /// Instead: remove every cached layer (of any mapping) not in this set.
    #[serde(default)]
    pub gc_keep: Option<Vec<Digest>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JobLayer {
    pub blob: PathBuf,
    pub media_type: String,
    pub diff_id: Digest,
}

/// [`Entry::Unpack`]: runs inside the user namespace.
pub fn unpack_job(job_file: &Path) -> anyhow::Result<()> {
    let job: UnpackJob = serde_json::from_slice(&std::fs::read(job_file)?)?;
    let root = job.root;
    let ids = match job.keep {
        Some((max_uid, max_gid)) => IdPolicy::Keep { max_uid, max_gid },
        None => IdPolicy::Squash,
    };
    if let Some(keep) = job.gc_keep {
        let keep: std::collections::HashSet<Digest> = keep.into_iter().collect();
        let (mut removed, mut in_use) = (0, 0);
        for entry in std::fs::read_dir(root.join("layers"))? {
            let key = entry?.file_name();
            let Some(key) = key.to_str() else { continue };
            if let Ok(cache) = LayerCache::open(&root, key, ids) {
                let count = cache.gc_counting(&keep)?;
                removed += count.removed;
                in_use += count.in_use;
            }
        }
        if in_use > 0 {
            crate::exit::say(&format!("removed {removed} unpacked layers; kept {in_use} in use by running pods"));
        } else {
            crate::exit::say(&format!("removed {removed} unpacked layers"));
        }
        return Ok(());
    }
    let cache = LayerCache::open(&root, &job.key, ids)?;
    let sources: Vec<LayerSource> = job
        .layers
        .into_iter()
        .map(|l| LayerSource { blob: l.blob, media_type: l.media_type, diff_id: l.diff_id })
        .collect();
    let dirs = cache.ensure(&sources)?;
    if let Some(dest) = job.flatten_to {
        cache.flatten(&dirs, &dest)?;
    }
    Ok(())
}

fn ids_policy(mapping: &IdMapping, squash: bool) -> IdPolicy {
    if squash || !mapping.is_full() {
        return IdPolicy::Squash;
    }
    let (max_uid, max_gid) = mapping.contiguous_max();
    IdPolicy::Keep { max_uid, max_gid }
}

fn cache_key(mapping: &IdMapping, ids: IdPolicy) -> String {
    let rootless = !nix::unistd::Uid::current().is_root();
    cache::mapping_key(rootless, &mapping.uids, &mapping.gids, ids)
}
