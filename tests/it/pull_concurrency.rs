//! Pulls that overlap, pulls that are killed and resumed, and gc during a
//! pull, against a real registry (behind a throttling proxy so the overlap
//! is certain).

use std::process::{Child, Stdio};
use std::time::Duration;

use crate::common::*;

fn spawn(env: &Env, args: &[&str]) -> Child {
    env.berth(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

fn finish(child: Child) -> Run {
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

#[test]
fn two_pulls_at_once_fetch_each_blob_once() {
    let reg = Registry::start();
    let layers: Vec<Layer> = (0..3).map(|i| big_layer(600_000, 10 + i)).collect();
    let img = Image::new(layers.clone());
    reg.push_image("app", "v1", &img);
    // A second image sharing two layers, pulled at the same time.
    let other = Image::new(vec![layers[0].clone(), layers[1].clone(), big_layer(300_000, 20)]);
    reg.push_image("other", "v1", &other);
    let proxy = Proxy::start(reg.addr());
    proxy.set_rate(2_000_000);
    let env = Env::new();
    let a = spawn(&env, &["pull", "--tls-verify=false", &format!("{}/app:v1", proxy.host())]);
    let b = spawn(&env, &["pull", "--tls-verify=false", &format!("{}/app:v1", proxy.host())]);
    let c = spawn(&env, &["pull", "--tls-verify=false", &format!("{}/other:v1", proxy.host())]);
    for run in [finish(a), finish(b), finish(c)] {
        let run = run.ok();
        assert!(run.stdout.is_empty());
    }
    for l in layers.iter().chain(&other.layers) {
        let gets: Vec<_> = reg
            .requests("GET", "/v2/")
            .into_iter()
            .filter(|(line, _)| line.contains(&format!("/blobs/{}", l.digest())))
            .collect();
        assert_eq!(gets.len(), 1, "blob {} fetched {} times:\n{gets:#?}", l.digest(), gets.len());
    }
    let mut digests = env.image_digests();
    digests.sort();
    let mut want = vec![img.digest(), other.digest()];
    want.sort();
    assert_eq!(digests, want);
    env.assert_store_consistent();
}

#[test]
fn killed_pull_resumes_with_range() {
    let reg = Registry::start();
    let big = big_layer(6 << 20, 30);
    let img = Image::new(vec![Layer::new(&busybox_tar(), Comp::Gzip, false), big.clone()]);
    reg.push_image("big", "v1", &img);
    let proxy = Proxy::start(reg.addr());
    proxy.set_rate(1 << 20);
    let env = Env::new();
    let r = format!("{}/big:v1", proxy.host());
    let mut child = spawn(&env, &["pull", "--tls-verify=false", &r]);
    let partial = env.root.join("ingest").join(format!("{}.partial", hex_of(&big.digest())));
    let size = || std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(wait_until(Duration::from_secs(60), || size() > 1 << 20), "the layer never started");
    kill9(&mut child);
    let kept = size();
    assert!(kept > 0 && kept < big.blob.len() as u64);
    assert!(env.image_digests().is_empty(), "a killed pull recorded an image");
    env.assert_store_consistent();

    proxy.set_rate(0);
    let run = env.run(&["pull", "--tls-verify=false", &r]).ok();
    assert!(run.stderr.contains("resuming layer"), "{}", run.stderr);
    assert_eq!(env.image_digests(), vec![img.digest()]);
    // The registry saw a partial (206) request for the big layer.
    let ranged: Vec<_> = reg
        .requests("GET", "/v2/big/blobs/")
        .into_iter()
        .filter(|(line, status)| line.contains(&big.digest()) && *status == 206)
        .collect();
    assert_eq!(ranged.len(), 1, "{}", reg.log());
    assert!(!partial.exists());
    env.assert_store_consistent();
}

#[test]
fn gc_during_a_pull_waits_and_keeps_the_image() {
    let reg = Registry::start();
    let img = Image::new(vec![big_layer(2 << 20, 40), big_layer(1 << 20, 41)]);
    reg.push_image("app", "v1", &img);
    let proxy = Proxy::start(reg.addr());
    proxy.set_rate(1 << 20);
    let env = Env::new();
    let mut first = spawn(&env, &["pull", "-q", "--tls-verify=false", &format!("{}/app:v1", proxy.host())]);
    // Wait until a layer is visibly done (committed but not yet referenced).
    let blobs = env.root.join("blobs/sha256");
    let done = |d: &str| blobs.join(hex_of(d)).exists();
    let started = wait_until(Duration::from_secs(60), || done(&img.layers[1].digest()) || done(&img.layers[0].digest()));
    if !started {
        kill9(&mut first);
        panic!("no layer landed");
    }
    let gc = env.run(&["gc"]).ok();
    let pull = finish(first).ok();
    assert!(pull.stdout.is_empty());
    assert!(gc.stderr.contains("removed 0 blobs"), "gc removed something of a running pull: {}", gc.stderr);
    assert_eq!(env.image_digests(), vec![img.digest()]);
    berth::store::Store::open(&env.root).unwrap().image(&img.digest()).unwrap();
    env.assert_store_consistent();
}
