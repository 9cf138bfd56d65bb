//! A Linux guest under QEMU (software emulation) for what this host cannot
//! show: its cgroups are hybrid, with no controllers on the v2 hierarchy.
//!
//! The guest is Debian's cloud kernel (fetched by `tests/run`, never
//! installed) and an initramfs made here: busybox, the berth binary under
//! test with its libraries, the `overlay` module and the caller's files.
//! Its `/init` copies itself into a tmpfs and `switch_root`s there (pivot_root,
//! which libcontainer uses, fails on the initramfs itself), mounts cgroup2
//! alone at `/sys/fs/cgroup` with cpu, memory and pids enabled for the root's
//! children, runs the caller's script with `sh -e` as root, prints its exit
//! status after [`STATUS_MARK`] and powers off.
//!
//! In the guest, user `u` (uid/gid 1000, HOME /home/u) has no subordinate
//! ids, so berth maps only the user's own id and needs no setuid helper.
//! `as-user CMD…` runs CMD as `u` where the script is; `as-user-in CG CMD…`
//! runs it as `u` alone in `/sys/fs/cgroup/CG`, made and delegated to `u`
//! as systemd's `Delegate=yes` does.
//!
//! Callers may add kernel modules ([`Guest::module`], loaded in the order
//! given, after `overlay`), QEMU arguments ([`Guest::qemu_args`]: devices),
//! run QEMU as another host user ([`Guest::host_user`]) and leave berth out
//! of the initramfs ([`Guest::without_berth`]: a faster build).

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Printed by the guest's /init before the script's exit status.
pub const STATUS_MARK: &str = "BERTH-GUEST-STATUS";

/// The modules, in load order, that a virtio-fs mount in the guest needs
/// (paths under the kernel's module tree).
pub const VIRTIOFS_MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_mmio.ko",
    "fs/fuse/fuse.ko",
    "fs/fuse/virtiofs.ko",
];

/// Where `tests/run` puts the extracted kernel package.
const DEFAULT_KERNEL_DIR: &str = "/var/cache/berth-test/kernel";

const INIT: &str = r#"#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t devtmpfs dev /dev
if [ ! -e /.switched ]; then
  mount -t tmpfs -o mode=755 root /newroot
  for e in /*; do
    case $e in /newroot|/proc|/dev|/sys) mkdir -p /newroot$e ;; *) cp -a $e /newroot/ ;; esac
  done
  touch /newroot/.switched
  umount /dev
  umount /proc
  exec switch_root /newroot /init
fi
mount -t sysfs sys /sys
mount -t tmpfs -o mode=1777 tmp /tmp
mount -t tmpfs -o mode=755 run /run
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo "+cpu +memory +pids" > /sys/fs/cgroup/cgroup.subtree_control
for m in /lib/modules/*.ko; do insmod $m; done
ip link set lo up
hostname guest
cd /home/u
sh -e /script
echo "BERTH-GUEST-STATUS $?"
poweroff -f
"#;

const AS_USER: &str = r#"#!/bin/sh
exec su -s /bin/sh -c 'exec env PATH=/bin "$@"' -- u as-user "$@"
"#;

const AS_USER_IN: &str = r#"#!/bin/sh
# as-user-in CGROUP CMD...: CMD as u, alone in a cgroup delegated to u.
cg=/sys/fs/cgroup/$1
shift
mkdir "$cg"
chown 1000:1000 "$cg" "$cg/cgroup.procs" "$cg/cgroup.subtree_control" "$cg/cgroup.threads"
echo $$ > "$cg/cgroup.procs"
exec as-user "$@"
"#;

/// What the guest printed, and the script's exit status (None when the
/// guest never reported one).
pub struct GuestRun {
    pub output: String,
    pub status: Option<i32>,
}

pub struct Guest {
    kernel: PathBuf,
    /// The kernel's module tree (`.../lib/modules/RELEASE/kernel`).
    module_dir: PathBuf,
    modules: Vec<PathBuf>,
    files: Vec<(PathBuf, String)>,
    memory_mib: u32,
    qemu_args: Vec<String>,
    user: Option<String>,
    berth: bool,
}

impl Guest {
    /// A guest, or None (after saying so) when `BERTH_SKIP_VM_TESTS=1` and
    /// the kernel or QEMU is missing. Without that variable a missing part
    /// fails the test: CI installs both (`tests/run`).
    pub fn new() -> Option<Guest> {
        match Self::find_parts() {
            Ok(g) => Some(g),
            Err(why) if std::env::var_os("BERTH_SKIP_VM_TESTS").is_some_and(|v| v == "1") => {
                eprintln!("SKIPPED (BERTH_SKIP_VM_TESTS=1): {why}");
                None
            }
            Err(why) => panic!("{why}; tests/run installs qemu-system-x86 and extracts the kernel (or set BERTH_SKIP_VM_TESTS=1)"),
        }
    }

    fn find_parts() -> Result<Guest, String> {
        let dir = std::env::var_os("BERTH_TEST_KERNEL_DIR").map(PathBuf::from).unwrap_or_else(|| DEFAULT_KERNEL_DIR.into());
        let kernel = glob_one(&dir.join("boot"), "vmlinuz-").ok_or_else(|| format!("no guest kernel under {}/boot", dir.display()))?;
        let release = kernel.file_name().unwrap().to_string_lossy().trim_start_matches("vmlinuz-").to_string();
        let mods = dir.join("lib/modules").join(&release).join("kernel");
        let overlay = mods.join("fs/overlayfs/overlay.ko");
        if !overlay.exists() {
            return Err(format!("no {}", overlay.display()));
        }
        if Command::new("qemu-system-x86_64").arg("--version").stdout(Stdio::null()).status().is_err() {
            return Err("no qemu-system-x86_64".into());
        }
        Ok(Guest {
            kernel,
            module_dir: mods,
            modules: vec![overlay],
            files: Vec::new(),
            memory_mib: 512,
            qemu_args: Vec::new(),
            user: None,
            berth: true,
        })
    }

    /// Copies `src` (a file or a directory tree) to `dst` in the guest.
    pub fn file(mut self, src: &Path, dst: &str) -> Guest {
        self.files.push((src.to_path_buf(), dst.trim_start_matches('/').to_string()));
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Guest {
        self.memory_mib = mib;
        self
    }

    /// The guest's RAM in bytes (QEMU's `-m`).
    pub fn memory_bytes(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }

    /// Loads the module at `path` (under the kernel's module tree, e.g.
    /// `fs/fuse/fuse.ko`) after those added before it.
    pub fn module(mut self, path: &str) -> Guest {
        let m = self.module_dir.join(path);
        assert!(m.exists(), "no module {}", m.display());
        self.modules.push(m);
        self
    }

    /// Appends `args` to QEMU's command line.
    pub fn qemu_args<I: IntoIterator<Item = String>>(mut self, args: I) -> Guest {
        self.qemu_args.extend(args);
        self
    }

    /// Runs QEMU as host user `user` (with its groups), not as the test.
    pub fn host_user(mut self, user: &str) -> Guest {
        self.user = Some(user.to_string());
        self
    }

    /// Leaves berth and its libraries out of the initramfs.
    pub fn without_berth(mut self) -> Guest {
        self.berth = false;
        self
    }

    /// Boots the guest, runs `script` and returns what it printed. Panics,
    /// with the console so far, when the guest outlives `timeout`.
    pub fn run(&self, script: &str, timeout: Duration) -> GuestRun {
        let work = tempfile::tempdir().unwrap();
        let initrd = work.path().join("initrd.gz");
        self.build_initramfs(&work.path().join("root"), script, &initrd);
        let mut cmd = match &self.user {
            Some(user) => {
                // The kernel and initramfs must be readable by that user.
                fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
                // setpriv execs QEMU itself: killing the child kills QEMU.
                let mut c = Command::new("setpriv");
                c.args(["--reuid", user, "--regid", user, "--init-groups", "--", "qemu-system-x86_64"]);
                c
            }
            None => Command::new("qemu-system-x86_64"),
        };
        let mut child = cmd
            .args(["-M", "microvm", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", &self.memory_mib.to_string()])
            .args(["-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio", "-monitor", "none"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&initrd)
            // tsc_early_khz: under TCG the kernel finds no timer to
            // calibrate the TSC against and hangs without it.
            .args(["-append", "console=ttyS0 loglevel=1 panic=-1 reboot=t tsc_early_khz=2000000"])
            .args(&self.qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64");
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = stdout.read_to_end(&mut out);
            out
        });
        let finished = super::wait_until(timeout, || child.try_wait().unwrap().is_some());
        if !finished {
            let _ = child.kill();
            let _ = child.wait();
        }
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        let output = String::from_utf8_lossy(&reader.join().unwrap()).replace("\r\n", "\n");
        assert!(finished, "the guest ran past {timeout:?}; console:\n{output}\nqemu: {err}");
        let status = output.lines().rev().find_map(|l| l.strip_prefix(STATUS_MARK)).and_then(|s| s.trim().parse().ok());
        GuestRun { output, status }
    }

    fn build_initramfs(&self, root: &Path, script: &str, out: &Path) {
        for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "run", "newroot", "lib/modules", "home/u"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| !a.is_empty() && *a != "busybox") {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        // The berth under test, without debug info (a quarter of the size).
        if self.berth {
            let berth = root.join("bin/berth");
            let st = Command::new("objcopy").arg("--strip-debug").arg(env!("CARGO_BIN_EXE_berth")).arg(&berth).status().unwrap();
            assert!(st.success(), "objcopy --strip-debug");
            for lib in shared_libraries(Path::new(env!("CARGO_BIN_EXE_berth"))) {
                let dst = root.join(lib.strip_prefix("/").unwrap());
                fs::create_dir_all(dst.parent().unwrap()).unwrap();
                fs::copy(&lib, &dst).unwrap();
            }
        }
        // /init loads them in the order of their names: a number first
        // keeps the order they were added in (dependencies first).
        for (i, m) in self.modules.iter().enumerate() {
            let name = format!("{i:02}-{}", m.file_name().unwrap().to_string_lossy());
            fs::copy(m, root.join("lib/modules").join(name)).unwrap();
        }
        let text = |path: &str, body: &str, mode: u32| {
            let p = root.join(path);
            fs::write(&p, body).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        };
        text("init", INIT, 0o755);
        text("bin/as-user", AS_USER, 0o755);
        text("bin/as-user-in", AS_USER_IN, 0o755);
        text("script", script, 0o644);
        text("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nu:x:1000:1000:u:/home/u:/bin/sh\n", 0o644);
        text("etc/group", "root:x:0:\nu:x:1000:\n", 0o644);
        text("etc/hosts", "127.0.0.1 localhost guest\n", 0o644);
        for (src, dst) in &self.files {
            let to = root.join(dst);
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            let st = Command::new("cp").arg("-a").arg(src).arg(&to).status().unwrap();
            assert!(st.success(), "copying {} into the guest", src.display());
        }
        let st = Command::new("chown").args(["-R", "1000:1000"]).arg(root.join("home/u")).status().unwrap();
        assert!(st.success());
        let st = Command::new("sh")
            .arg("-c")
            .arg("cd \"$1\" && find . | cpio -o -H newc --quiet | gzip -1 > \"$2\"")
            .arg("sh")
            .arg(root)
            .arg(out)
            .status()
            .unwrap();
        assert!(st.success(), "making the initramfs");
    }
}

/// The one entry of `dir` whose name starts with `prefix`.
fn glob_one(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    found.pop()
}

/// The shared libraries and dynamic loader `binary` needs, from `ldd`.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')).map(PathBuf::from))
        .collect()
}

/// The extracted test kernel: `(vmlinuz, modules dir)`, or None (after
/// saying so) when it or QEMU is missing and `BERTH_SKIP_VM_TESTS=1`.
pub fn test_kernel() -> Option<(PathBuf, PathBuf)> {
    let dir = std::env::var_os("BERTH_TEST_KERNEL_DIR").map(PathBuf::from).unwrap_or_else(|| DEFAULT_KERNEL_DIR.into());
    let found = (|| {
        let vmlinuz = std::fs::read_dir(dir.join("boot"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("vmlinuz-"))?;
        let version = vmlinuz.file_name().unwrap().to_string_lossy().trim_start_matches("vmlinuz-").to_string();
        let modules = dir.join("lib/modules").join(version);
        let qemu = Command::new("qemu-system-x86_64").arg("--version").stdout(Stdio::null()).status().is_ok();
        (modules.is_dir() && qemu).then_some((vmlinuz, modules))
    })();
    match found {
        Some(k) => Some(k),
        None if std::env::var_os("BERTH_SKIP_VM_TESTS").is_some_and(|v| v == "1") => {
            eprintln!("SKIPPED (BERTH_SKIP_VM_TESTS=1): no guest kernel under {} or no QEMU", dir.display());
            None
        }
        None => panic!("no guest kernel under {} or no qemu-system-x86_64; tests/run provides both (or set BERTH_SKIP_VM_TESTS=1)", dir.display()),
    }
}

/// Lines `KEY=VALUE` the guest script printed after `R:`.
pub fn values(output: &str) -> std::collections::HashMap<String, String> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("R:"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}
