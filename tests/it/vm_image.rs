//! The guest's kernel and initramfs for `--isolation vm` (`berth::vm::kernel`,
//! `cpio`, `initramfs`): the cpio writer read back by the system's `cpio`,
//! module dependencies from `.modinfo`, `berth vm setup --deb` into the
//! store, and the generated initramfs booted under QEMU (TCG) where berth,
//! as `/init`, prints its version: its loader and libraries load in the
//! guest. berth runs as the unprivileged test user where the tests run as
//! root (as in CI).
//!
//! The kernel is Debian's cloud kernel as `tests/run` extracts it
//! (`/var/cache/berth-test/kernel`); the `.deb` for `berth vm setup` is
//! rebuilt from it with `dpkg-deb` (tests have no network).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth::paths::Paths;
use berth::vm::cpio;
use berth::vm::kernel::{self, GuestKernel, GUEST_MODULES};

use crate::common::*;
use crate::common::vm::test_kernel;

/// An environment whose berth runs as the test user when the tests run as root.
fn env() -> Env {
    if is_root() { Env::for_test_user() } else { Env::new() }
}

fn berth(env: &Env, args: &[&str]) -> Run {
    if is_root() { env.run_as_user(args) } else { env.run(args) }
}

fn paths(env: &Env) -> Paths {
    Paths { root: env.root.clone(), run_root: env.run_root.clone() }
}

/// A kernel package made from the extracted test kernel (its boot/ and
/// lib/modules/), world-readable for the test user, in a directory
/// removed with the returned guard.
fn kernel_deb(vmlinuz: &Path, modules: &Path) -> (tempfile::TempDir, PathBuf) {
    let version = modules.file_name().unwrap().to_string_lossy().into_owned();
    let dir = tempfile::Builder::new().prefix("berth-test-deb-").tempdir().unwrap();
    let top = dir.path();
    std::fs::set_permissions(top, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let stage = top.join("stage");
    std::fs::create_dir_all(stage.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(stage.join("boot")).unwrap();
    std::fs::create_dir_all(stage.join("lib/modules")).unwrap();
    std::fs::copy(vmlinuz, stage.join("boot").join(vmlinuz.file_name().unwrap())).unwrap();
    run_ok(Command::new("cp").arg("-a").arg(modules).arg(stage.join("lib/modules")));
    std::fs::write(
        stage.join("DEBIAN/control"),
        format!(
            "Package: linux-image-{version}\nVersion: 1\nArchitecture: amd64\nMaintainer: berth tests <tests@berth.invalid>\nDescription: test kernel\n"
        ),
    )
    .unwrap();
    let deb = top.join(format!("linux-image-{version}.deb"));
    // No compression: the package is only extracted again.
    run_ok(Command::new("dpkg-deb").args(["--root-owner-group", "-Znone", "-b"]).arg(&stage).arg(&deb).stdout(Stdio::null()));
    std::fs::remove_dir_all(&stage).unwrap();
    std::fs::set_permissions(&deb, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    (dir, deb)
}

/// Entries of an archive as `cpio -tv` lists them, with what `cpio -t`
/// thinks of the whole (it fails on a malformed archive).
fn cpio_list(archive: &Path) -> Vec<String> {
    let out = run_ok(Command::new("cpio").args(["-t", "--quiet", "-F"]).arg(archive));
    String::from_utf8(out).unwrap().lines().map(String::from).collect()
}

#[test]
fn vm_image_cpio_writer_reads_back_with_the_system_cpio() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host-file");
    let big = random_bytes(300_001, 7);
    std::fs::write(&host, &big).unwrap();
    let archive = dir.path().join("a.cpio");
    let mut w = cpio::Writer::new(std::fs::File::create(&archive).unwrap());
    w.dir("etc", 0o755).unwrap();
    w.file("/etc/hosts", 0o644, b"127.0.0.1 localhost\n").unwrap();
    w.dir("bin", 0o700).unwrap();
    w.file_from("bin/tool", 0o755, &host).unwrap();
    w.file("empty", 0o600, b"").unwrap();
    w.symlink("lib", "usr/lib").unwrap();
    w.symlink("etc/abs", "/etc/hosts").unwrap();
    w.finish().unwrap();
    assert_eq!(std::fs::metadata(&archive).unwrap().len() % 4, 0);

    let list = cpio_list(&archive);
    assert_eq!(list, ["etc", "etc/hosts", "bin", "bin/tool", "empty", "lib", "etc/abs"]);

    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    run_ok(Command::new("cpio").args(["-i", "-d", "--quiet", "--no-absolute-filenames", "-F"]).arg(&archive).current_dir(&out));
    assert_eq!(std::fs::read(out.join("etc/hosts")).unwrap(), b"127.0.0.1 localhost\n");
    assert_eq!(std::fs::read(out.join("bin/tool")).unwrap(), big);
    assert_eq!(std::fs::metadata(out.join("bin/tool")).unwrap().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::metadata(out.join("empty")).unwrap().len(), 0);
    assert_eq!(std::fs::read_link(out.join("lib")).unwrap(), Path::new("usr/lib"));
    assert_eq!(std::fs::read_link(out.join("etc/abs")).unwrap(), Path::new("/etc/hosts"));

    // Owners and times are 0 whoever wrote it: `cpio -tv` shows them.
    let verbose = run_ok(Command::new("cpio").args(["-tv", "--quiet", "--numeric-uid-gid", "-F"]).arg(&archive));
    for line in String::from_utf8(verbose).unwrap().lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((f[2], f[3]), ("0", "0"), "{line}");
        assert!(line.contains("1970"), "{line}");
    }
}

/// Dependencies come from each module's `.modinfo` (the package has no
/// modules.dep): each module once, after everything it depends on.
#[test]
fn vm_image_modules_load_dependencies_first() {
    let Some((vmlinuz, modules)) = test_kernel() else { return };
    let p = Paths { root: PathBuf::from("/nonexistent"), run_root: PathBuf::from("/nonexistent") };
    let k = GuestKernel::find(&p, Some(&vmlinuz), None).unwrap();
    assert_eq!(k.modules, modules);
    let order = kernel::modules_in_load_order(&k, GUEST_MODULES).unwrap();
    let names: Vec<String> = order.iter().map(|p| p.file_stem().unwrap().to_string_lossy().replace('-', "_")).collect();
    let pos = |n: &str| names.iter().position(|x| x == n).unwrap_or_else(|| panic!("{n} not in {names:?}"));
    for w in GUEST_MODULES {
        pos(w);
    }
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "{names:?}");
    for (dep, user) in [
        ("virtio_ring", "virtio_mmio"),
        ("virtio", "virtio_mmio"),
        ("virtio", "virtio_console"),
        ("virtio", "virtio_blk"),
        ("failover", "net_failover"),
        ("net_failover", "virtio_net"),
        ("fuse", "virtiofs"),
        ("virtio", "virtiofs"),
        ("libcrc32c", "erofs"),
    ] {
        assert!(pos(dep) < pos(user), "{dep} must load before {user}: {names:?}");
    }
    for rel in &order {
        assert!(rel.is_relative() && k.modules.join(rel).is_file(), "{}", rel.display());
    }
    let size: u64 = order.iter().map(|r| std::fs::metadata(k.modules.join(r)).unwrap().len()).sum();
    eprintln!("guest modules: {} files, {} KiB: {names:?}", order.len(), size >> 10);

    let err = kernel::modules_in_load_order(&k, &["virtio_blk", "no_such_module"]).unwrap_err().to_string();
    assert!(err.contains("no_such_module"), "{err}");
}

/// `berth vm setup --deb` keeps vmlinuz and only the guest's modules, in
/// the store, as the test user; a second setup replaces the first cleanly.
#[test]
fn vm_image_setup_from_a_deb_keeps_the_kernel_and_the_guest_modules() {
    let Some((vmlinuz, modules)) = test_kernel() else { return };
    let (_deb_dir, deb) = kernel_deb(&vmlinuz, &modules);
    let env = env();
    let version = modules.file_name().unwrap().to_string_lossy().into_owned();

    let before = berth(&env, &["vm", "initramfs"]);
    let line = before.provision_failure();
    assert!(line.contains("berth vm setup"), "{line}");

    let started = Instant::now();
    let r = berth(&env, &["vm", "setup", "--deb", deb.to_str().unwrap()]).ok();
    eprintln!("berth vm setup --deb: {:.1?}", started.elapsed());
    assert!(r.stdout.is_empty(), "stdout: {}", r.stdout);
    let store = env.root.join("vm/kernel");
    assert!(r.stderr.contains(&version) && r.stderr.contains(&store.display().to_string()), "{}", r.stderr);
    assert_eq!(std::fs::read_link(store.join("current")).unwrap(), Path::new(&version));

    let k = GuestKernel::find(&paths(&env), None, None).unwrap();
    assert_eq!(k.version, version);
    assert_eq!(std::fs::read(&k.vmlinuz).unwrap(), std::fs::read(&vmlinuz).unwrap());
    let kept: Vec<PathBuf> = walk(&k.modules).into_iter().filter(|p| p.extension().is_some_and(|e| e == "ko")).collect();
    let wanted = kernel::modules_in_load_order(&k, GUEST_MODULES).unwrap();
    assert_eq!(kept.len(), wanted.len(), "kept {kept:?}");
    let size: u64 = walk(&k.modules).iter().filter_map(|p| std::fs::symlink_metadata(p).ok()).filter(|m| m.is_file()).map(|m| m.len()).sum();
    eprintln!("kept in the store: modules {} KiB, vmlinuz {} KiB", size >> 10, std::fs::metadata(&k.vmlinuz).unwrap().len() >> 10);
    assert!(size < 4 << 20, "{size} bytes of modules kept");

    // Again: the same version replaced, nothing else left in vm/.
    berth(&env, &["vm", "setup", "--deb", deb.to_str().unwrap()]).ok();
    let mut entries: Vec<String> = std::fs::read_dir(&store).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    entries.sort();
    assert_eq!(entries, [version.clone(), "current".to_string()]);
    let vm: Vec<String> = std::fs::read_dir(env.root.join("vm")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(vm, ["kernel"], "temporary files left behind");

    // A package without a kernel: one line, the store untouched.
    let bad = env.path().join("bad.deb");
    let stage = env.path().join("bad");
    std::fs::create_dir_all(stage.join("DEBIAN")).unwrap();
    std::fs::write(stage.join("DEBIAN/control"), "Package: bad\nVersion: 1\nArchitecture: amd64\nMaintainer: t <t@t.invalid>\nDescription: bad\n").unwrap();
    run_ok(Command::new("dpkg-deb").args(["--root-owner-group", "-Znone", "-b"]).arg(&stage).arg(&bad).stdout(Stdio::null()));
    env.chown();
    let line = berth(&env, &["vm", "setup", "--deb", bad.to_str().unwrap()]).provision_failure();
    assert!(line.contains("vmlinuz"), "{line}");
    assert_eq!(GuestKernel::find(&paths(&env), None, None).unwrap(), k);
    let vm: Vec<String> = std::fs::read_dir(env.root.join("vm")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(vm, ["kernel"], "temporary files left behind");

    // And the kept kernel makes an initramfs.
    let path = berth(&env, &["vm", "initramfs"]).ok().stdout;
    assert!(Path::new(path.trim()).starts_with(env.root.join("vm/initramfs")), "{path}");
}

/// The generated initramfs boots: berth is /init, the kernel hands it the
/// words after `--`, and `--version` prints on the console. That needs the
/// loader and every library in place without ld.so.cache.
#[test]
fn vm_image_initramfs_boots_berth_in_a_guest() {
    let Some((vmlinuz, modules)) = test_kernel() else { return };
    let env = env();
    let started = Instant::now();
    let r = berth(&env, &["vm", "initramfs", "--kernel", vmlinuz.to_str().unwrap(), "--modules", modules.to_str().unwrap()]).ok();
    let build_time = started.elapsed();
    let archive = PathBuf::from(r.stdout.trim());
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    let size = std::fs::metadata(&archive).unwrap().len();
    eprintln!("initramfs: {} MiB in {build_time:.1?}", size >> 20);

    // What the guest init will read: the modules in load order, each in
    // the archive (through the lib -> usr/lib link where the host has one).
    let list = cpio_list(&archive);
    for want in ["init", "etc/passwd", "etc/group", "etc/resolv.conf", "etc/hosts", "etc/berth/modules", "dev/console", "proc", "newroot"] {
        assert!(list.iter().any(|e| e == want), "no {want} in {list:?}");
    }
    let text = run_ok(Command::new("cpio").args(["-i", "--quiet", "--to-stdout", "-F"]).arg(&archive).arg("etc/berth/modules"));
    let text = String::from_utf8(text).unwrap();
    let version = modules.file_name().unwrap().to_string_lossy().into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= GUEST_MODULES.len(), "{text}");
    let lib_is_link = list.iter().any(|e| e == "lib") && !list.iter().any(|e| e.starts_with("lib/"));
    for l in &lines {
        let rel = l.strip_prefix(&format!("/lib/modules/{version}/")).unwrap_or_else(|| panic!("{l}"));
        let in_archive = if lib_is_link { format!("usr/lib/modules/{version}/{rel}") } else { l[1..].to_string() };
        assert!(list.contains(&in_archive), "{in_archive} not in the archive");
    }

    let (output, elapsed, status) = boot(&vmlinuz, &archive, "--version", Duration::from_secs(60));
    eprintln!("guest boot to berth --version and power-off: {elapsed:.1?}");
    let want = format!("berth {}", env!("CARGO_PKG_VERSION"));
    assert!(output.lines().any(|l| l.trim() == want), "no {want:?} on the console:\n{output}");
    // init exited: the kernel panicked, and with panic=-1 and -no-reboot QEMU ended.
    assert!(output.contains("Attempted to kill init"), "{output}");
    assert!(status.success(), "qemu: {status}");
}

/// QEMU as the task describes it; returns the console, the time it ran and its status.
fn boot(vmlinuz: &Path, initrd: &Path, args: &str, timeout: Duration) -> (String, Duration, std::process::ExitStatus) {
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "512", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-no-reboot", "-serial", "stdio", "-kernel"])
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 loglevel=1 panic=-1 reboot=t tsc_early_khz=2000000 rdinit=/init -- {args}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut out);
        out
    });
    let finished = wait_until(timeout, || child.try_wait().unwrap().is_some());
    if !finished {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let elapsed = started.elapsed();
    let output = String::from_utf8_lossy(&reader.join().unwrap()).replace("\r\n", "\n");
    assert!(finished, "the guest ran past {timeout:?}; console:\n{output}");
    (output, elapsed, status)
}

/// A second build is the cached file; concurrent first builds agree on one
/// archive and leave no temporary files.
#[test]
fn vm_image_initramfs_is_cached_and_safe_to_build_concurrently() {
    let Some((vmlinuz, modules)) = test_kernel() else { return };
    let env = env();
    let args = ["vm", "initramfs", "--kernel", vmlinuz.to_str().unwrap(), "--modules", modules.to_str().unwrap()];
    let children: Vec<_> = (0..3)
        .map(|_| {
            let mut cmd = if is_root() { env.berth_as_user(&args) } else { env.berth(&args) };
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let paths: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        })
        .collect();
    assert!(paths.iter().all(|p| *p == paths[0]), "{paths:?}");
    let archive = PathBuf::from(paths[0].trim());
    let first = std::fs::metadata(&archive).unwrap();
    assert!(!cpio_list(&archive).is_empty());

    let started = Instant::now();
    let again = berth(&env, &args).ok();
    eprintln!("cached initramfs: {:.0?}", started.elapsed());
    assert_eq!(again.stdout, paths[0]);
    assert_eq!(std::fs::metadata(&archive).unwrap().ino(), first.ino(), "rebuilt instead of cached");

    let names: Vec<String> = std::fs::read_dir(archive.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.starts_with(".tmp-")), "{names:?}");
    assert_eq!(names.iter().filter(|n| n.starts_with("initramfs-")).count(), 1, "{names:?}");
}
