//! Layer media types and their decoders.

use std::io::{BufReader, Read};

use flate2::read::MultiGzDecoder;

#[derive(Debug, thiserror::Error)]
pub enum UnsupportedMediaType {
    #[error("unsupported layer media type {0:?}")]
    Unknown(String),
    #[error("starting the zstd decoder: {0}")]
    Zstd(std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// The compression of a layer media type (OCI and Docker names, including
/// the non-distributable/foreign variants).
pub fn compression(media_type: &str) -> Option<Compression> {
    Some(match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
        _ => return None,
    })
}

/// Wraps `r` (the layer blob) in the decoder its media type names. gzip is
/// decoded with `MultiGzDecoder`: a plain `GzDecoder` stops silently after
/// the first member, and layers made by parallel compressors have several.
pub fn decompress<R: Read + Send + 'static>(
    media_type: &str,
    r: R,
) -> Result<Box<dyn Read + Send>, UnsupportedMediaType> {
    const BUF: usize = 256 * 1024;
    match compression(media_type) {
        Some(Compression::None) => Ok(Box::new(r)),
        Some(Compression::Gzip) => Ok(Box::new(MultiGzDecoder::new(BufReader::with_capacity(BUF, r)))),
        Some(Compression::Zstd) => Ok(Box::new(
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(BUF, r))
                .map_err(UnsupportedMediaType::Zstd)?,
        )),
        None => Err(UnsupportedMediaType::Unknown(media_type.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_multi_member_is_read_to_the_end() {
        let mut blob = gz(b"first ");
        blob.extend(gz(b"second"));
        let mut out = String::new();
        decompress("application/vnd.oci.image.layer.v1.tar+gzip", std::io::Cursor::new(blob))
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "first second");
    }

    #[test]
    fn zstd_and_plain() {
        let blob = zstd::encode_all(&b"zstd data"[..], 3).unwrap();
        let mut out = Vec::new();
        decompress("application/vnd.oci.image.layer.v1.tar+zstd", std::io::Cursor::new(blob))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"zstd data");
        let mut out = Vec::new();
        decompress("application/vnd.docker.image.rootfs.diff.tar", &b"plain"[..]).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, b"plain");
    }

    #[test]
    fn unknown_media_type_is_refused() {
        let err = decompress("application/vnd.oci.image.layer.v1.tar+bzip2", &b""[..]).err().unwrap();
        assert!(err.to_string().contains("tar+bzip2"), "{err}");
    }
}
