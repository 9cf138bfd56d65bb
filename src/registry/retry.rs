//! Bounded retries: exponential backoff with jitter, and `Retry-After`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often and how patiently to retry a request that failed in a way that
/// may pass (connection errors, 5xx, 429).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included (1 = no retry).
    pub attempts: u32,
    /// Delay before the first retry; doubled for each further one.
    pub base_delay: Duration,
    /// Ceiling on one delay. A `Retry-After` longer than this ends the
    /// retries: berth reports it rather than hang.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 4, base_delay: Duration::from_millis(250), max_delay: Duration::from_secs(10) }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (0 for the first retry), or
    /// `None` when no retry is left or the server asks for more patience
    /// than `max_delay`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if retry + 1 >= self.attempts {
            return None;
        }
        if let Some(after) = retry_after {
            return (after <= self.max_delay).then_some(after);
        }
        let exp = self.base_delay.saturating_mul(1u32 << retry.min(16)).min(self.max_delay);
        // Full jitter over the upper half: spreads out clients that failed
        // together without ever retrying at once.
        let half = exp / 2;
        Some(half + half.mul_f64(random_unit()))
    }
}

/// A number in [0, 1) that differs between calls (std's hasher keys are
/// random per `RandomState`).
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// `Retry-After: <seconds>` or `Retry-After: <IMF-fixdate>` (RFC 9110
/// §10.2.3), as a delay from `now`. A date in the past is no delay.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = parse_http_date(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let (_weekday, rest) = s.split_once(", ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts[..] else { return None };
    let day: u32 = day.parse().ok().filter(|d| (1..=31).contains(d) && day.len() == 2)?;
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| *m == month)? as u32
        + 1;
    let year: i64 = year.parse().ok().filter(|_| year.len() == 4)?;
    let hms: Vec<u64> = time.split(':').map(|x| x.parse().ok().filter(|_| x.len() == 2)).collect::<Option<_>>()?;
    let [h, m, sec] = hms[..] else { return None };
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days.checked_mul(86_400)? + (h * 3600 + m * 60 + sec) as i64;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Tue, 29 Feb 2000 00:00:00 GMT", UNIX_EPOCH),
            Some(Duration::from_secs(951_782_400))
        );
        for bad in ["", "-1", "1.5", "soon", "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 6 Nov 1994 08:49:37 GMT",
                    "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 06 Nov 1994 25:49:37 GMT", "99999999999999999999999"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let p = RetryPolicy { attempts: 5, base_delay: Duration::from_millis(100), max_delay: Duration::from_millis(300) };
        for retry in 0..4 {
            let d = p.delay(retry, None).unwrap();
            let cap = Duration::from_millis(100 << retry).min(Duration::from_millis(300));
            assert!(d >= cap / 2 && d <= cap, "retry {retry}: {d:?}");
        }
        assert_eq!(p.delay(4, None), None, "attempts are bounded");
        assert_eq!(p.delay(0, Some(Duration::from_millis(200))), Some(Duration::from_millis(200)));
        assert_eq!(p.delay(0, Some(Duration::from_secs(5))), None, "too long a Retry-After ends retries");
        let none = RetryPolicy { attempts: 1, ..p };
        assert_eq!(none.delay(0, None), None);
    }
}
