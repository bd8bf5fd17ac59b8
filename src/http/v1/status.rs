//! The status routes of `/v1`: `PUT`, `DELETE` and `GET /v1/users/{jid}/status`, and
//! `POST /v1/statuses` (bulk), with their JSON types and validation.
//!
//! Like every dialect, this one only translates: it parses and validates its JSON, checks the
//! key, calls the model ([`StatusTable`](crate::status::StatusTable)) and renders the answer or
//! the error (`{"error":{"status":…,"code":…,"message":…}}`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::DateTime;
use jid::{BareJid, ResourcePart};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::common::{finish, json, malformed, user_of, MAX_BULK_BYTES, MAX_BULK_UPDATES};
use crate::access::Need;
use crate::base::clock::{now_ms, rfc3339};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::input;
use crate::http::pipeline::require_json;
use crate::http::readiness::mark_pending;
use crate::http::state::{AppState, MAX_BODY_BYTES};
use crate::metrics::Outcome;
use crate::model::{
    validate_text, InvalidStatus, Source, SourceRef, Status, Word, MAX_EXPIRY_SECS,
};
use crate::status::{Applied, Edit, ResourceStatus, SourceStatus};

/// A presence word (`offline` clears the source).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Online,
    Chat,
    Away,
    Xa,
    Dnd,
    Offline,
}

/// The fields of a status update (`PUT` body, and a bulk item with `user`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusUpdate {
    /// The presence word; `offline` clears this source.
    #[schema(value_type = Presence)]
    pub presence: Option<Value>,
    /// Status text: up to 1,024 characters, no control characters but tab and line feed.
    #[schema(value_type = Option<String>, max_length = 1024, pattern = "^[^\\u0000-\\u0008\\u000b-\\u001f\\u007f-\\u009f\\ufffe\\uffff]*$")]
    pub status: Option<Value>,
    /// The resource; `[status] default_resource` when absent.
    #[schema(value_type = Option<String>, pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub resource: Option<Value>,
    /// The feeding system, `[a-z0-9_.-]{1,32}`; `default` when absent.
    #[schema(value_type = Option<String>, pattern = "^[a-z0-9_.-]{1,32}$")]
    pub source: Option<Value>,
    /// Priority, -128..-1 (0..127 too with `allow_non_negative_priority`); the configured
    /// default when absent.
    #[schema(value_type = Option<i32>, minimum = -128, maximum = -1)]
    pub priority: Option<Value>,
    /// Seconds until the status ends by itself (1..2,592,000). Not with `expires_at`.
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 2592000)]
    pub expires_in: Option<Value>,
    /// When the status ends by itself (RFC 3339, within 30 days). Not with `expires_in`.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Value>,
}

/// One update of a bulk request: a status update and whose it is.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkItem {
    /// The user, `user@domain` of a served domain.
    #[schema(value_type = String, pattern = "^[a-z0-9._-]{1,64}@[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?){0,4}$")]
    pub user: Option<Value>,
    /// See [`StatusUpdate`].
    #[schema(value_type = Presence)]
    pub presence: Option<Value>,
    #[schema(value_type = Option<String>, max_length = 1024, pattern = "^[^\\u0000-\\u0008\\u000b-\\u001f\\u007f-\\u009f\\ufffe\\uffff]*$")]
    #[allow(missing_docs)]
    pub status: Option<Value>,
    #[schema(value_type = Option<String>, pattern = "^[A-Za-z0-9._-]{1,64}$")]
    #[allow(missing_docs)]
    pub resource: Option<Value>,
    #[schema(value_type = Option<String>, pattern = "^[a-z0-9_.-]{1,32}$")]
    #[allow(missing_docs)]
    pub source: Option<Value>,
    #[schema(value_type = Option<i32>, minimum = -128, maximum = -1)]
    #[allow(missing_docs)]
    pub priority: Option<Value>,
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 2592000)]
    #[allow(missing_docs)]
    pub expires_in: Option<Value>,
    #[schema(value_type = Option<String>, format = DateTime)]
    #[allow(missing_docs)]
    pub expires_at: Option<Value>,
}

/// A bulk request. The items are kept as the raw JSON text they are (borrowed from the body),
/// then each is parsed once into a [`BulkItem`]: one parse per item, not a map and a second pass.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest<'a> {
    /// At most 1,000 updates (JSON objects). Each is validated on its own as a `BulkItem`; an
    /// invalid one is reported in `results` and changes nothing, the others are committed.
    #[schema(value_type = Vec<Object>, max_items = 1000)]
    #[serde(borrow)]
    pub updates: Vec<&'a serde_json::value::RawValue>,
}

/// What contacts see of a resource.
#[derive(Debug, Serialize, ToSchema)]
pub struct Effective {
    /// The presence word.
    #[schema(value_type = Presence)]
    presence: &'static str,
    /// The status text.
    status: Option<String>,
    /// The winning source.
    source: String,
    /// The priority.
    priority: i8,
}

/// The answer to an update or a clear.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusAnswer {
    /// The user.
    user: String,
    /// The resource.
    resource: String,
    /// The source that was set or cleared (`*` for every source).
    source: String,
    /// The presence that was set (`offline` for a clear).
    #[schema(value_type = Presence)]
    presence: &'static str,
    /// The status text that was set.
    status: Option<String>,
    /// The priority that was set.
    priority: Option<i8>,
    /// When the status that was set ends by itself (RFC 3339).
    expires_at: Option<String>,
    /// What contacts see of the resource now; absent when no source is left.
    #[serde(skip_serializing_if = "Option::is_none")]
    effective: Option<Effective>,
    /// `queued`: it goes to contacts now. `pending`: it is held and goes out once the reason
    /// is fixed (`GET /readyz` names the fix): the link is down, or the server grants no
    /// XEP-0356 privileges for the user's domain.
    #[schema(value_type = String, example = "queued")]
    delivery: &'static str,
    /// Why delivery is pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    delivery_reason: Option<&'static str>,
}

/// One source's status, as held.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourceAnswer {
    /// The source.
    source: String,
    /// The presence word.
    #[schema(value_type = Presence)]
    presence: &'static str,
    /// The status text.
    status: Option<String>,
    /// The priority.
    priority: i8,
    /// When it was set (RFC 3339).
    updated_at: String,
    /// When it ends by itself (RFC 3339).
    expires_at: Option<String>,
}

/// One resource, as held.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResourceAnswer {
    /// The resource.
    resource: String,
    /// What contacts see.
    effective: Effective,
    /// Every source, the most recently updated last.
    sources: Vec<SourceAnswer>,
}

/// Everything held for a user.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserAnswer {
    /// The user.
    user: String,
    /// The held resources (empty when nothing is held).
    resources: Vec<ResourceAnswer>,
}

/// Why one bulk item was refused.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemError {
    /// The error code, as in the error body.
    code: &'static str,
    /// What is wrong.
    message: String,
}

/// The outcome of one bulk item.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkResult {
    /// The item's index in `updates`.
    index: usize,
    /// Whether it was committed.
    ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ItemError>,
    /// For a committed item: `queued` or `pending` (see the single update's answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    delivery: Option<&'static str>,
}

/// The answer to a bulk request.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkAnswer {
    /// One result per update, in order.
    results: Vec<BulkResult>,
}

fn word(status: &Status) -> &'static str {
    Word::of(status.show).as_str()
}

fn effective(s: &SourceStatus) -> Effective {
    Effective {
        presence: word(&s.status),
        status: s.status.text.clone(),
        source: s.source.as_str().to_string(),
        priority: s.status.priority,
    }
}

fn invalid(e: InvalidStatus) -> ApiError {
    ApiError::Invalid(e)
}

/// What a valid update asks for.
struct Valid {
    user: BareJid,
    resource: ResourcePart,
    /// The source, or `None` for every source (`DELETE ?source=*`).
    source: Option<Source>,
    edit: Edit,
    /// The use of the source's name this request holds until its edit is applied (a name is
    /// interned only by a valid request, and kept only by a committed status).
    _name: Option<SourceRef>,
}

fn string(
    v: &Option<Value>,
    bad: impl Fn(String) -> InvalidStatus,
) -> Result<Option<&str>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(bad(other.to_string()))),
    }
}

/// Validate the fields of an update of `user` by the credential named `by`.
fn validate(
    state: &AppState,
    user: BareJid,
    u: &StatusUpdate,
    by: &str,
) -> Result<Valid, ApiError> {
    let presence = string(&u.presence, InvalidStatus::Presence)?
        .ok_or_else(|| invalid(InvalidStatus::Presence("(missing)".into())))?;
    let word = Word::parse(presence)?;
    let resource = state
        .policy
        .resource(string(&u.resource, InvalidStatus::Resource)?)?;
    let source_name = string(&u.source, InvalidStatus::Source)?;
    if let Some(s) = source_name {
        Source::check(s)?;
    }
    let priority = match &u.priority {
        None | Some(Value::Null) => state.policy.priority(None)?,
        Some(Value::Number(n)) => state.policy.priority(Some(&n.to_string()))?,
        Some(other) => return Err(invalid(InvalidStatus::Priority(other.to_string()))),
    };
    let text = match &u.status {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(other) => {
            return Err(ApiError::Malformed {
                format: "JSON",
                message: format!("status must be a string, not {other}"),
            })
        }
    };
    let text = match text {
        None | Some("") => None,
        Some(t) => {
            validate_text(t)?;
            Some(t.to_string())
        }
    };
    let expiry_err = |m: String| invalid(InvalidStatus::Expiry(m));
    let now = now_ms();
    let max_ms = MAX_EXPIRY_SECS * 1000;
    let expires_at = match (&u.expires_in, &u.expires_at) {
        (None | Some(Value::Null), None | Some(Value::Null)) => None,
        (Some(i), None | Some(Value::Null)) if !i.is_null() => {
            let secs = i
                .as_u64()
                .filter(|s| (1..=MAX_EXPIRY_SECS).contains(s))
                .ok_or_else(|| {
                    expiry_err(format!(
                        "expires_in {i} is not a whole number of seconds in 1..{MAX_EXPIRY_SECS}"
                    ))
                })?;
            Some(now + secs * 1000)
        }
        (None | Some(Value::Null), Some(at)) => {
            let text = at
                .as_str()
                .ok_or_else(|| expiry_err(format!("expires_at {at} is not an RFC 3339 time")))?;
            let at = DateTime::parse_from_rfc3339(text).map_err(|e| {
                expiry_err(format!(
                    "expires_at {:?} is not an RFC 3339 time: {e}",
                    text.chars().take(64).collect::<String>()
                ))
            })?;
            let ms = u64::try_from(at.timestamp_millis()).unwrap_or(0);
            if ms <= now {
                return Err(expiry_err(format!(
                    "expires_at {text:?} is in the past (now is {}); give a later time, or expires_in",
                    rfc3339(now)
                )));
            }
            if ms - now > max_ms {
                return Err(expiry_err(format!(
                    "expires_at {text:?} is not in the next {MAX_EXPIRY_SECS} seconds"
                )));
            }
            Some(ms)
        }
        _ => return Err(expiry_err("give expires_in or expires_at, not both".into())),
    };
    // Last, once everything else is valid: the source's name (charged to `by` when the status
    // will hold it).
    let name = source_name
        .map(|s| Source::acquire(s, word.show().is_some().then_some(by)))
        .transpose()?;
    let source = name.as_ref().map_or(Source::DEFAULT, SourceRef::get);
    let edit = match word.show() {
        Some(show) => Edit::Set {
            source,
            status: Status {
                show,
                text,
                priority,
            },
            expires_at,
        },
        None if expires_at.is_some() => {
            return Err(expiry_err(
                "an expiry goes with an available presence, not with offline".into(),
            ))
        }
        None => Edit::Clear(source),
    };
    Ok(Valid {
        user,
        resource,
        source: Some(source),
        edit,
        _name: name,
    })
}

fn answer(v: &Valid, applied: &Applied, pending: Option<&'static str>) -> StatusAnswer {
    let (presence, status, priority, expires_at) = match &v.edit {
        Edit::Set {
            status, expires_at, ..
        } => (
            word(status),
            status.text.clone(),
            Some(status.priority),
            expires_at.map(rfc3339),
        ),
        _ => ("offline", None, None, None),
    };
    StatusAnswer {
        user: v.user.to_string(),
        resource: v.resource.to_string(),
        source: v.source.map_or("*".to_string(), |s| s.as_str().to_string()),
        presence,
        status,
        priority,
        expires_at,
        effective: applied.effective.as_ref().map(effective),
        delivery: delivery_word(pending),
        delivery_reason: pending,
    }
}

/// The `delivery` field: `pending` while the change is held for later, else `queued`.
fn delivery_word(pending: Option<&str>) -> &'static str {
    if pending.is_some() {
        "pending"
    } else {
        "queued"
    }
}

/// Count an update request's refusal or failure (`extpresence_updates_total`): the writes only,
/// never a read or a token call.
fn count_refused_update<T>(state: &AppState, r: &Result<T, ApiError>) {
    if let Err(e) = r {
        state.metrics.update(if e.status().is_server_error() {
            Outcome::Failed
        } else {
            Outcome::Rejected
        });
    }
}

/// Set (or clear) one source's status of a resource.
#[utoipa::path(
    put,
    path = "/v1/users/{jid}/status",
    tag = "v1",
    params(("jid" = String, Path, description = "The user, `user@domain` of a served domain", pattern = "^[a-z0-9._-]{1,64}@[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?){0,4}$")),
    request_body(content = StatusUpdate, content_type = "application/json"),
    responses(
        (status = 200, description = "Committed: held, and delivered to contacts when the link allows", body = StatusAnswer),
        (status = 400, description = "A field is wrong (`invalid_presence`, `invalid_status`, `invalid_priority`, `invalid_resource`, `invalid_source`, `invalid_expiry`), the JSON is malformed or has unknown or repeated fields (`malformed_body`), the JID is wrong (`invalid_jid`, `invalid_path`), or several credentials were given (`ambiguous_credentials`)", body = ErrorBody),
        (status = 401, description = "No API key (`missing_api_key`)", body = ErrorBody),
        (status = 403, description = "Wrong API key (`invalid_api_key`) or a domain not served (`domain_not_served`)", body = ErrorBody),
        (status = 404, description = "No such endpoint (`not_found`)", body = ErrorBody),
        (status = 405, description = "Method not allowed (`method_not_allowed`)", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time (`body_timeout`)", body = ErrorBody),
        (status = 413, description = "Body over 16 KiB (`body_too_large`)", body = ErrorBody),
        (status = 415, description = "Not `application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 503, description = "The store cannot commit: nothing changed (`storage_unavailable`)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn put_status(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let grant = state.keys.check(query.as_deref(), &headers)?;
        let user = user_of(&state, &path)?;
        grant.allows(Need::Write, &user)?;
        require_json(&headers)?;
        let body = input::read_body(&headers, body, MAX_BODY_BYTES, state.body_timeout).await?;
        let update: StatusUpdate = serde_json::from_slice(&body).map_err(malformed)?;
        let v = validate(&state, user, &update, &grant.name)?;
        let applied = state
            .table
            .write(&v.user, &v.resource, v.edit.clone())
            .await
            .map_err(|e| ApiError::Storage(e.to_string()))?;
        state.metrics.update(match v.edit {
            Edit::Set { .. } => Outcome::Set,
            _ => Outcome::Cleared,
        });
        let pending = state.pending(v.user.domain().as_str());
        Ok(mark_pending(
            json(StatusCode::OK, &answer(&v, &applied, pending)),
            pending,
        ))
    }
    .await;
    count_refused_update(&state, &r);
    finish(r)
}

/// Clear one source (or every source) of a resource.
#[utoipa::path(
    delete,
    path = "/v1/users/{jid}/status",
    tag = "v1",
    params(
        ("jid" = String, Path, description = "The user, `user@domain` of a served domain", pattern = "^[a-z0-9._-]{1,64}@[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?){0,4}$"),
        ("resource" = Option<String>, Query, description = "The resource; `[status] default_resource` when absent", pattern = "^[A-Za-z0-9._-]{1,64}$"),
        ("source" = Option<String>, Query, description = "The source (`default` when absent), or `*` for every source of the resource", pattern = "^([a-z0-9_.-]{1,32}|\\*)$"),
    ),
    responses(
        (status = 200, description = "Committed", body = StatusAnswer),
        (status = 400, description = "A parameter is wrong (`invalid_resource`, `invalid_source`, `invalid_jid`, `invalid_path`, `ambiguous_credentials`, `malformed_query`)", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key or a domain not served", body = ErrorBody),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 405, description = "Method not allowed", body = ErrorBody),
        (status = 503, description = "The store cannot commit: nothing changed", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn delete_status(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let grant = state.keys.check(query.as_deref(), &headers)?;
        let user = user_of(&state, &path)?;
        grant.allows(Need::Write, &user)?;
        let (mut resource, mut source) = (None, None);
        for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
            let slot = match k.as_ref() {
                "resource" => &mut resource,
                "source" => &mut source,
                _ => continue,
            };
            if slot.replace(v.into_owned()).is_some() {
                return Err(ApiError::MalformedQuery(format!("{k} given twice")));
            }
        }
        let resource = state.policy.resource(resource.as_deref())?;
        let (source, edit, name) = match source.as_deref() {
            Some("*") => (None, Edit::ClearAll, None),
            None => (Some(Source::DEFAULT), Edit::Clear(Source::DEFAULT), None),
            Some(s) => {
                // A clear holds no name: not charged to the credential.
                let name = Source::acquire(s, None)?;
                let s = name.get();
                (Some(s), Edit::Clear(s), Some(name))
            }
        };
        let v = Valid {
            user,
            resource,
            source,
            edit,
            _name: name,
        };
        let applied = state
            .table
            .write(&v.user, &v.resource, v.edit.clone())
            .await
            .map_err(|e| ApiError::Storage(e.to_string()))?;
        state.metrics.update(Outcome::Cleared);
        let pending = state.pending(v.user.domain().as_str());
        Ok(mark_pending(
            json(StatusCode::OK, &answer(&v, &applied, pending)),
            pending,
        ))
    }
    .await;
    count_refused_update(&state, &r);
    finish(r)
}

fn resource_answer(r: ResourceStatus) -> Option<ResourceAnswer> {
    Some(ResourceAnswer {
        resource: r.resource.to_string(),
        effective: effective(r.effective.as_ref()?),
        sources: r
            .sources
            .iter()
            .map(|s| SourceAnswer {
                source: s.source.as_str().to_string(),
                presence: word(&s.status),
                status: s.status.text.clone(),
                priority: s.status.priority,
                updated_at: rfc3339(s.updated_at),
                expires_at: s.expires_at.map(rfc3339),
            })
            .collect(),
    })
}

/// What extpresence holds for a user.
#[utoipa::path(
    get,
    path = "/v1/users/{jid}/status",
    tag = "v1",
    params(("jid" = String, Path, description = "The user, `user@domain` of a served domain", pattern = "^[a-z0-9._-]{1,64}@[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?){0,4}$")),
    responses(
        (status = 200, description = "Per resource the effective presence and every source (an empty list when nothing is held)", body = UserAnswer),
        (status = 400, description = "The JID is wrong (`invalid_jid`, `invalid_path`) or several credentials were given", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key or a domain not served", body = ErrorBody),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 405, description = "Method not allowed", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn get_status(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let r = (|| {
        let grant = state.keys.check(query.as_deref(), &headers)?;
        let user = user_of(&state, &path)?;
        grant.allows(Need::Read, &user)?;
        let resources = state
            .table
            .statuses(&user)
            .into_iter()
            .filter_map(resource_answer)
            .collect();
        Ok(json(
            StatusCode::OK,
            &UserAnswer {
                user: user.to_string(),
                resources,
            },
        ))
    })();
    finish(r)
}

/// Many updates in one durable commit.
#[utoipa::path(
    post,
    path = "/v1/statuses",
    tag = "v1",
    request_body(content = BulkRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Every valid item committed in one durable commit; invalid items changed nothing and are reported by index and code", body = BulkAnswer),
        (status = 400, description = "Not a valid envelope (`malformed_body`), more than 1,000 updates (`too_many_updates`), several credentials", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key", body = ErrorBody),
        (status = 405, description = "Method not allowed", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB (`body_too_large`)", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 503, description = "The store cannot commit: nothing changed", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn bulk(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let grant = state.keys.check(query.as_deref(), &headers)?;
        grant.has(Need::Write)?;
        require_json(&headers)?;
        let body = input::read_body(&headers, body, MAX_BULK_BYTES, state.body_timeout).await?;
        let request: BulkRequest = serde_json::from_slice(&body).map_err(malformed)?;
        if let Some(i) = request
            .updates
            .iter()
            .position(|raw| !raw.get().starts_with('{'))
        {
            return Err(ApiError::Malformed {
                format: "JSON",
                message: format!("updates[{i}] is not a JSON object"),
            });
        }
        if request.updates.len() > MAX_BULK_UPDATES {
            return Err(ApiError::TooManyUpdates(
                request.updates.len(),
                MAX_BULK_UPDATES,
            ));
        }
        let mut results = Vec::with_capacity(request.updates.len());
        let mut valid = Vec::new();
        // The uses of source names the valid items hold until they are applied.
        let mut names = Vec::new();
        let mut any_pending = None;
        for (index, item) in request.updates.into_iter().enumerate() {
            let checked = serde_json::from_str::<BulkItem>(item.get())
                .map_err(malformed)
                .and_then(|item| {
                    let user = match &item.user {
                        Some(Value::String(u)) => input::served_user(u, &state.domains)?,
                        _ => return Err(ApiError::Jid("(user missing or not a string)".into())),
                    };
                    grant.allows(Need::Write, &user)?;
                    let update = StatusUpdate {
                        presence: item.presence,
                        status: item.status,
                        resource: item.resource,
                        source: item.source,
                        priority: item.priority,
                        expires_in: item.expires_in,
                        expires_at: item.expires_at,
                    };
                    validate(&state, user, &update, &grant.name)
                });
            match checked {
                Ok(v) => {
                    let pending = state.pending(v.user.domain().as_str());
                    any_pending = any_pending.or(pending);
                    names.extend(v._name);
                    valid.push((v.user, v.resource, v.edit));
                    results.push(BulkResult {
                        index,
                        ok: true,
                        error: None,
                        delivery: Some(delivery_word(pending)),
                    });
                }
                Err(e) => {
                    state.metrics.update(Outcome::Rejected);
                    results.push(BulkResult {
                        index,
                        ok: false,
                        error: Some(ItemError {
                            code: e.code(),
                            message: e.to_string(),
                        }),
                        delivery: None,
                    })
                }
            }
        }
        if !valid.is_empty() {
            let n = valid.len();
            state
                .table
                .write_many(valid)
                .await
                .map_err(|e| ApiError::Storage(e.to_string()))?;
            for _ in 0..n {
                state.metrics.update(Outcome::Set);
            }
        }
        drop(names);
        Ok(mark_pending(
            json(StatusCode::OK, &BulkAnswer { results }),
            any_pending,
        ))
    }
    .await;
    count_refused_update(&state, &r);
    finish(r)
}
