//! What berth checks before libcontainer runs, and container semantics the
//! way Docker, podman and Kubernetes have them (issue 12): working
//! directories, workspace and mount paths, image users outside the mapped
//! ids, commands that live on volumes, `exec` of a missing command, signals
//! from inside a shared PID namespace, platforms, limits, gzip bombs.
//! Each runs as the unprivileged test user; each failure is one line.

use std::io::Read;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

/// busybox-static (with `pwd`, `cp`, `touch`), pulled by the test user;
/// the main container of `berth run IMAGE` is named `busybox`.
fn setup() -> Served {
    Served::start("berth/busybox", &Image::new(vec![Layer::new(&busybox_tar_with(&["pwd", "cp", "touch"]), Comp::Gzip, false)]), true)
}

/// Writes `text` as a pod file the test user can read; `IMAGE` in it is
/// replaced by `s.image`.
fn pod_file(s: &Served, name: &str, text: &str) -> PathBuf {
    let path = s.env.home.join(name);
    std::fs::write(&path, text.replace("IMAGE", &s.image)).unwrap();
    s.env.chown();
    path
}

#[test]
fn a_missing_working_directory_is_created_and_owned_by_the_user() {
    let s = setup();
    let run = s.env.run_as_user(&["run", "-w", "/does/not/exist", &s.image, "--", "pwd"]).ok();
    assert_eq!(run.stdout, "/does/not/exist\n", "{run:?}");
    assert!(run.stderr.is_empty(), "{run:?}");
    // Under the workspace too (it is created there, not under the mount).
    let run = s.env.run_as_user(&["run", "-w", "/workspace/a/b", &s.image, "--", "pwd"]).ok();
    assert_eq!(run.stdout, "/workspace/a/b\n", "{run:?}");
    // Owned by the container's user.
    let pod = pod_file(
        &s,
        "wd.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: wd\nspec:\n  containers:\n  - name: main\n    image: IMAGE\n    \
         workingDir: /home/new/dir\n    securityContext:\n      runAsUser: 1000\n      runAsGroup: 1000\n    \
         command: [sh, -c, 'pwd; busybox stat -c \"%u %g\" . /home/new; id -u']\n",
    );
    let run = s.env.run_as_user(&["run", "--pod", pod.to_str().unwrap()]).ok();
    assert_eq!(run.stdout, "/home/new/dir\n1000 1000\n1000 1000\n1000\n", "{run:?}");
}

#[test]
fn an_escaping_working_directory_is_refused_in_one_line() {
    let s = setup();
    let pod = pod_file(
        &s,
        "esc.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: esc\nspec:\n  containers:\n  - name: main\n    image: IMAGE\n    \
         workingDir: /a/../../etc\n    command: [pwd]\n",
    );
    let line = s.env.run_as_user(&["run", "--pod", pod.to_str().unwrap()]).provision_failure();
    assert!(line.contains("/a/../../etc") && line.contains("outside"), "{line}");
    let line = s.env.run_as_user(&["run", "-w", "/x/../..", &s.image, "--", "pwd"]).provision_failure();
    assert!(line.contains("outside"), "{line}");
}

#[test]
fn bad_workspace_and_mount_paths_are_refused_in_one_line() {
    let s = setup();
    for path in ["/", "/a/../etc", "//", "/a/./b/.."] {
        let line = s.env.run_as_user(&["run", "--workspace-path", path, &s.image, "--", "true"]).provision_failure();
        assert!(line.contains("--workspace-path") || line.contains("workspace path"), "{path}: {line}");
    }
    let pod = pod_file(
        &s,
        "mp.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: mp\nspec:\n  volumes:\n  - name: v\n    emptyDir: {}\n  \
         containers:\n  - name: main\n    image: IMAGE\n    command: [\"true\"]\n    volumeMounts:\n    - name: v\n      mountPath: /\n",
    );
    let line = s.env.run_as_user(&["run", "--pod", pod.to_str().unwrap()]).provision_failure();
    assert!(line.contains("mountPath") && line.contains("\"/\""), "{line}");
}

#[test]
fn an_image_user_outside_the_mapped_ids_is_refused_in_one_line() {
    for user in ["70000", "4000000000", "0:70000"] {
        let mut image = Image::new(vec![Layer::new(&busybox_tar(), Comp::Gzip, false)]);
        let mut config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
        config["config"]["User"] = user.into();
        image.config = serde_json::to_vec(&config).unwrap();
        image.manifest = image.manifest_with(OCI_CONFIG);
        let s = Served::start("berth/user", &image, true);
        let run = s.env.run_as_user(&["run", &s.image, "--", "true"]);
        let line = run.provision_failure();
        let (what, id) = match user.split_once(':') {
            Some((_, g)) => ("gid", g),
            None => ("uid", user),
        };
        assert!(
            line.contains(&format!("{what} {id} is outside the ids mapped for {TEST_USER}")) && line.contains("65536 subordinate ids"),
            "{line}"
        );
    }
}

#[test]
fn exec_of_a_missing_or_unexecutable_command_is_127_or_126_in_one_line() {
    let s = setup();
    let mut child = s
        .env
        .berth_as_user(&["run", "--name", "ex", &s.image, "--", "sh", "-c", "touch /plain; echo ready; exec sleep 60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = [0u8; 6];
    child.stdout.take().unwrap().read_exact(&mut line).unwrap();
    for (cmd, code, why) in [("nosuchcmd", 127, "not found"), ("/plain", 126, "permission denied")] {
        let run = s.env.run_as_user(&["exec", "ex", "busybox", "--", cmd]);
        assert_eq!(run.code, code, "{cmd}: {run:?}");
        assert!(run.stdout.is_empty(), "{run:?}");
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert!(lines.len() == 1 && lines[0].starts_with("berth: ") && lines[0].contains(cmd) && lines[0].contains(why), "{run:?}");
    }
    // A command found through the container's PATH still runs.
    let run = s.env.run_as_user(&["exec", "ex", "busybox", "--", "echo", "hi"]).ok();
    assert_eq!(run.stdout, "hi\n");
    s.env.run_as_user(&["stop", "ex"]).ok();
    let _ = child.wait();
}

#[test]
fn a_command_on_a_volume_runs() {
    let s = setup();
    // An init container copies a tool into an emptyDir; the main one runs it,
    // by path and through PATH.
    let pod = pod_file(
        &s,
        "tools.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: tools\nspec:\n  volumes:\n  - name: tools\n    emptyDir: {}\n  \
         initContainers:\n  - name: copy\n    image: IMAGE\n    command: [sh, -c, 'cp /bin/busybox /tools/busybox']\n    \
         volumeMounts:\n    - name: tools\n      mountPath: /tools\n  \
         containers:\n  - name: main\n    image: IMAGE\n    command: [/tools/busybox, echo, by-path]\n    \
         volumeMounts:\n    - name: tools\n      mountPath: /tools\n",
    );
    let run = s.env.run_as_user(&["run", "--pod", pod.to_str().unwrap()]).ok();
    assert_eq!(run.stdout, "by-path\n", "{run:?}");

    // A hostPath of tools, found through PATH.
    let host_tools = s.env.home.join("host-tools");
    std::fs::create_dir_all(&host_tools).unwrap();
    std::fs::write(host_tools.join("hosttool"), "#!/bin/sh\necho from-host-tool\n").unwrap();
    std::fs::set_permissions(host_tools.join("hosttool"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    s.env.chown();
    let pod = pod_file(
        &s,
        "host.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: host\nspec:\n  volumes:\n  - name: t\n    hostPath:\n      path: {}\n  \
             containers:\n  - name: main\n    image: IMAGE\n    command: [hosttool]\n    \
             env:\n    - name: PATH\n      value: /opt/tools:/bin\n    volumeMounts:\n    - name: t\n      mountPath: /opt/tools\n",
            host_tools.display()
        ),
    );
    let run = s.env.run_as_user(&["run", "--pod", pod.to_str().unwrap()]).ok();
    assert_eq!(run.stdout, "from-host-tool\n", "{run:?}");

    // Still 127 for a command that is nowhere, volumes included.
    let pod = pod_file(&s, "none.yaml", &std::fs::read_to_string(s.env.home.join("tools.yaml")).unwrap().replace("/tools/busybox, echo", "/tools/nope, echo"));
    let run = s.env.run_as_user(&["run", "--pod", pod.to_str().unwrap()]);
    assert_eq!(run.code, 127, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
}

#[test]
fn signals_from_inside_a_shared_pid_namespace_do_not_stop_the_pod() {
    let s = setup();
    let pod = pod_file(
        &s,
        "share.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: share\nspec:\n  shareProcessNamespace: true\n  \
         containers:\n  - name: main\n    image: IMAGE\n    \
         command: [sh, -c, 'kill -TERM 1; kill -INT 1; kill -HUP 1; sleep 0.5; cat /proc/1/cmdline; echo; exit 7']\n",
    );
    let run = s.env.run_as_user(&["run", "--pod", pod.to_str().unwrap()]);
    assert_eq!(run.code, 7, "{run:?}");
    // PID 1's command line shows nothing of the host: no state path.
    let cmdline = run.stdout.replace('\0', " ");
    assert!(cmdline.contains("__internal pod /proc/self/fd/"), "{cmdline}");
    let run_root = s.env.run_root.to_str().unwrap();
    assert!(!cmdline.contains(run_root) && !cmdline.contains("/pods/"), "{cmdline}");
}

/// The busybox image for one platform, as a single-platform manifest.
fn single_arch(platform: &str) -> Image {
    Image::build(vec![Layer::new(&busybox_tar(), Comp::Gzip, false)], platform, Flavour::Oci, None)
}

#[test]
fn a_platform_mismatch_is_refused_on_pull_and_run() {
    let s = Served::start("berth/amd", &single_arch("linux/amd64"), false);
    let line = s.env.run_as_user(&["pull", "-q", "--tls-verify=false", "--platform", "linux/arm64", &s.image]).provision_failure();
    assert!(line.contains("linux/amd64") && line.contains("linux/arm64"), "{line}");
    assert!(s.env.image_digests().is_empty(), "the mismatched image was stored");
    s.env.run_as_user(&["pull", "-q", "--tls-verify=false", "--platform", "linux/amd64", &s.image]).ok();
    let line = s.env.run_as_user(&["run", "--platform", "windows/amd64", &s.image, "--", "true"]).provision_failure();
    assert!(line.contains("linux/amd64") && line.contains("windows/amd64"), "{line}");
    s.env.run_as_user(&["run", "--platform", "linux/amd64", &s.image, "--", "true"]).ok();
}

#[test]
fn an_image_without_platform_data_warns_on_pull() {
    let mut image = single_arch("linux/amd64");
    let mut config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
    config["os"] = "".into();
    config["architecture"] = "".into();
    image.config = serde_json::to_vec(&config).unwrap();
    image.manifest = image.manifest_with(OCI_CONFIG);
    let s = Served::start("berth/noplat", &image, false);
    let run = s.env.run_as_user(&["pull", "-q", "--tls-verify=false", "--platform", "linux/arm64", &s.image]).ok();
    assert!(run.stderr.contains("no platform") && run.stderr.contains("linux/arm64"), "{run:?}");
}

#[test]
fn out_of_range_limits_are_refused() {
    let s = setup();
    for args in [&["--cpus", "1e9"][..], &["--cpus", "100000"], &["--pids-limit", "18446744073709551615"], &["--pids-limit", "4194305"], &["--memory", "9Ei"]] {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[&s.image, "--", "true"]);
        let run = s.env.run_as_user(&all);
        assert_ne!(run.code, 0, "{args:?}: {run:?}");
        assert!(run.stdout.is_empty());
        assert!(run.stderr.contains(args[0]) || run.stderr.contains("limit"), "{args:?}: {run:?}");
    }
    for (field, value) in [("cpu", "1e9"), ("cpu", "\"100000\""), ("memory", "9Ei")] {
        let pod = pod_file(
            &s,
            "lim.yaml",
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: lim\nspec:\n  containers:\n  - name: main\n    image: IMAGE\n    \
                 command: [\"true\"]\n    resources:\n      limits:\n        {field}: {value}\n"
            ),
        );
        let line = s.env.run_as_user(&["run", "--pod", pod.to_str().unwrap()]).provision_failure();
        assert!(line.contains(field), "{field}={value}: {line}");
    }
    // In range still runs.
    s.env.run_as_user(&["run", "--cpus", "2", "--pids-limit", "4096", &s.image, "--", "true"]).ok();
}

#[test]
fn a_gzip_bomb_is_refused_before_it_fills_the_disk() {
    // 64 MiB of zeros in one file, as gzip members of 1 MiB each (a zero
    // MiB is ~1 KB of gzip): about 70 KB for 64 MiB.
    let tar = TarBuilder::new().file("bomb", 0o644, &vec![0u8; 64 << 20]).finish();
    let zero_member = gzip_best(&[0u8; 1 << 20]);
    let mut blob = Vec::new();
    for chunk in tar.chunks(1 << 20) {
        if chunk.len() == 1 << 20 && chunk.iter().all(|b| *b == 0) {
            blob.extend_from_slice(&zero_member);
        } else {
            blob.extend_from_slice(&gzip_best(chunk));
        }
    }
    assert!(blob.len() < 200_000, "{}", blob.len());
    let bomb = Layer { blob, diff_id: sha256(&tar), media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(), urls: Vec::new() };
    drop(tar);
    let image = Image::new(vec![Layer::new(&busybox_tar(), Comp::Gzip, false), bomb]);
    let s = Served::start("berth/bomb", &image, true);
    let t = std::time::Instant::now();
    let run = s.env.run_as_user(&["run", &s.image, "--", "true"]);
    // The unpacking process and berth each say a line (as for any layer the
    // unpacker refuses).
    assert!(run.code == 125 && run.stdout.is_empty() && run.stderr.contains("decompression bomb"), "{run:?}");
    assert!(t.elapsed() < Duration::from_secs(60));
    // Nothing of it stays in the layer cache.
    let big = walk_sizes(&s.env.root.join("layers"));
    assert!(big < 20 << 20, "{big} bytes left in the layer cache");
}

fn gzip_best(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn walk_sizes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}
