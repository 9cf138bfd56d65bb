//! Bad input and faults during `berth pull`: each ends with exit 125, one
//! stderr line naming the cause, nothing on stdout, and nothing partial
//! visible in the store.

use std::time::Duration;

use crate::common::*;

fn image() -> Image {
    Image::new(vec![Layer::new(&busybox_tar(), Comp::Gzip, false)])
}

/// Runs a pull expected to fail; checks the rules and returns the line.
fn failed_pull(env: &Env, args: &[&str]) -> String {
    let mut all = vec!["pull", "-q"];
    all.extend_from_slice(args);
    let line = env.run(&all).provision_failure();
    eprintln!("{args:?} -> {line}");
    assert!(env.image_digests().is_empty(), "an image was recorded after: {line}");
    env.assert_store_consistent();
    line
}

#[test]
fn malformed_references() {
    let env = Env::new();
    for bad in ["", "UPPER/case", "a::b", "host:5000/app@sha256:1234", "a b", "oci:", "app:tag:more"] {
        let line = failed_pull(&env, &[bad]);
        assert!(line.contains("invalid image reference"), "{bad:?}: {line}");
    }
    let line = failed_pull(&env, &["--platform", "linux", "x/y:1"]);
    assert!(line.contains("platform"), "{line}");
}

#[test]
fn unknown_host() {
    let env = Env::new();
    let line = failed_pull(&env, &["no-such-host.invalid/app:v1"]);
    assert!(line.contains("no-such-host.invalid"), "{line}");
}

#[test]
fn connection_refused() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let env = Env::new();
    let line = failed_pull(&env, &["--tls-verify=false", &format!("127.0.0.1:{port}/app:v1")]);
    assert!(line.contains(&format!("127.0.0.1:{port}")) && line.contains("refused"), "{line}");
}

#[test]
fn unauthorized_says_whether_credentials_were_sent() {
    let reg = Registry::start_tls_auth("alice", "s3cret");
    reg.push_image("private/app", "v1", &image());
    let r = format!("{}/private/app:v1", reg.host());

    let env = Env::new();
    env.trust(&reg);
    let line = failed_pull(&env, &[&r]);
    assert!(line.contains(&reg.host()) && line.contains("401") && line.contains("no credentials were sent"), "{line}");

    env.write_auth(&env.containers_auth(), &reg.host(), "alice", "wrong");
    let line = failed_pull(&env, &[&r]);
    assert!(line.contains(&reg.host()) && line.contains("401") && line.contains("credentials were sent"), "{line}");
}

#[test]
fn unknown_tag_and_repository() {
    let reg = Registry::start();
    reg.push_image("app", "v1", &image());
    let env = Env::new();
    let line = failed_pull(&env, &["--tls-verify=false", &format!("{}/app:nope", reg.host())]);
    assert!(line.contains("app:nope") && line.contains("not found"), "{line}");
    let line = failed_pull(&env, &["--tls-verify=false", &format!("{}/other:v1", reg.host())]);
    assert!(line.contains("other") && line.contains("not found"), "{line}");
}

#[test]
fn artifact_manifest_is_not_an_image() {
    let reg = Registry::start();
    let img = image();
    for l in &img.layers {
        reg.push_blob("chart", &l.blob);
    }
    reg.push_blob("chart", &img.config);
    let manifest = img.manifest_with("application/vnd.cncf.helm.config.v1+json");
    reg.push_manifest("chart", "v1", OCI_MANIFEST, &manifest);
    let env = Env::new();
    let line = failed_pull(&env, &["--tls-verify=false", &format!("{}/chart:v1", reg.host())]);
    assert!(line.contains("chart:v1") && line.contains("application/vnd.cncf.helm.config.v1+json"), "{line}");
}

#[test]
fn manifest_digest_mismatch() {
    let reg = Registry::start();
    let img = image();
    reg.push_image("app", "v1", &img);
    // Same JSON, one more byte: the registry still serves it under the old digest.
    let path = reg.blob_data_path(&img.digest());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.push(b' ');
    std::fs::write(&path, bytes).unwrap();
    let env = Env::new();
    let line = failed_pull(&env, &["--tls-verify=false", &format!("{}/app:v1", reg.host())]);
    assert!(line.contains("digest") && line.contains(&img.digest()), "{line}");
    let line = failed_pull(&env, &["--tls-verify=false", &format!("{}/app@{}", reg.host(), img.digest())]);
    assert!(line.contains("digest") && line.contains(&img.digest()), "{line}");
}

#[test]
fn layer_digest_mismatch() {
    let reg = Registry::start();
    let img = image();
    reg.push_image("app", "v1", &img);
    let layer = img.layers[0].digest();
    let path = reg.blob_data_path(&layer);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0x55;
    std::fs::write(&path, bytes).unwrap();
    let env = Env::new();
    let line = failed_pull(&env, &["--tls-verify=false", &format!("{}/app:v1", reg.host())]);
    assert!(line.contains(&layer) && line.contains("digest mismatch"), "{line}");
    // The bad bytes are not kept for a resume either.
    assert!(!env.root.join("ingest").join(format!("{}.partial", hex_of(&layer))).exists());
}

#[test]
fn layer_size_mismatch() {
    let reg = Registry::start();
    let img = image();
    reg.push_image("app", "v1", &img);
    let layer = img.layers[0].digest();
    let path = reg.blob_data_path(&layer);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(b"trailing garbage");
    std::fs::write(&path, bytes).unwrap();
    let env = Env::new();
    let line = failed_pull(&env, &["--tls-verify=false", &format!("{}/app:v1", reg.host())]);
    assert!(line.contains(&layer) && line.contains("bytes"), "{line}");

    // Shorter than the manifest says.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let line = failed_pull(&env, &["--tls-verify=false", &format!("{}/app:v1", reg.host())]);
    assert!(line.contains(&layer) && line.contains("bytes"), "{line}");
}

#[test]
fn truncated_transfer() {
    let reg = Registry::start();
    let big = big_layer(3 << 20, 1);
    let img = Image::new(vec![big.clone()]);
    reg.push_image("big", "v1", &img);
    let proxy = Proxy::start(reg.addr());
    // Every connection is cut after 200 kB of response: resumes make
    // progress but cannot finish 3 MB within the bounded retries.
    proxy.set_cut_after(200_000);
    let env = Env::new();
    let line = failed_pull(&env, &["--tls-verify=false", &format!("{}/big:v1", proxy.host())]);
    assert!(line.contains(&big.digest()) && line.contains("cut short"), "{line}");
    // What arrived stays for a later resume, out of sight.
    let partial = env.root.join("ingest").join(format!("{}.partial", hex_of(&big.digest())));
    assert!(std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) > 200_000);
}

#[test]
fn platform_missing_from_index() {
    let reg = Registry::start();
    reg.push_index("multi", "latest", &Index::multi_arch(Flavour::Oci));
    let env = Env::new();
    let line = failed_pull(&env, &["--tls-verify=false", "--platform", "linux/s390x", &format!("{}/multi:latest", reg.host())]);
    assert!(line.contains("linux/s390x") && line.contains("linux/arm64/v8") && line.contains("multi:latest"), "{line}");
}

#[test]
fn registry_killed_mid_pull() {
    let mut reg = Registry::start();
    let big = big_layer(4 << 20, 2);
    reg.push_image("big", "v1", &Image::new(vec![big.clone()]));
    let proxy = Proxy::start(reg.addr());
    proxy.set_rate(1 << 20);
    let env = Env::new();
    let child = env
        .berth(&["pull", "-q", "--tls-verify=false", &format!("{}/big:v1", proxy.host())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let partial = env.root.join("ingest").join(format!("{}.partial", hex_of(&big.digest())));
    assert!(wait_until(Duration::from_secs(30), || std::fs::metadata(&partial).map(|m| m.len() > 500_000).unwrap_or(false)));
    reg.kill();
    let out = child.wait_with_output().unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    };
    let line = run.provision_failure();
    assert!(line.contains(&proxy.host()), "{line}");
    assert!(env.image_digests().is_empty());
    env.assert_store_consistent();
}

/// Unmounts on drop.
struct Mount(std::path::PathBuf);
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn disk_full() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs tests as root)");
        return;
    }
    let reg = Registry::start();
    let big = big_layer(4 << 20, 3);
    reg.push_image("big", "v1", &Image::new(vec![Layer::new(&busybox_tar(), Comp::Gzip, false), big]));
    let env = Env::new();
    std::fs::create_dir_all(&env.root).unwrap();
    nix::mount::mount(Some("tmpfs"), &env.root, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=2m,mode=0700")).unwrap();
    let _m = Mount(env.root.clone());
    let line = failed_pull(&env, &["--tls-verify=false", &format!("{}/big:v1", reg.host())]);
    assert!(line.contains("No space left on device"), "{line}");
}

/// `berth pull IMAGE 2>&1 >/dev/null | head -c1`: stderr is a pipe whose
/// reader is gone. Every progress line then fails with EPIPE; the pull must
/// go on, finish and exit 0 (it once panicked with exit 101).
#[test]
fn closed_stderr_does_not_stop_a_pull() {
    let reg = Registry::start();
    let img = image();
    reg.push_image("app", "v1", &img);
    let env = Env::new();
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    // Progress lines (not -q) and info logs: many writes to the dead pipe.
    let out = env
        .berth(&["pull", "-v", "--tls-verify=false", &format!("{}/app:v1", reg.host())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(write))
        .status()
        .unwrap();
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert_eq!(env.image_digests(), vec![img.digest()]);
    env.assert_store_consistent();
}
