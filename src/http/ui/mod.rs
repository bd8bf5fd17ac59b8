//! The live status page: `GET /` (a login form, then the page), `POST /login` and `/logout`, its
//! script and style (`/ui/app.js`, `/ui/app.css`, served from the binary: no external assets),
//! what it shows (`/ui/status.json`: health — the conditions of `/readyz` with their reason, fix
//! and next retry ([`AppState::readiness`]), the link, privileges, version and uptime; held
//! statuses with every source, the winning one marked; observed sessions; both searchable, with
//! counts that follow the search; webhook endpoints with their backlog; key counters with their
//! rates per minute and the updates/s of the last two minutes ([`sample_rates`]); the last events
//! of the resume buffer), one user (`/ui/user.json?jid=`: resources with every source, real
//! sessions, contacts from the roster — a failure to read it is told, not fatal — and recent
//! events) and its live events (`/ui/events`, the event stream of the signed-in key; `?after=`
//! resumes after the last event `status.json` listed, as `Last-Event-ID` does).
//!
//! Signing in takes an admin key or a domain key with read access (never a user's token): the key
//! is posted once, and a random session id goes into an `HttpOnly; SameSite=Strict` cookie (kept
//! hashed here, 12 h; `Secure` when the page is served over HTTPS: `[ui] public_origin` is https,
//! or a trusted proxy says `X-Forwarded-Proto: https`); no key ever travels in a URL, and a sign-in
//! or sign-out posted from another origin is refused. A credential holds at most
//! [`MAX_SESSIONS_PER_CREDENTIAL`] sessions (its oldest goes first, never another credential's).
//! Wrong keys count toward the failed-authentication limit of the client's address (`auth.rs`);
//! every refused sign-in is counted (`extpresence_http_refused_total{dialect="ui",code}`) and
//! logged, rate-limited, like every refusal (`pipeline.rs`).
//! With `[ui] public_origin` set, a request to the page naming another host is refused (421).
//!
//! A domain key sees its own domains only: held statuses, observed sessions, events, users, the
//! privilege conditions of its domains, and the webhook endpoints whose filter lies within its
//! domains; the global counters, rates and sparkline are the admin's.
//!
//! The page only reads; every answer has a `Content-Security-Policy` of `default-src 'self'` (no
//! inline script or style), and the script puts server text into the page as text only (times in
//! the browser's local time, the UTC time on hover). It updates the held statuses from the events
//! themselves, and reads `status.json` again at most once per 5 s (after events, and every 15 s
//! for what has no event: health, webhook backlogs, rates).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::error::{Format, Refusal};
use super::input;
use super::pipeline::{may_read, others, ROSTER_WAIT};
use super::state::AppState;
use crate::access::tokens::Lifetime;
use crate::access::{Grant, Need, Scope};
use crate::base::clock::now_ms;
use crate::base::clock::rfc3339;
use crate::events::Filter;
use crate::metrics::{Metrics, Outcome};
use crate::model::Word;
use crate::observe::{self, Origin};
use jid::BareJid;
use tokio_util::sync::CancellationToken;

const COOKIE: &str = "extpresence_ui";
/// A session lasts this long.
const SESSION_MS: u64 = 12 * 3600 * 1000;
/// Most sessions held at once (beyond it, the oldest of the credential holding most goes first).
const MAX_SESSIONS: usize = 1000;
/// Most sessions one credential holds at once (beyond it, its oldest goes first).
pub const MAX_SESSIONS_PER_CREDENTIAL: usize = 16;
/// Most held statuses listed at once.
const MAX_LISTED: usize = 100;
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

const LOGIN_HTML: &str = include_str!("login.html");
const PAGE_HTML: &str = include_str!("page.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// Sessions: the SHA-256 of the cookie value → the grant and when it ends (ms).
type Sessions = HashMap<[u8; 32], Session>;

/// A signed-in browser: its key's grant, until when, and what ends its open event streams.
#[derive(Debug)]
struct Session {
    grant: Arc<Grant>,
    /// Ends (ms since the Unix epoch).
    until: u64,
    /// The order of opening: several sessions opened within one millisecond have the same
    /// `until`, and the oldest must still go first.
    opened: u64,
    /// Cancelled when the session is closed (sign-out, or evicted for a newer one); its
    /// `expires_at` is `until`. Open `/ui/events` streams end with it.
    lifetime: Lifetime,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.lifetime.revoked.cancel();
    }
}

/// `[ui] public_origin`: the scheme, host and port the page is reached at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicOrigin {
    /// As a browser sends it in `Origin` (`https://presence.example.com`).
    origin: String,
    /// `host[:port]` as in a `Host` header (the port only when not the scheme's default).
    host: String,
    /// The same with the scheme's default port written out.
    host_with_port: String,
    /// Served over HTTPS (through a proxy): the cookie is `Secure`.
    https: bool,
}

/// Why `[ui] public_origin` is refused ([`PublicOrigin::parse`]).
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// Not a URL.
    #[error("{0:?} is not a URL ({1}); e.g. \"https://presence.example.com\"")]
    NotUrl(String, String),
    /// A URL, but not `http(s)://host[:port]`.
    #[error("{0:?} is not an origin: only http(s)://host[:port], no path; e.g. \"https://presence.example.com\"")]
    NotOrigin(String),
}

impl PublicOrigin {
    /// Parse `scheme://host[:port]` (http or https; nothing else).
    pub fn parse(text: &str) -> Result<PublicOrigin, OriginError> {
        let u = reqwest::Url::parse(text.trim())
            .map_err(|e| OriginError::NotUrl(text.to_string(), e.to_string()))?;
        let host = u
            .host_str()
            .filter(|_| matches!(u.scheme(), "http" | "https"));
        let (Some(host), true) = (
            host,
            u.username().is_empty()
                && u.password().is_none()
                && u.path() == "/"
                && u.query().is_none()
                && u.fragment().is_none(),
        ) else {
            return Err(OriginError::NotOrigin(text.to_string()));
        };
        let default = u.port_or_known_default().unwrap_or(80);
        Ok(PublicOrigin {
            origin: u.origin().ascii_serialization(),
            host: match u.port() {
                Some(p) => format!("{host}:{p}"),
                None => host.to_string(),
            },
            host_with_port: format!("{host}:{default}"),
            https: u.scheme() == "https",
        })
    }

    /// Whether a `Host` header value names this origin's host.
    fn names(&self, host: &str) -> bool {
        host.eq_ignore_ascii_case(&self.host) || host.eq_ignore_ascii_case(&self.host_with_port)
    }
}

/// What the page shows beside the model, and its sessions.
#[derive(Debug, Default)]
pub struct UiState {
    /// The counters sampled once per second ([`sample_rates`]): rates per minute and the
    /// updates/s sparkline.
    rates: Rates,
    /// `[ui] public_origin`.
    public_origin: Option<PublicOrigin>,
    /// Each webhook endpoint's name and filter: a domain key sees those within its domains.
    webhooks: Vec<(String, Filter)>,
    sessions: Mutex<Sessions>,
}

impl UiState {
    /// No session yet, no setting.
    pub fn new() -> UiState {
        UiState::default()
    }

    /// With `[ui] public_origin` and the webhook endpoints' filters.
    pub fn with_settings(
        mut self,
        public_origin: Option<PublicOrigin>,
        webhooks: &[crate::webhooks::WebhookSettings],
    ) -> UiState {
        self.public_origin = public_origin;
        self.webhooks = webhooks
            .iter()
            .map(|w| (w.name.clone(), w.filter.clone()))
            .collect();
        self
    }

    /// The host the request names: a trusted proxy's `X-Forwarded-Host`, else `Host`.
    fn host(headers: &HeaderMap) -> String {
        super::auth::client()
            .and_then(|c| c.forwarded_host)
            .or_else(|| {
                headers
                    .get(header::HOST)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            })
            .unwrap_or_default()
    }

    /// 421 when a public origin is set and the request names another host.
    fn misdirected(&self, headers: &HeaderMap) -> Option<Response> {
        let o = self.public_origin.as_ref()?;
        if o.names(&Self::host(headers)) {
            return None;
        }
        let mut r = (
            StatusCode::MISDIRECTED_REQUEST,
            format!("The status page is served at {}.\n", o.origin),
        )
            .into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Some(Refusal::attach(
            secure(r),
            "misdirected",
            format!("the status page is served at {}", o.origin),
        ))
    }

    /// Whether a form post comes from this page: an `Origin` that is present must be the public
    /// origin (when set), else name the request's host.
    fn same_origin(&self, headers: &HeaderMap) -> bool {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
            return true; // not sent by the browser (same-origin GET-like navigation, or not a browser)
        };
        if let Some(o) = &self.public_origin {
            return origin.eq_ignore_ascii_case(&o.origin);
        }
        let host = Self::host(headers);
        let authority = origin.split_once("://").map_or("", |(_, a)| a);
        !host.is_empty() && authority.eq_ignore_ascii_case(&host)
    }

    /// Whether the page is served over HTTPS (so the cookie gets `Secure`).
    fn https(&self) -> bool {
        self.public_origin.as_ref().is_some_and(|o| o.https)
            || super::auth::client().is_some_and(|c| c.https)
    }

    /// Whether webhook endpoint `filter` only ever passes users `grant` may read.
    fn within(grant: &Grant, filter: &Filter) -> bool {
        match &grant.scope {
            Scope::Admin => true,
            Scope::Domains(ds) => {
                !(filter.users.is_empty() && filter.domains.is_empty())
                    && filter.domains.iter().all(|d| ds.contains(d))
                    && filter
                        .users
                        .iter()
                        .all(|u| ds.contains(u.domain().as_str()))
            }
            Scope::User(_) => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session for `grant`: the cookie value.
    fn open(&self, grant: Arc<Grant>) -> String {
        let id: [u8; 32] = rand::random();
        let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id);
        let now = now_ms();
        let mut map = self.lock();
        map.retain(|_, session| session.until > now);
        // The credential's own oldest session makes room; when all are full, the oldest of the
        // credential holding most.
        let mut per: HashMap<&str, usize> = HashMap::new();
        for session in map.values() {
            *per.entry(&*session.grant.name).or_default() += 1;
        }
        let evict = if per.get(&*grant.name).copied().unwrap_or(0) >= MAX_SESSIONS_PER_CREDENTIAL {
            Some(grant.name.clone())
        } else if map.len() >= MAX_SESSIONS {
            per.iter()
                .max_by_key(|(_, n)| **n)
                .map(|(name, _)| Arc::<str>::from(*name))
        } else {
            None
        };
        if let Some(name) = evict {
            if let Some(oldest) = map
                .iter()
                .filter(|(_, session)| session.grant.name == name)
                .min_by_key(|(_, session)| (session.until, session.opened))
                .map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        let until = now + SESSION_MS;
        let opened = map.values().map(|s| s.opened + 1).max().unwrap_or(0);
        map.insert(
            Sha256::digest(value.as_bytes()).into(),
            Session {
                grant,
                until,
                opened,
                lifetime: Lifetime {
                    revoked: Default::default(),
                    expires_at: Some(until),
                },
            },
        );
        value
    }

    /// The grant of the request's session cookie, if it is live.
    fn grant(&self, headers: &HeaderMap) -> Option<Arc<Grant>> {
        self.session(headers).map(|(grant, _)| grant)
    }

    /// The grant of the request's session cookie, if it is live, and the session's lifetime
    /// (what ends the streams opened with it: sign-out, eviction, expiry).
    fn session(&self, headers: &HeaderMap) -> Option<(Arc<Grant>, Lifetime)> {
        let value = cookie(headers)?;
        let key: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        let map = self.lock();
        let session = map.get(&key)?;
        (session.until > now_ms()).then(|| (session.grant.clone(), session.lifetime.clone()))
    }

    fn close(&self, headers: &HeaderMap) {
        if let Some(value) = cookie(headers) {
            let key: [u8; 32] = Sha256::digest(value.as_bytes()).into();
            self.lock().remove(&key);
        }
    }
}

/// A counter's name and how to read it.
type Counter = (&'static str, fn(&AppState) -> u64);

/// The counters over every domain that only grow (admin keys see them, with their rates).
const COUNTERS: [Counter; 8] = [
    ("updates set", |s| s.metrics.updates(Outcome::Set)),
    ("updates cleared", |s| s.metrics.updates(Outcome::Cleared)),
    ("updates refused", |s| s.metrics.updates(Outcome::Rejected)),
    ("updates failed", |s| s.metrics.updates(Outcome::Failed)),
    ("stanzas sent", |s| {
        s.metrics.stanzas_sent.load(Ordering::Relaxed)
    }),
    ("stanzas received", |s| {
        s.metrics.stanzas_received.load(Ordering::Relaxed)
    }),
    ("link reconnects", |s| {
        s.metrics.reconnects.load(Ordering::Relaxed)
    }),
    ("events published", |s| s.hub.published()),
];
/// The first four of [`COUNTERS`] are the updates (the sparkline's series).
const UPDATES: usize = 4;
/// How often the counters are sampled.
pub const RATE_SAMPLE: Duration = Duration::from_secs(1);
/// Samples kept: two minutes of the sparkline, one of them for the rates per minute.
const SAMPLES: usize = 121;

/// The counters as sampled: (when, in ms; the values of [`COUNTERS`]), oldest first.
#[derive(Debug, Default)]
struct Rates {
    samples: Mutex<VecDeque<(u64, [u64; COUNTERS.len()])>>,
}

impl Rates {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, [u64; COUNTERS.len()])>> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, at: u64, values: [u64; COUNTERS.len()]) {
        let mut s = self.lock();
        s.push_back((at, values));
        while s.len() > SAMPLES {
            s.pop_front();
        }
    }

    /// Each counter's increase per minute over the last minute (or what was sampled of it,
    /// at least 1 s); `None` before two samples.
    fn per_minute(&self) -> Option<[f64; COUNTERS.len()]> {
        let s = self.lock();
        let &(last_at, last) = s.back()?;
        let &(first_at, first) = s
            .iter()
            .find(|(at, _)| last_at.saturating_sub(*at) <= 60_000)?;
        let ms = last_at.saturating_sub(first_at);
        (ms >= 1000).then(|| {
            std::array::from_fn(|i| last[i].saturating_sub(first[i]) as f64 * 60_000.0 / ms as f64)
        })
    }

    /// Updates per second between consecutive samples, oldest first.
    fn updates_per_sec(&self) -> Vec<f64> {
        let s = self.lock();
        s.iter()
            .zip(s.iter().skip(1))
            .map(|((a_at, a), (b_at, b))| {
                let n: u64 = (0..UPDATES).map(|i| b[i].saturating_sub(a[i])).sum();
                let secs = (b_at.saturating_sub(*a_at)).max(1) as f64 / 1000.0;
                (n as f64 / secs * 10.0).round() / 10.0
            })
            .collect()
    }
}

/// Sample the counters every [`RATE_SAMPLE`] until `shutdown`.
pub async fn sample_rates(ui: Arc<UiState>, state: Arc<AppState>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(RATE_SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while shutdown.run_until_cancelled(tick.tick()).await.is_some() {
        ui.rates
            .record(now_ms(), COUNTERS.map(|(_, read)| read(&state)));
    }
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The routes of the page, with its state.
pub fn routes(ui: Arc<UiState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(index).fallback(others("GET")))
        .route("/login", post(login).fallback(others("POST")))
        .route("/logout", post(logout).fallback(others("POST")))
        .route(
            "/ui/app.js",
            get(
                |Extension(ui): Extension<Arc<UiState>>, h: HeaderMap| async move {
                    ui.misdirected(&h)
                        .unwrap_or_else(|| asset(APP_JS, "text/javascript; charset=utf-8"))
                },
            ),
        )
        .route(
            "/ui/app.css",
            get(
                |Extension(ui): Extension<Arc<UiState>>, h: HeaderMap| async move {
                    ui.misdirected(&h)
                        .unwrap_or_else(|| asset(APP_CSS, "text/css; charset=utf-8"))
                },
            ),
        )
        .route("/ui/status.json", get(status_json))
        .route("/ui/user.json", get(user_json))
        .route("/ui/events", get(events))
        .layer(Extension(ui))
}

/// The headers every answer of the page carries.
fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure(r)
}

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure(r)
}

fn login_page(status: StatusCode, message: &str) -> Response {
    html(status, LOGIN_HTML.replace("{{message}}", message))
}

/// The sign-in form again, with why the sign-in (or sign-out) was refused; the pipeline counts
/// and logs it under `code` like every refusal.
fn refused_page(status: StatusCode, code: &'static str, message: &str) -> Response {
    Refusal::attach(login_page(status, message), code, message)
}

async fn index(Extension(ui): Extension<Arc<UiState>>, headers: HeaderMap) -> Response {
    if let Some(r) = ui.misdirected(&headers) {
        return r;
    }
    match ui.grant(&headers) {
        Some(_) => html(StatusCode::OK, PAGE_HTML.to_string()),
        None => login_page(StatusCode::OK, ""),
    }
}

/// The session cookie's attributes (`Secure` when served over HTTPS).
fn cookie_flags(ui: &UiState) -> &'static str {
    if ui.https() {
        "Path=/; HttpOnly; SameSite=Strict; Secure"
    } else {
        "Path=/; HttpOnly; SameSite=Strict"
    }
}

async fn login(
    State(state): State<Arc<AppState>>,
    Extension(ui): Extension<Arc<UiState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(r) = ui.misdirected(&headers) {
        return r;
    }
    if !ui.same_origin(&headers) {
        return refused_page(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "Sign in from this page.",
        );
    }
    let Ok(body) = input::read_body(&headers, body, 4096, state.body_timeout).await else {
        return refused_page(
            StatusCode::BAD_REQUEST,
            "malformed_body",
            "The form could not be read.",
        );
    };
    let key = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    if key.is_empty() {
        return refused_page(
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
            "That key is not valid.",
        );
    }
    // Wrong keys count toward the client address's failed-authentication limit (as in every
    // dialect); a valid key's sign-ins toward its own rate limit.
    let authenticated =
        state
            .keys
            .authenticate(&key)
            .and_then(|g| match state.keys.limits.check(&g.name) {
                Ok(()) => Ok(g),
                Err(wait) => Err(super::error::ApiError::RateLimited(wait)),
            });
    let grant = match authenticated {
        Ok(g) => g,
        Err(super::error::ApiError::RateLimited(wait)) => {
            let mut r = refused_page(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many attempts; try again in a moment.",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, super::error::retry_after(wait));
            return r;
        }
        Err(e) => {
            return refused_page(StatusCode::UNAUTHORIZED, e.code(), "That key is not valid.")
        }
    };
    let may =
        grant.has(Need::Read).is_ok() && matches!(grant.scope, Scope::Admin | Scope::Domains(_));
    if !may {
        return refused_page(
            StatusCode::FORBIDDEN,
            "forbidden",
            "This key may not see the status page: use an admin key or a domain key with read access.",
        );
    }
    let value = ui.open(grant);
    let mut r = StatusCode::SEE_OTHER.into_response();
    let h = r.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/"));
    let cookie = format!(
        "{COOKIE}={value}; {}; Max-Age={}",
        cookie_flags(&ui),
        SESSION_MS / 1000
    );
    h.insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a valid header"),
    );
    secure(r)
}

async fn logout(Extension(ui): Extension<Arc<UiState>>, headers: HeaderMap) -> Response {
    if let Some(r) = ui.misdirected(&headers) {
        return r;
    }
    // From another origin: refused, and the browser keeps its cookie.
    if !ui.same_origin(&headers) {
        return refused_page(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "Sign out from this page.",
        );
    }
    ui.close(&headers);
    let mut r = StatusCode::SEE_OTHER.into_response();
    let h = r.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/"));
    let cookie = format!("{COOKIE}=; {}; Max-Age=0", cookie_flags(&ui));
    h.insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a valid header"),
    );
    secure(r)
}

fn json_answer(status: StatusCode, body: &Value) -> Response {
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    secure(r)
}

fn unauthorized() -> Response {
    Refusal::attach(
        json_answer(
            StatusCode::UNAUTHORIZED,
            &json!({"error": {"code": "signed_out", "message": "sign in on / first", "status": 401}}),
        ),
        "signed_out",
        "sign in on / first",
    )
}

/// The query parameter `name`'s value, trimmed.
fn param(q: Option<&str>, name: &str) -> Option<String> {
    q.into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim().to_string())
}

/// Whether `grant` (an admin or domain key) sees what concerns `domain`.
fn sees_domain(grant: &Grant, domain: &str) -> bool {
    match &grant.scope {
        Scope::Admin => true,
        Scope::Domains(ds) => ds.contains(domain),
        Scope::User(_) => false,
    }
}

/// One row per source of each held resource of `user`, the winning source first and marked.
fn held_rows(state: &AppState, user: &BareJid) -> Vec<Value> {
    let mut rows = Vec::new();
    for r in state.table.statuses(user) {
        let Some(e) = r.effective else { continue };
        let others = r.sources.iter().filter(|s| s.source != e.source);
        for (s, winning) in std::iter::once((&e, true)).chain(others.map(|s| (s, false))) {
            rows.push(json!({
                "user": user.as_str(),
                "resource": r.resource.as_str(),
                "presence": Word::of(s.status.show).as_str(),
                "status": s.status.text,
                "source": s.source.as_str(),
                "winning": winning,
                "set_at": rfc3339(s.updated_at),
                "expires_at": s.expires_at.map(rfc3339),
            }));
        }
    }
    rows
}

/// The real sessions of `user`, as the server announced them.
fn session_rows(state: &AppState, user: &BareJid, now: u64) -> Vec<Value> {
    observe::presence(&state.table, &state.observed, user, now)
        .resources
        .into_iter()
        .filter(|r| r.origin == Origin::Session)
        .map(|r| {
            json!({
                "user": user.as_str(),
                "resource": r.resource,
                "presence": r.presence,
                "status": r.status,
                "priority": r.priority,
                "since": r.since,
            })
        })
        .collect()
}

/// The events of the resume buffer as the page shows them: each event's object and its id.
fn event_values(events: &[Arc<crate::events::Event>]) -> Vec<Value> {
    events
        .iter()
        .filter_map(|e| {
            let mut v: Value = serde_json::from_str(&e.data).ok()?;
            v["id"] = json!(e.id.to_string());
            Some(v)
        })
        .collect()
}

/// The health panel: the `/readyz` report (its privilege conditions limited to the key's
/// domains), the version and the uptime.
fn health(state: &AppState, grant: &Grant) -> Value {
    let mut report = state.readiness();
    report.conditions.retain(|c| {
        c.name
            .strip_prefix("privileges:")
            .is_none_or(|d| sees_domain(grant, d))
    });
    report.privileges.retain(|d, _| sees_domain(grant, d));
    let ready = report.conditions.iter().all(|c| c.ok);
    json!({
        "ready": ready,
        "backend": report.backend,
        "conditions": report.conditions,
        "link": report.link,
        "privileges": report.privileges,
        "version": report.version,
        "started_at": report.started_at,
        "uptime_secs": report.uptime_secs,
    })
}

/// The page's JSON endpoints' first steps: the public origin, the sign-in cookie's grant, and
/// the key's rate limit (the page's polls count toward it, as every dialect's requests do).
fn signed_in(
    state: &AppState,
    ui: &UiState,
    headers: &HeaderMap,
) -> Result<Arc<Grant>, Box<Response>> {
    if let Some(r) = ui.misdirected(headers) {
        return Err(Box::new(r));
    }
    let Some(grant) = ui.grant(headers) else {
        return Err(Box::new(unauthorized()));
    };
    if let Err(wait) = state.keys.limits.check(&grant.name) {
        return Err(Box::new(secure(
            super::error::ApiError::RateLimited(wait).into_response(Format::Json),
        )));
    }
    Ok(grant)
}

async fn status_json(
    State(state): State<Arc<AppState>>,
    Extension(ui): Extension<Arc<UiState>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let grant = match signed_in(&state, &ui, &headers) {
        Ok(g) => g,
        Err(r) => return *r,
    };
    let search = param(q.as_deref(), "user")
        .unwrap_or_default()
        .to_lowercase();
    let now = now_ms();
    let mut users: Vec<_> = state
        .table
        .users()
        .into_iter()
        .filter(|u| grant.allows(Need::Read, u).is_ok())
        .collect();
    users.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let resources = |u: &BareJid| {
        state
            .table
            .statuses(u)
            .iter()
            .filter(|r| r.effective.is_some())
            .count()
    };
    let held_total: usize = users.iter().map(resources).sum();
    let matching: Vec<&BareJid> = users
        .iter()
        .filter(|u| search.is_empty() || u.as_str().contains(&search))
        .collect();
    let held_matching: usize = matching.iter().map(|u| resources(u)).sum();
    let mut held = Vec::new();
    for user in &matching {
        held.extend(held_rows(&state, user));
        if held.len() >= MAX_LISTED {
            held.truncate(MAX_LISTED);
            break;
        }
    }
    // Observed sessions: those of the key's domains; the search matches the full JID.
    let mut sessions: Vec<_> = state
        .observed
        .session_jids()
        .into_iter()
        .filter(|j| grant.allows(Need::Read, &j.to_bare()).is_ok())
        .collect();
    sessions.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let observed_total = sessions.len();
    sessions.retain(|j| search.is_empty() || j.as_str().to_lowercase().contains(&search));
    let observed_matching = sessions.len();
    let mut observed = Vec::new();
    let mut bares: Vec<BareJid> = sessions.iter().map(|j| j.to_bare()).collect();
    bares.dedup();
    // Filtered before the cap, so the rows listed are the first matching ones.
    for user in &bares {
        observed.extend(session_rows(&state, user, now).into_iter().filter(|s| {
            search.is_empty()
                || format!(
                    "{}/{}",
                    s["user"].as_str().unwrap_or(""),
                    s["resource"].as_str().unwrap_or("")
                )
                .to_lowercase()
                .contains(&search)
        }));
        if observed.len() >= MAX_LISTED {
            break;
        }
    }
    observed.truncate(MAX_LISTED);
    let m: &Metrics = &state.metrics;
    let admin = matches!(grant.scope, Scope::Admin);
    let webhooks: Vec<Value> = m
        .webhooks
        .endpoints()
        .iter()
        .filter(|e| {
            admin
                || ui
                    .webhooks
                    .iter()
                    .any(|(name, f)| *name == e.name && UiState::within(&grant, f))
        })
        .map(|e| {
            json!({
                "name": e.name,
                "pending": e.pending.load(Ordering::Relaxed),
                "ok": e.ok.load(Ordering::Relaxed),
                "retry": e.retry.load(Ordering::Relaxed),
                "dropped": e.dropped.load(Ordering::Relaxed),
                "disabled": e.disabled.load(Ordering::Relaxed),
            })
        })
        .collect();
    let health = health(&state, &grant);
    // A domain key: no global counter, rate or sparkline.
    let (counters, rates, sparkline) = if admin {
        let rates = ui.rates.per_minute().map(|r| {
            COUNTERS
                .iter()
                .zip(r)
                .map(|((name, _), v)| (name.to_string(), json!((v * 10.0).round() / 10.0)))
                .collect::<serde_json::Map<_, _>>()
        });
        (
            global_counters(&state),
            rates.map_or(json!({}), Value::Object),
            json!(ui.rates.updates_per_sec()),
        )
    } else {
        (json!({}), json!({}), json!([]))
    };
    let (events, last_event_id) = state.hub.recent(RECENT_EVENTS, SCAN_EVENTS, |u| {
        grant.allows(Need::Read, u).is_ok()
    });
    let body = json!({
        "link": {
            "state": if health["link"]["up"] == true { "up" } else { "down" },
            "since": health["link"]["since"],
        },
        "server": state.server,
        "component": state.component,
        "version": health["version"],
        "uptime_secs": health["uptime_secs"],
        "started_at": health["started_at"],
        "health": health,
        "observed_sessions": observed_total,
        "observed_matching": observed_matching,
        "observed": observed,
        "complete": state.observed.complete(),
        "held_total": held_total,
        "held_matching": held_matching,
        "held": held,
        "webhooks": webhooks,
        "counters": counters,
        "rates_per_minute": rates,
        "updates_per_sec": sparkline,
        "events": event_values(&events),
        "last_event_id": last_event_id.to_string(),
        "admin": admin,
    });
    json_answer(StatusCode::OK, &body)
}

/// Events shown at load (the last of the resume buffer the key may read).
const RECENT_EVENTS: usize = 50;
/// Events of the resume buffer looked at for them, at most.
const SCAN_EVENTS: usize = 4096;
/// Events of one user shown in the per-user view.
const USER_EVENTS: usize = 20;

/// An error answer of the page's JSON endpoints.
fn error_answer(status: StatusCode, code: &'static str, message: String) -> Response {
    let body = json!({"error": {"code": code, "message": message, "status": status.as_u16()}});
    Refusal::attach(json_answer(status, &body), code, message)
}

/// `GET /ui/user.json?jid=`: one user's resources with every source, real sessions, contacts
/// (their roster, read from the server; a failure to read it is told, not fatal) and recent
/// events.
async fn user_json(
    State(state): State<Arc<AppState>>,
    Extension(ui): Extension<Arc<UiState>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let grant = match signed_in(&state, &ui, &headers) {
        Ok(g) => g,
        Err(r) => return *r,
    };
    let text = param(q.as_deref(), "jid").unwrap_or_default();
    let user = match input::served_user(&text, &state.domains) {
        Ok(u) => u,
        Err(e) => return secure(e.into_response(Format::Json)),
    };
    if let Err(e) = may_read(&state.rosters, &grant, &user).await {
        return secure(e.into_response(Format::Json));
    }
    let now = now_ms();
    let p = observe::presence(&state.table, &state.observed, &user, now);
    let (contacts, contacts_error) = match state.rosters.get(&user, ROSTER_WAIT).await {
        Ok(items) => (
            items
                .iter()
                .map(|item| {
                    let seen = item.sees_contact().then(|| {
                        let c = observe::presence(&state.table, &state.observed, &item.jid, now);
                        json!({"presence": c.presence, "status": c.status})
                    });
                    json!({
                        "jid": item.jid.as_str(),
                        "name": item.name,
                        "subscription": item.subscription,
                        "presence": seen,
                    })
                })
                .collect::<Vec<_>>(),
            None,
        ),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let (events, _) = state.hub.recent(USER_EVENTS, SCAN_EVENTS, |u| u == &user);
    let body = json!({
        "user": user.as_str(),
        "presence": p.presence,
        "status": p.status,
        "complete": p.complete,
        "held": held_rows(&state, &user),
        "sessions": session_rows(&state, &user, now),
        "contacts": contacts,
        "contacts_error": contacts_error,
        "events": event_values(&events),
    });
    json_answer(StatusCode::OK, &body)
}

/// The counters over every domain (shown to admin keys only).
fn global_counters(state: &AppState) -> Value {
    let mut m: serde_json::Map<String, Value> = COUNTERS
        .iter()
        .map(|(name, read)| (name.to_string(), json!(read(state))))
        .collect();
    m.insert("event subscribers".into(), json!(state.hub.subscribers()));
    Value::Object(m)
}

/// `GET /ui/events[?after=<id>]`: the live events of the session's key; `after` resumes after
/// that event (the last one `status.json` listed: an `EventSource` cannot send `Last-Event-ID`
/// on its first connection), as `Last-Event-ID` does.
async fn events(
    State(state): State<Arc<AppState>>,
    Extension(ui): Extension<Arc<UiState>>,
    RawQuery(q): RawQuery,
    mut headers: HeaderMap,
) -> Response {
    if let Some(r) = ui.misdirected(&headers) {
        return r;
    }
    let Some((grant, lifetime)) = ui.session(&headers) else {
        return unauthorized();
    };
    let mut rest = Vec::new();
    let mut after = None;
    for (k, v) in form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes()) {
        if k == "after" {
            after = Some(v.into_owned());
        } else {
            let enc = |t: &str| form_urlencoded::byte_serialize(t.as_bytes()).collect::<String>();
            rest.push(format!("{}={}", enc(&k), enc(&v)));
        }
    }
    if let Some(after) = after {
        if !headers.contains_key("last-event-id") {
            match HeaderValue::from_str(&after) {
                Ok(v) => {
                    headers.insert("last-event-id", v);
                }
                Err(_) => {
                    return error_answer(
                        StatusCode::BAD_REQUEST,
                        "invalid_last_event_id",
                        "after= is not an event id".into(),
                    )
                }
            }
        }
    }
    let q = (!rest.is_empty()).then(|| rest.join("&"));
    match super::sse::event_stream(&state, &grant, Some(lifetime), q.as_deref(), &headers).await {
        Ok(r) => secure(r),
        Err(e) => secure(e.into_response(Format::Json)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(updates_set: u64, stanzas: u64) -> [u64; COUNTERS.len()] {
        let mut v = [0; COUNTERS.len()];
        v[0] = updates_set;
        v[4] = stanzas;
        v
    }

    #[test]
    fn rates_per_minute_over_the_last_minute_and_updates_per_second() {
        let rates = Rates::default();
        assert!(rates.per_minute().is_none(), "nothing sampled");
        rates.record(1_000, values(0, 0));
        assert!(rates.per_minute().is_none(), "one sample");
        // 30 updates in 30 s: 60/min; stanzas 90 in 30 s: 180/min.
        rates.record(31_000, values(30, 90));
        let r = rates.per_minute().unwrap();
        assert_eq!((r[0], r[4], r[1]), (60.0, 180.0, 0.0));
        assert_eq!(rates.updates_per_sec(), [1.0]);
        // Older than a minute no longer counts: from 31 s to 91 s, 60 more updates.
        rates.record(91_000, values(90, 90));
        assert_eq!(rates.per_minute().unwrap()[0], 60.0);
        assert_eq!(rates.updates_per_sec(), [1.0, 1.0]);
        // Bounded.
        for i in 0..(SAMPLES as u64 + 10) {
            rates.record(100_000 + i * 1000, values(100 + i * 2, 0));
        }
        assert_eq!(rates.lock().len(), SAMPLES);
        assert!(rates.updates_per_sec().iter().all(|&x| x == 2.0));
        assert_eq!(rates.per_minute().unwrap()[0], 120.0);
    }
}
