//! Rate limits: a token bucket per credential (configured key or token, by name) and a global
//! one, checked right after a credential is recognised — before the body is read or anything is
//! stored. Over a limit, the request is refused with the time after which it would pass
//! (`Retry-After`), counted per credential for `/metrics`.
//!
//! The defaults let a busy PBX through (100 requests/s per credential, bursts of 200; a bulk
//! request of 1,000 updates is one request) and stop a runaway script; `[http] rate_per_sec`,
//! `rate_burst`, `global_rate_per_sec` and `global_rate_burst` change them.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

/// Default sustained requests per second per credential.
pub const RATE: u32 = 100;
/// Default burst per credential.
pub const BURST: u32 = 200;
/// Default sustained requests per second over all credentials.
pub const GLOBAL_RATE: u32 = 2000;
/// Default global burst.
pub const GLOBAL_BURST: u32 = 4000;

/// The configured limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSettings {
    /// Per credential: sustained rate and burst.
    pub rate: NonZeroU32,
    /// Per credential burst.
    pub burst: NonZeroU32,
    /// Global sustained rate.
    pub global_rate: NonZeroU32,
    /// Global burst.
    pub global_burst: NonZeroU32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        let n = |v| NonZeroU32::new(v).expect("non-zero");
        LimitSettings {
            rate: n(RATE),
            burst: n(BURST),
            global_rate: n(GLOBAL_RATE),
            global_burst: n(GLOBAL_BURST),
        }
    }
}

/// The buckets.
pub struct Limits {
    per_key: DefaultKeyedRateLimiter<Arc<str>>,
    global: DefaultDirectRateLimiter,
    clock: DefaultClock,
    /// Refusals per credential name (`global` for the global bucket).
    refused: Mutex<BTreeMap<Arc<str>, u64>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limits")
    }
}

impl Limits {
    /// Buckets with these limits.
    pub fn new(s: LimitSettings) -> Limits {
        Limits {
            per_key: DefaultKeyedRateLimiter::keyed(Quota::per_second(s.rate).allow_burst(s.burst)),
            global: DefaultDirectRateLimiter::direct(
                Quota::per_second(s.global_rate).allow_burst(s.global_burst),
            ),
            clock: DefaultClock::default(),
            refused: Mutex::new(BTreeMap::new()),
        }
    }

    /// Take one request of credential `name` from its bucket and the global one; `Err` with the
    /// wait after which it would pass.
    pub fn check(&self, name: &Arc<str>) -> Result<(), Duration> {
        let refused = |who: Arc<str>, wait: Duration| {
            *self
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(who)
                .or_default() += 1;
            Err(wait)
        };
        if let Err(not_until) = self.per_key.check_key(name) {
            return refused(name.clone(), not_until.wait_time_from(self.clock.now()));
        }
        if let Err(not_until) = self.global.check() {
            return refused("global".into(), not_until.wait_time_from(self.clock.now()));
        }
        // Buckets of credentials not seen for a while go (they are full again anyway).
        if self.per_key.len() > 10_000 {
            self.per_key.retain_recent();
        }
        Ok(())
    }

    /// Refusals so far, per credential name.
    pub fn refused(&self) -> Vec<(Arc<str>, u64)> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_over_the_limit_is_refused_with_a_wait() {
        let n = |v| NonZeroU32::new(v).unwrap();
        let l = Limits::new(LimitSettings {
            rate: n(10),
            burst: n(5),
            global_rate: n(1000),
            global_burst: n(1000),
        });
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        for _ in 0..5 {
            assert!(l.check(&a).is_ok());
        }
        let wait = l.check(&a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(l.check(&b).is_ok(), "another credential has its own bucket");
        assert_eq!(l.refused(), vec![(a.clone(), 1)]);
        std::thread::sleep(Duration::from_millis(120));
        assert!(l.check(&a).is_ok(), "refilled");
    }
}
