//! Pull progress on stderr: one bar per layer when stderr is a terminal,
//! plain event lines otherwise (CI logs), nothing with `-q`. Never stdout,
//! and a closed stderr is ignored (`exit::say`), never fatal.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::exit::say;
use crate::image::digest::Digest;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Quiet,
    Lines,
    Bars,
}

impl Mode {
    /// Bars on a terminal, lines elsewhere, nothing when `quiet`.
    pub fn detect(quiet: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        }
    }
}

/// Shared by every download of one pull.
#[derive(Clone)]
pub struct Progress {
    mode: Mode,
    bars: Option<Arc<MultiProgress>>,
}

impl Progress {
    pub fn new(mode: Mode) -> Progress {
        let bars = (mode == Mode::Bars).then(|| Arc::new(MultiProgress::with_draw_target(ProgressDrawTarget::stderr())));
        Progress { mode, bars }
    }

    pub fn quiet() -> Progress {
        Progress::new(Mode::Quiet)
    }

    /// A one-off event (`resolved …`, `stored …`).
    pub fn event(&self, msg: &str) {
        match (&self.mode, &self.bars) {
            (Mode::Quiet, _) => {}
            (Mode::Bars, Some(b)) => {
                let _ = b.println(msg);
            }
            _ => say(msg),
        }
    }

    /// Starts reporting one blob of `size` bytes, `what` being `layer` or
    /// `config`.
    pub fn blob(&self, what: &'static str, digest: &Digest, size: u64) -> BlobProgress {
        let short = short(digest);
        let bar = self.bars.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new(size));
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(format!("{what} {short}"));
            bar
        });
        BlobProgress { mode: self.mode, what, short, size, bar }
    }
}

/// One blob's bar or lines.
pub struct BlobProgress {
    mode: Mode,
    what: &'static str,
    short: String,
    size: u64,
    bar: Option<ProgressBar>,
}

impl BlobProgress {
    /// The transfer starts (or restarts) at `offset`.
    pub fn start(&self, offset: u64) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Lines if offset > 0 => {
                say(&format!("resuming {} {} at {} of {}", self.what, self.short, human(offset), human(self.size)))
            }
            Mode::Lines => say(&format!("pulling {} {} {}", self.what, self.short, human(self.size))),
            Mode::Bars => {
                if let Some(b) = &self.bar {
                    b.set_position(offset);
                }
            }
        }
    }

    pub fn advance(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// The transfer broke and will be retried.
    pub fn retry(&self, why: &str) {
        match self.mode {
            Mode::Quiet => {}
            Mode::Lines => say(&format!("{} {}: {why}; retrying", self.what, self.short)),
            Mode::Bars => {
                if let Some(b) = &self.bar {
                    b.set_message(format!("retrying: {why}"));
                }
            }
        }
    }

    /// Verified and stored (`fetched`), or found already present.
    pub fn done(self, fetched: bool) {
        let state = if fetched { "done" } else { "already present" };
        match self.mode {
            Mode::Quiet => {}
            Mode::Lines => say(&format!("{} {} {state}", self.what, self.short)),
            Mode::Bars => {
                if let Some(b) = &self.bar {
                    b.set_position(self.size);
                    b.finish_with_message(state);
                }
            }
        }
    }

    /// Failed for good.
    pub fn fail(self) {
        if let Some(b) = &self.bar {
            b.abandon_with_message("failed");
        }
    }
}

/// `sha256:` and the first 12 hex digits.
pub fn short(d: &Digest) -> String {
    format!("sha256:{}", &d.hex()[..12])
}

/// Sizes as podman prints them: decimal units, three significant digits.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v < 10.0 {
        format!("{v:.2} {}", UNITS[u])
    } else if v < 100.0 {
        format!("{v:.1} {}", UNITS[u])
    } else {
        format!("{v:.0} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(999), "999 B");
        assert_eq!(human(1_000), "1.00 kB");
        assert_eq!(human(12_345_678), "12.3 MB");
        assert_eq!(human(412_000_000), "412 MB");
    }
}
