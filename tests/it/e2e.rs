//! End to end, as the unprivileged test user: images pushed to a real
//! registry, pulled, unpacked, bundled and run as a pod by berth alone.

use std::io::Write;
use std::process::Stdio;

use crate::common::*;

/// busybox-static with the applets the pod tests use (httpd, wget, …),
/// plus a second layer that owns a file as uid 1000 and a setuid file.
fn full_image() -> Image {
    let applets = ["wget", "httpd", "stat", "sha256sum", "kill", "mount", "ps", "ip", "grep"];
    Image::new(vec![Layer::new(&busybox_tar_with(&applets), Comp::Gzip, false), Layer::new(&owned_layer(), Comp::Zstd, false)])
}

fn setup() -> Served {
    Served::start("berth/busybox", &full_image(), false)
}

#[test]
fn demo_pod_file_runs_with_init_sidecar_and_main() {
    let s = setup();
    let pod = s.env.path().join("demo.yaml");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/bundles/demo.yaml"), &pod).unwrap();
    let ws = s.env.home.join("ws");
    std::fs::create_dir(&ws).unwrap();
    s.env.chown();
    // The default grace (5 s): the sidecar stops on SIGTERM by design, so
    // teardown does not wait it out.
    let started = std::time::Instant::now();
    let run = s.env.run_as_user(&["run", "--workspace", ws.to_str().unwrap(), "--pod", pod.to_str().unwrap()]);
    let took = started.elapsed();
    assert_eq!(run.code, 7, "the main container's status passes through: {run:?}");
    assert!(took < std::time::Duration::from_secs(4), "the demo waited out the grace period: {took:?}");
    // Exactly what the main container wrote: nothing of berth's.
    assert_eq!(run.stdout, "hello from the init container\n");
    assert!(run.stderr.contains("pulling"), "progress goes to stderr: {}", run.stderr);
    // The pod's `workspace` volume is berth's workspace: the init
    // container's file is on the host, owned by the invoking user.
    let hello = ws.join("hello.txt");
    assert_eq!(std::fs::read_to_string(&hello).unwrap(), "hello from the init container\n");
    let owner = test_user_ids().0;
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&hello).unwrap()), owner);
    // No state left behind.
    let pods = std::fs::read_dir(s.env.run_root.join("pods")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(pods, 0, "pod state left behind");
}

#[test]
fn shorthand_run_stdio_and_image_ownership() {
    let s = setup();
    s.env.run_as_user(&["pull", "-q", "--tls-verify=false", &s.image]).ok();
    // stdin reaches main, stdout is its own, the exit code passes through.
    let mut cmd = s.env.berth_as_user(&["run", &s.image, "--", "sh", "-c", "cat; id -u; stat -c %u /home/builder/notes; exit 4"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"through the pod\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through the pod\n0\n1000\n");
    assert!(out.stderr.is_empty(), "a cached image run prints nothing: {}", String::from_utf8_lossy(&out.stderr));
    // On the host, uid 1000 of the image is the 1000th subordinate id.
    let layers = s.env.root.join("layers");
    let notes = walk(&layers).into_iter().find(|p| p.ends_with("home/builder/notes")).expect("unpacked layer");
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(notes).unwrap());
    assert_eq!(uid, 100_000 + 999, "uid 1000 maps to subuid start + 999");
}

#[test]
fn shorthand_sidecar_is_reachable_by_name() {
    let s = setup();
    let run = s.env.run_as_user(&[
        "run", "--tls-verify=false", "--grace", "0",
        "--sidecar", &format!("web={}", s.image),
        "--sidecar-cmd", "web=sh -c 'echo pong > /tmp/ping; httpd -f -p 8080 -h /tmp'",
        &s.image, "--", "sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://web:8080/ping && exit 0; sleep 0.2; done; exit 1",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "pong\n");
}

#[test]
fn missing_image_is_a_provisioning_failure() {
    let s = setup();
    let missing = s.image.replace("berth/busybox", "berth/nothing-here");
    let run = s.env.run_as_user(&["run", "--tls-verify=false", &missing, "--", "true"]);
    let line = run.provision_failure();
    assert!(line.contains("not found"), "{line}");
    // Malformed references and broken pod files are 125 too.
    let run = s.env.run_as_user(&["run", "Not/A/Valid:Ref:", "--", "true"]);
    run.provision_failure();
    let bad = s.env.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers:\n    - name: Bad_Name\n      image: busybox\n").unwrap();
    s.env.chown();
    let line = s.env.run_as_user(&["run", "--pod", bad.to_str().unwrap()]).provision_failure();
    assert!(line.contains("bad.yaml:7:"), "file:line:column: {line}");
}

#[test]
fn bundle_is_self_contained_and_cached() {
    let s = setup();
    let dir = s.env.home.join("b1");
    let run = s.env.run_as_user(&["bundle", "--tls-verify=false", &s.image, dir.to_str().unwrap(), "--", "id"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.is_empty());
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["args"], serde_json::json!(["id"]));
    assert!(dir.join("rootfs/bin/busybox").is_file());
    assert!(std::fs::symlink_metadata(dir.join("rootfs/etc/hosts")).unwrap().is_file());
    // The cache is reused: a second bundle unpacks nothing new.
    let layers_before = walk(&s.env.root.join("layers")).len();
    let dir2 = s.env.home.join("b2");
    s.env.run_as_user(&["bundle", &s.image, dir2.to_str().unwrap()]).ok();
    assert_eq!(walk(&s.env.root.join("layers")).len(), layers_before);
    // A non-empty target is refused and left alone.
    let line = s.env.run_as_user(&["bundle", &s.image, dir.to_str().unwrap()]).provision_failure();
    assert!(line.contains("not empty"), "{line}");
    assert!(dir.join("config.json").is_file());
    // gc keeps layers of stored images and removes the rest.
    s.env.run_as_user(&["rmi", &s.image]).ok();
    s.env.run_as_user(&["gc"]).ok();
    assert!(walk(&s.env.root.join("layers")).iter().all(|p| !p.ends_with("bin/busybox")), "gc left unreferenced layers");
}

#[test]
fn container_cannot_see_the_store_or_host() {
    let s = setup();
    let store = s.env.root.display().to_string();
    let run = s.env.run_as_user(&[
        "run", "--tls-verify=false", &s.image, "--", "sh", "-c",
        &format!("ls {store} 2>/dev/null && exit 1; ls /proc | grep -c '^[0-9]' ; cat /proc/self/uid_map | head -1"),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let mut lines = run.stdout.lines();
    let procs: usize = lines.next().unwrap().trim().parse().unwrap();
    assert!(procs <= 3, "the container sees only its own processes, saw {procs}");
    let uid = test_user_ids().0;
    let map: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(map, ["0", &uid.to_string(), "1"], "uid 0 in the container is the invoking user");
}

/// A user without subordinate ids: one id is mapped, every owner squashed
/// to the user, with a warning; the pod still runs.
#[test]
fn user_without_subordinate_ids_gets_squashed_owners() {
    const SOLO: &str = "berthsolo";
    if !is_root() {
        eprintln!("skipped: needs root to create the user {SOLO}");
        return;
    }
    if nix::unistd::User::from_name(SOLO).unwrap().is_none() {
        let ok = std::process::Command::new("useradd")
            .args(["-m", "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", SOLO])
            .status()
            .unwrap()
            .success();
        assert!(ok || nix::unistd::User::from_name(SOLO).unwrap().is_some(), "useradd {SOLO}");
    }
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    assert!(!subuid.lines().any(|l| l.starts_with(&format!("{SOLO}:"))), "{SOLO} must have no subuid range");

    let reg = Registry::start();
    reg.push_image("berth/busybox", "latest", &full_image());
    let image = format!("{}/berth/busybox:latest", reg.host());
    let env = Env::new();
    std::process::Command::new("chown").args(["-R", SOLO]).arg(env.path()).status().unwrap();
    let cmd = env.berth(&["run", "--tls-verify=false", &image, "--", "sh", "-c", "stat -c %u /home/builder/notes; id -u"]);
    let berth = cmd.get_program().to_owned();
    let vars: Vec<String> = cmd.get_envs().filter_map(|(k, v)| Some(format!("{}={}", k.to_str()?, v?.to_str()?))).collect();
    let mut solo = std::process::Command::new("runuser");
    solo.args(["-u", SOLO, "--", "env", "-i"]).args(&vars).arg(berth).args(cmd.get_args());
    let run = Run::of(solo);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "0\n0\n", "uid 1000 of the image is squashed to the user (0 inside)");
    assert!(run.stderr.contains("subordinate"), "a warning names the missing range: {}", run.stderr);
}

/// `berth run … >/dev/null` is common in CI scripts; libcontainer would hand
/// the container a read-only /dev/null, so writes must still succeed.
#[test]
fn stdout_and_stderr_may_be_dev_null() {
    let s = setup();
    s.env.run_as_user(&["pull", "-q", "--tls-verify=false", &s.image]).ok();
    let mut cmd = s.env.berth_as_user(&["run", &s.image, "--", "sh", "-c", "echo out || exit 3; echo err >&2 || exit 4; exit 5"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let status = cmd.status().unwrap();
    assert_eq!(status.code(), Some(5), "writes to a /dev/null stdout or stderr must not fail");
}

/// The default seccomp profile holds in an image's containers and in
/// `berth exec`, now that berth compiles it once per pod and the container
/// loads the ready program: a filter is installed, and user namespaces
/// (allowed by capabilities, refused by the profile) are refused.
#[test]
fn seccomp_profile_holds_in_run_and_exec() {
    let image = Image::new(vec![Layer::new(&busybox_tar_with(&["grep", "unshare"]), Comp::Gzip, false)]);
    let s = Served::start("berth/seccomp", &image, true);
    let probe = "grep -E '^Seccomp(_filters)?:' /proc/self/status; unshare -U true 2>/dev/null && echo unshare=allowed || echo unshare=denied";
    let want = "Seccomp:\t2\nSeccomp_filters:\t1\nunshare=denied\n";
    let mut main = s
        .env
        .berth_as_user(&["run", "--name", "sc", "--grace", "0", &s.image, "--", "sh", "-c", &format!("{probe}; exec sleep 30")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = main.stdout.take().unwrap();
    let mut got = vec![0u8; want.len()];
    std::io::Read::read_exact(&mut out, &mut got).unwrap();
    assert_eq!(String::from_utf8_lossy(&got), want);
    // Twice: each tenant process loads the bundle's program again.
    for _ in 0..2 {
        let ex = s.env.run_as_user(&["exec", "sc", "seccomp", "--", "sh", "-c", probe]);
        assert_eq!(ex.code, 0, "{ex:?}");
        assert_eq!(ex.stdout, want);
    }
    // A later pod reads the program its predecessor compiled.
    let cached: Vec<_> = std::fs::read_dir(s.env.run_root.join("seccomp")).unwrap().flatten().collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let stop = s.env.run_as_user(&["stop", "sc"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    assert_eq!(main.wait().unwrap().code(), Some(137));
    let run = s.env.run_as_user(&["run", &s.image, "--", "sh", "-c", probe]);
    assert_eq!((run.code, run.stdout.as_str()), (0, want), "{run:?}");
}

/// Run as real root, berth still puts the pod in a user namespace of its
/// own: container root is not the host's (root has no subordinate range
/// here, so only id 0 is mapped, with a warning).
#[test]
fn real_root_still_gets_a_user_namespace() {
    let s = setup();
    let env = Env::new(); // owned by root, unlike the test user's
    let run = env.run(&["run", "--tls-verify=false", &s.image, "--", "sh", "-c", "cat /proc/self/uid_map; echo 1 > /proc/sys/kernel/printk 2>/dev/null && echo wrote || echo refused"]);
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<Vec<&str>> = run.stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines.len(), 2, "{run:?}");
    assert_eq!(lines[0], ["0", "0", "1"], "only the caller's own id, not the host's whole range");
    assert_eq!(lines[1], ["refused"], "host sysctls stay out of reach");
}

/// A pod file's `image` volume: a second image's tree, its layers merged
/// (whiteouts applied), mounted read-only into the main container, through
/// an overlay and through a copy alike.
#[test]
fn image_volume_mounts_a_second_images_tree_read_only() {
    let s = setup();
    let lower = TarBuilder::new()
        .dir("opt", 0o755)
        .dir("opt/tool", 0o755)
        .file("opt/tool/hello.txt", 0o644, b"hello from the tools image\n")
        .file("opt/tool/gone.txt", 0o644, b"deleted by the next layer\n")
        .finish();
    let upper = TarBuilder::new().dir("opt/tool", 0o755).file("opt/tool/.wh.gone.txt", 0o644, b"").file("opt/tool/run.sh", 0o755, b"#!/bin/sh\necho tool ran\n").finish();
    s.reg.push_image("berth/tools", "latest", &Image::new(vec![Layer::new(&lower, Comp::Gzip, false), Layer::new(&upper, Comp::Zstd, false)]));
    let tools = format!("{}/berth/tools:latest", s.reg.host());
    let pod = s.env.path().join("tools.yaml");
    std::fs::write(
        &pod,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: tools\nspec:\n  containers:\n  - name: build\n    image: {}\n    command: [sh, -c, 'cat /tools/opt/tool/hello.txt; test -e /tools/opt/tool/gone.txt || echo whiteout applied; /tools/opt/tool/run.sh; touch /tools/x 2>/dev/null && echo writable || echo read-only']\n    volumeMounts:\n    - name: tools\n      mountPath: /tools\n  volumes:\n  - name: tools\n    image:\n      reference: {tools}\n      pullPolicy: IfNotPresent\n",
            s.image
        ),
    )
    .unwrap();
    s.env.chown();
    for rootfs in ["overlay", "copy"] {
        let run = s.env.run_as_user(&["run", "--tls-verify=false", "--rootfs", rootfs, "--pod", pod.to_str().unwrap()]);
        assert_eq!(run.code, 0, "--rootfs {rootfs}: {run:?}");
        assert_eq!(run.stdout, "hello from the tools image\nwhiteout applied\ntool ran\nread-only\n", "--rootfs {rootfs}");
    }
    // The volume's image is in the store like any other.
    let images = s.env.run_as_user(&["images"]);
    assert!(images.stdout.contains("berth/tools"), "{}", images.stdout);
}
