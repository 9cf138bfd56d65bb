//! Extra CA certificates per registry, from `certs.d` directories as podman
//! and Docker read them: `DIR/HOST[:PORT]/*.crt` under
//! `$XDG_CONFIG_HOME/containers/certs.d` (default `~/.config/…`),
//! `/etc/containers/certs.d` and `/etc/docker/certs.d`, all of them.
//!
//! `$BERTH_CERT_DIR` (like podman's `--cert-dir`) names one flat directory
//! whose `*.crt` are trusted for every registry instead.
//! Client certificates (`*.cert`/`*.key`) are not supported.

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;

use super::{config_home, ConfigError};

/// Where per-registry CA certificates are looked for.
#[derive(Debug, Clone, Default)]
pub struct CertDirs {
    /// `certs.d`-style roots: `ROOT/HOST[:PORT]/*.crt`.
    pub roots: Vec<PathBuf>,
    /// A flat directory used for every host instead of `roots`.
    pub cert_dir: Option<PathBuf>,
}

impl CertDirs {
    /// The host's directories, or `$BERTH_CERT_DIR`.
    pub fn from_env() -> CertDirs {
        if let Some(d) = std::env::var_os("BERTH_CERT_DIR").filter(|d| !d.is_empty()) {
            return CertDirs { roots: Vec::new(), cert_dir: Some(PathBuf::from(d)) };
        }
        let mut roots = Vec::new();
        if let Some(c) = config_home() {
            roots.push(c.join("containers/certs.d"));
        }
        roots.push(PathBuf::from("/etc/containers/certs.d"));
        roots.push(PathBuf::from("/etc/docker/certs.d"));
        CertDirs { roots, cert_dir: None }
    }

    /// The extra trusted roots for `host` (`host[:port]` as in references).
    pub fn roots_for(&self, host: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        if let Some(d) = &self.cert_dir {
            return read_dir_certs(d);
        }
        // A host name with '/' or '..' never names a directory here.
        if host.is_empty() || host.contains('/') || host.starts_with('.') {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for root in &self.roots {
            out.extend(read_dir_certs(&root.join(host))?);
        }
        Ok(out)
    }
}

/// Every certificate in `dir/*.crt`, sorted by file name; a missing directory
/// has none.
fn read_dir_certs(dir: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let files = super::files_with_extension(dir, "crt")?;
    let mut out = Vec::new();
    for f in files {
        let pem = std::fs::read(&f).map_err(|source| ConfigError::Read { path: f.clone(), source })?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| ConfigError::Invalid { path: f.clone(), reason: format!("bad PEM: {e}") })?;
        if certs.is_empty() {
            return Err(ConfigError::Invalid { path: f, reason: "no PEM certificate in file".into() });
        }
        out.extend(certs);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn make_ca(path: &Path) {
        let key = path.with_extension("key");
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=t"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn per_host_directories_and_a_flat_cert_dir() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a/certs.d");
        let b = dir.path().join("b/certs.d");
        std::fs::create_dir_all(a.join("reg.example:5000")).unwrap();
        std::fs::create_dir_all(b.join("reg.example:5000")).unwrap();
        make_ca(&a.join("reg.example:5000/one.crt"));
        make_ca(&b.join("reg.example:5000/two.crt"));
        // Keys and client certificates are not CAs.
        std::fs::write(b.join("reg.example:5000/client.cert"), "junk").unwrap();
        let dirs = CertDirs { roots: vec![a.clone(), dir.path().join("missing"), b.clone()], cert_dir: None };
        assert_eq!(dirs.roots_for("reg.example:5000").unwrap().len(), 2);
        assert!(dirs.roots_for("reg.example").unwrap().is_empty(), "the port is part of the name");
        for hostile in ["", "../a", "..", "x/../../etc"] {
            assert!(dirs.roots_for(hostile).unwrap().is_empty(), "{hostile:?}");
        }
        let flat = CertDirs { roots: vec![], cert_dir: Some(a.join("reg.example:5000")) };
        assert_eq!(flat.roots_for("any.host").unwrap().len(), 1);
    }

    #[test]
    fn a_bad_certificate_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("h")).unwrap();
        std::fs::write(dir.path().join("h/ca.crt"), "not a certificate").unwrap();
        let dirs = CertDirs { roots: vec![dir.path().to_path_buf()], cert_dir: None };
        let e = dirs.roots_for("h").unwrap_err().to_string();
        assert!(e.contains("ca.crt") && e.contains("no PEM certificate"), "{e}");
    }
}
