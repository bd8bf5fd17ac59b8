//! Whether a change would reach contacts now, and why not: the one report behind `/readyz`
//! (text, or JSON when asked), the status page's health panel and `extpresence status`.
//!
//! Ready means: the component link is up; for the fan-out backend, the server grants the
//! XEP-0356 roster privilege for every served domain (the Tigase backend needs none: the
//! handshake is its condition); the status store and the webhook outbox commit. Each condition
//! that fails is named with what to fix. Writes are still accepted while not ready: they are held
//! and delivered once it is fixed (their answers say so: [`AppState::pending`]).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::Response;
use serde::Serialize;
use tracing::warn;

use super::state::AppState;
use crate::base::clock::{now_ms, rfc3339};
use crate::base::health::{Failure, Privilege};
use crate::delivery::Delivery;

/// At most one log line per this period says that updates are held, not delivered.
pub const PENDING_WARN_EVERY: Duration = Duration::from_secs(10);

/// The header on a write's success answer whose change is held for later rather than sent now
/// (every dialect; `/v1` and Tigase also say it in their bodies).
pub const DELIVERY_HEADER: &str = "extpresence-delivery";

/// Mark `r` (a write's success answer) as held for later when `pending` says so.
pub fn mark_pending(mut r: Response, pending: Option<&str>) -> Response {
    if pending.is_some() {
        r.headers_mut()
            .insert(DELIVERY_HEADER, HeaderValue::from_static("pending"));
    }
    r
}

/// One condition of readiness.
#[derive(Debug, Clone, Serialize)]
pub struct Condition {
    /// `link`, `privileges:<domain>`, `store` or `webhook_outbox`.
    pub name: String,
    /// Met.
    pub ok: bool,
    /// What is wrong (empty when met).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// What to change (empty when met or unknown).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
    /// When extpresence tries again by itself (RFC 3339), if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_retry: Option<String>,
}

/// A link failure, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    /// When (RFC 3339).
    pub at: String,
    /// What happened.
    pub error: String,
    /// The likely cause and the fix.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

impl From<Failure> for LastError {
    fn from(f: Failure) -> LastError {
        LastError {
            at: rfc3339(f.at_ms),
            error: f.error,
            hint: f.hint,
        }
    }
}

/// The component link.
#[derive(Debug, Clone, Serialize)]
pub struct LinkReport {
    /// `[xmpp] server`.
    pub server: String,
    /// `[xmpp] component`.
    pub component: String,
    /// The handshake is done.
    pub up: bool,
    /// Since when up (or down), RFC 3339; absent before the first attempt ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The last failure, also after a later success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastError>,
    /// When the next attempt starts (RFC 3339), while down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
    /// Connection attempts since start.
    pub attempts: u64,
}

/// One served domain's privileges.
#[derive(Debug, Clone, Serialize)]
pub struct PrivilegeReport {
    /// `granted`, `waiting` (for the advertisement) or `missing`.
    pub state: &'static str,
    /// The roster access granted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roster: Option<String>,
    /// The presence access granted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every condition met: a change reaches contacts now.
    pub ready: bool,
    /// The extpresence version.
    pub version: &'static str,
    /// When the process started (RFC 3339).
    pub started_at: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// `fanout` or `tigase`.
    pub backend: &'static str,
    /// Every condition, met or not.
    pub conditions: Vec<Condition>,
    /// The component link.
    pub link: LinkReport,
    /// Each served domain's XEP-0356 privileges (fan-out backend only).
    pub privileges: BTreeMap<String, PrivilegeReport>,
    /// Statuses held (resources).
    pub held: usize,
    /// Real sessions the server announced.
    pub observed_sessions: usize,
    /// Webhook events in the outbox, not yet delivered.
    pub webhook_backlog: u64,
}

fn condition(name: impl Into<String>, failing: Option<(String, String, Option<u64>)>) -> Condition {
    let name = name.into();
    match failing {
        None => Condition {
            name,
            ok: true,
            reason: String::new(),
            fix: String::new(),
            next_retry: None,
        },
        Some((reason, fix, retry)) => Condition {
            name,
            ok: false,
            reason,
            fix,
            next_retry: retry.map(rfc3339),
        },
    }
}

impl AppState {
    /// Whether a change of a user of `domain` is held for later rather than sent now, and why
    /// (every dialect's success answer says so). While it is, one WARN line per
    /// [`PENDING_WARN_EVERY`] says so in the log.
    pub fn pending(&self, domain: &str) -> Option<&'static str> {
        let why = self.health.pending(domain)?;
        if self
            .health
            .warning_due(PENDING_WARN_EVERY.as_millis() as u64)
        {
            warn!(
                %domain,
                "updates are accepted and held, but not delivered: {why} (GET /readyz names the \
                 fix); they are delivered once it is fixed"
            );
        }
        Some(why)
    }

    /// The readiness report, read now.
    pub fn readiness(&self) -> Report {
        let link = self.health.link();
        let mut conditions = Vec::new();
        conditions.push(condition(
            "link",
            (!link.up).then(|| {
                let (reason, fix) = match &link.last_error {
                    Some(f) => (
                        format!("the XMPP component link is down: {}", f.error),
                        f.hint.clone(),
                    ),
                    None => (
                        "the XMPP component link is not up yet (connecting)".to_string(),
                        String::new(),
                    ),
                };
                (reason, fix, link.next_attempt_ms)
            }),
        ));
        let privileges = self.health.privileges();
        for (domain, p) in &privileges {
            let failing = match p {
                Privilege::Granted { .. } => None,
                Privilege::Waiting if !link.up => Some((
                    "unknown until the link is up (servers grant privileges at connect)".into(),
                    String::new(),
                    None,
                )),
                Privilege::Waiting => Some((
                    "waiting for the server's XEP-0356 privilege advertisement".into(),
                    String::new(),
                    None,
                )),
                Privilege::Missing {
                    reason,
                    fix,
                    retry_at_ms,
                } => Some((reason.clone(), fix.clone(), *retry_at_ms)),
            };
            conditions.push(condition(format!("privileges:{domain}"), failing));
        }
        conditions.push(condition(
            "store",
            self.table.store_failure().map(|why| {
                (
                    format!("the status store cannot commit: {why}"),
                    "check the disk of [store] path (space, permissions, errors in the kernel \
                     log); extpresence reopens it by itself"
                        .to_string(),
                    None,
                )
            }),
        ));
        conditions.push(condition(
            "webhook_outbox",
            self.metrics.webhooks.outbox_failure().map(|why| {
                (
                    format!("the webhook outbox cannot commit: {why}"),
                    "check the disk beside [store] path".to_string(),
                    None,
                )
            }),
        ));
        let now = now_ms();
        let started = self.health.started_ms();
        Report {
            ready: conditions.iter().all(|c| c.ok),
            version: env!("CARGO_PKG_VERSION"),
            started_at: rfc3339(started),
            uptime_secs: now.saturating_sub(started) / 1000,
            backend: match self.delivery {
                Delivery::Fanout => "fanout",
                Delivery::Tigase(_) => "tigase",
            },
            conditions,
            link: LinkReport {
                server: self.server.clone(),
                component: self.component.clone(),
                up: link.up,
                since: (link.since_ms > 0).then(|| rfc3339(link.since_ms)),
                last_error: link.last_error.map(LastError::from),
                next_attempt: link.next_attempt_ms.map(rfc3339),
                attempts: link.attempts,
            },
            privileges: privileges
                .into_iter()
                .map(|(d, p)| {
                    let r = match p {
                        Privilege::Granted { roster, presence } => PrivilegeReport {
                            state: "granted",
                            roster: Some(roster),
                            presence,
                        },
                        Privilege::Waiting => PrivilegeReport {
                            state: "waiting",
                            roster: None,
                            presence: None,
                        },
                        Privilege::Missing { .. } => PrivilegeReport {
                            state: "missing",
                            roster: None,
                            presence: None,
                        },
                    };
                    (d, r)
                })
                .collect(),
            held: self.table.len(),
            observed_sessions: self.observed.sessions(),
            webhook_backlog: self
                .metrics
                .webhooks
                .endpoints()
                .iter()
                .map(|e| e.pending.load(Relaxed))
                .sum(),
        }
    }
}

impl Report {
    /// The plain-text form of `/readyz`: `ready`, or `not ready` and one line per failing
    /// condition with its fix and next retry.
    pub fn text(&self) -> String {
        if self.ready {
            return "ready\n".into();
        }
        let mut out = String::from("not ready\n");
        for c in self.conditions.iter().filter(|c| !c.ok) {
            out.push_str(&format!("- {}: {}\n", c.name, c.reason));
            if !c.fix.is_empty() {
                out.push_str(&format!("  fix: {}\n", c.fix));
            }
            if let Some(at) = &c.next_retry {
                out.push_str(&format!("  next retry: {at}\n"));
            }
        }
        out
    }
}
