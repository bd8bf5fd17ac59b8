//! What delivery depends on, as the parts that know it report it: the component link (up since
//! when, the last failure with its hint, the next attempt) and, for the fan-out backend, the
//! XEP-0356 privileges of each served domain. `/readyz`, the status page, `extpresence status`,
//! `/metrics` and every write's answer read it from here, so they all tell the same story.
//!
//! Written by `xmpp/link.rs` (the link) and `delivery/fanout/` (privileges); a write asks
//! [`Health::pending`] (an atomic load while everything is fine).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::clock::now_ms;

/// A link failure as reported: what happened, the likely cause and the setting to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// What happened (the server's own text included).
    pub error: String,
    /// The likely cause and the fix; empty when unknown.
    pub hint: String,
}

/// The component link as last reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// The handshake is done and the stream is open.
    pub up: bool,
    /// Since when it is up, or down (ms since the epoch; 0 before the first attempt ends).
    pub since_ms: u64,
    /// The last failure (kept after a later success, for the operator).
    pub last_error: Option<Failure>,
    /// When the next connection attempt starts, while down.
    pub next_attempt_ms: Option<u64>,
    /// Connection attempts so far.
    pub attempts: u64,
}

/// A served domain's XEP-0356 privileges, as the server advertised them (fan-out backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Privilege {
    /// The link is not up, or it is and the advertisement may still come.
    Waiting,
    /// Rosters may be read: delivery works. `presence` says whether users' presence is
    /// forwarded (the read side); `None` when not granted.
    Granted {
        /// The roster access granted (`get` or `both`).
        roster: String,
        /// The presence access granted (`managed_entity`, `roster`), if any.
        presence: Option<String>,
    },
    /// Not granted: nothing reaches this domain's users' contacts.
    Missing {
        /// What we saw (or did not see).
        reason: String,
        /// What to change in the server's config.
        fix: String,
        /// When the link reconnects to look again (the server grants privileges at connect).
        retry_at_ms: Option<u64>,
    },
}

impl Privilege {
    /// Whether delivery to this domain's users' contacts works.
    pub fn granted(&self) -> bool {
        matches!(self, Privilege::Granted { .. })
    }
}

#[derive(Debug)]
struct State {
    link: LinkStatus,
    /// Served domain → privilege; empty for the Tigase backend (the server needs none).
    privileges: BTreeMap<String, Privilege>,
}

#[derive(Debug)]
struct Inner {
    started_ms: u64,
    /// `link.up` and every privilege granted: the fast answer of [`Health::pending`].
    delivering: AtomicBool,
    /// When a held-not-delivered warning was last due ([`Health::warning_due`]).
    last_warning_ms: AtomicU64,
    state: Mutex<State>,
}

/// The shared health record (cheap to clone).
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

impl Health {
    /// A record for these served domains. `privileges`: whether delivery needs XEP-0356
    /// privileges (the fan-out backend); each domain starts as [`Privilege::Waiting`].
    pub fn new<'a>(domains: impl IntoIterator<Item = &'a str>, privileges: bool) -> Health {
        let privileges = if privileges {
            domains
                .into_iter()
                .map(|d| (d.to_string(), Privilege::Waiting))
                .collect()
        } else {
            BTreeMap::new()
        };
        Health {
            inner: Arc::new(Inner {
                started_ms: now_ms(),
                delivering: AtomicBool::new(false),
                last_warning_ms: AtomicU64::new(0),
                state: Mutex::new(State {
                    link: LinkStatus::default(),
                    privileges,
                }),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        let mut s = self.lock();
        f(&mut s);
        let delivering = s.link.up && s.privileges.values().all(Privilege::granted);
        self.inner.delivering.store(delivering, Ordering::Release);
    }

    /// Whether a warning that may be said once per `every_ms` is due now (then it is not again
    /// for `every_ms`, whoever asks).
    pub fn warning_due(&self, every_ms: u64) -> bool {
        let now = now_ms();
        let last = self.inner.last_warning_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= every_ms
            && self
                .inner
                .last_warning_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// When the process started (ms since the epoch).
    pub fn started_ms(&self) -> u64 {
        self.inner.started_ms
    }

    /// A connection attempt starts.
    pub fn link_attempt(&self) {
        self.update(|s| {
            s.link.attempts += 1;
            s.link.next_attempt_ms = None;
        });
    }

    /// The handshake is done. Privileges are asked for again (the server grants them at
    /// connect).
    pub fn link_up(&self) {
        self.update(|s| {
            s.link.up = true;
            s.link.since_ms = now_ms();
            s.link.next_attempt_ms = None;
            for p in s.privileges.values_mut() {
                match p {
                    // Still missing until the server says otherwise; the retry just happened.
                    Privilege::Missing { retry_at_ms, .. } => *retry_at_ms = None,
                    _ => *p = Privilege::Waiting,
                }
            }
        });
    }

    /// The link is down (or an attempt failed): why, and when the next attempt starts.
    pub fn link_down(&self, failure: Option<Failure>, next_attempt_ms: Option<u64>) {
        self.update(|s| {
            if s.link.up || s.link.since_ms == 0 {
                s.link.since_ms = now_ms();
            }
            s.link.up = false;
            if failure.is_some() {
                s.link.last_error = failure;
            }
            s.link.next_attempt_ms = next_attempt_ms;
            for p in s.privileges.values_mut() {
                match p {
                    Privilege::Missing { retry_at_ms, .. } => *retry_at_ms = None,
                    p if p.granted() => *p = Privilege::Waiting,
                    _ => {}
                }
            }
        });
    }

    /// When the link reconnects to look again for missing privileges (`None`: it does not by
    /// itself), on every domain whose privileges are missing.
    pub fn set_privilege_retry(&self, at_ms: Option<u64>) {
        self.update(|s| {
            for p in s.privileges.values_mut() {
                if let Privilege::Missing { retry_at_ms, .. } = p {
                    *retry_at_ms = at_ms;
                }
            }
        });
    }

    /// What the server advertised, or did not, for `domain` (ignored for a domain not served).
    pub fn set_privilege(&self, domain: &str, privilege: Privilege) {
        self.update(|s| {
            if let Some(p) = s.privileges.get_mut(domain) {
                *p = privilege;
            }
        });
    }

    /// The link as last reported.
    pub fn link(&self) -> LinkStatus {
        self.lock().link.clone()
    }

    /// Each served domain's privileges (empty when the backend needs none).
    pub fn privileges(&self) -> BTreeMap<String, Privilege> {
        self.lock().privileges.clone()
    }

    /// Whether a change of a user of `domain` is held for later instead of going out now: the
    /// link is down, or the domain's privileges are not (yet) granted. `None` when it goes
    /// out now; else the reason.
    pub fn pending(&self, domain: &str) -> Option<&'static str> {
        if self.inner.delivering.load(Ordering::Acquire) {
            return None;
        }
        let s = self.lock();
        if !s.link.up {
            return Some("the XMPP component link is down");
        }
        match s.privileges.get(domain) {
            None | Some(Privilege::Granted { .. }) => None,
            Some(Privilege::Waiting) => Some("waiting for the server's XEP-0356 privileges"),
            Some(Privilege::Missing { .. }) => {
                Some("the server grants no XEP-0356 roster privilege for this domain")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_until_link_and_every_privilege() {
        let h = Health::new(["a.example", "b.example"], true);
        assert!(h.pending("a.example").unwrap().contains("link"));
        h.link_attempt();
        h.link_up();
        assert!(h.pending("a.example").unwrap().contains("waiting"));
        let granted = Privilege::Granted {
            roster: "get".into(),
            presence: None,
        };
        h.set_privilege("a.example", granted.clone());
        assert_eq!(h.pending("a.example"), None);
        assert!(h.pending("b.example").is_some());
        h.set_privilege(
            "b.example",
            Privilege::Missing {
                reason: "none".into(),
                fix: "grant".into(),
                retry_at_ms: None,
            },
        );
        assert!(h.pending("b.example").unwrap().contains("no XEP-0356"));
        h.set_privilege("b.example", granted);
        assert_eq!(h.pending("b.example"), None);
        h.link_down(None, Some(now_ms() + 500));
        assert!(h.pending("a.example").unwrap().contains("link"));
        assert_eq!(h.privileges()["a.example"], Privilege::Waiting);
        assert_eq!(h.link().attempts, 1);
    }

    #[test]
    fn tigase_needs_the_link_only() {
        let h = Health::new(["a.example"], false);
        assert!(h.pending("a.example").is_some());
        h.link_up();
        assert_eq!(h.pending("a.example"), None);
        assert!(h.privileges().is_empty());
    }
}
