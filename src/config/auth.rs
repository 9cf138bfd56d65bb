//! Registry credentials, found where podman finds them.
//!
//! Files, first match wins: `$REGISTRY_AUTH_FILE` alone when set; else
//! `$XDG_RUNTIME_DIR/containers/auth.json`, `$XDG_CONFIG_HOME/containers/auth.json`
//! (default `~/.config/…`), `$DOCKER_CONFIG/config.json` (default
//! `~/.docker/config.json`).
//!
//! In each file: `credHelpers[host]` (a `docker-credential-NAME get`
//! program), then `auths` keyed by `host/ns/repo`, `host/ns`, `host` (most
//! specific first), then legacy keys such as `https://host/v1/`, then
//! `credsStore`. An entry holds `auth` (base64 `user:pass`) or
//! `username`/`password`, and may hold an `identitytoken`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;

use super::{config_home, home_dir, ConfigError};

/// How long a credential helper may take (its reply is a few bytes, so the
/// pipes never fill while it runs).
const HELPER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A user name and secret for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// An OAuth2 refresh token (`identitytoken`, or a helper's `<token>`
    /// user); used instead of the password at the token endpoint.
    pub identity_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("identity_token", &self.identity_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Looks up credentials for `repository` on `registry_host` in the
/// host's credential files (see the module comment).
pub fn lookup_credentials(registry_host: &str, repository: &str) -> Result<Option<Credentials>, ConfigError> {
    AuthFiles::from_env().lookup(registry_host, repository)
}

/// The credential files to search, and the `PATH` for helpers.
#[derive(Debug, Clone, Default)]
pub struct AuthFiles {
    pub files: Vec<PathBuf>,
    /// `PATH` for finding `docker-credential-*` (default: berth's own).
    pub helper_path: Option<OsString>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawFile {
    #[serde(default)]
    auths: BTreeMap<String, RawAuth>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

impl AuthFiles {
    /// podman's search list, from the environment.
    pub fn from_env() -> AuthFiles {
        if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|p| !p.is_empty()) {
            return AuthFiles { files: vec![PathBuf::from(p)], helper_path: None };
        }
        let mut files = Vec::new();
        if let Some(r) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
            files.push(PathBuf::from(r).join("containers/auth.json"));
        }
        if let Some(c) = config_home() {
            files.push(c.join("containers/auth.json"));
        }
        match std::env::var_os("DOCKER_CONFIG").filter(|p| !p.is_empty()) {
            Some(d) => files.push(PathBuf::from(d).join("config.json")),
            None => {
                if let Some(h) = home_dir() {
                    files.push(h.join(".docker/config.json"));
                }
            }
        }
        AuthFiles { files, helper_path: None }
    }

    /// Exactly these files.
    pub fn new(files: Vec<PathBuf>) -> AuthFiles {
        AuthFiles { files, helper_path: None }
    }

    /// The first credentials any file has for `host` and `repository`.
    pub fn lookup(&self, host: &str, repository: &str) -> Result<Option<Credentials>, ConfigError> {
        for path in &self.files {
            if let Some(c) = self.lookup_in(path, host, repository)? {
                tracing::debug!("credentials for {host}/{repository} from {}", path.display());
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    fn lookup_in(&self, path: &Path, host: &str, repository: &str) -> Result<Option<Credentials>, ConfigError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ConfigError::Read { path: path.to_path_buf(), source }),
        };
        let raw: RawFile = serde_json::from_slice(&text)
            .map_err(|e| ConfigError::Invalid { path: path.to_path_buf(), reason: e.to_string() })?;

        if let Some(helper) = raw.cred_helpers.get(host) {
            return self.run_helper(helper, host);
        }
        // `host/ns/repo`, `host/ns`, `host`.
        let full = format!("{host}/{repository}");
        let mut key = full.as_str();
        loop {
            if let Some(a) = raw.auths.get(key) {
                if let Some(c) = decode(a, path, key)? {
                    return Ok(Some(c));
                }
            }
            match key.rsplit_once('/') {
                Some((shorter, _)) => key = shorter,
                None => break,
            }
        }
        for (k, a) in &raw.auths {
            if normalize_legacy_key(k) == host {
                if let Some(c) = decode(a, path, k)? {
                    return Ok(Some(c));
                }
            }
        }
        if let Some(store) = &raw.creds_store {
            return self.run_helper(store, host);
        }
        Ok(None)
    }

    /// `docker-credential-NAME get`, the server on stdin, JSON on stdout.
    fn run_helper(&self, name: &str, host: &str) -> Result<Option<Credentials>, ConfigError> {
        let helper = format!("docker-credential-{name}");
        let fail = |reason: String| ConfigError::Helper { helper: helper.clone(), reason };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(fail("invalid helper name".into()));
        }
        let mut cmd = Command::new(&helper);
        cmd.arg("get").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(p) = &self.helper_path {
            cmd.env("PATH", p);
        }
        let mut child = cmd.spawn().map_err(|e| fail(format!("cannot run: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that exits without reading gives EPIPE; its exit status tells.
            let _ = stdin.write_all(host.as_bytes());
        }
        // A helper that waits for a user (a locked keychain prompt) must not
        // hang a CI job forever.
        let deadline = std::time::Instant::now() + HELPER_TIMEOUT;
        loop {
            match child.try_wait().map_err(|e| fail(e.to_string()))? {
                Some(_) => break,
                None if std::time::Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(fail(format!("no answer within {}s", HELPER_TIMEOUT.as_secs())));
                }
                None => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            // The credential-helper protocol's "not found" answer.
            if stdout.contains("credentials not found") {
                return Ok(None);
            }
            let msg = String::from_utf8_lossy(&out.stderr);
            let msg = if msg.trim().is_empty() { stdout.trim().to_string() } else { msg.trim().to_string() };
            let first = msg.lines().next().unwrap_or("").to_string();
            return Err(fail(format!("{} ({first})", out.status)));
        }
        let reply: HelperReply =
            serde_json::from_slice(&out.stdout).map_err(|e| fail(format!("unreadable reply: {e}")))?;
        if reply.username.is_empty() && reply.secret.is_empty() {
            return Ok(None);
        }
        if reply.username == "<token>" {
            return Ok(Some(Credentials { username: String::new(), password: String::new(), identity_token: Some(reply.secret) }));
        }
        Ok(Some(Credentials { username: reply.username, password: reply.secret, identity_token: None }))
    }
}

/// One `auths` entry; `None` for an empty placeholder (`{}`, what Docker
/// writes next to a `credsStore`).
fn decode(a: &RawAuth, path: &Path, key: &str) -> Result<Option<Credentials>, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid { path: path.to_path_buf(), reason: format!("auths[{key:?}]: {reason}") };
    let token = a.identitytoken.clone().filter(|t| !t.is_empty());
    let (username, password) = match a.auth.as_deref().filter(|s| !s.is_empty()) {
        Some(b64) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|_| invalid("auth is not base64".into()))?;
            let s = String::from_utf8(bytes).map_err(|_| invalid("auth is not UTF-8".into()))?;
            let (u, p) = s.split_once(':').ok_or_else(|| invalid("auth is not user:password".into()))?;
            (u.to_string(), p.to_string())
        }
        None => (a.username.clone().unwrap_or_default(), a.password.clone().unwrap_or_default()),
    };
    if username.is_empty() && password.is_empty() && token.is_none() {
        return Ok(None);
    }
    Ok(Some(Credentials { username, password, identity_token: token }))
}

/// `https://index.docker.io/v1/` → `docker.io`, `http://host:5000/x` → `host:5000`.
fn normalize_legacy_key(k: &str) -> String {
    let k = k.strip_prefix("https://").or_else(|| k.strip_prefix("http://")).unwrap_or(k);
    let host = k.split('/').next().unwrap_or(k);
    if host == "index.docker.io" || host == "registry-1.docker.io" {
        return "docker.io".to_string();
    }
    host.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn creds(u: &str, p: &str) -> Option<Credentials> {
        Some(Credentials { username: u.into(), password: p.into(), identity_token: None })
    }

    #[test]
    fn most_specific_key_wins_and_files_are_searched_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("auth.json");
        let second = dir.path().join("config.json");
        std::fs::write(
            &first,
            format!(
                r#"{{"auths": {{
                    "reg.example:5000": {{"auth": "{}"}},
                    "reg.example:5000/team": {{"auth": "{}"}},
                    "reg.example:5000/team/app": {{"username": "app", "password": "p:w"}}
                }}}}"#,
                b64("host:h"),
                b64("team:t")
            ),
        )
        .unwrap();
        std::fs::write(
            &second,
            format!(r#"{{"auths": {{"https://index.docker.io/v1/": {{"auth": "{}"}}, "other.example": {{}} }}}}"#, b64("hub:x")),
        )
        .unwrap();
        let files = AuthFiles::new(vec![dir.path().join("missing.json"), first, second]);
        assert_eq!(files.lookup("reg.example:5000", "team/app").unwrap(), creds("app", "p:w"));
        assert_eq!(files.lookup("reg.example:5000", "team/other").unwrap(), creds("team", "t"));
        assert_eq!(files.lookup("reg.example:5000", "solo").unwrap(), creds("host", "h"));
        assert_eq!(files.lookup("docker.io", "library/busybox").unwrap(), creds("hub", "x"));
        // An empty placeholder is no credentials, and an unknown host has none.
        assert_eq!(files.lookup("other.example", "a").unwrap(), None);
        assert_eq!(files.lookup("reg.example", "team/app").unwrap(), None);
    }

    #[test]
    fn identity_token_and_bad_entries() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        std::fs::write(&f, r#"{"auths": {"a.example": {"identitytoken": "tok"}, "b.example": {"auth": "%%%"}}}"#).unwrap();
        let files = AuthFiles::new(vec![f.clone()]);
        let c = files.lookup("a.example", "x").unwrap().unwrap();
        assert_eq!(c.identity_token.as_deref(), Some("tok"));
        let e = files.lookup("b.example", "x").unwrap_err().to_string();
        assert!(e.contains("not base64") && e.contains("auth.json"), "{e}");

        std::fs::write(&f, "{not json").unwrap();
        assert!(matches!(files.lookup("a.example", "x"), Err(ConfigError::Invalid { .. })));
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials { username: "u".into(), password: "hunter2".into(), identity_token: Some("tok123".into()) };
        let s = format!("{c:?}");
        assert!(!s.contains("hunter2") && !s.contains("tok123") && s.contains("\"u\""), "{s}");
    }

    /// Real helper programs: a shell script speaking the helper protocol.
    #[test]
    fn credential_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let script = |name: &str, body: &str| {
            let p = bin.join(format!("docker-credential-{name}"));
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        // Replies only for the server it is asked about, read from stdin.
        script(
            "good",
            r#"[ "$1" = get ] || exit 3
read server
if [ "$server" = "reg.example" ]; then echo '{"ServerURL":"reg.example","Username":"helper","Secret":"s3cret"}'
else echo "credentials not found in native keychain"; exit 1; fi"#,
        );
        script("token", r#"read s; echo '{"Username":"<token>","Secret":"refresh"}'"#);
        script("broken", r#"echo "keychain locked" >&2; exit 2"#);
        let f = dir.path().join("config.json");
        std::fs::write(
            &f,
            r#"{"credHelpers": {"reg.example": "good", "other.example": "good", "tok.example": "token", "bad.example": "broken",
                                "evil.example": "../../bin/sh"},
                "credsStore": "token",
                "auths": {"reg.example": {"auth": "dXNlcjpwYXNz"}}}"#,
        )
        .unwrap();
        let files = AuthFiles { files: vec![f], helper_path: Some(bin.into_os_string()) };
        assert_eq!(files.lookup("reg.example", "a").unwrap(), creds("helper", "s3cret"));
        assert_eq!(files.lookup("other.example", "a").unwrap(), None);
        assert_eq!(files.lookup("tok.example", "a").unwrap().unwrap().identity_token.as_deref(), Some("refresh"));
        let e = files.lookup("bad.example", "a").unwrap_err().to_string();
        assert!(e.contains("docker-credential-broken") && e.contains("keychain locked"), "{e}");
        assert!(files.lookup("evil.example", "a").unwrap_err().to_string().contains("invalid helper name"));
        // Not in credHelpers or auths: the credsStore is asked.
        assert_eq!(files.lookup("unknown.example", "a").unwrap().unwrap().identity_token.as_deref(), Some("refresh"));
    }
}
