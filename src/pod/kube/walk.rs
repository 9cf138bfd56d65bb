//! The checked walk over a Pod manifest's YAML tree: fields are taken one
//! by one with their paths and positions, and what nobody took is judged
//! (silent, warning or error) by one rule, so every unread field is seen.

use std::collections::HashMap;

use super::scalar::string;
use super::yaml::{short, Key, Mark, Node, ScalarKind, Value};

/// An error at a node.
pub(super) struct Located {
    pub(super) mark: Mark,
    pub(super) message: String,
}

pub(super) type Res<T> = Result<T, Located>;

pub(super) fn fail<T>(mark: Mark, message: impl Into<String>) -> Res<T> {
    Err(Located { mark, message: message.into() })
}

/// What berth does with a field that Kubernetes knows and berth does not use.
#[derive(Clone, Copy)]
pub(super) enum Ignore {
    /// Only meaningful on a cluster.
    Silent,
    /// A warning with this reason.
    Warn(&'static str),
    /// Silent for these values (a boolean as `true`/`false`), else a warning.
    SilentIf(&'static [&'static str], &'static str),
    /// An error with this reason: running without it would not be running the file.
    Reject(&'static str),
}

use Ignore::{Reject, Silent, SilentIf, Warn};

/// A mapping being read: fields are taken one by one; what is left over is
/// judged by [`Walk::finish`].
pub(super) struct Obj<'n> {
    pub(super) path: String,
    pub(super) mark: Mark,
    pub(super) entries: &'n [(Key, Node)],
    pub(super) used: Vec<bool>,
}

pub(super) struct Walk {
    /// Position, field path and message of each warning, in file order.
    pub(super) warnings: Vec<(Mark, String, String)>,
    /// Where each field read lives, for validation errors found later.
    pub(super) marks: HashMap<String, Mark>,
    /// The command line's changes.
    pub(super) opts: super::ReadOptions,
    /// The pod's name when neither the file nor the options give one.
    pub(super) default_name: String,
    /// What `fieldRef`s resolve to, filled in as the walk reads the pod.
    pub(super) downward: super::downward::Downward,
    /// Volumes `--volume-from` mapped that a cluster mounts read-only.
    pub(super) read_only_volumes: Vec<String>,
    /// From the `berth.dev/isolation` annotation.
    pub(super) isolation: crate::pod::Isolation,
}

/// `path.key`, with odd keys quoted so a message stays one line.
pub(super) fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || "-_/".contains(c));
    let key = if plain { key.to_string() } else { format!("[{}]", short(key)) };
    match (path.is_empty(), key.starts_with('[')) {
        (true, _) | (false, true) => format!("{path}{key}"),
        (false, false) => format!("{path}.{key}"),
    }
}

impl Obj<'_> {
    /// Where `key` itself is written, for warnings about it.
    pub(super) fn key_mark(&self, key: &str) -> Option<Mark> {
        self.entries.iter().find(|(k, _)| k.text == key).map(|(k, _)| k.mark)
    }
}

impl Walk {
    pub(super) fn new(opts: super::ReadOptions, default_name: String) -> Walk {
        Walk { warnings: Vec::new(), marks: HashMap::new(), opts, default_name, downward: Default::default(), read_only_volumes: Vec::new(), isolation: Default::default() }
    }

    /// The position of `path`, or of its nearest ancestor that was read.
    pub(super) fn mark_of(&self, path: &str) -> Option<Mark> {
        let mut p = path;
        loop {
            if let Some(m) = self.marks.get(p) {
                return Some(*m);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    pub(super) fn obj<'n>(&mut self, node: &'n Node, path: &str) -> Res<Obj<'n>> {
        match &node.value {
            Value::Map(entries) => {
                self.marks.insert(path.to_string(), node.mark);
                Ok(Obj { path: path.to_string(), mark: node.mark, entries, used: vec![false; entries.len()] })
            }
            _ => fail(node.mark, format!("{} must be a mapping, not {}", name_of(path), node.describe())),
        }
    }

    /// The value of `key`, unless absent or null (which Kubernetes treats
    /// alike), with its path.
    pub(super) fn field<'n>(&mut self, o: &mut Obj<'n>, key: &str) -> Option<(&'n Node, String)> {
        let i = o.entries.iter().position(|(k, _)| k.text == key)?;
        o.used[i] = true;
        let (_, value) = &o.entries[i];
        let path = join(&o.path, key);
        self.marks.insert(path.clone(), value.mark);
        (!value.is_null()).then_some((value, path))
    }

    pub(super) fn required<'n>(&mut self, o: &mut Obj<'n>, key: &str) -> Res<(&'n Node, String)> {
        match self.field(o, key) {
            Some(f) => Ok(f),
            None => fail(o.mark, format!("{} is required", join(&o.path, key))),
        }
    }

    /// Judges the fields nobody took.
    pub(super) fn finish(&mut self, o: Obj<'_>, known: &[(&str, Ignore)]) -> Res<()> {
        for ((key, value), used) in o.entries.iter().zip(&o.used) {
            if *used {
                continue;
            }
            let path = join(&o.path, &key.text);
            let message = match known.iter().find(|(k, _)| *k == key.text).map(|(_, i)| *i) {
                Some(Silent) => continue,
                Some(SilentIf(values, _)) if value.is_null() || canonical(value).is_some_and(|v| values.contains(&v.as_str())) => {
                    continue
                }
                Some(Warn(reason) | SilentIf(_, reason)) => format!("ignoring {path}: {reason}"),
                Some(Reject(reason)) => return fail(key.mark, format!("{path}: {reason}")),
                None => format!("ignoring unknown field {path}"),
            };
            self.warnings.push((key.mark, path, message));
        }
        Ok(())
    }

    pub(super) fn warn(&mut self, mark: Mark, path: &str, message: String) {
        self.warnings.push((mark, path.to_string(), message));
    }

    pub(super) fn list<'n>(&mut self, node: &'n Node, path: &str) -> Res<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.marks.insert(format!("{path}[{i}]"), item.mark);
                }
                Ok(items)
            }
            _ => fail(node.mark, format!("{} must be a list, not {}", name_of(path), node.describe())),
        }
    }

    pub(super) fn string_list(&mut self, node: &Node, path: &str) -> Res<Vec<String>> {
        let items = self.list(node, path)?;
        items.iter().enumerate().map(|(i, n)| string(n, &format!("{path}[{i}]"))).collect()
    }
}

/// "metadata" for a path, "the file" for the root.
pub(super) fn name_of(path: &str) -> &str {
    if path.is_empty() {
        "the file"
    } else {
        path
    }
}

/// A scalar's value as the matching rule in [`Ignore::SilentIf`] sees it.
fn canonical(node: &Node) -> Option<String> {
    match &node.value {
        Value::Scalar(s) => Some(match s.kind {
            ScalarKind::Bool(b) => b.to_string(),
            _ => s.text.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_quotes_odd_keys() {
        assert_eq!(join("", "spec"), "spec");
        assert_eq!(join("spec", "hostPID"), "spec.hostPID");
        assert_eq!(join("spec", "a b\nc"), "spec[\"a b\\nc\"]");
    }
}
