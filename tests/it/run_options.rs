//! `berth run` options and lifecycle details, end to end as the
//! unprivileged test user: `--rootfs overlay|copy|auto`, the pod file's
//! grace period, leftover cleanup by any command, peak memory.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

/// busybox-static plus a second layer with a file owned by uid 1000 and a
/// setuid file; pulled by the test user.
fn setup() -> Served {
    let image = Image::new(vec![Layer::new(&busybox_tar(), Comp::Gzip, false), Layer::new(&owned_layer(), Comp::Zstd, false)]);
    Served::start("berth/busybox", &image, true)
}

/// Every path under `dir` with its type, mode, owner, size, mtime and
/// content digest.
fn snapshot(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() { sha256(&std::fs::read(&p).unwrap()) } else { String::new() };
            out.push(format!("{} {:o} {}:{} {} {} {content}", p.display(), m.mode(), m.uid(), m.gid(), m.len(), m.mtime()));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Prints the filesystem type of the container's `/` (the last mount there).
const ROOT_FSTYPE: &str = "busybox awk '$5 == \"/\" { for (i = 7; i <= NF; i++) if ($i == \"-\") t = $(i + 1) } END { print t }' /proc/self/mountinfo";

fn pods_left(env: &Env) -> usize {
    std::fs::read_dir(env.run_root.join("pods")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn rootfs_copy_runs_writes_stay_private_and_the_cache_is_untouched() {
    let s = setup();
    // The default mounts an overlay here (and unpacks the layers); --rootfs
    // copy does not.
    let run = s.env.run_as_user(&["run", &s.image, "--", "sh", "-c", ROOT_FSTYPE]).ok();
    assert_eq!(run.stdout, "overlay\n", "{run:?}");
    let layers = s.env.root.join("layers");
    let before = snapshot(&layers);
    assert!(before.iter().any(|l| l.contains("home/builder/notes")), "layers unpacked");
    let script = format!(
        "{ROOT_FSTYPE}; id -u; busybox stat -c '%u %a' /home/builder/notes /bin/suid; \
         echo changed > /etc/passwd; rm /bin/ls; echo new > /new; busybox chmod 700 /home/builder; exit 3"
    );
    let run = s.env.run_as_user(&["run", "--rootfs", "copy", &s.image, "--", "sh", "-c", &script]);
    assert_eq!(run.code, 3, "{run:?}");
    let fstype = run.stdout.lines().next().unwrap_or("");
    assert!(!fstype.is_empty() && fstype != "overlay", "a copied root is no overlay: {run:?}");
    // Owners and setuid bits are kept in the copy.
    assert_eq!(run.stdout.lines().skip(1).collect::<Vec<_>>(), ["0", "1000 644", "0 4755"], "{run:?}");
    assert!(run.stderr.is_empty(), "no warning when copy is asked for: {}", run.stderr);
    assert_eq!(pods_left(&s.env), 0, "the copy (files of subordinate ids) is removed with the pod");

    // A second run starts from the image again; the cache never changed.
    let run = s.env.run_as_user(&[
        "run", "--rootfs", "copy", &s.image, "--", "sh", "-c",
        "cat /etc/passwd; test -e /bin/ls && test ! -e /new && busybox stat -c %a /home/builder",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n755\n");
    assert_eq!(snapshot(&layers), before, "the layer cache changed");
}

#[test]
fn rootfs_auto_falls_back_to_a_copy_where_overlay_cannot_mount() {
    // A store this deep makes the overlay options longer than the one page
    // mount(2) accepts (podman hits the same limit with many layers).
    let mut s = setup();
    let mut deep = s.env.path().join("store");
    for i in 0..10 {
        deep.push(format!("{i}{}", "d".repeat(200)));
    }
    std::fs::create_dir_all(&deep).unwrap();
    s.env.root = deep;
    s.env.chown();
    s.env.run_as_user(&["pull", "-q", "--tls-verify=false", &s.image]).ok();

    let line = s.env.run_as_user(&["run", "--rootfs", "overlay", &s.image, "--", "true"]).provision_failure();
    assert!(line.contains("too long"), "{line}");
    assert_eq!(pods_left(&s.env), 0);

    // auto (the default): one warning for the pod, every container copied.
    let run = s.env.run_as_user(&[
        "run", "--grace", "0",
        "--sidecar", &format!("side={}", s.image), "--sidecar-cmd", "side=sleep 1003",
        &s.image, "--", "sh", "-c", &format!("{ROOT_FSTYPE}; busybox stat -c %u /home/builder/notes; exit 5"),
    ]);
    assert_eq!(run.code, 5, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(lines.len() == 2 && lines[0] != "overlay" && lines[1] == "1000", "{run:?}");
    let warnings: Vec<&str> = run.stderr.lines().filter(|l| l.contains("overlay")).collect();
    assert_eq!(warnings.len(), 1, "warned once: {}", run.stderr);
    assert!(warnings[0].contains("copying"), "{}", warnings[0]);
    assert_eq!(pods_left(&s.env), 0);
}

fn grace_pod(image: &str, grace: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: slow
spec:
  terminationGracePeriodSeconds: {grace}
  containers:
    - name: main
      image: {image}
      command: [\"true\"]
    - name: stubborn
      image: {image}
      # PID 1 of its container without a handler: SIGTERM does nothing.
      command: [\"sleep\", \"1004\"]
"
    )
}

#[test]
fn pod_file_grace_period_applies_unless_grace_is_given() {
    let s = setup();
    let pod = s.env.path().join("slow.yaml");
    std::fs::write(&pod, grace_pod(&s.image, "3")).unwrap();
    s.env.chown();
    let pod = pod.to_str().unwrap();

    let started = Instant::now();
    let run = s.env.run_as_user(&["run", "--pod", pod]);
    let took = started.elapsed();
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.is_empty(), "no warning for terminationGracePeriodSeconds: {}", run.stderr);
    // The file's 3 s, not the default 5 s.
    assert!(took >= Duration::from_secs(3) && took < Duration::from_millis(4800), "took {took:?}");

    // --grace given explicitly wins, 0 included.
    let started = Instant::now();
    let run = s.env.run_as_user(&["run", "--grace", "0", "--pod", pod]);
    let took = started.elapsed();
    assert_eq!(run.code, 0, "{run:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // A negative grace is an error pointing at the line.
    let bad = s.env.path().join("bad.yaml");
    std::fs::write(&bad, grace_pod(&s.image, "-1")).unwrap();
    s.env.chown();
    let line = s.env.run_as_user(&["run", "--pod", bad.to_str().unwrap()]).provision_failure();
    assert!(line.contains("bad.yaml:6:") && line.contains("negative"), "{line}");
}

#[test]
fn any_command_removes_a_killed_pods_state_but_not_kept_state() {
    let s = setup();
    // A file of a subordinate id in the overlay upper dir: removing it takes
    // a user namespace.
    let (mut child, _out) = start_until_ready(
        &s.env,
        &["run", "--name", "doomed", &s.image, "--", "sh", "-c", "echo x > /tmp/f; busybox chown 1000 /tmp/f; echo ready; sleep 1001"],
    );
    let state = s.env.run_root.join("pods/doomed");
    assert!(state.join("owner.json").is_file());
    assert_eq!(unsafe { libc::kill(berth_pid(&child), libc::SIGKILL) }, 0);
    let _ = child.wait();
    assert!(wait_until(Duration::from_secs(5), || processes_with("sleep 1001").is_empty()), "the pod died with berth");
    assert!(state.is_dir(), "nothing has cleaned up yet");
    // Not run or ps: a listing of images does it too.
    s.env.run_as_user(&["images"]).ok();
    assert!(!state.exists(), "state of the killed pod left behind");

    // State kept with --keep stays until `berth rm`.
    s.env.run_as_user(&["run", "--keep", "--name", "kept", &s.image, "--", "true"]).ok();
    let kept = s.env.run_root.join("pods/kept");
    s.env.run_as_user(&["images"]).ok();
    assert!(kept.is_dir(), "--keep state removed by the next command");
    let ps = s.env.run_as_user(&["ps", "-a"]).ok();
    assert!(ps.stdout.lines().any(|l| l.starts_with("kept\texited (0)")), "{ps:?}");
    s.env.run_as_user(&["rm", "kept"]).ok();
    assert!(!kept.exists());
}

#[test]
fn ps_and_verbose_run_report_peak_memory() {
    let s = setup();
    // The main container's shell holds 64 MiB in a variable.
    let script = "trap 'exit 0' TERM; x=$(busybox head -c 67108864 /dev/zero | busybox tr '\\0' a); echo ready; sleep 1002 & wait";
    let (child, _out) = start_until_ready(&s.env, &["-v", "run", "--name", "mem", &s.image, "--", "sh", "-c", script]);
    let ps = s.env.run_as_user(&["ps"]).ok();
    let row = ps.stdout.lines().find(|l| l.starts_with("mem\t")).unwrap_or_else(|| panic!("{ps:?}")).to_string();
    let peak: f64 = row.split('\t').nth(3).and_then(|c| c.strip_suffix(" MiB")).and_then(|n| n.parse().ok()).unwrap_or(0.0);
    assert!(peak >= 64.0, "peak memory of the running pod: {row}");

    s.env.run_as_user(&["stop", "mem"]).ok();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mib: u64 = stderr
        .lines()
        .find_map(|l| l.split("peak memory ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no peak memory line with -v: {stderr}"));
    assert!(mib >= 64, "{stderr}");
}

/// Not a timed test: the per-container cost of an overlay root against a
/// copied one for the busybox image, `berth run IMAGE -- true` end to end
/// and the root filesystem step alone (from the pod process's debug log).
/// `cargo test --test it run_options::rootfs_cost -- --ignored --nocapture`
#[test]
#[ignore]
fn rootfs_cost_overlay_vs_copy() {
    let mut s = setup();
    s.env.vars.push(("NO_COLOR".into(), "1".into()));
    s.env.run_as_user(&["run", &s.image, "--", "true"]).ok(); // unpack the layers once
    for mode in ["overlay", "copy"] {
        let mut walls = Vec::new();
        let mut steps = Vec::new();
        for _ in 0..15 {
            let started = Instant::now();
            let run = s.env.run_as_user(&["-vv", "run", "--rootfs", mode, &s.image, "--", "true"]).ok();
            walls.push(started.elapsed());
            let step = run
                .stderr
                .lines()
                .find(|l| l.contains("mounted overlay root") || l.contains("copied root filesystem"))
                .and_then(|l| l.split("elapsed=").nth(1)?.split_whitespace().next().map(str::to_string))
                .unwrap_or_else(|| panic!("no rootfs timing in {}", run.stderr));
            steps.push(step);
        }
        walls.sort();
        println!("--rootfs {mode}: berth run -- true median {:?} (min {:?}); rootfs step: {}", walls[walls.len() / 2], walls[0], steps.join(" "));
    }
}
