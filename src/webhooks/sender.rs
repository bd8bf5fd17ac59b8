//! One sender per endpoint: reads the endpoint's outbox in event order and POSTs each event,
//! signed, retrying the head of the line until it is delivered, too old, or the endpoint says
//! it is gone.
//!
//! - 2xx: delivered; removed from the outbox.
//! - 410 Gone: the endpoint is disabled until extpresence restarts (ERROR line); its outbox is
//!   cleared, and new events are not kept for it.
//! - an event the outbox dropped for the endpoint's `max_backlog_bytes` while it waited is
//!   skipped (the outbox counted it);
//! - anything else (connection error, timeout, 3xx, 4xx, 5xx): retried after a capped
//!   exponential backoff ([`BACKOFF_FIRST`] doubling to [`BACKOFF_MAX`]), for as long as the
//!   event is younger than the endpoint's `max_age`; then dropped (WARN, counted). The next
//!   event waits for the same backoff: one failing endpoint costs one request per backoff.
//!
//! One request at a time, strictly in id order: events of a user arrive in the order they
//! happened, also across restarts (the outbox is read from its start).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::outbox::{Entry, Outbox};
use super::stats::{DropReason, EndpointStats};
use super::WebhookSettings;
use crate::base::clock::now_ms;

/// First wait after a failed attempt.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between attempts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Events read from the outbox at a time.
const READ_CHUNK: usize = 64;
/// At most one WARN line about an endpoint's failing deliveries, or its dropped events, per
/// this period (the counters have the exact numbers).
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Most of a response body read (so that the connection can be reused); the rest is ignored.
const MAX_RESPONSE: usize = 64 << 10;

/// What became of one event.
enum Outcome {
    Delivered,
    /// Older than `max_age`.
    Dropped,
    /// Dropped from the outbox for its backlog bound while it waited (already counted).
    Trimmed,
    /// 410 Gone: the endpoint is to be disabled.
    Gone,
    /// Shutdown.
    Stopped,
}

/// The state of an endpoint's failures: when the next attempt may go, and what was logged.
#[derive(Default)]
struct Health {
    /// Failed attempts in a row.
    failures: u32,
    /// No attempt before this (after a failure).
    next: Option<Instant>,
    /// When the last WARN about failures was written, and the failures since.
    warned: Option<Instant>,
    unreported: u64,
    /// When the last WARN about dropped events was written, and the drops since.
    drop_warned: Option<Instant>,
    unreported_drops: u64,
}

/// Sends one endpoint's events.
pub struct Sender {
    /// The endpoint's index in the outbox.
    pub slot: usize,
    /// What the configuration says of it.
    pub settings: WebhookSettings,
    /// Its counters and its disabled flag.
    pub stats: Arc<EndpointStats>,
    /// Where its events wait.
    pub outbox: Outbox,
    /// Shared by every endpoint (connection pools per host).
    pub client: reqwest::Client,
    /// Stops it at once (an unanswered request is abandoned: the event stays in the outbox).
    pub stop: CancellationToken,
}

impl Sender {
    /// Deliver until stopped or disabled.
    pub async fn run(self) {
        let mut cursor = 0u64;
        let mut committed = self.outbox.committed(self.slot);
        let mut health = Health::default();
        loop {
            committed.borrow_and_update();
            let outbox = self.outbox.clone();
            let slot = self.slot;
            let entries = match tokio::task::spawn_blocking(move || {
                outbox.read_after(slot, cursor, READ_CHUNK)
            })
            .await
            {
                Ok(Ok(entries)) => entries,
                Ok(Err(e)) => {
                    // The outbox is being reopened after a failed commit (logged there).
                    debug!(endpoint = %self.settings.name, error = %e, "cannot read the webhook outbox yet");
                    if self.pause(Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    error!(endpoint = %self.settings.name, error = %e, "webhook outbox read failed");
                    return;
                }
            };
            if entries.is_empty() {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    changed = committed.changed() => if changed.is_err() { return },
                }
                continue;
            }
            for entry in entries {
                match self.deliver(&entry, &mut health).await {
                    Outcome::Delivered => {
                        self.stats.ok.fetch_add(1, Relaxed);
                    }
                    Outcome::Dropped => {
                        self.stats.count_drop(DropReason::Age, 1);
                        self.report_drop(&entry, &mut health);
                    }
                    Outcome::Trimmed => {
                        cursor = entry.id;
                        continue;
                    }
                    Outcome::Gone => {
                        self.disable();
                        return;
                    }
                    Outcome::Stopped => return,
                }
                // `pending` goes down when the removal is committed.
                self.outbox.remove(self.slot, entry.id);
                cursor = entry.id;
            }
        }
    }

    /// Sleep `d` unless stopped first (then `true`).
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => true,
            _ = tokio::time::sleep(d) => false,
        }
    }

    /// Try `entry` until it is delivered, too old, refused for good, or we stop.
    async fn deliver(&self, entry: &Entry, health: &mut Health) -> Outcome {
        let body = super::sign::body(entry.at, &entry.data);
        let id = entry.id.to_string();
        let max_age = u64::try_from(self.settings.max_age.as_millis()).unwrap_or(u64::MAX);
        let expires = entry.at.saturating_add(max_age);
        loop {
            if entry.id <= self.outbox.trimmed(self.slot) {
                return Outcome::Trimmed;
            }
            let now = now_ms();
            if now >= expires {
                return Outcome::Dropped;
            }
            if let Some(next) = health.next.filter(|n| *n > Instant::now()) {
                let until_expiry = Duration::from_millis(expires - now);
                if self.pause((next - Instant::now()).min(until_expiry)).await {
                    return Outcome::Stopped;
                }
                continue;
            }
            let answer = tokio::select! {
                _ = self.stop.cancelled() => return Outcome::Stopped,
                a = self.attempt(&id, &body) => a,
            };
            match answer {
                Ok(status) if status.is_success() => {
                    self.succeeded(health);
                    return Outcome::Delivered;
                }
                Ok(StatusCode::GONE) => return Outcome::Gone,
                Ok(status) => self.failed(health, &format!("answered HTTP {status}")),
                Err(e) => self.failed(health, &describe(e)),
            }
        }
    }

    /// One signed POST; the status code, or why there is none.
    async fn attempt(&self, id: &str, body: &str) -> Result<StatusCode, reqwest::Error> {
        let timestamp = now_ms() / 1000;
        let signature = self.settings.key.sign(id, timestamp, body);
        let mut response = self
            .client
            .post(self.settings.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.to_owned())
            .send()
            .await?;
        let status = response.status();
        // Read a short answer to its end, so that the connection is kept for the next event.
        let mut read = 0;
        while read < MAX_RESPONSE {
            match response.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
        Ok(status)
    }

    fn succeeded(&self, health: &mut Health) {
        if health.failures > 0 {
            info!(endpoint = %self.settings.name, failed_attempts = health.failures, "webhook endpoint accepts deliveries again");
        }
        health.failures = 0;
        health.next = None;
        health.warned = None;
        health.unreported = 0;
    }

    fn failed(&self, health: &mut Health, why: &str) {
        self.stats.retry.fetch_add(1, Relaxed);
        health.failures += 1;
        let backoff = BACKOFF_FIRST
            .saturating_mul(1 << (health.failures - 1).min(16))
            .min(BACKOFF_MAX);
        health.next = Some(Instant::now() + backoff);
        health.unreported += 1;
        if health.warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            warn!(
                endpoint = %self.settings.name,
                error = why,
                failed_attempts = health.unreported,
                retry_in = ?backoff,
                pending = self.stats.pending.load(Relaxed),
                "webhook delivery failed; retrying with backoff until the event is older than max_age_secs"
            );
            health.warned = Some(Instant::now());
            health.unreported = 0;
        } else {
            debug!(endpoint = %self.settings.name, error = why, retry_in = ?backoff, "webhook delivery failed");
        }
    }

    fn report_drop(&self, entry: &Entry, health: &mut Health) {
        health.unreported_drops += 1;
        if health.drop_warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            warn!(
                endpoint = %self.settings.name,
                id = entry.id,
                dropped = health.unreported_drops,
                max_age = ?self.settings.max_age,
                "webhook events dropped: not delivered within max_age_secs"
            );
            health.drop_warned = Some(Instant::now());
            health.unreported_drops = 0;
        }
    }

    /// 410 Gone: nothing more for this endpoint until extpresence restarts.
    fn disable(&self) {
        self.stats.disabled.store(true, Relaxed);
        self.outbox.clear(self.slot);
        error!(
            endpoint = %self.settings.name,
            dropped = self.stats.pending.load(Relaxed),
            "webhook endpoint answered 410 Gone: it is disabled until extpresence restarts; \
             its pending events are dropped and new ones are not kept for it"
        );
    }
}

/// A request error without the URL (it may carry credentials), with its causes.
fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer within the timeout".into();
    }
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
