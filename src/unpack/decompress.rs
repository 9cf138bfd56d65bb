//! Layer media types and their decoders.

use std::io::{BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
    let read_in = Arc::new(AtomicU64::new(0));
    let counted = Counted { inner: r, n: read_in.clone() };
    let decoder: Box<dyn Read + Send> = match compression(media_type) {
        Some(Compression::None) => return Ok(Box::new(counted.inner)),
        Some(Compression::Gzip) => Box::new(MultiGzDecoder::new(BufReader::with_capacity(BUF, counted))),
        Some(Compression::Zstd) => Box::new(
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(BUF, counted)).map_err(UnsupportedMediaType::Zstd)?,
        ),
        None => return Err(UnsupportedMediaType::Unknown(media_type.to_string())),
    };
    Ok(Box::new(RatioBound { inner: decoder, read_in, out: 0 }))
}

/// A layer may decompress to this much whatever its size...
pub const BOMB_FLOOR: u64 = 16 << 20;
/// ...and beyond it to this many times its compressed bytes. Real layers
/// stay far below (2 to 10); gzip's most is about 1030 (zeros), zstd's far
/// more, so a small blob cannot fill the disk before the 64 GiB layer limit.
pub const BOMB_RATIO: u64 = 200;

/// The decoder's output, cut off once it outgrows the bound above.
struct RatioBound {
    inner: Box<dyn Read + Send>,
    read_in: Arc<AtomicU64>,
    out: u64,
}

impl Read for RatioBound {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out += n as u64;
        let read_in = self.read_in.load(Ordering::Relaxed);
        if self.out > BOMB_FLOOR.saturating_add(read_in.saturating_mul(BOMB_RATIO)) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "decompression bomb: {read_in} compressed bytes expand to more than {} (over {BOMB_FLOOR} bytes, at most a ratio of {BOMB_RATIO})",
                    self.out
                ),
            ));
        }
        Ok(n)
    }
}

/// Counts the compressed bytes the decoder has read.
struct Counted<R> {
    inner: R,
    n: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Runs `r` (a decoder) on its own thread, a few chunks ahead of the
/// reader, so decompression overlaps with hashing and writing files. The
/// thread ends at the end of the stream, on an error (handed to the
/// reader), or as soon as the returned reader is dropped.
pub fn read_ahead<R: Read + Send + 'static>(mut r: R) -> impl Read + Send {
    const CHUNK: usize = 1 << 20;
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(4);
    std::thread::spawn(move || loop {
        let mut buf = vec![0u8; CHUNK];
        let mut filled = 0;
        let result = loop {
            match r.read(&mut buf[filled..]) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    filled += n;
                    if filled == CHUNK {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        buf.truncate(filled);
        let done = filled == 0 || result.is_err();
        if filled > 0 && tx.send(Ok(buf)).is_err() {
            return;
        }
        if let Err(e) = result {
            let _ = tx.send(Err(e));
        }
        if done {
            return;
        }
    });
    ChunkReader { rx, chunk: Vec::new(), pos: 0 }
}

struct ChunkReader {
    rx: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // the decoder thread is done
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
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
    fn read_ahead_delivers_everything_and_errors() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        read_ahead(std::io::Cursor::new(data.clone())).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        let mut truncated = gz(&data);
        truncated.truncate(truncated.len() / 2);
        let r = decompress("application/vnd.oci.image.layer.v1.tar+gzip", std::io::Cursor::new(truncated)).unwrap();
        assert!(read_ahead(r).read_to_end(&mut Vec::new()).is_err());
    }

    #[test]
    fn a_compression_bomb_is_cut_off_and_a_normal_layer_is_not() {
        // 1 MiB of zeros is one ~1 KB gzip member; members concatenate.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut e, &vec![0u8; 1 << 20]).unwrap();
        let member = e.finish().unwrap();
        let gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
        let bomb = member.repeat(32);
        let mut out = Vec::new();
        let e = decompress(gzip, std::io::Cursor::new(bomb)).unwrap().read_to_end(&mut out).unwrap_err();
        assert!(e.to_string().contains("decompression bomb"), "{e}");
        assert!((out.len() as u64) < 32 << 20);
        // Under the floor, any ratio is fine; above it, ordinary data too.
        let small = member.repeat(8);
        assert_eq!(decompress(gzip, std::io::Cursor::new(small)).unwrap().read_to_end(&mut Vec::new()).unwrap(), 8 << 20);
        let text: Vec<u8> = (0..20u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8 % 16 + b'a').collect();
        let zst = zstd::encode_all(&text[..], 3).unwrap();
        let zstd_type = "application/vnd.oci.image.layer.v1.tar+zstd";
        assert_eq!(decompress(zstd_type, std::io::Cursor::new(zst)).unwrap().read_to_end(&mut Vec::new()).unwrap(), text.len());
    }

    #[test]
    fn unknown_media_type_is_refused() {
        let err = decompress("application/vnd.oci.image.layer.v1.tar+bzip2", &b""[..]).err().unwrap();
        assert!(err.to_string().contains("tar+bzip2"), "{err}");
    }
}
