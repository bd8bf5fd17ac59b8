//! The operations endpoints, without an API key: `/healthz` (the process answers), `/readyz`
//! (the store and the webhook outbox can commit and the XMPP link is up) and `/metrics` (the
//! Prometheus text of [`crate::metrics`], with the values read at scrape time).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::pipeline::others;
use super::state::AppState;
use crate::metrics::{self, Gauges};
use crate::xmpp::LinkState;

/// The operations routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/healthz", get(healthz).fallback(others("GET")))
        .route("/readyz", get(readyz).fallback(others("GET")))
        .route("/metrics", get(metrics).fallback(others("GET")))
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when the store and the webhook outbox can commit and the XMPP link is up; else 503
/// with the reason.
async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, String) {
    if let Some(why) = state.table.store_failure() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the status store cannot commit: {why}\n"),
        );
    }
    if let Some(why) = state.metrics.webhooks.outbox_failure() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the webhook outbox cannot commit: {why}\n"),
        );
    }
    match state.link.state() {
        LinkState::Up => (StatusCode::OK, "ready\n".into()),
        LinkState::Down => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the XMPP component link is down\n".into(),
        ),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let (auth_wrong_key, auth_peer_limited) = state.keys.failures.counts();
    let body = state.metrics.render(Gauges {
        held: state.table.len(),
        link_up: state.link.state() == LinkState::Up,
        store_ok: state.table.store_failure().is_none(),
        store_failed_commits: state.table.store_failed_commits(),
        http_open: state.connections.open.load(Relaxed),
        http_max: state.max_connections as u64,
        http_cap_hits: state.connections.cap_hits.load(Relaxed),
        http_evicted: state.connections.evicted.load(Relaxed),
        http_refused: state.connections.refused.load(Relaxed),
        observed_sessions: state.observed.sessions() as u64,
        observed_complete: state.observed.complete(),
        event_subscribers: state.hub.subscribers() as u64,
        events: state.hub.published(),
        agent_held: state.agent.held() as u64,
        rate_limited: state.keys.limits.refused(),
        auth_wrong_key,
        auth_peer_limited,
    });
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    r
}
