//! Benchmark (not a timed test): unpack a ~100 MB gzip layer made of this
//! host's /usr files with berth and with GNU `tar -xzf`, in one run, and
//! check both produced the same files. Run it optimized:
//!
//! ```text
//! cargo test --release --test it unpack_bench:: -- --ignored --nocapture
//! ```
//! `BERTH_BENCH_DIR` picks the filesystem written to (default: a temp dir).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use berth::unpack::{apply_layer, decompress, read_ahead, IdPolicy, UnpackOptions, WhiteoutMode};

/// Regular files under /usr, in order, until `budget` bytes.
fn pick(budget: u64) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut total = 0;
    let mut stack = vec![PathBuf::from("/usr/share"), PathBuf::from("/usr/bin"), PathBuf::from("/usr/lib/x86_64-linux-gnu")];
    stack.reverse();
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        let mut names: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        names.reverse();
        for p in names {
            let Ok(md) = fs::symlink_metadata(&p) else { continue };
            if md.is_dir() {
                stack.push(p);
            } else if md.is_file() {
                total += md.len();
                out.push(p);
                if total > budget {
                    return out;
                }
            }
        }
    }
    out
}

fn files(root: &Path) -> BTreeMap<PathBuf, (u64, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_path_buf(), (md.size(), md.mode() & 0o7777));
            }
        }
    }
    out
}

#[test]
#[ignore = "benchmark; run optimized with --ignored --nocapture"]
fn unpack_throughput_vs_tar() {
    let base = std::env::var_os("BERTH_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(&base).unwrap();
    let list = tmp.path().join("list");
    let mut f = fs::File::create(&list).unwrap();
    for p in pick(235_000_000) {
        writeln!(f, "{}", p.strip_prefix("/").unwrap().display()).unwrap();
    }
    let blob = tmp.path().join("layer.tar.gz");
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("tar -C / --no-recursion -cf - -T {} | gzip -6 > {}", list.display(), blob.display()))
        .status()
        .unwrap();
    assert!(ok.success());
    let size = fs::metadata(&blob).unwrap().len() as f64 / 1e6;

    let ours = tmp.path().join("berth");
    fs::create_dir(&ours).unwrap();
    let _ = Command::new("sync").status();
    let t = Instant::now();
    let r = read_ahead(decompress("application/vnd.oci.image.layer.v1.tar+gzip", fs::File::open(&blob).unwrap()).unwrap());
    let opts = UnpackOptions::new("bench", WhiteoutMode::Overlay, IdPolicy::Keep { max_uid: 65535, max_gid: 65535 });
    let stats = apply_layer(r, &ours, &opts).unwrap();
    let berth_s = t.elapsed().as_secs_f64();

    let theirs = tmp.path().join("tar");
    fs::create_dir(&theirs).unwrap();
    let _ = Command::new("sync").status();
    let t = Instant::now();
    assert!(Command::new("tar").arg("-C").arg(&theirs).arg("-xzf").arg(&blob).status().unwrap().success());
    let tar_s = t.elapsed().as_secs_f64();

    let mb = stats.bytes as f64 / 1e6;
    eprintln!("layer: {size:.0} MB gzip, {mb:.0} MB tar, {} entries", stats.entries);
    eprintln!("berth apply_layer: {berth_s:.2} s = {:.0} MB/s compressed, {:.0} MB/s uncompressed", size / berth_s, mb / berth_s);
    eprintln!("tar -xzf:          {tar_s:.2} s = {:.0} MB/s compressed, {:.0} MB/s uncompressed", size / tar_s, mb / tar_s);
    assert_eq!(files(&ours), files(&theirs));
}
