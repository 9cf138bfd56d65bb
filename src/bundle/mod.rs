//! OCI runtime bundles: `config.json` from an image config plus overrides,
//! and the rootfs fixes made before a runtime is handed the bundle.
//!
//! * [`spec`] builds the runtime [`Spec`] (oci-spec 0.8 types; the JSON is the
//!   boundary to the runtime, so libcontainer reading it with its own oci-spec
//!   version is fine): process from Entrypoint/Cmd with Kubernetes override
//!   semantics, environment, working directory, user, labels as annotations,
//!   runc's default mounts and masked/read-only paths, Docker's default
//!   capabilities, `noNewPrivileges`, `RLIMIT_NOFILE`, namespaces and the
//!   default seccomp profile.
//! * [`seccomp`] is the default seccomp profile (moby's semantics), plus
//!   [`libcontainer_compat`], which the pod runtime must apply to every spec
//!   it hands to libcontainer 0.7 (it reads SCMP_CMP_MASKED_EQ operands
//!   swapped; without it the `clone` rule allows user namespaces).
//! * [`user`] resolves `USER name[:group]` in the image's own `/etc/passwd`
//!   and `/etc/group`, read in-root with size caps (CVE-2024-9676).
//! * [`rootfs`] makes `/dev`, `/proc`, `/sys`, `/etc` real directories and
//!   `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf` regular files, in-root,
//!   so that no runtime mount can be redirected by a symlink in the image
//!   (runc CVE-2026-41579, crun CVE-2026-88264/5).
//!
//! This module knows nothing of the store, layers or the pod: it gets an
//! image config and a rootfs path.

pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod user;

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use oci_spec::runtime::Spec;
pub use rootfs::prepare_rootfs;
pub use seccomp::{default_seccomp, libcontainer_compat, seccomp_for};
pub use spec::{
    default_capabilities, id_map, remove_namespace, runtime_spec, set_namespace, ContainerSettings,
    ProvideUser, UserNamespace, DEFAULT_NOFILE, DEFAULT_PATH,
};
pub use user::{ResolvedUser, UserDb, UserSpec};

/// Why a bundle could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("image has no command (no Entrypoint or Cmd, and none given)")]
    NoCommand,
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    #[error("invalid user {spec:?}: {why}")]
    UserSpec { spec: String, why: &'static str },
    #[error("unable to find user {0}: no matching entry in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entry in the image's /etc/group")]
    UnknownGroup(String),
    #[error("image's {path}: {why}")]
    UserDb { path: &'static str, why: String },
    #[error("rootfs {}: {op} {path}", rootfs.display())]
    Rootfs { rootfs: PathBuf, op: &'static str, path: &'static str, source: pathrs::error::Error },
    #[error("rootfs {}: {op} {path}", rootfs.display())]
    RootfsIo { rootfs: PathBuf, op: &'static str, path: &'static str, source: std::io::Error },
    #[error("building the runtime spec")]
    Spec(#[from] oci_spec::OciSpecError),
    #[error("writing {}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// Writes `spec` as `bundle_dir/config.json`, atomically: a reader sees the
/// old file or the whole new one, never a partial one. Mode 0600, since the
/// environment may carry credentials.
pub fn write_config(bundle_dir: &Path, spec: &Spec) -> Result<(), BundleError> {
    write_config_file(bundle_dir, spec, true)
}

/// [`write_config`] without the fsync, for a bundle that lives only as long
/// as the pod that reads it (its state directory): syncing it only delays
/// the pod's start.
pub fn write_pod_config(bundle_dir: &Path, spec: &Spec) -> Result<(), BundleError> {
    write_config_file(bundle_dir, spec, false)
}

fn write_config_file(bundle_dir: &Path, spec: &Spec, durable: bool) -> Result<(), BundleError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let path = bundle_dir.join("config.json");
    let tmp = bundle_dir.join(format!(
        ".config.json.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let err = |source| BundleError::Write { path: path.clone(), source };
    let json = serde_json::to_vec_pretty(spec).map_err(|e| err(e.into()))?;
    let result = (|| {
        let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(&json)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}
