//! What every route shares: `AppState`, the router (each dialect's and the operations routes,
//! the 404 fallback, the client-scoping middleware and the request pipeline's record) and the
//! body limit.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::Response;
use axum::Router;

use super::auth::ApiKeys;
use super::error::ApiError;
use super::listener::ConnStats;
use super::log::RequestLog;
use super::pipeline::{record, reply_format, Recorder};
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
    /// The status page's own state (server, component, link since, sessions).
    pub ui: Arc<super::ui::UiState>,
    /// The event hub (SSE subscriptions).
    pub hub: EventHub,
    /// The Matrix dialect's source and server-name mapping.
    pub matrix: super::matrix::MatrixSettings,
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
    /// The XMPP link, for `/readyz` and `/metrics`.
    pub link: LinkHandle,
    /// The listener's connection counters, for `/metrics`.
    pub connections: Arc<ConnStats>,
    /// The effective cap on concurrent connections, for `/metrics`.
    pub max_connections: usize,
    /// Longest time a client may take to send a request body.
    pub body_timeout: Duration,
    /// The rate limit on log lines of refused and failed requests.
    pub requests: Arc<RequestLog>,
}

/// The API router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(super::tigase::routes())
        .merge(super::ops::routes())
        .merge(super::v1::routes())
        .merge(super::matrix::routes())
        .merge(super::waher::routes())
        .merge(super::ui::routes())
        .fallback(not_found)
        // Inside the client scope, and on every route and the fallback (axum applies a router's
        // layer to each route, after routing: the route that matched is known).
        .layer(axum::middleware::from_fn_with_state(
            Recorder {
                metrics: state.metrics.clone(),
                requests: state.requests.clone(),
            },
            record,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.keys.clone(),
            super::auth::scope_client,
        ))
        .with_state(state)
}

async fn not_found(headers: HeaderMap) -> Response {
    ApiError::NotFound.into_response(reply_format(&headers))
}
