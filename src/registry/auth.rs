//! Authentication with a registry: the challenge learnt from `GET /v2/`,
//! Bearer tokens and Basic credentials, and the authenticated request.
//!
//! `GET /v2/` once per host learns the challenge; Bearer tokens are
//! fetched from the realm (with basic credentials or an identity token when
//! the host has some) and cached per (host, repository) until they expire;
//! Basic sends the credentials with each request. A 401 on a resource
//! refreshes the token once.

use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use url::Url;

use super::transport::{read_capped, unexpected, HostState};
use super::{challenge, parse_challenges, Challenge, Client, RegistryError};
use crate::config::{Credentials, Endpoint};

/// Largest token-endpoint reply berth reads.
const MAX_TOKEN_REPLY: u64 = 1 << 20;

#[derive(Clone)]
pub(super) struct Token {
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
    /// GET `path` on `ep` with authentication. 401, 403, 429 and 5xx become
    /// errors; every other status is the caller's to judge.
    pub(super) async fn request(&self, ep: &Endpoint, path: &str, headers: HeaderMap) -> Result<reqwest::Response, RegistryError> {
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
        let body = read_capped(resp, MAX_TOKEN_REPLY, &ep.host, self.inner.opts.low_speed).await?.ok_or_else(|| bad("token reply too large".into()))?;
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

fn basic(user: &str, pass: &str) -> Result<HeaderValue, RegistryError> {
    let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let mut v = HeaderValue::from_str(&format!("Basic {enc}")).map_err(|_| RegistryError::Client("credentials".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

/// The preferred challenge in a response: Bearer, else Basic.
pub(super) fn challenge_of(headers: &HeaderMap) -> Option<Challenge> {
    let all: Vec<Challenge> = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_challenges)
        .collect();
    all.iter().find(|c| matches!(c, Challenge::Bearer { .. })).or(all.first()).cloned()
}
