//! A real layer sequence (whiteouts, opaque dirs, hard links, symlinks,
//! xattrs, mtimes, setuid; gzip multi-member and zstd) applied three ways
//! that must agree: layer by layer into one rootfs (flatten mode), through
//! the layer cache and `flatten`, and as an overlayfs mount of the cached
//! layer dirs (`userxattr`).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use berth::image::digest::Digest;
use berth::unpack::cache::{overlay_mount_options, LayerCache, LayerSource};
use berth::unpack::{apply_layer, decompress, ErrorKind, IdPolicy, UnpackOptions, WhiteoutMode};
use crate::hostile::*;

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

fn cap_v3() -> Vec<u8> {
    let mut v = vec![0u8; 24];
    v[..4].copy_from_slice(&0x0300_0001u32.to_le_bytes());
    v[4..8].copy_from_slice(&0x400u32.to_le_bytes());
    v[20..24].copy_from_slice(&100000u32.to_le_bytes());
    v
}

fn lower() -> Vec<Entry> {
    vec![
        dir("etc").mtime(1000),
        file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
        file("etc/shadow", b"root:*:1::::::\n").mode(0o640).owner(0, 42),
        dir("usr"),
        dir("usr/bin").mtime(3000),
        file("usr/bin/tool", b"#!/bin/sh\necho tool\n").mode(0o755),
        hardlink("usr/bin/tool2", "usr/bin/tool"),
        file("usr/bin/su", b"setuid").mode(0o4755),
        file("usr/bin/ping", b"caps").mode(0o755).xattr("security.capability", &cap_v3()),
        symlink("bin", "usr/bin"),
        dir("opt"),
        dir("opt/app"),
        file("opt/app/a", b"a"),
        file("opt/app/b", b"b"),
        dir("opt/app/sub"),
        file("opt/app/sub/c", b"c"),
        file("gone", b"x"),
        dir("gonedir"),
        file("gonedir/inner", b"inner"),
        dir("re"),
        file("re/old", b"old"),
        dir("podman"),
        file("podman/lowerfile", b"kept"),
        file("tagged", b"t").xattr("user.test", b"hello"),
        dir("data").mtime(12345).owner(1000, 1000),
        file("data/f", b"data").mtime(2000).owner(1000, 1000),
        file("big", &vec![7u8; 300_000]),
        dir("lib"),
        dir("lib/x").mtime(777),
        file("lib/x/old", b"old"),
    ]
}

fn upper() -> Vec<Entry> {
    vec![
        file(".wh.gone", b""),
        file(".wh.gonedir", b""),
        dir("opt"),
        dir("opt/app").mtime(5000),
        file("opt/app/.wh..wh..opq", b""),
        file("opt/app/new", b"n"),
        dir("etc").mtime(1000),
        file("etc/passwd", b"root:x:0:0::/root:/bin/bash\n"),
        file(".wh.re", b""),
        dir("re").mtime(6000),
        file("re/new", b"new"),
        dir("podman").xattr("user.overlay.opaque", b"y"),
        // Whiteout of a path this same layer writes: ignored.
        file("mine", b"mine"),
        file(".wh.mine", b""),
        // Whiteout of a directory this layer wrote into (no entry for the
        // directory itself): the lower content goes, this layer's stays.
        dir("lib"),
        file("lib/x/only", b"only"),
        file("lib/.wh.x", b""),
    ]
}

/// Two gzip members (a parallel compressor's output), or zstd.
fn blobs(dir: &Path) -> Vec<LayerSource> {
    let l1 = tar(&lower());
    let cut = 512 * 4;
    let mut gz = gzip(&l1[..cut]);
    gz.extend(gzip(&l1[cut..]));
    let l2 = tar(&upper());
    let zs = zstd::encode_all(&l2[..], 3).unwrap();
    fs::write(dir.join("l1"), &gz).unwrap();
    fs::write(dir.join("l2"), &zs).unwrap();
    vec![
        LayerSource { blob: dir.join("l1"), media_type: GZIP.into(), diff_id: Digest::of(&l1) },
        LayerSource { blob: dir.join("l2"), media_type: ZSTD.into(), diff_id: Digest::of(&l2) },
    ]
}

fn keep() -> IdPolicy {
    IdPolicy::Keep { max_uid: 65535, max_gid: 65535 }
}

fn apply_flatten(layers: &[LayerSource], dest: &Path) {
    for l in layers {
        let r = decompress(&l.media_type, fs::File::open(&l.blob).unwrap()).unwrap();
        let mut o = UnpackOptions::new(l.diff_id.to_string(), WhiteoutMode::Flatten, keep());
        o.diff_id = Some(l.diff_id.clone());
        let stats = apply_layer(r, dest, &o).unwrap();
        assert_eq!(stats.diff_id, l.diff_id);
    }
}

fn xattrs(p: &Path) -> Vec<String> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in buf[..n as usize].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if !name.starts_with("user.") {
            continue;
        }
        let cn = std::ffi::CString::new(name.clone()).unwrap();
        let mut v = vec![0u8; 256];
        let len = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        v.truncate(len.max(0) as usize);
        out.push(format!("{name}={}", String::from_utf8_lossy(&v)));
    }
    out.sort();
    out
}

/// Type, mode, owner, size, content, link target, mtime and user xattrs
/// of everything under `root`.
fn tree(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, p: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let mut names: Vec<_> = fs::read_dir(p).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for n in names {
            let md = fs::symlink_metadata(&n).unwrap();
            let ft = md.file_type();
            let what = if ft.is_symlink() {
                format!("link {:?}", fs::read_link(&n).unwrap())
            } else if ft.is_dir() {
                "dir".to_string()
            } else if ft.is_file() {
                format!("file {} {}", md.size(), sha256(&fs::read(&n).unwrap()))
            } else if ft.is_char_device() {
                format!("chr {}", md.rdev())
            } else {
                "other".to_string()
            };
            let rel = n.strip_prefix(root).unwrap().to_path_buf();
            out.insert(
                rel,
                format!("{what} mode={:o} {}:{} mtime={} {:?}", md.mode() & 0o7777, md.uid(), md.gid(), md.mtime(), xattrs(&n)),
            );
            if ft.is_dir() {
                walk(root, &n, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

fn check_expected(root: &Path) {
    let read = |p: &str| fs::read(root.join(p)).unwrap();
    assert_eq!(read("etc/passwd"), b"root:x:0:0::/root:/bin/bash\n");
    assert!(!root.join("gone").exists() && !root.join("gonedir").exists());
    // Opaque: the lower children of opt/app are gone, the new one is there.
    let mut app: Vec<_> = fs::read_dir(root.join("opt/app")).unwrap().map(|e| e.unwrap().file_name()).collect();
    app.sort();
    assert_eq!(app, vec!["new"]);
    // Whited out then recreated: only the new content.
    let re: Vec<_> = fs::read_dir(root.join("re")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(re, vec!["new"]);
    // An image's own user.overlay.opaque does not hide anything.
    assert_eq!(read("podman/lowerfile"), b"kept");
    assert_eq!(read("mine"), b"mine");
    let x: Vec<_> = fs::read_dir(root.join("lib/x")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(x, vec!["only"]);
    assert_eq!(fs::read_link(root.join("bin")).unwrap(), Path::new("usr/bin"));
    let md = fs::metadata(root.join("usr/bin/su")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o4755);
    let md = fs::metadata(root.join("data")).unwrap();
    assert_eq!((md.mtime(), md.uid()), (12345, 1000));
    assert_eq!(fs::metadata(root.join("data/f")).unwrap().mtime(), 2000);
    assert_eq!(fs::metadata(root.join("etc/shadow")).unwrap().gid(), 42);
    assert_eq!(xattrs(&root.join("tagged")), vec!["user.test=hello"]);
}

#[test]
fn layer_sequence_flatten_cache_and_overlay_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = blobs(tmp.path());

    // (A) applied one after the other.
    let a = tmp.path().join("a");
    fs::create_dir(&a).unwrap();
    apply_flatten(&layers, &a);
    check_expected(&a);
    let t = |p: &str| fs::metadata(a.join(p)).unwrap().ino();
    assert_eq!(t("usr/bin/tool"), t("usr/bin/tool2"));
    // security.capability v3 was written as v2 (no root id).
    let mut v = vec![0u8; 64];
    let c = std::ffi::CString::new(a.join("usr/bin/ping").into_os_string().into_encoded_bytes()).unwrap();
    let n = unsafe { libc::getxattr(c.as_ptr(), c"security.capability".as_ptr(), v.as_mut_ptr().cast(), v.len()) };
    assert_eq!(n, 20, "v2 capability");
    assert_eq!(&v[..4], &0x0200_0001u32.to_le_bytes());

    // (B) the cache, in overlay form, then flattened.
    let store = tmp.path().join("store");
    let cache = LayerCache::open(&store, "test-key", keep()).unwrap();
    let dirs = cache.ensure(&layers).unwrap();
    assert_eq!(dirs, vec![store.join("layers/test-key").join(layers[0].diff_id.hex()), cache.layer_dir(&layers[1].diff_id)]);
    let l2 = &dirs[1];
    let wh = fs::symlink_metadata(l2.join("gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "whiteout is c 0 0");
    assert_eq!(xattrs(&l2.join("opt/app")), vec!["user.overlay.opaque=y"]);
    assert_eq!(xattrs(&l2.join("re")), vec!["user.overlay.opaque=y"], "recreated after a whiteout");
    assert_eq!(xattrs(&l2.join("podman")), vec!["user.overlay.overlay.opaque=y"], "escaped");
    let b = tmp.path().join("b");
    fs::create_dir(&b).unwrap();
    cache.flatten(&dirs, &b).unwrap();
    check_expected(&b);
    assert_eq!(tree(&a), tree(&b));
    let t = |p: &str| fs::metadata(b.join(p)).unwrap().ino();
    assert_eq!(t("usr/bin/tool"), t("usr/bin/tool2"));
    assert_ne!(t("usr/bin/tool"), fs::metadata(dirs[0].join("usr/bin/tool")).unwrap().ino(), "copied, not linked to the cache");

    // A second ensure is free: nothing is unpacked again.
    let before = fs::metadata(&dirs[0]).unwrap().ino();
    let again = std::time::Instant::now();
    assert_eq!(cache.ensure(&layers).unwrap(), dirs);
    assert!(again.elapsed() < std::time::Duration::from_millis(50));
    assert_eq!(fs::metadata(&dirs[0]).unwrap().ino(), before);

    // (C) overlayfs over the cached dirs, as the pod runtime mounts it.
    let (upper, work, merged) = (tmp.path().join("u"), tmp.path().join("w"), tmp.path().join("m"));
    for d in [&upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    let opts = overlay_mount_options(&dirs, &upper, &work).unwrap();
    nix::mount::mount(Some("overlay"), &merged, Some("overlay"), nix::mount::MsFlags::empty(), Some(opts.as_str()))
        .expect("mount overlay (tests run as root)");
    let result = std::panic::catch_unwind(|| {
        check_expected(&merged);
        let mut m = tree(&merged);
        let mut a = tree(&a);
        // The merged root's own entry is not in either; overlay shows the
        // upper dir's mtime for merged directories, which is the same.
        m.retain(|k, _| !k.as_os_str().is_empty());
        a.retain(|k, _| !k.as_os_str().is_empty());
        assert_eq!(a, m);
        // Writing in the container never touches the cache.
        fs::write(merged.join("etc/passwd"), "changed").unwrap();
    });
    nix::mount::umount(&merged).unwrap();
    result.unwrap();
    assert_eq!(fs::read(dirs[0].join("etc/passwd")).unwrap(), b"root:x:0:0::/root:/bin/sh\n");
}

#[test]
fn diff_id_mismatch_names_the_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tar(&[file("f", b"x")]);
    let mut o = UnpackOptions::new("sha256:layer-one", WhiteoutMode::Flatten, IdPolicy::Squash);
    o.diff_id = Some(Digest::of(b"something else"));
    let err = apply_layer(&data[..], tmp.path(), &o).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::DiffIdMismatch { .. }));
    assert!(err.to_string().starts_with("layer sha256:layer-one: uncompressed digest"), "{err}");

    // Through the cache: nothing is left behind.
    fs::write(tmp.path().join("blob"), gzip(&data)).unwrap();
    let cache = LayerCache::open(&tmp.path().join("store"), "k", IdPolicy::Squash).unwrap();
    let bad = LayerSource { blob: tmp.path().join("blob"), media_type: DOCKER_GZIP.into(), diff_id: Digest::of(b"wrong") };
    let err = cache.ensure(&[bad]).unwrap_err().to_string();
    assert!(err.contains("does not match the diff_id"), "{err}");
    let left: Vec<_> = fs::read_dir(cache.dir()).unwrap().map(|e| e.unwrap().file_name()).filter(|n| !n.to_string_lossy().ends_with(".lock")).collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn the_trailing_bytes_after_the_tar_end_are_hashed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut data = tar(&[file("f", b"x")]);
    data.extend_from_slice(&[0u8; 4096]);
    let o = UnpackOptions::new("l", WhiteoutMode::Flatten, IdPolicy::Squash);
    let stats = apply_layer(&data[..], tmp.path(), &o).unwrap();
    assert_eq!(stats.diff_id, Digest::of(&data));
    assert_eq!(stats.bytes, data.len() as u64);
    assert_eq!(stats.entries, 1);
}

#[test]
fn concurrent_ensures_unpack_each_layer_once() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = blobs(tmp.path());
    let store = tmp.path().join("store");
    let results: Vec<Vec<PathBuf>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| LayerCache::open(&store, "k", keep()).unwrap().ensure(&layers).unwrap())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    let cache = LayerCache::open(&store, "k", keep()).unwrap();
    let names: HashSet<String> = fs::read_dir(cache.dir()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.starts_with(".tmp")), "{names:?}");
    let rootfs = tmp.path().join("rootfs");
    fs::create_dir(&rootfs).unwrap();
    cache.flatten(&results[0], &rootfs).unwrap();
    check_expected(&rootfs);
}

#[test]
fn gc_removes_unreferenced_layers_and_stale_temporaries() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = blobs(tmp.path());
    let cache = LayerCache::open(&tmp.path().join("store"), "k", keep()).unwrap();
    let dirs = cache.ensure(&layers).unwrap();
    // A stale temporary from a crashed unpack, with a read-only dir inside.
    let stale = cache.dir().join(format!(".tmp-{}-999-0", layers[0].diff_id.hex()));
    fs::create_dir_all(stale.join("ro/sub")).unwrap();
    fs::set_permissions(stale.join("ro"), std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    let keep_set: HashSet<Digest> = [layers[1].diff_id.clone()].into();
    assert_eq!(cache.gc(&keep_set).unwrap(), 1);
    assert!(!dirs[0].exists() && dirs[1].is_dir() && !stale.exists());
    // And it comes back when needed.
    assert_eq!(cache.ensure(&layers).unwrap(), dirs);
    assert!(dirs[0].is_dir());
}

#[test]
fn gc_passes_leased_layers_by_and_a_lease_waits_for_a_removal() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = blobs(tmp.path());
    let cache = LayerCache::open(&tmp.path().join("store"), "k", keep()).unwrap();
    let ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
    // Leased before it is unpacked, as a starting pod does.
    let lease = cache.lease(&ids[..1]).unwrap();
    let dirs = cache.ensure(&layers).unwrap();
    let count = cache.gc_counting(&HashSet::new()).unwrap();
    assert_eq!((count.removed, count.in_use), (1, 1));
    assert!(dirs[0].is_dir() && !dirs[1].exists());
    // A job file whose writer is gone goes; one still held stays.
    let dead = cache.dir().join(".job-999999.json");
    fs::write(&dead, "{}").unwrap();
    let live = cache.dir().join(".job-1.json");
    let held = berth::unpack::cache::try_flock(&live).unwrap().unwrap();
    drop(lease);
    assert_eq!(cache.gc(&HashSet::new()).unwrap(), 1);
    assert!(!dirs[0].exists() && !dead.exists() && live.exists());
    drop(held);

    // A lease asked for while gc holds the layer waits for the removal.
    cache.ensure(&layers).unwrap();
    let removing = berth::unpack::cache::try_flock(&cache.dir().join(format!("{}.use", ids[0].hex()))).unwrap().unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| cache.lease(&ids[..1]).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!waiter.is_finished(), "a lease is granted while gc removes the layer");
        drop(removing);
        waiter.join().unwrap();
    });
}

#[test]
fn mapping_keys_separate_caches() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = blobs(tmp.path());
    let store = tmp.path().join("store");
    let a = LayerCache::open(&store, "rootless-aaaa", IdPolicy::Squash).unwrap();
    let b = LayerCache::open(&store, "root-bbbb", keep()).unwrap();
    let da = a.ensure(&layers[..1]).unwrap();
    assert!(!b.layer_dir(&layers[0].diff_id).exists());
    let db = b.ensure(&layers[..1]).unwrap();
    assert_ne!(da, db);
}
