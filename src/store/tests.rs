use std::os::unix::fs::PermissionsExt;

use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("root")).unwrap();
    (dir, s)
}

#[test]
fn blobs_appear_only_verified() {
    let (_d, s) = store();
    assert_eq!(std::fs::metadata(s.root()).unwrap().permissions().mode() & 0o777, 0o700);
    let data = b"hello layer".to_vec();
    let digest = Digest::of(&data);

    // Wrong content: rejected, nothing visible, nothing to resume from.
    let mut w = s.ingest(&digest, data.len() as u64).unwrap().unwrap();
    w.write(b"hello LAYER").unwrap();
    assert!(matches!(w.commit(), Err(StoreError::DigestMismatch { .. })));
    assert!(!s.has_blob(&digest));
    assert_eq!(s.ingest(&digest, data.len() as u64).unwrap().unwrap().offset(), 0);

    // Too long: rejected at the first extra byte.
    let mut w = s.ingest(&digest, data.len() as u64).unwrap().unwrap();
    assert!(matches!(w.write(b"hello layer!"), Err(StoreError::SizeMismatch { .. })));
    drop(w);
    // Too short: not committed, but kept for resuming.
    let mut w = s.ingest(&digest, data.len() as u64).unwrap().unwrap();
    w.write(b"hello").unwrap();
    assert!(matches!(w.commit(), Err(StoreError::SizeMismatch { .. })));
    assert!(!s.has_blob(&digest));

    let mut w = s.ingest(&digest, data.len() as u64).unwrap().unwrap();
    assert_eq!(w.offset(), 5, "resumes after the prefix already written");
    w.write(b" layer").unwrap();
    w.commit().unwrap();
    assert!(s.has_blob(&digest));
    assert_eq!(s.read_blob(&digest, 100).unwrap(), data);
    assert!(s.ingest(&digest, data.len() as u64).unwrap().is_none());
    assert!(matches!(s.read_blob(&digest, 3), Err(StoreError::TooLarge { .. })));

    // A blob altered on disk is caught on read.
    std::fs::write(s.blob_path(&digest), b"hello lazer").unwrap();
    assert!(matches!(s.read_blob(&digest, 100), Err(StoreError::DigestMismatch { .. })));
}

#[test]
fn resume_rehashes_the_prefix() {
    let (_d, s) = store();
    let data = vec![7u8; 300_000];
    let digest = Digest::of(&data);
    let mut w = s.ingest(&digest, data.len() as u64).unwrap().unwrap();
    w.write(&data[..123_456]).unwrap();
    drop(w);
    // A corrupted prefix is detected at commit, not trusted.
    let partial = s.root().join("ingest").join(format!("{}.partial", digest.hex()));
    let mut bytes = std::fs::read(&partial).unwrap();
    bytes[10] = 8;
    std::fs::write(&partial, &bytes).unwrap();
    let mut w = s.ingest(&digest, data.len() as u64).unwrap().unwrap();
    assert_eq!(w.offset(), 123_456);
    w.write(&data[123_456..]).unwrap();
    assert!(matches!(w.commit(), Err(StoreError::DigestMismatch { .. })));
    assert!(!partial.exists());
}

#[test]
fn one_writer_per_blob_across_threads() {
    let (_d, s) = store();
    let data = vec![1u8; 1 << 20];
    let digest = Digest::of(&data);
    let writes = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                // Each thread opens its own lock file descriptor, as
                // separate processes would.
                if let Some(mut w) = s.ingest(&digest, data.len() as u64).unwrap() {
                    writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    w.write(&data).unwrap();
                    w.commit().unwrap();
                }
            });
        }
    });
    assert_eq!(writes.into_inner(), 1);
    assert_eq!(s.read_blob(&digest, 2 << 20).unwrap().len(), data.len());
}

fn record(name: &str, manifest: &Digest, config: &Digest) -> ImageRecord {
    ImageRecord {
        name: name.into(),
        manifest: manifest.clone(),
        config: config.clone(),
        index: None,
        platform: "linux/amd64".into(),
        size: 1,
        created: 0,
    }
}

/// Stores a one-layer image and returns (manifest, config, layer) digests.
fn put_image(s: &Store, layer: &[u8]) -> (Digest, Digest, Digest) {
    let l = s.put_blob(layer).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [l.to_string()]},
    });
    let c = s.put_blob(&serde_json::to_vec(&config).unwrap()).unwrap();
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": manifest::media::OCI_MANIFEST,
        "config": {"mediaType": manifest::media::OCI_CONFIG, "digest": c, "size": s.blob_size(&c).unwrap()},
        "layers": [{"mediaType": manifest::media::OCI_LAYER, "digest": l, "size": layer.len()}],
    });
    let m = s.put_blob(&serde_json::to_vec(&m).unwrap()).unwrap();
    (m, c, l)
}

#[test]
fn tags_lookup_image_view_and_gc() {
    let (_d, s) = store();
    let (m1, c1, l1) = put_image(&s, b"layer one");
    let (m2, c2, l2) = put_image(&s, b"layer two");
    let stray = s.put_blob(b"nobody's").unwrap();
    s.tag(record("reg/a:1", &m1, &c1)).unwrap();
    s.tag(record("reg/a:2", &m2, &c2)).unwrap();
    s.tag(record("reg/b:1", &m2, &c2)).unwrap();

    assert_eq!(s.lookup("reg/a:1").unwrap().unwrap().manifest, m1);
    assert_eq!(s.lookup(&m1.to_string()).unwrap().unwrap().name, "reg/a:1");
    assert_eq!(s.lookup(&m1.hex()[..12]).unwrap().unwrap().manifest, m1);
    assert!(s.lookup("reg/c:1").unwrap().is_none());
    assert!(s.lookup("abc").unwrap().is_none());

    let img = s.image("reg/a:2").unwrap();
    assert_eq!(img.layers.len(), 1);
    assert_eq!(img.layers[0].digest, l2);
    assert_eq!(img.layers[0].diff_id, l2);
    assert_eq!(img.layers[0].compression, Compression::None);
    assert_eq!(std::fs::read(&img.layers[0].path).unwrap(), b"layer two");

    // A partial download is a leftover for gc too.
    let mut w = s.ingest(&Digest::of(b"half"), 4).unwrap().unwrap();
    w.write(b"ha").unwrap();
    drop(w);

    let r = s.gc().unwrap();
    assert_eq!(r.blobs_removed, 1);
    assert!(!s.has_blob(&stray));
    for d in [&m1, &c1, &l1, &m2, &c2, &l2] {
        assert!(s.has_blob(d));
    }
    assert_eq!(std::fs::read_dir(s.root().join("ingest")).unwrap().count(), 0);

    // Removing by digest removes every name of that image.
    let gone = s.untag(&m2.to_string()).unwrap();
    assert_eq!(gone.len(), 2);
    assert!(matches!(s.untag("reg/a:2"), Err(StoreError::NotFound(_))));
    s.gc().unwrap();
    assert!(!s.has_blob(&l2) && !s.has_blob(&m2) && s.has_blob(&l1));
    assert!(matches!(s.image("reg/b:1"), Err(StoreError::NotFound(_))));

    // A missing layer makes the image view fail, never return a bad path.
    std::fs::remove_file(s.blob_path(&l1)).unwrap();
    assert!(matches!(s.image("reg/a:1"), Err(StoreError::MissingBlob(_))));
}

#[test]
fn gc_waits_for_a_pull() {
    let (_d, s) = store();
    let junk = s.put_blob(b"junk").unwrap();
    let pull = s.lock_shared().unwrap();
    let s2 = s.clone();
    let gc = std::thread::spawn(move || s2.gc().unwrap());
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(s.has_blob(&junk), "gc ran while a pull held the store");
    drop(pull);
    assert_eq!(gc.join().unwrap().blobs_removed, 1);
}
