//! How bytes reach a registry: one reqwest client per host with that host's
//! CAs, the scheme each host speaks, and redirects followed by hand.
//!
//! HTTPS, verified against the system roots plus the host's
//! `certs.d` CAs. An endpoint marked `insecure` in registries.conf, or any
//! endpoint when `tls_verify` is false, accepts an unverifiable certificate
//! and falls back to plain HTTP. As in podman, `localhost` and 127.0.0.1 are
//! not special: they need one of those two settings for plain HTTP.
//!
//! Redirects are followed by hand (blob storage lives elsewhere) and the
//! `Authorization` header is sent only to the origin it was meant for: never
//! to another scheme, host or port (distribution spec; image-unpack-security
//! item 20).

use std::time::SystemTime;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use url::Url;

use super::auth::challenge_of;
use super::{error, parse_retry_after, slow, Challenge, Client, RegistryError};
use crate::image::reference::DOCKER_HUB;

const MAX_REDIRECTS: usize = 10;

#[derive(Clone)]
pub(super) struct HostState {
    /// `https://host` or `http://host`.
    pub(super) base: Url,
    pub(super) challenge: Option<Challenge>,
}

impl Client {
    /// Sends one request, following redirects by hand; `auth` goes only to
    /// the origin of `url`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send(
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
            let o = &self.inner.opts;
            let resp = slow::headers(async { req.send().await.map_err(|e| error::classify(registry, &e)) }, o.low_speed, &o.notices, registry).await?;
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
    pub(super) fn http_for(&self, host_port: &str, insecure: bool) -> Result<reqwest::Client, RegistryError> {
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
    pub(super) async fn host_state(&self, ep_host: &str, insecure: bool) -> Result<HostState, RegistryError> {
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
}

fn is_http_status(e: &RegistryError) -> bool {
    matches!(
        e,
        RegistryError::Http { .. } | RegistryError::TooManyRequests { .. } | RegistryError::Unauthorized { .. } | RegistryError::Forbidden { .. }
    )
}

/// An error for a status the caller did not expect.
pub(super) fn unexpected(registry: &str, status: StatusCode, resp: &reqwest::Response) -> RegistryError {
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

/// The whole body, or `None` when it is longer than `cap`; a body slower
/// than `low` fails.
pub(super) async fn read_capped(resp: reqwest::Response, cap: u64, registry: &str, low: slow::LowSpeed) -> Result<Option<Bytes>, RegistryError> {
    use futures_util::StreamExt as _;
    if resp.content_length().is_some_and(|l| l > cap) {
        return Ok(None);
    }
    let host = registry.to_string();
    let mut body = slow::body(resp.bytes_stream().map(move |r| r.map_err(|e| error::classify(&host, &e))), low, registry);
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await.transpose()? {
        if buf.len() as u64 + chunk.len() as u64 > cap {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(Bytes::from(buf)))
}

/// `host[:port]` of a URL, as certs.d names directories.
fn host_port(url: &Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}
