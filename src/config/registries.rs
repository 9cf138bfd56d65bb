//! `registries.conf` (containers-registries.conf(5)): where short names are
//! searched, which registries are mirrored, insecure or blocked.
//!
//! Files, as podman reads them:
//! * `$CONTAINERS_REGISTRIES_CONF` alone when set (so tests and CI get
//!   exactly the file they name);
//! * else `$XDG_CONFIG_HOME/containers/registries.conf` (default
//!   `~/.config/…`) and its `registries.conf.d/*.conf` drop-ins, when it exists;
//! * else `/etc/containers/registries.conf`, then the drop-ins of
//!   `/etc/containers/registries.conf.d/` and of the user's directory.
//!
//! Both the v2 format (`unqualified-search-registries`, `[[registry]]`,
//! `[[registry.mirror]]`, `[aliases]`) and the v1 tables
//! (`[registries.search|insecure|block]`) are read. Later files override
//! earlier ones: the search list when they set it, a `[[registry]]` with the
//! same prefix, an alias with the same name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{config_home, ConfigError};
use crate::image::reference::{RegistryRef, DOCKER_HUB};

const SYSTEM_FILE: &str = "/etc/containers/registries.conf";
const SYSTEM_DIR: &str = "/etc/containers/registries.conf.d";

/// Where to fetch an image from: a mirror or the registry itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` to connect to (the client connects to Docker Hub's
    /// `docker.io` at registry-1.docker.io).
    pub host: String,
    /// The repository on that host.
    pub repository: String,
    /// Plain HTTP or an unverified certificate are acceptable here.
    pub insecure: bool,
    /// A `[[registry.mirror]]`, not the primary location.
    pub mirror: bool,
}

/// The merged registries configuration.
#[derive(Debug, Clone, Default)]
pub struct Registries {
    search: Option<Vec<String>>,
    entries: Vec<Entry>,
    aliases: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// What references it applies to: `host[/path]` or `*.domain`.
    prefix: String,
    /// Where they really live (`prefix` is rewritten to it); empty for a
    /// wildcard prefix.
    location: String,
    insecure: bool,
    blocked: bool,
    mirror_by_digest_only: bool,
    mirrors: Vec<Mirror>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Mirror {
    location: String,
    insecure: bool,
    pull_from: PullFrom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PullFrom {
    All,
    DigestOnly,
    TagOnly,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct RawFile {
    unqualified_search_registries: Option<Vec<String>>,
    #[serde(default)]
    registry: Vec<RawRegistry>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
    /// The v1 format.
    registries: Option<RawV1>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawRegistry {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror_by_digest_only: bool,
    #[serde(default)]
    mirror: Vec<RawMirror>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawMirror {
    location: String,
    #[serde(default)]
    insecure: bool,
    pull_from_mirror: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawV1 {
    #[serde(default)]
    search: RawV1List,
    #[serde(default)]
    insecure: RawV1List,
    #[serde(default)]
    block: RawV1List,
}

#[derive(Deserialize, Default)]
struct RawV1List {
    #[serde(default)]
    registries: Vec<String>,
}

impl Registries {
    /// Reads the host's configuration (see the module comment for the files).
    pub fn load() -> Result<Registries, ConfigError> {
        let files = config_files()?;
        // A file named explicitly must exist: a typo should not silently
        // mean "no configuration".
        if std::env::var_os("CONTAINERS_REGISTRIES_CONF").is_some_and(|p| !p.is_empty()) {
            if let Err(source) = std::fs::metadata(&files[0]) {
                return Err(ConfigError::Read { path: files[0].clone(), source });
            }
        }
        Registries::from_files(&files)
    }

    /// Reads and merges `files` in order; a missing file counts as empty.
    pub fn from_files(files: &[PathBuf]) -> Result<Registries, ConfigError> {
        let mut merged = Registries::default();
        for path in files {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(ConfigError::Read { path: path.clone(), source }),
            };
            merged.merge(Registries::parse(&text, path)?);
        }
        Ok(merged)
    }

    /// Parses one file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Registries, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid { path: origin.to_path_buf(), reason };
        let raw: RawFile = toml::from_str(text).map_err(|e| invalid(e.message().to_string()))?;
        let mut out = Registries { search: raw.unqualified_search_registries, ..Default::default() };

        if let Some(v1) = raw.registries {
            if out.search.is_some() || !raw.registry.is_empty() {
                return Err(invalid("mixes the v1 [registries.*] tables with the v2 format".into()));
            }
            if !v1.search.registries.is_empty() {
                out.search = Some(v1.search.registries);
            }
            for (hosts, insecure, blocked) in [(&v1.insecure.registries, true, false), (&v1.block.registries, false, true)] {
                for host in hosts {
                    let e = out.entry_mut(host);
                    e.insecure |= insecure;
                    e.blocked |= blocked;
                }
            }
        }

        for r in raw.registry {
            let location = r.location.unwrap_or_default();
            let prefix = r.prefix.filter(|p| !p.is_empty()).unwrap_or_else(|| location.clone());
            if prefix.is_empty() {
                return Err(invalid("a [[registry]] needs a prefix or a location".into()));
            }
            if prefix.starts_with("*.") {
                if !location.is_empty() {
                    return Err(invalid(format!("wildcard prefix {prefix:?} cannot have a location")));
                }
            } else {
                check_location(&location).map_err(&invalid)?;
            }
            let mut mirrors = Vec::new();
            for m in r.mirror {
                check_location(&m.location).map_err(&invalid)?;
                let pull_from = match m.pull_from_mirror.as_deref() {
                    None | Some("") | Some("all") => PullFrom::All,
                    Some("digest-only") => PullFrom::DigestOnly,
                    Some("tag-only") => PullFrom::TagOnly,
                    Some(other) => return Err(invalid(format!("unknown pull-from-mirror {other:?}"))),
                };
                mirrors.push(Mirror { location: m.location, insecure: m.insecure, pull_from });
            }
            out.entries.retain(|e| e.prefix != prefix);
            out.entries.push(Entry {
                prefix,
                location,
                insecure: r.insecure,
                blocked: r.blocked,
                mirror_by_digest_only: r.mirror_by_digest_only,
                mirrors,
            });
        }
        for (name, target) in raw.aliases {
            match RegistryRef::parse(&target) {
                Ok(t) if t.qualified => {}
                _ => return Err(invalid(format!("alias {name:?} = {target:?} is not a fully qualified image name"))),
            }
            out.aliases.insert(name, target);
        }
        Ok(out)
    }

    /// The unqualified-search registries in use (docker.io when none are set).
    pub fn search_registries(&self) -> Vec<String> {
        match &self.search {
            Some(s) if !s.is_empty() => s.clone(),
            _ => vec![DOCKER_HUB.to_string()],
        }
    }

    /// The references to try, in order, for `r`: itself when qualified; for a
    /// short name its alias if one is configured, else one per search
    /// registry.
    pub fn candidates(&self, r: &RegistryRef) -> Vec<RegistryRef> {
        if r.qualified {
            return vec![r.clone()];
        }
        let short = short_name(r);
        let with_tag = |name: &str| {
            let mut s = name.to_string();
            if let Some(t) = &r.tag {
                s = format!("{s}:{t}");
            }
            if let Some(d) = &r.digest {
                s = format!("{s}@{d}");
            }
            RegistryRef::parse(&s).ok()
        };
        if let Some(target) = self.aliases.get(short).or_else(|| self.aliases.get(&r.repository)) {
            if let Some(c) = with_tag(target) {
                return vec![c];
            }
        }
        self.search_registries()
            .iter()
            .filter_map(|reg| {
                let c = with_tag(&format!("{reg}/{short}"));
                if c.is_none() {
                    tracing::warn!("search registry {reg:?} cannot hold {short:?}; skipped");
                }
                c
            })
            .collect()
    }

    /// Where to fetch `r` from: its mirrors in order, then the primary
    /// location (with a `prefix` rewritten to its `location`).
    pub fn endpoints(&self, r: &RegistryRef) -> Vec<Endpoint> {
        let name = r.repo_name();
        let Some(entry) = self.find(&name) else {
            return vec![Endpoint { host: r.registry.clone(), repository: r.repository.clone(), insecure: false, mirror: false }];
        };
        let rest = if entry.prefix.starts_with("*.") { "" } else { &name[entry.prefix.len()..] };
        let by_digest = r.digest.is_some();
        let mut out = Vec::new();
        for m in &entry.mirrors {
            let use_it = match m.pull_from {
                PullFrom::All => !entry.mirror_by_digest_only || by_digest,
                PullFrom::DigestOnly => by_digest,
                PullFrom::TagOnly => !by_digest,
            };
            if use_it {
                out.extend(split_endpoint(&format!("{}{rest}", m.location), m.insecure, true));
            }
        }
        let primary = if entry.prefix.starts_with("*.") { name.clone() } else { format!("{}{rest}", entry.location) };
        out.extend(split_endpoint(&primary, entry.insecure, false));
        out
    }

    /// Whether registries.conf blocks pulls of `r`.
    pub fn is_blocked(&self, r: &RegistryRef) -> bool {
        self.find(&r.repo_name()).is_some_and(|e| e.blocked)
    }

    /// Whether `host` is marked insecure for `r`'s registry (plain HTTP or an
    /// unverified certificate allowed).
    pub fn is_insecure(&self, r: &RegistryRef) -> bool {
        self.find(&r.repo_name()).is_some_and(|e| e.insecure)
    }

    /// The entry with the longest prefix matching `name` (`host/repo`).
    fn find(&self, name: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .filter(|e| prefix_matches(&e.prefix, name))
            .max_by_key(|e| e.prefix.len())
    }

    fn entry_mut(&mut self, host: &str) -> &mut Entry {
        if let Some(i) = self.entries.iter().position(|e| e.prefix == host) {
            return &mut self.entries[i];
        }
        self.entries.push(Entry {
            prefix: host.to_string(),
            location: host.to_string(),
            insecure: false,
            blocked: false,
            mirror_by_digest_only: false,
            mirrors: Vec::new(),
        });
        let last = self.entries.len() - 1;
        &mut self.entries[last]
    }

    fn merge(&mut self, later: Registries) {
        if later.search.is_some() {
            self.search = later.search;
        }
        for e in later.entries {
            self.entries.retain(|x| x.prefix != e.prefix);
            self.entries.push(e);
        }
        self.aliases.extend(later.aliases);
    }
}

/// The files `load` reads, in merge order.
fn config_files() -> Result<Vec<PathBuf>, ConfigError> {
    if let Some(p) = std::env::var_os("CONTAINERS_REGISTRIES_CONF").filter(|p| !p.is_empty()) {
        return Ok(vec![PathBuf::from(p)]);
    }
    let user = config_home().map(|c| c.join("containers"));
    let mut files = Vec::new();
    match &user {
        Some(u) if u.join("registries.conf").exists() => {
            files.push(u.join("registries.conf"));
            files.extend(drop_ins(&u.join("registries.conf.d"))?);
        }
        _ => {
            files.push(PathBuf::from(SYSTEM_FILE));
            files.extend(drop_ins(Path::new(SYSTEM_DIR))?);
            if let Some(u) = &user {
                files.extend(drop_ins(&u.join("registries.conf.d"))?);
            }
        }
    }
    Ok(files)
}

/// `DIR/*.conf`, sorted by name.
fn drop_ins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    super::files_with_extension(dir, "conf")
}

/// containers/image's `refMatchesPrefix`: the prefix ends at a component
/// boundary. A `*.domain` prefix matches every subdomain's host.
fn prefix_matches(prefix: &str, name: &str) -> bool {
    if let Some(domain) = prefix.strip_prefix('*') {
        let host = name.split('/').next().unwrap_or("");
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        return host.ends_with(domain);
    }
    match name.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => rest.starts_with('/') || rest.starts_with(':') || rest.starts_with('@'),
        None => false,
    }
}

fn check_location(location: &str) -> Result<(), String> {
    if location.contains("://") {
        return Err(format!("location {location:?} must not have a scheme (use insecure = true for plain HTTP)"));
    }
    Ok(())
}

/// `host/repo` → an endpoint, or a warning when the rewrite produced no
/// repository or an invalid one.
fn split_endpoint(location: &str, insecure: bool, mirror: bool) -> Option<Endpoint> {
    let parsed = location
        .split_once('/')
        .filter(|(_, repo)| !repo.is_empty())
        .and_then(|_| RegistryRef::parse(location).ok().filter(|r| r.qualified && r.tag.as_deref() == Some("latest")));
    match parsed {
        Some(r) => Some(Endpoint { host: r.registry, repository: r.repository, insecure, mirror }),
        None => {
            tracing::warn!("registries.conf rewrites to {location:?}, which is not host/repository; skipped");
            None
        }
    }
}

/// The name a short reference was written with (`busybox` for
/// `docker.io/library/busybox`).
fn short_name(r: &RegistryRef) -> &str {
    if r.registry == DOCKER_HUB {
        r.repository.strip_prefix("library/").unwrap_or(&r.repository)
    } else {
        &r.repository
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RegistryRef {
        RegistryRef::parse(s).unwrap()
    }

    fn conf(text: &str) -> Registries {
        Registries::parse(text, Path::new("test.conf")).unwrap()
    }

    fn ep(host: &str, repo: &str, insecure: bool, mirror: bool) -> Endpoint {
        Endpoint { host: host.into(), repository: repo.into(), insecure, mirror }
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn short_names_use_search_registries_or_aliases() {
        let c = conf(
            r#"
            unqualified-search-registries = ["quay.io", "docker.io", "localhost:5000"]
            [aliases]
            "myalias" = "registry.example.com/team/tool"
            "#,
        );
        let names: Vec<String> = c.candidates(&r("busybox:1.36")).iter().map(|c| c.name()).collect();
        assert_eq!(names, ["quay.io/busybox:1.36", "docker.io/library/busybox:1.36", "localhost:5000/busybox:1.36"]);
        assert!(c.candidates(&r("busybox")).iter().all(|c| c.qualified));
        let with_digest = c.candidates(&r(&format!("org/app@{D}")));
        assert_eq!(with_digest[0].name(), format!("quay.io/org/app@{D}"));
        assert_eq!(c.candidates(&r("myalias:2"))[0].name(), "registry.example.com/team/tool:2");
        // Qualified names are left alone.
        assert_eq!(c.candidates(&r("docker.io/busybox")), vec![r("docker.io/busybox")]);
        // Nothing configured: Docker Hub.
        let none = Registries::default();
        assert_eq!(none.candidates(&r("busybox"))[0].name(), "docker.io/library/busybox:latest");
        assert_eq!(conf("unqualified-search-registries = []").search_registries(), ["docker.io"]);
    }

    #[test]
    fn mirrors_prefixes_and_flags() {
        let c = conf(
            r#"
            [[registry]]
            prefix = "docker.io"
            location = "docker.io"
            [[registry.mirror]]
            location = "127.0.0.1:5001/hub"
            insecure = true
            [[registry.mirror]]
            location = "mirror.example.com"
            pull-from-mirror = "digest-only"

            [[registry]]
            prefix = "example.com/team"
            location = "internal.example.com:5000/mirrored/team"
            insecure = true

            [[registry]]
            location = "example.com/team/secret"
            blocked = true

            [[registry]]
            prefix = "*.corp.example"
            insecure = true
            "#,
        );
        assert_eq!(
            c.endpoints(&r("busybox")),
            vec![ep("127.0.0.1:5001", "hub/library/busybox", true, true), ep("docker.io", "library/busybox", false, false)]
        );
        assert_eq!(c.endpoints(&r(&format!("busybox@{D}"))).len(), 3, "digest-only mirror used for digests");
        // Longest prefix wins; rewrite to the location keeps the rest.
        assert_eq!(
            c.endpoints(&r("example.com/team/app:1")),
            vec![ep("internal.example.com:5000", "mirrored/team/app", true, false)]
        );
        assert!(c.is_blocked(&r("example.com/team/secret:1")));
        assert!(c.is_blocked(&r("example.com/team/secret/sub")));
        assert!(!c.is_blocked(&r("example.com/team/secretive")), "prefixes end at a component boundary");
        assert!(!c.is_blocked(&r("example.com/team/app")));
        // Wildcards: any subdomain, no rewrite.
        assert_eq!(c.endpoints(&r("a.corp.example:5000/x")), vec![ep("a.corp.example:5000", "x", true, false)]);
        assert!(c.is_insecure(&r("b.a.corp.example/x")));
        assert!(!c.is_insecure(&r("corp.example.org/x")));
        // No entry: the reference itself.
        assert_eq!(c.endpoints(&r("quay.io/a/b")), vec![ep("quay.io", "a/b", false, false)]);
    }

    #[test]
    fn v1_format() {
        let c = conf(
            r#"
            [registries.search]
            registries = ["registry.example.com"]
            [registries.insecure]
            registries = ["localhost:5000"]
            [registries.block]
            registries = ["evil.example"]
            "#,
        );
        assert_eq!(c.search_registries(), ["registry.example.com"]);
        assert!(c.is_insecure(&r("localhost:5000/a")));
        assert!(c.is_blocked(&r("evil.example/a")));
    }

    #[test]
    fn drop_ins_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("registries.conf");
        let d = dir.path().join("registries.conf.d");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(
            &main,
            "unqualified-search-registries = [\"a.example\"]\n[[registry]]\nlocation = \"a.example\"\ninsecure = true\n",
        )
        .unwrap();
        std::fs::write(d.join("10-b.conf"), "[[registry]]\nlocation = \"a.example\"\nblocked = true\n").unwrap();
        std::fs::write(d.join("20-c.conf"), "unqualified-search-registries = [\"c.example\"]\n").unwrap();
        std::fs::write(d.join("ignored.txt"), "not toml [").unwrap();
        let mut files = vec![main, dir.path().join("absent.conf")];
        files.extend(drop_ins(&d).unwrap());
        let c = Registries::from_files(&files).unwrap();
        assert_eq!(c.search_registries(), ["c.example"]);
        assert!(c.is_blocked(&r("a.example/x")));
        assert!(!c.is_insecure(&r("a.example/x")), "a later [[registry]] with the same prefix replaces the earlier");
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        for (text, want) in [
            ("unqualified-search-registries = \"docker.io\"", "invalid type"),
            ("[[registry]]\nlocation = \"https://x.example\"", "must not have a scheme"),
            ("[[registry]]\ninsecure = true", "needs a prefix or a location"),
            ("[[registry]]\nprefix = \"*.x.example\"\nlocation = \"y.example\"", "wildcard"),
            ("[[registry]]\nlocation = \"x.example\"\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"sometimes\"", "pull-from-mirror"),
            ("[aliases]\n\"a\" = \"notqualified\"", "not a fully qualified"),
            ("unqualified-search-registries = []\n[registries.search]\nregistries = []", "mixes"),
            ("[[registry]", "invalid"),
        ] {
            let e = Registries::parse(text, Path::new("/etc/x.conf")).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("/etc/x.conf"), "{text:?}: {e}");
        }
    }
}

#[cfg(test)]
mod host_tests {
    /// The host's own files (Debian's podman ships a large shortnames.conf)
    /// load without error.
    #[test]
    fn system_files_load() {
        let files = [std::path::PathBuf::from(super::SYSTEM_FILE)]
            .into_iter()
            .chain(super::drop_ins(std::path::Path::new(super::SYSTEM_DIR)).unwrap())
            .collect::<Vec<_>>();
        super::Registries::from_files(&files).unwrap();
    }
}
