//! `berth pull`, `images`, `rmi` and `gc` against a real `docker-registry`.

use crate::common::*;

/// A two-layer OCI image: busybox (gzip) and a zstd layer.
fn small_image() -> Image {
    let extra = TarBuilder::new().dir("etc", 0o755).file("etc/hello", 0o644, b"hello\n").finish();
    Image::new(vec![Layer::new(&busybox_tar(), Comp::Gzip, false), Layer::new(&extra, Comp::Zstd, false)])
}

#[test]
fn pull_by_tag_then_images_lists_it() {
    let reg = Registry::start();
    let img = small_image();
    reg.push_image("app", "v1", &img);
    let env = Env::new();
    let r = format!("{}/app:v1", reg.host());
    let run = env.run(&["pull", "--tls-verify=false", &r]).ok();
    assert!(run.stdout.is_empty(), "pull printed on stdout: {}", run.stdout);
    assert!(run.stderr.contains("pulling layer sha256:"), "progress lines: {}", run.stderr);
    let images = env.run(&["images"]).ok();
    assert!(images.stdout.starts_with("REFERENCE"), "{}", images.stdout);
    assert!(images.stdout.contains(&r), "{}", images.stdout);
    assert!(images.stdout.contains(&hex_of(&img.digest())[..12]), "{}", images.stdout);
    assert_eq!(env.image_digests(), vec![img.digest()]);
    for l in &img.layers {
        assert!(env.root.join("blobs/sha256").join(hex_of(&l.digest())).is_file());
    }
    env.assert_store_consistent();
}

fn store(env: &Env) -> berth::store::Store {
    berth::store::Store::open(&env.root).unwrap()
}

#[test]
fn pull_by_digest_records_the_digest_name() {
    let reg = Registry::start();
    let img = small_image();
    reg.push_image("app", "v1", &img);
    let env = Env::new();
    let r = format!("{}/app@{}", reg.host(), img.digest());
    env.run(&["pull", "-q", "--tls-verify=false", &r]).ok();
    let rec = store(&env).lookup(&r).unwrap().expect("recorded under its digest name");
    assert_eq!(rec.manifest.to_string(), img.digest());
    assert_eq!(rec.config.to_string(), img.config_digest());
    // Pulling again finds everything present.
    let again = env.run(&["pull", "--tls-verify=false", &r]).ok();
    assert!(again.stderr.contains("already present"), "{}", again.stderr);
}

#[test]
fn gzip_zstd_and_plain_layers_in_both_namings() {
    let reg = Registry::start();
    let t = |n: &str| TarBuilder::new().file(n, 0o644, n.as_bytes()).finish();
    let img = Image::new(vec![
        Layer::new(&busybox_tar(), Comp::Gzip, false),
        Layer::new(&t("zstd"), Comp::Zstd, false),
        Layer::new(&t("plain"), Comp::None, false),
        Layer::new(&t("docker-gzip"), Comp::Gzip, true),
        Layer::new(&t("docker-plain"), Comp::None, true),
    ]);
    reg.push_image("layers", "all", &img);
    let env = Env::new();
    let r = format!("{}/layers:all", reg.host());
    env.run(&["pull", "-q", "--tls-verify=false", &r]).ok();
    let image = store(&env).image(&r).unwrap();
    use berth::store::Compression::*;
    let got: Vec<_> = image.layers.iter().map(|l| l.compression).collect();
    assert_eq!(got, vec![Gzip, Zstd, None, Gzip, None]);
    for (l, want) in image.layers.iter().zip(&img.layers) {
        assert_eq!(l.diff_id.to_string(), want.diff_id);
        assert_eq!(std::fs::read(&l.path).unwrap(), want.blob);
    }
}

#[test]
fn docker_schema2_image_and_manifest_list() {
    let reg = Registry::start();
    let img = Image::build(vec![Layer::new(&busybox_tar(), Comp::Gzip, true)], "linux/amd64", Flavour::Docker, None);
    reg.push_image("docker", "v2", &img);
    let list = Index::multi_arch(Flavour::Docker);
    reg.push_index("docker", "list", &list);
    let env = Env::new();
    env.run(&["pull", "-q", "--tls-verify=false", &format!("{}/docker:v2", reg.host())]).ok();
    env.run(&["pull", "-q", "--tls-verify=false", "--platform", "linux/arm64", &format!("{}/docker:list", reg.host())]).ok();
    let s = store(&env);
    assert_eq!(s.lookup(&format!("{}/docker:v2", reg.host())).unwrap().unwrap().manifest.to_string(), img.digest());
    let rec = s.lookup(&format!("{}/docker:list", reg.host())).unwrap().unwrap();
    assert_eq!(rec.manifest.to_string(), list.image_for("linux/arm64/v8").digest());
    assert_eq!(rec.index.unwrap().to_string(), list.digest());
    assert_eq!(rec.platform, "linux/arm64/v8");
}

#[test]
fn multi_arch_selects_platform_and_variant() {
    let reg = Registry::start();
    let index = Index::multi_arch(Flavour::Oci);
    reg.push_index("multi", "latest", &index);
    let r = format!("{}/multi:latest", reg.host());
    for (flag, want) in [
        (None, "linux/amd64"),
        (Some("linux/amd64"), "linux/amd64"),
        (Some("linux/arm64"), "linux/arm64/v8"),
        (Some("linux/arm64/v8"), "linux/arm64/v8"),
        (Some("linux/arm"), "linux/arm/v7"),
        (Some("linux/arm/v7"), "linux/arm/v7"),
    ] {
        let env = Env::new();
        let mut args = vec!["pull", "-q", "--tls-verify=false"];
        if let Some(p) = flag {
            args.extend(["--platform", p]);
        }
        args.push(&r);
        env.run(&args).ok();
        let rec = store(&env).lookup(&r).unwrap().unwrap();
        assert_eq!(rec.manifest.to_string(), index.image_for(want).digest(), "--platform {flag:?}");
        assert_eq!(rec.platform, want);
        // Only the chosen platform's blobs were fetched.
        let other = if want == "linux/amd64" { "linux/arm/v7" } else { "linux/amd64" };
        assert!(!env.root.join("blobs/sha256").join(hex_of(&index.image_for(other).config_digest())).exists());
    }
}

#[test]
fn oci_layout_and_oci_archive_import() {
    let img = small_image();
    let index = Index::multi_arch(Flavour::Oci);
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    write_oci_layout(&layout, &[LayoutEntry::Image(&img, "v1"), LayoutEntry::Index(&index, "multi")]);
    let archive = dir.path().join("bundle.tar");
    write_oci_archive(&archive, &[LayoutEntry::Image(&img, "v1")]);

    let env = Env::new();
    env.run(&["pull", "-q", &format!("oci:{}:v1", layout.display())]).ok();
    env.run(&["pull", "-q", "--platform", "linux/arm/v7", &format!("oci:{}:multi", layout.display())]).ok();
    env.run(&["pull", "-q", &format!("oci-archive:{}", archive.display())]).ok();
    let s = store(&env);
    assert_eq!(s.lookup("localhost/layout:v1").unwrap().unwrap().manifest.to_string(), img.digest());
    assert_eq!(s.lookup("localhost/layout:multi").unwrap().unwrap().manifest.to_string(), index.image_for("linux/arm/v7").digest());
    assert_eq!(s.lookup("localhost/bundle:v1").unwrap().unwrap().manifest.to_string(), img.digest());
    assert_eq!(s.image("localhost/bundle:v1").unwrap().layers.len(), 2);
    env.assert_store_consistent();

    // Two images and no tag: ambiguous. An unknown tag names the tags there are.
    let line = env.run(&["pull", "-q", &format!("oci:{}", layout.display())]).provision_failure();
    assert!(line.contains("v1") && line.contains("multi"), "{line}");
    let line = env.run(&["pull", "-q", &format!("oci:{}:nope", layout.display())]).provision_failure();
    assert!(line.contains("\"nope\""), "{line}");

    // A tampered layer in the layout is caught; nothing is recorded.
    let env2 = Env::new();
    let blob = layout.join("blobs/sha256").join(hex_of(&img.layers[1].digest()));
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let line = env2.run(&["pull", "-q", &format!("oci:{}:v1", layout.display())]).provision_failure();
    assert!(line.contains(&img.layers[1].digest()) && line.contains("digest mismatch"), "{line}");
    assert!(env2.image_digests().is_empty());
    env2.assert_store_consistent();
}

/// A TLS registry with basic auth, and an Env that trusts its CA.
fn tls_setup() -> (Registry, Env, Image, String) {
    let reg = Registry::start_tls_auth("alice", "s3cret");
    let img = small_image();
    reg.push_image("private/app", "v1", &img);
    let env = Env::new();
    env.trust(&reg);
    let r = format!("{}/private/app:v1", reg.host());
    (reg, env, img, r)
}

#[test]
fn tls_auth_with_containers_auth_json() {
    let (reg, env, img, r) = tls_setup();
    env.write_auth(&env.containers_auth(), &reg.host(), "alice", "s3cret");
    env.run(&["pull", "-q", &r]).ok();
    assert_eq!(env.image_digests(), vec![img.digest()]);
}

#[test]
fn tls_auth_with_registry_auth_file() {
    let (reg, mut env, img, r) = tls_setup();
    let file = env.path().join("elsewhere/auth.json");
    env.write_auth(&file, &reg.host(), "alice", "s3cret");
    env.vars.push(("REGISTRY_AUTH_FILE".into(), file.display().to_string()));
    env.run(&["pull", "-q", &r]).ok();
    assert_eq!(env.image_digests(), vec![img.digest()]);
}

#[test]
fn tls_auth_with_docker_config() {
    let (reg, env, img, r) = tls_setup();
    env.write_auth(&env.docker_config(), &reg.host(), "alice", "s3cret");
    env.run(&["pull", "-q", &r]).ok();
    assert_eq!(env.image_digests(), vec![img.digest()]);
}

#[test]
fn tls_auth_with_credential_helper() {
    use std::os::unix::fs::PermissionsExt;
    let (reg, mut env, img, r) = tls_setup();
    let bin = env.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-test");
    // The helper protocol: server URL on stdin, JSON on stdout.
    std::fs::write(
        &helper,
        "#!/bin/sh\nread server\necho \"$server\" >> \"$(dirname \"$0\")/asked\"\nprintf '{\"ServerURL\":\"%s\",\"Username\":\"alice\",\"Secret\":\"s3cret\"}' \"$server\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.path.push(bin.clone());
    let cfg = serde_json::json!({"credHelpers": {reg.host(): "test"}});
    std::fs::create_dir_all(env.docker_config().parent().unwrap()).unwrap();
    std::fs::write(env.docker_config(), cfg.to_string()).unwrap();
    env.run(&["pull", "-q", &r]).ok();
    assert_eq!(env.image_digests(), vec![img.digest()]);
    let asked = std::fs::read_to_string(bin.join("asked")).unwrap();
    assert!(asked.contains(&reg.host()), "helper asked for {asked:?}");
}

#[test]
fn tls_untrusted_ca_is_refused_unless_tls_verify_false() {
    let reg = Registry::start_tls_auth("alice", "s3cret");
    reg.push_image("private/app", "v1", &small_image());
    let env = Env::new();
    env.write_auth(&env.containers_auth(), &reg.host(), "alice", "s3cret");
    let r = format!("{}/private/app:v1", reg.host());
    let line = env.run(&["pull", "-q", &r]).provision_failure();
    assert!(line.contains(&reg.host()) && line.contains("certificate"), "{line}");
    env.run(&["pull", "-q", "--tls-verify=false", &r]).ok();
}

#[test]
fn registries_conf_insecure_mirror_and_search() {
    let reg = Registry::start();
    let img = small_image();
    reg.push_image("team/app", "v1", &img);
    // Nothing listens on the primary: only the mirror can serve it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let env = Env::new();
    env.registries_conf(&format!(
        r#"unqualified-search-registries = ["{host}"]

[[registry]]
location = "{host}"
insecure = true

[[registry]]
location = "127.0.0.1:{dead}"
insecure = true
[[registry.mirror]]
location = "{host}"
insecure = true
"#,
        host = reg.host()
    ));
    // insecure: plain HTTP without --tls-verify=false.
    env.run(&["pull", "-q", &format!("{}/team/app:v1", reg.host())]).ok();
    // A short name through unqualified-search-registries.
    env.run(&["pull", "-q", "team/app:v1"]).ok();
    // The mirror serves what the dead primary cannot.
    env.run(&["pull", "-q", &format!("127.0.0.1:{dead}/team/app:v1")]).ok();
    let s = store(&env);
    for name in [format!("{}/team/app:v1", reg.host()), format!("127.0.0.1:{dead}/team/app:v1")] {
        assert_eq!(s.lookup(&name).unwrap().unwrap().manifest.to_string(), img.digest(), "{name}");
    }
}

#[test]
fn images_rmi_and_gc() {
    let reg = Registry::start();
    let shared = Layer::new(&busybox_tar(), Comp::Gzip, false);
    let own = |s: &str| Layer::new(&TarBuilder::new().file(s, 0o644, s.as_bytes()).finish(), Comp::Gzip, false);
    let a = Image::new(vec![shared.clone(), own("a")]);
    let b = Image::new(vec![shared.clone(), own("b")]);
    reg.push_image("a", "1", &a);
    reg.push_image("b", "1", &b);
    let env = Env::new();
    let (ra, rb) = (format!("{}/a:1", reg.host()), format!("{}/b:1", reg.host()));
    env.run(&["pull", "-q", "--tls-verify=false", &ra]).ok();
    env.run(&["pull", "-q", "--tls-verify=false", &rb]).ok();
    let listing = env.run(&["images"]).ok().stdout;
    assert_eq!(listing.lines().count(), 3, "{listing}");
    assert!(listing.lines().all(|l| !l.contains("\t")));

    let run = env.run(&["rmi", &ra]).ok();
    assert!(run.stdout.is_empty());
    assert_eq!(env.image_digests(), vec![b.digest()]);
    let blob = |d: &str| env.root.join("blobs/sha256").join(hex_of(d));
    assert!(blob(&a.layers[1].digest()).exists(), "rmi leaves blobs to gc");
    env.run(&["gc"]).ok();
    assert!(!blob(&a.layers[1].digest()).exists() && !blob(&a.digest()).exists() && !blob(&a.config_digest()).exists());
    assert!(blob(&shared.digest()).exists() && blob(&b.layers[1].digest()).exists() && blob(&b.digest()).exists());
    store(&env).image(&rb).unwrap();

    // By digest prefix, then a name that is not there.
    env.run(&["rmi", &hex_of(&b.digest())[..12]]).ok();
    assert!(env.image_digests().is_empty());
    let line = env.run(&["rmi", &rb]).provision_failure();
    assert!(line.contains(&rb), "{line}");
}

#[test]
fn rootless_pull_as_test_user() {
    if !is_root() {
        eprintln!("skipped: runuser needs root (CI runs tests as root)");
        return;
    }
    let reg = Registry::start();
    let img = small_image();
    reg.push_image("app", "v1", &img);
    let env = Env::for_test_user();
    let r = format!("{}/app:v1", reg.host());
    env.run_as_user(&["pull", "-q", "--tls-verify=false", &r]).ok();
    let listing = env.run_as_user(&["images"]).ok().stdout;
    assert!(listing.contains(&r), "{listing}");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&env.root).unwrap();
    let uid = test_user_ids().0;
    assert_eq!(meta.uid(), uid);
    assert_eq!(meta.mode() & 0o777, 0o700);
    for l in &img.layers {
        let m = std::fs::metadata(env.root.join("blobs/sha256").join(hex_of(&l.digest()))).unwrap();
        assert_eq!(m.uid(), uid);
    }
}

#[test]
fn foreign_layers_come_from_the_registry_never_their_urls() {
    let reg = Registry::start();
    // Anything that connects here is a request to the foreign URL.
    let foreign = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    foreign.set_nonblocking(true).unwrap();
    let url = format!("http://{}/layer.tar.gz", foreign.local_addr().unwrap());
    let base = TarBuilder::new().file("base.txt", 0o644, b"windows base layer stand-in").finish();
    let img = Image::build(
        vec![
            Layer::new(&base, Comp::Gzip, true)
                .with_media_type("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
                .with_urls(&[&url]),
            Layer::new(&busybox_tar(), Comp::Gzip, true),
        ],
        "linux/amd64",
        Flavour::Docker,
        None,
    );
    reg.push_image("foreign", "v1", &img);
    let oci = Image::new(vec![Layer::new(&base, Comp::Zstd, false)
        .with_media_type("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd")
        .with_urls(&[&url])]);
    reg.push_image("foreign", "oci", &oci);
    let env = Env::new();
    env.run(&["pull", "-q", "--tls-verify=false", &format!("{}/foreign:v1", reg.host())]).ok();
    env.run(&["pull", "-q", "--tls-verify=false", &format!("{}/foreign:oci", reg.host())]).ok();
    assert!(foreign.accept().is_err(), "berth contacted a foreign layer URL");
    let image = store(&env).image(&format!("{}/foreign:oci", reg.host())).unwrap();
    assert_eq!(image.layers[0].compression, berth::store::Compression::Zstd);
}

#[test]
fn oci_archive_with_a_symlinked_blob_is_refused() {
    let img = small_image();
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    write_oci_layout(&layout, &[LayoutEntry::Image(&img, "v1")]);
    // Replace one layer blob with a symlink to it elsewhere.
    let blob = layout.join("blobs/sha256").join(hex_of(&img.layers[0].digest()));
    let outside = dir.path().join("outside");
    std::fs::rename(&blob, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &blob).unwrap();
    let archive = dir.path().join("linked.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    b.follow_symlinks(false);
    b.append_dir_all(".", &layout).unwrap();
    b.into_inner().unwrap();
    let env = Env::new();
    let line = env.run(&["pull", "-q", &format!("oci-archive:{}", archive.display())]).provision_failure();
    assert!(line.contains(&img.layers[0].digest()) && line.contains("missing"), "{line}");
    assert!(env.image_digests().is_empty());
}
