//! Typed settings and their validation.
//!
//! This module owns everything about configuration: the TOML file layout (`[xmpp]`, `[status]`,
//! `[http]`, `[tigase]`), environment overrides (`EXTPRESENCE__SECTION__KEY`), rejection of unknown keys, reading
//! secrets from files, and the validation pass that turns raw values into [`Settings`] with messages an
//! admin understands. Secrets are wrapped in [`Secret`], whose `Debug` never shows the value.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jid::{BareJid, ResourcePart};
use serde::Deserialize;

use crate::base::domain::normalize_domain;
use crate::base::secret::Secret;
use crate::model::StatusPolicy;

/// Which delivery backend turns status changes into stanzas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Directed presence to every subscribed contact via XEP-0356 (Prosody, ejabberd).
    #[default]
    Fanout,
    /// Tigase's USER_STATUS session command: the server holds a synthetic session.
    Tigase,
}

/// The file as written: `[xmpp]`, `[status]`, `[http]`, `[tigase]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The XEP-0114 link and the domains we serve.
    pub xmpp: RawXmpp,
    /// Defaults and limits for statuses.
    #[serde(default)]
    pub status: RawStatus,
    /// The HTTP API listener and its keys.
    #[serde(default)]
    pub http: RawHttp,
    /// The durable status store.
    #[serde(default)]
    pub store: RawStore,
    /// Tigase session mode (`backend = "tigase"`).
    #[serde(default)]
    pub tigase: RawTigase,
    /// What extpresence observes of real sessions (the older place of `[ejabberd] api_url`).
    #[serde(default)]
    pub observe: RawObserve,
    /// ejabberd's admin API.
    #[serde(default)]
    pub ejabberd: RawEjabberd,
    /// Acting in users' names (the Waher Agent API calls).
    #[serde(default)]
    pub agent: RawAgent,
    /// Logging.
    #[serde(default)]
    pub log: RawLog,
    /// The Matrix dialect.
    #[serde(default)]
    pub matrix: RawMatrix,
    /// `[[webhooks]]`: endpoints that receive every presence event, signed.
    #[serde(default)]
    pub webhooks: Vec<crate::webhooks::RawWebhook>,
    /// The status page.
    #[serde(default)]
    pub ui: RawUi,
}

/// `[ui]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawUi {
    /// The page's public origin (`https://presence.example.com`): requests to the page naming
    /// another host are refused, and sign-in and sign-out must come from it.
    pub public_origin: Option<String>,
}

/// `[matrix]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMatrix {
    /// The source Matrix writes as (default `matrix`).
    pub source: Option<String>,
    /// Matrix server name → XMPP domain.
    #[serde(default)]
    pub server_names: std::collections::BTreeMap<String, String>,
}

/// `[ejabberd]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawEjabberd {
    /// ejabberd's admin API (mod_http_api), e.g. `http://127.0.0.1:5281/api`: its
    /// `connected_users_info` fills what ejabberd does not forward, its `add_rosteritem` writes
    /// the user's side of a subscription requested in the user's name.
    pub api_url: Option<String>,
    /// How often `connected_users_info` is asked (default 10).
    pub poll_secs: Option<u64>,
}

/// `[log]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `text` (default) or `json` (one JSON object per line, with the span fields).
    pub format: Option<String>,
}

/// `[agent]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    /// How long the approval of a subscription requested in a user's name is watched.
    #[serde(default = "default_watch_secs")]
    pub watch_secs: u64,
}

impl Default for RawAgent {
    fn default() -> Self {
        RawAgent {
            watch_secs: default_watch_secs(),
        }
    }
}

fn default_watch_secs() -> u64 {
    86_400
}

/// `[observe]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObserve {
    /// ejabberd's admin API (mod_http_api), e.g. `http://127.0.0.1:5281/api`: its
    /// `connected_users_info` fills what ejabberd does not forward (sessions online at connect,
    /// logouts without `unavailable`).
    pub ejabberd_api: Option<String>,
    /// How often that API is asked.
    #[serde(default = "default_poll_secs")]
    pub ejabberd_api_poll_secs: u64,
}

impl Default for RawObserve {
    fn default() -> Self {
        RawObserve {
            ejabberd_api: None,
            ejabberd_api_poll_secs: default_poll_secs(),
        }
    }
}

fn default_poll_secs() -> u64 {
    10
}

/// `[store]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// The redb file holding every acknowledged status.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            path: default_store_path(),
        }
    }
}

fn default_store_path() -> PathBuf {
    // systemd's StateDirectory=extpresence
    PathBuf::from("/var/lib/extpresence/statuses.redb")
}

/// What to do with held statuses when extpresence stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnShutdown {
    /// Send `unavailable` for every held resource (contacts see them go).
    #[default]
    Unavailable,
    /// Send nothing: contacts keep seeing the statuses during a quick restart, and the replay
    /// after it fixes anything that changed.
    Keep,
}

/// `[xmpp]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawXmpp {
    /// The component's JID, a bare domain such as `status.example.com`.
    pub component: String,
    /// Component listener of the XMPP server, `host:port`.
    #[serde(default = "default_server")]
    pub server: String,
    /// Shared component secret (or use `secret_file`).
    pub secret: Option<Secret>,
    /// File holding the component secret (first line, trimmed).
    pub secret_file: Option<PathBuf>,
    /// User domains we may set presence for.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Delivery backend.
    #[serde(default)]
    pub backend: BackendKind,
    /// Seconds of silence on the link before we ping the server.
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u64,
    /// Seconds a write may wait for the server to take data before the link counts as dead.
    #[serde(default = "default_write_timeout")]
    pub write_timeout_secs: u64,
    /// Longest wait between reconnect attempts, in seconds.
    #[serde(default = "default_backoff_max")]
    pub reconnect_max_secs: u64,
}

fn default_rate() -> u32 {
    crate::access::limits::RATE
}
fn default_burst() -> u32 {
    crate::access::limits::BURST
}
fn default_global_rate() -> u32 {
    crate::access::limits::GLOBAL_RATE
}
fn default_global_burst() -> u32 {
    crate::access::limits::GLOBAL_BURST
}

/// One `[[http.keys]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    /// The key itself.
    pub key: Option<Secret>,
    /// Or a file holding it (first line, trimmed).
    pub key_file: Option<PathBuf>,
    /// `"admin"`, `{ domains = [...] }` or `{ user = "alice@example.com" }`.
    pub scope: RawScope,
    /// `"read"`, `"write"` or `"read-write"`.
    pub access: crate::access::Access,
    /// Shown in logs and metrics (never the key); default `key-<n>`.
    pub name: Option<String>,
}

/// A key's scope as written.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawScope {
    /// `"admin"`.
    Word(String),
    /// `{ domains = [...] }`.
    Domains {
        /// The domains.
        domains: Vec<String>,
    },
    /// `{ user = "..." }`.
    User {
        /// The user.
        user: String,
    },
}

/// `[status]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatus {
    /// Resource used when the request names none.
    #[serde(default = "default_resource")]
    pub default_resource: String,
    /// Priority used when the request names none.
    #[serde(default = "default_priority")]
    pub default_priority: i64,
    /// Whether requests may set a priority of 0 or more (then the synthetic resource may receive messages).
    #[serde(default)]
    pub allow_non_negative_priority: bool,
    /// What contacts see when extpresence stops.
    #[serde(default)]
    pub on_shutdown: OnShutdown,
}

impl Default for RawStatus {
    fn default() -> Self {
        RawStatus {
            default_resource: default_resource(),
            default_priority: default_priority(),
            allow_non_negative_priority: false,
            on_shutdown: OnShutdown::default(),
        }
    }
}

/// `[http]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Address the HTTP API listens on, `ip:port`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Accepted API keys.
    #[serde(default)]
    pub api_keys: Vec<Secret>,
    /// Files each holding one API key (first line, trimmed).
    #[serde(default)]
    pub api_key_files: Vec<PathBuf>,
    /// Keys with a scope and a right (`[[http.keys]]`).
    #[serde(default)]
    pub keys: Vec<RawKey>,
    /// Sustained requests per second per credential.
    #[serde(default = "default_rate")]
    pub rate_per_sec: u32,
    /// Burst per credential.
    #[serde(default = "default_burst")]
    pub rate_burst: u32,
    /// Sustained requests per second over all credentials.
    #[serde(default = "default_global_rate")]
    pub global_rate_per_sec: u32,
    /// Global burst.
    #[serde(default = "default_global_burst")]
    pub global_rate_burst: u32,
    /// Concurrent HTTP connections at most (also bounded by the open-file limit).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds a client has to send a complete request head (also how long an idle keep-alive
    /// connection is kept).
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request body.
    #[serde(default = "default_body_timeout")]
    pub body_timeout_secs: u64,
    /// Reverse proxies (IP addresses) whose `X-Forwarded-For`, `X-Forwarded-Proto` and
    /// `X-Forwarded-Host` are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            listen: default_listen(),
            api_keys: Vec::new(),
            keys: Vec::new(),
            rate_per_sec: default_rate(),
            rate_burst: default_burst(),
            global_rate_per_sec: default_global_rate(),
            global_rate_burst: default_global_burst(),
            api_key_files: Vec::new(),
            max_connections: default_max_connections(),
            header_timeout_secs: default_header_timeout(),
            body_timeout_secs: default_body_timeout(),
            trusted_proxies: Vec::new(),
        }
    }
}

fn default_max_connections() -> usize {
    1024
}
fn default_header_timeout() -> u64 {
    15
}
fn default_body_timeout() -> u64 {
    15
}

/// `[tigase]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTigase {
    /// Seconds Tigase may take to answer a USER_STATUS command before the request fails.
    #[serde(default = "default_tigase_timeout")]
    pub timeout_secs: u64,
}

impl Default for RawTigase {
    fn default() -> Self {
        RawTigase {
            timeout_secs: default_tigase_timeout(),
        }
    }
}

fn default_tigase_timeout() -> u64 {
    5
}
fn default_server() -> String {
    "127.0.0.1:5347".into()
}
fn default_keepalive() -> u64 {
    30
}
fn default_write_timeout() -> u64 {
    10
}
fn default_backoff_max() -> u64 {
    30
}
fn default_resource() -> String {
    "tigase-external".into()
}
fn default_priority() -> i64 {
    -1
}
fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

/// Validated settings: what the rest of the program runs on.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The component's own JID (a domain).
    pub component: BareJid,
    /// `host:port` of the component listener (resolved at every connect).
    pub server: String,
    /// Component secret.
    pub secret: Secret,
    /// Normalised user domains we serve.
    pub domains: BTreeSet<String>,
    /// Delivery backend.
    pub backend: BackendKind,
    /// How long Tigase may take to answer a USER_STATUS command (`backend = "tigase"`).
    pub tigase_timeout: Duration,
    /// Silence before a keepalive ping.
    pub keepalive: Duration,
    /// Longest wait for the server to take written data before the link counts as dead.
    pub write_timeout: Duration,
    /// Cap of the reconnect backoff.
    pub reconnect_max: Duration,
    /// Defaults and limits for statuses.
    pub policy: StatusPolicy,
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Accepted keys and what each may do (the older `api_keys` as admin read-write).
    pub keys: Vec<(Secret, crate::access::Grant)>,
    /// Rate limits.
    pub limits: crate::access::limits::LimitSettings,
    /// The Matrix dialect.
    pub matrix: crate::http::matrix::MatrixSettings,
    /// Configured cap on concurrent HTTP connections (`run` also bounds it by the open-file limit).
    pub max_connections: usize,
    /// Time for a complete request head; also the idle keep-alive time.
    pub header_timeout: Duration,
    /// Time for a complete request body.
    pub body_timeout: Duration,
    /// The durable store file.
    pub store_path: PathBuf,
    /// What contacts see when extpresence stops.
    pub on_shutdown: OnShutdown,
    /// ejabberd's admin API base URL (`[ejabberd] api_url`), and how often to ask it.
    pub ejabberd_api: Option<(reqwest::Url, Duration)>,
    /// How long the approval of a subscription requested in a user's name is watched.
    pub agent_watch: Duration,
    /// Log lines as JSON objects (`[log] format = "json"`), else text.
    pub log_json: bool,
    /// Webhook endpoints (`[[webhooks]]`).
    pub webhooks: Vec<crate::webhooks::WebhookSettings>,
    /// Reverse proxies whose forwarded headers are believed (`[http] trusted_proxies`).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// The status page's public origin (`[ui] public_origin`).
    pub public_origin: Option<crate::http::ui::PublicOrigin>,
}

/// Why a configuration was refused; every message names the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or parsed, or has unknown keys.
    #[error("cannot load configuration: {0}")]
    Load(String),
    /// A value is wrong.
    #[error("{key}: {message}")]
    Invalid {
        /// The offending key, e.g. `xmpp.component`.
        key: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Load `path` with environment overrides (`EXTPRESENCE__XMPP__SECRET=…`) and validate it.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    if !path.exists() {
        return Err(ConfigError::Load(format!(
            "configuration file {} does not exist",
            path.display()
        )));
    }
    let env = config::Environment::with_prefix("EXTPRESENCE")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .with_list_parse_key("xmpp.domains")
        .with_list_parse_key("http.api_keys")
        .with_list_parse_key("http.api_key_files");
    let raw: RawConfig = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(env)
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| ConfigError::Load(e.to_string()))?;
    validate(raw)
}

pub(crate) fn read_secret_file(key: &'static str, path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let value = text.lines().next().unwrap_or("").trim().to_string();
    if value.is_empty() {
        return Err(invalid(key, format!("{} is empty", path.display())));
    }
    Ok(Secret::new(value))
}

/// Turn raw values into [`Settings`], or say what is wrong.
pub fn validate(raw: RawConfig) -> Result<Settings, ConfigError> {
    let x = raw.xmpp;
    let component = BareJid::new(&x.component)
        .ok()
        .filter(|j| j.node().is_none())
        .ok_or_else(|| {
            invalid(
                "xmpp.component",
                format!(
                    "{:?} is not a component domain (expected something like \"status.example.com\")",
                    x.component
                ),
            )
        })?;
    if x.server
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .is_none()
    {
        return Err(invalid(
            "xmpp.server",
            format!("{:?} is not host:port (e.g. \"127.0.0.1:5347\")", x.server),
        ));
    }
    let secret = match (x.secret, x.secret_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "xmpp.secret",
                "set either secret or secret_file, not both",
            ))
        }
        (Some(s), None) if s.expose().is_empty() => {
            return Err(invalid("xmpp.secret", "the component secret is empty"))
        }
        (Some(s), None) => s,
        (None, Some(path)) => read_secret_file("xmpp.secret_file", &path)?,
        (None, None) => {
            return Err(invalid(
                "xmpp.secret",
                "missing: set secret (or secret_file) to the server's component secret",
            ))
        }
    };
    if x.domains.is_empty() {
        return Err(invalid(
            "xmpp.domains",
            "list at least one user domain, e.g. domains = [\"example.com\"]",
        ));
    }
    let mut domains = BTreeSet::new();
    for d in &x.domains {
        let domain = normalize_domain(d)
            .ok_or_else(|| invalid("xmpp.domains", format!("{d:?} is not a domain")))?;
        domains.insert(domain);
    }
    if raw.tigase.timeout_secs == 0 || raw.tigase.timeout_secs > 300 {
        return Err(invalid(
            "tigase.timeout_secs",
            format!("{} is not between 1 and 300", raw.tigase.timeout_secs),
        ));
    }
    if x.keepalive_secs == 0 {
        return Err(invalid("xmpp.keepalive_secs", "must be at least 1"));
    }
    if x.write_timeout_secs == 0 || x.write_timeout_secs > 600 {
        return Err(invalid(
            "xmpp.write_timeout_secs",
            format!("{} is not between 1 and 600", x.write_timeout_secs),
        ));
    }
    if x.reconnect_max_secs == 0 {
        return Err(invalid("xmpp.reconnect_max_secs", "must be at least 1"));
    }

    let s = raw.status;
    let default_resource = ResourcePart::new(&s.default_resource)
        .map_err(|e| {
            invalid(
                "status.default_resource",
                format!("{:?} is not a valid resource: {e}", s.default_resource),
            )
        })?
        .into_owned();
    let default_priority = i8::try_from(s.default_priority).map_err(|_| {
        invalid(
            "status.default_priority",
            format!("{} is outside -128..127", s.default_priority),
        )
    })?;
    if default_priority >= 0 && !s.allow_non_negative_priority {
        return Err(invalid(
            "status.default_priority",
            "must be negative (a synthetic resource with priority >= 0 would receive messages); \
             set allow_non_negative_priority = true if you really want that",
        ));
    }

    let h = raw.http;
    let listen: SocketAddr = h.listen.parse().map_err(|_| {
        invalid(
            "http.listen",
            format!("{:?} is not ip:port (e.g. \"127.0.0.1:8080\")", h.listen),
        )
    })?;
    let mut api_keys = h.api_keys;
    for path in &h.api_key_files {
        api_keys.push(read_secret_file("http.api_key_files", path)?);
    }
    if api_keys.iter().any(|k| k.expose().trim().is_empty()) {
        return Err(invalid("http.api_keys", "an API key is empty"));
    }
    let mut keys: Vec<(Secret, crate::access::Grant)> = api_keys
        .into_iter()
        .enumerate()
        .map(|(i, k)| (k, crate::access::Grant::admin(format!("api-key-{}", i + 1))))
        .collect();
    for (i, k) in h.keys.into_iter().enumerate() {
        let at = "http.keys";
        let secret = match (k.key, k.key_file) {
            (Some(_), Some(_)) => return Err(invalid(at, "set either key or key_file, not both")),
            (Some(s), None) => s,
            (None, Some(path)) => read_secret_file("http.keys.key_file", &path)?,
            (None, None) => return Err(invalid(at, "each [[http.keys]] needs key or key_file")),
        };
        if secret.expose().trim().is_empty() {
            return Err(invalid(at, "a key is empty"));
        }
        let scope = match k.scope {
            RawScope::Word(w) if w == "admin" => crate::access::Scope::Admin,
            RawScope::Word(w) => {
                return Err(invalid(
                    "http.keys.scope",
                    format!(
                    "{w:?}: a scope is \"admin\", {{ domains = [...] }} or {{ user = \"...\" }}"
                ),
                ))
            }
            RawScope::Domains { domains: ds } => {
                let mut set = BTreeSet::new();
                for d in ds {
                    let norm = normalize_domain(&d)
                        .filter(|d| domains.contains(d))
                        .ok_or_else(|| {
                            invalid(
                                "http.keys.scope",
                                format!("{d:?} is not one of xmpp.domains"),
                            )
                        })?;
                    set.insert(norm);
                }
                if set.is_empty() {
                    return Err(invalid("http.keys.scope", "domains = [] covers nobody"));
                }
                crate::access::Scope::Domains(set)
            }
            RawScope::User { user } => {
                let jid = BareJid::new(&user)
                    .ok()
                    .filter(|j| j.node().is_some() && domains.contains(j.domain().as_str()))
                    .ok_or_else(|| {
                        invalid(
                            "http.keys.scope",
                            format!("{user:?} is not a user of one of xmpp.domains"),
                        )
                    })?;
                crate::access::Scope::User(jid)
            }
        };
        let name = k.name.unwrap_or_else(|| format!("key-{}", i + 1));
        if name.is_empty()
            || name.len() > 64
            || name
                .chars()
                .any(|c| c.is_control() || c == '"' || c == '\\')
        {
            return Err(invalid(
                "http.keys.name",
                format!(
                    "{name:?}: 1 to 64 characters, no quotes, backslashes or control characters"
                ),
            ));
        }
        keys.push((
            secret,
            crate::access::Grant {
                name: name.into(),
                scope,
                access: k.access,
            },
        ));
    }
    if keys.is_empty() {
        return Err(invalid(
            "http.api_keys",
            "no API key configured: set api_keys, api_key_files or [[http.keys]]",
        ));
    }

    let nz = |key: &'static str, v: u32| {
        std::num::NonZeroU32::new(v).ok_or_else(|| invalid(key, "must be at least 1"))
    };
    let limits = crate::access::limits::LimitSettings {
        rate: nz("http.rate_per_sec", h.rate_per_sec)?,
        burst: nz("http.rate_burst", h.rate_burst)?,
        global_rate: nz("http.global_rate_per_sec", h.global_rate_per_sec)?,
        global_burst: nz("http.global_rate_burst", h.global_rate_burst)?,
    };
    if h.max_connections == 0 {
        return Err(invalid("http.max_connections", "must be at least 1"));
    }
    let trusted_proxies = h
        .trusted_proxies
        .iter()
        .map(|p| {
            p.trim().parse::<std::net::IpAddr>().map_err(|_| {
                invalid(
                    "http.trusted_proxies",
                    format!("{p:?} is not an IP address (e.g. \"127.0.0.1\" or \"::1\")"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let public_origin = raw
        .ui
        .public_origin
        .as_deref()
        .map(|o| {
            crate::http::ui::PublicOrigin::parse(o).map_err(|e| invalid("ui.public_origin", e))
        })
        .transpose()?;
    for (key, secs) in [
        ("http.header_timeout_secs", h.header_timeout_secs),
        ("http.body_timeout_secs", h.body_timeout_secs),
    ] {
        if secs == 0 || secs > 3600 {
            return Err(invalid(key, format!("{secs} is not between 1 and 3600")));
        }
    }
    if raw.store.path.as_os_str().is_empty() {
        return Err(invalid("store.path", "must name the status store file"));
    }

    let (o, e) = (raw.observe, raw.ejabberd);
    if o.ejabberd_api.is_some() && e.api_url.is_some() {
        return Err(invalid(
            "observe.ejabberd_api",
            "is the older name of ejabberd.api_url; set only ejabberd.api_url",
        ));
    }
    let (url_key, poll_key) = match o.ejabberd_api {
        Some(_) => ("observe.ejabberd_api", "observe.ejabberd_api_poll_secs"),
        None => ("ejabberd.api_url", "ejabberd.poll_secs"),
    };
    let poll_secs = e.poll_secs.unwrap_or(o.ejabberd_api_poll_secs);
    let ejabberd_api = match o.ejabberd_api.or(e.api_url) {
        None => None,
        Some(url) => {
            let parsed = reqwest::Url::parse(&url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    invalid(
                        url_key,
                        format!(
                            "{url:?} is not an http(s) URL (e.g. \"http://127.0.0.1:5281/api\")"
                        ),
                    )
                })?;
            if poll_secs == 0 || poll_secs > 3600 {
                return Err(invalid(
                    poll_key,
                    format!("{poll_secs} is not between 1 and 3600"),
                ));
            }
            Some((parsed, Duration::from_secs(poll_secs)))
        }
    };
    let log_json = match raw.log.format.as_deref().map(str::trim) {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => {
            return Err(invalid(
                "log.format",
                format!("{other:?} is not \"text\" or \"json\""),
            ))
        }
    };
    let watch_secs = raw.agent.watch_secs;
    if !(60..=30 * 86_400).contains(&watch_secs) {
        return Err(invalid(
            "agent.watch_secs",
            format!("{watch_secs} is not between 60 and 2592000 (30 days)"),
        ));
    }

    let webhooks = crate::webhooks::validate(raw.webhooks, &domains)?;
    let m = raw.matrix;
    let matrix_source = crate::model::Source::parse(m.source.as_deref().unwrap_or("matrix"))
        .map_err(|e| invalid("matrix.source", e.to_string()))?;
    let mut server_names = std::collections::BTreeMap::new();
    for (server, domain) in m.server_names {
        let d = normalize_domain(&domain)
            .filter(|d| domains.contains(d))
            .ok_or_else(|| {
                invalid(
                    "matrix.server_names",
                    format!("{server:?} maps to {domain:?}, which is not one of xmpp.domains"),
                )
            })?;
        server_names.insert(server, d);
    }
    let matrix = crate::http::matrix::MatrixSettings {
        source: matrix_source,
        server_names,
    };

    Ok(Settings {
        trusted_proxies,
        public_origin,
        webhooks,
        ejabberd_api,
        agent_watch: Duration::from_secs(watch_secs),
        log_json,
        component,
        server: x.server,
        secret,
        domains,
        backend: x.backend,
        tigase_timeout: Duration::from_secs(raw.tigase.timeout_secs),
        keepalive: Duration::from_secs(x.keepalive_secs),
        write_timeout: Duration::from_secs(x.write_timeout_secs),
        reconnect_max: Duration::from_secs(x.reconnect_max_secs),
        policy: StatusPolicy {
            default_resource,
            default_priority,
            allow_non_negative_priority: s.allow_non_negative_priority,
        },
        listen,
        keys,
        limits,
        matrix,
        max_connections: h.max_connections,
        header_timeout: Duration::from_secs(h.header_timeout_secs),
        body_timeout: Duration::from_secs(h.body_timeout_secs),
        store_path: raw.store.path,
        on_shutdown: s.on_shutdown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        let raw: RawConfig = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Load(e.to_string()))?;
        validate(raw)
    }

    const GOOD: &str = r#"
        [xmpp]
        component = "status.example.com"
        server = "127.0.0.1:5347"
        secret = "s3cret"
        domains = ["Example.COM"]
        [http]
        listen = "127.0.0.1:0"
        api_keys = ["k1"]
    "#;

    #[test]
    fn good_config_and_defaults() {
        let s = parse(GOOD).unwrap();
        assert_eq!(s.component.as_str(), "status.example.com");
        assert!(s.domains.contains("example.com"));
        assert_eq!(s.policy.default_resource.as_str(), "tigase-external");
        assert_eq!(s.policy.default_priority, -1);
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("s3cret") && !dbg.contains("k1\""), "{dbg}");
    }

    #[test]
    fn scoped_keys() {
        let text = GOOD.replace(
            "[http]",
            r#"[[http.keys]]
            key = "adm"
            scope = "admin"
            access = "read-write"
            name = "ops"
            [[http.keys]]
            key = "team"
            scope = { domains = ["example.com"] }
            access = "write"
            [[http.keys]]
            key = "al"
            scope = { user = "Alice@Example.com" }
            access = "read"
            [http]"#,
        );
        let s = parse(&text).unwrap();
        let grants: Vec<_> = s.keys.iter().map(|(_, g)| g.clone()).collect();
        assert_eq!(grants.len(), 4, "api_keys and three [[http.keys]]");
        assert_eq!(&*grants[1].name, "ops");
        assert_eq!(grants[1].scope, crate::access::Scope::Admin);
        assert_eq!(&*grants[2].name, "key-2");
        assert_eq!(grants[2].access, crate::access::Access::Write);
        assert_eq!(
            grants[3].scope,
            crate::access::Scope::User(BareJid::new("alice@example.com").unwrap())
        );
        for (bad, key) in [
            (r#"scope = "root""#, "http.keys.scope"),
            (r#"scope = { domains = ["other.org"] }"#, "http.keys.scope"),
            (r#"scope = { user = "bob@other.org" }"#, "http.keys.scope"),
        ] {
            let text = GOOD.replace(
                "[http]",
                &format!("[[http.keys]]\nkey = \"x\"\n{bad}\naccess = \"read\"\n[http]"),
            );
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../etc/extpresence.toml")
            .replace(
                "secret_file = \"/etc/extpresence/component-secret\"",
                "secret = \"x\"",
            )
            .replace(
                "api_key_files = [\"/etc/extpresence/api-key\"]",
                "api_keys = [\"k\"]",
            );
        let s = parse(&text).unwrap();
        assert_eq!(s.component.as_str(), "status.example.com");
        assert_eq!(s.on_shutdown, OnShutdown::Unavailable);
        assert_eq!(s.tigase_timeout, Duration::from_secs(5));
    }

    #[test]
    fn tigase_backend() {
        let s = parse(&GOOD.replace("domains", "backend = \"tigase\"\ndomains")).unwrap();
        assert_eq!(s.backend, BackendKind::Tigase);
        assert_eq!(s.tigase_timeout, Duration::from_secs(5));
        let s = parse(&format!("{GOOD}\n[tigase]\ntimeout_secs = 2\n")).unwrap();
        assert_eq!(s.tigase_timeout, Duration::from_secs(2));
        let e = parse(&format!("{GOOD}\n[tigase]\ntimeout = 2\n")).unwrap_err();
        assert!(e.to_string().contains("timeout"), "{e}");
    }

    #[test]
    fn status_page_origin_and_trusted_proxies() {
        let s = parse(GOOD).unwrap();
        assert!(s.public_origin.is_none() && s.trusted_proxies.is_empty());
        let s = parse(&format!(
            "{}\n[ui]\npublic_origin = \"https://Presence.Example.com/\"\n",
            GOOD.replace(
                "[http]",
                "[http]\ntrusted_proxies = [\"127.0.0.1\", \"::1\"]"
            )
        ))
        .unwrap();
        assert_eq!(
            s.trusted_proxies,
            [
                "127.0.0.1".parse::<std::net::IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert_eq!(
            s.public_origin,
            Some(crate::http::ui::PublicOrigin::parse("https://presence.example.com").unwrap())
        );
        for (text, key) in [
            (
                GOOD.replace("[http]", "[http]\ntrusted_proxies = [\"10.0.0.0/8\"]"),
                "http.trusted_proxies",
            ),
            (
                format!("{GOOD}\n[ui]\npublic_origin = \"https://p.example.com/status\"\n"),
                "ui.public_origin",
            ),
            (
                format!("{GOOD}\n[ui]\npublic_origin = \"ftp://p.example.com\"\n"),
                "ui.public_origin",
            ),
            (
                format!("{GOOD}\n[ui]\npublic_origin = \"p.example.com\"\n"),
                "ui.public_origin",
            ),
            (
                format!("{GOOD}\n[ui]\norigin = \"https://p\"\n"),
                "cannot load",
            ),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.starts_with(key), "expected {key}, got {e}");
        }
    }

    #[test]
    fn unknown_key_rejected() {
        let e = parse(&GOOD.replace("[http]", "[http]\nlisten_addr = \"x\"")).unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
    }

    #[test]
    fn bad_values_named() {
        let cases = [
            (GOOD.replace("status.example.com", "a@b"), "xmpp.component"),
            (GOOD.replace("[\"Example.COM\"]", "[]"), "xmpp.domains"),
            (GOOD.replace("secret = \"s3cret\"", ""), "xmpp.secret"),
            (GOOD.replace("api_keys = [\"k1\"]", ""), "http.api_keys"),
            (GOOD.replace("127.0.0.1:0", "nowhere"), "http.listen"),
            (
                format!("{GOOD}\n[status]\ndefault_priority = 0\n"),
                "status.default_priority",
            ),
            (
                GOOD.replace("domains", "backend = \"prosody\"\ndomains"),
                "cannot load",
            ),
            (
                format!("{GOOD}\n[tigase]\ntimeout_secs = 0\n"),
                "tigase.timeout_secs",
            ),
            (format!("{GOOD}\n[store]\npath = \"\"\n"), "store.path"),
        ];
        for (text, key) in cases {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.starts_with(key), "expected {key}, got {e}");
        }
    }
}
