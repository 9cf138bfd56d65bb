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
    crate::error_lines::assert_no_repeated_segment(&line);
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
    // What the registry had already written sits in the proxy's socket
    // buffers (several MiB on loopback), enough to finish a small layer:
    // cut the open connections too, as the registry's death would.
    proxy.set_cut_after(1);
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

/// A registry on 127.0.0.1 that misbehaves in time: it answers `/v2/`, the
/// manifest and the config at once (unless `stall` says otherwise) and sends
/// what `stall` picks at one byte per 100 ms, or nothing at all.
struct Hostile {
    port: u16,
}

#[derive(Clone, Copy)]
enum Stall {
    /// Accepts and reads the request, never answers.
    Silent,
    /// The manifest's headers at once, its body at 10 bytes/s.
    Manifest,
    /// The layer's headers at once, its body at 10 bytes/s.
    Layer,
}

impl Hostile {
    fn start(img: &Image, stall: Stall) -> Hostile {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let img = img.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let img = img.clone();
                std::thread::spawn(move || {
                    let mut req = Vec::new();
                    let mut b = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut b) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&b[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&req).lines().next().unwrap_or("").to_string();
                    let path = line.split(' ').nth(1).unwrap_or("").to_string();
                    let (ctype, body, slow) = if path == "/v2/" {
                        ("application/json", b"{}".to_vec(), false)
                    } else if path.contains("/manifests/") {
                        (OCI_MANIFEST, img.manifest.clone(), matches!(stall, Stall::Manifest))
                    } else if path.ends_with(&img.config_digest()) {
                        ("application/octet-stream", img.config.clone(), false)
                    } else {
                        ("application/octet-stream", img.layers[0].blob.clone(), matches!(stall, Stall::Layer))
                    };
                    if matches!(stall, Stall::Silent) {
                        std::thread::sleep(Duration::from_secs(60));
                        return;
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    if conn.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    if !slow {
                        let _ = conn.write_all(&body);
                        return;
                    }
                    for byte in body {
                        if conn.write_all(&[byte]).is_err() {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                });
            }
        });
        Hostile { port }
    }

    fn reference(&self) -> String {
        format!("127.0.0.1:{}/app:v1", self.port)
    }
}

/// Pulls from `h` with a 1 KiB per 0.3 s low-speed limit; returns the run
/// and how long it took.
fn slow_pull(h: &Hostile, quiet: bool) -> (Run, Duration) {
    let mut env = Env::new();
    env.vars.push(("BERTH_LOW_SPEED".into(), "1024/0.3".into()));
    let mut args = vec!["pull", "--tls-verify=false"];
    if quiet {
        args.push("-q");
    }
    let r = h.reference();
    args.push(&r);
    let start = std::time::Instant::now();
    let run = env.run(&args);
    let took = start.elapsed();
    eprintln!("{args:?} took {took:?}:\n{}", run.stderr);
    assert!(env.image_digests().is_empty());
    env.assert_store_consistent();
    (run, took)
}

#[test]
fn a_registry_that_never_answers_is_bounded_and_said() {
    let h = Hostile::start(&image(), Stall::Silent);
    let (run, took) = slow_pull(&h, false);
    assert_eq!(run.code, 125, "{}", run.stderr);
    assert!(run.stdout.is_empty());
    let host = format!("127.0.0.1:{}", h.port);
    let lines: Vec<&str> = run.stderr.lines().collect();
    let last = lines.last().unwrap();
    assert!(last.starts_with("berth: ") && last.contains(&host) && last.contains("no response in 0.3 s"), "{last}");
    // The wait and each retry are said at default verbosity.
    assert!(lines.iter().any(|l| l.contains(&format!("registry {host}: no response after 0.1 s; waiting up to 0.3 s"))), "{}", run.stderr);
    for attempt in 2..=4 {
        assert!(lines.iter().any(|l| l.contains("retrying in") && l.contains(&format!("(attempt {attempt} of 4)"))), "{}", run.stderr);
    }
    // 4 attempts × (HTTPS, then plain HTTP) × 0.3 s, plus under 2 s of backoff.
    assert!(took < Duration::from_secs(15), "{took:?}");

    // With -q: the one line only.
    let (run, _) = slow_pull(&h, true);
    let line = run.provision_failure();
    crate::error_lines::assert_no_repeated_segment(&line);
    assert!(line.contains("no response in 0.3 s"), "{line}");
}

#[test]
fn a_manifest_at_10_bytes_a_second_is_refused() {
    let h = Hostile::start(&image(), Stall::Manifest);
    let (run, took) = slow_pull(&h, true);
    let line = run.provision_failure();
    assert!(line.contains("too slow: less than 1024 bytes in 0.3 s"), "{line}");
    assert!(took < Duration::from_secs(15), "{took:?}");
}

#[test]
fn a_layer_at_10_bytes_a_second_is_refused() {
    let img = image();
    let h = Hostile::start(&img, Stall::Layer);
    let (run, took) = slow_pull(&h, true);
    let line = run.provision_failure();
    assert!(line.contains(&img.layers[0].digest()) && line.contains("too slow: less than 1024 bytes in 0.3 s"), "{line}");
    // 6 tries of 0.3 s each, and berth's own 6.2 s of pauses between resumes.
    assert!(took < Duration::from_secs(25), "{took:?}");
}
