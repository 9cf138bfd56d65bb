//! The hostile layer corpus: one test per attack. Each checks the outcome
//! (refused with an error naming the layer and entry, or applied in-root)
//! and that nothing outside the destination was written or deleted.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

use berth::unpack::{apply_layer, ErrorKind, IdPolicy, LayerStats, Limits, UnpackError, UnpackOptions, WhiteoutMode};
use crate::hostile::*;

fn opts() -> UnpackOptions {
    UnpackOptions::new("hostile", WhiteoutMode::Flatten, IdPolicy::Squash)
}

fn apply_with(arena: &Arena, entries: &[Entry], opts: &UnpackOptions) -> Result<LayerStats, UnpackError> {
    apply_layer(&tar(entries)[..], &arena.dest, opts)
}

fn apply(arena: &Arena, entries: &[Entry]) -> Result<LayerStats, UnpackError> {
    apply_with(arena, entries, &opts())
}

/// Refused, the message naming the layer and the entry.
fn refused(r: Result<LayerStats, UnpackError>, entry: &str) -> ErrorKind {
    let err = r.expect_err("the layer must be refused");
    let msg = err.to_string();
    assert!(msg.starts_with("layer hostile"), "{msg}");
    assert_eq!(err.entry.as_deref(), Some(entry), "{msg}");
    err.kind
}

#[test]
fn dotdot_names_are_refused() {
    for name in ["../secret", "a/../../secret", "..", "./../sibling/keep"] {
        let a = Arena::new();
        let kind = refused(apply(&a, &[file(name, b"pwned")]), name);
        assert!(matches!(kind, ErrorKind::BadName(_)), "{name}: {kind}");
        a.assert_outside_untouched();
    }
}

#[test]
fn absolute_names_land_inside() {
    let a = Arena::new();
    let abs = a.outside("secret");
    apply(&a, &[file("/etc/passwd", b"root:x:0:0\n"), file(&abs, b"inside")]).unwrap();
    assert_eq!(fs::read(a.dest.join("etc/passwd")).unwrap(), b"root:x:0:0\n");
    assert_eq!(fs::read(a.dest.join(abs.trim_start_matches('/'))).unwrap(), b"inside");
    a.assert_outside_untouched();
}

#[test]
fn symlink_then_write_through_it_stays_inside() {
    let a = Arena::new();
    let outer_etc = a.outside("etc");
    apply(&a, &[dir("etc"), symlink("a", "/etc"), file("a/passwd", b"evil\n")]).unwrap();
    assert_eq!(fs::read_link(a.dest.join("a")).unwrap().to_str(), Some("/etc"));
    assert_eq!(fs::read(a.dest.join("etc/passwd")).unwrap(), b"evil\n");
    // A symlink to a directory that exists only outside: dangling in-root,
    // so writing through it is refused.
    let kind = refused(apply(&a, &[symlink("b", &outer_etc), file("b/passwd", b"evil too\n")]), "b/passwd");
    assert!(matches!(kind, ErrorKind::Resolve { .. }), "{kind}");
    a.assert_outside_untouched();
}

#[test]
fn symlinked_parent_directories_resolve_in_root() {
    let a = Arena::new();
    apply(
        &a,
        &[
            dir("d"),
            symlink("d/up", "../.."),
            file("d/up/secret", b"x"),
            symlink("deep", "d/up/d/up/.."),
            file("deep/sibling/keep", b"y"),
        ],
    )
    .unwrap();
    // `../..` from the root is the root.
    assert_eq!(fs::read(a.dest.join("secret")).unwrap(), b"x");
    assert_eq!(fs::read(a.dest.join("sibling/keep")).unwrap(), b"y");
    a.assert_outside_untouched();
}

#[test]
fn absolute_symlink_escape_is_replaced_not_followed() {
    let a = Arena::new();
    let secret = a.outside("secret");
    let sibling = a.outside("sibling");
    apply(&a, &[symlink("x", &secret), file("x", b"replaced"), symlink("d", &sibling), dir("d"), file("d/keep", b"new")]).unwrap();
    let md = fs::symlink_metadata(a.dest.join("x")).unwrap();
    assert!(md.is_file());
    assert_eq!(fs::read(a.dest.join("x")).unwrap(), b"replaced");
    assert!(fs::symlink_metadata(a.dest.join("d")).unwrap().is_dir());
    assert_eq!(fs::read(a.dest.join("d/keep")).unwrap(), b"new");
    a.assert_outside_untouched();
}

#[test]
fn relative_symlink_escape_is_replaced_not_followed() {
    let a = Arena::new();
    apply(&a, &[symlink("x", "../secret"), file("x", b"replaced"), symlink("y", "../../../../sibling/keep"), hardlink("z", "x")]).unwrap();
    assert_eq!(fs::read(a.dest.join("x")).unwrap(), b"replaced");
    assert_eq!(fs::read(a.dest.join("z")).unwrap(), b"replaced");
    // The symlink is stored verbatim: it is data.
    assert_eq!(fs::read_link(a.dest.join("y")).unwrap().to_str(), Some("../../../../sibling/keep"));
    a.assert_outside_untouched();
}

#[test]
fn hard_link_to_outside_is_refused() {
    for (target, why) in [("../secret", "dotdot"), ("/etc/passwd", "absolute"), ("s/secret", "through symlink")] {
        let a = Arena::new();
        let outer = a.outside("");
        let r = apply(&a, &[symlink("s", &outer), hardlink("h", target)]);
        let kind = refused(r, "h");
        assert!(matches!(kind, ErrorKind::BadLinkName(_) | ErrorKind::LinkTarget { .. }), "{why}: {kind}");
        assert!(fs::symlink_metadata(a.dest.join("h")).is_err(), "{why}");
        a.assert_outside_untouched();
    }
}

#[test]
fn hard_link_to_a_symlink_links_the_symlink() {
    let a = Arena::new();
    let secret = a.outside("secret");
    apply(&a, &[symlink("s", &secret), hardlink("h", "s")]).unwrap();
    let md = fs::symlink_metadata(a.dest.join("h")).unwrap();
    assert!(md.file_type().is_symlink());
    assert_eq!(md.ino(), fs::symlink_metadata(a.dest.join("s")).unwrap().ino());
    assert_eq!(fs::read_link(a.dest.join("h")).unwrap().to_str(), Some(secret.as_str()));
    a.assert_outside_untouched();
}

#[test]
fn hard_link_to_a_whited_out_file() {
    let a = Arena::new();
    apply(&a, &[file("f", b"lower"), file("f2", b"lower2")]).unwrap();
    // A lower file, whited out, then linked to: not a file of this layer.
    let kind = refused(apply(&a, &[file(".wh.f", b""), hardlink("g", "f")]), "g");
    assert!(matches!(kind, ErrorKind::LinkTarget { .. }), "{kind}");
    assert!(!a.dest.join("f").exists());
    // A file of this layer "whited out" by the same layer is kept (whiteouts
    // apply to lower layers only), so the link works.
    apply(&a, &[file("f2", b"upper"), file(".wh.f2", b""), hardlink("g2", "f2")]).unwrap();
    assert_eq!(fs::read(a.dest.join("g2")).unwrap(), b"upper");
    a.assert_outside_untouched();
}

#[test]
fn whiteouts_with_dotdot_and_reserved_names_are_refused() {
    for (name, bad_name) in [("a/.wh..", false), (".wh.", false), (".wh..wh.foo", false), ("../.wh.secret", true), ("a/.wh....", true)] {
        let a = Arena::new();
        let r = apply(&a, &[dir("a"), file(name, b"")]);
        if name == "a/.wh...." {
            // `...` is an ordinary name: whiting it out is a no-op.
            r.unwrap();
        } else {
            let kind = refused(r, name);
            assert!(matches!(kind, ErrorKind::BadWhiteout(_) | ErrorKind::BadName(_)), "{name}: {kind}");
            let _ = bad_name;
        }
        a.assert_outside_untouched();
    }
}

#[test]
fn whiteouts_never_delete_outside() {
    let a = Arena::new();
    let outer = a.outside("");
    let sibling = a.outside("sibling");
    // Lower layer: symlinks pointing outside.
    apply(&a, &[symlink("l", &sibling), symlink("up", ".."), symlink("o", &outer)]).unwrap();
    // Upper layer: whiteouts through them and of them.
    apply(&a, &[file("l/.wh.keep", b""), file("up/.wh.secret", b""), file("up/sibling/.wh.link", b""), file(".wh.l", b"")]).unwrap();
    assert!(fs::symlink_metadata(a.dest.join("l")).is_err(), "the symlink itself is whited out");
    let _ = apply(&a, &[file("o/.wh..wh..opq", b"")]);
    a.assert_outside_untouched();
}

#[test]
fn root_replaced_by_a_symlink_or_file_is_refused() {
    for (entry, name) in [(symlink(".", "/"), "."), (symlink("./", "/etc"), "./"), (file(".", b"x"), "."), (file("/", b"x"), "/")] {
        let a = Arena::new();
        let kind = refused(apply(&a, &[entry]), name);
        assert!(matches!(kind, ErrorKind::RootReplaced(_)), "{kind}");
        assert!(fs::symlink_metadata(&a.dest).unwrap().is_dir());
        a.assert_outside_untouched();
    }
    // A directory entry for the root is ignored, its metadata untouched.
    let a = Arena::new();
    let mode = fs::metadata(&a.dest).unwrap().permissions().mode();
    apply(&a, &[dir("./").mode(0o777)]).unwrap();
    assert_eq!(fs::metadata(&a.dest).unwrap().permissions().mode(), mode);
    a.assert_outside_untouched();
}

#[test]
fn huge_pax_headers_are_refused() {
    let a = Arena::new();
    let err = apply_layer(&tar_with_huge_pax(2 << 20)[..], &a.dest, &opts()).unwrap_err();
    assert!(matches!(err.kind, ErrorKind::HeaderTooLarge { max } if max == 1 << 20), "{err}");
    assert!(err.to_string().contains("layer hostile"), "{err}");
    a.assert_outside_untouched();
    // Just under the limit is fine.
    let a = Arena::new();
    apply_layer(&tar_with_huge_pax(512 << 10)[..], &a.dest, &opts()).unwrap();
}

#[test]
fn huge_names_are_refused() {
    let a = Arena::new();
    let long = "n".repeat(5000);
    let kind = refused(apply(&a, &[file(&long, b"x")]), &long);
    assert!(matches!(kind, ErrorKind::PathTooLong { len: 5000, max: 4096 }), "{kind}");
    let kind = refused(apply(&a, &[symlink("s", "t"), hardlink("h", &long)]), "h");
    assert!(matches!(kind, ErrorKind::PathTooLong { .. }), "{kind}");
    a.assert_outside_untouched();
}

#[test]
fn more_entries_than_the_limit_are_refused() {
    let a = Arena::new();
    let mut o = opts();
    o.limits = Limits { max_entries: 10, ..Limits::default() };
    let entries: Vec<_> = (0..11).map(|i| file(&format!("f{i}"), b"")).collect();
    let kind = refused(apply_with(&a, &entries, &o), "f10");
    assert!(matches!(kind, ErrorKind::TooManyEntries { max: 10 }), "{kind}");
    apply_with(&a, &entries[..10], &o).unwrap();
    a.assert_outside_untouched();
}

#[test]
fn more_bytes_than_the_limit_are_refused() {
    let a = Arena::new();
    let mut o = opts();
    o.limits = Limits { max_bytes: 1 << 20, ..Limits::default() };
    // A gzip bomb: 8 MiB of zeros, a few KiB compressed.
    let blob = gzip(&tar(&[file("zeros", &vec![0u8; 8 << 20])]));
    assert!(blob.len() < 1 << 20);
    let r = berth::unpack::decompress("application/vnd.oci.image.layer.v1.tar+gzip", std::io::Cursor::new(blob))
        .map(|rd| apply_layer(rd, &a.dest, &o))
        .unwrap();
    let err = r.unwrap_err();
    assert!(matches!(err.kind, ErrorKind::TooManyBytes { max } if max == 1 << 20), "{err}");
    assert_eq!(err.entry.as_deref(), Some("zeros"));
    a.assert_outside_untouched();
}

#[test]
fn duplicate_entries_last_wins() {
    let a = Arena::new();
    let secret = a.outside("secret");
    apply(
        &a,
        &[
            file("f", b"one"),
            file("f", b"two"),
            dir("d"),
            file("d/child", b"c"),
            file("d", b"now a file"),
            file("e", b"file"),
            dir("e"),
            file("e/x", b"x"),
            symlink("s", &secret),
            file("s", b"plain"),
            dir("g").mode(0o700),
            dir("g").mode(0o750),
        ],
    )
    .unwrap();
    assert_eq!(fs::read(a.dest.join("f")).unwrap(), b"two");
    assert_eq!(fs::read(a.dest.join("d")).unwrap(), b"now a file");
    assert_eq!(fs::read(a.dest.join("e/x")).unwrap(), b"x");
    assert_eq!(fs::read(a.dest.join("s")).unwrap(), b"plain");
    assert_eq!(fs::metadata(a.dest.join("g")).unwrap().permissions().mode() & 0o7777, 0o750);
    a.assert_outside_untouched();
}

#[test]
fn setuid_survives_because_owner_is_set_before_mode() {
    let a = Arena::new();
    let o = UnpackOptions::new("hostile", WhiteoutMode::Flatten, IdPolicy::Keep { max_uid: 65535, max_gid: 65535 });
    apply_with(&a, &[file("su", b"#!").mode(0o4755).owner(1000, 1000), dir("sg").mode(0o2775).owner(0, 50)], &o).unwrap();
    let md = fs::metadata(a.dest.join("su")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o4755, 1000, 1000));
    let md = fs::metadata(a.dest.join("sg")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.gid()), (0o2775, 50));
    // Optional stripping.
    let a = Arena::new();
    let mut o = opts();
    o.strip_setid = true;
    apply_with(&a, &[file("su", b"#!").mode(0o6755)], &o).unwrap();
    assert_eq!(fs::metadata(a.dest.join("su")).unwrap().mode() & 0o7777, 0o755);
    a.assert_outside_untouched();
}

#[test]
fn ids_outside_the_mapping_are_refused_by_name() {
    let a = Arena::new();
    let o = UnpackOptions::new("hostile", WhiteoutMode::Flatten, IdPolicy::Keep { max_uid: 65535, max_gid: 65535 });
    let r = apply_with(&a, &[file("ok", b"").owner(1, 1), file("usr/bin/big", b"").owner(100000, 0)], &o);
    let kind = refused(r, "usr/bin/big");
    let msg = kind.to_string();
    assert!(msg.contains("uid 100000") && msg.contains("0-65535") && msg.contains("100001"), "{msg}");
}

#[test]
fn device_nodes_as_root_are_created_with_checked_numbers() {
    // As real root mknod is permitted; the unprivileged skip is tested in
    // unpack_rootless.rs.
    let a = Arena::new();
    apply(&a, &[chardev("dev/null", 1, 3).mode(0o666), fifo("p")]).unwrap();
    let md = fs::symlink_metadata(a.dest.join("dev/null")).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), libc::makedev(1, 3));
    assert!(fs::symlink_metadata(a.dest.join("p")).unwrap().file_type().is_fifo());
    a.assert_outside_untouched();
}

#[test]
fn deep_paths() {
    let a = Arena::new();
    let deep = vec!["d"; 300].join("/");
    let kind = refused(apply(&a, &[file(&deep, b"x")]), &deep);
    assert!(matches!(kind, ErrorKind::PathTooDeep { depth: 300, max: 256 }), "{kind}");
    let ok = vec!["d"; 200].join("/");
    apply(&a, &[file(&ok, b"x")]).unwrap();
    assert_eq!(fs::read(a.dest.join(&ok)).unwrap(), b"x");
    a.assert_outside_untouched();
}

#[test]
fn missing_parents_are_deterministic() {
    let a = Arena::new();
    apply(&a, &[file("no/such/parent/f", b"x")]).unwrap();
    for d in ["no", "no/such", "no/such/parent"] {
        let md = fs::metadata(a.dest.join(d)).unwrap();
        assert_eq!((md.mode() & 0o7777, md.mtime()), (0o755, 0), "{d}");
    }
}
