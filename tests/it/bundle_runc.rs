//! A bundle made by berth, run for real by Debian's `runc` (1.1.5),
//! rootless as the unprivileged `berthtest` user, with a busybox rootfs:
//! the seccomp filter is loaded, the capabilities are Docker's default set,
//! no_new_privs is set, and namespaces / mounts are refused.
//!
//! Needs: root (to switch to berthtest with runuser), the `berthtest` user,
//! `runc` and `busybox-static` installed (tests/run installs them).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use berth::bundle::{self, id_map, ContainerSettings, UserNamespace};
use oci_spec::image::ImageConfiguration;

use crate::common::{chown_to_test_user, test_user_ids, TEST_USER};

const SCRIPT: &str = "id; grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status; \
    hostname; echo HOME=$HOME; ulimit -n; \
    unshare -U true 2>/dev/null && echo unshare=allowed || echo unshare=denied; \
    mkdir -p /mnt; mount -t tmpfs none /mnt 2>/dev/null && echo mount=allowed || echo mount=denied; \
    ls /dev; cat /etc/hosts >/dev/null && echo hosts=ok; echo ok";

#[test]
fn runc_runs_a_berth_bundle_rootless_with_the_default_security() {
    assert!(nix::unistd::geteuid().is_root(), "this test runs as root and switches to {TEST_USER}");
    let (uid, gid) = test_user_ids();
    assert!(Path::new("/bin/busybox").exists(), "busybox-static is needed");
    let runc = ["/usr/sbin/runc", "/usr/bin/runc"].into_iter().find(|p| Path::new(p).exists()).expect("runc is needed");

    let top = tempfile::tempdir().unwrap();
    fs::set_permissions(top.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bundle_dir = top.path().join("bundle");
    let rootfs = bundle_dir.join("rootfs");
    fs::create_dir_all(rootfs.join("bin")).unwrap();
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "id", "grep", "cat", "hostname", "ls", "unshare", "mount", "mkdir", "echo"] {
        symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    // A hostile touch: /etc/hosts points at the host's file.
    fs::create_dir(rootfs.join("etc")).unwrap();
    symlink("/etc/shadow", rootfs.join("etc/hosts")).unwrap();
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();

    let image: ImageConfiguration = serde_json::from_value(serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["exit 3"], "Env": ["PATH=/bin"], "WorkingDir": "/"}
    }))
    .unwrap();
    let settings = ContainerSettings::new("berth-test")
        .args(vec![SCRIPT.to_string()])
        .user_namespace(UserNamespace::Private { uid: vec![id_map(0, uid, 1)], gid: vec![id_map(0, gid, 1)] });
    let spec = bundle::runtime_spec(&image, &rootfs, &settings).unwrap();
    bundle::prepare_rootfs(&rootfs).unwrap();
    bundle::write_config(&bundle_dir, &spec).unwrap();
    assert!(fs::symlink_metadata(rootfs.join("etc/hosts")).unwrap().is_file());
    chown_to_test_user(top.path());

    let state = top.path().join("state");
    let out = Command::new("runuser")
        .args(["-u", TEST_USER, "--", runc, "--root"])
        .arg(&state)
        .args(["run", "-b"])
        .arg(&bundle_dir)
        .arg("berth-bundle-test")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "runc failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);

    let has = |line: &str| stdout.lines().any(|l| l.trim_end() == line);
    for line in [
        "CapInh:\t0000000000000000",
        "CapPrm:\t00000000a80425fb",
        "CapEff:\t00000000a80425fb",
        "CapBnd:\t00000000a80425fb",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
        "berth-test",
        "HOME=/root",
        "unshare=denied",
        "mount=denied",
        "hosts=ok",
        "ok",
    ] {
        assert!(has(line), "missing {line:?} in:\n{stdout}\nstderr:\n{stderr}");
    }
    assert!(stdout.starts_with("uid=0(root) gid=0(root)"), "{stdout}");
    // Only the standard device nodes (and the mount points in /dev).
    let dev: Vec<&str> = stdout.lines().skip_while(|l| !l.starts_with("mount=")).skip(1).take_while(|l| !l.starts_with("hosts=")).flat_map(|l| l.split_whitespace()).collect();
    for d in ["null", "zero", "full", "random", "urandom", "tty"] {
        assert!(dev.contains(&d), "/dev lacks {d}: {dev:?}");
    }
    for d in &dev {
        assert!(
            ["null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue", "ptmx", "console", "core", "fd", "stdin", "stdout", "stderr"].contains(d),
            "unexpected /dev entry {d}"
        );
    }
    // The host's /etc/shadow was not touched through the hostile link.
    assert!(fs::symlink_metadata("/etc/shadow").unwrap().is_file());
}
