//! The shared integration-test harness: real registries, real images, and
//! berth run as a real process (as root or as the unprivileged `berthtest`).
//!
//! * [`Registry`]: Debian's `docker-registry` (distribution 2.8) on
//!   127.0.0.1, a free port and its own storage; [`Registry::start_tls_auth`]
//!   adds TLS (a CA made with the `openssl` CLI) and htpasswd basic auth. Its
//!   access log is kept so tests can count requests. Killed on drop.
//! * Fixtures made by code, never committed: [`TarBuilder`] and
//!   [`busybox_tar`] for layers, [`Layer`] (gzip, zstd or plain), [`Image`]
//!   (OCI or Docker schema2), [`Index`] (multi-arch), pushed with
//!   [`Registry::push_image`] / [`Registry::push_index`] or written as an OCI
//!   layout ([`write_oci_layout`]) or archive ([`write_oci_archive`]).
//! * [`Env`]: an isolated HOME/XDG/BERTH_ROOT per test and the `berth`
//!   command in it ([`Env::berth`], [`Env::berth_as_user`]); [`Run`] checks
//!   outcomes, [`Run::provision_failure`] the "exit 125, one line" rule.
//! * [`Proxy`]: a TCP proxy in front of a registry that can throttle or cut
//!   responses, for resume and truncation tests.
//!
//! * [`vm::Guest`]: a QEMU guest with a cgroup v2 kernel, running berth.
//!
//! A module of the one test binary (`tests/it`); not every test uses every
//! helper.
#![allow(dead_code)]

pub mod vm;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// The unprivileged user rootless tests run berth as.
pub const TEST_USER: &str = "berthtest";

/// [`TEST_USER`]'s uid and primary gid.
pub fn test_user_ids() -> (u32, u32) {
    let user = nix::unistd::User::from_name(TEST_USER).ok().flatten().expect("user berthtest (tests/run creates it)");
    (user.uid.as_raw(), user.gid.as_raw())
}

/// Gives `path` and everything under it to [`TEST_USER`] (symbolic links
/// themselves, never what they point at).
pub fn chown_to_test_user(path: &Path) {
    let (uid, gid) = test_user_ids();
    run_ok(Command::new("chown").arg("-hR").arg(format!("{uid}:{gid}")).arg(path));
}

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a `sha256:` digest.
pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Deterministic incompressible bytes (xorshift), for layers whose size on
/// the wire is what the test needs.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime").block_on(f)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

pub fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

// ---------------------------------------------------------------------------
// Registry

/// TLS material and credentials of a [`Registry::start_tls_auth`] instance.
#[derive(Debug, Clone)]
pub struct Tls {
    pub ca_pem: Vec<u8>,
    pub user: String,
    pub password: String,
}

/// A running `docker-registry`.
pub struct Registry {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    pub tls: Option<Tls>,
    http: reqwest::Client,
}

impl Registry {
    /// A plain-HTTP registry without auth.
    pub fn start() -> Registry {
        Registry::launch(None)
    }

    /// A registry with TLS (a fresh CA, server certificate for IP 127.0.0.1
    /// and DNS localhost) and htpasswd basic auth for `user`/`password`.
    pub fn start_tls_auth(user: &str, password: &str) -> Registry {
        Registry::launch(Some((user.to_string(), password.to_string())))
    }

    fn launch(auth: Option<(String, String)>) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = auth.map(|(user, password)| {
            make_certs(dir.path());
            let htpasswd = run_ok(Command::new("htpasswd").args(["-Bbn", &user, &password]));
            std::fs::write(dir.path().join("htpasswd"), htpasswd).unwrap();
            Tls { ca_pem: std::fs::read(dir.path().join("ca.crt")).unwrap(), user, password }
        });
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(60));
        if let Some(t) = &tls {
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&t.ca_pem).expect("CA pem"));
        }
        let mut reg = Registry { dir, port: 0, child: None, tls, http: http.build().expect("http client") };
        reg.spawn();
        reg
    }

    /// Starts (or restarts, on the same port and storage) the process.
    fn spawn(&mut self) {
        for _ in 0..5 {
            if self.port == 0 {
                self.port = free_port();
            }
            let root = self.dir.path();
            // Foreign-layer URLs on loopback are accepted (distribution rejects
            // manifests with `urls` unless allowed).
            let mut config = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 validation:\n  manifests:\n    urls:\n      allow:\n        - ^http://127\\.0\\.0\\.1[:/]\n\
                 http:\n  addr: 127.0.0.1:{}\n",
                root.join("storage").display(),
                self.port
            );
            if self.tls.is_some() {
                config.push_str(&format!(
                    "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                    root.join("server.crt").display(),
                    root.join("server.key").display(),
                    root.join("htpasswd").display()
                ));
            }
            std::fs::write(root.join("config.yml"), config).unwrap();
            let log = std::fs::OpenOptions::new().create(true).append(true).open(root.join("registry.log")).unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(root.join("config.yml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("docker-registry (Debian package docker-registry) must be installed");
            self.child = Some(child);
            if self.wait_ready(Duration::from_secs(20)) {
                return;
            }
            self.kill();
            // The port may have been taken between picking and binding.
            self.port = 0;
        }
        panic!("docker-registry did not come up; log:\n{}", self.log());
    }

    /// Whether the registry answers `/v2/` within `limit` (false as soon as
    /// the process exits).
    fn wait_ready(&mut self, limit: Duration) -> bool {
        let mut up = false;
        wait_until(limit, || {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return true;
            }
            up = block_on(async {
                match self.http.get(self.url("/v2/")).send().await {
                    Ok(r) => r.status().as_u16() == 200 || r.status().as_u16() == 401,
                    Err(_) => false,
                }
            });
            up
        });
        up
    }

    /// `127.0.0.1:PORT`, the registry part of references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// Kills the registry (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again after [`kill`](Registry::kill).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Everything the registry logged, access log included.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Access-log lines for `METHOD PATH-PREFIX` (e.g. `GET`,
    /// `/v2/img/blobs/sha256:…`), with their status code.
    pub fn requests(&self, method: &str, path_prefix: &str) -> Vec<(String, u16)> {
        let needle = format!("\"{method} {path_prefix}");
        self.log()
            .lines()
            .filter(|l| l.contains(&needle))
            .map(|l| {
                let after = l.split(&needle).nth(1).unwrap_or("");
                // `… HTTP/1.1" 206 1234 …`
                let status = after.split('"').nth(1).and_then(|s| s.split_whitespace().next()).and_then(|s| s.parse().ok()).unwrap_or(0);
                (l.to_string(), status)
            })
            .collect()
    }

    /// The storage root (`docker/registry/v2/...` below it).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The file holding blob `digest` in the registry's storage, for tampering.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = hex_of(digest);
        self.storage().join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    /// The CA certificate file, for trust stores.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.tls {
            Some(t) => req.basic_auth(&t.user, Some(&t.password)),
            None => req,
        }
    }

    /// Uploads a blob (monolithic: POST for a session, PUT with the digest).
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        block_on(async {
            let head = self.request(reqwest::Method::HEAD, &self.url(&format!("/v2/{repo}/blobs/{digest}"))).send().await.unwrap();
            if head.status().is_success() {
                return;
            }
            let r = self.request(reqwest::Method::POST, &self.url(&format!("/v2/{repo}/blobs/uploads/"))).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 202, "start upload: {}", r.text().await.unwrap_or_default());
            let loc = r.headers().get("location").and_then(|v| v.to_str().ok()).expect("upload location").to_string();
            let base = url::Url::parse(&self.url("/")).unwrap();
            let mut put = base.join(&loc).unwrap();
            put.query_pairs_mut().append_pair("digest", &digest);
            let r = self
                .request(reqwest::Method::PUT, put.as_str())
                .header("content-type", "application/octet-stream")
                .body(bytes.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 201, "finish upload: {}", r.text().await.unwrap_or_default());
        });
        digest
    }

    /// PUTs a manifest or index under `reference` (a tag or its digest).
    pub fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        block_on(async {
            let r = self
                .request(reqwest::Method::PUT, &self.url(&format!("/v2/{repo}/manifests/{reference}")))
                .header("content-type", media_type)
                .body(bytes.to_vec())
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            assert_eq!(status, 201, "push manifest {repo}:{reference}: {}", r.text().await.unwrap_or_default());
        });
    }

    /// Pushes an image's blobs and manifest, tagged `tag`.
    pub fn push_image(&self, repo: &str, tag: &str, image: &Image) {
        for l in &image.layers {
            self.push_blob(repo, &l.blob);
        }
        self.push_blob(repo, &image.config);
        self.push_manifest(repo, tag, image.media_type, &image.manifest);
    }

    /// Pushes every image of an index by digest, then the index as `tag`.
    pub fn push_index(&self, repo: &str, tag: &str, index: &Index) {
        for img in &index.images {
            self.push_image(repo, &img.digest(), img);
        }
        self.push_manifest(repo, tag, index.media_type, &index.bytes);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A CA and a server certificate for 127.0.0.1/localhost, with the openssl
/// CLI: `ca.crt`, `server.crt` and `server.key` in `dir`.
pub fn make_certs(dir: &Path) {
    let p = |n: &str| dir.join(n).to_string_lossy().to_string();
    run_ok(Command::new("openssl").args([
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", &p("ca.key"), "-out", &p("ca.crt"), "-days", "2", "-subj", "/CN=berth test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    ]));
    run_ok(Command::new("openssl").args([
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", &p("server.key"), "-out", &p("server.csr"), "-subj", "/CN=127.0.0.1",
    ]));
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run_ok(Command::new("openssl").args([
        "x509", "-req", "-in", &p("server.csr"), "-CA", &p("ca.crt"), "-CAkey", &p("ca.key"),
        "-CAcreateserial", "-out", &p("server.crt"), "-days", "2", "-extfile", &p("server.ext"),
    ]));
}

// ---------------------------------------------------------------------------
// Fixtures

/// Builds a layer tar in memory.
pub struct TarBuilder {
    b: tar::Builder<Vec<u8>>,
}

impl Default for TarBuilder {
    fn default() -> Self {
        TarBuilder::new()
    }
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Deterministic);
        TarBuilder { b }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    }

    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0);
        self.b.append_data(&mut h, path, std::io::empty()).unwrap();
        self
    }

    pub fn file(mut self, path: &str, mode: u32, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

/// Applets linked to busybox in [`busybox_tar`].
pub const BUSYBOX_APPLETS: &[&str] = &["sh", "ls", "cat", "echo", "true", "false", "sleep", "id", "env", "test", "mkdir", "rm", "wc", "head"];

/// A minimal root filesystem: `/bin/busybox` from busybox-static, its
/// applets as symlinks, `/etc/passwd` and `/etc/group`.
pub fn busybox_tar() -> Vec<u8> {
    busybox_tar_with(&[])
}

/// [`busybox_tar`] with more applets linked (`httpd`, `wget`, `tty`, …).
pub fn busybox_tar_with(extra_applets: &[&str]) -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox (Debian package busybox-static)");
    let mut t = TarBuilder::new()
        .dir("bin", 0o755)
        .dir("etc", 0o755)
        .dir("tmp", 0o1777)
        .file("bin/busybox", 0o755, &busybox)
        .file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        .file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n");
    let mut applets: Vec<&str> = BUSYBOX_APPLETS.to_vec();
    applets.extend(extra_applets.iter().filter(|a| !BUSYBOX_APPLETS.contains(a)));
    for a in applets {
        t = t.symlink(&format!("bin/{a}"), "busybox");
    }
    t.finish()
}

/// A layer with a directory and a file owned by uid/gid 1000
/// (`/home/builder/notes`) and a setuid root file (`/bin/suid`), for tests
/// of ownership through unpacking and copying.
pub fn owned_layer() -> Vec<u8> {
    owned_tar(&[
        ("home/builder/", 0o755, 1000, b""),
        ("home/builder/notes", 0o644, 1000, b"mine\n"),
        ("bin/suid", 0o4755, 0, b"#!/bin/sh\n"),
    ])
}

/// A tar of `(path, mode, owner, data)` entries, each owned by uid and gid
/// `owner`; a path ending in `/` is a directory.
pub fn owned_tar(entries: &[(&str, u32, u64, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for &(path, mode, owner, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).unwrap();
        h.set_mode(mode);
        h.set_uid(owner);
        h.set_gid(owner);
        h.set_entry_type(if path.ends_with('/') { tar::EntryType::Directory } else { tar::EntryType::Regular });
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Every path under `dir` (not following symlinks; unreadable parts skipped).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// A registry serving one image, and an environment for [`TEST_USER`] whose
/// registries.conf sends `localhost:5000/…` (the name the example pod files
/// use) to it.
pub struct Served {
    pub reg: Registry,
    pub env: Env,
    /// `HOST:PORT/REPO:latest`.
    pub image: String,
}

impl Served {
    /// Pushes `image` as `REPO:latest`; with `pull`, the test user pulls it.
    pub fn start(repo: &str, image: &Image, pull: bool) -> Served {
        let reg = Registry::start();
        reg.push_image(repo, "latest", image);
        let env = Env::for_test_user();
        env.registries_conf(&format!(
            "[[registry]]\nprefix = \"localhost:5000\"\nlocation = \"{}\"\ninsecure = true\n",
            reg.host()
        ));
        let image = format!("{}/{repo}:latest", reg.host());
        if pull {
            env.run_as_user(&["pull", "-q", "--tls-verify=false", &image]).ok();
        }
        Served { reg, env, image }
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

/// A layer blob ready to push.
#[derive(Debug, Clone)]
pub struct Layer {
    pub blob: Vec<u8>,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    pub media_type: String,
    /// `urls` of the descriptor (foreign layers).
    pub urls: Vec<String>,
}

impl Layer {
    /// Compresses `tar` with `comp`; `docker` picks Docker's media type names
    /// (Docker has no zstd type, so that stays OCI's).
    pub fn new(tar: &[u8], comp: Comp, docker: bool) -> Layer {
        let blob = match comp {
            Comp::None => tar.to_vec(),
            Comp::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(tar).unwrap();
                e.finish().unwrap()
            }
            Comp::Zstd => zstd::encode_all(tar, 3).unwrap(),
        };
        let media_type = match (comp, docker) {
            (Comp::None, false) => "application/vnd.oci.image.layer.v1.tar",
            (Comp::Gzip, false) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (Comp::Zstd, _) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (Comp::None, true) => "application/vnd.docker.image.rootfs.diff.tar",
            (Comp::Gzip, true) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
        };
        Layer { blob, diff_id: sha256(tar), media_type: media_type.into(), urls: Vec::new() }
    }

    /// Same bytes under another media type (foreign layers, bad types).
    pub fn with_media_type(mut self, media_type: &str) -> Layer {
        self.media_type = media_type.into();
        self
    }

    /// Same layer, its descriptor listing `urls` to fetch it from.
    pub fn with_urls(mut self, urls: &[&str]) -> Layer {
        self.urls = urls.iter().map(|u| u.to_string()).collect();
        self
    }

    pub fn digest(&self) -> String {
        sha256(&self.blob)
    }

    fn descriptor(&self) -> serde_json::Value {
        let mut d = serde_json::json!({"mediaType": self.media_type, "digest": self.digest(), "size": self.blob.len()});
        if !self.urls.is_empty() {
            d["urls"] = self.urls.clone().into();
        }
        d
    }
}

/// A layer of `size` incompressible bytes in one file, uncompressed (so its
/// blob is about `size` bytes on the wire).
pub fn big_layer(size: usize, seed: u64) -> Layer {
    let tar = TarBuilder::new().file("big.bin", 0o644, &random_bytes(size, seed)).finish();
    Layer::new(&tar, Comp::None, false)
}

/// Manifest flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Oci,
    Docker,
}

/// An image ready to push: layers, config and manifest bytes.
#[derive(Debug, Clone)]
pub struct Image {
    pub layers: Vec<Layer>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub media_type: &'static str,
    pub platform: (String, String, Option<String>),
}

impl Image {
    /// A linux/amd64 OCI image of `layers`.
    pub fn new(layers: Vec<Layer>) -> Image {
        Image::build(layers, "linux/amd64", Flavour::Oci, None)
    }

    /// An image for `platform` (`os/arch[/variant]`); `label` goes in the
    /// config so images that differ only in platform still differ.
    pub fn build(layers: Vec<Layer>, platform: &str, flavour: Flavour, label: Option<&str>) -> Image {
        let mut parts = platform.split('/');
        let os = parts.next().unwrap().to_string();
        let arch = parts.next().unwrap().to_string();
        let variant = parts.next().map(str::to_string);
        let mut config = serde_json::json!({
            "architecture": arch,
            "os": os,
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
                "Labels": {"berth.test": label.unwrap_or(platform)},
            },
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
            "history": layers.iter().map(|_| serde_json::json!({"created_by": "berth test harness"})).collect::<Vec<_>>(),
        });
        if let Some(v) = &variant {
            config["variant"] = v.clone().into();
        }
        let config = serde_json::to_vec(&config).unwrap();
        let (media_type, config_type) = match flavour {
            Flavour::Oci => (OCI_MANIFEST, OCI_CONFIG),
            Flavour::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG),
        };
        let mut img = Image { layers, config, manifest: Vec::new(), media_type, platform: (os, arch, variant) };
        img.manifest = img.manifest_with(config_type);
        img
    }

    /// The manifest bytes with another config media type (artifacts).
    pub fn manifest_with(&self, config_type: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": {"mediaType": config_type, "digest": sha256(&self.config), "size": self.config.len()},
            "layers": self.layers.iter().map(Layer::descriptor).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    pub fn digest(&self) -> String {
        sha256(&self.manifest)
    }

    pub fn config_digest(&self) -> String {
        sha256(&self.config)
    }

    /// The descriptor of this image in an index.
    pub fn descriptor(&self) -> serde_json::Value {
        let (os, arch, variant) = &self.platform;
        let mut platform = serde_json::json!({"os": os, "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = v.clone().into();
        }
        serde_json::json!({
            "mediaType": self.media_type, "digest": self.digest(), "size": self.manifest.len(), "platform": platform,
        })
    }
}

/// A multi-platform index (OCI) or manifest list (Docker).
#[derive(Debug, Clone)]
pub struct Index {
    pub images: Vec<Image>,
    pub bytes: Vec<u8>,
    pub media_type: &'static str,
}

impl Index {
    pub fn new(images: Vec<Image>, flavour: Flavour) -> Index {
        let media_type = match flavour {
            Flavour::Oci => OCI_INDEX,
            Flavour::Docker => DOCKER_LIST,
        };
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": images.iter().map(Image::descriptor).collect::<Vec<_>>(),
        }))
        .unwrap();
        Index { images, bytes, media_type }
    }

    /// linux/amd64, linux/arm64/v8 and linux/arm/v7 images, each with the
    /// busybox layer plus a small layer naming its platform.
    pub fn multi_arch(flavour: Flavour) -> Index {
        let base = Layer::new(&busybox_tar(), Comp::Gzip, flavour == Flavour::Docker);
        let images = ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"]
            .iter()
            .map(|p| {
                let marker = TarBuilder::new().dir("etc", 0o755).file("etc/platform", 0o644, p.as_bytes()).finish();
                let layers = vec![base.clone(), Layer::new(&marker, Comp::Gzip, flavour == Flavour::Docker)];
                Image::build(layers, p, flavour, None)
            })
            .collect();
        Index::new(images, flavour)
    }

    pub fn digest(&self) -> String {
        sha256(&self.bytes)
    }

    pub fn image_for(&self, platform: &str) -> &Image {
        self.images
            .iter()
            .find(|i| {
                let (os, arch, v) = &i.platform;
                let s = match v {
                    Some(v) => format!("{os}/{arch}/{v}"),
                    None => format!("{os}/{arch}"),
                };
                s == platform
            })
            .unwrap_or_else(|| panic!("no {platform} in the fixture index"))
    }
}

/// What goes into an OCI layout: images tagged by `org.opencontainers.image.ref.name`.
pub enum LayoutEntry<'a> {
    Image(&'a Image, &'a str),
    Index(&'a Index, &'a str),
}

/// Writes an OCI image layout at `dir`.
pub fn write_oci_layout(dir: &Path, entries: &[LayoutEntry]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| std::fs::write(blobs.join(hex_of(&sha256(bytes))), bytes).unwrap();
    let put_image = |img: &Image| {
        for l in &img.layers {
            put(&l.blob);
        }
        put(&img.config);
        put(&img.manifest);
    };
    let mut manifests = Vec::new();
    for e in entries {
        let (mut desc, tag) = match e {
            LayoutEntry::Image(img, tag) => {
                put_image(img);
                let mut d = img.descriptor();
                d.as_object_mut().unwrap().remove("platform");
                (d, tag)
            }
            LayoutEntry::Index(idx, tag) => {
                idx.images.iter().for_each(put_image);
                put(&idx.bytes);
                (serde_json::json!({"mediaType": idx.media_type, "digest": idx.digest(), "size": idx.bytes.len()}), tag)
            }
        };
        desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
        manifests.push(desc);
    }
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Writes an `oci-archive`: a tar of an OCI image layout.
pub fn write_oci_archive(file: &Path, entries: &[LayoutEntry]) {
    let tmp = tempfile::tempdir().unwrap();
    write_oci_layout(tmp.path(), entries);
    let mut b = tar::Builder::new(std::fs::File::create(file).unwrap());
    b.append_dir_all(".", tmp.path()).unwrap();
    b.into_inner().unwrap().sync_all().unwrap();
}

// ---------------------------------------------------------------------------
// Running berth

/// The berth binary, copied once per build to a world-readable place so
/// the unprivileged test user can run it (the build dir may be private).
pub fn berth_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_BIN_EXE_berth"));
        let meta = std::fs::metadata(src).expect("built berth binary");
        let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        let top = std::env::temp_dir().join("berth-test-bin");
        let dir = top.join(format!("{}-{mtime}", meta.len()));
        let dest = dir.join("berth");
        if std::fs::metadata(&dest).map(|m| m.len()) .ok() != Some(meta.len()) {
            std::fs::create_dir_all(&dir).unwrap();
            for d in [&top, &dir] {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            // Copy then rename: parallel test processes never see half a file.
            let tmp = dir.join(format!("berth.{}", std::process::id()));
            std::fs::copy(src, &tmp).unwrap();
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&tmp, &dest).unwrap();
        }
        dest
    })
}

/// An isolated environment for berth: its own HOME, XDG directories, store
/// (`BERTH_ROOT`), run root and registries.conf. Removed on drop.
pub struct Env {
    dir: tempfile::TempDir,
    pub home: PathBuf,
    /// BERTH_ROOT: the store.
    pub root: PathBuf,
    pub run_root: PathBuf,
    pub config_home: PathBuf,
    pub data_home: PathBuf,
    pub runtime_dir: PathBuf,
    /// CONTAINERS_REGISTRIES_CONF (empty until [`Env::registries_conf`]).
    pub registries_conf: PathBuf,
    /// Directories put before the system PATH (credential helpers).
    pub path: Vec<PathBuf>,
    /// Extra environment for every berth command.
    pub vars: Vec<(String, String)>,
    owner: Option<(u32, u32)>,
}

impl Env {
    /// An environment for berth run as the test's own user (root in CI).
    pub fn new() -> Env {
        let dir = tempfile::Builder::new().prefix("berth-test-").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = dir.path();
        let env = Env {
            home: p.join("home"),
            root: p.join("home/store"),
            run_root: p.join("run/berth"),
            config_home: p.join("home/.config"),
            data_home: p.join("home/.local/share"),
            runtime_dir: p.join("run"),
            registries_conf: p.join("home/registries.conf"),
            path: Vec::new(),
            vars: Vec::new(),
            owner: None,
            dir,
        };
        for d in [&env.home, &env.config_home, &env.data_home, &env.runtime_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::set_permissions(&env.runtime_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(&env.registries_conf, "").unwrap();
        env
    }

    /// An environment owned by [`TEST_USER`], for [`Env::berth_as_user`].
    /// Needs root (tests run as root in CI).
    pub fn for_test_user() -> Env {
        let mut env = Env::new();
        env.owner = Some(test_user_ids());
        env.chown();
        env
    }

    /// Gives everything under the environment to the test user (again,
    /// after files were added as root).
    pub fn chown(&self) {
        if let Some((uid, gid)) = self.owner {
            run_ok(Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(self.dir.path()));
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes registries.conf (containers format).
    pub fn registries_conf(&self, text: &str) {
        std::fs::write(&self.registries_conf, text).unwrap();
        self.chown();
    }

    /// Trusts the registry's CA through `$XDG_CONFIG_HOME/containers/certs.d/HOST/ca.crt`.
    pub fn trust(&self, reg: &Registry) {
        let dir = self.config_home.join("containers/certs.d").join(reg.host());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(reg.ca_path(), dir.join("ca.crt")).unwrap();
        self.chown();
    }

    /// Writes `auth.json`-style credentials for `host` to `file`.
    pub fn write_auth(&self, file: &Path, host: &str, user: &str, password: &str) {
        use base64::Engine as _;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let json = serde_json::json!({"auths": {host: {"auth": auth}}});
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
        self.chown();
    }

    /// `~/.config/containers/auth.json`.
    pub fn containers_auth(&self) -> PathBuf {
        self.config_home.join("containers/auth.json")
    }

    /// `~/.docker/config.json`.
    pub fn docker_config(&self) -> PathBuf {
        self.home.join(".docker/config.json")
    }

    /// The berth command, as the current user.
    pub fn berth(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(berth_bin());
        cmd.args(args);
        cmd.env_clear();
        for (k, v) in self.env_vars() {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// The berth command, run as [`TEST_USER`] through `runuser`.
    pub fn berth_as_user(&self, args: &[&str]) -> Command {
        assert!(self.owner.is_some(), "use Env::for_test_user() for berth_as_user");
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", TEST_USER, "--", "env", "-i"]);
        for (k, v) in self.env_vars() {
            cmd.arg(format!("{k}={v}"));
        }
        cmd.arg(berth_bin()).args(args);
        cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        cmd.stdin(Stdio::null());
        cmd
    }

    fn env_vars(&self) -> Vec<(String, String)> {
        let mut path: Vec<String> = self.path.iter().map(|p| p.display().to_string()).collect();
        path.push("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        let s = |p: &Path| p.display().to_string();
        let mut vars = vec![
            ("PATH".to_string(), path.join(":")),
            ("HOME".into(), s(&self.home)),
            ("XDG_CONFIG_HOME".into(), s(&self.config_home)),
            ("XDG_DATA_HOME".into(), s(&self.data_home)),
            ("XDG_RUNTIME_DIR".into(), s(&self.runtime_dir)),
            ("BERTH_ROOT".into(), s(&self.root)),
            ("BERTH_RUN_ROOT".into(), s(&self.run_root)),
            ("CONTAINERS_REGISTRIES_CONF".into(), s(&self.registries_conf)),
        ];
        if let Some(user) = self.owner.and_then(|(uid, _)| nix::unistd::User::from_uid(uid.into()).ok().flatten()) {
            vars.push(("USER".into(), user.name.clone()));
            vars.push(("LOGNAME".into(), user.name));
        }
        vars.extend(self.vars.iter().cloned());
        vars
    }

    /// Runs `berth ARGS` to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        Run::of(self.berth(args))
    }

    /// Runs `berth ARGS` as the test user to completion.
    pub fn run_as_user(&self, args: &[&str]) -> Run {
        Run::of(self.berth_as_user(args))
    }

    /// `berth images -q`'s digests.
    pub fn image_digests(&self) -> Vec<String> {
        self.run(&["images", "-q"]).ok().stdout.lines().map(str::to_string).collect()
    }

    /// Checks the store holds nothing partial: every file under
    /// `blobs/sha256/` hashes to its name (and `images` lists only images
    /// whose blobs are all there, which `berth images` itself relies on).
    pub fn assert_store_consistent(&self) {
        let blobs = self.root.join("blobs/sha256");
        let Ok(rd) = std::fs::read_dir(&blobs) else { return };
        for e in rd {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().to_string();
            let bytes = std::fs::read(e.path()).unwrap();
            assert_eq!(hex_of(&sha256(&bytes)), name, "blob {name} in the store does not match its digest");
        }
    }
}

/// A finished berth run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn of(mut cmd: Command) -> Run {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Run {
            code: out.status.code().unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&out.status).unwrap_or(0)),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts success; returns self for chaining.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "berth failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }

    /// Asserts a provisioning failure by the product's rules: exit 125,
    /// nothing on stdout, exactly one line on stderr starting `berth: `.
    /// Returns that line.
    #[track_caller]
    pub fn provision_failure(&self) -> String {
        assert_eq!(self.code, 125, "expected exit 125:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        assert!(self.stdout.is_empty(), "stdout must stay empty, got: {:?}", self.stdout);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected exactly one stderr line, got: {:?}", self.stderr);
        assert!(lines[0].starts_with("berth: "), "stderr line must start with 'berth: ': {:?}", lines[0]);
        lines[0].to_string()
    }
}

/// Polls `f` until it is true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The name libtest knows a test of this binary by (`MODULE::NAME`, the
/// crate left out), for tests that re-run the binary with `--exact NAME`.
pub fn test_name(module_path: &str, name: &str) -> String {
    let module = module_path.split_once("::").map_or("", |(_, m)| m);
    format!("{module}::{name}")
}

/// The berth process `runuser` started (its child), once it exists.
pub fn berth_pid(runuser: &Child) -> i32 {
    let mut pid = None;
    assert!(wait_until(Duration::from_secs(10), || { pid = child_of(runuser.id()); pid.is_some() }), "berth did not start");
    pid.unwrap()
}

/// A process whose parent is `parent`, from /proc.
fn child_of(parent: u32) -> Option<i32> {
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        if rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            return Some(pid);
        }
    }
    None
}

/// Sends SIGKILL to a child and reaps it.
pub fn kill9(child: &mut Child) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}

// ---------------------------------------------------------------------------
// A TCP proxy that throttles or cuts

/// A TCP proxy on 127.0.0.1 in front of `upstream`. Downstream bytes (the
/// responses) can be rate-limited and each connection cut after a number
/// of response bytes; both can change while it runs.
pub struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Bytes per second per connection; 0 = unlimited.
    pub rate: Arc<AtomicU64>,
    /// Close a connection after this many response bytes; 0 = never.
    pub cut_after: Arc<AtomicU64>,
    pub connections: Arc<AtomicUsize>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let rate = Arc::new(AtomicU64::new(0));
        let cut_after = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (s, r, c, n) = (stop.clone(), rate.clone(), cut_after.clone(), connections.clone());
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(down) = conn else { continue };
                let Ok(up) = TcpStream::connect(upstream) else { continue };
                n.fetch_add(1, Ordering::SeqCst);
                let (r, c, s2) = (r.clone(), c.clone(), s.clone());
                let (down2, up2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                std::thread::spawn(move || pipe(down2, up2, None, None, s2));
                let s3 = s.clone();
                std::thread::spawn(move || pipe(up, down, Some(r), Some(c), s3));
            }
        });
        Proxy { port, stop, rate, cut_after, connections, threads: Mutex::new(vec![accept]) }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    pub fn set_cut_after(&self, bytes: u64) {
        self.cut_after.store(bytes, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        for t in self.threads.lock().unwrap().drain(..) {
            let _ = t.join();
        }
    }
}

/// Copies `from` → `to` until either side closes, optionally throttled and
/// cut; shuts both down at the end so the other direction ends too.
fn pipe(mut from: TcpStream, mut to: TcpStream, rate: Option<Arc<AtomicU64>>, cut: Option<Arc<AtomicU64>>, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 16 << 10];
    let mut sent = 0u64;
    let _ = from.set_read_timeout(Some(Duration::from_millis(500)));
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        let mut chunk = &buf[..n];
        if let Some(limit) = cut.as_ref().map(|c| c.load(Ordering::SeqCst)).filter(|l| *l > 0) {
            if sent + chunk.len() as u64 > limit {
                chunk = &chunk[..(limit.saturating_sub(sent)) as usize];
                let _ = to.write_all(chunk);
                break;
            }
        }
        if to.write_all(chunk).is_err() {
            break;
        }
        sent += chunk.len() as u64;
        if let Some(r) = rate.as_ref().map(|r| r.load(Ordering::SeqCst)).filter(|r| *r > 0) {
            std::thread::sleep(Duration::from_secs_f64(chunk.len() as f64 / r as f64));
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// Starts `berth ARGS` as the test user with stdout and stderr piped, and
/// waits for the main container to print `ready`; on anything else, fails
/// with berth's stderr.
pub fn start_until_ready(env: &Env, args: &[&str]) -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>) {
    use std::io::{BufRead as _, Read as _};
    use std::process::Stdio;
    let mut child = env.berth_as_user(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    if line != "ready\n" {
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        panic!("berth {args:?} did not start: stdout {line:?}, stderr {err}");
    }
    (child, out)
}

/// Processes whose command line mentions `needle`.
pub fn processes_with(needle: &str) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if pid as u32 == std::process::id() {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            out.push((pid, cmd));
        }
    }
    out
}

/// A copy of this test binary in `dir` (world-readable), which the test
/// user can execute to run one test of it as itself.
pub fn test_bin_copy(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let exe = dir.join("test-bin");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    exe
}
