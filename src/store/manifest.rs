//! The image-spec documents berth reads: manifests, indexes (OCI and Docker
//! schema2 names for each), and the platform selection among an index's
//! entries.
//!
//! These are berth's own serde types rather than oci-spec's: they accept
//! Docker's media types next to OCI's, keep digests strictly parsed
//! ([`Digest`]), and let every check produce an error that names the field.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::image::digest::Digest;

pub use crate::image::media;


pub use crate::image::media::MAX_MANIFEST_SIZE;
/// Largest image configuration berth reads.
pub const MAX_CONFIG_SIZE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON")]
    Json(#[from] serde_json::Error),
    #[error("unsupported manifest media type {0:?}")]
    MediaType(String),
    #[error("Docker schema 1 manifests are not supported (the registry must serve schema 2 or OCI)")]
    Schema1,
    #[error("manifest media type {body:?} disagrees with the served type {served:?}")]
    Disagrees { body: String, served: String },
    #[error("schemaVersion {0} is not 2")]
    SchemaVersion(u32),
    #[error("not a container image: config media type {0:?}")]
    ConfigMediaType(String),
    #[error("unsupported layer media type {0:?}")]
    LayerMediaType(String),
    #[error("index lists no manifests")]
    EmptyIndex,
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest (OCI or Docker schema2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    /// The manifest's own type, as served (filled in when the body omits it).
    #[serde(default)]
    pub media_type: String,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A manifest document of either kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    Manifest(ImageManifest),
    Index(ImageIndex),
}

/// Just enough to tell the kinds apart when the body names no type.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

/// Parses a manifest or index. `served` is the type the server (or the
/// referring descriptor) gave; when the body names one too they must agree
/// (CVE-2021-41190: a document must not be readable as two kinds).
pub fn parse(bytes: &[u8], served: Option<&str>) -> Result<Document, ManifestError> {
    let probe: Probe = serde_json::from_slice(bytes)?;
    if let Some(v) = probe.schema_version {
        if v != 2 {
            return Err(if v == 1 { ManifestError::Schema1 } else { ManifestError::SchemaVersion(v) });
        }
    }
    let served = served.map(|s| s.split(';').next().unwrap_or(s).trim()).filter(|s| !s.is_empty());
    let body = probe.media_type.as_deref().filter(|s| !s.is_empty());
    // A generic JSON type says nothing about the kind.
    let served = served.filter(|s| *s != "application/json" && *s != "text/plain");
    let kind = match (body, served) {
        (Some(b), Some(s)) if b != s => {
            return Err(ManifestError::Disagrees { body: b.to_string(), served: s.to_string() })
        }
        (Some(t), _) | (None, Some(t)) => t.to_string(),
        (None, None) => match (&probe.manifests, &probe.config) {
            (Some(_), None) => media::OCI_INDEX.to_string(),
            (None, Some(_)) => media::OCI_MANIFEST.to_string(),
            _ => return Err(ManifestError::MediaType(String::new())),
        },
    };
    match kind.as_str() {
        media::DOCKER_SCHEMA1 | media::DOCKER_SCHEMA1_SIGNED => return Err(ManifestError::Schema1),
        _ => {}
    }
    match kind.as_str() {
        media::OCI_MANIFEST | media::DOCKER_MANIFEST => {
            // The other kind's field in the body is the CVE-2021-41190 confusion.
            if probe.manifests.is_some() {
                return Err(ManifestError::Disagrees { body: "index".into(), served: kind });
            }
            let mut m: ImageManifest = serde_json::from_slice(bytes)?;
            m.media_type = kind;
            m.check()?;
            Ok(Document::Manifest(m))
        }
        media::OCI_INDEX | media::DOCKER_LIST => {
            if probe.config.is_some() {
                return Err(ManifestError::Disagrees { body: "manifest".into(), served: kind });
            }
            let mut i: ImageIndex = serde_json::from_slice(bytes)?;
            i.media_type = kind;
            if i.manifests.is_empty() {
                return Err(ManifestError::EmptyIndex);
            }
            Ok(Document::Index(i))
        }
        other => Err(ManifestError::MediaType(other.to_string())),
    }
}

impl ImageManifest {
    /// The config must be an image configuration and every layer a tar berth
    /// can unpack: anything else is an artifact, not a container image.
    fn check(&self) -> Result<(), ManifestError> {
        match self.config.media_type.as_str() {
            media::OCI_CONFIG | media::DOCKER_CONFIG => {}
            other => return Err(ManifestError::ConfigMediaType(other.to_string())),
        }
        for l in &self.layers {
            Compression::of_media_type(&l.media_type)?;
        }
        Ok(())
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type names; an error for anything that
    /// is not a tar layer.
    pub fn of_media_type(t: &str) -> Result<Compression, ManifestError> {
        use media::*;
        Ok(match t {
            OCI_LAYER | OCI_FOREIGN | DOCKER_LAYER => Compression::None,
            OCI_LAYER_GZIP | OCI_FOREIGN_GZIP | DOCKER_LAYER_GZIP | DOCKER_FOREIGN_GZIP => Compression::Gzip,
            OCI_LAYER_ZSTD | OCI_FOREIGN_ZSTD => Compression::Zstd,
            other => return Err(ManifestError::LayerMediaType(other.to_string())),
        })
    }
}

/// Whether a layer is "foreign" / non-distributable. berth fetches such
/// layers from the registry like any other (by digest, verified) and never
/// from the descriptor's `urls`: that would send requests to hosts the user
/// never named, and a registry that cannot serve the blob is reported as such.
pub fn is_foreign(media_type: &str) -> bool {
    media_type.contains("nondistributable") || media_type.contains("foreign")
}

/// An OS/architecture/variant triple.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {0:?}: expected OS/ARCH[/VARIANT]")]
pub struct PlatformError(pub String);

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform, PlatformError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| !p.is_empty() && !p.starts_with('.') && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| ok(p)) {
            return Err(PlatformError(s.to_string()));
        }
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture: parts[1].to_ascii_lowercase(),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
            os_version: None,
        })
    }

    /// The platform berth runs on (Linux, the build's architecture).
    pub fn host() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
            os_version: None,
        }
    }

    /// `(arch, variant)` normalised as containerd does: `aarch64` is arm64
    /// whose default variant is v8, arm's default is v7, amd64's v1 is none.
    fn normalized(&self) -> (String, String) {
        let arch = match self.architecture.as_str() {
            "x86_64" | "x86-64" => "amd64",
            "aarch64" => "arm64",
            "armhf" => "arm",
            other => other,
        };
        let variant = self.variant.as_deref().unwrap_or("");
        let variant = match (arch, variant) {
            ("arm64", "" | "8") => "v8",
            ("arm", "") => "v7",
            ("arm", v @ ("5" | "6" | "7" | "8")) => return (arch.into(), format!("v{v}")),
            ("amd64", "v1") => "",
            (_, v) => v,
        };
        (arch.to_string(), variant.to_string())
    }

    /// Whether an index entry's platform is this one.
    pub fn matches(&self, entry: &Platform) -> bool {
        self.os.eq_ignore_ascii_case(&entry.os) && self.normalized() == entry.normalized()
    }

    /// The index entry for this platform: the first that matches.
    pub fn select<'a>(&self, index: &'a ImageIndex) -> Option<&'a Descriptor> {
        index.manifests.iter().find(|d| d.platform.as_ref().is_some_and(|p| self.matches(p)))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = self.variant.as_deref().filter(|v| !v.is_empty()) {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    fn manifest(config_type: &str, layer_type: &str, own: Option<&str>) -> Vec<u8> {
        let mut v = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": config_type, "digest": d(1), "size": 10},
            "layers": [{"mediaType": layer_type, "digest": d(2), "size": 20}],
        });
        if let Some(t) = own {
            v["mediaType"] = t.into();
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn parses_both_manifest_flavours() {
        let m = manifest(media::OCI_CONFIG, media::OCI_LAYER_ZSTD, Some(media::OCI_MANIFEST));
        let Document::Manifest(m) = parse(&m, Some(media::OCI_MANIFEST)).unwrap() else { panic!() };
        assert_eq!(m.layers[0].digest.to_string(), d(2));
        let m = manifest(media::DOCKER_CONFIG, media::DOCKER_LAYER_GZIP, Some(media::DOCKER_MANIFEST));
        assert!(matches!(parse(&m, None).unwrap(), Document::Manifest(_)));
        // No type anywhere: told apart by its fields.
        let m = manifest(media::OCI_CONFIG, media::OCI_LAYER, None);
        let Document::Manifest(m) = parse(&m, None).unwrap() else { panic!() };
        assert_eq!(m.media_type, media::OCI_MANIFEST);
    }

    #[test]
    fn rejects_confusion_artifacts_and_schema1() {
        let m = manifest(media::OCI_CONFIG, media::OCI_LAYER, Some(media::OCI_MANIFEST));
        assert!(matches!(parse(&m, Some(media::OCI_INDEX)), Err(ManifestError::Disagrees { .. })));
        let m = manifest("application/vnd.cncf.helm.config.v1+json", media::OCI_LAYER, None);
        assert!(matches!(parse(&m, None), Err(ManifestError::ConfigMediaType(_))));
        let m = manifest(media::OCI_CONFIG, "application/x-bogus", None);
        assert!(matches!(parse(&m, None), Err(ManifestError::LayerMediaType(_))));
        let s1 = br#"{"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]}"#;
        assert!(matches!(parse(s1, None), Err(ManifestError::Schema1)));
        assert!(parse(b"\xff\x00", None).is_err());
        let both = serde_json::json!({"schemaVersion":2,"mediaType":media::OCI_MANIFEST,"manifests":[],
            "config":{"mediaType":media::OCI_CONFIG,"digest":d(1),"size":1}});
        assert!(parse(&serde_json::to_vec(&both).unwrap(), None).is_err());
        let bad_digest = br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:../../x","size":1},"layers":[]}"#;
        assert!(parse(bad_digest, None).is_err());
    }

    #[test]
    fn platform_selection_follows_containerd() {
        let entry = |arch: &str, variant: Option<&str>| Descriptor {
            media_type: media::OCI_MANIFEST.into(),
            digest: Digest::of(format!("{arch}{variant:?}").as_bytes()),
            size: 1,
            urls: vec![],
            platform: Some(Platform {
                os: "linux".into(),
                architecture: arch.into(),
                variant: variant.map(Into::into),
                os_version: None,
            }),
            annotations: BTreeMap::new(),
        };
        let index = ImageIndex {
            schema_version: 2,
            media_type: media::OCI_INDEX.into(),
            manifests: vec![entry("amd64", None), entry("arm64", Some("v8")), entry("arm", Some("v6")), entry("arm", Some("v7"))],
            annotations: BTreeMap::new(),
        };
        let pick = |s: &str| Platform::parse(s).unwrap().select(&index).map(|d| d.digest.clone());
        assert_eq!(pick("linux/amd64"), Some(index.manifests[0].digest.clone()));
        assert_eq!(pick("linux/arm64"), Some(index.manifests[1].digest.clone()));
        assert_eq!(pick("linux/arm64/v8"), Some(index.manifests[1].digest.clone()));
        assert_eq!(pick("linux/arm"), Some(index.manifests[3].digest.clone()));
        assert_eq!(pick("linux/arm/v6"), Some(index.manifests[2].digest.clone()));
        assert_eq!(pick("linux/s390x"), None);
        assert_eq!(pick("windows/amd64"), None);
        for bad in ["linux", "linux/", "a/b/c/d", "linux/../x", ""] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }
}
