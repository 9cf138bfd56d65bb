//! The framed protocol between berth on the host and berth as the guest's
//! init, over one virtio-serial port.
//!
//! A frame is a kind byte, a little-endian `u32` payload length and the
//! payload. Data frames carry bytes as they are, so the main container's
//! stdio is binary-clean; one port carries everything so that the order of
//! stdout data and the exit status is the order they were sent in.

use std::fmt;

/// Bumped when frames change; the guest says which it speaks in
/// [`Frame::Hello`], and the host refuses another.
pub const VERSION: u32 = 1;

/// The virtio-serial port's name (`/sys/class/virtio-ports/*/name`).
pub const PORT_NAME: &str = "berth.0";

/// The largest payload a frame may carry. Data is sent in chunks of at most
/// this size; a larger length is a broken stream, not a big frame.
pub const MAX_PAYLOAD: usize = 1 << 20;

const HEADER: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// guest → host: the init runs and speaks [`VERSION`]; the guest's
    /// clock (ms since its kernel started) when init began and now.
    Hello { version: u32, init_ms: u32, now_ms: u32 },
    /// host → guest: what to run (JSON of [`super::plan::GuestStart`]).
    Start(Vec<u8>),
    /// host → guest: bytes for the main container's stdin.
    Stdin(Vec<u8>),
    /// host → guest: berth's stdin ended.
    StdinEof,
    /// host → guest: a signal for the pod (SIGINT, SIGTERM, SIGHUP).
    Signal(i32),
    /// guest → host: the main container's stdout.
    Stdout(Vec<u8>),
    /// guest → host: the pod's stderr (the main container's, sidecar echo
    /// and berth's own messages in the guest).
    Stderr(Vec<u8>),
    /// guest → host: the pod ended with this status; the last frame.
    Exit(u8),
    /// guest → host: more of a container's log (sidecars, init
    /// containers), for `berth logs` on the host.
    Log { container: String, data: Vec<u8> },
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Hello { .. } => 1,
            Frame::Start(_) => 2,
            Frame::Stdin(_) => 3,
            Frame::StdinEof => 4,
            Frame::Signal(_) => 5,
            Frame::Stdout(_) => 6,
            Frame::Stderr(_) => 7,
            Frame::Exit(_) => 8,
            Frame::Log { .. } => 9,
        }
    }

    /// Appends the frame's bytes to `out`. Payloads over [`MAX_PAYLOAD`]
    /// must be split by the caller (see [`chunks`]).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let hello;
        let log;
        let payload: &[u8] = match self {
            Frame::Log { container, data } => {
                // A name is a DNS label: at most 63 bytes.
                let name = &container.as_bytes()[..container.len().min(255)];
                log = [&[name.len() as u8][..], name, data].concat();
                &log
            }
            Frame::Hello { version, init_ms, now_ms } => {
                hello = [version.to_le_bytes(), init_ms.to_le_bytes(), now_ms.to_le_bytes()].concat();
                &hello
            }
            Frame::Start(b) | Frame::Stdin(b) | Frame::Stdout(b) | Frame::Stderr(b) => b,
            Frame::StdinEof => &[],
            Frame::Signal(s) => &s.to_le_bytes(),
            Frame::Exit(c) => &[*c],
        };
        debug_assert!(payload.len() <= MAX_PAYLOAD || matches!(self, Frame::Start(_)));
        out.push(self.kind());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }
}

/// Reads at most `max` bytes from `fd` straight into a new data frame at
/// the end of `out` (stdout when `stdout`, else stderr): no buffer to zero
/// and no copy, which counts in a guest under software emulation. Returns
/// what `read(2)` returned; on 0 or an error `out` is unchanged.
pub fn read_data_frame(out: &mut Vec<u8>, stdout: bool, fd: std::os::fd::BorrowedFd<'_>, max: usize) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd as _;
    let max = max.min(MAX_PAYLOAD);
    let start = out.len();
    out.reserve(HEADER + max);
    out.push(if stdout { 6 } else { 7 });
    out.extend_from_slice(&[0; 4]);
    let spare = out.spare_capacity_mut();
    // SAFETY: `spare` has room for `max` bytes (reserved above); read(2)
    // writes at most that many into it.
    let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), max) };
    if n <= 0 {
        out.truncate(start);
        return if n == 0 { Ok(0) } else { Err(std::io::Error::last_os_error()) };
    }
    let n = n as usize;
    // SAFETY: read(2) initialized the first `n` bytes of the spare capacity.
    unsafe { out.set_len(start + HEADER + n) };
    out[start + 1..start + HEADER].copy_from_slice(&(n as u32).to_le_bytes());
    Ok(n)
}

/// Splits data into payload-sized pieces.
pub fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.chunks(MAX_PAYLOAD)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame of {0} bytes is over the limit")]
    TooLong(usize),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

/// The largest [`Frame::Start`]: the plan and the containers' spec files.
pub const MAX_START: usize = 16 << 20;

/// Turns a byte stream back into frames, whatever pieces it arrives in.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    pos: usize,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Decoder({} bytes buffered)", self.buf.len() - self.pos)
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next whole frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtoError> {
        let rest = &self.buf[self.pos..];
        if rest.len() < HEADER {
            return Ok(None);
        }
        let kind = rest[0];
        let len = u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let limit = if kind == 2 { MAX_START } else { MAX_PAYLOAD };
        if len > limit {
            return Err(ProtoError::TooLong(len));
        }
        if rest.len() < HEADER + len {
            return Ok(None);
        }
        let p = &rest[HEADER..HEADER + len];
        let frame = match kind {
            1 => {
                // The version comes first, so that any later hello still
                // says which version it is.
                let word = |k: usize| p.get(4 * k..4 * k + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
                let version = word(0).ok_or(ProtoError::Malformed("hello"))?;
                Frame::Hello { version, init_ms: word(1).unwrap_or(0), now_ms: word(2).unwrap_or(0) }
            }
            2 => Frame::Start(p.to_vec()),
            3 => Frame::Stdin(p.to_vec()),
            4 if p.is_empty() => Frame::StdinEof,
            4 => return Err(ProtoError::Malformed("stdin-eof")),
            5 => Frame::Signal(i32::from_le_bytes(p.try_into().map_err(|_| ProtoError::Malformed("signal"))?)),
            6 => Frame::Stdout(p.to_vec()),
            7 => Frame::Stderr(p.to_vec()),
            8 => match p {
                [c] => Frame::Exit(*c),
                _ => return Err(ProtoError::Malformed("exit")),
            },
            9 => {
                let n = *p.first().ok_or(ProtoError::Malformed("log"))? as usize;
                let name = p.get(1..1 + n).ok_or(ProtoError::Malformed("log"))?;
                let container = String::from_utf8(name.to_vec()).map_err(|_| ProtoError::Malformed("log"))?;
                Frame::Log { container, data: p[1 + n..].to_vec() }
            }
            k => return Err(ProtoError::UnknownKind(k)),
        };
        self.pos += HEADER + len;
        // Keep the buffer from growing without bound on a long stream.
        if self.pos > MAX_PAYLOAD {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Frame> {
        vec![
            Frame::Hello { version: VERSION, init_ms: 1800, now_ms: 1900 },
            Frame::Start(b"{}".to_vec()),
            Frame::Stdin((0..=255).collect()),
            Frame::StdinEof,
            Frame::Signal(15),
            Frame::Stdout(vec![0, 0, 0, 0, 0, 8, 1]),
            Frame::Stderr(Vec::new()),
            Frame::Exit(137),
            Frame::Log { container: "db".into(), data: b"ready\n".to_vec() },
        ]
    }

    #[test]
    fn frames_survive_any_split() {
        let mut bytes = Vec::new();
        for f in all() {
            f.encode(&mut bytes);
        }
        for step in [1, 2, 3, 5, 7, 64, bytes.len()] {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for piece in bytes.chunks(step) {
                d.push(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, all(), "split every {step} bytes");
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn long_streams_do_not_grow_the_buffer() {
        let mut d = Decoder::new();
        let chunk = Frame::Stdout(vec![7; 4096]).to_bytes();
        for _ in 0..2000 {
            d.push(&chunk[..100]);
            d.push(&chunk[100..]);
            assert!(matches!(d.next_frame().unwrap(), Some(Frame::Stdout(v)) if v.len() == 4096));
        }
        assert!(d.buf.len() < 2 * MAX_PAYLOAD + chunk.len());
    }

    #[test]
    fn data_frames_read_in_place() {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"abc\0def").unwrap();
        let mut out = Frame::Exit(3).to_bytes();
        use std::os::fd::AsFd as _;
        assert_eq!(read_data_frame(&mut out, false, r.as_fd(), 1 << 16).unwrap(), 7);
        drop(w);
        assert_eq!(read_data_frame(&mut out, true, r.as_fd(), 1 << 16).unwrap(), 0);
        let mut d = Decoder::new();
        d.push(&out);
        assert_eq!(d.next_frame().unwrap(), Some(Frame::Exit(3)));
        assert_eq!(d.next_frame().unwrap(), Some(Frame::Stderr(b"abc\0def".to_vec())));
        assert_eq!(d.next_frame().unwrap(), None);
    }

    #[test]
    fn broken_streams_are_errors_not_panics() {
        let mut d = Decoder::new();
        d.push(&[99, 0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(ProtoError::UnknownKind(99)));
        let mut d = Decoder::new();
        d.push(&[6, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(d.next_frame(), Err(ProtoError::TooLong(_))));
        let mut d = Decoder::new();
        d.push(&[8, 2, 0, 0, 0, 1, 2]);
        assert_eq!(d.next_frame(), Err(ProtoError::Malformed("exit")));
        let mut d = Decoder::new();
        d.push(&[5, 1, 0, 0, 0, 1]);
        assert_eq!(d.next_frame(), Err(ProtoError::Malformed("signal")));
        let mut d = Decoder::new();
        d.push(&[9, 2, 0, 0, 0, 5, b'a']);
        assert_eq!(d.next_frame(), Err(ProtoError::Malformed("log")));
    }
}
