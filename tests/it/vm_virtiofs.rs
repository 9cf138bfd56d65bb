//! The workspace in a guest through virtio-fs (`berth::vm::virtiofs`): the
//! daemon and QEMU run as the unprivileged test user, the daemon as uid 0 of
//! the user's namespace with its subordinate ids, the guest under TCG.
//!
//! `Virtiofsd::start` must run as the test user, and a test runs as root:
//! the test re-executes this test binary as the user with only
//! [`virtiofsd_for_the_test_user`] selected, which starts the daemon, says
//! `VIRTIOFSD-READY PID`, and keeps it until its stdin closes.
//! `BERTH_TEST_VIRTIOFSD=PATH` tests that daemon instead of the one found.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use berth::userns::IdMapping;
use berth::vm::virtiofs::{self, Virtiofsd, VirtiofsOptions};

use crate::common::vm::{values, Guest, VIRTIOFS_MODULES};
use crate::common::*;

/// The helper's job: the shared directory and the socket, from the test.
const HELPER_DIR: &str = "BERTH_TEST_VIRTIOFSD_DIR";
const HELPER_SOCKET: &str = "BERTH_TEST_VIRTIOFSD_SOCKET";
const READY: &str = "VIRTIOFSD-READY";
/// A daemon to test instead of the one found (e.g. the Rust virtiofsd).
const DAEMON: &str = "BERTH_TEST_VIRTIOFSD";

/// Not a test of its own: the daemon's owner when a test re-executes this
/// binary as the test user (it passes at once otherwise).
#[test]
fn virtiofsd_for_the_test_user() {
    let (Some(dir), Some(socket)) = (std::env::var_os(HELPER_DIR), std::env::var_os(HELPER_SOCKET)) else { return };
    let mapping = IdMapping::for_current_user().expect("the test user's mapping");
    let t0 = Instant::now();
    let opts = VirtiofsOptions { daemon: std::env::var_os(DAEMON).map(PathBuf::from), ..VirtiofsOptions::default() };
    let vfs = Virtiofsd::start(Path::new(&dir), Path::new(&socket), &mapping, &opts)
        .unwrap_or_else(|e| panic!("starting virtiofsd: {:#}", anyhow::Error::new(e)));
    println!("{READY} {} {}", vfs.pid(), t0.elapsed().as_micros());
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    drop(vfs);
}

/// This test binary where the test user may run it (the build directory
/// may be private): a hard link, or a copy, in a world-readable directory.
fn exe_for_test_user() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let src = std::env::current_exe().unwrap();
        let meta = std::fs::metadata(&src).unwrap();
        let top = std::env::temp_dir().join("berth-test-bin");
        let dir = top.join(format!("it-{}-{}", meta.len(), meta.mtime_nsec() ^ meta.mtime()));
        let dest = dir.join("it");
        if std::fs::metadata(&dest).map(|m| m.len()).ok() != Some(meta.len()) {
            std::fs::create_dir_all(&dir).unwrap();
            for d in [&top, &dir] {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            let tmp = dir.join(format!("it.{}", std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            if std::fs::hard_link(&src, &tmp).is_err() {
                std::fs::copy(&src, &tmp).unwrap();
            }
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&tmp, &dest).unwrap();
        }
        dest
    })
}

/// The daemon's owner, running as the test user.
struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The daemon's pid.
    pid: i32,
    /// How long `Virtiofsd::start` took.
    startup: Duration,
    socket: PathBuf,
}

impl Helper {
    fn start(dir: &Path, socket: &Path) -> Helper {
        let mut cmd = Command::new("setpriv");
        if let Some(d) = std::env::var_os(DAEMON) {
            cmd.env(DAEMON, d);
        }
        let mut child = cmd
            .args(["--reuid", TEST_USER, "--regid", TEST_USER, "--init-groups", "--"])
            .arg(exe_for_test_user())
            .args(["--exact", "vm_virtiofs::virtiofsd_for_the_test_user", "--nocapture", "--test-threads=1", "-q"])
            .env(HELPER_DIR, dir)
            .env(HELPER_SOCKET, socket)
            .env("HOME", "/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("setpriv");
        let stdin = child.stdin.take();
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix(READY) {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        let Ok(ready) = rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            panic!("the helper never started virtiofsd: {:?}", child.wait());
        };
        let mut it = ready.split_whitespace().map(|n| n.parse::<u64>().unwrap());
        let (pid, us) = (it.next().unwrap() as i32, it.next().unwrap());
        Helper { child, stdin, pid, startup: Duration::from_micros(us), socket: socket.to_path_buf() }
    }

    /// Lets the helper drop the daemon and end.
    fn finish(mut self) {
        drop(self.stdin.take());
        let st = self.child.wait().unwrap();
        assert!(st.success(), "helper: {st}");
        assert!(gone(self.pid), "virtiofsd {} outlived its Drop", self.pid);
        assert!(!self.socket.exists(), "the socket outlived the daemon");
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `pid` no longer runs (absent, or a zombie).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
    }
}

/// The children of `pid`'s threads.
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<i32>>())
        .collect()
}

/// A parent directory owned by the test user (with a secret in it) and
/// the workspace inside it, and a private directory for the socket.
struct Share {
    _top: tempfile::TempDir,
    parent: PathBuf,
    ws: PathBuf,
    socket: PathBuf,
}

impl Share {
    fn new() -> Share {
        let top = tempfile::Builder::new().prefix("berth-vfs-").tempdir().unwrap();
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let parent = top.path().join("parent");
        // Commas: both QEMU's and the C daemon's option lists split at them.
        let ws = parent.join("ws,1");
        let run = top.path().join("run,1");
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(parent.join("SECRET-OUTSIDE"), "parent-secret-4711\n").unwrap();
        chown_to_test_user(top.path());
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
        Share { socket: run.join("virtiofs.sock"), _top: top, parent, ws }
    }

    fn guest(&self, g: Guest) -> Guest {
        let mut g = g.without_berth().host_user(TEST_USER);
        for m in VIRTIOFS_MODULES {
            g = g.module(m);
        }
        let mem = g.memory_bytes();
        g.qemu_args(virtiofs::qemu_args(&self.socket, mem))
    }
}


const MOUNT: &str = "set +e\nmkdir -p /mnt/ws\nmount -t virtiofs workspace /mnt/ws && echo R:mounted=yes\n";

/// The guest mounts the workspace, reads a host file and writes files;
/// ownership maps both ways: the user's files are root's in the guest, and
/// what the guest's root writes is the user's on the host (the guest's uid
/// 1000 is the user's subordinate id 1000).
#[test]
fn vm_virtiofs_files_and_owners_both_ways() {
    let Some(g) = Guest::new() else { return };
    let share = Share::new();
    std::fs::write(share.ws.join("from-host"), "host-data-1\n").unwrap();
    chown_to_test_user(&share.ws);
    let helper = Helper::start(&share.ws, &share.socket);
    eprintln!("virtiofsd started in {:?}", helper.startup);
    let r = share.guest(g).run(
        &format!(
            "{MOUNT}{}",
            r#"echo "R:host_file=$(cat /mnt/ws/from-host)"
echo "R:host_owner=$(stat -c %u:%g /mnt/ws/from-host)"
echo guest-data-2 > /mnt/ws/from-guest
mkdir /mnt/ws/sub && echo nested > /mnt/ws/sub/f
echo by-1000 > /mnt/ws/as-1000 && chown 1000:1000 /mnt/ws/as-1000
echo "R:guest_owner=$(stat -c %u:%g /mnt/ws/from-guest)"
sync
umount /mnt/ws && echo R:unmounted=yes
"#
        ),
        Duration::from_secs(60),
    );
    let v = values(&r.output);
    assert_eq!(v.get("mounted").map(String::as_str), Some("yes"), "{}", r.output);
    assert_eq!(v.get("host_file").map(String::as_str), Some("host-data-1"), "{}", r.output);
    assert_eq!(v.get("host_owner").map(String::as_str), Some("0:0"), "{}", r.output);
    assert_eq!(v.get("guest_owner").map(String::as_str), Some("0:0"), "{}", r.output);
    assert_eq!(v.get("unmounted").map(String::as_str), Some("yes"), "{}", r.output);
    helper.finish();

    let (uid, gid) = test_user_ids();
    for f in ["from-guest", "sub", "sub/f"] {
        let m = std::fs::symlink_metadata(share.ws.join(f)).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, gid), "{f}");
    }
    assert_eq!(std::fs::read_to_string(share.ws.join("from-guest")).unwrap(), "guest-data-2\n");
    assert_eq!(std::fs::read_to_string(share.ws.join("sub/f")).unwrap(), "nested\n");
    let sub = IdMapping::from_ranges(uid, gid, subid("/etc/subuid"), subid("/etc/subgid"));
    let m = std::fs::metadata(share.ws.join("as-1000")).unwrap();
    assert_eq!((Some(m.uid()), Some(m.gid())), (sub.host_uid(1000), sub.host_gid(1000)));
}

/// The test user's first range in `file` (`tests/run` gives it one).
fn subid(file: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut it = l.split(':');
        (it.next()? == TEST_USER).then(|| Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?)))?
    })
}

/// The guest reaches nothing above the export: not by `..`, not through
/// symbolic links the host made to the parent, not by /proc/self/root or
/// the parent's host path; and the daemon's sandboxed server has the
/// export as its root directory.
#[test]
fn vm_virtiofs_the_exports_parent_is_out_of_reach() {
    let Some(g) = Guest::new() else { return };
    let share = Share::new();
    std::os::unix::fs::symlink("../SECRET-OUTSIDE", share.ws.join("up")).unwrap();
    std::os::unix::fs::symlink(share.parent.join("SECRET-OUTSIDE"), share.ws.join("abs")).unwrap();
    std::os::unix::fs::symlink("..", share.ws.join("dotdot")).unwrap();
    std::fs::write(share.ws.join("inside"), "in\n").unwrap();
    chown_to_test_user(&share.ws);
    let helper = Helper::start(&share.ws, &share.socket);

    // While the guest runs: the daemon's server process (its child once
    // QEMU connected) ends up with the export as "/" (it forks before its
    // pivot_root: the last listing taken is what counts).
    let daemon = helper.pid;
    let watcher = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(&c) = children(daemon).first() {
                if let Ok(d) = std::fs::read_dir(format!("/proc/{c}/root")) {
                    let names: Vec<String> = d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
                    let done = names.iter().any(|n| n == "inside");
                    last = Some(names);
                    if done {
                        break;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        last
    });

    let parent = share.parent.display().to_string();
    let r = share.guest(g).run(
        &format!(
            r#"{MOUNT}try() {{ out=$(cat "$1" 2>/dev/null); case "$out" in *secret*) echo "R:leak=$1";; esac; }}
for p in /mnt/ws/../SECRET-OUTSIDE /mnt/ws/up /mnt/ws/abs /mnt/ws/dotdot/SECRET-OUTSIDE /mnt/ws/dotdot/../SECRET-OUTSIDE \
  /proc/self/root/mnt/ws/../SECRET-OUTSIDE /proc/1/root{parent}/SECRET-OUTSIDE {parent}/SECRET-OUTSIDE; do try "$p"; done
for d in /mnt/ws/.. /mnt/ws/dotdot /mnt/ws/../.. /proc/self/root/mnt/ws/..; do
  ls -a "$d" 2>/dev/null | grep -q SECRET && echo "R:listed=$d"
done
echo "R:inside=$(cat /mnt/ws/inside)"
echo "R:up_link=$(readlink /mnt/ws/up)"
echo "R:ws=$(ls -a /mnt/ws | tr '\n' ' ')"
cd /mnt/ws && cd .. && echo "R:up_is=$(pwd)"
"#
        ),
        Duration::from_secs(60),
    );
    let v = values(&r.output);
    assert_eq!(v.get("mounted").map(String::as_str), Some("yes"), "{}", r.output);
    assert_eq!(v.get("inside").map(String::as_str), Some("in"), "{}", r.output);
    assert_eq!(v.get("up_link").map(String::as_str), Some("../SECRET-OUTSIDE"), "{}", r.output);
    assert!(!r.output.contains("R:leak=") && !r.output.contains("R:listed="), "{}", r.output);
    assert!(!r.output.contains("parent-secret-4711"), "{}", r.output);
    assert_eq!(v.get("up_is").map(String::as_str), Some("/mnt"), "{}", r.output);
    let root = watcher.join().unwrap().expect("the daemon's sandboxed server never appeared");
    assert!(root.iter().any(|n| n == "inside"), "server root: {root:?}");
    assert!(!root.iter().any(|n| n == "SECRET-OUTSIDE" || n == "ws,1"), "server root: {root:?}");
    helper.finish();
}

/// SIGKILL of the daemon's owner kills the daemon and its sandboxed
/// server. The test holds the connection the VMM would (it sends nothing),
/// so that nothing but the death signals can end them.
#[test]
fn vm_virtiofs_killing_the_owner_kills_the_daemon() {
    let Some(_) = Guest::new() else { return };
    let share = Share::new();
    let mut helper = Helper::start(&share.ws, &share.socket);
    let daemon = helper.pid;
    let mut conn = std::os::unix::net::UnixStream::connect(&share.socket).unwrap();
    assert!(wait_until(Duration::from_secs(10), || !children(daemon).is_empty()), "virtiofsd never forked its server");
    let server = children(daemon)[0];
    std::thread::sleep(Duration::from_millis(200));
    assert!(!gone(daemon) && !gone(server), "virtiofsd ended on its own");
    helper.child.kill().unwrap();
    helper.child.wait().unwrap();
    assert!(wait_until(Duration::from_secs(5), || gone(daemon) && gone(server)), "virtiofsd survived its owner");
    // The server's end of the connection is closed.
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(conn.read(&mut [0u8; 1]).unwrap(), 0);
}

/// 64 MiB through virtio-fs under TCG, each way: written by the guest,
/// read by it from a file the host wrote (out of the guest's page cache).
/// Prints the rates (for the notes); checks the bytes at both ends.
#[test]
fn vm_virtiofs_throughput_64_mib() {
    let Some(g) = Guest::new() else { return };
    let share = Share::new();
    let block: Vec<u8> = random_bytes(1 << 20, 7);
    let mut f = std::fs::File::create(share.ws.join("in.bin")).unwrap();
    for i in 0..64u8 {
        let mut b = block.clone();
        b[0] = i;
        f.write_all(&b).unwrap();
    }
    drop(f);
    let mut last = block.clone();
    last[0] = 63;
    chown_to_test_user(&share.ws);
    let helper = Helper::start(&share.ws, &share.socket);
    let r = share.guest(g).run(
        &format!(
            "{MOUNT}{}",
            r#"now() { cut -d' ' -f1 /proc/uptime; }
t0=$(now); dd if=/dev/zero of=/mnt/ws/out.bin bs=1M count=64 conv=fsync 2>/dev/null; t1=$(now)
echo "R:write_s=$(echo "$t1 - $t0" | bc)"
t0=$(now); dd if=/mnt/ws/in.bin of=/dev/null bs=1M 2>/dev/null; t1=$(now)
echo "R:read_s=$(echo "$t1 - $t0" | bc)"
echo "R:last=$(dd if=/mnt/ws/in.bin bs=1M skip=63 count=1 2>/dev/null | md5sum | cut -d' ' -f1)"
umount /mnt/ws
"#
        ),
        Duration::from_secs(120),
    );
    helper.finish();
    let v = values(&r.output);
    assert_eq!(v.get("mounted").map(String::as_str), Some("yes"), "{}", r.output);
    let out = std::fs::read(share.ws.join("out.bin")).unwrap();
    assert_eq!(out.len(), 64 << 20);
    assert!(out.iter().all(|&b| b == 0));
    let md5 = String::from_utf8(run_ok(Command::new("md5sum").stdin(std::fs::File::open(write_tmp(&last)).unwrap()))).unwrap();
    assert_eq!(Some(md5.split_whitespace().next().unwrap()), v.get("last").map(String::as_str), "{}", r.output);
    let secs = |k: &str| v.get(k).and_then(|s| s.parse::<f64>().ok()).unwrap_or_else(|| panic!("no {k}: {}", r.output));
    let (w, rd) = (secs("write_s"), secs("read_s"));
    eprintln!(
        "virtio-fs under TCG, 64 MiB: write {w:.2} s ({:.1} MiB/s), read {rd:.2} s ({:.1} MiB/s)",
        64.0 / w.max(0.01),
        64.0 / rd.max(0.01)
    );
}

fn write_tmp(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytes).unwrap();
    f
}
