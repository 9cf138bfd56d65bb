//! `--isolation vm`, end to end as the unprivileged test user: a pod of
//! images from the test registry in a QEMU microVM (TCG: CI has no KVM),
//! with Debian's cloud kernel as `tests/run` extracts it. A pod file with
//! an init container and a ready sidecar; 16 MiB of random bytes through
//! the main container; exit statuses; the workspace; what the guest cannot
//! reach; killing berth; a guest that does not come up in time.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::vm::test_kernel;
use crate::common::*;

struct Vm {
    s: Served,
    /// `--isolation vm --accel tcg --kernel K --modules M`.
    args: Vec<String>,
}

fn setup() -> Option<Vm> {
    let (vmlinuz, modules) = test_kernel()?;
    let image = Image::new(vec![Layer::new(&busybox_tar_with(&["wget", "httpd", "grep", "kill", "ls"]), Comp::Gzip, false)]);
    let s = Served::start("berth/vmbox", &image, true);
    let args = ["--isolation", "vm", "--accel", "tcg", "--kernel", vmlinuz.to_str().unwrap(), "--modules", modules.to_str().unwrap()]
        .map(String::from)
        .to_vec();
    Some(Vm { s, args })
}

impl Vm {
    /// `berth run VM-ARGS EXTRA... IMAGE -- CMD...`
    fn run_args(&self, extra: &[&str], cmd: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into()];
        a.extend(self.args.iter().cloned());
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push(self.s.image.clone());
        a.push("--".into());
        a.extend(cmd.iter().map(|s| s.to_string()));
        a
    }

    fn run(&self, extra: &[&str], cmd: &[&str]) -> Run {
        let a = self.run_args(extra, cmd);
        self.s.env.run_as_user(&a.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// A workspace directory the test user owns, inside a parent that also
    /// holds a secret.
    fn workspace(&self) -> (std::path::PathBuf, std::path::PathBuf) {
        let parent = self.s.env.path().join("vm-host");
        let ws = parent.join("ws");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::write(parent.join("secret.txt"), "HOST-SECRET-7f3a\n").unwrap();
        chown_to_test_user(&parent);
        chown_to_test_user(&ws);
        chown_to_test_user(&parent.join("secret.txt"));
        (parent, ws)
    }

    /// QEMU processes started for this test: QEMU's command line names
    /// only paths inside its own root, but its environment is berth's.
    fn qemus(&self) -> Vec<i32> {
        let marker = format!("BERTH_ROOT={}", self.s.env.root.display());
        processes_with("qemu-system")
            .into_iter()
            .map(|(pid, _)| pid)
            .filter(|pid| std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|e| e.split(|&b| b == 0).any(|v| v == marker.as_bytes())))
            .collect()
    }

    fn no_qemu_left(&self) {
        assert!(wait_until(Duration::from_secs(10), || self.qemus().is_empty()), "QEMU outlived berth: {:?}", self.qemus());
    }
}

#[test]
fn vm_mode_pod_file_with_init_container_and_ready_sidecar() {
    let Some(vm) = setup() else { return };
    let (_parent, ws) = vm.workspace();
    std::fs::write(ws.join("from-host.txt"), "given by the host\n").unwrap();
    chown_to_test_user(&ws.join("from-host.txt"));
    // The annotation asks for the VM: no --isolation on the command line.
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: vmpod
  annotations:
    berth.dev/isolation: vm
spec:
  initContainers:
  - name: prep
    image: {image}
    command: ["sh", "-c", "cat /workspace/from-host.txt > /workspace/init.txt; echo prepared"]
  containers:
  - name: build
    image: {image}
    command: ["sh", "-c", "grep -q web /etc/hosts && wget -q -O- http://web:8080/init.txt && echo built > /workspace/out.txt && exit 7"]
  - name: web
    image: {image}
    command: ["httpd", "-f", "-p", "8080", "-h", "/workspace"]
    readinessProbe:
      periodSeconds: 1
      tcpSocket:
        port: 8080
"#,
        image = vm.s.image
    );
    let file = vm.s.env.path().join("vmpod.yaml");
    std::fs::write(&file, pod).unwrap();
    chown_to_test_user(&file);
    // `berth check` says so before anything runs.
    let check = vm.s.env.run_as_user(&["check", file.to_str().unwrap()]).ok();
    assert!(check.stdout.contains("\nisolation: vm "), "{check:?}");
    let k: Vec<&str> = vm.args[4..].iter().map(String::as_str).collect();
    let mut a = vec!["run", "--accel", "tcg", "--keep", "--workspace", ws.to_str().unwrap(), "--pod", file.to_str().unwrap()];
    a.extend(k);
    let r = vm.s.env.run_as_user(&a);
    assert_eq!(r.code, 7, "{r:?}");
    assert_eq!(r.stdout, "given by the host\n", "stdout is the main container's alone: {r:?}");
    // The build's files are on the host, the user's own.
    let out = ws.join("out.txt");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "built\n");
    let (uid, _) = test_user_ids();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&out).unwrap()), uid);
    assert_eq!(std::fs::read_to_string(ws.join("init.txt")).unwrap(), "given by the host\n");
    // The guest's container logs came over the control port: `berth logs`
    // reads them on the host.
    let logs = vm.s.env.run_as_user(&["logs", "vmpod", "prep"]).ok();
    assert_eq!(logs.stdout, "prepared\n", "{logs:?}");
    vm.s.env.run_as_user(&["rm", "vmpod"]).ok();
    vm.no_qemu_left();
}

#[test]
fn vm_mode_stdio_is_binary_clean() {
    let Some(vm) = setup() else { return };
    let data = random_bytes(16 << 20, 11);
    let stream = |extra: &[&str]| {
        let mut a: Vec<String> = vec!["run".into(), "--network".into(), "none".into()];
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push(vm.s.image.clone());
        a.extend(["--", "cat"].map(String::from));
        let mut child = vm
            .s
            .env
            .berth_as_user(&a.iter().map(String::as_str).collect::<Vec<_>>())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = data.clone();
        let started = Instant::now();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        writer.join().unwrap().unwrap();
        let status = child.wait().unwrap();
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(status.success(), "{status:?}: {err}");
        (out, started.elapsed())
    };
    let vm_args: Vec<&str> = vm.args.iter().map(String::as_str).collect();
    let (out, vm_time) = stream(&vm_args);
    assert_eq!(out.len(), data.len());
    assert_eq!(sha256(&out), sha256(&data), "the bytes through the VM differ");
    let (out, container_time) = stream(&[]);
    assert_eq!(sha256(&out), sha256(&data));
    // Boot included; the benchmark (tests/bench/vm.sh) separates the two.
    eprintln!("16 MiB through cat: vm (tcg, boot included) {vm_time:?}, container {container_time:?}");
}

#[test]
fn vm_mode_exit_statuses_pass_through() {
    let Some(vm) = setup() else { return };
    // 137: the main container killed by SIGKILL (a shared PID namespace,
    // so its shell is not the namespace's init, which ignores it).
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: killed\nspec:\n  shareProcessNamespace: true\n  containers:\n  - name: main\n    image: {}\n    command: [\"sh\", \"-c\", \"echo going; kill -9 $$$$\"]\n",
        vm.s.image
    );
    let file = vm.s.env.path().join("killed.yaml");
    std::fs::write(&file, pod).unwrap();
    chown_to_test_user(&file);
    let mut a = vec!["run", "--network", "none", "--pod", file.to_str().unwrap()];
    a.extend(vm.args.iter().map(String::as_str));
    let r = vm.s.env.run_as_user(&a);
    assert_eq!((r.code, r.stdout.as_str()), (137, "going\n"), "{r:?}");
    let r = vm.run(&["--network", "none"], &["true"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, ""), "{r:?}");
    // The image's disk goes with its layers at gc.
    let disks = || std::fs::read_dir(vm.s.env.root.join("vm/rootfs")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".erofs")).count();
    assert_eq!(disks(), 1);
    vm.s.env.run_as_user(&["rmi", &vm.s.image]).ok();
    let gc = vm.s.env.run_as_user(&["gc"]).ok();
    assert_eq!(disks(), 0, "{gc:?}");
    assert!(gc.stderr.contains("removed 1 VM disk images"), "{gc:?}");
}

#[test]
fn vm_mode_guest_sees_nothing_of_the_host_but_the_workspace() {
    let Some(vm) = setup() else { return };
    let (parent, ws) = vm.workspace();
    let secret = parent.join("secret.txt");
    let script = format!(
        "for f in /proc/1/root{s} {s} /workspace/../secret.txt /proc/1/root/workspace/../secret.txt; do cat $f 2>/dev/null; done; \
         ls -a /workspace/..; ls /sys/firmware 2>&1; ls /proc/1/root/ 2>&1; cat /proc/1/root{p}/secret.txt 2>/dev/null; echo end",
        s = secret.display(),
        p = parent.display()
    );
    let r = vm.run(&["--workspace", ws.to_str().unwrap(), "--network", "none"], &["sh", "-c", &script]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.ends_with("end\n"), "{r:?}");
    assert!(!r.stdout.contains("HOST-SECRET"), "the guest read a host file: {}", r.stdout);
    assert!(!r.stderr.contains("HOST-SECRET"), "{}", r.stderr);
    assert!(!r.stdout.contains("secret.txt"), "the guest listed the export's parent: {}", r.stdout);
}

#[test]
fn vm_mode_killing_berth_kills_qemu() {
    let Some(vm) = setup() else { return };
    let a = vm.run_args(&["--network", "none"], &["sh", "-c", "echo up; exec sleep 1000"]);
    let mut child = vm.s.env.berth_as_user(&a.iter().map(String::as_str).collect::<Vec<_>>()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let berth = berth_pid(&child);
    let mut line = [0u8; 3];
    child.stdout.take().unwrap().read_exact(&mut line).unwrap();
    assert_eq!(&line, b"up\n");
    assert_eq!(vm.qemus().len(), 1, "no QEMU running for the pod");
    // SAFETY: a plain kill(2) of a pid we found.
    assert_eq!(unsafe { libc::kill(berth, libc::SIGKILL) }, 0);
    let _ = child.wait();
    vm.no_qemu_left();
}

#[test]
fn vm_mode_a_guest_that_does_not_come_up_ends_with_125_in_time() {
    let Some(vm) = setup() else { return };
    let started = Instant::now();
    let r = vm.run(&["--network", "none", "--boot-timeout", "1s"], &["true"]);
    let took = started.elapsed();
    assert_eq!(r.code, 125, "{r:?}");
    assert_eq!(r.stdout, "", "{r:?}");
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("berth: the VM did not reach berth's init within 1 s (tcg)"), "{r:?}");
    assert!(r.stderr.contains("console"), "the console's tail is shown: {r:?}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
    vm.no_qemu_left();
    // Nothing of the pod is left behind.
    let pods = vm.s.env.run_root.join("pods");
    let left: Vec<_> = std::fs::read_dir(&pods).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn vm_mode_refuses_host_paths_before_booting() {
    let Some(vm) = setup() else { return };
    let dir = vm.s.env.path().join("hostdir");
    std::fs::create_dir_all(&dir).unwrap();
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hp\nspec:\n  containers:\n  - name: main\n    image: {}\n    volumeMounts:\n    - name: h\n      mountPath: /h\n  volumes:\n  - name: h\n    hostPath:\n      path: {}\n",
        vm.s.image,
        dir.display()
    );
    let file = vm.s.env.path().join("hp.yaml");
    std::fs::write(&file, pod).unwrap();
    chown_to_test_user(&file);
    let mut a = vec!["run", "--pod", file.to_str().unwrap()];
    a.extend(vm.args.iter().map(String::as_str));
    let started = Instant::now();
    let line = vm.s.env.run_as_user(&a).provision_failure();
    assert!(line.contains("outside the pod") && line.contains(&dir.display().to_string()), "{line}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // An isolation berth does not know is the pod file's error, with its place.
    let bad = vm.s.env.path().join("bad.yaml");
    std::fs::write(&bad, format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: b\n  annotations:\n    berth.dev/isolation: kvm\nspec:\n  containers:\n  - name: m\n    image: {}\n", vm.s.image)).unwrap();
    chown_to_test_user(&bad);
    let line = vm.s.env.run_as_user(&["check", bad.to_str().unwrap()]).provision_failure();
    assert!(line.contains("berth.dev/isolation: \"kvm\" is not an isolation (container, vm)"), "{line}");
}

#[test]
fn vm_mode_outbound_network_reaches_the_hosts_loopback() {
    let Some(vm) = setup() else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = "from the host\n";
            let _ = write!(s, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    let url = format!("http://host.containers.internal:{port}/x");
    // The default network is outbound: QEMU's user-mode stack, no bridge.
    let r = vm.run(&[], &["wget", "-q", "-O-", &url]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "from the host\n"), "{r:?}");
}

#[test]
fn vm_mode_sigterm_reaches_the_main_container() {
    let Some(vm) = setup() else { return };
    let script = "trap 'echo stopping; exit 3' TERM; echo up; while :; do sleep 0.1; done";
    let a = vm.run_args(&["--network", "none", "--name", "vmterm"], &["sh", "-c", script]);
    let mut child = vm.s.env.berth_as_user(&a.iter().map(String::as_str).collect::<Vec<_>>()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let berth = berth_pid(&child);
    let mut out = child.stdout.take().unwrap();
    let mut line = [0u8; 3];
    out.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"up\n");
    // Other commands see the pod; exec does not reach into a VM.
    let ps = vm.s.env.run_as_user(&["ps"]).ok();
    assert!(ps.stdout.contains("vmterm"), "{ps:?}");
    let line = vm.s.env.run_as_user(&["exec", "vmterm", "vmbox", "--", "true"]).provision_failure();
    assert!(line.contains("runs in a VM"), "{line}");
    let sent = Instant::now();
    // SAFETY: a plain kill(2) of a pid we found.
    assert_eq!(unsafe { libc::kill(berth, libc::SIGTERM) }, 0);
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(rest, "stopping\n");
    assert_eq!(status.code(), Some(3), "the main container's own status");
    assert!(sent.elapsed() < Duration::from_secs(10), "took {:?}", sent.elapsed());
    vm.no_qemu_left();
}

#[test]
fn vm_mode_kvm_that_cannot_run_the_guest_says_to_use_tcg() {
    let Some(vm) = setup() else { return };
    // The test user has no kvm group here (or the host no usable KVM): QEMU
    // fails at once, or the guest never comes up.
    let mut a: Vec<String> = vec!["run".into()];
    a.extend(vm.args.iter().cloned());
    let at = a.iter().position(|x| x == "tcg").unwrap();
    a[at] = "kvm".into();
    a.extend(["--boot-timeout", "10s", "--network", "none", &vm.s.image, "--", "true"].map(String::from));
    let r = vm.s.env.run_as_user(&a.iter().map(String::as_str).collect::<Vec<_>>());
    if r.code == 0 {
        eprintln!("KVM works for the test user here: nothing to check");
        return;
    }
    assert_eq!((r.code, r.stdout.as_str()), (125, ""), "{r:?}");
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("berth: ") && last.contains("--accel tcg"), "{r:?}");
    vm.no_qemu_left();
}
