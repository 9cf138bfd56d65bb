//! The distribution HTTP API (the OCI distribution spec, pull side) over
//! `reqwest`: manifests and blobs, with retries and mirrors.
//!
//! berth speaks the protocol itself rather than through oci-client because
//! the details it must act on or report live in response headers that
//! oci-client's errors drop: `Retry-After`, `Content-Range`,
//! `Docker-Content-Digest`, `WWW-Authenticate` and the 401/403 that says
//! whether credentials were sent.
//!
//! * Transport (HTTPS and its CAs, plain HTTP for insecure endpoints,
//!   redirects): `transport`.
//! * Auth (the challenge, Bearer tokens, Basic credentials): `auth`.
//! * Retries: connection errors, timeouts, 5xx and 429 are retried with
//!   exponential backoff and jitter, honouring `Retry-After`; other 4xx never.
//!   A blob body cut short surfaces as a retryable `Io` error on the stream;
//!   the caller resumes with `offset`.
//! * Hangs: no response headers within a window, or fewer bytes than the
//!   low-speed limit in a window of a body, fail the request (retryable);
//!   a long wait and each retry are said on stderr: `slow`.
//! * Mirrors from registries.conf are tried in order; any failure of a mirror
//!   falls back to the next endpoint, the primary last.

mod auth;
mod challenge;
mod error;
mod retry;
mod slow;
mod transport;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE, RANGE};
use reqwest::StatusCode;

pub use challenge::{parse_challenges, Challenge};
pub use error::RegistryError;
pub use retry::{parse_retry_after, RetryPolicy};
pub use slow::{LowSpeed, Notices, LOW_SPEED_ENV};

use auth::Token;
use transport::{read_capped, unexpected, HostState};

use crate::config::{AuthFiles, CertDirs, Credentials, Endpoint, Registries};
use crate::image::digest::Digest;
use crate::image::reference::RegistryRef;

pub use crate::image::media;

pub use crate::image::media::MAX_MANIFEST_SIZE;

/// A stream of a blob's bytes; an error ends it.
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>;

/// How the client behaves.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// false: accept any certificate and allow plain HTTP, for every registry
    /// (`--tls-verify=false`).
    pub tls_verify: bool,
    pub registries: Arc<Registries>,
    pub auth: AuthFiles,
    pub certs: CertDirs,
    pub retry: RetryPolicy,
    pub connect_timeout: Duration,
    /// Longest silence on an open connection before the transfer is
    /// abandoned (and may be resumed).
    pub read_timeout: Duration,
    /// Ends a request with no headers, or a body with too few bytes, in a
    /// window (`$BERTH_LOW_SPEED`).
    pub low_speed: LowSpeed,
    /// Where waits and retries are said (a pull's progress).
    pub notices: Notices,
    pub user_agent: String,
}

impl Default for ClientOptions {
    /// No host configuration at all: no credentials, no mirrors, no extra CAs.
    fn default() -> Self {
        ClientOptions {
            tls_verify: true,
            registries: Arc::new(Registries::default()),
            auth: AuthFiles::default(),
            certs: CertDirs::default(),
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            low_speed: LowSpeed::default(),
            notices: Notices::default(),
            user_agent: concat!("berth/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

impl ClientOptions {
    /// The host's configuration, as podman would read it.
    pub fn from_env(tls_verify: bool) -> Result<ClientOptions, RegistryError> {
        Ok(ClientOptions {
            tls_verify,
            registries: Arc::new(Registries::load()?),
            auth: AuthFiles::from_env(),
            certs: CertDirs::from_env(),
            low_speed: LowSpeed::from_env()?,
            ..ClientOptions::default()
        })
    }
}

/// A manifest or index as the registry served it, verified.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Bytes,
    /// The Content-Type, which the body's `mediaType` agrees with.
    pub media_type: String,
    /// sha256 of `bytes`.
    pub digest: Digest,
    /// `host/repository` it came from (a mirror, or the registry).
    pub endpoint: String,
}

/// A blob download in progress.
pub struct Blob {
    /// Size of the whole blob, when the server says.
    pub total: Option<u64>,
    /// Where `body` starts: the requested offset on a 206, 0 when the server
    /// ignored the `Range`.
    pub offset: u64,
    pub body: BlobStream,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob").field("total", &self.total).field("offset", &self.offset).finish_non_exhaustive()
    }
}

/// A registry client. Cloning is cheap and shares connections, tokens and
/// what was learnt of each host.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("tls_verify", &self.inner.opts.tls_verify).finish_non_exhaustive()
    }
}

struct Inner {
    opts: ClientOptions,
    /// One reqwest client per (host, insecure): CAs are per host.
    http: Mutex<HashMap<(String, bool), reqwest::Client>>,
    /// What `GET /v2/` told of each endpoint host; held while pinging so a
    /// host is pinged once.
    hosts: tokio::sync::Mutex<HashMap<(String, bool), HostState>>,
    tokens: Mutex<HashMap<(String, String), Token>>,
    creds: Mutex<HashMap<(String, String), Option<Credentials>>>,
}

impl Client {
    pub fn new(opts: ClientOptions) -> Result<Client, RegistryError> {
        // reqwest is built without a default crypto provider; berth uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = Client {
            inner: Arc::new(Inner {
                opts,
                http: Mutex::new(HashMap::new()),
                hosts: tokio::sync::Mutex::new(HashMap::new()),
                tokens: Mutex::new(HashMap::new()),
                creds: Mutex::new(HashMap::new()),
            }),
        };
        // Fail now, not mid-pull, if the TLS set-up cannot be built.
        client.http_for("", false)?;
        Ok(client)
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// Fetches a manifest or index by `r`'s digest or tag, accepting the
    /// media types in `accept`.
    ///
    /// Verified: the size (at most 4 MiB), the digest against `r`'s digest and
    /// the `Docker-Content-Digest` header, and the Content-Type against
    /// `accept` and the body's `mediaType` (CVE-2021-41190).
    pub async fn manifest(&self, r: &RegistryRef, accept: &[&str]) -> Result<Manifest, RegistryError> {
        let eps = self.endpoints(r)?;
        let mut last = None;
        for ep in &eps {
            match self.with_retries(|| self.manifest_from(ep, r, accept)).await {
                Err(e) if next_endpoint(ep, &e) => last = Some(e),
                result => return result,
            }
        }
        Err(last.unwrap_or_else(|| no_endpoint(r)))
    }

    /// Resolves `r` as podman does and fetches its manifest: a qualified
    /// reference is fetched as is; a short name is tried against its alias or
    /// each unqualified-search registry in turn, and the first that has it
    /// wins. Returns the reference that was found.
    ///
    /// When every candidate fails, the error is the first one that is not
    /// "not found" (an auth or connection problem says more), else the first.
    pub async fn resolve(&self, r: &RegistryRef, accept: &[&str]) -> Result<(RegistryRef, Manifest), RegistryError> {
        let candidates = self.inner.opts.registries.candidates(r);
        let mut errors = Vec::new();
        for c in candidates {
            match self.manifest(&c, accept).await {
                Ok(m) => return Ok((c, m)),
                Err(e @ (RegistryError::Config(_) | RegistryError::Client(_))) => return Err(e),
                Err(e) => {
                    tracing::info!("{}: {e}", c.name());
                    errors.push(e);
                }
            }
        }
        let pick = errors.iter().position(|e| !matches!(e, RegistryError::ManifestNotFound { .. })).unwrap_or(0);
        Err(if errors.is_empty() { no_endpoint(r) } else { errors.swap_remove(pick) })
    }

    /// Starts downloading blob `digest` of `r`'s repository from byte
    /// `offset` (a `Range` request when > 0). The bytes are not verified here:
    /// the caller hashes what it stores.
    pub async fn blob(&self, r: &RegistryRef, digest: &Digest, offset: u64) -> Result<Blob, RegistryError> {
        let eps = self.endpoints(r)?;
        let mut last = None;
        for ep in &eps {
            match self.with_retries(|| self.blob_from(ep, digest, offset)).await {
                Err(e) if next_endpoint(ep, &e) => last = Some(e),
                result => return result,
            }
        }
        Err(last.unwrap_or_else(|| no_endpoint(r)))
    }

    fn endpoints(&self, r: &RegistryRef) -> Result<Vec<Endpoint>, RegistryError> {
        let regs = &self.inner.opts.registries;
        if regs.is_blocked(r) {
            return Err(RegistryError::Blocked { reference: r.name() });
        }
        Ok(regs.endpoints(r))
    }

    async fn manifest_from(&self, ep: &Endpoint, r: &RegistryRef, accept: &[&str]) -> Result<Manifest, RegistryError> {
        let repository = format!("{}/{}", ep.host, ep.repository);
        let reference = r.manifest_reference();
        let mut headers = HeaderMap::new();
        let accept_value = HeaderValue::from_str(&accept.join(", "))
            .map_err(|_| RegistryError::Client("invalid Accept media type".into()))?;
        headers.insert(ACCEPT, accept_value);
        let path = format!("/v2/{}/manifests/{}", ep.repository, reference);
        let resp = self.request(ep, &path, headers).await?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                let what = match &r.digest {
                    Some(d) => format!("manifest {d}"),
                    None => format!("tag {reference}"),
                };
                return Err(RegistryError::ManifestNotFound { repository, what });
            }
            s => return Err(unexpected(&ep.host, s, &resp)),
        }
        let content_type = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(media_type_of);
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v.trim()).ok());
        let bytes = read_capped(resp, MAX_MANIFEST_SIZE, &ep.host, self.inner.opts.low_speed)
            .await?
            .ok_or_else(|| RegistryError::TooLarge { repository: repository.clone(), what: "manifest".into(), limit: MAX_MANIFEST_SIZE })?;

        let digest = Digest::of(&bytes);
        for expected in r.digest.iter().chain(header_digest.iter()) {
            if *expected != digest {
                return Err(RegistryError::DigestMismatch { repository, expected: expected.clone(), actual: digest });
            }
        }
        let media_type = check_media_type(content_type.as_deref(), &bytes, accept)
            .map_err(|reason| RegistryError::WrongMediaType { repository: repository.clone(), reason })?;
        tracing::debug!("manifest {reference} of {repository}: {media_type}, {digest}, {} bytes", bytes.len());
        Ok(Manifest { bytes, media_type, digest, endpoint: repository })
    }

    async fn blob_from(&self, ep: &Endpoint, digest: &Digest, offset: u64) -> Result<Blob, RegistryError> {
        let path = format!("/v2/{}/blobs/{}", ep.repository, digest);
        let mut headers = HeaderMap::new();
        if offset > 0 {
            headers.insert(RANGE, HeaderValue::from_str(&format!("bytes={offset}-")).expect("ASCII"));
        }
        let mut resp = self.request(ep, &path, headers).await?;
        if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE && offset > 0 {
            // The partial file is as long as the blob or longer: start over.
            tracing::debug!("blob {digest}: range {offset}- not satisfiable; fetching it whole");
            resp = self.request(ep, &path, HeaderMap::new()).await?;
        }
        let host = ep.host.clone();
        let (start, total) = match resp.status() {
            StatusCode::OK => (0, resp.content_length()),
            StatusCode::PARTIAL_CONTENT if offset > 0 => {
                let cr = resp.headers().get("content-range").and_then(|v| v.to_str().ok()).unwrap_or("");
                let (first, total) = parse_content_range(cr).ok_or_else(|| RegistryError::BadResponse {
                    registry: host.clone(),
                    reason: format!("206 with Content-Range {cr:?}"),
                })?;
                if first != offset {
                    return Err(RegistryError::BadResponse {
                        registry: host,
                        reason: format!("asked for bytes {offset}- and got {cr:?}"),
                    });
                }
                (first, total.or(resp.content_length().map(|l| first + l)))
            }
            StatusCode::NOT_FOUND => {
                return Err(RegistryError::BlobNotFound { repository: format!("{}/{}", ep.host, ep.repository), digest: digest.clone() })
            }
            s => return Err(unexpected(&ep.host, s, &resp)),
        };
        let low = self.inner.opts.low_speed;
        let body = slow::body(resp.bytes_stream().map(move |r| r.map_err(|e| error::classify(&host, &e))), low, &ep.host);
        Ok(Blob { total, offset: start, body })
    }

    /// Runs `f` until it succeeds, fails for good, or the retries are spent.
    async fn with_retries<T, F, Fut>(&self, mut f: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let mut retry = 0;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retryable() => match self.inner.opts.retry.delay(retry, e.retry_after()) {
                    Some(d) => {
                        // Said at default verbosity: a retried request may
                        // have waited a whole window already.
                        let attempts = self.inner.opts.retry.attempts;
                        self.inner.opts.notices.say(&format!("{e}; retrying in {d:.1?} (attempt {} of {attempts})", retry + 2));
                        tokio::time::sleep(d).await;
                        retry += 1;
                    }
                    None => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
    }
}

fn no_endpoint(r: &RegistryRef) -> RegistryError {
    RegistryError::BadResponse { registry: r.registry.clone(), reason: format!("registries.conf leaves no endpoint for {}", r.name()) }
}

/// `type/subtype` of a Content-Type, without parameters, lowercased.
fn media_type_of(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// The manifest's media type, if the Content-Type and the body's
/// `mediaType` agree and it is one of `accept`. A generic Content-Type
/// (`application/json`, none) defers to the body.
fn check_media_type(content_type: Option<&str>, body: &[u8], accept: &[&str]) -> Result<String, String> {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    let head: Head = serde_json::from_slice(body).map_err(|e| format!("manifest is not JSON: {e}"))?;
    let in_body = head.media_type.filter(|m| !m.is_empty());
    let generic = matches!(content_type, None | Some("") | Some("application/json") | Some("text/plain") | Some("application/octet-stream"));
    let chosen = match (content_type, &in_body) {
        (Some(ct), Some(b)) if !generic && ct != b => {
            return Err(format!("Content-Type {ct} but the manifest says {b}"));
        }
        (Some(ct), _) if !generic => ct.to_string(),
        (_, Some(b)) => b.clone(),
        (ct, None) => return Err(format!("Content-Type {} and no mediaType in the manifest", ct.unwrap_or("missing"))),
    };
    if !accept.iter().any(|a| a.eq_ignore_ascii_case(&chosen)) {
        return Err(format!("{chosen} is not one of {}", accept.join(", ")));
    }
    Ok(chosen)
}

/// `bytes FIRST-LAST/TOTAL` (TOTAL may be `*`).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    if last < first {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok().filter(|t| *t > last)?),
    };
    Some((first, total))
}

#[cfg(test)]
mod tests;

/// Whether a failure at `ep` should move on to the next endpoint: only a
/// mirror falls back (to the next mirror, then the primary), and only for
/// errors another endpoint could cure.
fn next_endpoint(ep: &Endpoint, e: &RegistryError) -> bool {
    let next = ep.mirror && e.try_next_endpoint();
    if next {
        tracing::warn!("mirror {}/{}: {e}; trying the next endpoint", ep.host, ep.repository);
    }
    next
}
