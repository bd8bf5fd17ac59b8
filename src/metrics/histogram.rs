//! The HTTP latency histogram: fixed buckets in relaxed atomics, encoded by `prometheus_client`.
//!
//! `prometheus_client`'s own `Histogram` takes a mutex on every observation; a request must
//! cost no more than a few relaxed atomic adds, as it always has, so this one implements
//! [`EncodeMetric`] itself and hands its buckets to the encoder at scrape time.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds (seconds) of the buckets (`+Inf` is implicit).
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Observations per bucket (not cumulative), their count and their sum.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations whose first bucket is `LATENCY_BUCKETS[i]` (beyond the last: only `count`).
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    /// In microseconds: an integer atomic (there is no atomic f64 add).
    sum_micros: AtomicU64,
}

impl LatencyHistogram {
    /// Record one observation.
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| (*bound, n.load(Relaxed)))
            .collect();
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        // The encoder accumulates the buckets and writes `+Inf` as the count.
        encoder.encode_histogram::<NoLabelSet>(sum, self.count.load(Relaxed), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
