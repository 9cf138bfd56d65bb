//! Host configuration, read as podman reads it: `registries.conf` (search
//! registries, mirrors, insecure and blocked registries, short-name aliases),
//! credential files and helpers, and per-registry CA certificates (`certs.d`).

pub mod auth;
pub mod certs;
pub mod registries;

use std::path::PathBuf;

pub use auth::{lookup_credentials, AuthFiles, Credentials};
pub use certs::CertDirs;
pub use registries::{Endpoint, Registries};

/// A configuration file or helper that berth could not use.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("credential helper {helper}: {reason}")]
    Helper { helper: String, reason: String },
}

/// `$HOME`, if set and absolute.
fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from).filter(|p| p.is_absolute())
}

/// `$XDG_CONFIG_HOME`, else `~/.config`.
fn config_home() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| home_dir().map(|h| h.join(".config")))
}

/// The files `dir/*.EXT`, sorted by name; a missing directory has none.
pub(crate) fn files_with_extension(dir: &std::path::Path, ext: &str) -> Result<Vec<std::path::PathBuf>, ConfigError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(ConfigError::Read { path: dir.to_path_buf(), source }),
    };
    let mut files: Vec<std::path::PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext) && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}
