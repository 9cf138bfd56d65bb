//! `berth pull`, `images`, `rmi` and `gc` against a real `docker-registry`.

mod common;

use common::*;

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
