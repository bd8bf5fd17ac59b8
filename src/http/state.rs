//! What every route's handler shares: `AppState` (the model, the read model, access, limits and
//! counters; a dialect's own settings and state are given to its routes, not kept here) and the
//! body limit.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::auth::ApiKeys;
use super::listener::ConnStats;
use super::log::RequestLog;
use crate::base::health::Health;
use crate::delivery::Delivery;
use crate::events::EventHub;
use crate::metrics::Metrics;
use crate::model::StatusPolicy;
use crate::observe::{Observed, Rosters};
use crate::status::StatusTable;
use crate::xmpp::LinkHandle;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// What request handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The held statuses.
    pub table: StatusTable,
    /// The sessions the server announced.
    pub observed: Observed,
    /// Users' rosters, read through the delivery backend.
    pub rosters: Rosters,
    /// Acting in users' names (the Waher calls).
    pub agent: crate::agent::Agent,
    /// The event hub (SSE subscriptions).
    pub hub: EventHub,
    /// Defaults and limits.
    pub policy: StatusPolicy,
    /// Served user domains.
    pub domains: BTreeSet<String>,
    /// Accepted API keys.
    pub keys: ApiKeys,
    /// What became of a change on the server (Tigase answers; fan-out holds).
    pub delivery: Delivery,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The XMPP link, for `/metrics`.
    pub link: LinkHandle,
    /// What delivery depends on (the link, each domain's privileges), for `/readyz`, the
    /// status page and every write's answer.
    pub health: Health,
    /// `[xmpp] server`, as configured.
    pub server: String,
    /// `[xmpp] component`.
    pub component: String,
    /// The listener's connection counters, for `/metrics`.
    pub connections: Arc<ConnStats>,
    /// The effective cap on concurrent connections, for `/metrics`.
    pub max_connections: usize,
    /// Longest time a client may take to send a request body.
    pub body_timeout: Duration,
    /// The rate limit on log lines of refused and failed requests.
    pub requests: Arc<RequestLog>,
}
