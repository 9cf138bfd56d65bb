//! The pod process driven directly from a `PodPlan`, without the `berth run`
//! front end: overlay root filesystems, exec readiness probes (libcontainer
//! tenant exec), a shared PID namespace and extra bind mounts. berth runs as
//! `berthtest` under `unshare --user --map-root-user --pid --fork`, which
//! stands in for `berth run`'s own namespace set-up (single-id mapping).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth::runtime::{BindMount, Limits, Network, PlannedContainer, PodDir, PodPlan, Probe, ProbeAction, Role, RootfsSource};

use crate::common::{chown_to_test_user, TEST_USER};

/// A busybox rootfs and a config.json from oci-spec's defaults.
fn bundle(dir: &Path, args: &[&str]) -> PathBuf {
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    for d in ["proc", "sys", "dev", "etc", "tmp", "data"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
    }
    let mut spec = oci_spec::runtime::Spec::default();
    let mut process = spec.process().clone().unwrap();
    process.set_terminal(Some(false));
    process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    process.set_env(Some(vec!["PATH=/bin".into()]));
    spec.set_process(Some(process));
    spec.set_root(Some(oci_spec::runtime::RootBuilder::default().path("rootfs").readonly(false).build().unwrap()));
    spec.save(dir.join("config.json")).unwrap();
    dir.to_path_buf()
}

fn container(name: &str, role: Role, bundle: PathBuf, rootfs: RootfsSource) -> PlannedContainer {
    PlannedContainer { name: name.into(), role, bundle, rootfs, command: None, readiness: None, limits: Limits::default(), mounts: vec![], tty: false, open_stdin: false }
}

#[test]
fn runtime_plan_overlay_exec_probe_shared_pid_and_mounts() {
    let t = tempfile::Builder::new().prefix("berth-plan-").tempdir().unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let berth = t.path().join("berth");
    fs::copy(env!("CARGO_BIN_EXE_berth"), &berth).unwrap();

    // One image, three containers; the init one runs on an overlay of it.
    let image = bundle(&t.path().join("image"), &["true"]);
    let upper = t.path().join("upper");
    let work = t.path().join("work");
    fs::create_dir_all(&upper).unwrap();
    fs::create_dir_all(&work).unwrap();
    let data = t.path().join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("in.txt"), "read-only data\n").unwrap();
    let ws = t.path().join("ws");
    fs::create_dir_all(&ws).unwrap();

    let mut init = container(
        "prep",
        Role::Init,
        image.clone(),
        RootfsSource::Overlay { lowers: vec![image.join("rootfs")], upper: upper.clone(), work, fallback: false },
    );
    init.command = Some(vec!["sh".into(), "-c".into(), "echo layered > /etc/made-here && echo prepared > /workspace/prep".into()]);
    let mut side = container("side", Role::Sidecar, image.clone(), RootfsSource::Bundle);
    side.command = Some(vec!["sh".into(), "-c".into(), "sleep 0.3; touch /tmp/ready; exec sleep 60".into()]);
    side.readiness = Some(Probe {
        action: ProbeAction::Exec(vec!["test".into(), "-f".into(), "/tmp/ready".into()]),
        initial_delay: Duration::ZERO,
        period: Duration::from_millis(100),
        timeout: Duration::from_secs(2),
        failure_threshold: 50,
    });
    let mut main = container("main", Role::Main, image.clone(), RootfsSource::Dir(image.join("rootfs")));
    main.mounts.push(BindMount { source: data.clone(), destination: "/data".into(), read_only: true });
    main.command = Some(vec![
        "sh".into(),
        "-c".into(),
        // Ready means the file exists; the sidecar's sleep is visible
        // (shared PID namespace); the bind mount is read-only.
        "test -f /workspace/prep || exit 10; pidof sleep >/dev/null || exit 11; \
         cat /data/in.txt >/dev/null || exit 12; touch /data/x 2>/dev/null && exit 13; \
         test -e /etc/made-here && exit 14; exit 0"
            .into(),
    ]);
    let plan = PodPlan {
        name: "planned".into(),
        containers: vec![init, side, main],
        workspace: ws.clone(),
        workspace_path: "/workspace".into(),
        network: Network::None,
        ports: vec![],
        host_loopback: true,
        share_pid: true,
        extra_hosts: vec![],
        grace: Duration::from_secs(1),
        quiet_sidecars: true,
        pids_limit: None,
        image_volumes: vec![],
    };
    let run_root = t.path().join("run");
    let dir = PodDir::create(&run_root, "planned").unwrap();
    dir.write_plan(&plan).unwrap();
    chown_to_test_user(t.path());

    let out = Command::new("runuser")
        .args(["-u", TEST_USER, "--", "unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child"])
        .arg(&berth)
        .args(["__internal", "pod"])
        .arg(&dir.dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(0) {
        // Keep the state (container logs) for a look.
        let kept = t.keep();
        panic!("{err}\nstate kept in {}", kept.display());
    }
    assert!(out.stdout.is_empty());
    // The init container's write to its root went to the overlay's upper
    // layer; the image stays untouched.
    assert_eq!(fs::read_to_string(upper.join("etc/made-here")).unwrap(), "layered\n");
    assert!(!image.join("rootfs/etc/made-here").exists());
    let status = dir.read_status().unwrap();
    assert_eq!(status.exit_code, Some(0));
    assert!(status.peak_memory.is_some_and(|b| b > 0));
}
