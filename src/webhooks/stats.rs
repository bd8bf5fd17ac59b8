//! Per-endpoint webhook counters and their Prometheus lines (appended to `/metrics` by
//! [`crate::metrics::Metrics::render`]).

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Counters of one endpoint.
#[derive(Debug)]
pub struct EndpointStats {
    /// The endpoint's name (the `endpoint` label; validated to need no escaping).
    pub name: String,
    /// Events delivered (answered 2xx).
    pub ok: AtomicU64,
    /// Attempts that failed and will be retried (error, timeout, non-2xx other than 410).
    pub retry: AtomicU64,
    /// Events given up: older than `max_age_secs`, or the endpoint was disabled.
    pub dropped: AtomicU64,
    /// Events in the outbox, not yet delivered or dropped.
    pub pending: AtomicU64,
    /// The endpoint answered 410 Gone and gets nothing more until extpresence restarts.
    pub disabled: AtomicBool,
}

/// Every endpoint's counters; part of [`crate::metrics::Metrics`].
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    /// Registered at start, in configuration order (a lock only at start and per scrape).
    endpoints: Mutex<Vec<Arc<EndpointStats>>>,
}

impl WebhookMetrics {
    /// Counters for the endpoint `name`, rendered from now on.
    pub fn register(&self, name: &str) -> Arc<EndpointStats> {
        let stats = Arc::new(EndpointStats {
            name: name.to_string(),
            ok: AtomicU64::new(0),
            retry: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            disabled: AtomicBool::new(false),
        });
        self.lock().push(stats.clone());
        stats
    }

    /// Every endpoint's counters, in configuration order.
    pub fn endpoints(&self) -> Vec<Arc<EndpointStats>> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<EndpointStats>>> {
        self.endpoints.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append the Prometheus lines (nothing when no webhook is configured).
    pub fn render(&self, out: &mut String) {
        let endpoints = self.lock();
        if endpoints.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP extpresence_webhook_deliveries_total Webhook deliveries by outcome: ok (2xx), \
             retry (a failed attempt, retried), dropped (older than max_age_secs, or the endpoint \
             was disabled).\n# TYPE extpresence_webhook_deliveries_total counter"
        );
        for e in endpoints.iter() {
            for (outcome, n) in [("ok", &e.ok), ("retry", &e.retry), ("dropped", &e.dropped)] {
                let _ = writeln!(
                    out,
                    "extpresence_webhook_deliveries_total{{endpoint=\"{}\",outcome=\"{outcome}\"}} {}",
                    e.name,
                    n.load(Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP extpresence_webhook_pending Events in the webhook outbox, not yet delivered.\n\
             # TYPE extpresence_webhook_pending gauge"
        );
        for e in endpoints.iter() {
            let _ = writeln!(
                out,
                "extpresence_webhook_pending{{endpoint=\"{}\"}} {}",
                e.name,
                e.pending.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP extpresence_webhook_disabled 1 when the endpoint answered 410 Gone: nothing \
             more is sent to it until extpresence restarts.\n\
             # TYPE extpresence_webhook_disabled gauge"
        );
        for e in endpoints.iter() {
            let _ = writeln!(
                out,
                "extpresence_webhook_disabled{{endpoint=\"{}\"}} {}",
                e.name,
                u8::from(e.disabled.load(Relaxed))
            );
        }
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
        m.render(&mut out);
        for line in [
            "extpresence_webhook_deliveries_total{endpoint=\"crm\",outcome=\"ok\"} 3",
            "extpresence_webhook_deliveries_total{endpoint=\"crm\",outcome=\"retry\"} 0",
            "extpresence_webhook_deliveries_total{endpoint=\"pbx.example.com\",outcome=\"dropped\"} 0",
            "extpresence_webhook_pending{endpoint=\"crm\"} 2",
            "extpresence_webhook_disabled{endpoint=\"crm\"} 1",
            "extpresence_webhook_disabled{endpoint=\"pbx.example.com\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        assert_eq!(out.matches("# TYPE").count(), 3, "{out}");
    }
}
