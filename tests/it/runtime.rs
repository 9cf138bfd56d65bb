//! The pod runtime end to end, as the unprivileged user `berthtest`: real
//! namespaces, real libcontainer containers on a busybox rootfs.
//!
//! Tests run as root; berth runs as `berthtest` via `runuser`, from a copy of
//! the binary in a world-readable temporary directory.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::common::{berth_pid, chown_to_test_user, processes_with, test_user_ids, wait_until, TEST_USER};

/// A scratch area berthtest can use: the berth binary, bundles, run root.
struct Env {
    dir: tempfile::TempDir,
    berth: PathBuf,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::Builder::new().prefix("berth-rt-").tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let berth = dir.path().join("berth");
        fs::copy(env!("CARGO_BIN_EXE_berth"), &berth).unwrap();
        fs::set_permissions(&berth, fs::Permissions::from_mode(0o755)).unwrap();
        let run = dir.path().join("run");
        fs::create_dir(&run).unwrap();
        chown_to_test_user(&run);
        Env { dir, berth }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A busybox bundle whose config.json comes from oci-spec's defaults.
    fn bundle(&self, name: &str) -> PathBuf {
        let b = self.path().join(name);
        let rootfs = b.join("rootfs");
        let bin = rootfs.join("bin");
        fs::create_dir_all(&bin).unwrap();
        for d in ["proc", "sys", "dev", "etc", "tmp", "root"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" && !applet.is_empty() {
                std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
            }
        }
        let mut spec = oci_spec::runtime::Spec::default();
        let mut process = spec.process().clone().unwrap();
        process.set_terminal(Some(false));
        process.set_args(Some(vec!["sh".into()]));
        process.set_env(Some(vec!["PATH=/bin".into(), "HOME=/root".into()]));
        spec.set_process(Some(process));
        spec.set_root(Some(oci_spec::runtime::RootBuilder::default().path("rootfs").readonly(false).build().unwrap()));
        spec.save(b.join("config.json")).unwrap();
        chown_to_test_user(&b);
        b
    }

    /// Sets the bundle's `process.args`.
    fn set_args(&self, bundle: &Path, args: &[&str]) {
        let path = bundle.join("config.json");
        let mut spec = oci_spec::runtime::Spec::load(&path).unwrap();
        let mut process = spec.process().clone().unwrap();
        process.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
        spec.set_process(Some(process));
        spec.save(&path).unwrap();
    }

    /// `berth ARGS` as berthtest.
    fn berth(&self, args: &[&str]) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", TEST_USER, "--"])
            .arg(&self.berth)
            .env("BERTH_RUN_ROOT", self.path().join("run"))
            .env("BERTH_ROOT", self.path().join("store"))
            .env("HOME", self.path())
            .env_remove("XDG_RUNTIME_DIR")
            .args(args);
        c
    }

    /// `berth run --bundle B -- sh -c SCRIPT`, stdout and stderr captured.
    fn sh(&self, bundle: &Path, script: &str) -> (i32, String, String) {
        let out = self
            .berth(&["run", "--bundle", bundle.to_str().unwrap(), "--", "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[test]
fn runtime_stream_256mib_through_cat_is_exact() {
    let env = Env::new();
    let b = env.bundle("b");
    let input = env.path().join("input");
    let mut hasher = Sha256::new();
    {
        let mut f = fs::File::create(&input).unwrap();
        let mut rng = fs::File::open("/dev/urandom").unwrap();
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..256 {
            rng.read_exact(&mut buf).unwrap();
            hasher.update(&buf);
            f.write_all(&buf).unwrap();
        }
    }
    let want = hasher.finalize();
    let mut child = env
        .berth(&["run", "--bundle", b.to_str().unwrap(), "--", "cat"])
        .stdin(fs::File::open(&input).unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let k = out.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        n += k as u64;
        h.update(&buf[..k]);
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(n, 256 << 20, "exactly the input on stdout");
    assert_eq!(h.finalize(), want);
}

#[test]
fn runtime_exit_codes_and_signals_pass_through() {
    let env = Env::new();
    let b = env.bundle("b");
    for code in [0, 3, 255] {
        let (got, out, err) = env.sh(&b, &format!("exit {code}"));
        assert_eq!(got, code, "stderr: {err}");
        assert_eq!(out, "");
    }
    // The container's init is PID 1 of its namespace: only a SIGKILL from
    // outside kills it.
    let token = format!("{}", 800000 + std::process::id() % 100000);
    let script = format!("echo ready; sleep {token}; true");
    let mut child = env
        .berth(&["run", "--bundle", b.to_str().unwrap(), "--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = [0u8; 6];
    child.stdout.take().unwrap().read_exact(&mut line).unwrap();
    // busybox sh forks for `sleep` without exec: the init is the oldest.
    let init: Vec<_> = processes_with(&script).into_iter().filter(|(_, cmd)| cmd.starts_with("sh -c")).collect();
    let init = init.iter().map(|(pid, _)| *pid).min();
    let Some(init) = init else {
        let _ = child.kill();
        panic!("no container init found");
    };
    assert_eq!(unsafe { libc::kill(init, libc::SIGKILL) }, 0);
    assert_eq!(child.wait().unwrap().code(), Some(137));
}

#[test]
fn runtime_missing_or_non_executable_command() {
    let env = Env::new();
    let b = env.bundle("b");
    let out = env.berth(&["run", "--bundle", b.to_str().unwrap(), "--", "no-such-cmd"]).output().unwrap();
    assert_eq!(out.status.code(), Some(127));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-cmd") && err.lines().count() == 1, "{err}");
    fs::write(b.join("rootfs/bin/notexec"), "#!/bin/sh\n").unwrap();
    let out = env.berth(&["run", "--bundle", b.to_str().unwrap(), "--", "/bin/notexec"]).output().unwrap();
    assert_eq!(out.status.code(), Some(126));
    let out = env.berth(&["run", "--bundle", "/nonexistent", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(out.stdout.is_empty());
}

#[test]
fn runtime_sigterm_to_berth_reaches_main() {
    let env = Env::new();
    let b = env.bundle("b");
    let mut child = env
        .berth(&["run", "--bundle", b.to_str().unwrap(), "--", "sh", "-c", "trap 'exit 143' TERM; echo ready; while true; do sleep 0.05; done"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut line = [0u8; 6];
    out.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"ready\n");
    let pid = berth_pid(&child);
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(143));
}

#[test]
fn runtime_berth_sigkilled_leaves_no_process() {
    let env = Env::new();
    let b = env.bundle("b");
    let web = env.bundle("web");
    let token = format!("{}", 700000 + std::process::id() % 100000);
    let mut child = env
        .berth(&[
            "run",
            "--bundle",
            b.to_str().unwrap(),
            "--sidecar-bundle",
            &format!("side={}", web.display()),
            &format!("--sidecar-cmd=side=sleep {token}"),
            "--",
            "sh",
            "-c",
            &format!("echo ready; sleep {token}"),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut line = [0u8; 6];
    out.read_exact(&mut line).unwrap();
    let both = wait_until(Duration::from_secs(10), || processes_with(&format!("sleep {token}")).len() >= 2);
    assert!(both, "timed out waiting for both sleeps");
    let pid = berth_pid(&child);
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let _ = child.wait();
    let needle = env.path().to_string_lossy().into_owned();
    let vanished = wait_until(Duration::from_secs(5), || {
        processes_with(&format!("sleep {token}")).is_empty() && processes_with(&needle).is_empty()
    });
    assert!(vanished, "timed out waiting for the pod to vanish");
    // The next berth command removes the dead pod's state.
    let pods = env.path().join("run/pods");
    assert_eq!(fs::read_dir(&pods).unwrap().count(), 1);
    let (code, _, err) = env.sh(&b, "true");
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read_dir(&pods).unwrap().count(), 0);
}

#[test]
fn runtime_two_pods_at_once() {
    let env = Env::new();
    let b = env.bundle("b");
    let start = |name: &str| {
        env.berth(&["run", "--name", name, "--bundle", b.to_str().unwrap(), "--", "sh", "-c", "sleep 0.5; hostname; echo $$"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, c) = (start("pod-a"), start("pod-b"));
    let (oa, ob) = (a.wait_with_output().unwrap(), c.wait_with_output().unwrap());
    assert!(oa.status.success() && ob.status.success());
    assert_eq!(String::from_utf8_lossy(&oa.stdout), "pod-a\n1\n");
    assert_eq!(String::from_utf8_lossy(&ob.stdout), "pod-b\n1\n");
    // A name in use is refused while its pod runs (until its stdin closes).
    let mut long = env
        .berth(&["run", "--name", "pod-c", "--bundle", b.to_str().unwrap(), "--", "sh", "-c", "echo ready; read x; true"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = [0u8; 6];
    long.stdout.take().unwrap().read_exact(&mut ready).unwrap();
    let dup = env.berth(&["run", "--name", "pod-c", "--bundle", b.to_str().unwrap(), "--", "true"]).output().unwrap();
    assert_eq!(dup.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already running"));
    drop(long.stdin.take());
    assert!(long.wait().unwrap().success());
}

#[test]
fn runtime_sidecar_reachable_by_name_and_workspace_shared() {
    let env = Env::new();
    let main = env.bundle("main");
    let web = env.bundle("web");
    let ws = env.path().join("ws");
    fs::create_dir(&ws).unwrap();
    fs::write(ws.join("hello.txt"), "hello from the workspace\n").unwrap();
    chown_to_test_user(&ws);
    let out = env
        .berth(&[
            "run",
            "--workspace",
            ws.to_str().unwrap(),
            "--bundle",
            main.to_str().unwrap(),
            "--sidecar-bundle",
            &format!("web={}", web.display()),
            "--sidecar-cmd=web=httpd -f -v -p 8080 -h /workspace",
            "--",
            "sh",
            "-c",
            "for i in $(seq 100); do wget -q -O /workspace/got http://web:8080/hello.txt && break; sleep 0.05; done; \
             mkdir /workspace/dir; cat /workspace/got; exit 7",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from the workspace\n");
    // Sidecar output goes to stderr with its name, never to stdout.
    assert!(err.contains("[web] "), "{err}");
    let (uid, _) = test_user_ids();
    for f in ["got", "dir"] {
        assert_eq!(fs::metadata(ws.join(f)).unwrap().uid(), uid, "{f} belongs to the invoking user");
    }
}

#[test]
fn runtime_container_is_isolated() {
    let env = Env::new();
    let b = env.bundle("b");
    // uid 0 inside; only its own processes; lo up; no mounting; the pod name.
    let (code, out, err) = env.sh(
        &b,
        "id -u; ls /proc | grep -c '^[0-9]'; cat /sys/class/net/lo/flags; \
         if mount -t tmpfs none /tmp 2>/dev/null; then echo mounted; else echo no-mount; fi; \
         touch /tmp/x && echo writable",
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0");
    let procs: u32 = lines[1].parse().unwrap();
    assert!(procs <= 4, "sees {procs} processes: {out}");
    let flags = u32::from_str_radix(lines[2].trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is up");
    assert_eq!(lines[3], "no-mount");
    assert_eq!(lines[4], "writable");
    // Its root on the host is the invoking user.
    let (uid, _) = test_user_ids();
    let ws = env.path().join("ws");
    fs::create_dir(&ws).unwrap();
    chown_to_test_user(&ws);
    let out = env
        .berth(&["run", "--workspace", ws.to_str().unwrap(), "--bundle", b.to_str().unwrap(), "--", "touch", "/workspace/f"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(fs::metadata(ws.join("f")).unwrap().uid(), uid);
}

#[test]
fn runtime_ps_exec_logs_stop_rm() {
    let env = Env::new();
    let b = env.bundle("b");
    let side = env.bundle("side");
    env.set_args(&side, &["sh", "-c", "echo side-hello; sleep 60"]);
    let mut child = env
        .berth(&[
            "run",
            "--name",
            "pp",
            "--grace",
            "1",
            "--bundle",
            b.to_str().unwrap(),
            "--sidecar-bundle",
            &format!("side={}", side.display()),
            "--",
            "sh",
            "-c",
            "echo ready; sleep 60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = [0u8; 6];
    child.stdout.take().unwrap().read_exact(&mut line).unwrap();

    let ps = env.berth(&["ps"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout).into_owned();
    assert!(ps.lines().any(|l| l.starts_with("pp\trunning\tside,main")), "{ps}");

    let logged = wait_until(Duration::from_secs(5), || {
        let out = env.berth(&["logs", "pp", "side"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout) == "side-hello\n"
    });
    assert!(logged, "timed out waiting for the sidecar's log");

    let ex = env.berth(&["exec", "pp", "main", "--", "sh", "-c", "hostname; cat /proc/1/cmdline; exit 5"]).output().unwrap();
    assert_eq!(ex.status.code(), Some(5), "{}", String::from_utf8_lossy(&ex.stderr));
    // busybox sh execs its last command: PID 1 is `sleep`.
    assert_eq!(String::from_utf8_lossy(&ex.stdout), "pp\nsleep\u{0}60\u{0}");
    let ex = env.berth(&["exec", "pp", "nope", "--", "true"]).output().unwrap();
    assert_eq!(ex.status.code(), Some(125));

    let rm = env.berth(&["rm", "pp"]).output().unwrap();
    assert_eq!(rm.status.code(), Some(125), "a running pod is not removed");

    // The main shell (PID 1 of its namespace) ignores SIGTERM: killed after
    // the grace period.
    let t = Instant::now();
    let stop = env.berth(&["stop", "pp"]).output().unwrap();
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    assert_eq!(child.wait().unwrap().code(), Some(137));
    assert!(t.elapsed() < Duration::from_secs(10));
    let ps = env.berth(&["ps", "-a"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&ps.stdout).lines().count(), 1, "only the header");
    let rm = env.berth(&["rm", "pp"]).output().unwrap();
    assert_eq!(rm.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&rm.stderr).contains("no pod named"));
}

#[test]
fn runtime_init_writes_sidecar_serves_main_fetches() {
    let env = Env::new();
    let init = env.bundle("init");
    env.set_args(&init, &["sh", "-c", "echo built-by-init > /workspace/artifact.txt"]);
    let web = env.bundle("web");
    env.set_args(&web, &["httpd", "-f", "-p", "8080", "-h", "/workspace"]);
    let main = env.bundle("main");
    let out = env
        .berth(&[
            "run",
            "--init-bundle",
            &format!("checkout={}", init.display()),
            "--sidecar-bundle",
            &format!("web={}", web.display()),
            "--sidecar-ready=web=8080",
            "--bundle",
            main.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "wget -q -O- http://web:8080/artifact.txt && exit 42",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(42), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "built-by-init\n");
}

#[test]
fn runtime_failed_init_or_readiness_is_a_provisioning_failure() {
    let env = Env::new();
    let init = env.bundle("init");
    env.set_args(&init, &["sh", "-c", "exit 3"]);
    let main = env.bundle("main");
    let out = env
        .berth(&["run", "--init-bundle", &format!("checkout={}", init.display()), "--bundle", main.to_str().unwrap(), "--", "echo", "main-ran"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(out.stdout.is_empty());
    assert!(err.contains("init container checkout exited with status 3"), "{err}");

    let web = env.bundle("web");
    env.set_args(&web, &["sleep", "60"]);
    let t = Instant::now();
    let out = env
        .berth(&["run", "--sidecar-bundle", &format!("web={}", web.display()), "--sidecar-ready=web=8080", "--bundle", main.to_str().unwrap(), "--", "echo", "main-ran"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert!(out.stdout.is_empty());
    assert!(err.contains("sidecar web did not become ready"), "{err}");
    // 100 tries 100 ms apart, then the sidecar's teardown (SIGKILL after 5 s:
    // `sleep` as PID 1 ignores SIGTERM).
    assert!(t.elapsed() < Duration::from_secs(25));
}

/// This host's cgroup v2 hierarchy has no controllers (hybrid layout): limits
/// cannot be applied, which berth says once, and the pod still runs. (The
/// delegated cgroup v2 case is tested in a guest: tests/it/vm_guest.rs.)
#[test]
fn runtime_limits_without_usable_cgroup_warn_once_and_run() {
    let env = Env::new();
    let b = env.bundle("b");
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--bundle", b.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", "echo ran; exit 4"]);
        let out = env.berth(&args).stdin(Stdio::null()).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, out, err) = run(&["--memory", "64Mi", "--cpus", "500m", "--pids-limit", "100"]);
    assert_eq!((code, out.as_str()), (Some(4), "ran\n"), "stderr: {err}");
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("limits")).collect();
    assert_eq!(warnings.len(), 1, "stderr: {err}");
    assert!(warnings[0].contains("resource limits are not applied") && warnings[0].contains("cgroup"), "{err}");
    let (code, out, err) = run(&[]);
    assert_eq!((code, out.as_str(), err.as_str()), (Some(4), "ran\n", ""));
    // Bad values are usage errors.
    for bad in [["--memory", "0"], ["--memory", "12MB"], ["--cpus", "-1"], ["--pids-limit", "0"]] {
        let (code, out, err) = run(&bad);
        assert_eq!((code, out.as_str()), (Some(125), ""), "{bad:?}: {err}");
    }
}
