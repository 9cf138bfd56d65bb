//! The single-threaded poll(2) loop of the pod process and the `exec -t`
//! helper.
//!
//! Each fd-driven job (a sidecar's log pipe, the terminal relay, later a
//! network helper or a virtio-serial relay) is an [`EventSource`]: it says
//! which fds it waits on and handles their readiness, so a new one plugs in
//! without touching the loop. Sources that are done leave the loop.
//!
//! The signalfd is the loop's one fixed fd, not a source: [`EventLoop::turn`]
//! returns the drained signals to the caller, which owns what reaping and
//! forwarding need (the pod's members, the exec's pid). A source that cares
//! about a signal (the relay: SIGWINCH) also sees it through
//! [`EventSource::signal`].

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;

use super::signals::Signals;

/// One fd-driven job of the loop.
pub trait EventSource {
    /// The fds to wait on now, each with the events wanted (may be empty
    /// for a while, e.g. while a buffer is full).
    fn interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags)>;
    /// Handles the fds that fired, with their returned events.
    fn ready(&mut self, fired: &[(RawFd, PollFlags)]);
    /// True once the source has nothing more to do (EOF): it leaves the loop.
    fn done(&self) -> bool;
    /// A signal the loop drained; most sources ignore signals.
    fn signal(&mut self, _sig: Signal) {}
    /// Takes what is left without waiting, once the writer has ended.
    fn finish(&mut self) {}
}

/// Names a source in its loop; stays valid while other sources come and go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceId(u64);

#[derive(Default)]
pub struct EventLoop {
    sources: Vec<(SourceId, Box<dyn EventSource>)>,
    next: u64,
}

impl EventLoop {
    pub fn new() -> EventLoop {
        EventLoop::default()
    }

    /// Registers a source; it is polled from the next turn on.
    pub fn add(&mut self, source: Box<dyn EventSource>) -> SourceId {
        let id = SourceId(self.next);
        self.next += 1;
        self.sources.push((id, source));
        id
    }

    /// Takes a source out of the loop, finishes it and drops it; nothing
    /// happens if it already left.
    pub fn finish(&mut self, id: SourceId) {
        if let Some(k) = self.sources.iter().position(|(i, _)| *i == id) {
            let (_, mut source) = self.sources.remove(k);
            source.finish();
        }
    }

    /// Finishes and drops every source.
    pub fn finish_all(&mut self) {
        for (_, mut source) in self.sources.drain(..) {
            source.finish();
        }
    }

    /// The number of sources still in the loop.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Waits until a source's fd or `signals` fires or `timeout` passes
    /// (`None`: no timeout), dispatches readiness in registration order,
    /// drops the sources that are done and returns the drained signals.
    pub fn turn(&mut self, signals: Option<&Signals>, timeout: Option<Duration>) -> nix::Result<Vec<Signal>> {
        let timeout = match timeout {
            None => PollTimeout::NONE,
            Some(d) => PollTimeout::try_from(d.as_millis().clamp(1, i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX),
        };
        let fired = {
            let mut fds = Vec::new();
            if let Some(s) = signals {
                fds.push(PollFd::new(s.fd(), PollFlags::POLLIN));
            }
            // Which source each polled fd (after the signalfd) belongs to.
            let mut owner = Vec::new();
            for (k, (_, source)) in self.sources.iter().enumerate() {
                for (fd, flags) in source.interest() {
                    owner.push((k, fd.as_raw_fd()));
                    fds.push(PollFd::new(fd, flags));
                }
            }
            match nix::poll::poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e),
            }
            let skip = fds.len() - owner.len();
            let mut fired: Vec<Vec<(RawFd, PollFlags)>> = vec![Vec::new(); self.sources.len()];
            for (pfd, &(k, raw)) in fds[skip..].iter().zip(&owner) {
                if let Some(r) = pfd.revents().filter(|r| !r.is_empty()) {
                    fired[k].push((raw, r));
                }
            }
            fired
        };
        for ((_, source), fired) in self.sources.iter_mut().zip(&fired) {
            if !fired.is_empty() {
                source.ready(fired);
            }
        }
        let drained = signals.map(Signals::drain).unwrap_or_default();
        for &sig in &drained {
            for (_, source) in &mut self.sources {
                source.signal(sig);
            }
        }
        self.sources.retain(|(_, s)| !s.done());
        Ok(drained)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::os::fd::{AsFd, OwnedFd};
    use std::rc::Rc;
    use std::time::Instant;

    use nix::fcntl::OFlag;

    /// Reads a non-blocking pipe until EOF into a shared buffer.
    struct PipeSource {
        read: Option<OwnedFd>,
        got: Rc<RefCell<Vec<u8>>>,
        finished: Rc<RefCell<bool>>,
    }

    impl PipeSource {
        fn read_available(&mut self) {
            let Some(fd) = self.read.as_ref().map(|f| f.as_raw_fd()) else { return };
            let mut buf = [0u8; 64];
            loop {
                match nix::unistd::read(fd, &mut buf) {
                    Ok(0) => {
                        self.read = None;
                        return;
                    }
                    Ok(n) => self.got.borrow_mut().extend_from_slice(&buf[..n]),
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => return,
                }
            }
        }
    }

    impl EventSource for PipeSource {
        fn interest(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
            self.read.iter().map(|f| (f.as_fd(), PollFlags::POLLIN)).collect()
        }
        fn ready(&mut self, _fired: &[(RawFd, PollFlags)]) {
            self.read_available();
        }
        fn done(&self) -> bool {
            self.read.is_none()
        }
        fn finish(&mut self) {
            self.read_available();
            *self.finished.borrow_mut() = true;
        }
    }

    struct Pipe {
        write: Option<OwnedFd>,
        got: Rc<RefCell<Vec<u8>>>,
        finished: Rc<RefCell<bool>>,
    }

    impl Pipe {
        fn write(&self, data: &[u8]) {
            nix::unistd::write(self.write.as_ref().unwrap(), data).unwrap();
        }
        fn close(&mut self) {
            self.write = None;
        }
        fn got(&self) -> Vec<u8> {
            self.got.borrow().clone()
        }
    }

    fn pipe_source(events: &mut EventLoop) -> (SourceId, Pipe) {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        let got = Rc::new(RefCell::new(Vec::new()));
        let finished = Rc::new(RefCell::new(false));
        let id = events.add(Box::new(PipeSource { read: Some(r), got: got.clone(), finished: finished.clone() }));
        (id, Pipe { write: Some(w), got, finished })
    }

    const LONG: Option<Duration> = Some(Duration::from_secs(10));

    #[test]
    fn a_pipe_is_read_until_eof_then_leaves() {
        let mut events = EventLoop::new();
        let (_, mut pipe) = pipe_source(&mut events);
        pipe.write(b"hello ");
        events.turn(None, LONG).unwrap();
        assert_eq!(pipe.got(), b"hello ");
        assert_eq!(events.len(), 1);
        pipe.write(b"world");
        pipe.close();
        events.turn(None, LONG).unwrap();
        assert_eq!(pipe.got(), b"hello world");
        assert!(events.is_empty(), "a source at EOF drops out");
    }

    #[test]
    fn a_turn_without_events_ends_at_the_timeout() {
        let mut events = EventLoop::new();
        let (_, pipe) = pipe_source(&mut events);
        let start = Instant::now();
        let signals = events.turn(None, Some(Duration::from_millis(50))).unwrap();
        let took = start.elapsed();
        assert!(signals.is_empty());
        assert!(took >= Duration::from_millis(45), "returned after {took:?}");
        assert!(took < Duration::from_secs(5), "returned after {took:?}");
        assert!(pipe.got().is_empty());
        assert_eq!(events.len(), 1);
        // No sources at all: still a plain sleep.
        let mut empty = EventLoop::new();
        let start = Instant::now();
        empty.turn(None, Some(Duration::from_millis(20))).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(15));
    }

    #[test]
    fn two_sources_ready_at_once_are_both_handled() {
        let mut events = EventLoop::new();
        let (_, a) = pipe_source(&mut events);
        let (_, b) = pipe_source(&mut events);
        a.write(b"a");
        b.write(b"b");
        events.turn(None, LONG).unwrap();
        assert_eq!(a.got(), b"a");
        assert_eq!(b.got(), b"b");
    }

    #[test]
    fn one_source_drops_out_and_the_other_stays() {
        let mut events = EventLoop::new();
        let (_, mut a) = pipe_source(&mut events);
        let (_, b) = pipe_source(&mut events);
        a.close();
        events.turn(None, LONG).unwrap();
        assert_eq!(events.len(), 1);
        // The remaining one is still polled (its fd is not confused with
        // the departed one's).
        b.write(b"still here");
        events.turn(None, LONG).unwrap();
        assert_eq!(b.got(), b"still here");
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn finish_takes_what_is_left_and_removes_the_source() {
        let mut events = EventLoop::new();
        let (a_id, a) = pipe_source(&mut events);
        let (_, b) = pipe_source(&mut events);
        a.write(b"left over");
        events.finish(a_id);
        assert_eq!(a.got(), b"left over");
        assert!(*a.finished.borrow());
        assert_eq!(events.len(), 1);
        events.finish(a_id);
        assert_eq!(events.len(), 1, "finishing a departed source does nothing");
        events.finish_all();
        assert!(*b.finished.borrow());
        assert!(events.is_empty());
    }
}
