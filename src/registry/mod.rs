//! The distribution HTTP API (the OCI distribution spec, pull side) over
//! `reqwest`.
//!
//! berth speaks the protocol itself rather than through oci-client because
//! the details it must act on or report live in response headers that
//! oci-client's errors drop: `Retry-After`, `Content-Range`,
//! `Docker-Content-Digest`, `WWW-Authenticate` and the 401/403 that says
//! whether credentials were sent.
//!
//! * Transport: HTTPS, verified against the system roots plus the host's
//!   `certs.d` CAs. An endpoint marked `insecure` in registries.conf, or any
//!   endpoint when `tls_verify` is false, accepts an unverifiable certificate
//!   and falls back to plain HTTP. As in podman, `localhost` and 127.0.0.1 are
//!   not special: they need one of those two settings for plain HTTP.
//! * Auth: `GET /v2/` once per host learns the challenge; Bearer tokens are
//!   fetched from the realm (with basic credentials or an identity token when
//!   the host has some) and cached per (host, repository) until they expire;
//!   Basic sends the credentials with each request. A 401 on a resource
//!   refreshes the token once.
//! * Redirects are followed by hand (blob storage lives elsewhere) and the
//!   `Authorization` header is sent only to the origin it was meant for: never
//!   to another scheme, host or port (distribution spec; image-unpack-security
//!   item 20).
//! * Retries: connection errors, timeouts, 5xx and 429 are retried with
//!   exponential backoff and jitter, honouring `Retry-After`; other 4xx never.
//!   A blob body cut short surfaces as a retryable `Io` error on the stream;
//!   the caller resumes with `offset`.
//! * Mirrors from registries.conf are tried in order; any failure of a mirror
//!   falls back to the next endpoint, the primary last.

mod challenge;
mod error;
mod retry;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, LOCATION, RANGE, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use url::Url;

pub use challenge::{parse_challenges, Challenge};
pub use error::RegistryError;
pub use retry::{parse_retry_after, RetryPolicy};

use crate::config::{AuthFiles, CertDirs, Credentials, Endpoint, Registries};
use crate::digest::Digest;
use crate::reference::{RegistryRef, DOCKER_HUB};

pub use crate::media;

pub use crate::media::MAX_MANIFEST_SIZE;
/// Largest token-endpoint reply berth reads.
const MAX_TOKEN_REPLY: u64 = 1 << 20;
const MAX_REDIRECTS: usize = 10;

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

#[derive(Clone)]
struct HostState {
    /// `https://host` or `http://host`.
    base: Url,
    challenge: Option<Challenge>,
}

#[derive(Clone)]
struct Token {
    value: String,
    expires: Instant,
    credentials_sent: bool,
}

/// What to send on one request.
struct Auth {
    header: Option<HeaderValue>,
    credentials_sent: bool,
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
        let bytes = read_capped(resp, MAX_MANIFEST_SIZE, &ep.host)
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
        let body = resp.bytes_stream().map(move |r| r.map_err(|e| error::classify(&host, &e)));
        Ok(Blob { total, offset: start, body: Box::pin(body) })
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
                        tracing::info!("{e}; retrying in {d:.1?}");
                        tokio::time::sleep(d).await;
                        retry += 1;
                    }
                    None => return Err(e),
                },
                Err(e) => return Err(e),
            }
        }
    }

    /// GET `path` on `ep` with authentication. 401, 403, 429 and 5xx become
    /// errors; every other status is the caller's to judge.
    async fn request(&self, ep: &Endpoint, path: &str, headers: HeaderMap) -> Result<reqwest::Response, RegistryError> {
        let insecure = ep.insecure || !self.inner.opts.tls_verify;
        let mut host = self.host_state(&ep.host, insecure).await?;
        let url = host.base.join(path).map_err(|e| RegistryError::Client(format!("bad path {path:?}: {e}")))?;
        let mut refreshed = false;
        loop {
            let auth = self.authorization(ep, &host, insecure).await?;
            let resp = self.send(Method::GET, url.clone(), &headers, auth.header, None, insecure, &ep.host).await?;
            match resp.status() {
                StatusCode::UNAUTHORIZED if !refreshed => {
                    // The token expired early, or this resource wants another
                    // scope: learn the new challenge and try once more.
                    refreshed = true;
                    if let Some(c) = challenge_of(resp.headers()) {
                        host.challenge = Some(c);
                        // Remember it: a registry that let the ping through
                        // anonymously would otherwise cost a 401 per request.
                        self.inner.hosts.lock().await.insert((ep.host.clone(), insecure), host.clone());
                    }
                    self.inner.tokens.lock().expect("token cache").remove(&(ep.host.clone(), ep.repository.clone()));
                    if host.challenge.is_none() {
                        return Err(RegistryError::Unauthorized { registry: ep.host.clone(), credentials_sent: auth.credentials_sent });
                    }
                }
                StatusCode::UNAUTHORIZED => {
                    return Err(RegistryError::Unauthorized { registry: ep.host.clone(), credentials_sent: auth.credentials_sent })
                }
                StatusCode::FORBIDDEN => {
                    return Err(RegistryError::Forbidden { registry: ep.host.clone(), credentials_sent: auth.credentials_sent })
                }
                s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => return Err(unexpected(&ep.host, s, &resp)),
                _ => return Ok(resp),
            }
        }
    }

    /// Sends one request, following redirects by hand; `auth` goes only to
    /// the origin of `url`.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        mut method: Method,
        mut url: Url,
        headers: &HeaderMap,
        auth: Option<HeaderValue>,
        mut body: Option<(String, Vec<u8>)>,
        insecure: bool,
        registry: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let origin = url.origin();
        for _ in 0..=MAX_REDIRECTS {
            let client = self.http_for(&host_port(&url), insecure)?;
            let mut req = client.request(method.clone(), url.clone()).headers(headers.clone());
            if let Some(a) = &auth {
                if url.origin() == origin {
                    req = req.header(AUTHORIZATION, a.clone());
                }
            }
            if let Some((ctype, b)) = &body {
                req = req.header(CONTENT_TYPE, ctype.as_str()).body(b.clone());
            }
            tracing::trace!("{method} {url}");
            let resp = req.send().await.map_err(|e| error::classify(registry, &e))?;
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                return Ok(resp);
            }
            let bad = |reason: String| RegistryError::BadResponse { registry: registry.to_string(), reason };
            let loc = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| bad(format!("{} without a Location", resp.status())))?;
            let next = url.join(loc).map_err(|e| bad(format!("redirect to {loc:?}: {e}")))?;
            if !matches!(next.scheme(), "http" | "https") {
                return Err(bad(format!("redirect to {next}: not HTTP")));
            }
            if url.scheme() == "https" && next.scheme() == "http" && !insecure {
                return Err(bad(format!("redirect from HTTPS to plain HTTP ({next})")));
            }
            if matches!(resp.status(), StatusCode::SEE_OTHER)
                || (method == Method::POST && matches!(resp.status(), StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND))
            {
                method = Method::GET;
                body = None;
            }
            tracing::debug!("redirected to {}", next.origin().ascii_serialization());
            url = next;
        }
        Err(RegistryError::BadResponse { registry: registry.to_string(), reason: format!("more than {MAX_REDIRECTS} redirects") })
    }

    /// The reqwest client for `host_port`, trusting its `certs.d` CAs.
    fn http_for(&self, host_port: &str, insecure: bool) -> Result<reqwest::Client, RegistryError> {
        let key = (host_port.to_string(), insecure);
        if let Some(c) = self.inner.http.lock().expect("client cache").get(&key) {
            return Ok(c.clone());
        }
        let o = &self.inner.opts;
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(o.connect_timeout)
            .read_timeout(o.read_timeout)
            .user_agent(o.user_agent.clone())
            .tls_danger_accept_invalid_certs(insecure);
        if !insecure && !host_port.is_empty() {
            let mut roots = Vec::new();
            for der in o.certs.roots_for(host_port)? {
                roots.push(reqwest::Certificate::from_der(&der).map_err(|e| RegistryError::Client(format!("CA for {host_port}: {e}")))?);
            }
            b = b.tls_certs_merge(roots);
        }
        let c = b.build().map_err(|e| RegistryError::Client(e.to_string()))?;
        self.inner.http.lock().expect("client cache").insert(key, c.clone());
        Ok(c)
    }

    /// Pings `GET /v2/` once per host: which scheme works and which
    /// challenge the registry sends.
    async fn host_state(&self, ep_host: &str, insecure: bool) -> Result<HostState, RegistryError> {
        let mut hosts = self.inner.hosts.lock().await;
        let key = (ep_host.to_string(), insecure);
        if let Some(h) = hosts.get(&key) {
            return Ok(h.clone());
        }
        // No retries here: the caller retries the whole request.
        let state = self.ping(ep_host, insecure).await?;
        hosts.insert(key, state.clone());
        Ok(state)
    }

    async fn ping(&self, ep_host: &str, insecure: bool) -> Result<HostState, RegistryError> {
        let connect = if ep_host == DOCKER_HUB { "registry-1.docker.io" } else { ep_host };
        let https = self.ping_at("https", connect, ep_host, insecure).await;
        match https {
            Ok(s) => Ok(s),
            Err(e) if insecure && !is_http_status(&e) => match self.ping_at("http", connect, ep_host, insecure).await {
                Ok(s) => {
                    tracing::debug!("{ep_host}: plain HTTP (HTTPS failed: {e})");
                    Ok(s)
                }
                // Report the HTTPS failure unless it only showed that the
                // server does not speak TLS.
                Err(e2) if matches!(e, RegistryError::Tls { .. }) => Err(e2),
                Err(_) => Err(e),
            },
            Err(RegistryError::Tls { registry, reason }) if !insecure && reason.contains("InvalidContentType") => {
                Err(RegistryError::Tls {
                    registry,
                    reason: format!("{reason} (a plain-HTTP registry? use --tls-verify=false or insecure = true in registries.conf)"),
                })
            }
            Err(e) => Err(e),
        }
    }

    async fn ping_at(&self, scheme: &str, connect: &str, ep_host: &str, insecure: bool) -> Result<HostState, RegistryError> {
        let base = Url::parse(&format!("{scheme}://{connect}/"))
            .map_err(|e| RegistryError::Client(format!("registry host {connect:?}: {e}")))?;
        let url = base.join("/v2/").map_err(|e| RegistryError::Client(e.to_string()))?;
        let resp = self.send(Method::GET, url, &HeaderMap::new(), None, None, insecure, ep_host).await?;
        let challenge = match resp.status() {
            s if s.is_success() => None,
            StatusCode::UNAUTHORIZED => challenge_of(resp.headers()),
            s => return Err(unexpected(ep_host, s, &resp)),
        };
        Ok(HostState { base, challenge })
    }

    /// The Authorization header for a request to `ep`.
    async fn authorization(&self, ep: &Endpoint, host: &HostState, insecure: bool) -> Result<Auth, RegistryError> {
        match &host.challenge {
            None => Ok(Auth { header: None, credentials_sent: false }),
            Some(Challenge::Basic { .. }) => {
                let creds = self.credentials(ep).await?;
                Ok(match creds {
                    Some(c) => Auth { header: Some(basic(&c.username, &c.password)?), credentials_sent: true },
                    None => Auth { header: None, credentials_sent: false },
                })
            }
            Some(Challenge::Bearer { realm, service, scope }) => {
                let key = (ep.host.clone(), ep.repository.clone());
                let cached = self.inner.tokens.lock().expect("token cache").get(&key).cloned();
                let token = match cached {
                    Some(t) if t.expires > Instant::now() + Duration::from_secs(5) => t,
                    _ => {
                        let t = self.fetch_token(ep, realm, service.as_deref(), scope.as_deref(), insecure).await?;
                        self.inner.tokens.lock().expect("token cache").insert(key, t.clone());
                        t
                    }
                };
                let header = HeaderValue::from_str(&format!("Bearer {}", token.value))
                    .map_err(|_| RegistryError::BadResponse { registry: ep.host.clone(), reason: "token is not a valid header value".into() })?;
                Ok(Auth { header: Some(header), credentials_sent: token.credentials_sent })
            }
        }
    }

    async fn fetch_token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        challenge_scope: Option<&str>,
        insecure: bool,
    ) -> Result<Token, RegistryError> {
        let bad = |reason: String| RegistryError::BadResponse { registry: ep.host.clone(), reason };
        let realm_url = Url::parse(realm).map_err(|e| bad(format!("token realm {realm:?}: {e}")))?;
        if !matches!(realm_url.scheme(), "http" | "https") {
            return Err(bad(format!("token realm {realm:?} is not HTTP")));
        }
        let scope = format!("repository:{}:pull", ep.repository);
        let mut scopes = vec![scope.clone()];
        if let Some(s) = challenge_scope.filter(|s| !s.is_empty() && *s != scope) {
            scopes.push(s.to_string());
        }
        let creds = self.credentials(ep).await?;
        let credentials_sent = creds.is_some();
        let started = Instant::now();

        let mut url = realm_url.clone();
        let (method, auth, body) = match &creds {
            Some(Credentials { identity_token: Some(tok), .. }) => {
                // OAuth2 refresh-token grant, as docker and podman do.
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "refresh_token").append_pair("refresh_token", tok).append_pair("client_id", "berth");
                if let Some(s) = service {
                    form.append_pair("service", s);
                }
                form.append_pair("scope", &scopes.join(" "));
                let body = ("application/x-www-form-urlencoded".to_string(), form.finish().into_bytes());
                (Method::POST, None, Some(body))
            }
            other => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    for s in &scopes {
                        q.append_pair("scope", s);
                    }
                }
                let auth = other.as_ref().map(|c| basic(&c.username, &c.password)).transpose()?;
                (Method::GET, auth, None)
            }
        };
        let resp = self.send(method, url, &HeaderMap::new(), auth, body, insecure, &ep.host).await?;
        match resp.status() {
            s if s.is_success() => {}
            // OAuth2 servers answer a bad refresh token with 400.
            StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST if credentials_sent => {
                return Err(RegistryError::Unauthorized { registry: ep.host.clone(), credentials_sent })
            }
            StatusCode::UNAUTHORIZED => return Err(RegistryError::Unauthorized { registry: ep.host.clone(), credentials_sent }),
            StatusCode::FORBIDDEN => return Err(RegistryError::Forbidden { registry: ep.host.clone(), credentials_sent }),
            s => return Err(unexpected(&ep.host, s, &resp)),
        }
        let body = read_capped(resp, MAX_TOKEN_REPLY, &ep.host).await?.ok_or_else(|| bad("token reply too large".into()))?;
        let reply: challenge::TokenReply =
            serde_json::from_slice(&body).map_err(|e| bad(format!("token reply from {realm_url}: {e}")))?;
        let (value, lifetime) = reply.into_token().ok_or_else(|| bad(format!("token reply from {realm_url} has no token")))?;
        tracing::debug!("token for {}/{} from {realm_url}", ep.host, ep.repository);
        Ok(Token { value, expires: started + lifetime, credentials_sent })
    }

    /// Credentials for `ep`, looked up once per (host, repository); helpers
    /// run off the async threads.
    async fn credentials(&self, ep: &Endpoint) -> Result<Option<Credentials>, RegistryError> {
        let key = (ep.host.clone(), ep.repository.clone());
        if let Some(c) = self.inner.creds.lock().expect("credential cache").get(&key) {
            return Ok(c.clone());
        }
        let files = self.inner.opts.auth.clone();
        let (h, r) = key.clone();
        let found = tokio::task::spawn_blocking(move || files.lookup(&h, &r))
            .await
            .map_err(|e| RegistryError::Client(format!("credential lookup: {e}")))??;
        self.inner.creds.lock().expect("credential cache").insert(key, found.clone());
        Ok(found)
    }
}

fn no_endpoint(r: &RegistryRef) -> RegistryError {
    RegistryError::BadResponse { registry: r.registry.clone(), reason: format!("registries.conf leaves no endpoint for {}", r.name()) }
}

fn is_http_status(e: &RegistryError) -> bool {
    matches!(
        e,
        RegistryError::Http { .. } | RegistryError::TooManyRequests { .. } | RegistryError::Unauthorized { .. } | RegistryError::Forbidden { .. }
    )
}

fn basic(user: &str, pass: &str) -> Result<HeaderValue, RegistryError> {
    let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let mut v = HeaderValue::from_str(&format!("Basic {enc}")).map_err(|_| RegistryError::Client("credentials".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

/// The preferred challenge in a response: Bearer, else Basic.
fn challenge_of(headers: &HeaderMap) -> Option<Challenge> {
    let all: Vec<Challenge> = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_challenges)
        .collect();
    all.iter().find(|c| matches!(c, Challenge::Bearer { .. })).or(all.first()).cloned()
}

/// An error for a status the caller did not expect.
fn unexpected(registry: &str, status: StatusCode, resp: &reqwest::Response) -> RegistryError {
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    if status == StatusCode::TOO_MANY_REQUESTS {
        return RegistryError::TooManyRequests { registry: registry.to_string(), retry_after };
    }
    let mut url = resp.url().clone();
    url.set_query(None);
    RegistryError::Http { registry: registry.to_string(), status: status.as_u16(), url: url.to_string(), retry_after }
}

/// The whole body, or `None` when it is longer than `cap`.
async fn read_capped(mut resp: reqwest::Response, cap: u64, registry: &str) -> Result<Option<Bytes>, RegistryError> {
    if resp.content_length().is_some_and(|l| l > cap) {
        return Ok(None);
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error::classify(registry, &e))? {
        if buf.len() as u64 + chunk.len() as u64 > cap {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(Bytes::from(buf)))
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

/// `host[:port]` of a URL, as certs.d names directories.
fn host_port(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
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
