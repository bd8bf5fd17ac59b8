//! Rate limits: a token bucket per credential (configured key or token, by name) and a global
//! one, checked right after a credential is recognised — before the body is read or anything is
//! stored. Over a limit, the request is refused with the time after which it would pass
//! (`Retry-After`), counted per credential for `/metrics`.
//!
//! The defaults let a busy PBX through (100 requests/s per credential, bursts of 200; a bulk
//! request of 1,000 updates is one request) and stop a runaway script; `[http] rate_per_sec`,
//! `rate_burst`, `global_rate_per_sec` and `global_rate_burst` change them.
//!
//! Failed authentications are limited apart, per client address ([`FailedAuth`]): a wrong key or
//! token (in any dialect, or in the status page's sign-in form) is charged to the address it came
//! from, never to a credential, so a flood from one address cannot lock out anyone else, and a
//! correct key is never charged.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Failed authentications one client address may make at once.
pub const FAILED_AUTH_BURST: u32 = 10;
/// After the burst, one more failed authentication per this long.
pub const FAILED_AUTH_REFILL: Duration = Duration::from_secs(6);
/// A refused address is logged at most once per this long.
pub const FAILED_AUTH_LOG_EVERY: Duration = Duration::from_secs(60);
/// Addresses tracked at most (about 50 bytes each); beyond it, those whose budget is full again
/// are forgotten first.
const FAILED_AUTH_TRACKED: usize = 100_000;

/// Failed authentications per client address: a budget of [`FAILED_AUTH_BURST`] failures that
/// refills one per [`FAILED_AUTH_REFILL`] (GCRA: each address keeps the time its budget is full
/// again). An address whose budget is spent has every authentication refused (also with a correct
/// key, so that guessing stops) until it refills. IPv6 addresses count per /64 (what one host
/// usually holds).
#[derive(Debug, Default)]
pub struct FailedAuth {
    peers: Mutex<HashMap<IpAddr, Peer>>,
    /// Wrong credentials, for `/metrics` (`reason="wrong_key"`).
    wrong: AtomicU64,
    /// Attempts refused because their address had spent its budget (`reason="peer_limited"`).
    limited: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    /// When this address's budget is full again.
    full_at: Instant,
    /// When its refusal was last logged.
    logged: Option<Instant>,
}

/// A refused attempt: how long until one more may be made, and whether to log it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Until the address may try again.
    pub wait: Duration,
    /// The first refusal of this address in [`FAILED_AUTH_LOG_EVERY`].
    pub log: bool,
}

/// The key an address is counted under: IPv6 per /64, IPv4 (also mapped into IPv6) as it is.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

impl FailedAuth {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Peer>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `ip` has spent its budget at `now`: then its attempt is refused (and counted).
    pub fn refused(&self, ip: IpAddr, now: Instant) -> Option<Refusal> {
        let mut peers = self.lock();
        let peer = peers.get_mut(&bucket(ip))?;
        // Refused while more than BURST - 1 failures are outstanding.
        let free_at = peer
            .full_at
            .checked_sub(FAILED_AUTH_REFILL * (FAILED_AUTH_BURST - 1))?;
        if free_at <= now {
            return None;
        }
        self.limited.fetch_add(1, Ordering::Relaxed);
        let log = peer
            .logged
            .is_none_or(|at| now.duration_since(at) >= FAILED_AUTH_LOG_EVERY);
        if log {
            peer.logged = Some(now);
        }
        Some(Refusal {
            wait: free_at - now,
            log,
        })
    }

    /// Charge one failed authentication to `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        self.wrong.fetch_add(1, Ordering::Relaxed);
        let mut peers = self.lock();
        if peers.len() >= FAILED_AUTH_TRACKED && !peers.contains_key(&bucket(ip)) {
            peers.retain(|_, p| p.full_at > now);
            if peers.len() >= FAILED_AUTH_TRACKED {
                // Every tracked address is in debt: forget the one nearest to full.
                if let Some(k) = peers.iter().min_by_key(|(_, p)| p.full_at).map(|(k, _)| *k) {
                    peers.remove(&k);
                }
            }
        }
        let peer = peers.entry(bucket(ip)).or_insert(Peer {
            full_at: now,
            logged: None,
        });
        peer.full_at = peer.full_at.max(now) + FAILED_AUTH_REFILL;
    }

    /// Wrong credentials so far, and attempts refused over the limit.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.wrong.load(Ordering::Relaxed),
            self.limited.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_authentications_are_limited_per_address() {
        let f = FailedAuth::default();
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for i in 0..FAILED_AUTH_BURST {
            assert_eq!(f.refused(a, t0), None, "failure {i} is within the budget");
            f.failed(a, t0);
        }
        let r = f.refused(a, t0).expect("over the budget");
        assert_eq!((r.wait, r.log), (FAILED_AUTH_REFILL, true));
        let r = f.refused(a, t0 + Duration::from_secs(1)).unwrap();
        assert!(!r.log, "logged once per minute");
        assert_eq!(f.refused(b, t0), None, "another address has its own budget");
        // One more after a refill, then refused again.
        let t1 = t0 + FAILED_AUTH_REFILL;
        assert_eq!(f.refused(a, t1), None);
        f.failed(a, t1);
        assert!(f.refused(a, t1).is_some());
        assert!(
            f.refused(a, t1 + FAILED_AUTH_LOG_EVERY).is_none(),
            "refilled by then"
        );
        assert_eq!(f.counts(), (FAILED_AUTH_BURST as u64 + 1, 3));
        // IPv6 per /64.
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        for _ in 0..FAILED_AUTH_BURST {
            f.failed(v6, t0);
        }
        assert!(f.refused("2001:db8::ffff:2".parse().unwrap(), t0).is_some());
        assert!(f.refused("2001:db8:0:1::1".parse().unwrap(), t0).is_none());
    }

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
