//! Counters and the Prometheus text exposition behind `/metrics`.
//!
//! One [`Metrics`] value is shared (in an `Arc`) by the HTTP layer, the delivery backend and the
//! link; everything is a relaxed atomic, so recording costs a few nanoseconds on the hot path.
//! Gauges that are cheap to read at scrape time (held statuses, link state) are passed to
//! [`Metrics::render`] instead of being tracked.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the HTTP latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Outcome of a status update request.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    /// A status was set and is held.
    Set,
    /// A resource was cleared.
    Cleared,
    /// Refused with a 4xx.
    Rejected,
    /// Failed with a 5xx (e.g. the store could not commit).
    Failed,
}

/// What is read at scrape time rather than tracked: values that other parts own.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Synthetic resources held.
    pub held: usize,
    /// The XMPP link is established.
    pub link_up: bool,
    /// The status store can commit.
    pub store_ok: bool,
    /// Store commits that failed since start.
    pub store_failed_commits: u64,
    /// HTTP connections open now.
    pub http_open: u64,
    /// The effective cap on HTTP connections.
    pub http_max: u64,
    /// New HTTP connections that found the cap reached.
    pub http_cap_hits: u64,
    /// Idle HTTP connections closed to make room.
    pub http_evicted: u64,
    /// New HTTP connections dropped at the cap.
    pub http_refused: u64,
    /// Real sessions observed now (forwarded presence).
    pub observed_sessions: u64,
    /// The observed sessions are complete (the server has told us everything).
    pub observed_complete: bool,
    /// Event-stream subscribers connected now.
    pub event_subscribers: u64,
    /// Events published since start.
    pub events: u64,
    /// Subscription requests held in users' names (unsent, or their approval watched).
    pub agent_held: u64,
}

/// Every counter extpresence exports.
#[derive(Debug, Default)]
pub struct Metrics {
    updates: [AtomicU64; 4],
    /// Stanzas written to the XMPP link.
    pub stanzas_sent: AtomicU64,
    /// Stanzas read from the XMPP link.
    pub stanzas_received: AtomicU64,
    /// Successful handshakes after the first.
    pub reconnects: AtomicU64,
    /// Updates delivered from a cached roster.
    pub roster_hits: AtomicU64,
    /// Updates that had to wait for a roster fetch.
    pub roster_misses: AtomicU64,
    /// Refused and failed requests by error code (a lock per refusal: refusals are not the
    /// hot path, and the codes are a small fixed set).
    refused: Mutex<BTreeMap<&'static str, u64>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    /// Per-endpoint webhook counters (filled by the webhook task, rendered last).
    pub webhooks: crate::webhooks::WebhookMetrics,
}

impl Metrics {
    /// Count one update request by outcome.
    pub fn update(&self, outcome: Outcome) {
        self.updates[outcome as usize].fetch_add(1, Relaxed);
    }

    /// Update requests with `outcome` since start.
    pub fn updates(&self, outcome: Outcome) -> u64 {
        self.updates[outcome as usize].load(Relaxed)
    }

    /// TEMPORARY shim until the prometheus-client metrics land: one request.
    pub fn request(&self, _dialect: &'static str, _status: u16, elapsed: Duration) {
        self.http_latency(elapsed)
    }

    /// Count one refused or failed request by its error code.
    pub fn refused(&self, _dialect: &'static str, code: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    /// Record one HTTP request's latency.
    pub fn http_latency(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.latency_buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_micros
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// Add 1 to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Add `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// The Prometheus text format, with the scrape-time gauges.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(2048);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "extpresence_held_statuses",
            "gauge",
            "Synthetic resources held (including cleared ones whose unavailable is pending).",
            &[("", g.held.to_string())],
        );
        metric(
            "extpresence_observed_sessions",
            "gauge",
            "Real sessions of users (and contacts) the server announced.",
            &[("", g.observed_sessions.to_string())],
        );
        metric(
            "extpresence_observed_complete",
            "gauge",
            "1 when the server has told us every session (GET presence `complete`), else 0.",
            &[("", u8::from(g.observed_complete).to_string())],
        );
        metric(
            "extpresence_event_subscribers",
            "gauge",
            "Event-stream (SSE) subscribers connected now.",
            &[("", g.event_subscribers.to_string())],
        );
        metric(
            "extpresence_events_total",
            "counter",
            "Presence events published (one per change of a served user's presence).",
            &[("", g.events.to_string())],
        );
        metric(
            "extpresence_agent_subscription_requests",
            "gauge",
            "Subscription requests held in users' names (Agent API): not sent yet, or their approval watched.",
            &[("", g.agent_held.to_string())],
        );
        let u = |o: Outcome| self.updates[o as usize].load(Relaxed).to_string();
        metric(
            "extpresence_updates_total",
            "counter",
            "Status update requests by outcome.",
            &[
                ("{outcome=\"set\"}", u(Outcome::Set)),
                ("{outcome=\"cleared\"}", u(Outcome::Cleared)),
                ("{outcome=\"rejected\"}", u(Outcome::Rejected)),
                ("{outcome=\"failed\"}", u(Outcome::Failed)),
            ],
        );
        let by_code: Vec<(String, String)> = self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(code, n)| (format!("{{code=\"{code}\"}}"), n.to_string()))
            .collect();
        let by_code: Vec<(&str, String)> = by_code
            .iter()
            .map(|(l, n)| (l.as_str(), n.clone()))
            .collect();
        metric(
            "extpresence_http_refused_total",
            "counter",
            "API requests refused (4xx) or failed (5xx), by error code.",
            &by_code,
        );
        let c = |a: &AtomicU64| a.load(Relaxed).to_string();
        metric(
            "extpresence_http_connections",
            "gauge",
            "HTTP connections open now.",
            &[("", g.http_open.to_string())],
        );
        metric(
            "extpresence_http_connections_max",
            "gauge",
            "The cap on concurrent HTTP connections ([http] max_connections, bounded by the open-file limit).",
            &[("", g.http_max.to_string())],
        );
        metric(
            "extpresence_http_connection_cap_total",
            "counter",
            "New HTTP connections that found the cap reached, by what happened: an idle one was closed to make room (evicted), or the new one was dropped (refused).",
            &[
                ("{event=\"reached\"}", g.http_cap_hits.to_string()),
                ("{event=\"evicted\"}", g.http_evicted.to_string()),
                ("{event=\"refused\"}", g.http_refused.to_string()),
            ],
        );
        metric(
            "extpresence_stanzas_sent_total",
            "counter",
            "Stanzas written to the XMPP component link.",
            &[("", c(&self.stanzas_sent))],
        );
        metric(
            "extpresence_stanzas_received_total",
            "counter",
            "Stanzas read from the XMPP component link.",
            &[("", c(&self.stanzas_received))],
        );
        metric(
            "extpresence_link_up",
            "gauge",
            "1 while the XMPP component link is established.",
            &[("", u8::from(g.link_up).to_string())],
        );
        metric(
            "extpresence_store_ok",
            "gauge",
            "1 while the status store can commit; 0 while updates are refused with 503.",
            &[("", u8::from(g.store_ok).to_string())],
        );
        metric(
            "extpresence_store_failed_commits_total",
            "counter",
            "Status store commits (and reopen attempts) that failed.",
            &[("", g.store_failed_commits.to_string())],
        );
        metric(
            "extpresence_link_reconnects_total",
            "counter",
            "Successful component handshakes after the first.",
            &[("", c(&self.reconnects))],
        );
        metric(
            "extpresence_roster_cache_hits_total",
            "counter",
            "Updates fanned out from a cached roster.",
            &[("", c(&self.roster_hits))],
        );
        metric(
            "extpresence_roster_cache_misses_total",
            "counter",
            "Updates that waited for a roster fetch.",
            &[("", c(&self.roster_misses))],
        );
        let _ = writeln!(
            out,
            "# HELP extpresence_http_request_duration_seconds Time to answer API requests.\n\
             # TYPE extpresence_http_request_duration_seconds histogram"
        );
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.latency_buckets[i].load(Relaxed);
            let _ = writeln!(
                out,
                "extpresence_http_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            out,
            "extpresence_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n\
             extpresence_http_request_duration_seconds_sum {}\n\
             extpresence_http_request_duration_seconds_count {count}",
            self.latency_sum_micros.load(Relaxed) as f64 / 1e6
        );
        self.webhooks.render(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition() {
        let m = Metrics::default();
        m.update(Outcome::Set);
        m.update(Outcome::Set);
        m.update(Outcome::Rejected);
        m.refused("tigase", "missing_api_key");
        m.refused("tigase", "missing_api_key");
        m.http_latency(Duration::from_micros(700));
        m.http_latency(Duration::from_secs(10));
        Metrics::inc(&m.stanzas_sent);
        let text = m.render(&Gauges {
            held: 3,
            link_up: true,
            store_ok: false,
            store_failed_commits: 2,
            http_open: 5,
            agent_held: 4,
            ..Gauges::default()
        });
        for line in [
            "extpresence_held_statuses 3",
            "extpresence_agent_subscription_requests 4",
            "extpresence_updates_total{outcome=\"set\"} 2",
            "extpresence_updates_total{outcome=\"rejected\"} 1",
            "extpresence_stanzas_sent_total 1",
            "extpresence_link_up 1",
            "extpresence_store_ok 0",
            "extpresence_store_failed_commits_total 2",
            "extpresence_http_connections 5",
            "extpresence_http_refused_total{code=\"missing_api_key\"} 2",
            "extpresence_http_request_duration_seconds_bucket{le=\"0.0005\"} 0",
            "extpresence_http_request_duration_seconds_bucket{le=\"0.001\"} 1",
            "extpresence_http_request_duration_seconds_bucket{le=\"2.5\"} 1",
            "extpresence_http_request_duration_seconds_bucket{le=\"+Inf\"} 2",
            "extpresence_http_request_duration_seconds_count 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
