//! Webhooks: every presence event, POSTed to the configured endpoints, signed as Standard
//! Webhooks 1.0, at least once, in order, durable across restarts.
//!
//! This module owns the `[[webhooks]]` configuration ([`RawWebhook`] → [`WebhookSettings`],
//! [`validate`]), and the task [`start`] spawns:
//! - the router (here) reads the event hub's tap ([`crate::events::EventHub::tap`]: every event,
//!   in order), and writes each event to the outbox of every endpoint whose filter passes it,
//!   one transaction per batch of events waiting on the channel;
//! - `outbox.rs`: the durable queue per endpoint, a redb file beside the status store
//!   (`<store.path>.webhooks`), one writer thread; bounded per endpoint in bytes
//!   (`max_backlog_bytes`, the oldest dropped beyond it), and so is its queue in memory;
//! - `sender.rs`: one sender per endpoint, delivering strictly in event order, retrying the head
//!   of the line with capped exponential backoff until `max_age_secs`; 410 Gone disables the
//!   endpoint until extpresence restarts;
//! - `sign.rs`: the body and the `webhook-signature`; `stats.rs`: the `/metrics` lines.
//!
//! On shutdown the senders stop at once (a request in flight is abandoned; its event is sent
//! again after the restart), what is still on the channel is written to the outbox, and the
//! task returns once that is committed (or, on a disk that still refuses it after a few tries,
//! counted as dropped).

mod outbox;
mod sender;
pub mod sign;
mod stats;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jid::BareJid;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::base::config_error::{read_secret_file, ConfigError};
use crate::base::secret::Secret;
use crate::events::{Event, Filter};
pub use outbox::FORMAT;
pub use sign::SigningKey;
pub use stats::{DropReason, EndpointStats, OutboxHealth, WebhookMetrics};

/// Longest wait for an endpoint's answer (connecting included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a connection to an endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most events routed (and committed) in one batch.
const ROUTE_BATCH: usize = 1024;
/// `max_age_secs` when not given, and its limit (30 days, the longest a status may be set for).
const DEFAULT_MAX_AGE: u64 = 3600;
const MAX_MAX_AGE: u64 = 30 * 24 * 3600;
/// `max_backlog_bytes` when not given (64 MiB), and its limits (4 KiB to 64 GiB).
pub const DEFAULT_MAX_BACKLOG: u64 = 64 << 20;
const MIN_MAX_BACKLOG: u64 = 4 << 10;
const MAX_MAX_BACKLOG: u64 = 64 << 30;

/// One `[[webhooks]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// The endpoint's name in logs and metrics (default: the URL's host, `:port` when given,
    /// and path; see [`default_name`]).
    pub name: Option<String>,
    /// Where events are POSTed (http or https).
    pub url: String,
    /// The `whsec_…` signing secret (or use `secret_file`).
    pub secret: Option<Secret>,
    /// File holding the signing secret (first line, trimmed).
    pub secret_file: Option<PathBuf>,
    /// Users whose events are sent (with `domains`: either matches; neither: every user).
    #[serde(default)]
    pub users: Vec<String>,
    /// Domains whose users' events are sent.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Seconds after which an undelivered event is dropped.
    #[serde(default = "default_max_age", alias = "max_age")]
    pub max_age_secs: u64,
    /// Most bytes of undelivered events kept for the endpoint; beyond it the oldest are dropped.
    #[serde(default = "default_max_backlog")]
    pub max_backlog_bytes: u64,
}

fn default_max_age() -> u64 {
    DEFAULT_MAX_AGE
}

fn default_max_backlog() -> u64 {
    DEFAULT_MAX_BACKLOG
}

/// A validated endpoint. `Debug` shows neither the key nor the URL's password or query.
#[derive(Clone)]
pub struct WebhookSettings {
    /// Unique; a label value and a table name, so limited to `[A-Za-z0-9._:\[\]/~-]{1,64}`.
    pub name: String,
    /// The name versions before 0.2 gave an unnamed entry (the URL's host): its outbox, if one
    /// is left under that name, is taken over at start (see `outbox::Outbox::open`).
    pub legacy_name: Option<String>,
    /// Where events are POSTed.
    pub url: reqwest::Url,
    /// The signing key.
    pub key: SigningKey,
    /// Which users' events it gets.
    pub filter: Filter,
    /// Undelivered events older than this are dropped.
    pub max_age: Duration,
    /// Undelivered events beyond this many bytes are dropped, oldest first.
    pub max_backlog_bytes: u64,
}

impl fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut url = self.url.clone();
        if url.password().is_some() {
            let _ = url.set_password(Some("MASKED"));
        }
        if url.query().is_some() {
            url.set_query(Some("MASKED"));
        }
        f.debug_struct("WebhookSettings")
            .field("name", &self.name)
            .field("url", &url.as_str())
            .field("key", &self.key)
            .field("filter", &self.filter)
            .field("max_age", &self.max_age)
            .field("max_backlog_bytes", &self.max_backlog_bytes)
            .finish()
    }
}

fn invalid(key: &'static str, n: usize, message: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: format!("webhook #{n}: {message}"),
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:[]/~-".contains(c))
}

/// The name of an entry without `name`: the URL's host, `:port` when the URL gives one, and
/// the path unless it is `/` (`127.0.0.1:8080/hooks/a`), characters outside the name's set
/// as `_`, cut to 64. Never the user name, password or query (they may hold credentials).
pub fn default_name(url: &reqwest::Url) -> String {
    let mut name = url.host_str().unwrap_or_default().to_string();
    if let Some(port) = url.port() {
        name.push_str(&format!(":{port}"));
    }
    if url.path() != "/" {
        name.push_str(url.path());
    }
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._:[]/~-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// `url` without what may hold credentials, to name it in a message.
fn shown(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.to_string()
}

/// Turn the `[[webhooks]]` entries into settings, or say what is wrong (`served`: the normalised
/// `xmpp.domains`; a filter outside them could never match).
pub fn validate(
    raw: Vec<RawWebhook>,
    served: &BTreeSet<String>,
) -> Result<Vec<WebhookSettings>, ConfigError> {
    let mut out: Vec<WebhookSettings> = Vec::with_capacity(raw.len());
    // The names given, which a default name must not take; the URLs of entries without one.
    let names: BTreeSet<String> = raw.iter().filter_map(|w| w.name.clone()).collect();
    let mut unnamed: Vec<reqwest::Url> = Vec::new();
    for (i, w) in raw.into_iter().enumerate() {
        let n = i + 1;
        let url = reqwest::Url::parse(&w.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                invalid(
                    "webhooks.url",
                    n,
                    "not an http or https URL (e.g. \"https://crm.example.com/hooks/presence\")",
                )
            })?;
        let given = w.name.is_some();
        let (name, legacy_name) = match w.name {
            Some(name) => (name, None),
            None => {
                if let Some(j) = unnamed.iter().position(|u| *u == url) {
                    return Err(invalid(
                        "webhooks.name",
                        n,
                        format!(
                            "webhooks #{} and #{n} both send to {} and neither has a name: give \
                             each a distinct name (or merge their filters into one entry)",
                            j + 1,
                            shown(&url)
                        ),
                    ));
                }
                // Defaults that still meet (URLs alike but for the query or password, or cut
                // at 64) are numbered in configuration order: `~2`, `~3`, …
                let base = default_name(&url);
                let mut name = base.clone();
                let mut k = 2;
                while out.iter().any(|o| o.name == name) || names.contains(&name) {
                    let suffix = format!("~{k}");
                    let keep = base.len().min(64 - suffix.len());
                    name = format!("{}{suffix}", &base[..keep]);
                    k += 1;
                }
                let legacy = url.host_str().unwrap_or_default().to_string();
                let legacy = (legacy != name && valid_name(&legacy)).then_some(legacy);
                (name, legacy)
            }
        };
        if !given {
            unnamed.push(url.clone());
        }
        if !valid_name(&name) {
            return Err(invalid(
                "webhooks.name",
                n,
                format!("{name:?} is not 1 to 64 letters, digits and ._:[]/~-"),
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(invalid(
                "webhooks.name",
                n,
                format!("another webhook is named {name:?}: give each a distinct name"),
            ));
        }
        let secret = match (w.secret, w.secret_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "webhooks.secret",
                    n,
                    "set either secret or secret_file, not both",
                ))
            }
            (Some(s), None) => s,
            (None, Some(path)) => read_secret_file("webhooks.secret_file", &path)?,
            (None, None) => {
                return Err(invalid(
                    "webhooks.secret",
                    n,
                    "missing: set secret_file (or secret) to the endpoint's whsec_… secret",
                ))
            }
        };
        let key = SigningKey::parse(secret.expose())
            .map_err(|e| invalid("webhooks.secret", n, format!("{name}: {e}")))?;
        let mut filter = Filter::default();
        for u in &w.users {
            let jid = BareJid::new(u)
                .ok()
                .filter(|j| j.node().is_some())
                .ok_or_else(|| {
                    invalid(
                        "webhooks.users",
                        n,
                        format!("{u:?} is not a user JID (user@domain)"),
                    )
                })?;
            if !served.contains(jid.domain().as_str()) {
                return Err(invalid(
                    "webhooks.users",
                    n,
                    format!("{u:?} is not on a domain in xmpp.domains: it would never match"),
                ));
            }
            filter.users.insert(jid);
        }
        for d in &w.domains {
            let domain = crate::base::domain::normalize_domain(d)
                .ok_or_else(|| invalid("webhooks.domains", n, format!("{d:?} is not a domain")))?;
            if !served.contains(&domain) {
                return Err(invalid(
                    "webhooks.domains",
                    n,
                    format!("{d:?} is not in xmpp.domains: it would never match"),
                ));
            }
            filter.domains.insert(domain);
        }
        if w.max_age_secs == 0 || w.max_age_secs > MAX_MAX_AGE {
            return Err(invalid(
                "webhooks.max_age_secs",
                n,
                format!("{} is not between 1 and {MAX_MAX_AGE}", w.max_age_secs),
            ));
        }
        if !(MIN_MAX_BACKLOG..=MAX_MAX_BACKLOG).contains(&w.max_backlog_bytes) {
            return Err(invalid(
                "webhooks.max_backlog_bytes",
                n,
                format!(
                    "{} is not between {MIN_MAX_BACKLOG} (4 KiB) and {MAX_MAX_BACKLOG} (64 GiB)",
                    w.max_backlog_bytes
                ),
            ));
        }
        out.push(WebhookSettings {
            name,
            legacy_name,
            url,
            key,
            filter,
            max_age: Duration::from_secs(w.max_age_secs),
            max_backlog_bytes: w.max_backlog_bytes,
        });
    }
    Ok(out)
}

/// The outbox file: `<store.path>.webhooks`, beside the status store.
pub fn outbox_path(store_path: &Path) -> PathBuf {
    let mut p = store_path.as_os_str().to_owned();
    p.push(".webhooks");
    PathBuf::from(p)
}

/// Open the outbox and spawn the webhook task: the senders, and the router reading `events`
/// until they end (the hub closed) or `stop` is cancelled. The task returns once what was
/// routed is committed. An outbox that cannot be opened is an error here, before anything runs.
/// Without endpoints nothing is opened and the task ends at once.
pub async fn start(
    settings: Vec<WebhookSettings>,
    store_path: &Path,
    events: mpsc::UnboundedReceiver<Arc<Event>>,
    metrics: &WebhookMetrics,
    stop: CancellationToken,
) -> std::io::Result<JoinHandle<()>> {
    if settings.is_empty() {
        return Ok(tokio::spawn(async {}));
    }
    let path = outbox_path(store_path);
    let stats: Vec<Arc<EndpointStats>> =
        settings.iter().map(|s| metrics.register(&s.name)).collect();
    let endpoints: Vec<outbox::Endpoint> = settings
        .iter()
        .zip(&stats)
        .map(|(s, stats)| outbox::Endpoint {
            stats: stats.clone(),
            max_bytes: s.max_backlog_bytes,
            legacy_name: s.legacy_name.clone(),
        })
        .collect();
    let health = metrics.outbox.clone();
    let outbox = tokio::task::spawn_blocking({
        let path = path.clone();
        move || outbox::Outbox::open(&path, endpoints, health)
    })
    .await
    .map_err(std::io::Error::other)?
    .map_err(|e| {
        std::io::Error::other(format!(
            "cannot open the webhook outbox {}: {e}",
            path.display()
        ))
    })?;
    let client = reqwest::Client::builder()
        .user_agent(concat!("extpresence/", env!("CARGO_PKG_VERSION")))
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        // A redirect is a failed delivery (retried): following it would turn the POST into a
        // GET without the event, or send the signed event somewhere not configured.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(std::io::Error::other)?;
    info!(
        endpoints = settings.len(),
        outbox = %path.display(),
        "webhooks ready"
    );
    Ok(tokio::spawn(run(
        settings, stats, outbox, client, events, stop,
    )))
}

/// The router, and at its end the shutdown of the senders and the last commit.
async fn run(
    settings: Vec<WebhookSettings>,
    stats: Vec<Arc<EndpointStats>>,
    outbox: outbox::Outbox,
    client: reqwest::Client,
    mut events: mpsc::UnboundedReceiver<Arc<Event>>,
    stop: CancellationToken,
) {
    let filters: Vec<Filter> = settings.iter().map(|s| s.filter.clone()).collect();
    let senders_stop = stop.child_token();
    let senders: Vec<JoinHandle<()>> = settings
        .into_iter()
        .zip(stats.iter().cloned())
        .enumerate()
        .map(|(slot, (settings, stats))| {
            tokio::spawn(
                sender::Sender {
                    slot,
                    settings,
                    stats,
                    outbox: outbox.clone(),
                    client: client.clone(),
                    stop: senders_stop.clone(),
                }
                .run(),
            )
        })
        .collect();
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            e = events.recv() => match e {
                Some(e) => e,
                None => break,
            },
        };
        let mut batch = vec![first];
        while batch.len() < ROUTE_BATCH {
            match events.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        outbox.insert(route(&filters, batch));
    }
    senders_stop.cancel();
    let mut rest = Vec::new();
    while let Ok(e) = events.try_recv() {
        rest.push(e);
    }
    outbox.insert(route(&filters, rest));
    for s in senders {
        let _ = s.await;
    }
    outbox.close().await;
    for s in &stats {
        let pending = s.pending.load(std::sync::atomic::Ordering::Relaxed);
        if pending > 0 {
            info!(endpoint = %s.name, pending, "webhook events kept in the outbox for after the restart");
        }
    }
}

/// Each event once per endpoint whose filter passes it (disabled endpoints are skipped by the
/// outbox, which counts their events as dropped).
fn route(filters: &[Filter], events: Vec<Arc<Event>>) -> Vec<(usize, Arc<Event>)> {
    let mut out = Vec::with_capacity(events.len() * filters.len());
    for event in events {
        for (slot, filter) in filters.iter().enumerate() {
            if filter.wants(&event.user) {
                out.push((slot, event.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
