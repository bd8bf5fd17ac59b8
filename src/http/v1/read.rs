//! The read side of `/v1`: users' aggregated presence, their contacts, and the event stream.
//!
//! - `GET /v1/users/{jid}/presence` — the presence an XMPP client would show, with every real and
//!   synthetic resource ([`UserPresence`]);
//! - `POST /v1/presence/query` — the same for up to 1,000 users, each named once, in an answer
//!   of at most 8 MiB;
//! - `GET /v1/users/{jid}/contacts` — the user's roster, with each contact's presence as the user
//!   sees it (subscription `to` or `both`);
//! - `GET /v1/events` — Server-Sent Events: one `presence` event per change of a served user's
//!   presence, filtered by `?user=` / `?domain=` (at most [`MAX_FOLLOWED`](crate::events::MAX_FOLLOWED) users), resumable
//!   with `Last-Event-ID` (`reset` when not), a keepalive comment every 15 s; it ends when its
//!   token is revoked or expires.
//!
//! Like the rest of `/v1` it only translates: the model is [`crate::observe`] (the aggregation),
//! [`crate::events`] (numbering, buffering, fan-out) and [`crate::observe::Rosters`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use jid::BareJid;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::common::{finish, json, malformed, user_of, MAX_BULK_BYTES};
use crate::access::Need;
use crate::base::clock::now_ms;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::input;
use crate::http::pipeline::{may_read, others, require_json, ROSTER_WAIT};
use crate::http::sse::event_stream;
use crate::http::state::AppState;
use crate::observe::{self, ResourcePresence, RosterError, UserPresence};

/// Most users in one presence query.
pub const MAX_QUERY_USERS: usize = 1000;
/// Largest answer to a presence query (8 MiB); beyond it the query is refused with
/// `answer_too_large` (each user's presence is rendered into the answer in turn, so no more than
/// this is ever built).
pub const MAX_QUERY_ANSWER_BYTES: usize = 8 << 20;

/// The read routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/v1/users/{jid}/presence",
            MethodRouter::new()
                .get(get_presence)
                .fallback(others("GET")),
        )
        .route(
            "/v1/users/{jid}/contacts",
            MethodRouter::new()
                .get(get_contacts)
                .fallback(others("GET")),
        )
        .route("/v1/presence/query", post(query).fallback(others("POST")))
        .route("/v1/events", get(events).fallback(others("GET")))
}

/// A user's presence: what an XMPP client would show, and every real and synthetic resource.
#[utoipa::path(
    get,
    path = "/v1/users/{jid}/presence",
    tag = "v1",
    params(("jid" = String, Path, description = "The user, `user@domain` of a served domain", pattern = "^[a-z0-9._-]{1,64}@[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?){0,4}$")),
    responses(
        (status = 200, description = "The aggregated presence (`offline` with no resources when nothing is known)", body = UserPresence),
        (status = 400, description = "The JID is wrong (`invalid_jid`, `invalid_path`) or several credentials were given", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key or a domain not served", body = ErrorBody),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 405, description = "Method not allowed", body = ErrorBody),
        (status = 503, description = "A user's token reading a contact, and the server did not give the user's roster (`roster_unavailable`)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn get_presence(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let grant = state.keys.check(q.as_deref(), &headers)?;
        let user = user_of(&state, &path)?;
        may_read(&state.rosters, &grant, &user).await?;
        Ok(json(StatusCode::OK, &presence_of(&state, &user)))
    }
    .await;
    finish(r)
}

fn presence_of(state: &AppState, user: &BareJid) -> UserPresence {
    observe::presence(&state.table, &state.observed, user, now_ms())
}

/// A user JID of a served domain (documentation type).
#[derive(ToSchema)]
#[schema(value_type = String, pattern = "^[a-z0-9._-]{1,64}@[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?){0,4}$")]
#[allow(dead_code)]
pub struct UserJid(String);

/// The body of a presence query.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceQuery {
    /// Users of served domains, at most 1,000, each once.
    #[schema(value_type = Vec<UserJid>, max_items = 1000)]
    users: Vec<String>,
}

/// The answer to a presence query (the document's type: the answer is rendered user by user, to
/// stop at [`MAX_QUERY_ANSWER_BYTES`]).
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct PresenceAnswer {
    /// One presence per user asked, in order.
    presence: Vec<UserPresence>,
}

/// The presence of many users at once.
#[utoipa::path(
    post,
    path = "/v1/presence/query",
    tag = "v1",
    request_body(content = PresenceQuery, content_type = "application/json"),
    responses(
        (status = 200, description = "One presence per user, in the order asked", body = PresenceAnswer),
        (status = 400, description = "Not a valid body (`malformed_body`), a wrong JID (`invalid_jid`), more than 1,000 users (`too_many_updates`), a user named twice (`duplicate_user`), an answer that would be over 8 MiB (`answer_too_large`: ask for fewer users at a time)", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key or a domain not served", body = ErrorBody),
        (status = 405, description = "Method not allowed", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB (`body_too_large`)", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 503, description = "A user's token reading a contact, and the server did not give the user's roster (`roster_unavailable`)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn query(
    State(state): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let grant = state.keys.check(q.as_deref(), &headers)?;
        grant.has(Need::Read)?;
        require_json(&headers)?;
        let body = input::read_body(&headers, body, MAX_BULK_BYTES, state.body_timeout).await?;
        let asked: PresenceQuery = serde_json::from_slice(&body).map_err(malformed)?;
        if asked.users.len() > MAX_QUERY_USERS {
            return Err(ApiError::TooManyUpdates(asked.users.len(), MAX_QUERY_USERS));
        }
        let users = asked
            .users
            .iter()
            .map(|u| input::served_user(u, &state.domains))
            .collect::<Result<Vec<_>, _>>()?;
        // Each user once (as the server knows them: after normalisation).
        let mut seen = std::collections::HashMap::with_capacity(users.len());
        for (i, u) in users.iter().enumerate() {
            if let Some(first) = seen.insert(u, i) {
                return Err(ApiError::DuplicateUser(i, first, u.to_string()));
            }
        }
        for u in &users {
            may_read(&state.rosters, &grant, u).await?;
        }
        let mut out = Vec::with_capacity(64 * users.len());
        out.extend_from_slice(b"{\"presence\":[");
        for (i, u) in users.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, &presence_of(&state, u)).expect("answers serialise");
            if out.len() + 2 > MAX_QUERY_ANSWER_BYTES {
                return Err(ApiError::AnswerTooLarge(MAX_QUERY_ANSWER_BYTES, i));
            }
        }
        out.extend_from_slice(b"]}");
        let mut r = (StatusCode::OK, out).into_response();
        r.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        );
        Ok(r)
    }
    .await;
    finish(r)
}

/// A contact's presence as the user sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContactPresence {
    /// The aggregated presence word (`offline` when nothing is available).
    #[schema(value_type = String, example = "online")]
    presence: &'static str,
    /// The status text of the resource shown.
    status: Option<String>,
    /// When the newest of its resources' presence arrived (RFC 3339); absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    received: Option<String>,
    /// False when the server may not have told us everything.
    complete: bool,
    /// Every available resource.
    resources: Vec<ResourcePresence>,
}

/// One roster item.
#[derive(Debug, Serialize, ToSchema)]
pub struct Contact {
    /// The contact.
    jid: String,
    /// `none`, `to`, `from` or `both`.
    subscription: &'static str,
    /// The name the user gave the contact.
    name: Option<String>,
    /// The user's groups of the contact.
    groups: Vec<String>,
    /// The contact's presence as the user sees it; only with subscription `to` or `both`.
    #[serde(skip_serializing_if = "Option::is_none")]
    presence: Option<ContactPresence>,
}

/// A user's contacts.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContactsAnswer {
    /// The user.
    user: String,
    /// The roster, in the server's order.
    contacts: Vec<Contact>,
}

/// A user's roster, with the presence of the contacts the user may see.
#[utoipa::path(
    get,
    path = "/v1/users/{jid}/contacts",
    tag = "v1",
    params(("jid" = String, Path, description = "The user, `user@domain` of a served domain", pattern = "^[a-z0-9._-]{1,64}@[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?){0,4}$")),
    responses(
        (status = 200, description = "The roster (read from the server at most once per second per user)", body = ContactsAnswer),
        (status = 400, description = "The JID is wrong (`invalid_jid`, `invalid_path`) or several credentials were given", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key or a domain not served", body = ErrorBody),
        (status = 405, description = "Method not allowed", body = ErrorBody),
        (status = 501, description = "The backend cannot read rosters (`not_supported`: Tigase)", body = ErrorBody),
        (status = 503, description = "The server did not give the roster (`roster_unavailable`: link down, no privilege, no answer in 5 s)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn get_contacts(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let grant = state.keys.check(q.as_deref(), &headers)?;
        let user = user_of(&state, &path)?;
        grant.allows(Need::Read, &user)?;
        let items = state
            .rosters
            .get(&user, ROSTER_WAIT)
            .await
            .map_err(|e| match e {
                RosterError::Unsupported => ApiError::Unsupported(e.to_string()),
                RosterError::Unavailable(_) => ApiError::Roster(e.to_string()),
            })?;
        let now = now_ms();
        let contacts = items
            .iter()
            .map(|item| Contact {
                jid: item.jid.to_string(),
                subscription: item.subscription,
                name: item.name.clone(),
                groups: item.groups.clone(),
                presence: item.sees_contact().then(|| {
                    let p = observe::presence(&state.table, &state.observed, &item.jid, now);
                    ContactPresence {
                        presence: p.presence,
                        status: p.status.clone(),
                        received: p.received().map(crate::base::clock::rfc3339),
                        complete: p.complete,
                        resources: p.resources,
                    }
                }),
            })
            .collect();
        Ok(json(
            StatusCode::OK,
            &ContactsAnswer {
                user: user.to_string(),
                contacts,
            },
        ))
    }
    .await;
    finish(r)
}

/// Server-Sent Events: one `presence` event per change of a served user's presence.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "v1",
    params(
        ("user" = Option<Vec<String>>, Query, description = "Only these users (repeatable)"),
        ("domain" = Option<Vec<String>>, Query, description = "Only users of these served domains (repeatable)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event: the missed events first, or `event: reset` when they are no longer buffered"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `event: presence` with `id:` and `data:` the presence object plus `at` and `cause` (`session`, `status`, `expiry`); `event: reset` when events were lost (read again with GET); a comment every 15 s. The stream ends when its token is revoked or expires", content_type = "text/event-stream", body = String),
        (status = 400, description = "A wrong filter (`invalid_jid`, `malformed_query`), more than 10,000 users followed (`too_many_users`: `?user=`, or a user token's contacts) or a wrong `Last-Event-ID` (`invalid_last_event_id`)", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Wrong API key or a domain not served", body = ErrorBody),
        (status = 405, description = "Method not allowed", body = ErrorBody),
        (status = 503, description = "A user's token reading a contact, and the server did not give the user's roster (`roster_unavailable`)", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn events(
    State(state): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let grant = state.keys.check(q.as_deref(), &headers)?;
        event_stream(&state, &grant, None, q.as_deref(), &headers).await
    }
    .await;
    finish(r)
}
