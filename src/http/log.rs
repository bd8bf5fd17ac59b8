//! What request-derived text reaches the log, and how often.
//!
//! Everything a client sent (path segments, error messages that quote a body) is logged through
//! [`Escaped`] (`base/escape.rs`): control characters become `\n`, `\u{1b}` and the like, so a request can neither
//! forge log lines nor send escape sequences to an admin's terminal, and the value is cut to a
//! bounded length. Refused and failed requests are logged through [`RequestLog`]: the first few of
//! every period in full, the rest counted and summed up in one line when the period is over, so a
//! flood of bad requests cannot flood the journal. Exact counts per error code are in `/metrics`
//! (`extpresence_http_refused_total`).

use std::fmt::Display;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::base::escape::Escaped;

/// Length of a logging period.
pub const PERIOD: Duration = Duration::from_secs(10);
/// Refusals (and failures) logged in full per period; the rest are summed up.
const FULL_PER_PERIOD: u32 = 10;

/// Counts of the current period.
#[derive(Debug)]
struct Period {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

/// The rate limit on request log lines (see the module doc).
#[derive(Debug)]
pub struct RequestLog {
    period: Mutex<Period>,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog {
            period: Mutex::new(Period {
                started: Instant::now(),
                logged: 0,
                suppressed: 0,
            }),
        }
    }
}

/// One refused or failed request, as logged.
#[derive(Clone, Copy)]
pub struct Line<'a> {
    /// Refused or failed.
    pub kind: Kind,
    /// The answer's status.
    pub status: u16,
    /// The dialect (`tigase`, `v1`, …).
    pub dialect: &'a str,
    /// The request's method.
    pub method: &'a dyn Display,
    /// The request's path (never the query: it may hold a credential).
    pub path: &'a str,
    /// The refusal's code.
    pub code: &'a str,
    /// What the client was told.
    pub error: &'a dyn Display,
}

/// What became of a request that is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Refused (4xx): logged at INFO.
    Refused,
    /// Failed (5xx): logged at WARN.
    Failed,
}

impl RequestLog {
    /// Log one refused or failed request, unless this period's share of full lines is used up;
    /// then it is counted for the summary.
    pub fn request(&self, line: &Line<'_>) {
        {
            let mut p = self.period.lock().unwrap_or_else(|e| e.into_inner());
            Self::roll(&mut p);
            if p.logged >= FULL_PER_PERIOD {
                p.suppressed += 1;
                return;
            }
            p.logged += 1;
        }
        let Line {
            kind,
            status,
            dialect,
            method,
            path,
            code,
            error,
        } = *line;
        let (path, error) = (Escaped(path), Escaped(error));
        match kind {
            Kind::Refused => {
                info!(status, dialect, %method, %path, code, %error, "request refused")
            }
            Kind::Failed => warn!(status, dialect, %method, %path, code, %error, "request failed"),
        }
    }

    /// Write the summary of a period that is over (called by a timer, so the summary of the
    /// last period of a flood is not lost).
    pub fn flush(&self) {
        let mut p = self.period.lock().unwrap_or_else(|e| e.into_inner());
        Self::roll(&mut p);
    }

    fn roll(p: &mut Period) {
        let now = Instant::now();
        if now.duration_since(p.started) < PERIOD {
            return;
        }
        if p.suppressed > 0 {
            warn!(
                suppressed = p.suppressed,
                "{} more refused or failed requests in the last {:?} were not logged one by one \
                 (counts by code: extpresence_http_refused_total in /metrics)",
                p.suppressed,
                now.duration_since(p.started)
            );
        }
        *p = Period {
            started: now,
            logged: 0,
            suppressed: 0,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_lines_per_period_are_bounded() {
        let log = RequestLog::default();
        for _ in 0..100 {
            log.request(&Line {
                kind: Kind::Refused,
                status: 401,
                dialect: "tigase",
                method: &"POST",
                path: "/x",
                code: "missing_api_key",
                error: &"no key",
            });
        }
        let p = log.period.lock().unwrap();
        assert_eq!((p.logged, p.suppressed), (FULL_PER_PERIOD, 90));
    }
}
