//! `berth pull`: registry → store.
//!
//! index → platform → manifest → config → layers (parallel, bounded,
//! streamed to disk, resumed with `Range`) → manifest and tag. Every byte is
//! verified against the digest that named it before it becomes visible, and
//! the image is recorded only once every blob is present, so a failed pull
//! leaves nothing behind but resumable partial files under `ingest/`.
//!
//! Foreign / non-distributable layers are fetched from the registry by
//! digest like any other; their `urls` are never contacted (see
//! [`manifest::is_foreign`]).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::fetch::archive::{self, ArchiveError};
use crate::image::digest::Digest;
use crate::fetch::progress::Progress;
use crate::image::reference::{ImageRef, RegistryRef};
use crate::registry::{Client, ClientOptions, RegistryError};
use crate::store::manifest::{self, media, Descriptor, Document, ImageManifest, ManifestError, Platform};
use crate::store::{ImageRecord, Store, StoreError};

/// How a pull behaves.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The platform to select from an index [default: the host's].
    pub platform: Option<Platform>,
    /// Verify registry TLS certificates (false also allows plain HTTP).
    pub tls_verify: bool,
    /// Blobs downloaded at once.
    pub parallel: usize,
    /// Resumes of one blob after its transfer broke off mid-stream.
    pub resumes: u32,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions { platform: None, tls_verify: true, parallel: 3, resumes: 5 }
    }
}

impl PullOptions {
    fn platform(&self) -> Platform {
        self.platform.clone().unwrap_or_else(Platform::host)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    // Messages name what failed but not their `source`: anyhow prints the
    // chain (`{:#}`), one cause after the other.
    #[error("invalid manifest")]
    Manifest { reference: String, source: ManifestError },
    #[error("no image for platform {platform} (the index has {available})")]
    NoPlatform { reference: String, platform: String, available: String },
    #[error("the image is for {image}, not {platform}")]
    WrongPlatform { reference: String, platform: String, image: String },
    #[error("{what} {digest}")]
    Blob { reference: String, what: &'static str, digest: Digest, source: Box<BlobError> },
    /// Every search registry failed for a short name.
    #[error("{name}: {}", errors.join("; "))]
    Candidates { name: String, errors: Vec<String> },
    #[error("{reason}")]
    Invalid { reference: String, reason: String },
    #[error("pull task failed: {0}")]
    Task(String),
}

/// Why one blob could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error(transparent)]
    Registry(RegistryError),
    #[error(transparent)]
    Store(StoreError),
    #[error("transfer cut short at {got} of {expected} bytes, {attempts} attempts (the last: {last})")]
    Truncated { got: u64, expected: u64, attempts: u32, last: String },
    #[error("size mismatch: the registry serves {served} bytes, the manifest says {expected}")]
    Size { served: u64, expected: u64 },
    #[error("registry ignored the requested offset {requested} and sent from {offset}")]
    Offset { requested: u64, offset: u64 },
    #[error("digest mismatch: the content hashes to {actual}")]
    Digest { actual: Digest },
    #[error("size mismatch: {actual}{} bytes, the manifest says {expected}", if *at_least { " or more" } else { "" })]
    Mismatch { actual: u64, expected: u64, at_least: bool },
}

/// Pulls any reference berth accepts: a registry image, `oci:DIR[:TAG]` or
/// `oci-archive:FILE[:TAG]`. Registry settings come from the host, as podman
/// reads them.
pub async fn pull(store: &Store, image: &ImageRef, opts: &PullOptions, progress: &Progress) -> Result<ImageRecord, PullError> {
    match image {
        ImageRef::Registry(r) => {
            let mut o = ClientOptions::from_env(opts.tls_verify)?;
            // Waits and retries show with the progress (and not with -q).
            let p = progress.clone();
            o.notices = crate::registry::Notices::to(move |line| p.event(line));
            let client = Client::new(o)?;
            pull_registry(store, &client, r, opts, progress).await
        }
        ImageRef::OciLayout { dir, tag } => {
            let (store, dir, tag, platform, progress) = (store.clone(), dir.clone(), tag.clone(), opts.platform(), progress.clone());
            blocking(move || archive::import_layout(&store, &dir, tag.as_deref(), &platform, &progress).map_err(Into::into)).await
        }
        ImageRef::OciArchive { file, tag } => {
            let (store, file, tag, platform, progress) = (store.clone(), file.clone(), tag.clone(), opts.platform(), progress.clone());
            blocking(move || archive::import_archive(&store, &file, tag.as_deref(), &platform, &progress).map_err(Into::into)).await
        }
    }
}

/// Pulls a registry image with a given client, trying each candidate a
/// short name expands to (registries.conf) in order.
pub async fn pull_registry(
    store: &Store,
    client: &Client,
    r: &RegistryRef,
    opts: &PullOptions,
    progress: &Progress,
) -> Result<ImageRecord, PullError> {
    let candidates = client.options().registries.candidates(r);
    if candidates.is_empty() {
        return Err(PullError::Invalid { reference: r.name(), reason: "no registry to search (registries.conf)".into() });
    }
    // Holding the store shared keeps gc out until the image is recorded.
    let s = store.clone();
    let _session = blocking(move || s.lock_shared().map_err(PullError::from)).await?;

    let mut errors = Vec::new();
    let several = candidates.len() > 1;
    for c in &candidates {
        match resolve(client, c, opts).await {
            Ok(resolved) => return fetch(store, client, c, resolved, opts, progress).await,
            // A short name: a miss in one search registry is not the end.
            Err(e) if several && candidate_may_miss(&e) => errors.push(crate::exit::chain(&e)),
            Err(e) => return Err(e),
        }
    }
    Err(PullError::Candidates { name: r.name(), errors })
}

fn candidate_may_miss(e: &PullError) -> bool {
    matches!(e, PullError::Registry(r) if !matches!(r, RegistryError::DigestMismatch { .. } | RegistryError::WrongMediaType { .. }))
}

/// The manifest (and index) a reference resolves to.
struct Resolved {
    index: Option<(Digest, Vec<u8>)>,
    manifest: (Digest, Vec<u8>),
    parsed: ImageManifest,
}

async fn resolve(client: &Client, r: &RegistryRef, opts: &PullOptions) -> Result<Resolved, PullError> {
    let bad = |source| PullError::Manifest { reference: r.name(), source };
    let top = client.manifest(r, media::ALL_MANIFESTS).await?;
    match manifest::parse(&top.bytes, Some(&top.media_type)).map_err(bad)? {
        Document::Manifest(m) => {
            if let Some(p) = &opts.platform {
                tracing::debug!("{}: a single-platform image; --platform {p} not checked against an index", r.name());
            }
            Ok(Resolved { index: None, manifest: (top.digest, top.bytes.to_vec()), parsed: m })
        }
        Document::Index(index) => {
            let platform = opts.platform();
            let Some(entry) = platform.select(&index) else {
                return Err(PullError::NoPlatform {
                    reference: r.name(),
                    platform: platform.to_string(),
                    available: available(&index.manifests),
                });
            };
            check_child(r, entry)?;
            let mut child_ref = r.clone();
            child_ref.digest = Some(entry.digest.clone());
            let child = client.manifest(&child_ref, &[media::OCI_MANIFEST, media::DOCKER_MANIFEST]).await?;
            if child.bytes.len() as u64 != entry.size {
                return Err(PullError::Invalid {
                    reference: r.name(),
                    reason: format!("manifest {} is {} bytes, the index says {}", entry.digest, child.bytes.len(), entry.size),
                });
            }
            match manifest::parse(&child.bytes, Some(&child.media_type)).map_err(bad)? {
                Document::Manifest(m) => Ok(Resolved {
                    index: Some((top.digest, top.bytes.to_vec())),
                    manifest: (child.digest, child.bytes.to_vec()),
                    parsed: m,
                }),
                Document::Index(_) => Err(PullError::Invalid {
                    reference: r.name(),
                    reason: format!("index entry {} for {platform} is itself an index", entry.digest),
                }),
            }
        }
    }
}

/// An index entry must name an image manifest of a sane size.
fn check_child(r: &RegistryRef, entry: &Descriptor) -> Result<(), PullError> {
    if entry.media_type != media::OCI_MANIFEST && entry.media_type != media::DOCKER_MANIFEST {
        return Err(PullError::Manifest { reference: r.name(), source: ManifestError::MediaType(entry.media_type.clone()) });
    }
    if entry.size > manifest::MAX_MANIFEST_SIZE {
        return Err(PullError::Invalid { reference: r.name(), reason: format!("manifest {} is too large ({} bytes)", entry.digest, entry.size) });
    }
    Ok(())
}

/// A platform asked for must be the image's (`os/arch` from its config, and
/// its variant): a single-platform image is checked here, as an index entry
/// is by selection. An image without platform data only gets a warning, as
/// podman gives.
pub fn check_platform(reference: &str, want: &Platform, image: &str, variant: Option<&str>) -> Result<(), PullError> {
    let (os, arch) = image.split_once('/').unwrap_or((image, ""));
    if os.is_empty() || arch.is_empty() {
        tracing::warn!("{reference}: the image has no platform data; it may not be for {want}");
        return Ok(());
    }
    let got = Platform { os: os.into(), architecture: arch.into(), variant: variant.filter(|v| !v.is_empty()).map(Into::into), os_version: None };
    if want.matches(&got) {
        return Ok(());
    }
    Err(PullError::WrongPlatform { reference: reference.to_string(), platform: want.to_string(), image: got.to_string() })
}

/// `linux/amd64, linux/arm64/v8` for an error message.
pub(crate) fn available(entries: &[Descriptor]) -> String {
    let list: Vec<String> = entries.iter().filter_map(|d| d.platform.as_ref()).map(|p| p.to_string()).collect();
    if list.is_empty() {
        "no platforms".into()
    } else {
        list.join(", ")
    }
}

async fn fetch(
    store: &Store,
    client: &Client,
    r: &RegistryRef,
    resolved: Resolved,
    opts: &PullOptions,
    progress: &Progress,
) -> Result<ImageRecord, PullError> {
    let name = r.name();
    let m = &resolved.parsed;
    progress.event(&format!("pulling {name} ({} layers, manifest {})", m.layers.len(), crate::fetch::progress::short(&resolved.manifest.0)));

    // The config first: it is small, and a mismatch of its diff_ids with the
    // layers is worth knowing before the layers are downloaded.
    if m.config.size > manifest::MAX_CONFIG_SIZE {
        return Err(PullError::Invalid { reference: name, reason: format!("config {} is too large ({} bytes)", m.config.digest, m.config.size) });
    }
    let job = Job { store: store.clone(), client: client.clone(), r: r.clone(), resumes: opts.resumes, progress: progress.clone() };
    job.clone().blob("config", m.config.clone()).await?;
    let s = store.clone();
    let cfg_digest = m.config.digest.clone();
    let config = blocking(move || s.read_config(&cfg_digest).map_err(PullError::from)).await?;
    if let Some(want) = &opts.platform {
        check_platform(&name, want, &format!("{}/{}", config.os(), config.architecture()), config.variant().as_deref())?;
    }
    if config.rootfs().diff_ids().len() != m.layers.len() {
        return Err(PullError::Invalid {
            reference: name,
            reason: format!("config lists {} diff_ids for {} layers", config.rootfs().diff_ids().len(), m.layers.len()),
        });
    }

    // Layers: each in its own task (hashing uses both cores), at most
    // `parallel` at once. The first failure aborts the rest; what they had
    // written stays under ingest/ for the next pull to resume.
    let limit = Arc::new(tokio::sync::Semaphore::new(opts.parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for layer in m.layers.iter().cloned() {
        let (job, limit) = (job.clone(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.map_err(|e| PullError::Task(e.to_string()))?;
            job.blob("layer", layer).await
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| PullError::Task(e.to_string()))??;
    }

    let s = store.clone();
    let Resolved { index, manifest: (digest, bytes), .. } = resolved;
    let record = blocking(move || {
        s.commit_image(&name, (&digest, &bytes), index.as_ref().map(|(d, b)| (d, b.as_slice())))
            .map_err(PullError::from)
    })
    .await?;
    progress.event(&format!("stored {} {}", record.name, record.manifest));
    Ok(record)
}

/// What every blob download of one pull shares.
#[derive(Clone)]
struct Job {
    store: Store,
    client: Client,
    r: RegistryRef,
    resumes: u32,
    progress: Progress,
}

impl Job {
    /// Downloads one blob into the store unless it is there (or another
    /// process is fetching it: then it waits, and finds it there).
    async fn blob(self, what: &'static str, desc: Descriptor) -> Result<(), PullError> {
        let wrap = |source| PullError::Blob { reference: self.r.name(), what, digest: desc.digest.clone(), source: Box::new(source) };
        let bar = self.progress.blob(what, &desc.digest, desc.size);
        if manifest::is_foreign(&desc.media_type) && !desc.urls.is_empty() {
            tracing::debug!("{what} {}: foreign layer fetched from the registry, its urls ignored", desc.digest);
        }
        let (s, d, size) = (self.store.clone(), desc.digest.clone(), desc.size);
        let ingest = blocking(move || s.ingest(&d, size).map_err(PullError::from)).await?;
        let Some(mut w) = ingest else {
            bar.done(false);
            return Ok(());
        };
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            bar.start(w.offset());
            if w.offset() == desc.size {
                break;
            }
            let why = match self.stream(&desc, &mut w, &bar).await {
                Ok(None) if w.offset() == desc.size => break,
                // The body ended early without an error: a cut too.
                Ok(None) => "transfer ended early".to_string(),
                Ok(Some(why)) => why,
                Err(e) => {
                    bar.fail();
                    return Err(wrap(e));
                }
            };
            if attempts > self.resumes {
                bar.fail();
                return Err(wrap(BlobError::Truncated { got: w.offset(), expected: desc.size, attempts, last: why }));
            }
            tracing::info!("{what} {}: {why}; resuming at {}", desc.digest, w.offset());
            bar.retry(&why);
            tokio::time::sleep(Duration::from_millis(100u64 << attempts.min(5))).await;
        }
        // Verify and rename off the async threads: fsync can take a while.
        match blocking(move || w.commit().map_err(PullError::from)).await {
            Ok(()) => {
                bar.done(true);
                Ok(())
            }
            Err(PullError::Store(e)) => {
                bar.fail();
                Err(wrap(BlobError::from(e)))
            }
            Err(e) => Err(e),
        }
    }

    /// One request: appends what arrives. `Ok(Some(why))` when the transfer
    /// broke off in a way a resume may cure.
    async fn stream(&self, desc: &Descriptor, w: &mut crate::store::Ingest, bar: &crate::fetch::progress::BlobProgress) -> Result<Option<String>, BlobError> {
        let offset = w.offset();
        let mut blob = match self.client.blob(&self.r, &desc.digest, offset).await {
            Ok(b) => b,
            // The client has retried already; a failure here is final.
            Err(e) => return Err(BlobError::Registry(e)),
        };
        if let Some(total) = blob.total {
            if total != desc.size {
                return Err(BlobError::Size { served: total, expected: desc.size });
            }
        }
        if blob.offset != offset {
            if blob.offset != 0 {
                return Err(BlobError::Offset { requested: offset, offset: blob.offset });
            }
            // The server ignored Range: start over.
            w.restart()?;
            bar.start(0);
        }
        while let Some(chunk) = blob.body.next().await {
            match chunk {
                Ok(bytes) => {
                    w.write(&bytes)?;
                    bar.advance(bytes.len() as u64);
                }
                Err(e) if e.is_retryable() => return Ok(Some(e.to_string())),
                Err(e) => return Err(BlobError::Registry(e)),
            }
        }
        Ok(None)
    }
}

impl From<StoreError> for BlobError {
    /// The blob is named by the error around this one: only say what is wrong.
    fn from(e: StoreError) -> BlobError {
        match e {
            StoreError::DigestMismatch { actual, .. } => BlobError::Digest { actual },
            StoreError::SizeMismatch { expected, actual, at_least, .. } => BlobError::Mismatch { actual, expected, at_least },
            other => BlobError::Store(other),
        }
    }
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, PullError> + Send + 'static) -> Result<T, PullError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| PullError::Task(e.to_string()))?
}

/// The async runtime a pull runs on: downloads and hashing use up to four
/// cores. Drop it before creating namespaces (they need one thread).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4)))
        .enable_all()
        .build()
}

