//! Every series behind `/metrics`, kept and encoded by `prometheus_client` (the Prometheus
//! project's Rust client) in one [`Registry`].
//!
//! One [`Metrics`] value is shared (in an `Arc`) by the HTTP layer, the delivery backend and the
//! link. Recording is a relaxed atomic add; per request, `prometheus_client`'s family lookup by
//! dialect and status adds a read lock, and nothing else locks. Values that other parts own (held
//! statuses, link state, connection counts, rate-limit refusals...) are passed to
//! [`Metrics::render`] as [`Gauges`] and encoded by a collector at scrape time; the webhook
//! endpoints' counters come from their own collector ([`crate::webhooks::WebhookMetrics`]), the
//! process metrics from `process.rs`. Encoded in the Prometheus text format 0.0.4
//! ([`CONTENT_TYPE`]), which every Prometheus scrapes.

mod histogram;
mod process;

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::base::exposition::{const_counter, const_gauge, labelled};
use histogram::LatencyHistogram;
pub use histogram::LATENCY_BUCKETS;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

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
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    /// Synthetic resources held.
    pub held: usize,
    /// The XMPP link is established.
    pub link_up: bool,
    /// The status store can commit.
    pub store_ok: bool,
    /// Each served domain and whether the server grants its XEP-0356 roster privilege (empty
    /// for the Tigase backend, which needs none).
    pub privileges: Vec<(String, bool)>,
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
    /// Requests refused over a rate limit, by credential name (`global`: the global limit).
    pub rate_limited: Vec<(Arc<str>, u64)>,
    /// Failed authentications: wrong keys or tokens.
    pub auth_wrong_key: u64,
    /// Authentication attempts refused because their client address made too many.
    pub auth_peer_limited: u64,
}

/// A `prometheus_client` counter whose atomic stays reachable (`Deref` to [`AtomicU64`]), so the
/// link and the delivery backend count with [`Metrics::inc`] and the status page reads it with
/// `load`, as with a bare atomic.
#[derive(Debug, Default, Clone)]
pub struct SharedCounter(Counter);

impl Deref for SharedCounter {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        self.0.inner()
    }
}

/// `extpresence_updates_total{outcome}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// `extpresence_http_requests_total{dialect,status}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    dialect: &'static str,
    status: u16,
}

/// `extpresence_http_request_duration_seconds{dialect}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DialectLabels {
    dialect: &'static str,
}

/// `extpresence_link_attempts_total{result}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    result: &'static str,
}

/// `extpresence_http_refused_total{dialect,code}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    dialect: &'static str,
    code: &'static str,
}

/// Every series extpresence exports, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    /// One counter per [`Outcome`] (indexed by `Outcome as usize`), taken from the
    /// `extpresence_updates_total` family at start: counting one is a bare atomic add.
    updates: [Counter; 4],
    /// HTTP requests answered, by dialect and status.
    requests: Family<RequestLabels, Counter>,
    /// Time to answer HTTP requests, by dialect.
    durations: Family<DialectLabels, LatencyHistogram>,
    /// Refused and failed requests, by dialect and error code.
    refused: Family<RefusedLabels, Counter>,
    /// Stanzas written to the XMPP link.
    pub stanzas_sent: SharedCounter,
    /// Stanzas read from the XMPP link.
    pub stanzas_received: SharedCounter,
    /// Successful handshakes after the first.
    pub reconnects: SharedCounter,
    /// Connection attempts of the component link, by result.
    link_attempts: Family<AttemptLabels, Counter>,
    /// Updates delivered from a cached roster.
    pub roster_hits: SharedCounter,
    /// Updates that had to wait for a roster fetch.
    pub roster_misses: SharedCounter,
    /// Per-endpoint webhook counters (filled by the webhook task, encoded by its collector).
    pub webhooks: crate::webhooks::WebhookMetrics,
    /// The latest scrape's [`Gauges`], read by [`GaugesCollector`] while encoding.
    scraped: Arc<Mutex<Gauges>>,
    /// One scrape at a time: its [`Gauges`] are the ones encoded.
    scraping: Mutex<()>,
    /// Every series above (clones share their atomics), plus the build info, the scrape-time
    /// gauges, the webhook and the process collectors.
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        // `register` appends the full stop to each help text.
        registry.register(
            "extpresence_build",
            "The extpresence version running",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );
        let updates_family = Family::<OutcomeLabels, Counter>::default();
        let updates = ["set", "cleared", "rejected", "failed"]
            .map(|outcome| updates_family.get_or_create_owned(&OutcomeLabels { outcome }));
        registry.register(
            "extpresence_updates",
            "Status update requests by outcome",
            updates_family,
        );
        let requests = Family::default();
        registry.register(
            "extpresence_http_requests",
            "API requests answered, by dialect and HTTP status",
            requests.clone(),
        );
        let durations = Family::default();
        registry.register(
            "extpresence_http_request_duration_seconds",
            "Time to answer API requests",
            durations.clone(),
        );
        let refused = Family::default();
        registry.register(
            "extpresence_http_refused",
            "API requests refused (4xx) or failed (5xx), by dialect and error code",
            refused.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = SharedCounter::default();
            registry.register(name, help, c.0.clone());
            c
        };
        let stanzas_sent = counter(
            &mut registry,
            "extpresence_stanzas_sent",
            "Stanzas written to the XMPP component link",
        );
        let stanzas_received = counter(
            &mut registry,
            "extpresence_stanzas_received",
            "Stanzas read from the XMPP component link",
        );
        let reconnects = counter(
            &mut registry,
            "extpresence_link_reconnects",
            "Successful component handshakes after the first",
        );
        let link_attempts = Family::default();
        registry.register(
            "extpresence_link_attempts",
            "Connection attempts of the XMPP component link, by result (`ok`, or what failed: \
             `connect`, `wrong_port`, `auth`, `stream_error`, `timeout`, `closed`, `io`)",
            link_attempts.clone(),
        );
        let roster_hits = counter(
            &mut registry,
            "extpresence_roster_cache_hits",
            "Updates fanned out from a cached roster",
        );
        let roster_misses = counter(
            &mut registry,
            "extpresence_roster_cache_misses",
            "Updates that waited for a roster fetch",
        );
        let scraped = Arc::new(Mutex::new(Gauges::default()));
        registry.register_collector(Box::new(GaugesCollector(scraped.clone())));
        let webhooks = crate::webhooks::WebhookMetrics::default();
        registry.register_collector(webhooks.collector());
        registry.register_collector(Box::new(process::ProcessCollector::new()));
        Metrics {
            updates,
            requests,
            durations,
            refused,
            stanzas_sent,
            stanzas_received,
            reconnects,
            link_attempts,
            roster_hits,
            roster_misses,
            webhooks,
            scraped,
            scraping: Mutex::new(()),
            registry,
        }
    }
}

impl Metrics {
    /// Count one update request by outcome.
    pub fn update(&self, outcome: Outcome) {
        self.updates[outcome as usize].inc();
    }

    /// Update requests with `outcome` since start.
    pub fn updates(&self, outcome: Outcome) -> u64 {
        self.updates[outcome as usize].get()
    }

    /// Count one answered API request of `dialect` with its HTTP `status`, and the time it took.
    pub fn request(&self, dialect: &'static str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels { dialect, status })
            .inc();
        self.durations
            .get_or_create(&DialectLabels { dialect })
            .observe(elapsed);
    }

    /// Count one connection attempt of the component link by its result.
    pub fn link_attempt(&self, result: &'static str) {
        self.link_attempts
            .get_or_create(&AttemptLabels { result })
            .inc();
    }

    /// Connection attempts of the component link with `result` since start.
    pub fn link_attempts(&self, result: &'static str) -> u64 {
        self.link_attempts
            .get_or_create(&AttemptLabels { result })
            .get()
    }

    /// Count one refused or failed request of `dialect` by its error code.
    pub fn refused(&self, dialect: &'static str, code: &'static str) {
        self.refused
            .get_or_create(&RefusedLabels { dialect, code })
            .inc();
    }

    /// Add 1 to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Add `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// The Prometheus text (format 0.0.4, [`CONTENT_TYPE`]) of every series, with the
    /// scrape-time values `gauges`.
    pub fn render(&self, gauges: Gauges) -> String {
        let _one_at_a_time = self.scraping.lock().unwrap_or_else(|e| e.into_inner());
        *self.scraped.lock().unwrap_or_else(|e| e.into_inner()) = gauges;
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail, and every collector returns only the writer's errors.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// Encodes the latest scrape's [`Gauges`] (names without `_total`: the encoder adds it to
/// counters).
#[derive(Debug)]
struct GaugesCollector(Arc<Mutex<Gauges>>);

impl Collector for GaugesCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let e = &mut e;
        const_gauge(
            e,
            "extpresence_held_statuses",
            "Synthetic resources held (including cleared ones whose unavailable is pending).",
            g.held as u64,
        )?;
        const_gauge(
            e,
            "extpresence_observed_sessions",
            "Real sessions of users (and contacts) the server announced.",
            g.observed_sessions,
        )?;
        const_gauge(
            e,
            "extpresence_observed_complete",
            "1 when the server has told us every session (GET presence `complete`), else 0.",
            u64::from(g.observed_complete),
        )?;
        const_gauge(
            e,
            "extpresence_event_subscribers",
            "Event-stream (SSE) subscribers connected now.",
            g.event_subscribers,
        )?;
        const_counter(
            e,
            "extpresence_events",
            "Presence events published (one per change of a served user's presence).",
            g.events,
        )?;
        const_gauge(
            e,
            "extpresence_agent_subscription_requests",
            "Subscription requests held in users' names (Agent API): not sent yet, or their \
             approval watched.",
            g.agent_held,
        )?;
        const_gauge(
            e,
            "extpresence_http_connections",
            "HTTP connections open now.",
            g.http_open,
        )?;
        const_gauge(
            e,
            "extpresence_http_connections_max",
            "The cap on concurrent HTTP connections ([http] max_connections, bounded by the \
             open-file limit).",
            g.http_max,
        )?;
        labelled(
            e,
            "extpresence_http_connection_cap",
            "New HTTP connections that found the cap reached, by what happened: an idle one was \
             closed to make room (evicted), or the new one was dropped (refused).",
            MetricType::Counter,
            [
                ([("event", "reached")], g.http_cap_hits),
                ([("event", "evicted")], g.http_evicted),
                ([("event", "refused")], g.http_refused),
            ],
        )?;
        const_gauge(
            e,
            "extpresence_link_up",
            "1 while the XMPP component link is established.",
            u64::from(g.link_up),
        )?;
        if !g.privileges.is_empty() {
            labelled(
                e,
                "extpresence_privileges_granted",
                "1 while the server grants the XEP-0356 roster privilege for the served domain \
                 (fan-out backend), else 0: without it nothing reaches that domain's contacts.",
                MetricType::Gauge,
                g.privileges
                    .iter()
                    .map(|(domain, ok)| ([("domain", domain.as_str())], u64::from(*ok))),
            )?;
        }
        const_gauge(
            e,
            "extpresence_store_ok",
            "1 while the status store can commit; 0 while updates are refused with 503.",
            u64::from(g.store_ok),
        )?;
        const_counter(
            e,
            "extpresence_store_failed_commits",
            "Status store commits (and reopen attempts) that failed.",
            g.store_failed_commits,
        )?;
        if !g.rate_limited.is_empty() {
            labelled(
                e,
                "extpresence_http_rate_limited",
                "Requests refused over a rate limit, by credential name (`global`: the global \
                 limit).",
                MetricType::Counter,
                g.rate_limited
                    .iter()
                    .map(|(key, n)| ([("key", &**key)], *n)),
            )?;
        }
        labelled(
            e,
            "extpresence_auth_failures",
            "Failed authentications: wrong keys or tokens (`wrong_key`, any dialect and the \
             status page's sign-in), and attempts refused because their client address made too \
             many (`peer_limited`).",
            MetricType::Counter,
            [
                ([("reason", "wrong_key")], g.auth_wrong_key),
                ([("reason", "peer_limited")], g.auth_peer_limited),
            ],
        )
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
        m.request("tigase", 200, Duration::from_micros(700));
        m.request("tigase", 401, Duration::from_secs(10));
        Metrics::inc(&m.stanzas_sent);
        m.webhooks.register("crm").ok.fetch_add(3, Relaxed);
        let text = m.render(Gauges {
            held: 3,
            link_up: true,
            store_ok: false,
            store_failed_commits: 2,
            http_open: 5,
            http_cap_hits: 1,
            agent_held: 4,
            rate_limited: vec![("team".into(), 5)],
            auth_wrong_key: 10,
            ..Gauges::default()
        });
        for line in [
            // Info
            &format!(
                "extpresence_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
            "# TYPE extpresence_build_info gauge",
            // Gauges and counters read at scrape time
            "# TYPE extpresence_held_statuses gauge",
            "extpresence_held_statuses 3",
            "extpresence_agent_subscription_requests 4",
            "extpresence_link_up 1",
            "extpresence_store_ok 0",
            "# TYPE extpresence_store_failed_commits_total counter",
            "extpresence_store_failed_commits_total 2",
            "extpresence_http_connections 5",
            "extpresence_http_connection_cap_total{event=\"reached\"} 1",
            "extpresence_http_connection_cap_total{event=\"refused\"} 0",
            "extpresence_http_rate_limited_total{key=\"team\"} 5",
            "extpresence_auth_failures_total{reason=\"wrong_key\"} 10",
            "extpresence_auth_failures_total{reason=\"peer_limited\"} 0",
            // Counters and families
            "# HELP extpresence_updates_total Status update requests by outcome.",
            "# TYPE extpresence_updates_total counter",
            "extpresence_updates_total{outcome=\"set\"} 2",
            "extpresence_updates_total{outcome=\"rejected\"} 1",
            "extpresence_updates_total{outcome=\"failed\"} 0",
            "extpresence_stanzas_sent_total 1",
            "extpresence_link_reconnects_total 0",
            "extpresence_http_refused_total{dialect=\"tigase\",code=\"missing_api_key\"} 2",
            "extpresence_http_requests_total{dialect=\"tigase\",status=\"200\"} 1",
            "extpresence_http_requests_total{dialect=\"tigase\",status=\"401\"} 1",
            // Histogram
            "# TYPE extpresence_http_request_duration_seconds histogram",
            "extpresence_http_request_duration_seconds_bucket{dialect=\"tigase\",le=\"0.0005\"} 0",
            "extpresence_http_request_duration_seconds_bucket{dialect=\"tigase\",le=\"0.001\"} 1",
            "extpresence_http_request_duration_seconds_bucket{dialect=\"tigase\",le=\"1\"} 1",
            "extpresence_http_request_duration_seconds_bucket{dialect=\"tigase\",le=\"2.5\"} 1",
            "extpresence_http_request_duration_seconds_bucket{dialect=\"tigase\",le=\"+Inf\"} 2",
            "extpresence_http_request_duration_seconds_sum{dialect=\"tigase\"} 10.0007",
            "extpresence_http_request_duration_seconds_count{dialect=\"tigase\"} 2",
            // The webhook collector
            "extpresence_webhook_deliveries_total{endpoint=\"crm\",outcome=\"ok\"} 3",
            "extpresence_webhook_outbox_ok 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        #[cfg(target_os = "linux")]
        for series in [
            "# TYPE process_cpu_seconds_total counter",
            "process_cpu_seconds_total ",
            "# TYPE process_resident_memory_bytes gauge",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(series)),
                "missing {series:?} in\n{text}"
            );
        }
        let rss: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .map_or(1.0, |v| v.parse().unwrap());
        assert!(rss > 0.0, "{text}");
        // Every family is described once, and nothing is empty.
        assert_eq!(
            text.matches("# TYPE extpresence_updates_total ").count(),
            1,
            "{text}"
        );
        assert!(
            !text.contains("# EOF"),
            "the Prometheus text format, not OpenMetrics"
        );
    }
}
