//! Entry names: cleaned into a relative path inside the layer, or refused.
//!
//! A leading `/` is dropped (absolute names are relative to the layer root),
//! empty and `.` components are dropped, and `..` anywhere is refused
//! rather than resolved: a legitimate layer never needs it. NUL bytes
//! (possible in a PAX `path`) are refused. An empty result is the root.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{ErrorKind, Limits};

/// A cleaned entry name: components joined by `/`, no leading or trailing
/// slash; empty for the root.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Name(Vec<u8>);

impl Name {
    pub fn clean(raw: &[u8], limits: &Limits) -> Result<Name, ErrorKind> {
        if raw.contains(&0) {
            return Err(ErrorKind::BadName("contains a NUL byte"));
        }
        let mut out = Vec::with_capacity(raw.len());
        let mut depth = 0;
        for comp in raw.split(|&b| b == b'/') {
            match comp {
                b"" | b"." => continue,
                b".." => return Err(ErrorKind::BadName("has a `..` component")),
                _ => {}
            }
            if !out.is_empty() {
                out.push(b'/');
            }
            out.extend_from_slice(comp);
            depth += 1;
        }
        if out.len() > limits.max_path_bytes {
            return Err(ErrorKind::PathTooLong { len: out.len(), max: limits.max_path_bytes });
        }
        if depth > limits.max_depth {
            return Err(ErrorKind::PathTooDeep { depth, max: limits.max_depth });
        }
        Ok(Name(out))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }

    /// The parent (root for a top-level name) and the last component.
    /// Must not be called on the root.
    pub fn split(&self) -> (Name, &[u8]) {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => (Name(self.0[..i].to_vec()), &self.0[i + 1..]),
            None => (Name(Vec::new()), &self.0[..]),
        }
    }

    pub fn join(&self, comp: &[u8]) -> Name {
        let mut v = self.0.clone();
        if !v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(comp);
        Name(v)
    }

    /// Every proper ancestor, root excluded, nearest first.
    pub fn ancestors(&self) -> impl Iterator<Item = &[u8]> {
        let bytes = &self.0;
        bytes.iter().enumerate().rev().filter(|(_, &b)| b == b'/').map(move |(i, _)| &bytes[..i])
    }

    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(s: &str) -> Result<String, ErrorKind> {
        Name::clean(s.as_bytes(), &Limits::default()).map(|n| n.display())
    }

    #[test]
    fn cleans_and_refuses() {
        assert_eq!(clean("./a//b/./c/").unwrap(), "a/b/c");
        assert_eq!(clean("/etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(clean("./").unwrap(), "");
        assert_eq!(clean("...../x").unwrap(), "...../x");
        assert!(clean("a/../../b").is_err());
        assert!(clean("..").is_err());
        assert!(Name::clean(b"a\0b", &Limits::default()).is_err());
    }

    #[test]
    fn limits() {
        let limits = Limits { max_path_bytes: 10, max_depth: 3, ..Limits::default() };
        assert!(matches!(Name::clean(b"a/b/c/d", &limits), Err(ErrorKind::PathTooDeep { depth: 4, max: 3 })));
        assert!(matches!(Name::clean(b"abcdefghijk", &limits), Err(ErrorKind::PathTooLong { .. })));
        assert!(Name::clean(b"a/b/c", &limits).is_ok());
    }

    #[test]
    fn splits() {
        let n = Name::clean(b"a/b/c", &Limits::default()).unwrap();
        let (p, last) = n.split();
        assert_eq!((p.display().as_str(), last), ("a/b", &b"c"[..]));
        assert_eq!(n.ancestors().collect::<Vec<_>>(), vec![&b"a/b"[..], &b"a"[..]]);
        let top = Name::clean(b"x", &Limits::default()).unwrap();
        assert!(top.split().0.is_root());
    }
}
