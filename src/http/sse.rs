//! The event stream over HTTP (Server-Sent Events), shared by `/v1/events` and the status
//! page's live events: the filter from the query (`user`, `domain`) scoped to what the
//! credential may read, resumption after `Last-Event-ID`, the frames (`presence`, `reset`, the
//! keepalive comment), and the end of the stream when its credential's lifetime ends.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;

use super::error::ApiError;
use super::input;
use super::pipeline::{may_read, ROSTER_WAIT};
use super::state::AppState;
use crate::access::tokens::Lifetime;
use crate::access::{Grant, Need, Scope};
use crate::events::{Event, Filter, Subscription, MAX_FOLLOWED};

/// Interval of the keepalive comment of the event stream.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

fn parse_filter(state: &AppState, query: Option<&str>) -> Result<Filter, ApiError> {
    let mut f = Filter::default();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "user" => {
                f.users.insert(input::served_user(&v, &state.domains)?);
                if f.users.len() > MAX_FOLLOWED {
                    return Err(ApiError::TooManyUsers(format!(
                        "more than {MAX_FOLLOWED} users named with ?user=; an event stream \
                         follows at most {MAX_FOLLOWED} (use ?domain= for whole domains)"
                    )));
                }
            }
            "domain" => {
                let d = crate::base::domain::normalize_domain(&v).ok_or_else(|| {
                    ApiError::MalformedQuery(format!("domain {:?} is not a domain", &*v))
                })?;
                if !state.domains.contains(&d) {
                    return Err(ApiError::Domain(d));
                }
                f.domains.insert(d);
            }
            _ => {}
        }
    }
    Ok(f)
}

/// Restrict an event filter to what `grant` may read: every user and domain asked must be
/// readable (else 403); no filter means everything the grant may read (a domain grant: its
/// domains; a user's credential: its user and the contacts it may see, as of now).
async fn scope_filter(state: &AppState, grant: &Grant, f: &mut Filter) -> Result<(), ApiError> {
    for d in &f.domains {
        if !grant.covers_domain(d) {
            return Err(crate::access::Denied::Scope {
                name: grant.name.to_string(),
                user: format!("the users of {d}"),
            }
            .into());
        }
    }
    for u in &f.users {
        may_read(&state.rosters, grant, u).await?;
    }
    if !f.users.is_empty() || !f.domains.is_empty() {
        return Ok(());
    }
    match &grant.scope {
        Scope::Admin => {}
        Scope::Domains(ds) => f.domains = ds.iter().cloned().collect(),
        Scope::User(own) => {
            f.users.insert(own.clone());
            if let Ok(roster) = state.rosters.get(own, ROSTER_WAIT).await {
                f.users.extend(
                    roster
                        .iter()
                        .filter(|i| i.sees_contact())
                        .map(|i| i.jid.clone()),
                );
            }
            // Refused rather than cut short: a stream that silently missed some contacts
            // would look complete.
            if f.users.len() > MAX_FOLLOWED {
                return Err(ApiError::TooManyUsers(format!(
                    "{own} and the contacts {own} sees are {} users; an event stream follows \
                     at most {MAX_FOLLOWED}: name the users wanted with ?user=",
                    f.users.len()
                )));
            }
        }
    }
    Ok(())
}

/// The event's SSE frame, rendered once for all streams (its JSON has no line breaks).
fn sse(event: &Event) -> Bytes {
    event
        .sse_frame
        .get_or_init(|| {
            Bytes::from(format!(
                "id: {}\nevent: presence\ndata: {}\n\n",
                event.id, event.data
            ))
        })
        .clone()
}

/// A `reset` frame; with `id` (the one to resume after from now on) when the stream goes on.
fn reset(why: &str, id: Option<u64>) -> Bytes {
    let id = id.map(|id| format!("id: {id}\n")).unwrap_or_default();
    Bytes::from(format!(
        "{id}event: reset\ndata: {}\n\n",
        serde_json::json!({ "reason": why })
    ))
}

/// The comment sent after [`KEEPALIVE`] of silence.
const KEEPALIVE_FRAME: &[u8] = b":keepalive\n\n";

const LAGGED: &str = "this client fell too far behind and was disconnected; read the presence \
                      again with GET and reconnect";

/// What an event stream has still to send.
struct Subscriber {
    first: Option<Bytes>,
    backlog: std::vec::IntoIter<Arc<Event>>,
    sub: Subscription,
    /// The credential's: the stream ends with it.
    lifetime: Lifetime,
    done: bool,
}

fn stream(s: Subscriber) -> impl Stream<Item = Result<Bytes, Infallible>> {
    futures::stream::unfold(s, |mut s| async move {
        if s.done {
            return None;
        }
        // The credential was revoked or expired: the stream just ends (its client, reconnecting,
        // is refused).
        if s.lifetime.is_over() {
            return None;
        }
        if let Some(first) = s.first.take() {
            return Some((Ok(first), s));
        }
        if let Some(e) = s.backlog.next() {
            return Some((Ok(sse(&e)), s));
        }
        let next = tokio::select! {
            biased;
            () = s.lifetime.ended() => return None,
            next = s.sub.recv() => next,
            () = tokio::time::sleep(KEEPALIVE) => {
                return Some((Ok(Bytes::from_static(KEEPALIVE_FRAME)), s));
            }
        };
        // Checked before every event: after a lag the queue may go on with a gap.
        if s.sub.lagged() {
            s.done = true;
            return Some((Ok(reset(LAGGED, None)), s));
        }
        let e = next?;
        Some((Ok(sse(&e)), s))
    })
}

/// The event stream of `grant` (filtered by the query's `user`/`domain`, resumed after
/// `Last-Event-ID`): `/v1/events`, and the status page's live events. It ends when the
/// credential is revoked or expires.
pub async fn event_stream(
    state: &AppState,
    grant: &Arc<Grant>,
    session: Option<Lifetime>,
    q: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    {
        grant.has(Need::Read)?;
        // Taken before any wait: a revocation from now on ends the stream. The status page's
        // streams end with its session (sign-out, eviction, expiry).
        let lifetime = session.unwrap_or_else(|| state.keys.lifetime(grant));
        let mut filter = parse_filter(state, q)?;
        scope_filter(state, grant, &mut filter).await?;
        let last = match headers.get("last-event-id") {
            None => None,
            Some(v) => {
                let text = String::from_utf8_lossy(v.as_bytes()).trim().to_string();
                Some(
                    text.parse::<u64>()
                        .map_err(|_| ApiError::LastEventId(text.chars().take(64).collect()))?,
                )
            }
        };
        let mut sub = state.hub.subscribe(filter, last);
        // With the id to resume after from now on: a client that reconnects later is not told
        // again of the events it was told it missed.
        let first = sub.reset.then(|| {
            reset(
                "the events after Last-Event-ID are no longer buffered (too old, or \
                 extpresence restarted); read the presence again with GET",
                Some(sub.resume_id()),
            )
        });
        let s = Subscriber {
            first,
            backlog: std::mem::take(&mut sub.backlog).into_iter(),
            sub,
            lifetime,
            done: false,
        };
        let mut r = Body::from_stream(stream(s)).into_response();
        let h = r.headers_mut();
        h.insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("text/event-stream"),
        );
        h.insert(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-cache"),
        );
        Ok(r)
    }
}
