//! A registry that answers too slowly, or not at all, must neither hang a
//! pull nor keep it silent: a deadline on the wait for response headers, a
//! low-speed limit on bodies (curl's `--speed-limit`/`--speed-time`), and a
//! line on stderr while berth waits.
//!
//! The bound on the whole: a request waits at most one window for its
//! headers, and a body ends when fewer than `bytes` arrive in a window; each
//! request is tried `RetryPolicy::attempts` times (4). With the defaults a
//! registry that never answers fails after 4 × 30 s plus backoff, and a blob
//! that trickles is abandoned after one window per resume (`PullOptions::
//! resumes`, 5: 6 × 30 s).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, Stream, StreamExt};
use tokio::time::Instant;

use super::{BlobStream, RegistryError};

/// `BYTES/SECONDS`: overrides the low-speed limit (tests use short windows).
pub const LOW_SPEED_ENV: &str = "BERTH_LOW_SPEED";

/// Fewer than `bytes` bytes over a `window` ends a transfer; no response
/// headers within a `window` ends a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowSpeed {
    pub bytes: u64,
    pub window: Duration,
}

impl Default for LowSpeed {
    /// 1 KiB in 30 s: far below any working link, yet a stall shows within
    /// half a minute.
    fn default() -> Self {
        LowSpeed { bytes: 1024, window: Duration::from_secs(30) }
    }
}

impl LowSpeed {
    /// `BYTES/SECONDS`, e.g. `1024/30` or `1024/0.5`.
    pub fn parse(s: &str) -> Result<LowSpeed, String> {
        let bad = || format!("{LOW_SPEED_ENV}={s:?}: expected BYTES/SECONDS, e.g. 1024/30");
        let (bytes, secs) = s.split_once('/').ok_or_else(bad)?;
        let bytes: u64 = bytes.trim().parse().map_err(|_| bad())?;
        let secs: f64 = secs.trim().parse().map_err(|_| bad())?;
        if !(0.01..=86_400.0).contains(&secs) {
            return Err(bad());
        }
        Ok(LowSpeed { bytes, window: Duration::from_secs_f64(secs) })
    }

    /// The limit from `$BERTH_LOW_SPEED`, or the default.
    pub fn from_env() -> Result<LowSpeed, RegistryError> {
        match std::env::var(LOW_SPEED_ENV) {
            Ok(v) => LowSpeed::parse(&v).map_err(RegistryError::Client),
            Err(_) => Ok(LowSpeed::default()),
        }
    }

    /// How long a request waits before berth says it is waiting: a third of
    /// the window, at most 10 s.
    pub fn notice_after(&self) -> Duration {
        (self.window / 3).min(Duration::from_secs(10))
    }
}

/// Where the client says what it is waiting for or retrying, at default
/// verbosity (a pull's progress output); the log at `info` when unset.
#[derive(Clone, Default)]
pub struct Notices(Option<Arc<Say>>);

type Say = dyn Fn(&str) + Send + Sync;

impl Notices {
    pub fn to(f: impl Fn(&str) + Send + Sync + 'static) -> Notices {
        Notices(Some(Arc::new(f)))
    }

    pub fn say(&self, line: &str) {
        match &self.0 {
            Some(f) => f(line),
            None => tracing::info!("{line}"),
        }
    }
}

impl fmt::Debug for Notices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Notices(..)" } else { "Notices(log)" })
    }
}

/// A window as people read it: `30 s`, `0.5 s`.
pub(crate) fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s} s")
    }
}

/// Waits for `response` (connect, request, headers) at most one window,
/// saying so on `notices` once the wait gets long.
pub(super) async fn headers<T>(
    response: impl Future<Output = Result<T, RegistryError>>,
    low: LowSpeed,
    notices: &Notices,
    registry: &str,
) -> Result<T, RegistryError> {
    tokio::pin!(response);
    let notice = tokio::time::sleep(low.notice_after());
    let deadline = tokio::time::sleep(low.window);
    tokio::pin!(notice, deadline);
    let mut noticed = false;
    loop {
        tokio::select! {
            r = &mut response => return r,
            _ = &mut notice, if !noticed => {
                noticed = true;
                notices.say(&format!(
                    "registry {registry}: no response after {}; waiting up to {}",
                    secs(low.notice_after()),
                    secs(low.window)
                ));
            }
            _ = &mut deadline => return Err(RegistryError::NoResponse { registry: registry.to_string(), waited: low.window }),
        }
    }
}

struct Watch<S> {
    inner: S,
    low: LowSpeed,
    registry: String,
    window_start: Instant,
    in_window: u64,
    /// The last window came up short: end with an error after its bytes.
    too_slow: bool,
}

/// `body`, ended by a `TooSlow` error when fewer than `low.bytes` arrive in
/// a window (consecutive windows from the first poll).
pub(super) fn body(body: impl Stream<Item = Result<bytes::Bytes, RegistryError>> + Send + 'static, low: LowSpeed, registry: &str) -> BlobStream {
    let watch = Watch { inner: Box::pin(body), low, registry: registry.to_string(), window_start: Instant::now(), in_window: 0, too_slow: false };
    Box::pin(stream::unfold(Some(watch), |state| async move {
        let mut w = state?;
        let slow = |w: &Watch<_>| RegistryError::TooSlow { registry: w.registry.clone(), bytes: w.low.bytes, window: w.low.window };
        if w.too_slow {
            return Some((Err(slow(&w)), None));
        }
        loop {
            let deadline = w.window_start + w.low.window;
            match tokio::time::timeout_at(deadline, w.inner.next()).await {
                Ok(Some(Ok(chunk))) => {
                    w.in_window += chunk.len() as u64;
                    let now = Instant::now();
                    if now >= deadline {
                        w.too_slow = w.in_window < w.low.bytes;
                        w.window_start = now;
                        w.in_window = 0;
                    }
                    return Some((Ok(chunk), Some(w)));
                }
                Ok(Some(Err(e))) => return Some((Err(e), None)),
                Ok(None) => return None,
                Err(_) if w.in_window < w.low.bytes => return Some((Err(slow(&w)), None)),
                Err(_) => {
                    w.window_start = Instant::now();
                    w.in_window = 0;
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bytes_over_seconds() {
        assert_eq!(LowSpeed::parse("1024/30"), Ok(LowSpeed::default()));
        assert_eq!(LowSpeed::parse("10/0.5"), Ok(LowSpeed { bytes: 10, window: Duration::from_millis(500) }));
        for bad in ["", "1024", "x/30", "1024/x", "1024/0", "1024/-1", "1024/NaN", "1024/inf", "-1/30"] {
            assert!(LowSpeed::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(secs(Duration::from_secs(30)), "30 s");
        assert_eq!(secs(Duration::from_millis(500)), "0.5 s");
    }

    fn trickle(chunks: usize, every: Duration) -> impl Stream<Item = Result<bytes::Bytes, RegistryError>> + Send {
        stream::iter(0..chunks).then(move |_| async move {
            tokio::time::sleep(every).await;
            Ok(bytes::Bytes::from_static(b"x"))
        })
    }

    // Real time, short windows (tokio's paused clock needs a feature berth
    // does not build): the bounds leave room for a loaded machine.
    #[tokio::test]
    async fn a_trickle_ends_after_one_window() {
        let low = LowSpeed { bytes: 100, window: Duration::from_millis(300) };
        let start = Instant::now();
        let mut s = body(trickle(1000, Duration::from_millis(20)), low, "r.example");
        let mut got = 0;
        let err = loop {
            match s.next().await {
                Some(Ok(b)) => got += b.len(),
                Some(Err(e)) => break e,
                None => panic!("the trickle was not stopped"),
            }
        };
        assert!(matches!(err, RegistryError::TooSlow { .. }), "{err}");
        assert!(err.is_retryable());
        assert_eq!(err.to_string(), "registry r.example: too slow: less than 100 bytes in 0.3 s");
        assert!(got < 100, "{got}");
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
    }

    #[tokio::test]
    async fn silence_ends_after_one_window_and_enough_bytes_pass() {
        let low = LowSpeed { bytes: 2, window: Duration::from_millis(200) };
        let mut s = body(stream::pending(), low, "r");
        assert!(matches!(s.next().await, Some(Err(RegistryError::TooSlow { .. }))));
        // About 20 bytes per window where 2 are enough: the whole body arrives.
        let s = body(trickle(60, Duration::from_millis(10)), low, "r");
        let all: Vec<_> = s.collect().await;
        assert_eq!(all.len(), 60);
        assert!(all.iter().all(Result::is_ok));
    }

    #[tokio::test]
    async fn headers_wait_one_window_and_say_so() {
        let said = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let s = said.clone();
        let notices = Notices::to(move |l| s.lock().unwrap().push(l.to_string()));
        let low = LowSpeed { bytes: 1024, window: Duration::from_millis(300) };
        let start = Instant::now();
        let r: Result<(), _> = headers(std::future::pending(), low, &notices, "r.example").await;
        let e = r.unwrap_err();
        assert_eq!(e.to_string(), "registry r.example: no response in 0.3 s");
        assert!(e.is_retryable());
        assert!(start.elapsed() >= Duration::from_millis(300) && start.elapsed() < Duration::from_secs(3));
        assert_eq!(*said.lock().unwrap(), ["registry r.example: no response after 0.1 s; waiting up to 0.3 s"]);
        let r = headers(async { Ok(7) }, low, &notices, "r").await;
        assert_eq!(r.unwrap(), 7);
    }
}
