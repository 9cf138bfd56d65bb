//! A real registry for the client tests: Debian's `docker-registry`
//! (distribution 2.8) on 127.0.0.1, plain or with TLS and htpasswd auth, and
//! a small HTTP pusher for test images.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth::image::digest::Digest;

use crate::common::{free_port, make_certs, wait_until};

pub const USER: &str = "tester";
pub const PASSWORD: &str = "s3cret-pw";

pub struct Registry {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The CA that signed the server certificate, when TLS is on.
    pub ca: Option<PathBuf>,
    pub tls: bool,
    pub auth: bool,
}

impl Registry {
    /// A plain-HTTP registry without auth.
    pub fn plain() -> Registry {
        Registry::start(false, false)
    }

    /// HTTPS (certificate from a fresh CA) with htpasswd basic auth.
    pub fn tls_auth() -> Registry {
        Registry::start(true, true)
    }

    fn start(tls: bool, auth: bool) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("storage").display()
        );
        let mut ca = None;
        if tls {
            make_certs(dir.path());
            let (ca_crt, crt, key) = (dir.path().join("ca.crt"), dir.path().join("server.crt"), dir.path().join("server.key"));
            config += &format!("  tls:\n    certificate: {}\n    key: {}\n", crt.display(), key.display());
            ca = Some(ca_crt);
        }
        if auth {
            let out = Command::new("htpasswd").args(["-Bbn", USER, PASSWORD]).output().unwrap();
            assert!(out.status.success());
            std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
            config += &format!("auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n", dir.path().join("htpasswd").display());
        }
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        let mut reg = Registry { child, dir, port, ca, tls, auth };
        reg.wait_ready();
        reg
    }

    fn wait_ready(&mut self) {
        let listening = wait_until(Duration::from_secs(20), || {
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut log = String::new();
                std::fs::File::open(self.dir.path().join("registry.log")).unwrap().read_to_string(&mut log).unwrap();
                panic!("docker-registry exited ({status}): {log}");
            }
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
        assert!(listening, "docker-registry did not listen on {}", self.port);
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where a blob's bytes live in the registry's storage (for tampering).
    pub fn blob_data(&self, d: &Digest) -> PathBuf {
        self.dir.path().join(format!("storage/docker/registry/v2/blobs/sha256/{}/{}/data", &d.hex()[..2], d.hex()))
    }

    /// A client for pushing, trusting this registry's CA.
    fn pusher(&self) -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder();
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).unwrap();
            b = b.tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()]);
        }
        b.build().unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", if self.tls { "https" } else { "http" }, self.port)
    }

    fn authed(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if self.auth {
            rb.basic_auth(USER, Some(PASSWORD))
        } else {
            rb
        }
    }

    /// Uploads a blob (monolithic POST + PUT) and returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        let c = self.pusher();
        let d = Digest::of(data);
        let resp = self.authed(c.post(self.url(&format!("/v2/{repo}/blobs/uploads/")))).send().await.unwrap();
        assert_eq!(resp.status(), 202, "start upload: {}", resp.text().await.unwrap());
        let loc = resp.headers()["location"].to_str().unwrap().to_string();
        let loc = if loc.starts_with("http") { loc } else { self.url(&loc) };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let resp = self
            .authed(c.put(format!("{loc}{sep}digest={d}")))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "finish upload: {}", resp.text().await.unwrap());
        d
    }

    /// Uploads a manifest under `reference` (a tag or digest).
    pub async fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Digest {
        let c = self.pusher();
        let resp = self
            .authed(c.put(self.url(&format!("/v2/{repo}/manifests/{reference}"))))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "push manifest: {}", resp.text().await.unwrap());
        Digest::of(body)
    }

    /// Pushes a one-layer OCI image under `tag`: (manifest, layer bytes).
    pub async fn push_image(&self, repo: &str, tag: &str, layer: &[u8]) -> (Vec<u8>, Digest) {
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let cd = self.push_blob(repo, config).await;
        let ld = self.push_blob(repo, layer).await;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld.to_string(), "size": layer.len()}],
        }))
        .unwrap();
        let md = self.push_manifest(repo, tag, "application/vnd.oci.image.manifest.v1+json", &manifest).await;
        (manifest, md)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
