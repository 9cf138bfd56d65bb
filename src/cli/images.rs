//! `berth images`, `berth rmi`, `berth gc`.

use std::io::Write;

use anyhow::Context as _;
use clap::Args;

use super::Global;
use super::pull::open_store;
use berth::exit;
use berth::fetch::progress::human;
use berth::image::reference::{self, ImageRef};
use berth::runtime::state;
use berth::store::{ImageRecord, Store, StoreError};

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Print only digests.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Images to remove.
    #[arg(value_name = "REF", required = true)]
    pub references: Vec<String>,
}

#[derive(Debug, Args)]
pub struct GcArgs {}

pub fn images(g: &Global, a: ImagesArgs) -> anyhow::Result<u8> {
    let store = open_store(g)?;
    let images = store.images().context("cannot read the image list")?;
    let now = now();
    let mut out = std::io::stdout().lock();
    if a.quiet {
        for r in &images {
            writeln!(out, "{}", r.manifest)?;
        }
        return Ok(0);
    }
    let rows: Vec<[String; 4]> = images
        .iter()
        .map(|r| [r.name.clone(), r.manifest.hex()[..12].to_string(), human(r.size), age(now.saturating_sub(r.created))])
        .collect();
    let header = ["REFERENCE", "DIGEST", "SIZE", "CREATED"].map(String::from);
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().chain(std::iter::once(&header)).map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {}",
            row[0], row[1], row[2], row[3],
            w0 = widths[0], w1 = widths[1], w2 = widths[2]
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(0)
}

pub fn rmi(g: &Global, a: RmiArgs) -> anyhow::Result<u8> {
    let store = open_store(g)?;
    let mut missing = Vec::new();
    for r in &a.references {
        match untag(&store, r) {
            Ok(gone) => {
                for rec in gone {
                    exit::say(&format!("untagged {} ({})", rec.name, rec.manifest));
                    // Untagging is safe: a running pod holds its layers
                    // against gc (see unpack::cache), so nothing is refused.
                    let pods = state::pods_using(&g.paths().run_root, &rec.manifest.to_string());
                    if !pods.is_empty() {
                        exit::say(&format!(
                            "{} is in use by running pod {}: its layers stay until the pod ends",
                            rec.name,
                            pods.join(", ")
                        ));
                    }
                }
            }
            Err(StoreError::NotFound(_)) => missing.push(r.as_str()),
            Err(e) => return Err(e).with_context(|| format!("rmi {r}")),
        }
    }
    if !missing.is_empty() {
        anyhow::bail!("rmi: no image {} in the store", missing.join(", "));
    }
    Ok(0)
}

/// Removes `r` as given, or by its canonical name (`busybox` →
/// `docker.io/library/busybox:latest`).
fn untag(store: &Store, r: &str) -> Result<Vec<ImageRecord>, StoreError> {
    match store.untag(r) {
        Err(StoreError::NotFound(_)) => {}
        other => return other,
    }
    if let Ok(ImageRef::Registry(parsed)) = reference::parse(r) {
        let name = parsed.name();
        if name != r {
            return store.untag(&name);
        }
    }
    Err(StoreError::NotFound(r.to_string()))
}

pub fn gc(g: &Global, _a: GcArgs) -> anyhow::Result<u8> {
    let store = open_store(g)?;
    let report = store.gc().context("gc")?;
    exit::say(&format!(
        "removed {} blobs and {} partial files, freed {}",
        report.blobs_removed,
        report.ingest_removed,
        human(report.bytes_freed)
    ));
    drop(store);
    berth::provision::Provision::open(&g.paths(), false, g.verbose)?.gc_layers()?;
    let (images, bytes) = berth::vm::rootfs::gc(&g.paths());
    if images > 0 {
        exit::say(&format!("removed {images} VM disk images of removed layers, freed {}", human(bytes)));
    }
    Ok(0)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `5 minutes ago`, as podman prints ages. Not humantime: its
/// `format_duration` prints every unit, unrounded (`1h 2m 5s`, `3days`).
fn age(secs: u64) -> String {
    let (n, unit) = match secs {
        0..=59 => return "less than a minute ago".into(),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        86_400..=2_591_999 => (secs / 86_400, "day"),
        2_592_000..=31_535_999 => (secs / 2_592_000, "month"),
        _ => (secs / 31_536_000, "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    #[test]
    fn ages() {
        assert_eq!(super::age(5), "less than a minute ago");
        assert_eq!(super::age(60), "1 minute ago");
        assert_eq!(super::age(7200), "2 hours ago");
        assert_eq!(super::age(86_400 * 3), "3 days ago");
    }
}
