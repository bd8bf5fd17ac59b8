//! What every route shares: `AppState`, the router (each dialect's and the operations routes,
//! the 404 fallback, the client-scoping middleware), the body limit, and the answer to a refused
//! or failed request of any dialect (`refuse`, `reply_format`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::Response;
use axum::Router;

use super::auth::ApiKeys;
use super::error::{ApiError, Format};
use super::listener::ConnStats;
use super::log::{self, RequestLog};
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
        .layer(axum::middleware::from_fn_with_state(
            state.keys.clone(),
            super::auth::scope_client,
        ))
        .with_state(state)
}

async fn not_found(headers: HeaderMap) -> Response {
    ApiError::NotFound.into_response(reply_format(&headers))
}

/// The answer to a refused or failed request of any dialect: counted by code, logged (escaped,
/// rate-limited), rendered in `format`.
pub fn refuse(
    state: &AppState,
    method: &Method,
    user: &str,
    e: ApiError,
    format: Format,
) -> Response {
    let kind = if e.status().is_server_error() {
        log::Kind::Failed
    } else {
        log::Kind::Refused
    };
    state.metrics.refused("tigase", e.code());
    state
        .requests
        .request(kind, e.status().as_u16(), method, user, &e);
    e.into_response(format)
}

/// The format to answer in when the request's own Content-Type is not usable: Accept, else JSON.
pub(super) fn reply_format(headers: &HeaderMap) -> Format {
    let get = |h| headers.get(h).and_then(|v: &HeaderValue| v.to_str().ok());
    get(header::CONTENT_TYPE)
        .and_then(Format::from_media_type)
        .or_else(|| get(header::ACCEPT).and_then(Format::from_media_type))
        .unwrap_or(Format::Json)
}
