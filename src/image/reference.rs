//! Image references, read the way podman reads them.
//!
//! * `busybox` → `docker.io/library/busybox:latest`, a *short name* that
//!   `unqualified-search-registries` may resolve elsewhere;
//! * `host[:port]/a/b[:tag][@sha256:…]`, where the first path component is a
//!   host when it contains `.` or `:` or is `localhost` (Docker's rule);
//! * `docker://REF` (podman's transport prefix) is the same as `REF`;
//! * `oci:DIR[:TAG]` — an OCI image layout; `oci-archive:FILE[:TAG]` — a tar
//!   of one. As in containers/image, the path ends at the first `:`.
//!
//! Everything is validated here, before it reaches a URL or a path: the
//! repository grammar of the distribution spec, the tag grammar, and a strict
//! `sha256` digest (CVE-2024-3727).

use std::fmt;
use std::path::PathBuf;

use crate::image::digest::Digest;

/// Docker Hub, as references name it.
pub const DOCKER_HUB: &str = "docker.io";
/// The tag a reference without tag or digest means.
pub const DEFAULT_TAG: &str = "latest";

/// Longest `registry/repository` the distribution reference grammar allows.
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

/// Why a reference string is not a valid image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    /// The string as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// An image in a registry.
    Registry(RegistryRef),
    /// An OCI image layout directory; `tag` selects an
    /// `org.opencontainers.image.ref.name` in its index.
    OciLayout { dir: PathBuf, tag: Option<String> },
    /// A tar archive of an OCI image layout.
    OciArchive { file: PathBuf, tag: Option<String> },
}

/// An image in a registry: `registry/repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistryRef {
    /// `host[:port]`, normalised (`index.docker.io` → `docker.io`).
    pub registry: String,
    /// The repository path (`library/busybox` on Docker Hub).
    pub repository: String,
    /// The tag; `latest` when the input had neither tag nor digest.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
    /// Whether the input named its registry. A short name (`busybox`,
    /// `library/busybox`) is not, and registries.conf may redirect it.
    pub qualified: bool,
}

/// containers-transports(5) names berth does not read.
const OTHER_TRANSPORTS: &[&str] = &["containers-storage", "docker-archive", "docker-daemon", "dir", "sif", "ostree"];

/// Parses any reference berth accepts.
pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
    let err = |reason: &str| ReferenceError { input: s.to_string(), reason: reason.to_string() };
    if let Some(rest) = s.strip_prefix("oci:") {
        let (path, tag) = split_transport(rest).map_err(|r| err(&r))?;
        if path.is_empty() {
            return Err(err("oci: needs a directory (oci:DIR[:TAG])"));
        }
        return Ok(ImageRef::OciLayout { dir: PathBuf::from(path), tag });
    }
    if let Some(rest) = s.strip_prefix("oci-archive:") {
        let (path, tag) = split_transport(rest).map_err(|r| err(&r))?;
        if path.is_empty() {
            return Err(err("oci-archive: needs a file (oci-archive:FILE[:TAG])"));
        }
        return Ok(ImageRef::OciArchive { file: PathBuf::from(path), tag });
    }
    let docker = s.strip_prefix("docker://").unwrap_or(s);
    if docker.contains("://") {
        return Err(err("not a URL: drop the scheme (HOST[:PORT]/NAME[:TAG])"));
    }
    // podman's other transports would otherwise read as `name:tag`.
    if let Some(t) = OTHER_TRANSPORTS.iter().find(|t| docker.starts_with(&format!("{t}:"))) {
        return Err(err(&format!("transport {t}: is not supported (docker://, oci:, oci-archive: are)")));
    }
    RegistryRef::parse(docker).map(ImageRef::Registry).map_err(|e| ReferenceError { input: s.to_string(), ..e })
}

/// Splits `PATH[:TAG]` at the first `:` as containers/image does.
fn split_transport(rest: &str) -> Result<(&str, Option<String>), String> {
    let Some((path, tag)) = rest.split_once(':') else {
        return Ok((rest, None));
    };
    if tag.is_empty() {
        return Err("empty tag after ':'".into());
    }
    // An OCI layout ref.name is freer than a registry tag (it may hold `/`),
    // but it never needs control characters, spaces or a second `:`.
    if tag.len() > MAX_NAME_LEN
        || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
    {
        return Err(format!("invalid image name {tag:?} in layout reference"));
    }
    Ok((path, Some(tag.to_string())))
}

impl RegistryRef {
    /// Parses a registry reference (no transport prefix).
    pub fn parse(s: &str) -> Result<RegistryRef, ReferenceError> {
        let err = |reason: String| ReferenceError { input: s.to_string(), reason };
        if s.is_empty() {
            return Err(err("empty reference".into()));
        }
        if let Some(b) = s.bytes().find(|b| b.is_ascii_whitespace() || b.is_ascii_control() || !b.is_ascii()) {
            return Err(err(format!("contains the character {:?}", b as char)));
        }

        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => {
                let digest = Digest::parse(d).map_err(|e| err(e.to_string()))?;
                (rest, Some(digest))
            }
            None => (s, None),
        };

        let (registry, path, qualified) = match rest.split_once('/') {
            Some((first, path)) if is_host(first) => (first, path, true),
            _ => (DOCKER_HUB, rest, false),
        };

        // The tag is after the last ':' that follows the last '/', so a
        // registry port (`host:5000/…`) is never mistaken for one.
        let last_slash = path.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match path[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&path[..i], Some(&path[i + 1..]))
            }
            None => (path, None),
        };

        let registry = validate_host(registry).map_err(err)?;
        validate_repository(repository).map_err(err)?;
        if let Some(tag) = tag {
            validate_tag(tag).map_err(err)?;
        }

        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(err(format!("name longer than {MAX_NAME_LEN} characters")));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(RegistryRef { registry, repository, tag, digest, qualified })
    }

    /// The canonical name: `registry/repo:tag`, `registry/repo@sha256:…`, or
    /// `registry/repo:tag@sha256:…` when both were given (the digest wins).
    pub fn name(&self) -> String {
        let mut s = self.repo_name();
        if let Some(tag) = &self.tag {
            s.push(':');
            s.push_str(tag);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s
    }

    /// `registry/repository`, without tag or digest.
    pub fn repo_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What goes in `/v2/<repo>/manifests/<reference>`: the digest if there is
    /// one, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The same image in another registry/repository (a search registry or
    /// a mirror), qualified.
    pub fn relocated(&self, registry: &str, repository: &str) -> RegistryRef {
        RegistryRef {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: self.tag.clone(),
            digest: self.digest.clone(),
            qualified: true,
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with_tag = |f: &mut fmt::Formatter<'_>, kind: &str, p: &PathBuf, t: &Option<String>| {
            write!(f, "{kind}:{}", p.display())?;
            match t {
                Some(t) => write!(f, ":{t}"),
                None => Ok(()),
            }
        };
        match self {
            ImageRef::Registry(r) => r.fmt(f),
            ImageRef::OciLayout { dir, tag } => with_tag(f, "oci", dir, tag),
            ImageRef::OciArchive { file, tag } => with_tag(f, "oci-archive", file, tag),
        }
    }
}

/// Docker's rule for "the first component is a registry host".
fn is_host(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

/// Checks `host[:port]` (a DNS name, IPv4 or `[IPv6]`) and normalises
/// Docker Hub's aliases.
fn validate_host(h: &str) -> Result<String, String> {
    let bad = || format!("invalid registry host {h:?}");
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or_else(bad)?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad());
        }
        match after {
            "" => (h, None),
            p => (&h[..h.len() - p.len()], Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match h.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err() {
            return Err(format!("invalid port {port:?} in registry host {h:?}"));
        }
    }
    if !host.starts_with('[') {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(bad());
        }
    }
    if host.eq_ignore_ascii_case("index.docker.io") && port.is_none() {
        return Ok(DOCKER_HUB.to_string());
    }
    Ok(h.to_string())
}

/// The distribution spec's path grammar: components of
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` joined by `/`.
fn validate_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("empty repository name".into());
    }
    if repo.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("repository name {repo:?} must be lowercase"));
    }
    for component in repo.split('/') {
        if !valid_component(component) {
            return Err(format!(
                "invalid repository path component {component:?} (lowercase letters, digits and single '.', '_' or '-' separators)"
            ));
        }
    }
    Ok(())
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: '.', '_', '__' or a run of '-'.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn validate_tag(tag: &str) -> Result<(), String> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || b"_.-".contains(&c));
    if ok {
        Ok(())
    } else if b.is_empty() {
        Err("empty tag after ':'".into())
    } else {
        Err(format!("invalid tag {tag:?} (letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-')"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> RegistryRef {
        match parse(s) {
            Ok(ImageRef::Registry(r)) => r,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn bad(s: &str) -> String {
        match parse(s) {
            Err(e) => e.to_string(),
            Ok(r) => panic!("{s:?} parsed as {r:?}"),
        }
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn short_names_normalise_to_docker_hub() {
        let r = reg("busybox");
        assert_eq!((r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()), ("docker.io", "library/busybox", Some("latest")));
        assert!(!r.qualified);
        assert_eq!(r.name(), "docker.io/library/busybox:latest");
        assert_eq!(r.manifest_reference(), "latest");

        let r = reg("library/busybox:1.36");
        assert_eq!(r.name(), "docker.io/library/busybox:1.36");
        assert!(!r.qualified);

        let r = reg("myorg/app");
        assert_eq!(r.name(), "docker.io/myorg/app:latest");

        let r = reg("docker.io/busybox");
        assert_eq!(r.name(), "docker.io/library/busybox:latest");
        assert!(r.qualified);

        let r = reg("index.docker.io/library/busybox:1");
        assert_eq!(r.name(), "docker.io/library/busybox:1");

        assert_eq!(reg("docker://busybox").name(), "docker.io/library/busybox:latest");
    }

    #[test]
    fn hosts_ports_tags_digests() {
        let r = reg("127.0.0.1:5000/a/b:v1.2_x");
        assert_eq!((r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()), ("127.0.0.1:5000", "a/b", Some("v1.2_x")));
        assert!(r.qualified);

        let r = reg(&format!("localhost:5000/a/b:tag@{D}"));
        assert_eq!(r.tag.as_deref(), Some("tag"));
        assert_eq!(r.digest.as_ref().map(|d| d.to_string()).as_deref(), Some(D));
        assert_eq!(r.manifest_reference(), D);
        assert_eq!(r.name(), format!("localhost:5000/a/b:tag@{D}"));

        let r = reg(&format!("quay.io/x/y@{D}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.name(), format!("quay.io/x/y@{D}"));

        let r = reg("localhost/app");
        assert_eq!((r.registry.as_str(), r.repository.as_str()), ("localhost", "app"));
        assert!(r.qualified);

        let r = reg("[::1]:5000/app:1");
        assert_eq!(r.registry, "[::1]:5000");

        let r = reg("registry.example.com/a.b/c__d/e-f---g:latest");
        assert_eq!(r.repository, "a.b/c__d/e-f---g");

        // Docker Hub's repository path is not prefixed when it has a '/'.
        assert_eq!(reg("docker.io/org/app:1").repository, "org/app");
        // A host-like first component on a path without a '/' is a repository.
        assert_eq!(reg("app:5000").tag.as_deref(), Some("5000"));
    }

    #[test]
    fn layouts_and_archives() {
        assert_eq!(parse("oci:/tmp/lay").unwrap(), ImageRef::OciLayout { dir: "/tmp/lay".into(), tag: None });
        assert_eq!(
            parse("oci:/tmp/lay:v1").unwrap(),
            ImageRef::OciLayout { dir: "/tmp/lay".into(), tag: Some("v1".into()) }
        );
        assert_eq!(
            parse("oci-archive:img.tar:org/app").unwrap(),
            ImageRef::OciArchive { file: "img.tar".into(), tag: Some("org/app".into()) }
        );
        assert_eq!(parse("oci:/tmp/lay:v1").unwrap().to_string(), "oci:/tmp/lay:v1");
    }

    #[test]
    fn hostile_references_are_refused_with_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "empty reference"),
            ("Busybox", "must be lowercase"),
            ("example.com/Org/app", "must be lowercase"),
            ("busybox:", "empty tag"),
            ("busybox:.hidden", "invalid tag"),
            ("busybox:-x", "invalid tag"),
            ("busybox:a/b", "invalid port"),
            ("busybox/a:b/c", "invalid repository path component"),
            ("busybox@sha256:abc", "not of the form"),
            ("busybox@sha256:../../../etc/passwd", "not of the form"),
            ("busybox@md5:0123", "not supported"),
            ("busybox@", "not of the form"),
            ("a//b", "invalid repository path component"),
            ("example.com/", "empty repository"),
            ("example.com/../etc", "invalid repository path component"),
            ("example.com/a/./b", "invalid repository path component"),
            ("example.com/a_-b", "invalid repository path component"),
            ("example.com/a___b", "invalid repository path component"),
            ("example.com/-a", "invalid repository path component"),
            ("example.com/a.", "invalid repository path component"),
            ("bad_host.com/a", "invalid registry host"),
            ("-bad.com/a", "invalid registry host"),
            ("host.com:99999/a", "invalid port"),
            ("host.com:/a", "invalid port"),
            ("host.com:5x/a", "invalid port"),
            ("[::zz]:5000/a", "invalid registry host"),
            ("busy box", "contains the character"),
            ("busybox\n", "contains the character"),
            ("büsybox", "contains the character"),
            ("oci:", "needs a directory"),
            ("oci::tag", "needs a directory"),
            ("oci-archive:", "needs a file"),
            ("oci:/dir:", "empty tag"),
            ("oci:/dir:a b", "invalid image name"),
            ("https://example.com/a", "not a URL"),
            ("docker://http://x/a", "not a URL"),
            ("containers-storage:busybox", "transport containers-storage: is not supported"),
            ("docker-archive:/tmp/x.tar", "transport docker-archive: is not supported"),
        ];
        for (input, want) in cases {
            let msg = bad(input);
            assert!(msg.contains(want), "{input:?}: {msg}");
        }
        let long_tag = format!("busybox:{}", "a".repeat(129));
        assert!(bad(&long_tag).contains("invalid tag"));
        assert!(reg(&format!("busybox:{}", "a".repeat(128))).tag.is_some());
        let long_name = format!("example.com/{}", "a".repeat(250));
        assert!(bad(&long_name).contains("longer than"));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;

    /// Arbitrary strings over the characters that matter never panic, and
    /// whatever parses renders back to a name that parses to the same thing.
    #[test]
    fn never_panics_and_names_round_trip() {
        let alphabet: Vec<char> = "aZ09:/@._-[]sha256:oci-archive\u{e9}\0 ".chars().collect();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let s: String = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            if let Ok(ImageRef::Registry(r)) = parse(&s) {
                let again = RegistryRef::parse(&r.name()).unwrap_or_else(|e| panic!("{s:?} → {}: {e}", r.name()));
                assert_eq!((again.registry, again.repository, again.tag, again.digest), (r.registry, r.repository, r.tag, r.digest), "{s:?}");
            }
        }
    }
}
