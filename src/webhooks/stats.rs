//! Per-endpoint webhook counters, and the `prometheus_client` collector that encodes them in
//! `/metrics` (registered by [`crate::metrics::Metrics`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::base::exposition::labelled;

/// Counters of one endpoint.
#[derive(Debug)]
pub struct EndpointStats {
    /// The endpoint's name (the `endpoint` label; validated to need no escaping).
    pub name: String,
    /// Events delivered (answered 2xx).
    pub ok: AtomicU64,
    /// Attempts that failed and will be retried (error, timeout, non-2xx other than 410).
    pub retry: AtomicU64,
    /// Events given up, for any [`DropReason`] reason (the sum of `dropped_by`).
    pub dropped: AtomicU64,
    /// Events given up, per [`DropReason`] reason (indexed by `DropReason as usize`).
    pub dropped_by: [AtomicU64; 4],
    /// Events in the outbox, not yet delivered or dropped.
    pub pending: AtomicU64,
    /// Bytes of the events in the outbox (bounded by `max_backlog_bytes`).
    pub backlog_bytes: AtomicU64,
    /// Events routed to the endpoint and waiting in memory for the outbox's next commit, and
    /// their bytes (bounded: see `outbox::Outbox::insert`).
    pub queued: AtomicU64,
    pub queued_bytes: AtomicU64,
    /// The endpoint answered 410 Gone and gets nothing more until extpresence restarts.
    pub disabled: AtomicBool,
}

/// Why an event was given up (the `reason` label of `extpresence_webhook_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not delivered within `max_age_secs`.
    Age,
    /// Beyond `max_backlog_bytes`: the oldest go.
    Backlog,
    /// The outbox could not take it (its disk is full, failing or too slow): the queue in
    /// memory in front of it was full, or it was still uncommitted at shutdown.
    Disk,
    /// The endpoint answered 410 Gone.
    Disabled,
}

impl DropReason {
    const ALL: [DropReason; 4] = [
        DropReason::Age,
        DropReason::Backlog,
        DropReason::Disk,
        DropReason::Disabled,
    ];

    fn label(self) -> &'static str {
        match self {
            DropReason::Age => "age",
            DropReason::Backlog => "backlog",
            DropReason::Disk => "disk",
            DropReason::Disabled => "disabled",
        }
    }
}

impl EndpointStats {
    /// Count `n` events given up for `reason`.
    pub fn count_drop(&self, reason: DropReason, n: u64) {
        if n > 0 {
            self.dropped_by[reason as usize].fetch_add(n, Relaxed);
            self.dropped.fetch_add(n, Relaxed);
        }
    }

    /// Events given up for `reason` so far.
    pub fn dropped_for(&self, reason: DropReason) -> u64 {
        self.dropped_by[reason as usize].load(Relaxed)
    }
}

/// Whether the outbox can commit, for `/readyz` and `/metrics` (written by its writer thread):
/// the health of the store's group-commit writer, which the outbox uses.
pub type OutboxHealth = crate::store::writer::Health;

/// Every endpoint's counters; part of [`crate::metrics::Metrics`].
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    /// Registered at start, in configuration order (a lock only at start and per scrape);
    /// shared with the collector.
    endpoints: Arc<Mutex<Vec<Arc<EndpointStats>>>>,
    /// The outbox's state (shared with it).
    pub outbox: Arc<OutboxHealth>,
}

impl WebhookMetrics {
    /// Counters for the endpoint `name`, rendered from now on.
    pub fn register(&self, name: &str) -> Arc<EndpointStats> {
        let stats = Arc::new(EndpointStats {
            name: name.to_string(),
            ok: AtomicU64::new(0),
            retry: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            dropped_by: Default::default(),
            pending: AtomicU64::new(0),
            backlog_bytes: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            disabled: AtomicBool::new(false),
        });
        self.lock().push(stats.clone());
        stats
    }

    /// Why the webhook outbox cannot commit (for `/readyz`), or `None`: it can, or there are
    /// no webhooks.
    pub fn outbox_failure(&self) -> Option<String> {
        self.outbox.failure()
    }

    /// Every endpoint's counters, in configuration order.
    pub fn endpoints(&self) -> Vec<Arc<EndpointStats>> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<EndpointStats>>> {
        self.endpoints.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The collector that encodes these counters at each scrape.
    pub fn collector(&self) -> Box<dyn Collector> {
        Box::new(WebhookCollector {
            endpoints: self.endpoints.clone(),
            outbox: self.outbox.clone(),
        })
    }

    /// Append these series alone in the Prometheus text format (nothing when no webhook is
    /// configured): what `/metrics` shows of them, for tests.
    pub fn render(&self, out: &mut String) {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(self.collector());
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(out, &registry);
    }
}

/// Encodes every endpoint's counters (nothing when no webhook is configured).
#[derive(Debug)]
struct WebhookCollector {
    endpoints: Arc<Mutex<Vec<Arc<EndpointStats>>>>,
    outbox: Arc<OutboxHealth>,
}

impl Collector for WebhookCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> std::fmt::Result {
        let endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if endpoints.is_empty() {
            return Ok(());
        }
        let e = &mut e;
        labelled(
            e,
            "extpresence_webhook_deliveries",
            "Webhook deliveries by outcome: ok (2xx), retry (a failed attempt, retried), dropped \
             (given up: extpresence_webhook_dropped_total has the reasons).",
            MetricType::Counter,
            endpoints.iter().flat_map(|s| {
                [("ok", &s.ok), ("retry", &s.retry), ("dropped", &s.dropped)].map(|(outcome, n)| {
                    (
                        [("endpoint", s.name.as_str()), ("outcome", outcome)],
                        n.load(Relaxed),
                    )
                })
            }),
        )?;
        let per_endpoint =
            |s: &EndpointStats, n: &AtomicU64| ([("endpoint", s.name.clone())], n.load(Relaxed));
        labelled(
            e,
            "extpresence_webhook_pending",
            "Events in the webhook outbox, not yet delivered.",
            MetricType::Gauge,
            endpoints.iter().map(|s| per_endpoint(s, &s.pending)),
        )?;
        labelled(
            e,
            "extpresence_webhook_dropped",
            "Webhook events given up, by reason: age (older than max_age_secs), backlog (beyond \
             max_backlog_bytes, the oldest first), disk (the outbox could not take them: its \
             disk is full, failing or too slow), disabled (the endpoint answered 410 Gone).",
            MetricType::Counter,
            endpoints.iter().flat_map(|s| {
                DropReason::ALL.map(|reason| {
                    (
                        [("endpoint", s.name.as_str()), ("reason", reason.label())],
                        s.dropped_for(reason),
                    )
                })
            }),
        )?;
        labelled(
            e,
            "extpresence_webhook_backlog_bytes",
            "Bytes of the events in the webhook outbox (at most max_backlog_bytes).",
            MetricType::Gauge,
            endpoints.iter().map(|s| per_endpoint(s, &s.backlog_bytes)),
        )?;
        labelled(
            e,
            "extpresence_webhook_queued_bytes",
            "Bytes of the events waiting in memory for the webhook outbox's next commit.",
            MetricType::Gauge,
            endpoints.iter().map(|s| per_endpoint(s, &s.queued_bytes)),
        )?;
        ConstGauge::new(u64::from(self.outbox.failure().is_none())).encode(
            e.encode_descriptor(
                "extpresence_webhook_outbox_ok",
                "1 when the webhook outbox can commit; 0 while its commits fail (disk full or \
             failing: /readyz answers 503).",
                None,
                MetricType::Gauge,
            )?,
        )?;
        ConstCounter::new(self.outbox.failed_commits.load(Relaxed)).encode(
            e.encode_descriptor(
                "extpresence_webhook_outbox_failed_commits",
                "Webhook outbox commits that failed (each is retried).",
                None,
                MetricType::Counter,
            )?,
        )?;
        labelled(
            e,
            "extpresence_webhook_disabled",
            "1 when the endpoint answered 410 Gone: nothing more is sent to it until \
             extpresence restarts.",
            MetricType::Gauge,
            endpoints.iter().map(|s| {
                (
                    [("endpoint", s.name.clone())],
                    u64::from(s.disabled.load(Relaxed)),
                )
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_per_endpoint() {
        let m = WebhookMetrics::default();
        let mut out = String::new();
        m.render(&mut out);
        assert_eq!(out, "", "nothing without webhooks");
        let a = m.register("crm");
        m.register("pbx.example.com");
        a.ok.fetch_add(3, Relaxed);
        a.pending.store(2, Relaxed);
        a.disabled.store(true, Relaxed);
        a.count_drop(DropReason::Backlog, 2);
        m.outbox.set_failure(Some("No space left on device".into()));
        m.render(&mut out);
        for line in [
            "extpresence_webhook_deliveries_total{endpoint=\"crm\",outcome=\"ok\"} 3",
            "extpresence_webhook_deliveries_total{endpoint=\"crm\",outcome=\"retry\"} 0",
            "extpresence_webhook_deliveries_total{endpoint=\"pbx.example.com\",outcome=\"dropped\"} 0",
            "extpresence_webhook_pending{endpoint=\"crm\"} 2",
            "extpresence_webhook_disabled{endpoint=\"crm\"} 1",
            "extpresence_webhook_disabled{endpoint=\"pbx.example.com\"} 0",
            "extpresence_webhook_dropped_total{endpoint=\"crm\",reason=\"backlog\"} 2",
            "extpresence_webhook_deliveries_total{endpoint=\"crm\",outcome=\"dropped\"} 2",
            "extpresence_webhook_backlog_bytes{endpoint=\"crm\"} 0",
            "extpresence_webhook_queued_bytes{endpoint=\"crm\"} 0",
            "extpresence_webhook_outbox_ok 0",
            "extpresence_webhook_outbox_failed_commits_total 1",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        assert_eq!(out.matches("# TYPE").count(), 8, "{out}");
    }
}
