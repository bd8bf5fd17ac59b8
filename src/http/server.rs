//! The HTTP listener: routing, the request pipeline (method → key → media type → size → path →
//! body → fields → table → delivery outcome), request spans and metrics, and the operations
//! endpoints (`/healthz`, `/readyz`, `/metrics`, no API key).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use std::collections::BTreeSet;
use tracing::{debug, warn, Instrument};

use super::auth::ApiKeys;
use super::error::{self, ApiError, Format};
use super::input;
use super::listener::ConnStats;
use super::log::{self, RequestLog};
use super::tigase::{self, Request};
use crate::access::Need;
use crate::base::escape::Escaped;
use crate::delivery::Delivery;
use crate::events::EventHub;
use crate::metrics::{Gauges, Metrics, Outcome};
use crate::model::{Source, StatusPolicy};
use crate::observe::{Observed, Rosters};
use crate::status::{Edit, StatusTable};
use crate::xmpp::{LinkHandle, LinkState};

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
        .route("/rest/user/{user}/status", any(status_default))
        .route("/rest/user/{user}/status/{resource}", any(status_resource))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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
    let mut body = state.metrics.render(&Gauges {
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
    });
    body.push_str(
        "# HELP extpresence_http_rate_limited_total Requests refused over a rate limit, by \
         credential name (`global`: the global limit).\n\
         # TYPE extpresence_http_rate_limited_total counter\n",
    );
    for (name, n) in state.keys.limits.refused() {
        body.push_str(&format!(
            "extpresence_http_rate_limited_total{{key=\"{name}\"}} {n}\n"
        ));
    }
    let (wrong, limited) = state.keys.failures.counts();
    body.push_str(&format!(
        "# HELP extpresence_auth_failures_total Failed authentications: wrong keys or tokens \
         (`wrong_key`, any dialect and the status page's sign-in), and attempts refused because \
         their client address made too many (`peer_limited`).\n\
         # TYPE extpresence_auth_failures_total counter\n\
         extpresence_auth_failures_total{{reason=\"wrong_key\"}} {wrong}\n\
         extpresence_auth_failures_total{{reason=\"peer_limited\"}} {limited}\n"
    ));
    let mut r = body.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
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
    state.metrics.refused(e.code());
    state
        .requests
        .request(kind, e.status().as_u16(), method, user, &e);
    e.into_response(format)
}

/// The format to answer in when the request's own Content-Type is not usable: Accept, else JSON.
fn reply_format(headers: &HeaderMap) -> Format {
    let get = |h| headers.get(h).and_then(|v: &HeaderValue| v.to_str().ok());
    get(header::CONTENT_TYPE)
        .and_then(Format::from_media_type)
        .or_else(|| get(header::ACCEPT).and_then(Format::from_media_type))
        .unwrap_or(Format::Json)
}

/// The answers of the Tigase dialect's two routes, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum TigaseResponses {
    /// Held (and, with the Tigase backend, taken by the server)
    #[response(status = 200)]
    Held(super::tigase::StatusResponse),
    /// A field, the body, the JID or the credentials are wrong
    #[response(status = 400)]
    BadRequest(super::v1::ErrorBody),
    /// No API key
    #[response(status = 401)]
    NoKey(super::v1::ErrorBody),
    /// Wrong API key or a domain not served
    #[response(status = 403)]
    Forbidden(super::v1::ErrorBody),
    /// No such endpoint
    #[response(status = 404)]
    NotFound(super::v1::ErrorBody),
    /// Not POST
    #[response(status = 405)]
    NotPost(super::v1::ErrorBody),
    /// The body did not arrive in time
    #[response(status = 408)]
    BodyTimeout(super::v1::ErrorBody),
    /// Body over 16 KiB
    #[response(status = 413)]
    TooLarge(super::v1::ErrorBody),
    /// Neither JSON nor XML
    #[response(status = 415)]
    MediaType(super::v1::ErrorBody),
    /// Tigase backend: the server refused it (held, `success: false` and the reason)
    #[response(status = 502)]
    Refused(super::tigase::StatusResponse),
    /// The store cannot commit (error body), or Tigase backend: the link is down (held, `success: false`)
    #[response(status = 503)]
    Unavailable(super::tigase::StatusResponse),
    /// Tigase backend: no answer in time (held, `success: false`)
    #[response(status = 504)]
    Timeout(super::tigase::StatusResponse),
}

/// Tigase's UserStatusEndpoint: set or clear `{user}/{default_resource}`.
#[utoipa::path(
    post,
    path = "/rest/user/{user}/status",
    tag = "tigase",
    params(("user" = String, Path, description = "The user JID (`user@domain`, optionally `/resource`)", pattern = "^[a-z0-9._-]{1,64}@[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?){0,4}(/[A-Za-z0-9._-]{1,64})?$")),
    request_body(content = super::tigase::JsonCommand, description = "The command as JSON; the same fields as XML `<command>` with `Content-Type: application/xml` are accepted too (and answered in XML)", content_type = "application/json"),
    responses(TigaseResponses),
    security(("api_key" = []))
)]
pub async fn status_default(
    State(state): State<Arc<AppState>>,
    method: Method,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = path.map(|Path(user)| (user, None));
    handle(state, method, path, query, headers, body).await
}

/// Tigase's UserStatusEndpoint: set or clear `{user}/{resource}`.
#[utoipa::path(
    post,
    path = "/rest/user/{user}/status/{resource}",
    tag = "tigase",
    params(
        ("user" = String, Path, description = "The user JID (`user@domain`)", pattern = "^[a-z0-9._-]{1,64}@[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?){0,4}$"),
        ("resource" = String, Path, description = "The resource", pattern = "^[A-Za-z0-9._-]{1,64}$"),
    ),
    request_body(content = super::tigase::JsonCommand, description = "As for `/rest/user/{user}/status`", content_type = "application/json"),
    responses(TigaseResponses),
    security(("api_key" = []))
)]
pub async fn status_resource(
    State(state): State<Arc<AppState>>,
    method: Method,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = path.map(|Path((user, resource))| (user, Some(resource)));
    handle(state, method, path, query, headers, body).await
}

/// The user and resource path segments, or why they could not be decoded.
type Segments = Result<(String, Option<String>), PathRejection>;

async fn handle(
    state: Arc<AppState>,
    method: Method,
    path: Segments,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    // The query is never logged: it may hold the API key. The span is at DEBUG: at INFO its
    // fields were formatted for every request, needed or not; refusals and failures name the
    // user themselves.
    fn user(path: &Segments) -> &str {
        path.as_ref().map_or("", |(user, _)| user.as_str())
    }
    let span = tracing::debug_span!("request", %method, user = %Escaped(user(&path)));
    async move {
        let result = set_status(&state, &method, &path, query.as_deref(), &headers, body).await;
        state.metrics.update(match &result {
            Ok((_, code, _, _)) if *code != StatusCode::OK => Outcome::Failed,
            Ok((_, _, _, true)) => Outcome::Set,
            Ok((_, _, _, false)) => Outcome::Cleared,
            Err(e) if e.status().is_server_error() => Outcome::Failed,
            Err(_) => Outcome::Rejected,
        });
        let resp = match result {
            Ok((format, code, body, _)) => {
                let mut r = (code, body).into_response();
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(format.content_type()),
                );
                r
            }
            Err(e) => refuse(&state, &method, user(&path), e, reply_format(&headers)),
        };
        let elapsed = started.elapsed();
        state.metrics.http_latency(elapsed);
        debug!(status = resp.status().as_u16(), ?elapsed, "request done");
        resp
    }
    .instrument(span)
    .await
}

async fn set_status(
    state: &AppState,
    method: &Method,
    path: &Segments,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Format, StatusCode, String, bool), ApiError> {
    if method != Method::POST {
        return Err(ApiError::Method(method.to_string(), "POST"));
    }
    let grant = state.keys.check(query, headers)?;
    let (user, resource) = path.as_ref().map_err(|_| ApiError::InvalidPath)?;
    // Borrowed unless the header is not UTF-8 (no copy per request).
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .unwrap_or_default();
    let format = Format::from_media_type(&content_type)
        .ok_or_else(|| ApiError::MediaType(content_type.chars().take(128).collect()))?;
    let body = input::read_body(headers, body, MAX_BODY_BYTES, state.body_timeout).await?;

    let (user, jid_resource) = input::parse_user(user)?;
    if !state.domains.contains(user.domain().as_str()) {
        return Err(ApiError::Domain(user.domain().as_str().to_string()));
    }
    grant.allows(Need::Write, &user)?;
    let resource = state
        .policy
        .resource(resource.as_deref().or(jid_resource.as_deref()))?;

    let command = match format {
        Format::Json => tigase::parse_json(&body)?,
        Format::Xml => tigase::parse_xml(&body)?,
    };
    let request = tigase::validate(&command, &state.policy)?;
    // The Tigase dialect speaks for source `default`.
    let edit = match &request {
        Request::Set(status) => Edit::Set {
            source: Source::DEFAULT,
            status: status.clone(),
            expires_at: None,
        },
        Request::Clear => Edit::Clear(Source::DEFAULT),
    };
    let applied = state
        .table
        .write(&user, &resource, edit)
        .await
        .map_err(|e| ApiError::Storage(e.to_string()))?;
    let full = user.with_resource(&resource);
    let available = matches!(request, Request::Set(_));
    // DEBUG: a line per update at thousands of updates per second floods the journal (which
    // rate-limits it anyway) and cost ~9% of the CPU per request (benchmark P3, perf);
    // `/metrics` counts updates, and RUST_LOG=info,extpresence::http=debug shows each one.
    debug!(jid = %full, available, "status held");
    // A change of a losing source sends nothing: there is nothing for the server to take.
    let confirmed = if applied.changed {
        state.delivery.confirm(&user, &resource, applied.seq).await
    } else {
        Ok(())
    };
    let (code, failure) = match confirmed {
        Ok(()) => (StatusCode::OK, None),
        Err(e) => {
            warn!(jid = %full, error = %e, "the server did not take the change");
            (error::delivery_status(&e), Some(e.to_string()))
        }
    };
    let body = tigase::response(format, full.as_str(), &request, failure.as_deref());
    Ok((format, code, body, available))
}
