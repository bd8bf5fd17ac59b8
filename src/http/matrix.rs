//! The Matrix dialect: `PUT`/`GET /_matrix/client/{r0,v3}/presence/{userId}/status` (seed 004,
//! the Matrix client-server API's presence module), and `GET /_matrix/client/versions` so that
//! client libraries start.
//!
//! It translates only: a Matrix user ID `@alice:example.com` is the XMPP user
//! `alice@example.com` (`[matrix] server_names` maps Matrix server names to XMPP domains);
//! `online` sets the source `[matrix] source` (default `matrix`) of the default resource to
//! available, `unavailable` to `away`, `offline` clears it; `GET` maps the aggregated presence
//! back (`online`/`chat` → `online`; `away`/`xa`/`dnd` → `unavailable`; nothing → `offline`).
//! Credentials are the same keys and tokens as everywhere (`Authorization: Bearer`, or the
//! deprecated `?access_token=`), with the same scopes and rate limits. Errors are Matrix's own
//! `{"errcode","error"}` bodies, with Synapse's texts where Synapse has one; the pipeline counts
//! them by the shared check's code when one refused (`missing_api_key`, …), else by `errcode`.
//! A `PUT` counts in `extpresence_updates_total` like every status write.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Extension, Router};
use jid::BareJid;
use serde_json::{json, Map, Value};

use super::error::Refusal;
use super::error::{retry_after, ApiError};
use super::input;
use super::state::{AppState, MAX_BODY_BYTES};
use crate::access::{Grant, Need};
use crate::base::clock::now_ms;
use crate::metrics::Outcome;
use crate::model::{validate_text, Source, Status, Word};
use crate::observe;
use crate::status::Edit;

/// What the Matrix dialect is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixSettings {
    /// The source Matrix writes as.
    pub source: Source,
    /// Matrix server name → XMPP domain (a server name not listed is the domain itself).
    pub server_names: BTreeMap<String, String>,
}

/// A Matrix error: status, `errcode`, `error`, and for 429 the wait.
#[derive(Debug)]
struct MatrixError {
    status: StatusCode,
    errcode: &'static str,
    /// The code counted and logged by the pipeline: the shared check's code (`missing_api_key`,
    /// …) when one refused, else the `errcode`.
    code: &'static str,
    error: String,
    retry_after: Option<std::time::Duration>,
}

fn err(status: StatusCode, errcode: &'static str, error: impl Into<String>) -> MatrixError {
    MatrixError {
        status,
        errcode,
        code: errcode,
        error: error.into(),
        retry_after: None,
    }
}

impl IntoResponse for MatrixError {
    fn into_response(self) -> Response {
        let mut body = json!({ "errcode": self.errcode, "error": self.error });
        if let Some(wait) = self.retry_after {
            body["retry_after_ms"] = json!(wait.as_millis() as u64);
        }
        let mut r = (self.status, body.to_string()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(wait) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, retry_after(wait));
        }
        Refusal::attach(r, self.code, self.error)
    }
}

/// The dialect's answer to the shared checks' errors.
impl From<ApiError> for MatrixError {
    fn from(e: ApiError) -> MatrixError {
        let code = e.code();
        let mut m = match e {
            ApiError::MissingKey => err(
                StatusCode::UNAUTHORIZED,
                "M_MISSING_TOKEN",
                "Missing access token",
            ),
            ApiError::WrongKey { .. } => err(
                StatusCode::UNAUTHORIZED,
                "M_UNKNOWN_TOKEN",
                "Unrecognised access token",
            ),
            ApiError::AmbiguousCredentials(_) => {
                err(StatusCode::BAD_REQUEST, "M_UNKNOWN", e.to_string())
            }
            ApiError::RateLimited(wait) => MatrixError {
                status: StatusCode::TOO_MANY_REQUESTS,
                errcode: "M_LIMIT_EXCEEDED",
                code,
                error: "Too Many Requests".into(),
                retry_after: Some(wait),
            },
            ApiError::Forbidden(_) | ApiError::Domain(_) => {
                err(StatusCode::FORBIDDEN, "M_FORBIDDEN", e.to_string())
            }
            ApiError::TooLarge(_) => {
                err(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", e.to_string())
            }
            ApiError::Storage(_) | ApiError::Roster(_) => {
                err(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", e.to_string())
            }
            other => err(other.status(), "M_UNKNOWN", other.to_string()),
        };
        m.code = code;
        m
    }
}

/// The Matrix routes, with the dialect's settings.
pub fn routes(settings: MatrixSettings) -> Router<Arc<AppState>> {
    Router::new()
        .route("/_matrix/client/versions", get(versions))
        .route(
            "/_matrix/client/{version}/presence/{user}/status",
            any(status),
        )
        .route("/_matrix/{*rest}", any(unrecognized))
        .route("/_matrix", any(unrecognized))
        .layer(Extension(Arc::new(settings)))
}

async fn unrecognized() -> Response {
    err(
        StatusCode::NOT_FOUND,
        "M_UNRECOGNIZED",
        "Unrecognized request",
    )
    .into_response()
}

/// The versions served: presence is the same in r0 and v3.
async fn versions() -> Response {
    let mut r = json!({
        "versions": ["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11"],
        "unstable_features": {}
    })
    .to_string()
    .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The credential: `Authorization: Bearer` or `?access_token=`, exactly one.
fn grant(
    state: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Arc<Grant>, MatrixError> {
    // `access_token` is Matrix's name for the query credential; the shared check knows `api-key`.
    let renamed: Option<String> = query.map(|q| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form_urlencoded::parse(q.as_bytes()).map(|(k, v)| {
                let k = if k == "access_token" {
                    "api-key".into()
                } else {
                    k
                };
                (k, v)
            }))
            .finish()
    });
    Ok(state.keys.check(renamed.as_deref(), headers)?)
}

/// `@alice:example.com` → `alice@example.com` (a served domain).
fn user_of(settings: &MatrixSettings, state: &AppState, id: &str) -> Result<BareJid, MatrixError> {
    let invalid = || {
        err(
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
            format!(
                "{:?} is not a valid Matrix user ID (@localpart:server)",
                id.chars().take(100).collect::<String>()
            ),
        )
    };
    let rest = id.strip_prefix('@').ok_or_else(invalid)?;
    let (local, server) = rest.split_once(':').ok_or_else(invalid)?;
    // The Matrix grammar of a localpart: a-z 0-9 . _ = - / +, and a user ID at most 255 bytes.
    let grammar = !local.is_empty()
        && id.len() <= 255
        && local
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-/+".contains(&b))
        && !server.is_empty()
        && server
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if !grammar {
        return Err(invalid());
    }
    let domain = settings
        .server_names
        .get(server)
        .map(String::as_str)
        .unwrap_or(server);
    let user =
        input::served_user(&format!("{local}@{domain}"), &state.domains).map_err(|e| match e {
            ApiError::Domain(d) => err(
                StatusCode::FORBIDDEN,
                "M_FORBIDDEN",
                format!("{d} is not a domain served here"),
            ),
            _ => invalid(),
        })?;
    Ok(user)
}

/// `PUT`/`GET` of a user's presence.
async fn status(
    State(state): State<Arc<AppState>>,
    Extension(settings): Extension<Arc<MatrixSettings>>,
    method: Method,
    Path((version, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if version != "r0" && version != "v3" {
        return unrecognized().await;
    }
    let r = match method {
        Method::PUT => {
            let r = put(&state, &settings, &id, query.as_deref(), &headers, body).await;
            state.metrics.update(match &r {
                Ok((_, true)) => Outcome::Set,
                Ok((_, false)) => Outcome::Cleared,
                Err(e) if e.status.is_server_error() => Outcome::Failed,
                Err(_) => Outcome::Rejected,
            });
            r.map(|(answer, _)| answer)
        }
        Method::GET => get_presence(&state, &settings, &id, query.as_deref(), &headers).await,
        _ => {
            // As Synapse: M_UNRECOGNIZED; and the Allow header RFC 9110 asks of a 405.
            let mut r = err(
                StatusCode::METHOD_NOT_ALLOWED,
                "M_UNRECOGNIZED",
                "Unrecognized request",
            )
            .into_response();
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, PUT"));
            return r;
        }
    };
    r.unwrap_or_else(IntoResponse::into_response)
}

fn ok_json(v: Value) -> Response {
    let mut r = v.to_string().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn put(
    state: &AppState,
    settings: &MatrixSettings,
    id: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Response, bool), MatrixError> {
    let grant = grant(state, query, headers)?;
    let user = user_of(settings, state, id)?;
    if grant.allows(Need::Write, &user).is_err() {
        return Err(err(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "Can only set your own presence state",
        ));
    }
    let body = input::read_body(headers, body, MAX_BODY_BYTES, state.body_timeout).await?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|_| err(StatusCode::BAD_REQUEST, "M_NOT_JSON", "Content not JSON."))?;
    let obj: &Map<String, Value> = v.as_object().ok_or_else(|| {
        err(
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
            "Content must be a JSON object.",
        )
    })?;
    // As Synapse (synapse/rest/client/presence.py): `presence` taken, then `status_msg` (a
    // string), then any key left is "Unable to parse state"; the state itself is checked last.
    let unparsable = || {
        err(
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "Unable to parse state",
        )
    };
    let presence = obj.get("presence").ok_or_else(unparsable)?;
    let text = match obj.get("status_msg") {
        None => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "status_msg must be a string.",
            ))
        }
    };
    if obj.keys().any(|k| k != "presence" && k != "status_msg") {
        return Err(unparsable());
    }
    let text = match text {
        Some(s) => {
            validate_text(s)
                .map_err(|e| err(StatusCode::BAD_REQUEST, "M_INVALID_PARAM", e.to_string()))?;
            Some(s.clone())
        }
        None => None,
    };
    let presence = presence.as_str().unwrap_or_default();
    let source = settings.source;
    let edit = match presence {
        "online" | "unavailable" => Edit::Set {
            source,
            status: Status {
                show: (presence == "unavailable").then_some(crate::model::Show::Away),
                text,
                priority: state.policy.priority(None).map_err(|e| {
                    err(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "M_UNKNOWN",
                        e.to_string(),
                    )
                })?,
            },
            expires_at: None,
        },
        "offline" => Edit::Clear(source),
        _ => {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "Invalid presence state",
            ))
        }
    };
    let set = matches!(edit, Edit::Set { .. });
    let resource = state.policy.resource(None).map_err(|e| {
        err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "M_UNKNOWN",
            e.to_string(),
        )
    })?;
    state
        .table
        .write(&user, &resource, edit)
        .await
        .map_err(|e| MatrixError::from(ApiError::Storage(e.to_string())))?;
    // The spec's answer is `{}`: a change held for later is said in a header only.
    let pending = state.pending(user.domain().as_str());
    Ok((
        super::readiness::mark_pending(ok_json(json!({})), pending),
        set,
    ))
}

async fn get_presence(
    state: &AppState,
    settings: &MatrixSettings,
    id: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, MatrixError> {
    let grant = grant(state, query, headers)?;
    let user = user_of(settings, state, id)?;
    super::pipeline::may_read(&state.rosters, &grant, &user)
        .await
        .map_err(|e| match e {
            ApiError::Forbidden(_) => err(
                StatusCode::FORBIDDEN,
                "M_FORBIDDEN",
                "You are not allowed to see their presence.",
            ),
            other => other.into(),
        })?;
    let p = observe::presence(&state.table, &state.observed, &user, now_ms());
    let word = match Word::parse(p.presence) {
        Ok(Word::Online | Word::Chat) => "online",
        Ok(Word::Away | Word::Xa | Word::Dnd) => "unavailable",
        _ => "offline",
    };
    let mut v = json!({ "presence": word });
    if let Some(ago) = p.last_active_ago {
        v["last_active_ago"] = json!(ago);
    }
    if let Some(text) = &p.status {
        v["status_msg"] = json!(text);
    }
    if p.complete || p.currently_active {
        v["currently_active"] = json!(p.currently_active);
    }
    Ok(ok_json(v))
}
