//! The registry client against real servers on 127.0.0.1: Debian's
//! `docker-registry` (plain, and TLS + htpasswd), and a tiny hand-written
//! HTTP server for the faults a registry will not produce on demand.

mod fake;
mod harness;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use berth::config::{AuthFiles, CertDirs, Registries};
use berth::image::digest::Digest;
use berth::image::reference::RegistryRef;
use berth::registry::{media, Blob, Client, ClientOptions, RegistryError, RetryPolicy};
use futures_util::StreamExt;

use fake::{Reply, Request, Server};
use harness::{Registry, PASSWORD, USER};

use crate::common::free_port;

fn opts() -> ClientOptions {
    ClientOptions {
        retry: RetryPolicy { attempts: 3, base_delay: Duration::from_millis(20), max_delay: Duration::from_secs(3) },
        ..ClientOptions::default()
    }
}

fn insecure() -> ClientOptions {
    ClientOptions { tls_verify: false, ..opts() }
}

fn client(o: ClientOptions) -> Client {
    Client::new(o).unwrap()
}

fn rref(s: &str) -> RegistryRef {
    RegistryRef::parse(s).unwrap()
}

fn auth_file(dir: &Path, host: &str, user: &str, pass: &str) -> AuthFiles {
    let f = dir.join("auth.json");
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    std::fs::write(&f, format!(r#"{{"auths": {{"{host}": {{"auth": "{b64}"}}}}}}"#)).unwrap();
    AuthFiles::new(vec![f])
}

fn registries(text: &str) -> Arc<Registries> {
    Arc::new(Registries::parse(text, Path::new("registries.conf")).unwrap())
}

async fn collect(b: Blob) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    let mut body = b.body;
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

fn layer_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[tokio::test]
async fn plain_registry_manifests_and_blobs() {
    let reg = Registry::plain();
    let layer = layer_bytes(300_000);
    let (manifest, md) = reg.push_image("test/app", "v1", &layer).await;
    let c = client(insecure());
    let host = reg.host();

    let m = c.manifest(&rref(&format!("{host}/test/app:v1")), media::ALL_MANIFESTS).await.unwrap();
    assert_eq!(&m.bytes[..], &manifest[..]);
    assert_eq!(m.digest, md);
    assert_eq!(m.media_type, media::OCI_MANIFEST);
    assert_eq!(m.endpoint, format!("{host}/test/app"));

    let by_digest = c.manifest(&rref(&format!("{host}/test/app@{md}")), &[media::OCI_MANIFEST]).await.unwrap();
    assert_eq!(by_digest.digest, md);

    // An index over it.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": media::OCI_INDEX,
        "manifests": [{"mediaType": media::OCI_MANIFEST, "digest": md.to_string(), "size": manifest.len(),
                       "platform": {"os": "linux", "architecture": "amd64"}}],
    }))
    .unwrap();
    let id = reg.push_manifest("test/app", "multi", media::OCI_INDEX, &index).await;
    let mi = c.manifest(&rref(&format!("{host}/test/app:multi")), media::ALL_MANIFESTS).await.unwrap();
    assert_eq!((mi.media_type.as_str(), mi.digest.clone()), (media::OCI_INDEX, id));

    // Blobs: whole, resumed from an offset, and from past the end.
    let ld = Digest::of(&layer);
    let r = rref(&format!("{host}/test/app"));
    let b = c.blob(&r, &ld, 0).await.unwrap();
    assert_eq!((b.offset, b.total), (0, Some(layer.len() as u64)));
    assert_eq!(collect(b).await.unwrap(), layer);
    let b = c.blob(&r, &ld, 123_456).await.unwrap();
    assert_eq!((b.offset, b.total), (123_456, Some(layer.len() as u64)));
    assert_eq!(collect(b).await.unwrap(), &layer[123_456..]);
    let b = c.blob(&r, &ld, layer.len() as u64 + 10).await.unwrap();
    assert_eq!(b.offset, 0, "an unsatisfiable range starts over");
    assert_eq!(collect(b).await.unwrap().len(), layer.len());

    // Not found.
    let e = c.manifest(&rref(&format!("{host}/test/app:nope")), media::ALL_MANIFESTS).await.unwrap_err();
    assert!(matches!(e, RegistryError::ManifestNotFound { .. }), "{e:?}");
    assert_eq!(e.to_string(), format!("tag nope not found in {host}/test/app"));
    let missing = Digest::of(b"missing");
    let e = c.manifest(&rref(&format!("{host}/test/app@{missing}")), media::ALL_MANIFESTS).await.unwrap_err();
    assert_eq!(e.to_string(), format!("manifest {missing} not found in {host}/test/app"));
    let e = c.blob(&r, &missing, 0).await.unwrap_err();
    assert!(matches!(e, RegistryError::BlobNotFound { .. }), "{e:?}");
    assert!(e.to_string().contains(&host), "{e}");
    let e = c.manifest(&rref(&format!("{host}/other/repo:v1")), media::ALL_MANIFESTS).await.unwrap_err();
    assert!(matches!(e, RegistryError::ManifestNotFound { .. }), "{e:?}");
}

#[tokio::test]
async fn plain_http_needs_tls_verify_false_or_an_insecure_registry() {
    let reg = Registry::plain();
    reg.push_image("a/b", "v1", b"layer").await;
    let host = reg.host();
    let r = rref(&format!("{host}/a/b:v1"));

    let e = client(opts()).manifest(&r, media::ALL_MANIFESTS).await.unwrap_err();
    assert!(matches!(e, RegistryError::Tls { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&host) && msg.contains("--tls-verify=false"), "{msg}");

    let regs = registries(&format!("[[registry]]\nlocation = \"{host}\"\ninsecure = true\n"));
    let c = client(ClientOptions { registries: regs, ..opts() });
    assert_eq!(c.manifest(&r, media::ALL_MANIFESTS).await.unwrap().media_type, media::OCI_MANIFEST);
}

#[tokio::test]
async fn tampered_registry_storage_is_a_digest_mismatch() {
    let reg = Registry::plain();
    let (manifest, md) = reg.push_image("t/app", "v1", b"layer").await;
    let mut evil = manifest.clone();
    evil.extend_from_slice(b"  ");
    std::fs::write(reg.blob_data(&md), &evil).unwrap();
    let c = client(insecure());
    for r in [format!("{}/t/app@{md}", reg.host()), format!("{}/t/app:v1", reg.host())] {
        let e = c.manifest(&rref(&r), media::ALL_MANIFESTS).await.unwrap_err();
        match &e {
            RegistryError::DigestMismatch { expected, actual, .. } => {
                assert_eq!((expected, actual), (&md, &Digest::of(&evil)));
            }
            other => panic!("{r}: {other:?}"),
        }
        assert!(!e.is_retryable());
    }
}

#[tokio::test]
async fn tls_registry_with_basic_auth() {
    let reg = Registry::tls_auth();
    let layer = layer_bytes(50_000);
    let (_, md) = reg.push_image("secure/app", "v1", &layer).await;
    let host = reg.host();
    let r = rref(&format!("{host}/secure/app:v1"));
    let dir = tempfile::tempdir().unwrap();
    let certs_d = dir.path().join("certs.d");
    std::fs::create_dir_all(certs_d.join(&host)).unwrap();
    std::fs::copy(reg.ca.as_ref().unwrap(), certs_d.join(&host).join("ca.crt")).unwrap();
    let certs = CertDirs { roots: vec![dir.path().join("absent"), certs_d], cert_dir: None };
    let good = auth_file(dir.path(), &host, USER, PASSWORD);

    let c = client(ClientOptions { certs: certs.clone(), auth: good.clone(), ..opts() });
    let m = c.manifest(&r, media::ALL_MANIFESTS).await.unwrap();
    assert_eq!(m.digest, md);
    let b = c.blob(&r, &Digest::of(&layer), 0).await.unwrap();
    assert_eq!(collect(b).await.unwrap(), layer);

    let e = client(ClientOptions { certs: certs.clone(), ..opts() }).manifest(&r, media::ALL_MANIFESTS).await.unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { credentials_sent: false, .. }), "{e:?}");
    assert_eq!(e.to_string(), format!("registry {host}: 401 Unauthorized (no credentials were sent)"));

    let bad_dir = tempfile::tempdir().unwrap();
    let bad = auth_file(bad_dir.path(), &host, USER, "wrong");
    let e = client(ClientOptions { certs: certs.clone(), auth: bad, ..opts() }).manifest(&r, media::ALL_MANIFESTS).await.unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { credentials_sent: true, .. }), "{e:?}");

    // Unknown CA: refused, unless verification is off.
    let e = client(ClientOptions { auth: good.clone(), ..opts() }).manifest(&r, media::ALL_MANIFESTS).await.unwrap_err();
    assert!(matches!(e, RegistryError::Tls { .. }), "{e:?}");
    assert!(e.to_string().contains(&host), "{e}");
    let c = client(ClientOptions { auth: good.clone(), tls_verify: false, ..opts() });
    assert_eq!(c.manifest(&r, media::ALL_MANIFESTS).await.unwrap().digest, md);

    // A flat --cert-dir style directory.
    let flat = dir.path().join("flat");
    std::fs::create_dir(&flat).unwrap();
    std::fs::copy(reg.ca.as_ref().unwrap(), flat.join("ca.crt")).unwrap();
    let c = client(ClientOptions { auth: good, certs: CertDirs { roots: vec![], cert_dir: Some(flat) }, ..opts() });
    assert_eq!(c.manifest(&r, media::ALL_MANIFESTS).await.unwrap().digest, md);
}

/// A small OCI image manifest, as the fake servers serve it.
fn manifest_body() -> Vec<u8> {
    format!(r#"{{"schemaVersion":2,"mediaType":"{}","config":{{}},"layers":[]}}"#, media::OCI_MANIFEST).into_bytes()
}

fn ok_manifest() -> Reply {
    let body = manifest_body();
    Reply::new(200)
        .header("Content-Type", media::OCI_MANIFEST)
        .header("Docker-Content-Digest", &Digest::of(&body).to_string())
        .body(body)
}

fn manifest_requests(s: &Server) -> usize {
    s.requests().iter().filter(|r| r.path.contains("/manifests/")).count()
}

#[tokio::test]
async fn retries_5xx_and_429_honouring_retry_after() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let server = Server::start(move |req: &Request, _| {
        if req.path == "/v2/" {
            return Reply::new(200);
        }
        match s.fetch_add(1, Ordering::SeqCst) {
            0 => Reply::new(429).header("Retry-After", "1"),
            1 => Reply::new(503),
            _ => ok_manifest(),
        }
    })
    .await;
    let c = client(insecure());
    let started = Instant::now();
    let m = c.manifest(&rref(&format!("{}/app:v1", server.host())), media::ALL_MANIFESTS).await.unwrap();
    assert_eq!(m.digest, Digest::of(&manifest_body()));
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was not honoured: {:?}", started.elapsed());
    assert_eq!(manifest_requests(&server), 3);

    // Always failing: bounded by the policy's attempts.
    let server = Server::start(|req: &Request, _| if req.path == "/v2/" { Reply::new(200) } else { Reply::new(500) }).await;
    let e = c.manifest(&rref(&format!("{}/app:v1", server.host())), media::ALL_MANIFESTS).await.unwrap_err();
    assert!(matches!(e, RegistryError::Http { status: 500, .. }) && e.is_retryable(), "{e:?}");
    assert_eq!(manifest_requests(&server), 3);

    // Other 4xx: never retried.
    let server = Server::start(|req: &Request, _| if req.path == "/v2/" { Reply::new(200) } else { Reply::new(400) }).await;
    let e = c.manifest(&rref(&format!("{}/app:v1", server.host())), media::ALL_MANIFESTS).await.unwrap_err();
    assert!(matches!(e, RegistryError::Http { status: 400, .. }), "{e:?}");
    assert_eq!(manifest_requests(&server), 1);

    // A Retry-After beyond the policy's patience ends it at once, and says so.
    let server = Server::start(|req: &Request, _| {
        if req.path == "/v2/" { Reply::new(200) } else { Reply::new(429).header("Retry-After", "3600") }
    })
    .await;
    let e = c.manifest(&rref(&format!("{}/app:v1", server.host())), media::ALL_MANIFESTS).await.unwrap_err();
    assert!(e.to_string().contains("429 Too Many Requests (asks to retry after 3600s)"), "{e}");
    assert_eq!(manifest_requests(&server), 1);
}

#[tokio::test]
async fn credentials_never_follow_a_redirect_to_another_host() {
    let storage = Arc::new(Server::start(|_req: &Request, _| Reply::new(200).body("blob-bytes")).await);
    let storage_port = storage.port;
    let registry = Server::start(move |req: &Request, _| {
        let authed = req.header("authorization").is_some();
        match req.path.as_str() {
            "/v2/" => Reply::new(401).header("WWW-Authenticate", "Basic realm=\"fake\""),
            _ if !authed => Reply::new(401).header("WWW-Authenticate", "Basic realm=\"fake\""),
            p if p.starts_with("/v2/app/blobs/") && p.ends_with("1") => {
                Reply::new(307).header("Location", &format!("http://127.0.0.1:{storage_port}/store/x?sig=abc"))
            }
            p if p.starts_with("/v2/app/blobs/") => Reply::new(302).header("Location", "/same-origin/blob"),
            "/same-origin/blob" => Reply::new(200).body("same-origin-bytes"),
            _ => Reply::new(404),
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(ClientOptions { auth: auth_file(dir.path(), &registry.host(), "u", "p"), ..insecure() });
    let r = rref(&format!("{}/app", registry.host()));

    let cross = Digest::parse(&format!("sha256:{}1", "0".repeat(63))).unwrap();
    let b = c.blob(&r, &cross, 0).await.unwrap();
    assert_eq!(collect(b).await.unwrap(), b"blob-bytes");
    let to_storage = storage.requests();
    assert_eq!(to_storage.len(), 1);
    assert_eq!(to_storage[0].path, "/store/x?sig=abc");
    assert_eq!(to_storage[0].header("authorization"), None, "credentials leaked to another host");

    // A redirect within the same origin keeps them.
    let same = Digest::parse(&format!("sha256:{}2", "0".repeat(63))).unwrap();
    let b = c.blob(&r, &same, 0).await.unwrap();
    assert_eq!(collect(b).await.unwrap(), b"same-origin-bytes");
    let last = registry.requests().into_iter().last().unwrap();
    assert_eq!(last.path, "/same-origin/blob");
    assert!(last.header("authorization").is_some_and(|a| a.starts_with("Basic ")));
}

#[tokio::test]
async fn bearer_token_flow() {
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("u:p"));
    let server = Server::start(move |req: &Request, _| {
        let challenge = |host: &str| format!(r#"Bearer realm="http://{host}/token",service="fake-registry""#);
        let host = req.header("host").unwrap_or("").to_string();
        if req.path == "/v2/" {
            return Reply::new(401).header("WWW-Authenticate", &challenge(&host));
        }
        if req.path.starts_with("/token") {
            let ok = match req.method.as_str() {
                "GET" => req.header("authorization") == Some(basic.as_str()),
                "POST" => String::from_utf8_lossy(&req.body).contains("refresh_token=refresh-me"),
                _ => false,
            };
            return if ok { Reply::new(200).body(r#"{"token":"tok-1","expires_in":300}"#) } else { Reply::new(401) };
        }
        if req.header("authorization") != Some("Bearer tok-1") {
            return Reply::new(401).header("WWW-Authenticate", &challenge(&host));
        }
        ok_manifest()
    })
    .await;
    let host = server.host();
    let r = rref(&format!("{host}/team/app:v1"));
    let dir = tempfile::tempdir().unwrap();

    let c = client(ClientOptions { auth: auth_file(dir.path(), &host, "u", "p"), ..insecure() });
    c.manifest(&r, media::ALL_MANIFESTS).await.unwrap();
    c.manifest(&r, media::ALL_MANIFESTS).await.unwrap();
    let token_reqs: Vec<Request> = server.requests().into_iter().filter(|q| q.path.starts_with("/token")).collect();
    assert_eq!(token_reqs.len(), 1, "the token is cached");
    assert!(token_reqs[0].path.contains("service=fake-registry"), "{}", token_reqs[0].path);
    assert!(token_reqs[0].path.contains("scope=repository%3Ateam%2Fapp%3Apull"), "{}", token_reqs[0].path);

    // Anonymous: the token endpoint refuses, and the error says no
    // credentials were sent.
    let e = client(insecure()).manifest(&r, media::ALL_MANIFESTS).await.unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { credentials_sent: false, .. }), "{e:?}");

    // An identity token is exchanged with the OAuth2 refresh-token grant.
    let f = dir.path().join("idtoken.json");
    std::fs::write(&f, format!(r#"{{"auths": {{"{host}": {{"identitytoken": "refresh-me"}}}}}}"#)).unwrap();
    let c = client(ClientOptions { auth: AuthFiles::new(vec![f]), ..insecure() });
    c.manifest(&r, media::ALL_MANIFESTS).await.unwrap();
    let post = server.requests().into_iter().rfind(|q| q.method == "POST").unwrap();
    assert!(String::from_utf8_lossy(&post.body).contains("grant_type=refresh_token"));
}

#[tokio::test]
async fn lying_manifests_are_refused() {
    let big = vec![b' '; 5 << 20];
    let server = Server::start(move |req: &Request, _| match req.path.as_str() {
        "/v2/" => Reply::new(200),
        // CVE-2021-41190: an image manifest sold as an index.
        "/v2/app/manifests/confused" => Reply::new(200).header("Content-Type", media::OCI_INDEX).body(manifest_body()),
        "/v2/app/manifests/v1prettyjws" => Reply::new(200)
            .header("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws")
            .body(r#"{"schemaVersion":1}"#),
        "/v2/app/manifests/big" => Reply::new(200).header("Content-Type", media::OCI_MANIFEST).body(big.clone()),
        "/v2/app/manifests/liar" => Reply::new(200)
            .header("Content-Type", media::OCI_MANIFEST)
            .header("Docker-Content-Digest", &Digest::of(b"something else").to_string())
            .body(manifest_body()),
        _ => Reply::new(404),
    })
    .await;
    let c = client(insecure());
    let h = server.host();
    for (tag, check) in [
        ("confused", (|e: &RegistryError| matches!(e, RegistryError::WrongMediaType { .. })) as fn(&RegistryError) -> bool),
        ("v1prettyjws", |e| matches!(e, RegistryError::WrongMediaType { .. })),
        ("big", |e| matches!(e, RegistryError::TooLarge { .. })),
        ("liar", |e| matches!(e, RegistryError::DigestMismatch { .. })),
    ] {
        let e = c.manifest(&rref(&format!("{h}/app:{tag}")), media::ALL_MANIFESTS).await.unwrap_err();
        assert!(check(&e), "{tag}: {e:?}");
        assert!(e.to_string().contains(&h), "{tag}: {e}");
    }
}

#[tokio::test]
async fn blob_ranges_and_truncation() {
    let data = layer_bytes(1000);
    let d = Digest::of(&data);
    let dd = data.clone();
    let server = Server::start(move |req: &Request, _| {
        let p = req.path.as_str();
        if p == "/v2/" {
            return Reply::new(200);
        }
        match p.rsplit('/').next() {
            // Ignores Range.
            Some(x) if x == d.to_string() => Reply::new(200).body(dd.clone()),
            Some(x) if x.ends_with("aa") => Reply::new(200).body(dd.clone()).truncate_at(400),
            Some(x) if x.ends_with("bb") => Reply::new(206).header("Content-Range", "bytes 0-999/1000").body(dd.clone()),
            _ => Reply::new(404),
        }
    })
    .await;
    let c = client(insecure());
    let r = rref(&format!("{}/app", server.host()));
    let b = c.blob(&r, &Digest::of(&data), 500).await.unwrap();
    assert_eq!((b.offset, b.total), (0, Some(1000)), "a server that ignores Range restarts at 0");
    assert_eq!(server.requests().last().unwrap().header("range"), Some("bytes=500-"));
    assert_eq!(collect(b).await.unwrap(), data);

    let trunc = Digest::parse(&format!("sha256:{}aa", "0".repeat(62))).unwrap();
    let e = collect(c.blob(&r, &trunc, 0).await.unwrap()).await.unwrap_err();
    assert!(matches!(e, RegistryError::Io { .. }) && e.is_retryable(), "{e:?}");

    let wrong_range = Digest::parse(&format!("sha256:{}bb", "0".repeat(62))).unwrap();
    let e = c.blob(&r, &wrong_range, 10).await.unwrap_err();
    assert!(matches!(e, RegistryError::BadResponse { .. }), "{e:?}");
}

#[tokio::test]
async fn connection_refused_and_unknown_host() {
    let port = free_port();
    let c = client(ClientOptions { retry: RetryPolicy { attempts: 2, ..opts().retry }, ..insecure() });
    let e = c.manifest(&rref(&format!("127.0.0.1:{port}/app:v1")), media::ALL_MANIFESTS).await.unwrap_err();
    assert!(matches!(e, RegistryError::ConnectionRefused { .. }), "{e:?}");
    assert_eq!(e.to_string(), format!("registry 127.0.0.1:{port}: connection refused"));

    let e = c.manifest(&rref("no-such-host.invalid/app:v1"), media::ALL_MANIFESTS).await.unwrap_err();
    assert!(matches!(e, RegistryError::UnknownHost { .. }), "{e:?}");
    assert!(e.to_string().starts_with("registry no-such-host.invalid: unknown host"), "{e}");
}

#[tokio::test]
async fn mirrors_first_then_the_registry() {
    let reg = Registry::plain();
    let (_, md) = reg.push_image("test/app", "v1", b"layer").await;
    let dead = free_port();
    let broken = Server::start(|req: &Request, _| if req.path == "/v2/" { Reply::new(200) } else { Reply::new(404) }).await;
    let good_mirror = Server::start(|req: &Request, _| match req.path.as_str() {
        "/v2/" => Reply::new(200),
        "/v2/cache/test/app/manifests/v1" => ok_manifest(),
        _ => Reply::new(404),
    })
    .await;
    let host = reg.host();
    let conf = |mirrors: &[String]| {
        let mut t = format!("[[registry]]\nprefix = \"example.com\"\nlocation = \"{host}\"\ninsecure = true\n");
        for m in mirrors {
            t += &format!("[[registry.mirror]]\nlocation = \"{m}\"\ninsecure = true\n");
        }
        registries(&t)
    };
    let r = rref("example.com/test/app:v1");

    let c = client(ClientOptions { registries: conf(&[format!("127.0.0.1:{dead}"), broken.host()]), ..opts() });
    let m = c.manifest(&r, media::ALL_MANIFESTS).await.unwrap();
    assert_eq!((m.digest, m.endpoint.as_str()), (md, format!("{host}/test/app").as_str()));
    assert_eq!(manifest_requests(&broken), 1);

    let c = client(ClientOptions { registries: conf(&[format!("{}/cache", good_mirror.host())]), ..opts() });
    let m = c.manifest(&r, media::ALL_MANIFESTS).await.unwrap();
    assert_eq!(m.endpoint, format!("{}/cache/test/app", good_mirror.host()));

    let blocked = registries(&format!("[[registry]]\nlocation = \"{host}\"\nblocked = true\n"));
    let e = client(ClientOptions { registries: blocked, ..insecure() })
        .manifest(&rref(&format!("{host}/test/app:v1")), media::ALL_MANIFESTS)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Blocked { .. }), "{e:?}");
}

#[tokio::test]
async fn short_names_search_the_configured_registries() {
    let reg = Registry::plain();
    let (_, md) = reg.push_image("team/app", "v1", b"layer").await;
    let empty = Server::start(|req: &Request, _| if req.path == "/v2/" { Reply::new(200) } else { Reply::new(404) }).await;
    let dead = free_port();
    let search = |hosts: &[String]| {
        let list: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
        registries(&format!("unqualified-search-registries = [{}]\n", list.join(", ")))
    };
    let c = client(ClientOptions { registries: search(&[empty.host(), reg.host()]), ..insecure() });
    let (found, m) = c.resolve(&rref("team/app:v1"), media::ALL_MANIFESTS).await.unwrap();
    assert_eq!(found.name(), format!("{}/team/app:v1", reg.host()));
    assert_eq!(m.digest, md);
    assert_eq!(manifest_requests(&empty), 1, "searched in order");

    // Nowhere: the connection problem is reported over the "not found".
    let c = client(ClientOptions {
        registries: search(&[empty.host(), format!("127.0.0.1:{dead}")]),
        retry: RetryPolicy { attempts: 1, ..opts().retry },
        ..insecure()
    });
    let e = c.resolve(&rref("team/other:v1"), media::ALL_MANIFESTS).await.unwrap_err();
    assert!(matches!(e, RegistryError::ConnectionRefused { .. }), "{e:?}");
    // A qualified name is not searched.
    let e = c.resolve(&rref(&format!("{}/team/other:v1", empty.host())), media::ALL_MANIFESTS).await.unwrap_err();
    assert!(matches!(e, RegistryError::ManifestNotFound { .. }), "{e:?}");
}

#[tokio::test]
async fn a_rejected_token_is_refreshed_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let issued = Arc::new(AtomicUsize::new(0));
    let n = issued.clone();
    let server = Server::start(move |req: &Request, _| {
        let host = req.header("host").unwrap_or("").to_string();
        let challenge = format!(r#"Bearer realm="http://{host}/token",service="s",error="invalid_token""#);
        if req.path.starts_with("/token") {
            let t = n.fetch_add(1, Ordering::SeqCst) + 1;
            return Reply::new(200).body(format!(r#"{{"access_token":"tok-{t}"}}"#));
        }
        match (req.path.as_str(), req.header("authorization")) {
            ("/v2/", _) => Reply::new(401).header("WWW-Authenticate", &challenge),
            // Only the second token is good (the first was revoked).
            (_, Some("Bearer tok-2")) => ok_manifest(),
            _ => Reply::new(401).header("WWW-Authenticate", &challenge),
        }
    })
    .await;
    let c = client(insecure());
    c.manifest(&rref(&format!("{}/app:v1", server.host())), media::ALL_MANIFESTS).await.unwrap();
    assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), 2);
    // A registry that never accepts: one refresh, then a clear 401.
    issued.store(10, std::sync::atomic::Ordering::SeqCst);
    let e = c.manifest(&rref(&format!("{}/always:v1", server.host())), media::ALL_MANIFESTS).await.unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { credentials_sent: false, .. }), "{e:?}");
    assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), 12);
}

#[tokio::test]
async fn a_challenge_learnt_after_an_open_ping_is_remembered() {
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("u:p"));
    let server = Server::start(move |req: &Request, _| match (req.path.as_str(), req.header("authorization")) {
        ("/v2/", _) => Reply::new(200),
        (_, Some(a)) if a == basic => ok_manifest(),
        _ => Reply::new(401).header("WWW-Authenticate", r#"Basic realm="r""#),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let c = client(ClientOptions { auth: auth_file(dir.path(), &server.host(), "u", "p"), ..insecure() });
    let r = rref(&format!("{}/app:v1", server.host()));
    c.manifest(&r, media::ALL_MANIFESTS).await.unwrap();
    c.manifest(&r, media::ALL_MANIFESTS).await.unwrap();
    assert_eq!(manifest_requests(&server), 3, "one 401, then credentials up front");
}

/// 403: the message names the registry and says whether credentials were
/// sent; never retried.
#[tokio::test]
async fn forbidden_names_the_registry_and_the_credentials() {
    let server = Server::start(|req: &Request, _| {
        if req.path == "/v2/" {
            return Reply::new(200);
        }
        Reply::new(403)
    })
    .await;
    let r = rref(&format!("{}/app:v1", server.host()));
    let e = client(insecure()).manifest(&r, media::ALL_MANIFESTS).await.unwrap_err();
    assert!(matches!(e, RegistryError::Forbidden { credentials_sent: false, .. }), "{e:?}");
    assert!(e.to_string().contains(&server.host()), "{e}");
    assert_eq!(manifest_requests(&server), 1, "403 is not retried");

    // With basic credentials on a registry that challenges for them.
    let server = Server::start(|req: &Request, _| {
        if req.header("authorization").is_none() {
            return Reply::new(401).header("WWW-Authenticate", "Basic realm=\"r\"");
        }
        Reply::new(403)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let auth = auth_file(dir.path(), &server.host(), "u", "p");
    let c = client(ClientOptions { auth, ..insecure() });
    let r = rref(&format!("{}/app:v1", server.host()));
    let e = c.manifest(&r, media::ALL_MANIFESTS).await.unwrap_err();
    assert!(matches!(e, RegistryError::Forbidden { credentials_sent: true, .. }), "{e:?}");
    assert!(e.to_string().contains("credentials were sent"), "{e}");
}
