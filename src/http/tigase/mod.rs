//! The Tigase dialect: `POST /rest/user/{user-jid}/status[/{resource}]`, as Tigase's
//! UserStatusEndpoint documents it. This file holds its routes and its order of the pipeline's
//! steps (method → key → path → media type → size → body → user → grant → fields → table →
//! delivery outcome) with the update counters; `command.rs` holds its wire format (the request
//! fields, their validation, the response body). What every request records is in
//! [`pipeline`](super::pipeline).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use tracing::{debug, warn};

use super::error::{self, ApiError, Format};
use super::input;
use super::pipeline::reply_format;
use super::readiness::mark_pending;
use super::state::{AppState, MAX_BODY_BYTES};
use crate::access::Need;
use crate::metrics::Outcome;
use crate::model::Source;
use crate::status::Edit;

pub mod command;

use command::Request;

/// The Tigase dialect's two routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/rest/user/{user}/status", any(status_default))
        .route("/rest/user/{user}/status/{resource}", any(status_resource))
}

/// The answers of the Tigase dialect's two routes, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum TigaseResponses {
    /// Held (and, with the Tigase backend, taken by the server)
    #[response(status = 200)]
    Held(command::StatusResponse),
    /// A field, the body, the JID or the credentials are wrong
    #[response(status = 400)]
    BadRequest(super::error::ErrorBody),
    /// No API key
    #[response(status = 401)]
    NoKey(super::error::ErrorBody),
    /// Wrong API key or a domain not served
    #[response(status = 403)]
    Forbidden(super::error::ErrorBody),
    /// No such endpoint
    #[response(status = 404)]
    NotFound(super::error::ErrorBody),
    /// Not POST
    #[response(status = 405)]
    NotPost(super::error::ErrorBody),
    /// The body did not arrive in time
    #[response(status = 408)]
    BodyTimeout(super::error::ErrorBody),
    /// Body over 16 KiB
    #[response(status = 413)]
    TooLarge(super::error::ErrorBody),
    /// Neither JSON nor XML
    #[response(status = 415)]
    MediaType(super::error::ErrorBody),
    /// Tigase backend: the server refused it (held, `success: false` and the reason)
    #[response(status = 502)]
    Refused(command::StatusResponse),
    /// The store cannot commit (error body), or Tigase backend: the link is down (held, `success: false`)
    #[response(status = 503)]
    Unavailable(command::StatusResponse),
    /// Tigase backend: no answer in time (held, `success: false`)
    #[response(status = 504)]
    Timeout(command::StatusResponse),
}

/// Tigase's UserStatusEndpoint: set or clear `{user}/{default_resource}`.
#[utoipa::path(
    post,
    path = "/rest/user/{user}/status",
    tag = "tigase",
    params(("user" = String, Path, description = "The user JID (`user@domain`, optionally `/resource`)", pattern = "^[a-z0-9._-]{1,64}@[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?){0,4}(/[A-Za-z0-9._-]{1,64})?$")),
    request_body(content = command::JsonCommand, description = "The command as JSON; the same fields as XML `<command>` with `Content-Type: application/xml` are accepted too (and answered in XML)", content_type = "application/json"),
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
    request_body(content = command::JsonCommand, description = "As for `/rest/user/{user}/status`", content_type = "application/json"),
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
    let result = set_status(&state, &method, &path, query.as_deref(), &headers, body).await;
    state.metrics.update(match &result {
        Ok((_, code, _, _, _)) if *code != StatusCode::OK => Outcome::Failed,
        Ok((_, _, _, true, _)) => Outcome::Set,
        Ok((_, _, _, false, _)) => Outcome::Cleared,
        Err(e) if e.status().is_server_error() => Outcome::Failed,
        Err(_) => Outcome::Rejected,
    });
    match result {
        Ok((format, code, body, _, pending)) => {
            let mut r = (code, body).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            mark_pending(r, pending)
        }
        Err(e) => e.into_response(reply_format(&headers)),
    }
}

async fn set_status(
    state: &AppState,
    method: &Method,
    path: &Segments,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Format, StatusCode, String, bool, Option<&'static str>), ApiError> {
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
        Format::Json => command::parse_json(&body)?,
        Format::Xml => command::parse_xml(&body)?,
    };
    let request = command::validate(&command, &state.policy)?;
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
    // A success held for later (fan-out: link down, privileges missing) says so.
    let pending = match &failure {
        None => state.pending(user.domain().as_str()),
        Some(_) => None,
    };
    let body = command::response(format, full.as_str(), &request, failure.as_deref(), pending);
    Ok((format, code, body, available, pending))
}
