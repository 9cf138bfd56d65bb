//! agent.jar, always the controller's own: fetched by berth on the host
//! (never by a container), kept by sha256 under the store, and revalidated
//! with the server (`If-None-Match`, `If-Modified-Since`) on every start so
//! a controller upgrade is picked up at the next build.
//!
//! Layout under `<root>/agent/jars/`: `<sha256>.jar`, and per URL a small
//! JSON record (`sources/<key>.json`) of the validators and the digest last
//! served. Files are written to a temporary name and renamed, so agents
//! starting at once never see half a jar.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum JarError {
    #[error("cannot fetch the agent jar from {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("cannot read the agent jar {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("caching the agent jar in {dir}")]
    Cache { dir: PathBuf, source: std::io::Error },
}

/// What the server said about a URL last time.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Source {
    url: String,
    sha256: String,
    etag: Option<String>,
    last_modified: Option<String>,
}

/// The cached jar for `source` (a URL, or a path on the host): its path.
pub fn resolve(root: &Path, source: &str, tls_verify: bool) -> Result<PathBuf, JarError> {
    let dir = root.join("agent").join("jars");
    let cache_err = |source| JarError::Cache { dir: dir.clone(), source };
    std::fs::create_dir_all(dir.join("sources")).map_err(cache_err)?;
    if source.starts_with("http://") || source.starts_with("https://") {
        fetch(&dir, source, tls_verify)
    } else {
        let path = Path::new(source);
        let mut f = std::fs::File::open(path).map_err(|e| JarError::Read { path: path.into(), source: e })?;
        store(&dir, &mut f).map_err(|e| match e {
            StoreError::Read(e) => JarError::Read { path: path.into(), source: e },
            StoreError::Write(e) => cache_err(e),
        })
    }
}

/// A short, file-name-safe key for a URL (also the jar cache's key).
pub fn url_key(url: &str) -> String {
    hex::encode(&Sha256::digest(url.as_bytes())[..8])
}

fn fetch(dir: &Path, url: &str, tls_verify: bool) -> Result<PathBuf, JarError> {
    let unreachable = |reason: String| JarError::Unreachable { url: url.to_string(), reason };
    let record = dir.join("sources").join(format!("{}.json", url_key(url)));
    let known: Option<Source> = std::fs::read(&record).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let known = known.filter(|s| s.url == url && dir.join(format!("{}.jar", s.sha256)).is_file());

    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = crate::fetch::pull::runtime().map_err(|e| unreachable(e.to_string()))?;
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .read_timeout(std::time::Duration::from_secs(60))
        .tls_danger_accept_invalid_certs(!tls_verify)
        .build()
        .map_err(|e| unreachable(e.to_string()))?;
    let mut req = client.get(url);
    if let Some(k) = &known {
        if let Some(e) = &k.etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, e);
        }
        if let Some(m) = &k.last_modified {
            req = req.header(reqwest::header::IF_MODIFIED_SINCE, m);
        }
    }
    let (status, etag, last_modified, body) = rt.block_on(async {
        let resp = req.send().await.map_err(|e| unreachable(crate::runtime::error_chain(&e)))?;
        let header = |h| resp.headers().get(h).and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok()).map(String::from);
        let (status, etag, modified) = (resp.status(), header(reqwest::header::ETAG), header(reqwest::header::LAST_MODIFIED));
        let body = if status.is_success() { Some(resp.bytes().await.map_err(|e| unreachable(e.to_string()))?) } else { None };
        Ok::<_, JarError>((status, etag, modified, body))
    })?;
    drop(rt);
    if status == reqwest::StatusCode::NOT_MODIFIED {
        if let Some(k) = known {
            tracing::info!("agent jar {url}: not modified ({})", &k.sha256[..12]);
            return Ok(dir.join(format!("{}.jar", k.sha256)));
        }
    }
    let body = body.ok_or_else(|| unreachable(format!("the server answered {status}")))?;
    let path = store(dir, &mut &body[..]).map_err(|e| match e {
        StoreError::Read(e) => unreachable(e.to_string()),
        StoreError::Write(e) => JarError::Cache { dir: dir.into(), source: e },
    })?;
    let sha256 = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    tracing::info!("agent jar {url}: fetched {} bytes ({})", body.len(), &sha256[..12]);
    let src = Source { url: url.to_string(), sha256, etag, last_modified };
    let json = serde_json::to_vec(&src).expect("plain struct");
    write_atomic(&record, &json).map_err(|e| JarError::Cache { dir: dir.into(), source: e })?;
    Ok(path)
}

enum StoreError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copies `r` into `<dir>/<sha256>.jar` (unless already there).
fn store(dir: &Path, r: &mut dyn std::io::Read) -> Result<PathBuf, StoreError> {
    let tmp = tmp_name(dir);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(StoreError::Write)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r.read(&mut buf).map_err(StoreError::Read)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            f.write_all(&buf[..n]).map_err(StoreError::Write)?;
        }
        f.sync_all().map_err(StoreError::Write)?;
        let path = dir.join(format!("{}.jar", hex::encode(h.finalize())));
        set_readable(&tmp).map_err(StoreError::Write)?;
        std::fs::rename(&tmp, &path).map_err(StoreError::Write)?;
        Ok(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_name(path.parent().unwrap_or(Path::new(".")));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn tmp_name(dir: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    dir.join(format!(".tmp-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

/// Mode 0644: whatever uid the container runs as reads the jar.
fn set_readable(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_jar_is_cached_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let jar = dir.path().join("agent.jar");
        std::fs::write(&jar, b"PK not really").unwrap();
        let p = resolve(dir.path(), jar.to_str().unwrap(), true).unwrap();
        assert_eq!(p.file_name().unwrap().to_str().unwrap(), format!("{}.jar", hex::encode(Sha256::digest(b"PK not really"))));
        assert_eq!(std::fs::read(&p).unwrap(), b"PK not really");
        let missing = resolve(dir.path(), "/nonexistent/agent.jar", true).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/agent.jar"), "{missing}");
    }

    #[test]
    fn an_unreachable_url_is_named() {
        let dir = tempfile::tempdir().unwrap();
        // Port 9 (discard) on loopback: nothing listens in the test machine.
        let e = resolve(dir.path(), "http://127.0.0.1:9/jnlpJars/agent.jar", true).unwrap_err();
        assert!(e.to_string().starts_with("cannot fetch the agent jar from http://127.0.0.1:9/jnlpJars/agent.jar"), "{e}");
    }
}
