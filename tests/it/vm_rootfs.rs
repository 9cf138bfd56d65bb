//! `vm::rootfs::flatten`: an image's cached layers merged into a read-only
//! EROFS image by the unprivileged test user, checked with erofs-utils'
//! own readers (`dump.erofs`, `fsck.erofs --extract`).
//!
//! The tests run as root; each re-runs this test binary as `berthtest`
//! with one `#[ignore]`d child test selected, which imports an image from
//! an OCI layout, unpacks its layers and flattens them through berth's
//! library (the re-executed parts run in the berth binary: see
//! `reexec::use_executable`), and prints `R:key=value` lines.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth::paths::Paths;
use berth::provision::{Fetch, Provision};
use berth::vm::rootfs::flatten;

use crate::common::vm::values;
use crate::common::{self, berth_bin, test_name, wait_until, Comp, Image, Layer, LayoutEntry, TarBuilder, TEST_USER};
use crate::hostile::{dir, file, hardlink, symlink, tar};

const WORK: &str = "BERTH_VM_ROOTFS_DIR";
const BIN: &str = "BERTH_VM_ROOTFS_BERTH";
const MARK: &[u8] = b"berth-xattr-mark";

fn cap_v2() -> Vec<u8> {
    let mut v = vec![0u8; 20];
    v[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    v[4] = 0x20; // CAP_NET_BIND_SERVICE... any bit: the value is what is checked
    v
}

/// Two layers: the second deletes a file and makes a directory opaque.
fn small_image() -> Image {
    let lower = tar(&[
        dir("etc"),
        file("etc/keep", b"kept\n"),
        file("etc/gone", b"deleted above\n"),
        dir("opq").mode(0o750),
        file("opq/old", b"hidden above\n"),
        dir("bin"),
        file("bin/su", b"#!/bin/sh\n").mode(0o4755).mtime(1_500_000_000),
        dir("home").owner(0, 0),
        dir("home/u").owner(1000, 1000).mode(0o700),
        file("home/u/notes", b"mine\n").owner(1000, 1000).mode(0o640),
        dir("data"),
        file("data/a", b"linked\n"),
        hardlink("data/b", "data/a"),
        symlink("lnk", "/etc/keep"),
        file("cap", b"c").mode(0o755).xattr("security.capability", &cap_v2()),
        file("marked", b"m").xattr("user.berthmark", MARK),
    ]);
    let upper = tar(&[
        dir("etc"),
        file("etc/.wh.gone", b""),
        dir("opq").mode(0o750),
        file("opq/.wh..wh..opq", b""),
        file("opq/new", b"new\n").owner(1000, 1000),
    ]);
    Image::new(vec![Layer::new(&lower, Comp::Gzip, false), Layer::new(&upper, Comp::Gzip, false)])
}

/// About 100 MiB in 100 incompressible files, for the timing and the
/// interrupted build.
fn big_image() -> Image {
    let mut t = TarBuilder::new().dir("big", 0o755);
    for i in 0..100u64 {
        t = t.file(&format!("big/f{i:03}"), 0o644, &common::random_bytes(1 << 20, i));
    }
    Image::new(vec![Layer::new(&t.finish(), Comp::None, false)])
}

/// A work dir the test user owns, holding the image as an OCI layout and a
/// copy of this test binary it can execute.
fn prepare(img: &Image) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new().prefix("berth-vm-rootfs").tempdir_in("/tmp").unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    common::test_bin_copy(tmp.path());
    let work = tmp.path().join("work");
    fs::create_dir(&work).unwrap();
    common::write_oci_layout(&work.join("layout"), &[LayoutEntry::Image(img, "v1")]);
    common::run_ok(Command::new("chown").arg("-R").arg(format!("{TEST_USER}:")).arg(&work));
    (tmp, work)
}

fn child_cmd(tmp: &Path, work: &Path, test: &str) -> Command {
    let mut cmd = Command::new("runuser");
    // The re-executed berth logs what it did (overlay or copy) at debug.
    cmd.args(["-u", TEST_USER, "--", "env", "BERTH_LOG=berth=debug"]).arg(format!("{WORK}={}", work.display())).arg(format!("{BIN}={}", berth_bin().display()));
    cmd.arg(tmp.join("test-bin"));
    cmd.args(["--ignored", "--exact", &test_name(module_path!(), test), "--nocapture", "--test-threads=1"]);
    cmd
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Runs one child test to success; returns its `R:` values and output.
fn run_child(tmp: &Path, work: &Path, test: &str) -> (HashMap<String, String>, String) {
    let out = child_cmd(tmp, work, test).output().unwrap();
    let text = text(&out);
    assert!(out.status.success(), "child {test} failed:\n{text}");
    assert!(text.contains("1 passed"), "child {test} did not run:\n{text}");
    (values(&text), text)
}

fn child_work() -> PathBuf {
    PathBuf::from(std::env::var_os(WORK).expect("run by the vm_rootfs tests"))
}

/// The child's side: import, unpack, flatten twice; print what happened.
fn flatten_as_child() {
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).with_writer(std::io::stderr).try_init();
    let work = child_work();
    berth::reexec::use_executable(PathBuf::from(std::env::var_os(BIN).unwrap()));
    let paths = Paths { root: work.join("store"), run_root: work.join("run") };
    let prov = Provision::open(&paths, false, 0).unwrap();
    let layout = format!("oci:{}:v1", work.join("layout").display());
    let img = prov.images(&[layout], &Fetch { quiet: true, ..Default::default() }).unwrap().remove(0);
    let (dirs, _lease) = prov.layers(&img).unwrap();
    let t = Instant::now();
    let path = flatten(&paths, &prov.mapping, &dirs, 0).unwrap();
    let first = t.elapsed();
    let md = fs::metadata(&path).unwrap();
    let t = Instant::now();
    let again = flatten(&paths, &prov.mapping, &dirs, 0).unwrap();
    let second = t.elapsed();
    let md2 = fs::metadata(&again).unwrap();
    // libtest's "test NAME ... " has no newline yet.
    println!("\nR:path={}", path.display());
    println!("R:again={}", again.display());
    println!("R:same_file={}", md.ino() == md2.ino() && md.mtime_nsec() == md2.mtime_nsec() && md.mtime() == md2.mtime());
    println!("R:first_ms={}", first.as_millis());
    println!("R:second_us={}", second.as_micros());
    println!("R:size={}", md.len());
    println!("R:ino={}", md.ino());
}

#[test]
#[ignore = "run as berthtest by vm_rootfs_image_keeps_the_merged_tree"]
fn child_flatten() {
    flatten_as_child();
}

/// `dump.erofs --path=P`'s fields (`Uid`, `Links`, `Access`, `Xattr size`…).
fn dump(image: &Path, path: &str) -> HashMap<String, String> {
    let out = Command::new("dump.erofs").arg(format!("--path={path}")).arg(image).output().unwrap();
    assert!(out.status.success(), "dump.erofs --path={path}: {}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    // `Key: value` pairs, several on a line: the value is the next word.
    ["Uid", "Gid", "Access", "Links", "NID", "Xattr size"]
        .iter()
        .filter_map(|k| {
            let at = s.find(&format!("{k}: "))? + k.len() + 2;
            Some((k.to_string(), s[at..].split_whitespace().next()?.to_string()))
        })
        .collect()
}

/// An inode's `i_mode` as stored: erofs-utils 1.5's dump.erofs and
/// fsck.erofs show and extract only its permission bits, not setuid.
fn raw_mode(image: &Path, nid: &str) -> u32 {
    let b = fs::read(image).unwrap();
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as u64;
    // The superblock (at 1024): blkszbits at +12, meta_blkaddr at +40;
    // an inode (compact or extended) has i_mode at +4.
    let (blkszbits, meta) = (b[1024 + 12] as u64, u32_at(1024 + 40));
    let at = (meta << blkszbits) + nid.parse::<u64>().unwrap() * 32 + 4;
    u16_at(at as usize) as u32
}

#[test]
fn vm_rootfs_image_keeps_the_merged_tree() {
    let (tmp, work) = prepare(&small_image());
    let (v, out) = run_child(tmp.path(), &work, "child_flatten");
    let image = PathBuf::from(&v["path"]);
    assert_eq!(v["again"], v["path"], "{out}");
    assert_eq!(v["same_file"], "true", "the second call reuses the image: {out}");
    assert!(image.starts_with(work.join("store/vm/rootfs")) && image.extension().unwrap() == "erofs", "{image:?}");
    // Nothing of the build is left beside the image.
    let left: Vec<String> = fs::read_dir(image.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| !n.starts_with(".tmp-")), "{left:?}");
    let (uid, _) = common::test_user_ids();
    assert_eq!(fs::metadata(&image).unwrap().uid(), uid, "the image belongs to the user");
    assert!(out.contains("made an EROFS image") && !out.contains("copying them instead"), "an overlay, not a copy: {out}");
    eprintln!("small image: first call {} ms, cached call {} us, {} bytes", v["first_ms"], v["second_us"], v["size"]);

    // Owners as in the image (0 and 1000), not the test user's ids.
    let f = |p: &str| dump(&image, p);
    let su = f("/bin/su");
    assert_eq!((su["Uid"].as_str(), su["Gid"].as_str()), ("0", "0"), "{su:?}");
    assert_eq!(raw_mode(&image, &su["NID"]), 0o104755, "setuid kept");
    let notes = f("/home/u/notes");
    assert_eq!((notes["Uid"].as_str(), notes["Gid"].as_str()), ("1000", "1000"), "{notes:?}");
    assert!(notes["Access"].starts_with("0640"), "{notes:?}");
    assert!(f("/home/u")["Access"].starts_with("0700"));
    assert_eq!(f("/opq/new")["Uid"], "1000");
    assert_eq!(f("/data/a")["Links"], "2", "a hard link stays one inode");
    assert_eq!(f("/data/a")["NID"], f("/data/b")["NID"]);
    // Xattrs: the image's are kept, overlay's own (the opaque mark) are not.
    assert_ne!(f("/cap")["Xattr size"], "0", "security.capability kept");
    assert_ne!(f("/marked")["Xattr size"], "0", "user xattr kept");
    assert_eq!(f("/opq")["Xattr size"], "0", "no overlay xattr on the opaque dir");
    let bytes = fs::read(&image).unwrap();
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(has(MARK) && has(&cap_v2()), "xattr values are in the image");
    assert!(!has(b"overlay.opaque") && !has(b"overlay.whiteout"), "no overlay xattrs in the image");

    // Contents, through erofs-utils' own extraction (as root: owners kept).
    let out_dir = tmp.path().join("extract");
    let ex = Command::new("fsck.erofs").arg(format!("--extract={}", out_dir.display())).arg("--preserve").arg(&image).output().unwrap();
    assert!(ex.status.success(), "fsck.erofs: {}", text(&ex));
    let r = |p: &str| fs::read(out_dir.join(p)).unwrap();
    assert_eq!(r("etc/keep"), b"kept\n");
    assert_eq!(r("opq/new"), b"new\n");
    assert_eq!(r("data/b"), b"linked\n");
    assert!(!out_dir.join("etc/gone").exists(), "whited out");
    assert!(!out_dir.join("opq/old").exists(), "hidden by the opaque dir");
    assert_eq!(fs::read_link(out_dir.join("lnk")).unwrap(), Path::new("/etc/keep"));
    let su = fs::symlink_metadata(out_dir.join("bin/su")).unwrap();
    assert_eq!((su.uid(), su.mode() & 0o777), (0, 0o755));
    assert_eq!(su.mtime(), 1_500_000_000, "mtimes kept");
    assert_eq!(fs::symlink_metadata(out_dir.join("home/u/notes")).unwrap().uid(), 1000);
    for p in common::walk(&out_dir) {
        let md = fs::symlink_metadata(&p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.starts_with(".wh."), "whiteout file {p:?}");
        assert!(!(md.file_type().is_char_device() && md.rdev() == 0), "whiteout device {p:?}");
    }
}

/// Two processes flattening the same image at once: one image, made once.
#[test]
fn vm_rootfs_concurrent_calls_share_one_image() {
    let (tmp, work) = prepare(&small_image());
    let children: Vec<Child> = (0..2)
        .map(|_| child_cmd(tmp.path(), &work, "child_flatten").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    let outs: Vec<(HashMap<String, String>, String)> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let t = text(&out);
            assert!(out.status.success() && t.contains("1 passed"), "{t}");
            (values(&t), t)
        })
        .collect();
    assert_eq!(outs[0].0["path"], outs[1].0["path"]);
    assert_eq!(outs[0].0["ino"], outs[1].0["ino"], "one image: {}\n{}", outs[0].1, outs[1].1);
    let made = outs.iter().filter(|(_, t)| t.contains("made an EROFS image")).count();
    assert_eq!(made, 1, "made once: {}\n{}", outs[0].1, outs[1].1);
}

#[test]
#[ignore = "run as berthtest by vm_rootfs_too_many_layers_for_overlay_are_copied"]
fn child_flatten_many() {
    flatten_as_child();
}

/// An image with more layers than one overlay mount's options can name
/// (a page) is copied instead, with the same result.
#[test]
fn vm_rootfs_too_many_layers_for_overlay_are_copied() {
    let n = 48;
    let mut layers: Vec<Layer> = (0..n)
        .map(|i| Layer::new(&tar(&[dir("l"), file(&format!("l/{i}"), format!("{i}").as_bytes()).owner(i, i)]), Comp::None, false))
        .collect();
    layers.push(Layer::new(&tar(&[dir("l"), file("l/.wh.0", b"")]), Comp::None, false));
    let (tmp, work) = prepare(&Image::new(layers));
    let (v, out) = run_child(tmp.path(), &work, "child_flatten_many");
    let image = PathBuf::from(&v["path"]);
    assert!(out.contains("copying them instead") && out.contains("bytes of options"), "{out}");
    eprintln!("{n} layers (copied): first call {} ms", v["first_ms"]);
    let out_dir = tmp.path().join("extract");
    let ex = Command::new("fsck.erofs").arg(format!("--extract={}", out_dir.display())).arg("--preserve").arg(&image).output().unwrap();
    assert!(ex.status.success(), "fsck.erofs: {}", text(&ex));
    assert!(!out_dir.join("l/0").exists() && !out_dir.join("l/.wh.0").exists(), "{out}");
    for i in 1..n {
        let p = out_dir.join(format!("l/{i}"));
        assert_eq!(fs::read_to_string(&p).unwrap(), i.to_string());
        assert_eq!(fs::metadata(&p).unwrap().uid() as u64, i, "owner of {p:?}");
    }
    let left: Vec<String> = fs::read_dir(image.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| !n.starts_with(".tmp-")), "{left:?}");
}

#[test]
#[ignore = "run as berthtest by vm_rootfs_an_interrupted_build_leaves_no_image"]
fn child_flatten_big() {
    flatten_as_child();
}

/// The child (the test binary under runuser) once it exists.
fn child_pid(runuser: &Child) -> i32 {
    let mut pid = None;
    assert!(wait_until(Duration::from_secs(10), || {
        pid = common::processes_with("test-bin").into_iter().map(|(p, _)| p).find(|&p| {
            fs::read_to_string(format!("/proc/{p}/stat")).ok().and_then(|s| s.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).map(str::to_owned))
                == Some(runuser.id().to_string())
        });
        pid.is_some()
    }));
    pid.unwrap()
}

/// SIGKILL while mkfs.erofs writes: no image, no process left; the next
/// call makes it (and measures a ~100 MiB image).
#[test]
fn vm_rootfs_an_interrupted_build_leaves_no_image() {
    let (tmp, work) = prepare(&big_image());
    let rootfs_dir = work.join("store/vm/rootfs");
    let mut runuser = child_cmd(tmp.path(), &work, "child_flatten_big").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let child = child_pid(&runuser);
    let writing = || {
        fs::read_dir(&rootfs_dir).into_iter().flatten().flatten().any(|e| {
            e.file_name().to_string_lossy().starts_with(".tmp-") && fs::metadata(e.path().join("image.erofs")).map(|m| m.len() > 0).unwrap_or(false)
        })
    };
    assert!(wait_until(Duration::from_secs(120), || writing() || runuser.try_wait().unwrap().is_some()), "no build started");
    assert!(runuser.try_wait().unwrap().is_none(), "the build ended before it could be interrupted");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), nix::sys::signal::Signal::SIGKILL).unwrap();
    runuser.wait().unwrap();
    let needle = rootfs_dir.to_string_lossy().into_owned();
    assert!(wait_until(Duration::from_secs(10), || common::processes_with(&needle).is_empty()), "left running: {:?}", common::processes_with(&needle));
    let images: Vec<_> = fs::read_dir(&rootfs_dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".erofs")).collect();
    assert!(images.is_empty(), "a partial image under its final name");

    let (v, out) = run_child(tmp.path(), &work, "child_flatten_big");
    let size: u64 = v["size"].parse().unwrap();
    assert!(size > 100 << 20, "{out}");
    let left: Vec<String> = fs::read_dir(&rootfs_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| !n.starts_with(".tmp-")), "the killed build's leftovers are removed: {left:?}");
    eprintln!("~100 MiB image ({size} bytes): flatten {} ms, cached call {} us", v["first_ms"], v["second_us"]);
    let _ = fs::remove_dir_all(tmp.path()); // big: do not wait for the TempDir
}

/// Without mkfs.erofs on PATH: one line naming the package.
#[test]
fn vm_rootfs_missing_mkfs_names_the_package() {
    let out = Command::new(std::env::current_exe().unwrap())
        .env("PATH", "/nonexistent")
        .env(WORK, "/nonexistent")
        .args(["--ignored", "--exact", &test_name(module_path!(), "child_missing_mkfs"), "--nocapture", "--test-threads=1"])
        .output()
        .unwrap();
    let t = text(&out);
    assert!(out.status.success() && t.contains("1 passed"), "{t}");
}

#[test]
#[ignore = "run without mkfs.erofs on PATH by vm_rootfs_missing_mkfs_names_the_package"]
fn child_missing_mkfs() {
    let tmp = tempfile::tempdir().unwrap();
    let paths = Paths { root: tmp.path().join("store"), run_root: tmp.path().join("run") };
    let mapping = berth::userns::IdMapping::for_current_user().unwrap();
    let layer = tmp.path().join("layers/rootless-x/0123");
    let err = flatten(&paths, &mapping, &[layer], 0).unwrap_err().to_string();
    assert!(err.contains("erofs-utils") && !err.contains('\n'), "{err}");
    assert!(!tmp.path().join("store/vm/rootfs").exists(), "nothing made");
}
