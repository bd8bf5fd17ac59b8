//! What every request of every dialect goes through, recorded in one place.
//!
//! One layer ([`RecordLayer`]) wraps every route and the 404 fallback. It names the request's
//! [`Dialect`] from the route that matched, opens the request's span (dialect, method, route,
//! path, and the user a path names), and when the answer is ready records, for every request:
//! - `extpresence_http_requests_total{dialect,status}` and the latency histogram
//!   `extpresence_http_request_duration_seconds{dialect}`;
//! - for a refused (4xx) or failed (5xx) request whose answer carries a [`Refusal`] (every
//!   dialect's error rendering attaches one: [`ApiError`], Matrix's
//!   `{"errcode"}`, the Agent API's plain text, the status page's sign-in form),
//!   `extpresence_http_refused_total{dialect,code}` and a log line, rate-limited by
//!   [`RequestLog`] so a flood cannot flood the journal.
//!
//! The steps before a dialect's translation are one function each, which every dialect calls in
//! its documented order (the order decides which refusal wins, part of each dialect's contract):
//! the credential with its ambiguity rule and rate limit ([`ApiKeys::check`](super::auth::ApiKeys::check)),
//! the served user ([`input::served_user`](super::input::served_user)), the grant
//! ([`Grant::allows`](crate::access::Grant::allows), or [`may_read`] for reads, which a user's
//! credential may also do of its contacts), the content type
//! ([`Format::from_media_type`](super::error::Format::from_media_type), [`require_json`]) and the
//! body limit ([`input::read_body`](super::input::read_body)).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request};
use axum::http::{header, HeaderMap, Method, Uri};
use axum::response::Response;
use futures::FutureExt;
use jid::BareJid;
use tower_layer::Layer;
use tower_service::Service;
use tracing::debug;

use super::error::{ApiError, Format, Refusal};
use super::log::{Kind, Line, RequestLog};
use crate::access::{Grant, Need};
use crate::base::escape::Escaped;
use crate::metrics::Metrics;
use crate::observe::Rosters;

/// Which API a request spoke: the `dialect` label of every request metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `/rest/user/…` (Tigase's UserStatusEndpoint).
    Tigase,
    /// `/v1/…`: writes, reads, events, tokens, the OpenAPI document.
    V1,
    /// `/_matrix/…`.
    Matrix,
    /// `/Agent/…` (Waher's Agent API calls).
    Waher,
    /// The status page: `/`, `/login`, `/logout`, `/ui/…`.
    Ui,
    /// `/healthz`, `/readyz`, `/metrics`.
    Ops,
    /// No route matched (404).
    None,
}

impl Dialect {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Tigase => "tigase",
            Dialect::V1 => "v1",
            Dialect::Matrix => "matrix",
            Dialect::Waher => "waher",
            Dialect::Ui => "ui",
            Dialect::Ops => "ops",
            Dialect::None => "none",
        }
    }

    /// The dialect of a matched route (`None` when no route matched).
    pub fn of(route: Option<&str>) -> Dialect {
        let Some(route) = route else {
            return Dialect::None;
        };
        if route.starts_with("/rest/") {
            Dialect::Tigase
        } else if route.starts_with("/v1/") {
            Dialect::V1
        } else if route.starts_with("/_matrix") {
            Dialect::Matrix
        } else if route.starts_with("/Agent/") {
            Dialect::Waher
        } else if matches!(route, "/healthz" | "/readyz" | "/metrics") {
            Dialect::Ops
        } else {
            Dialect::Ui
        }
    }
}

/// What [`RecordLayer`] needs: where to count and where to log.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// The counters.
    pub metrics: Arc<Metrics>,
    /// The rate limit on refusal log lines.
    pub requests: Arc<RequestLog>,
}

/// The layer that records every request (see the module doc): on every route and the fallback
/// (axum applies a router's layer to each route after routing, so the route that matched is
/// known). A plain tower layer: it calls the route directly and records when the answer is
/// ready, without boxing or cloning per request (benchmark P3).
#[derive(Debug, Clone)]
pub struct RecordLayer(pub Recorder);

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Record<S> {
        Record {
            inner,
            rec: Arc::new(self.0.clone()),
        }
    }
}

/// A route with its request recorded ([`RecordLayer`]).
#[derive(Debug, Clone)]
pub struct Record<S> {
    inner: S,
    rec: Arc<Recorder>,
}

/// What is recorded once the answer is ready.
struct Pending {
    started: Instant,
    dialect: Dialect,
    method: Method,
    /// The path only is logged (the query may hold a credential); a `Uri` clone shares its
    /// bytes.
    uri: Uri,
    rec: Arc<Recorder>,
}

impl<S> Service<Request> for Record<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = RecordFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let started = Instant::now();
        let route = req.extensions().get::<MatchedPath>();
        let dialect = Dialect::of(route.map(MatchedPath::as_str));
        // At DEBUG: at INFO its fields were formatted for every request, needed or not (benchmark
        // P3); refusals and failures are logged with the path when answered.
        let span = tracing::debug_span!(
            "request",
            dialect = dialect.name(),
            method = %req.method(),
            route = route.map_or("", MatchedPath::as_str),
            path = %Escaped(req.uri().path()),
            user = tracing::field::Empty,
        );
        // The user the path names (`{user}`, `{jid}`), decoded, only when the span is recorded.
        let req = if span.is_disabled() {
            req
        } else {
            let (mut parts, body) = req.into_parts();
            // Reading the path's parameters never waits.
            if let Some(Ok(params)) =
                RawPathParams::from_request_parts(&mut parts, &()).now_or_never()
            {
                if let Some((_, user)) = params.iter().find(|(k, _)| matches!(*k, "user" | "jid")) {
                    span.record("user", tracing::field::display(Escaped(user)));
                }
            }
            Request::from_parts(parts, body)
        };
        let pending = Pending {
            started,
            dialect,
            method: req.method().clone(),
            uri: req.uri().clone(),
            rec: self.rec.clone(),
        };
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        RecordFuture {
            inner,
            span,
            pending: Some(pending),
        }
    }
}

pin_project_lite::pin_project! {
    /// A route's answer, recorded when ready ([`Record`]).
    pub struct RecordFuture<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
        pending: Option<Pending>,
    }
}

impl<F> Future for RecordFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Inside the request's span, so what the route logs (and a refusal's line) carries its
        // fields.
        let _entered = this.span.enter();
        let Ok(resp) = ready!(this.inner.poll(cx));
        if let Some(p) = this.pending.take() {
            p.record(&resp);
        }
        Poll::Ready(Ok(resp))
    }
}

impl Pending {
    /// Count the answer, its latency and its refusal, and log the refusal (rate-limited).
    fn record(self, resp: &Response) {
        let elapsed = self.started.elapsed();
        let status = resp.status();
        let dialect = self.dialect.name();
        self.rec.metrics.request(dialect, status.as_u16(), elapsed);
        if let Some(refusal) = resp.extensions().get::<Refusal>() {
            self.rec.metrics.refused(dialect, refusal.code);
            let kind = if status.is_server_error() {
                Kind::Failed
            } else {
                Kind::Refused
            };
            self.rec.requests.request(&Line {
                kind,
                status: status.as_u16(),
                dialect,
                method: &self.method,
                path: self.uri.path(),
                code: refusal.code,
                error: &refusal.message,
            });
        }
        debug!(status = status.as_u16(), ?elapsed, "request done");
    }
}

/// Longest wait for a roster from the server.
pub const ROSTER_WAIT: Duration = Duration::from_secs(5);

/// Whether `grant` may read `user`: directly, or (a user's own credential) because `user` is in
/// its user's roster with subscription `to` or `both`.
pub async fn may_read(rosters: &Rosters, grant: &Grant, user: &BareJid) -> Result<(), ApiError> {
    let Err(denied) = grant.allows(Need::Read, user) else {
        return Ok(());
    };
    let Some(own) = grant.reads_through_roster(user) else {
        return Err(denied.into());
    };
    let roster = rosters
        .get(own, ROSTER_WAIT)
        .await
        .map_err(|e| ApiError::Roster(e.to_string()))?;
    if roster.iter().any(|i| &i.jid == user && i.sees_contact()) {
        Ok(())
    } else {
        Err(denied.into())
    }
}

/// The handler of a route's other methods (`.fallback(others("GET"))`): a 405 naming the method
/// given and, in the body and the `Allow` header, the methods the path serves (every route of
/// every dialect answering [`ApiError`] bodies, the status page and the operations endpoints).
pub fn others(
    allow: &'static str,
) -> impl Fn(Method) -> std::future::Ready<Response> + Clone + Send + Sync + 'static {
    move |m| std::future::ready(ApiError::Method(m.to_string(), allow).into_response(Format::Json))
}

/// The format to answer in when the request's own Content-Type is not usable: Accept, else JSON.
pub fn reply_format(headers: &HeaderMap) -> Format {
    let get = |h| {
        headers
            .get(h)
            .and_then(|v: &axum::http::HeaderValue| v.to_str().ok())
    };
    get(header::CONTENT_TYPE)
        .and_then(Format::from_media_type)
        .or_else(|| get(header::ACCEPT).and_then(Format::from_media_type))
        .unwrap_or(Format::Json)
}

/// The content-type step of a JSON-only route: `application/json` (or `+json`), else 415.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
        .unwrap_or_default();
    match Format::from_media_type(&ct) {
        Some(Format::Json) => Ok(()),
        _ => Err(ApiError::MediaType(ct.chars().take(128).collect())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialects_of_routes() {
        for (route, d) in [
            (Some("/rest/user/{user}/status"), Dialect::Tigase),
            (Some("/v1/users/{jid}/status"), Dialect::V1),
            (Some("/v1/tokens/{id}"), Dialect::V1),
            (
                Some("/_matrix/client/{version}/presence/{user}/status"),
                Dialect::Matrix,
            ),
            (Some("/_matrix/{*rest}"), Dialect::Matrix),
            (Some("/Agent/{*call}"), Dialect::Waher),
            (Some("/"), Dialect::Ui),
            (Some("/login"), Dialect::Ui),
            (Some("/ui/events"), Dialect::Ui),
            (Some("/metrics"), Dialect::Ops),
            (None, Dialect::None),
        ] {
            assert_eq!(Dialect::of(route), d, "{route:?}");
        }
    }
}
