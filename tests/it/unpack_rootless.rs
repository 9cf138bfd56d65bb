//! Unpacking as an unprivileged user: plainly (every owner squashed to the
//! user, device nodes skipped) and as uid 0 of a user namespace mapped to
//! the user's subordinate range (`unshare --map-auto --map-root-user`,
//! through newuidmap), where tar owners are kept and land on disk as
//! mapped ids.
//!
//! The tests run as root; each re-runs this test binary as `berthtest`
//! with one `#[ignore]`d child test selected, and checks what the child
//! left on disk.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use berth::image::digest::Digest;
use berth::unpack::cache::{LayerCache, LayerSource};
use berth::unpack::{apply_layer, ErrorKind, IdPolicy, UnpackOptions, WhiteoutMode};
use crate::common::{test_name, test_user_ids, TEST_USER};
use crate::hostile::*;

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const WORK: &str = "BERTH_UNPACK_CHILD_DIR";

fn subid_start(file: &str) -> u32 {
    let text = fs::read_to_string(file).unwrap();
    let line = text.lines().find(|l| l.starts_with(&format!("{TEST_USER}:"))).expect("berthtest has a subordinate range");
    line.split(':').nth(1).unwrap().parse().unwrap()
}

fn image() -> Vec<Entry> {
    vec![
        dir("etc"),
        file("etc/passwd", b"root:x:0:0\n"),
        dir("home").owner(0, 0),
        dir("home/user").owner(1000, 1000).mode(0o750),
        file("home/user/.profile", b"x").owner(1000, 1000),
        file("etc/last", b"max").owner(65535, 65535),
        symlink("home/user/link", "/etc/passwd").owner(1000, 1000),
        chardev("dev-null", 1, 3).mode(0o666),
        fifo("pipe"),
        file("su", b"s").mode(0o4755),
        file("cap", b"c").xattr("security.capability", &{
            let mut v = vec![0u8; 20];
            v[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
            v
        }),
        file("trusted", b"t").xattr("trusted.x", b"1").xattr("security.selinux", b"system_u:object_r:bin_t:s0"),
        dir("ro").mode(0o555),
        file("ro/inside", b"i"),
        file("gone", b"g"),
    ]
}

fn upper() -> Vec<Entry> {
    vec![file(".wh.gone", b""), dir("ro").mode(0o555), file("ro/later", b"l")]
}

/// A work dir the user owns, holding the layer blobs and a copy of this
/// test binary it can execute.
fn prepare() -> (tempfile::TempDir, PathBuf) {
    let (uid, gid) = test_user_ids();
    let tmp = tempfile::Builder::new().prefix("berth-rootless").tempdir_in("/tmp").unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    crate::common::test_bin_copy(tmp.path());
    let work = tmp.path().join("work");
    fs::create_dir(&work).unwrap();
    fs::write(work.join("l1"), gzip(&tar(&image()))).unwrap();
    fs::write(work.join("l2"), gzip(&tar(&upper()))).unwrap();
    fs::write(work.join("bad"), gzip(&tar(&[file("ok", b""), file("usr/big", b"").owner(70000, 0)]))).unwrap();
    for p in ["l1", "l2", "bad", ""] {
        std::os::unix::fs::chown(work.join(p), Some(uid), Some(gid)).unwrap();
    }
    (tmp, work)
}

/// Runs one child test; returns its output.
fn run_child(tmp: &Path, work: &Path, test: &str, userns: bool) -> String {
    let exe = tmp.join("test-bin");
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", TEST_USER, "--"]);
    if userns {
        cmd.args(["unshare", "--map-auto", "--map-root-user"]);
    }
    cmd.arg("env").arg(format!("{WORK}={}", work.display())).arg(&exe);
    cmd.args(["--ignored", "--exact", &test_name(module_path!(), test), "--nocapture", "--test-threads=1"]);
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child {test} failed:\n{text}");
    assert!(text.contains("1 passed"), "child {test} did not run:\n{text}");
    text
}

/// Logs of the child to its stderr, as berth's CLI does.
fn log_to_stderr() {
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).with_writer(std::io::stderr).try_init();
}

/// Unwritable xattrs: one warning for the layer that has them, whatever
/// their number.
fn assert_one_xattr_warning(text: &str) {
    let n = text.matches("skipping extended attributes").count();
    assert_eq!(n, 1, "{text}");
}

fn sources(work: &Path) -> Vec<LayerSource> {
    ["l1", "l2"]
        .iter()
        .map(|n| {
            let raw = {
                use std::io::Read;
                let mut out = Vec::new();
                flate2::read::MultiGzDecoder::new(fs::File::open(work.join(n)).unwrap()).read_to_end(&mut out).unwrap();
                out
            };
            LayerSource { blob: work.join(n), media_type: GZIP.into(), diff_id: Digest::of(&raw) }
        })
        .collect()
}

fn child_work() -> PathBuf {
    PathBuf::from(std::env::var_os(WORK).expect("run by the rootless tests"))
}

// --- plain unprivileged user: squash -------------------------------------

#[test]
#[ignore = "run as berthtest by rootless_squash"]
fn child_squash() {
    log_to_stderr();
    let work = child_work();
    let cache = LayerCache::open(&work.join("store"), "rootless-squash", IdPolicy::Squash).unwrap();
    let dirs = cache.ensure(&sources(&work)).unwrap();
    let rootfs = work.join("rootfs");
    fs::create_dir(&rootfs).unwrap();
    cache.flatten(&dirs, &rootfs).unwrap();
    // Keep refuses what cannot be owned here.
    let out = work.join("keep");
    fs::create_dir(&out).unwrap();
    let o = UnpackOptions::new("keep", WhiteoutMode::Flatten, IdPolicy::Keep { max_uid: 65535, max_gid: 65535 });
    let err = apply_layer(&tar(&[file("f", b"").owner(1000, 1000)])[..], &out, &o).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::Io { op: "setting an owner", .. }), "{err}");
    // gc works on read-only directories the user made.
    assert_eq!(cache.gc(&Default::default()).unwrap(), 2);
}

#[test]
fn rootless_squash() {
    let (tmp, work) = prepare();
    let text = run_child(tmp.path(), &work, "child_squash", false);
    assert_one_xattr_warning(&text);
    let (uid, gid) = test_user_ids();
    let root = work.join("rootfs");
    for p in ["etc/passwd", "home/user", "home/user/.profile", "etc/last", "su", "ro/later"] {
        let md = fs::symlink_metadata(root.join(p)).unwrap();
        assert_eq!((md.uid(), md.gid()), (uid, gid), "{p}");
    }
    assert!(fs::symlink_metadata(root.join("dev-null")).is_err(), "device node skipped");
    assert!(fs::symlink_metadata(root.join("pipe")).unwrap().file_type().is_fifo());
    assert!(!root.join("gone").exists());
    assert_eq!(fs::metadata(root.join("su")).unwrap().mode() & 0o7777, 0o4755);
    assert_eq!(fs::metadata(root.join("ro")).unwrap().mode() & 0o7777, 0o555);
    assert_eq!(fs::read(root.join("ro/later")).unwrap(), b"l");
    assert_eq!(fs::read_link(root.join("home/user/link")).unwrap(), Path::new("/etc/passwd"));
}

// --- user namespace with the subordinate range: keep ----------------------

#[test]
#[ignore = "run as uid 0 of berthtest's user namespace by rootless_userns_keep"]
fn child_userns_keep() {
    log_to_stderr();
    let work = child_work();
    let keep = IdPolicy::Keep { max_uid: 65535, max_gid: 65535 };
    let cache = LayerCache::open(&work.join("store"), "rootless-keep", keep).unwrap();
    let dirs = cache.ensure(&sources(&work)).unwrap();
    let rootfs = work.join("rootfs");
    fs::create_dir(&rootfs).unwrap();
    cache.flatten(&dirs, &rootfs).unwrap();
    // Inside, owners read back as in the image.
    let md = fs::metadata(rootfs.join("home/user/.profile")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 1000));
    // An id beyond the mapping is refused, naming the file and the need.
    let bad = LayerSource { blob: work.join("bad"), media_type: GZIP.into(), diff_id: Digest::of(b"unused") };
    let err = cache.ensure(&[bad]).unwrap_err().to_string();
    assert!(err.contains("\"usr/big\"") && err.contains("uid 70000") && err.contains("70001"), "{err}");
}

#[test]
fn rootless_userns_keep() {
    let (tmp, work) = prepare();
    let text = run_child(tmp.path(), &work, "child_userns_keep", true);
    assert_one_xattr_warning(&text);
    let (uid, gid) = test_user_ids();
    let (subuid, subgid) = (subid_start("/etc/subuid"), subid_start("/etc/subgid"));
    // Container id n >= 1 is subuid + n - 1 on disk; 0 is the user.
    let host = |id: u32, base: u32, own: u32| if id == 0 { own } else { base + id - 1 };
    let root = work.join("rootfs");
    for (p, id) in [("etc/passwd", 0), ("home/user", 1000), ("home/user/.profile", 1000), ("home/user/link", 1000), ("etc/last", 65535)] {
        let md = fs::symlink_metadata(root.join(p)).unwrap();
        assert_eq!((md.uid(), md.gid()), (host(id, subuid, uid), host(id, subgid, gid)), "{p}");
    }
    assert!(fs::symlink_metadata(root.join("dev-null")).is_err(), "device node skipped in a user namespace");
    assert_eq!(fs::metadata(root.join("su")).unwrap().mode() & 0o7777, 0o4755);
    // The file capability is stored for the namespace's root (v3, root id
    // = the user), so it is effective inside the container only.
    let c = std::ffi::CString::new(root.join("cap").into_os_string().into_encoded_bytes()).unwrap();
    let mut v = vec![0u8; 64];
    let n = unsafe { libc::getxattr(c.as_ptr(), c"security.capability".as_ptr(), v.as_mut_ptr().cast(), v.len()) };
    assert_eq!(n, 24, "v3 capability");
    assert_eq!(u32::from_le_bytes(v[20..24].try_into().unwrap()), uid);
    // The cached layer dir holds the overlay whiteout, owned by the mapping.
    let cache_dir = work.join("store/layers/rootless-keep");
    let l2 = fs::read_dir(&cache_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| fs::symlink_metadata(p.join("gone")).is_ok_and(|m| m.file_type().is_char_device()))
        .expect("the upper layer dir");
    assert_eq!(fs::symlink_metadata(l2.join("gone")).unwrap().rdev(), 0);
}
