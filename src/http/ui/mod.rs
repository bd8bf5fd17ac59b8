//! The live status page: `GET /` (a login form, then the page), `POST /login` and `/logout`, its
//! script and style (`/ui/app.js`, `/ui/app.css`, served from the binary: no external assets),
//! what it shows (`/ui/status.json`: the link and since when, server and component, observed
//! sessions, held statuses searchable by user, webhook endpoints with their backlog, key
//! counters) and its live events (`/ui/events`, the event stream of the signed-in key).
//!
//! Signing in takes an admin key or a domain key with read access (never a user's token): the key
//! is posted once, and a random session id goes into an `HttpOnly; SameSite=Strict` cookie (kept
//! hashed here, 12 h); no key ever travels in a URL, and a sign-in posted from another origin is
//! refused. The page only reads; every answer has a
//! `Content-Security-Policy` of `default-src 'self'` (no inline script or style), and the script
//! puts server text into the page as text only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::error::Format;
use super::input;
use super::server::AppState;
use crate::access::{Grant, Need, Scope};
use crate::metrics::{Metrics, Outcome};
use crate::observe::rfc3339;
use crate::status::{now_ms, Word};
use crate::xmpp::LinkState;

const COOKIE: &str = "extpresence_ui";
/// A session lasts this long.
const SESSION_MS: u64 = 12 * 3600 * 1000;
/// Most sessions held at once (the oldest goes first).
const MAX_SESSIONS: usize = 1000;
/// Most held statuses listed at once.
const MAX_LISTED: usize = 100;
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

const LOGIN_HTML: &str = include_str!("login.html");
const PAGE_HTML: &str = include_str!("page.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// Sessions: the SHA-256 of the cookie value → the grant and when it ends (ms).
type Sessions = HashMap<[u8; 32], (Arc<Grant>, u64)>;

/// What the page shows beside the model, and its sessions.
#[derive(Debug, Default)]
pub struct UiState {
    /// The XMPP server (`[xmpp] server`).
    pub server: String,
    /// The component's JID.
    pub component: String,
    /// When the link last changed state (ms since the Unix epoch).
    pub link_since: AtomicU64,
    sessions: Mutex<Sessions>,
}

impl UiState {
    /// For `server` and `component`.
    pub fn new(server: String, component: String) -> UiState {
        UiState {
            server,
            component,
            link_since: AtomicU64::new(now_ms()),
            sessions: Mutex::default(),
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
        map.retain(|_, (_, until)| *until > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, (_, u))| *u).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(
            Sha256::digest(value.as_bytes()).into(),
            (grant, now + SESSION_MS),
        );
        value
    }

    /// The grant of the request's session cookie, if it is live.
    fn grant(&self, headers: &HeaderMap) -> Option<Arc<Grant>> {
        let value = cookie(headers)?;
        let key: [u8; 32] = Sha256::digest(value.as_bytes()).into();
        let map = self.lock();
        let (grant, until) = map.get(&key)?;
        (*until > now_ms()).then(|| grant.clone())
    }

    fn close(&self, headers: &HeaderMap) {
        if let Some(value) = cookie(headers) {
            let key: [u8; 32] = Sha256::digest(value.as_bytes()).into();
            self.lock().remove(&key);
        }
    }
}

/// Keep `since` up to date with the link's state changes.
pub async fn track_link(ui: Arc<UiState>, mut state: tokio::sync::watch::Receiver<LinkState>) {
    while state.changed().await.is_ok() {
        ui.link_since.store(now_ms(), Ordering::Relaxed);
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

/// The routes of the page.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(index))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route(
            "/ui/app.js",
            get(|| async { asset(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/ui/app.css",
            get(|| async { asset(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route("/ui/status.json", get(status_json))
        .route("/ui/events", get(events))
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

async fn index(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match state.ui.grant(&headers) {
        Some(_) => html(StatusCode::OK, PAGE_HTML.to_string()),
        None => login_page(StatusCode::OK, ""),
    }
}

/// Whether a form post comes from this page: an `Origin` that is present must name this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true; // not sent by the browser (same-origin GET-like navigation, or not a browser)
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let authority = origin.split_once("://").map_or("", |(_, a)| a);
    !host.is_empty() && authority.eq_ignore_ascii_case(host)
}

async fn login(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    if !same_origin(&headers) {
        return login_page(StatusCode::FORBIDDEN, "Sign in from this page.");
    }
    let Ok(body) = input::read_body(&headers, body, 4096, state.body_timeout).await else {
        return login_page(StatusCode::BAD_REQUEST, "The form could not be read.");
    };
    let key = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    // One bucket for every sign-in attempt: guessing keys here is as slow as anywhere.
    let bucket: Arc<str> = Arc::from("status-page sign-in");
    if let Err(wait) = state.keys.limits.check(&bucket) {
        let mut r = login_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts; try again in a moment.",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, super::error::retry_after(wait));
        return r;
    }
    let grant = match state.keys.grant(&key).filter(|_| !key.is_empty()) {
        Some(g) => g,
        None => return login_page(StatusCode::UNAUTHORIZED, "That key is not valid."),
    };
    let may =
        grant.has(Need::Read).is_ok() && matches!(grant.scope, Scope::Admin | Scope::Domains(_));
    if !may {
        return login_page(
            StatusCode::FORBIDDEN,
            "This key may not see the status page: use an admin key or a domain key with read access.",
        );
    }
    let value = state.ui.open(grant);
    let mut r = StatusCode::SEE_OTHER.into_response();
    let h = r.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/"));
    let cookie = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_MS / 1000
    );
    h.insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a valid header"),
    );
    secure(r)
}

async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if same_origin(&headers) {
        state.ui.close(&headers);
    }
    let mut r = StatusCode::SEE_OTHER.into_response();
    let h = r.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/"));
    h.insert(
        header::SET_COOKIE,
        HeaderValue::from_static("extpresence_ui=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
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
    json_answer(
        StatusCode::UNAUTHORIZED,
        &json!({"error": {"code": "signed_out", "message": "sign in on / first", "status": 401}}),
    )
}

async fn status_json(
    State(state): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(grant) = state.ui.grant(&headers) else {
        return unauthorized();
    };
    let search: String = q
        .as_deref()
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.trim().to_lowercase())
        .unwrap_or_default();
    let mut users: Vec<_> = state
        .table
        .users()
        .into_iter()
        .filter(|u| grant.allows(Need::Read, u).is_ok())
        .collect();
    users.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let held_total: usize = users.iter().map(|u| state.table.statuses(u).len()).sum();
    let mut held = Vec::new();
    for user in users
        .iter()
        .filter(|u| search.is_empty() || u.as_str().contains(&search))
    {
        for r in state.table.statuses(user) {
            let Some(e) = r.effective else { continue };
            held.push(json!({
                "user": user.as_str(),
                "resource": r.resource.as_str(),
                "presence": Word::of(e.status.show).as_str(),
                "status": e.status.text,
                "source": e.source.as_str(),
                "expires_at": e.expires_at.map(rfc3339),
            }));
        }
        if held.len() >= MAX_LISTED {
            held.truncate(MAX_LISTED);
            break;
        }
    }
    let m: &Metrics = &state.metrics;
    let webhooks: Vec<Value> = m
        .webhooks
        .endpoints()
        .iter()
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
    let link = match state.link.state() {
        LinkState::Up => "up",
        LinkState::Down => "down",
    };
    let body = json!({
        "link": {"state": link, "since": rfc3339(state.ui.link_since.load(Ordering::Relaxed))},
        "server": state.ui.server,
        "component": state.ui.component,
        "observed_sessions": state.observed.sessions(),
        "complete": state.observed.complete(),
        "held_total": held_total,
        "held": held,
        "webhooks": webhooks,
        "counters": {
            "updates set": m.updates(Outcome::Set),
            "updates cleared": m.updates(Outcome::Cleared),
            "updates refused": m.updates(Outcome::Rejected),
            "updates failed": m.updates(Outcome::Failed),
            "stanzas sent": m.stanzas_sent.load(Ordering::Relaxed),
            "stanzas received": m.stanzas_received.load(Ordering::Relaxed),
            "link reconnects": m.reconnects.load(Ordering::Relaxed),
            "events published": state.hub.published(),
            "event subscribers": state.hub.subscribers(),
        },
    });
    json_answer(StatusCode::OK, &body)
}

async fn events(
    State(state): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(grant) = state.ui.grant(&headers) else {
        return unauthorized();
    };
    match super::read::event_stream(&state, &grant, q.as_deref(), &headers).await {
        Ok(r) => secure(r),
        Err(e) => secure(e.into_response(Format::Json)),
    }
}
