//! Where berth keeps things on the host.
//!
//! - the store (images, blobs, unpacked layers): `--root`, `$BERTH_ROOT`,
//!   `$XDG_DATA_HOME/berth`, or `~/.local/share/berth`;
//! - run state (pods, containers, logs): `--run-root`, `$BERTH_RUN_ROOT`,
//!   `$XDG_RUNTIME_DIR/berth`, or `/tmp/berth-UID`.
//!
//! Both are created mode 0700: unpacked layers can hold setuid files owned by
//! the user's subordinate ids, which nobody else should reach.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Paths {
    /// Content store and layer cache.
    pub root: PathBuf,
    /// Per-pod state; removed when a pod ends.
    pub run_root: PathBuf,
}

impl Paths {
    /// Resolves both directories from explicit options, then the environment.
    pub fn resolve(root: Option<PathBuf>, run_root: Option<PathBuf>) -> Paths {
        let root = root
            .or_else(|| env_path("BERTH_ROOT"))
            .unwrap_or_else(default_root);
        let run_root = run_root
            .or_else(|| env_path("BERTH_RUN_ROOT"))
            .unwrap_or_else(default_run_root);
        Paths { root, run_root }
    }

    /// Creates `dir` (and parents) with mode 0700 if missing.
    pub fn ensure_private_dir(dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn default_root() -> PathBuf {
    if let Some(d) = env_path("XDG_DATA_HOME") {
        return d.join("berth");
    }
    home_dir().join(".local/share/berth")
}

fn default_run_root() -> PathBuf {
    if let Some(d) = env_path("XDG_RUNTIME_DIR") {
        return d.join("berth");
    }
    PathBuf::from(format!("/tmp/berth-{}", nix::unistd::getuid()))
}

/// `$HOME`, or the home directory from the password database.
pub fn home_dir() -> PathBuf {
    if let Some(h) = env_path("HOME") {
        return h;
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The first executable file `name` in `$PATH` (a Debian default where it
/// is unset, as execvp(3) has one): helpers berth runs (pasta, mkfs.erofs,
/// QEMU) are looked up here, to say which package is missing up front.
pub fn find_executable(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}
