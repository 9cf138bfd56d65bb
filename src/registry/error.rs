//! What can go wrong talking to a registry, classified for the user: each
//! message is one line naming the registry (or repository) concerned.

use std::time::Duration;

use crate::config::ConfigError;
use crate::image::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry}: unknown host ({reason})")]
    UnknownHost { registry: String, reason: String },
    #[error("registry {registry}: connection refused")]
    ConnectionRefused { registry: String },
    #[error("registry {registry}: cannot connect: {reason}")]
    Connect { registry: String, reason: String },
    #[error("registry {registry}: timed out")]
    Timeout { registry: String },
    /// No response headers within the low-speed window.
    #[error("registry {registry}: no response in {}", crate::registry::slow::secs(*waited))]
    NoResponse { registry: String, waited: Duration },
    /// Fewer bytes than the low-speed limit in one window of a body.
    #[error("registry {registry}: too slow: less than {bytes} bytes in {}", crate::registry::slow::secs(*window))]
    TooSlow { registry: String, bytes: u64, window: Duration },
    #[error("registry {registry}: TLS error: {reason}")]
    Tls { registry: String, reason: String },
    #[error("registry {registry}: 401 Unauthorized ({})", sent(*credentials_sent, "rejected"))]
    Unauthorized { registry: String, credentials_sent: bool },
    #[error("registry {registry}: 403 Forbidden ({})", sent(*credentials_sent, "not permitted"))]
    Forbidden { registry: String, credentials_sent: bool },
    /// `repository` is `HOST/REPO`; `what` is `tag T` or `manifest sha256:…`.
    #[error("{what} not found in {repository}")]
    ManifestNotFound { repository: String, what: String },
    #[error("blob {digest} not found in {repository}")]
    BlobNotFound { repository: String, digest: Digest },
    #[error("{repository}: wrong manifest media type: {reason}")]
    WrongMediaType { repository: String, reason: String },
    #[error("{repository}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { repository: String, expected: Digest, actual: Digest },
    #[error("{repository}: {what} larger than {limit} bytes")]
    TooLarge { repository: String, what: String, limit: u64 },
    #[error("registry {registry}: invalid response: {reason}")]
    BadResponse { registry: String, reason: String },
    #[error("registry {registry}: 429 Too Many Requests{}", retry_after.map(|d| format!(" (asks to retry after {}s)", d.as_secs())).unwrap_or_default())]
    TooManyRequests { registry: String, retry_after: Option<Duration> },
    #[error("registry {registry}: HTTP {status} for {url}")]
    Http { registry: String, status: u16, url: String, retry_after: Option<Duration> },
    #[error("registry {registry}: transfer failed: {reason}")]
    Io { registry: String, reason: String },
    #[error("{reference} is blocked by registries.conf")]
    Blocked { reference: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
}

fn sent(credentials_sent: bool, verb: &str) -> String {
    if credentials_sent {
        format!("credentials were sent and {verb}")
    } else {
        "no credentials were sent".to_string()
    }
}

impl RegistryError {
    /// Whether trying again may succeed: connection trouble, timeouts, a
    /// transfer cut short, 429 and 5xx. Never other 4xx.
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::ConnectionRefused { .. }
            | RegistryError::Connect { .. }
            | RegistryError::Timeout { .. }
            | RegistryError::NoResponse { .. }
            | RegistryError::TooSlow { .. }
            | RegistryError::Io { .. }
            | RegistryError::TooManyRequests { .. } => true,
            RegistryError::Http { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// The delay the server asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RegistryError::TooManyRequests { retry_after, .. } | RegistryError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the next endpoint (a mirror's fallback) is worth trying.
    pub(crate) fn try_next_endpoint(&self) -> bool {
        !matches!(self, RegistryError::DigestMismatch { .. } | RegistryError::Config(_) | RegistryError::Client(_))
    }
}

/// Turns a reqwest failure (no HTTP status) into what the user must hear.
pub(crate) fn classify(registry: &str, e: &reqwest::Error) -> RegistryError {
    let registry = registry.to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut text = String::new();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return RegistryError::ConnectionRefused { registry },
                std::io::ErrorKind::TimedOut => return RegistryError::Timeout { registry },
                _ => {}
            }
            if let Some(tls) = tls_error(io) {
                return RegistryError::Tls { registry, reason: tls.to_string() };
            }
        }
        if let Some(tls) = s.downcast_ref::<rustls::Error>() {
            return RegistryError::Tls { registry, reason: tls.to_string() };
        }
        let msg = s.to_string();
        if msg.starts_with("dns error") || msg.contains("failed to lookup address") {
            let reason = deepest(s);
            return RegistryError::UnknownHost { registry, reason };
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&msg);
        source = s.source();
    }
    if e.is_timeout() {
        return RegistryError::Timeout { registry };
    }
    if e.is_connect() {
        return RegistryError::Connect { registry, reason: text };
    }
    if e.is_builder() || e.is_request() && !e.is_body() {
        return RegistryError::Connect { registry, reason: text };
    }
    RegistryError::Io { registry, reason: text }
}

/// The rustls error inside (possibly nested) io::Errors: io::Error's
/// `source()` skips the error it wraps, so unwrap by hand.
fn tls_error(io: &std::io::Error) -> Option<&rustls::Error> {
    let mut inner = io.get_ref()?;
    loop {
        if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        inner = inner.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}

fn deepest(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classes() {
        let r = || "r.example".to_string();
        let http = |status| RegistryError::Http { registry: r(), status, url: "u".into(), retry_after: None };
        assert!(http(500).is_retryable() && http(503).is_retryable());
        assert!(!http(400).is_retryable() && !http(404).is_retryable() && !http(405).is_retryable());
        assert!(RegistryError::TooManyRequests { registry: r(), retry_after: None }.is_retryable());
        assert!(RegistryError::ConnectionRefused { registry: r() }.is_retryable());
        assert!(!RegistryError::Unauthorized { registry: r(), credentials_sent: true }.is_retryable());
        assert!(!RegistryError::UnknownHost { registry: r(), reason: "x".into() }.is_retryable());
        assert!(!RegistryError::Tls { registry: r(), reason: "x".into() }.is_retryable());
    }

    #[test]
    fn messages_name_the_registry_and_the_credentials() {
        let e = RegistryError::Unauthorized { registry: "r.example:5000".into(), credentials_sent: false };
        assert_eq!(e.to_string(), "registry r.example:5000: 401 Unauthorized (no credentials were sent)");
        let e = RegistryError::Forbidden { registry: "r.example".into(), credentials_sent: true };
        assert_eq!(e.to_string(), "registry r.example: 403 Forbidden (credentials were sent and not permitted)");
        let e = RegistryError::ManifestNotFound { repository: "r.example/a/b".into(), what: "tag v1".into() };
        assert_eq!(e.to_string(), "tag v1 not found in r.example/a/b");
        let e = RegistryError::TooManyRequests { registry: "r".into(), retry_after: Some(Duration::from_secs(90)) };
        assert_eq!(e.to_string(), "registry r: 429 Too Many Requests (asks to retry after 90s)");
    }
}
