//! Unit tests of the pure parts; tests against real servers are in
//! tests/registry_client.rs.

use super::*;

#[test]
fn media_type_must_agree_with_the_body() {
    let oci = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;
    let bare = br#"{"schemaVersion":2}"#;
    let all = media::ALL_MANIFESTS;
    assert_eq!(check_media_type(Some(media::OCI_MANIFEST), oci, all).unwrap(), media::OCI_MANIFEST);
    assert_eq!(check_media_type(Some(media::OCI_MANIFEST), bare, all).unwrap(), media::OCI_MANIFEST);
    assert_eq!(check_media_type(Some("application/json"), oci, all).unwrap(), media::OCI_MANIFEST);
    // CVE-2021-41190: an index served as a manifest, or the reverse.
    let e = check_media_type(Some(media::OCI_INDEX), oci, all).unwrap_err();
    assert!(e.contains("but the manifest says"), "{e}");
    // Not what was asked for.
    let e = check_media_type(Some(media::OCI_MANIFEST), oci, &[media::OCI_INDEX]).unwrap_err();
    assert!(e.contains("is not one of"), "{e}");
    let e = check_media_type(Some("application/vnd.docker.distribution.manifest.v1+prettyjws"), bare, all).unwrap_err();
    assert!(e.contains("is not one of"), "{e}");
    assert!(check_media_type(None, bare, all).is_err());
    assert!(check_media_type(Some(media::OCI_MANIFEST), b"not json", all).unwrap_err().contains("not JSON"));
    assert_eq!(media_type_of("Application/Vnd.OCI.Image.Manifest.v1+json; charset=utf-8"), media::OCI_MANIFEST);
}

#[test]
fn content_ranges() {
    assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, Some(200))));
    assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
    for bad in ["", "bytes 5-4/10", "bytes 0-9/9", "items 0-1/2", "bytes -1/2", "bytes 1-2", "bytes a-b/c"] {
        assert_eq!(parse_content_range(bad), None, "{bad:?}");
    }
}
