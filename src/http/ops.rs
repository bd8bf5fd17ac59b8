//! The operations endpoints, without an API key: `/healthz` (the process answers: liveness),
//! `/readyz` (a change would reach contacts now: the report of [`super::readiness`]) and
//! `/metrics` (the Prometheus text of [`crate::metrics`], with the values read at scrape time).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
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

/// 200 when a change would reach contacts now (see [`super::readiness`]); else 503 naming each
/// failing condition and its fix. Plain text, or the whole report as JSON when the request
/// accepts `application/json` (what `extpresence status` reads).
async fn readyz(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let report = state.readiness();
    let code = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    if json {
        let body = serde_json::to_string(&report).expect("the report serialises");
        let mut r = (code, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    } else {
        (code, report.text()).into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let (auth_wrong_key, auth_peer_limited) = state.keys.failures.counts();
    let body = state.metrics.render(Gauges {
        held: state.table.len(),
        link_up: state.link.state() == LinkState::Up,
        store_ok: state.table.store_failure().is_none(),
        privileges: state
            .health
            .privileges()
            .into_iter()
            .map(|(d, p)| (d, p.granted()))
            .collect(),
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
