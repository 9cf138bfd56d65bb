//! `berth bundle`: a self-contained OCI runtime bundle (usable by runc or
//! youki) from an image, through the same layer cache and spec code the pod
//! runtime uses.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

use berth::provision::{Fetch, Provision};
use berth::bundle::{self, ContainerSettings, UserSpec};
use super::Global;

#[derive(Debug, Args)]
pub struct BundleArgs {
    /// Container name (the bundle's hostname) [default: the image's base name].
    #[arg(long)]
    pub name: Option<String>,
    /// Map every file owner to the user, even where a subordinate id range
    /// would keep the image's owners.
    #[arg(long)]
    pub squash_ids: bool,
    /// Override the image's Entrypoint (drops its Cmd unless CMD is given).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Set an environment variable (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// User (NAME or UID[:GID]) to run as.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Platform to pull [default: the host's].
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Verify registry TLS certificates.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub tls_verify: bool,
    /// Image to bundle (pulled if not in the store).
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// Directory to write the bundle into (created; must be empty if it exists).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Command overriding the image's Cmd.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub fn run(g: &Global, a: BundleArgs) -> anyhow::Result<u8> {
    let dir = std::path::absolute(&a.dir).unwrap_or(a.dir.clone());
    let created = claim_dir(&dir)?;
    let result = write(g, &a, &dir);
    if result.is_err() {
        // Nothing partial: remove what this run wrote.
        let cleanup = if created { berth::runtime::host::cleanup::remove_tree(&dir) } else { empty_dir(&dir) };
        if let Err(e) = cleanup {
            tracing::warn!("cleaning up {}: {e}", dir.display());
        }
    }
    result.map(|()| 0)
}

fn write(g: &Global, a: &BundleArgs, dir: &Path) -> anyhow::Result<()> {
    let prov = Provision::open(&g.paths(), a.squash_ids, g.verbose)?;
    let fetch = Fetch { platform: a.platform.clone(), tls_verify: a.tls_verify, quiet: false };
    // gc waits until the rootfs is written from the image's blobs.
    let _provisioning = prov.store.lock_shared()?;
    let image = prov.images(std::slice::from_ref(&a.image), &fetch)?.remove(0);

    let rootfs = dir.join("rootfs");
    std::fs::create_dir(&rootfs).with_context(|| format!("creating {}", rootfs.display()))?;
    prov.flatten(&image, &rootfs)?;
    bundle::prepare_rootfs(&rootfs)?;

    let hostname = a.name.clone().unwrap_or_else(|| base_name(&a.image));
    let mut s = ContainerSettings::new(hostname).user_namespace(user_namespace(&prov.mapping));
    if let Some(ep) = &a.entrypoint {
        s = s.command(vec![ep.clone()]);
    }
    if !a.command.is_empty() {
        s = s.args(a.command.clone());
    }
    for kv in &a.env {
        let (k, v) = kv.split_once('=').with_context(|| format!("-e {kv:?}: expected K=V"))?;
        s = s.env(k, v);
    }
    if let Some(w) = &a.workdir {
        s = s.working_dir(w.clone());
    }
    if let Some(u) = &a.user {
        s = s.user(UserSpec::parse(u)?);
    }
    let spec = bundle::runtime_spec(&image.config, &rootfs, &s)?;
    bundle::write_config(dir, &spec)?;
    Ok(())
}

/// A standalone bundle makes its own user namespace when run rootless,
/// with the mapping its files were written for; as root, no namespace.
fn user_namespace(m: &berth::userns::IdMapping) -> bundle::UserNamespace {
    if nix::unistd::Uid::current().is_root() && !m.is_full() {
        return bundle::UserNamespace::Inherited;
    }
    let conv = |rs: &[berth::userns::IdRange]| rs.iter().map(|r| bundle::id_map(r.container, r.host, r.count)).collect();
    bundle::UserNamespace::Private { uid: conv(&m.uids), gid: conv(&m.gids) }
}

/// `docker.io/library/busybox:1.36` → `busybox`.
fn base_name(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    let name = last.split(':').next().unwrap_or(last);
    let label: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let label = label.trim_matches('-');
    if label.is_empty() { "container".into() } else { label.chars().take(63).collect() }
}

/// Creates `dir`, or accepts an existing empty one. Returns whether it was
/// created here.
fn claim_dir(dir: &Path) -> anyhow::Result<bool> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let empty = std::fs::read_dir(dir)
                .with_context(|| format!("bundle directory {}", dir.display()))?
                .next()
                .is_none();
            anyhow::ensure!(empty, "bundle directory {} is not empty", dir.display());
            Ok(false)
        }
        Err(e) => Err(e).with_context(|| format!("creating bundle directory {}", dir.display())),
    }
}

fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        berth::runtime::host::cleanup::remove_tree(&e?.path())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::base_name;

    #[test]
    fn base_names() {
        assert_eq!(base_name("busybox"), "busybox");
        assert_eq!(base_name("localhost:5000/a/b_c:1.0@sha256:abc"), "b-c");
        assert_eq!(base_name("docker.io/library/busybox:1.36"), "busybox");
    }
}
