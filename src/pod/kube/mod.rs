//! Kubernetes Pod manifests (`apiVersion: v1`, `kind: Pod`) → [`Pod`].
//!
//! berth reads the subset of the Pod API it can honour, with Kubernetes'
//! types, defaults and validation, so that a file that runs here runs on a
//! cluster unchanged. Everything else is sorted three ways:
//!
//! * fields that only matter to a cluster (scheduling, labels, pull
//!   secrets, `restartPolicy: Never`, ...) are accepted silently;
//! * fields berth cannot honour but whose absence leaves the build working
//!   (`livenessProbe`, `lifecycle`, unknown fields, ...) give one warning
//!   each, naming the field's path;
//! * fields whose absence would run something different from what the file
//!   says (`valueFrom`, `envFrom`, secret volumes, `httpGet` probes, ...) are
//!   errors.
//!
//! Every error names `file:line:column`.
//!
//! What the Kubernetes plugin fills in is defaulted, so its pod templates
//! run as written: `apiVersion`, `kind`, `metadata.name` (from the file's
//! name), the `jnlp` container without an image (the agent's), and the
//! downward API's `fieldRef`s (values the pod has under berth).
//!
//! The work is split by job: `walk` reads the YAML tree field by field,
//! remembering positions and judging fields nobody read; `mapping` maps
//! the Pod API onto [`Pod`], `container` its containers; `scalar` coerces
//! scalars the way Kubernetes does; `expand` resolves `$(VAR)` references;
//! `downward` gives `fieldRef` values; `yaml` builds the tree.

mod container;
mod downward;
mod expand;
mod mapping;
mod scalar;
mod walk;
mod yaml;

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::Pod;
use walk::Walk;
use yaml::Mark;

/// A Pod manifest is a few kilobytes; anything near this is not one.
pub const MAX_FILE_SIZE: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum PodFileError {
    #[error("cannot read pod file {file}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: pod file is larger than {limit} bytes")]
    TooLarge { file: String, limit: u64 },
    #[error("{file}:{line}:{column}: {message}")]
    Invalid { file: String, line: usize, column: usize, message: String },
}

/// A field berth ignores, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The field, e.g. `spec.containers[0].lifecycle`.
    pub path: String,
    /// The whole sentence, e.g. `ignoring unknown field spec.containers[0].lifecycle`.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
    }
}

/// What the command line changes while a file is read: things the file's
/// own values depend on (a `fieldRef` to `metadata.name`) or that decide
/// whether it is valid at all (a secret volume).
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Replaces `metadata.name` (`--name`).
    pub name: Option<String>,
    /// Volumes by name that become this host file or directory whatever
    /// their source (`--volume-from NAME=PATH`): how a `secret` or
    /// `configMap` volume gets its content outside a cluster. Those, like on
    /// a cluster, are mounted read-only.
    pub volume_from: Vec<(String, PathBuf)>,
}

/// Reads and parses a pod file; each warning goes to `tracing::warn!`.
pub fn from_file(path: &Path) -> Result<Pod, PodFileError> {
    let (pod, warnings) = read_file(path, &ReadOptions::default())?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    Ok(pod)
}

/// Reads and parses a pod file with the command line's changes; the
/// warnings are the caller's to show.
pub fn read_file(path: &Path, opts: &ReadOptions) -> Result<(Pod, Vec<Warning>), PodFileError> {
    let file = path.display().to_string();
    let read_err = |source| PodFileError::Read { file: file.clone(), source };
    let f = std::fs::File::open(path).map_err(read_err)?;
    // Read one byte past the cap rather than trusting metadata, which a
    // FIFO or /proc file does not have.
    let mut bytes = Vec::new();
    f.take(MAX_FILE_SIZE + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(PodFileError::TooLarge { file, limit: MAX_FILE_SIZE });
    }
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            let before = String::from_utf8_lossy(&bytes[..e.valid_up_to()]);
            let mark = end_mark(&before);
            return Err(PodFileError::Invalid {
                file,
                line: mark.line,
                column: mark.column,
                message: "the file is not UTF-8 text".into(),
            });
        }
    };
    from_str_with(text, &file, opts)
}

/// Parses a Pod manifest. `file_name` is used in messages and for the
/// default pod name.
pub fn from_str(text: &str, file_name: &str) -> Result<(Pod, Vec<Warning>), PodFileError> {
    from_str_with(text, file_name, &ReadOptions::default())
}

/// [`from_str`] with the command line's changes.
pub fn from_str_with(text: &str, file_name: &str, opts: &ReadOptions) -> Result<(Pod, Vec<Warning>), PodFileError> {
    if text.len() as u64 > MAX_FILE_SIZE {
        return Err(PodFileError::TooLarge { file: file_name.into(), limit: MAX_FILE_SIZE });
    }
    let invalid = |mark: Mark, message: String| PodFileError::Invalid {
        file: file_name.into(),
        line: mark.line.max(1),
        column: mark.column.max(1),
        message,
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let root = yaml::parse_one(text)
        .map_err(|e| invalid(e.mark, e.message))?
        .ok_or_else(|| invalid(Mark { line: 1, column: 1 }, "the file holds no Pod".into()))?;
    let mut walk = Walk::new(opts.clone(), default_name(file_name));
    let pod = walk.pod(&root).map_err(|e| invalid(e.mark, e.message))?;
    pod.validate().map_err(|e| {
        let mark = walk.mark_of(&e.path).unwrap_or(root.mark);
        invalid(mark, format!("{}: {}", e.path, e.message))
    })?;
    // Checked here rather than at pull time, so the error points at its line.
    let all = pod.init_containers.iter().map(|c| ("initContainers", c)).chain(pod.containers.iter().map(|c| ("containers", c)));
    let mut index = HashMap::new();
    for (list, c) in all {
        let i = index.entry(list).or_insert(0usize);
        let path = format!("spec.{list}[{i}].image");
        *i += 1;
        // The agent container's image is berth agent's to choose.
        if c.agent {
            continue;
        }
        if let Err(e) = crate::image::reference::parse(&c.image) {
            let mark = walk.mark_of(&path).unwrap_or(root.mark);
            return Err(invalid(mark, format!("{path}: {}", crate::exit::chain(&e))));
        }
    }
    let warnings = walk
        .warnings
        .into_iter()
        .map(|(mark, path, message)| Warning { file: file_name.into(), line: mark.line, column: mark.column, path, message })
        .collect();
    Ok((pod, warnings))
}

/// A pod name for a file without one: its name as a DNS label with a
/// random suffix, as the Kubernetes plugin names its pods, so two builds
/// from one template can run at once (`KubernetesPod.yaml` gives
/// `kubernetespod-x7k2q`).
fn default_name(file_name: &str) -> String {
    let stem = Path::new(file_name).file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
    let mut label = String::new();
    for c in stem.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            label.push(c);
        } else if !label.is_empty() && !label.ends_with('-') {
            label.push('-');
        }
    }
    label.truncate(57);
    let label = label.trim_end_matches('-');
    let label = if label.is_empty() { "pod" } else { label };
    format!("{label}-{}", crate::pod::random_suffix(5))
}

/// The position just after `text`.
fn end_mark(text: &str) -> Mark {
    let line = 1 + text.matches('\n').count();
    let column = 1 + text.rsplit('\n').next().map_or(0, |l| l.chars().count());
    Mark { line, column }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_labels() {
        for (file, stem) in [("KubernetesPod.yaml", "kubernetespod-"), ("dir/01-jk_a.b.yaml", "01-jk-a-b-"), ("-", "pod-"), ("__.yaml", "pod-")] {
            let n = default_name(file);
            assert!(n.starts_with(stem) && n.len() == stem.len() + 5, "{file}: {n}");
            assert!(crate::pod::is_dns_label(&n), "{n}");
        }
        assert!(crate::pod::is_dns_label(&default_name(&"a".repeat(200))));
    }

    #[test]
    fn end_mark_counts_chars() {
        assert_eq!(end_mark(""), Mark { line: 1, column: 1 });
        assert_eq!(end_mark("ab\né"), Mark { line: 2, column: 2 });
    }
}
