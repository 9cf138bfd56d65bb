//! Nothing lost, nothing leaked: `rmi` and `gc` while pods run, fresh
//! workspaces for every run, no leftovers after failed starts or killed
//! unpacks, and a full disk during a pull. End to end, mostly as the
//! unprivileged test user.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

/// busybox-static plus a second layer (owned files); pulled by the test user.
fn setup() -> Served {
    let image = Image::new(vec![Layer::new(&busybox_tar(), Comp::Gzip, false), Layer::new(&owned_layer(), Comp::Zstd, false)]);
    Served::start("berth/busybox", &image, true)
}

fn has_busybox_layer(env: &Env) -> bool {
    walk(&env.root.join("layers")).iter().any(|p| p.ends_with("bin/busybox"))
}

/// A workspace the test can poke while the pod runs: the container waits
/// for `go` there, then uses its root filesystem.
fn trigger_workspace(env: &Env) -> PathBuf {
    let ws = env.home.join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    env.chown();
    ws
}

const WAIT_THEN_USE_ROOT: &str =
    "echo ready; while ! test -e /workspace/go; do sleep 1; done; ls /bin/sh /etc/passwd >/dev/null && echo alive";

#[test]
fn rmi_and_gc_leave_a_running_pods_layers() {
    let s = setup();
    let ws = trigger_workspace(&s.env);
    let (mut child, mut out) = start_until_ready(
        &s.env,
        &["run", "--name", "live", "--workspace", ws.to_str().unwrap(), &s.image, "--", "sh", "-c", WAIT_THEN_USE_ROOT],
    );
    let rmi = s.env.run_as_user(&["rmi", &s.image]).ok();
    assert!(rmi.stderr.contains("in use by running pod live"), "rmi says the image is in use: {rmi:?}");
    let gc = s.env.run_as_user(&["gc"]).ok();
    assert!(gc.stderr.contains("removed 0 unpacked layers; kept 2 in use by running pods"), "{gc:?}");
    assert!(has_busybox_layer(&s.env), "gc removed a layer under a running pod");

    std::fs::write(ws.join("go"), "").unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!((status.code(), rest.as_str()), (Some(0), "alive\n"), "the pod's root survived gc");

    // Once the pod has ended, nothing holds the layers.
    let gc = s.env.run_as_user(&["gc"]).ok();
    assert!(gc.stderr.contains("removed 2 unpacked layers"), "{gc:?}");
    assert!(!has_busybox_layer(&s.env));
}

#[test]
fn gc_after_a_tag_moves_keeps_the_old_pods_layers_until_it_is_killed() {
    let s = setup();
    let ws = trigger_workspace(&s.env);
    let script = format!("{WAIT_THEN_USE_ROOT}; sleep 1013");
    let (mut child, mut out) =
        start_until_ready(&s.env, &["run", "--workspace", ws.to_str().unwrap(), &s.image, "--", "sh", "-c", &script]);
    // The tag moves to an image sharing no layer, which is pulled.
    s.reg.push_image("berth/busybox", "latest", &Image::new(vec![big_layer(4096, 7)]));
    s.env.run_as_user(&["pull", "-q", "--tls-verify=false", &s.image]).ok();
    let gc = s.env.run_as_user(&["gc"]).ok();
    assert!(gc.stderr.contains("kept 2 in use by running pods"), "{gc:?}");
    std::fs::write(ws.join("go"), "").unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "alive\n", "the old pod's root survived gc");

    // A pod whose berth was SIGKILLed holds nothing.
    assert_eq!(unsafe { libc::kill(berth_pid(&child), libc::SIGKILL) }, 0);
    let _ = child.wait();
    assert!(wait_until(Duration::from_secs(5), || processes_with("sleep 1013").is_empty()), "the pod died with berth");
    let gc = s.env.run_as_user(&["gc"]).ok();
    assert!(gc.stderr.contains("removed 2 unpacked layers"), "{gc:?}");
    assert!(!has_busybox_layer(&s.env));
}

/// The path in berth's "kept the workspace of pod NAME in PATH (...)" line.
fn kept_workspace(stderr: &str) -> PathBuf {
    let line = stderr.lines().find(|l| l.contains("kept the workspace")).unwrap_or_else(|| panic!("no kept line: {stderr}"));
    let path = line.split(" in ").nth(1).and_then(|r| r.split(" (").next()).unwrap();
    PathBuf::from(path)
}

#[test]
fn every_run_gets_a_fresh_workspace_and_a_kept_one_stays_until_rm() {
    let s = setup();
    let script = "echo secret > /workspace/k.txt; mkdir /workspace/d; echo y > /workspace/d/f; \
                  busybox chown -R 1000 /workspace/d; busybox chmod 700 /workspace/d";
    let kept = s.env.run_as_user(&["run", "--keep", "--name", "kp", &s.image, "--", "sh", "-c", script]).ok();
    assert!(kept.stdout.is_empty());
    let ws = kept_workspace(&kept.stderr);
    assert_eq!(std::fs::read_to_string(ws.join("k.txt")).unwrap(), "secret\n");

    // The name is taken by the kept pod: a second run neither sees nor
    // drops its files.
    let again = s.env.run_as_user(&["run", "--name", "kp", &s.image, "--", "cat", "/workspace/k.txt"]);
    let line = again.provision_failure();
    assert!(line.contains("berth rm kp"), "{line}");
    assert_eq!(std::fs::read_to_string(ws.join("k.txt")).unwrap(), "secret\n", "kept data survives");
    // Any other run starts empty.
    let other = s.env.run_as_user(&["run", &s.image, "--", "ls", "-A", "/workspace"]).ok();
    assert_eq!(other.stdout, "");

    // `rm` removes it, with the files a container gave to another uid.
    s.env.run_as_user(&["rm", "kp"]).ok();
    assert!(!ws.exists(), "berth rm left the kept workspace");
    let fresh = s.env.run_as_user(&["run", "--name", "kp", &s.image, "--", "ls", "-A", "/workspace"]).ok();
    assert_eq!(fresh.stdout, "");
    assert_eq!(walk(&s.env.run_root).iter().filter(|p| p.ends_with("workspace") || p.ends_with("k.txt")).count(), 0);
}

#[test]
fn a_killed_pods_workspace_is_not_the_next_runs() {
    let s = setup();
    let (mut child, _out) = start_until_ready(
        &s.env,
        &["run", "--name", "sk", &s.image, "--", "sh", "-c", "echo x > /workspace/f; busybox chown 1000 /workspace/f; echo ready; sleep 1014"],
    );
    assert_eq!(unsafe { libc::kill(berth_pid(&child), libc::SIGKILL) }, 0);
    let _ = child.wait();
    assert!(wait_until(Duration::from_secs(5), || processes_with("sleep 1014").is_empty()), "the pod died with berth");
    let next = s.env.run_as_user(&["run", "--name", "sk", &s.image, "--", "ls", "-A", "/workspace"]).ok();
    assert_eq!(next.stdout, "", "the next run saw the killed pod's files");
    let left: Vec<PathBuf> = walk(&s.env.run_root).into_iter().filter(|p| p.starts_with(s.env.run_root.join("workspaces")) || p.ends_with("f")).collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_pod_that_fails_to_start_leaves_nothing() {
    let s = setup();
    let pod = s.env.home.join("missing.yaml");
    std::fs::write(
        &pod,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: fails\nspec:\n  containers:\n  - name: main\n    image: {}\n    \
             volumeMounts: [{{name: v, mountPath: /v}}]\n  volumes:\n  - name: v\n    hostPath: {{path: /does/not/exist}}\n",
            s.image
        ),
    )
    .unwrap();
    s.env.chown();
    let pod = pod.to_str().unwrap();
    let cases: [&[&str]; 3] = [
        &["run", "--pod", pod],
        &["run", "--name", "fails", &s.image, "--", ""],
        &["run", "--name", "fails", &s.image, "--", "/no/such/command"],
    ];
    for keep in [false, true] {
        for case in cases {
            let mut args = case.to_vec();
            if keep {
                args.insert(1, "--keep");
            }
            let run = s.env.run_as_user(&args);
            assert_ne!(run.code, 0, "{args:?}: {run:?}");
            let left: Vec<PathBuf> = walk(&s.env.run_root)
                .into_iter()
                .filter(|p| p.starts_with(s.env.run_root.join("workspaces")) || (!keep && p.parent().is_some_and(|d| d.starts_with(s.env.run_root.join("pods")))))
                .collect();
            assert!(left.is_empty(), "{args:?} ({run:?}) left {left:?}");
            // What --keep keeps is listed and removable.
            if s.env.run_root.join("pods/fails").exists() {
                let ps = s.env.run_as_user(&["ps", "-a"]).ok();
                assert!(ps.stdout.lines().any(|l| l.starts_with("fails\texited")), "{args:?}: {ps:?}");
                s.env.run_as_user(&["rm", "fails"]).ok();
            }
        }
    }
}

#[test]
fn gc_removes_the_job_file_of_a_killed_unpack() {
    // A layer large enough that its unpack can be caught in progress.
    let image = Image::new(vec![Layer::new(&busybox_tar(), Comp::Gzip, false), big_layer(96 << 20, 11)]);
    let s = Served::start("berth/big", &image, true);
    let mut child = s.env.berth_as_user(&["run", &s.image, "--", "true"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let pid = berth_pid(&child);
    let job = |env: &Env| walk(&env.root.join("layers")).into_iter().find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".job-")));
    assert!(wait_until(Duration::from_secs(60), || job(&s.env).is_some()), "no unpack job seen");
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let _ = child.wait();
    assert!(job(&s.env).is_some(), "the unpack ended before the kill: make the layer bigger");
    let gc = s.env.run_as_user(&["gc"]).ok();
    let left: Vec<PathBuf> = walk(&s.env.root.join("layers"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".job-") || n.to_string_lossy().starts_with(".tmp-")))
        .collect();
    assert!(left.is_empty(), "gc left {left:?}: {gc:?}");
}

/// A tmpfs of `mib` MiB mounted at `dir` (the tests run as root), unmounted
/// on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, mib: u32) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        run_ok(std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"]).arg(dir));
        SmallDisk(dir.to_path_buf())
    }

    /// Fills what is left with a file; returns it.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_during_a_pull_says_so_and_gc_frees_it() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let reg = Registry::start();
    let small = Image::new(vec![Layer::new(&busybox_tar(), Comp::Gzip, false)]);
    reg.push_image("berth/small", "latest", &small);
    reg.push_image("berth/huge", "latest", &Image::new(vec![big_layer(12 << 20, 5)]));
    let env = Env::new();
    let disk = SmallDisk::mount(&env.root, 8);
    let huge = format!("{}/berth/huge:latest", reg.host());
    let pull = env.run(&["pull", "-q", "--tls-verify=false", &huge]);
    let line = pull.provision_failure();
    assert!(line.contains("is full") && line.contains("berth gc"), "{line}");
    let partials = || walk(&env.root.join("ingest")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "partial")).count();
    assert_eq!(partials(), 1, "the partial download is kept to resume");

    // gc frees it, and the next pull works.
    let gc = env.run(&["gc"]).ok();
    assert!(gc.stderr.contains("partial files"), "{gc:?}");
    assert_eq!(partials(), 0);
    let small_ref = format!("{}/berth/small:latest", reg.host());
    env.run(&["pull", "-q", "--tls-verify=false", &small_ref]).ok();

    // The index cannot be rewritten on a full disk: no empty temporary file
    // is left behind.
    let filler = disk.fill();
    let rmi = env.run(&["rmi", &small_ref]);
    assert_eq!(rmi.code, 125, "{rmi:?}");
    assert!(!env.root.join("images.json.tmp").exists(), "an empty images.json.tmp was left: {rmi:?}");
    std::fs::remove_file(filler).unwrap();
    env.run(&["rmi", &small_ref]).ok();
    assert!(env.image_digests().is_empty());
}
