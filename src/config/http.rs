//! `[http]`: the listener (address, connection cap, timeouts, trusted proxies), the keys and
//! what each may do ([`Grant`]), and the rate limits ([`LimitSettings`]).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use jid::BareJid;
use serde::Deserialize;

use crate::access::limits::LimitSettings;
use crate::access::{Access, Grant, Scope};
use crate::base::config_error::{invalid, read_secret_file, ConfigError};
use crate::base::domain::normalize_domain;
use crate::base::secret::Secret;

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

fn default_listen() -> String {
    "127.0.0.1:8080".into()
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
fn default_max_connections() -> usize {
    1024
}
fn default_header_timeout() -> u64 {
    15
}
fn default_body_timeout() -> u64 {
    15
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
    #[serde(deserialize_with = "access")]
    pub access: Access,
    /// Shown in logs and metrics (never the key); default `key-<n>`.
    pub name: Option<String>,
}

fn access<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Access, D::Error> {
    super::load::one_of(
        d,
        &[
            ("read", Access::Read),
            ("write", Access::Write),
            ("read-write", Access::ReadWrite),
        ],
    )
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

/// `[http]` validated (see the fields of the same names in [`Settings`](super::Settings)).
pub(super) struct Http {
    pub listen: SocketAddr,
    pub keys: Vec<(Secret, Grant)>,
    pub limits: LimitSettings,
    pub max_connections: usize,
    pub trusted_proxies: Vec<IpAddr>,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

/// The listener, the keys (`domains`: the normalised `xmpp.domains`, which scopes must name)
/// and the limits.
pub(super) fn validate(h: RawHttp, domains: &BTreeSet<String>) -> Result<Http, ConfigError> {
    let listen: SocketAddr = h.listen.parse().map_err(|_| {
        invalid(
            "http.listen",
            format!("{:?} is not ip:port (e.g. \"127.0.0.1:8080\")", h.listen),
        )
    })?;
    let keys = keys(h.api_keys, &h.api_key_files, h.keys, domains)?;
    let nz = |key: &'static str, v: u32| {
        NonZeroU32::new(v).ok_or_else(|| invalid(key, "must be at least 1"))
    };
    let limits = LimitSettings {
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
            p.trim().parse::<IpAddr>().map_err(|_| {
                invalid(
                    "http.trusted_proxies",
                    format!("{p:?} is not an IP address (e.g. \"127.0.0.1\" or \"::1\")"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for (key, secs) in [
        ("http.header_timeout_secs", h.header_timeout_secs),
        ("http.body_timeout_secs", h.body_timeout_secs),
    ] {
        if secs == 0 || secs > 3600 {
            return Err(invalid(key, format!("{secs} is not between 1 and 3600")));
        }
    }
    Ok(Http {
        listen,
        keys,
        limits,
        max_connections: h.max_connections,
        trusted_proxies,
        header_timeout: Duration::from_secs(h.header_timeout_secs),
        body_timeout: Duration::from_secs(h.body_timeout_secs),
    })
}

/// Every accepted key with its grant: `api_keys` and `api_key_files` as admin read-write
/// (`api-key-<n>`), then each `[[http.keys]]` with its scope, right and name.
fn keys(
    mut api_keys: Vec<Secret>,
    api_key_files: &[PathBuf],
    raw: Vec<RawKey>,
    domains: &BTreeSet<String>,
) -> Result<Vec<(Secret, Grant)>, ConfigError> {
    for path in api_key_files {
        api_keys.push(read_secret_file("http.api_key_files", path)?);
    }
    if api_keys.iter().any(|k| k.expose().trim().is_empty()) {
        return Err(invalid("http.api_keys", "an API key is empty"));
    }
    let mut keys: Vec<(Secret, Grant)> = api_keys
        .into_iter()
        .enumerate()
        .map(|(i, k)| (k, Grant::admin(format!("api-key-{}", i + 1))))
        .collect();
    for (i, k) in raw.into_iter().enumerate() {
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
            RawScope::Word(w) if w == "admin" => Scope::Admin,
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
                Scope::Domains(set)
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
                Scope::User(jid)
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
            Grant {
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
    Ok(keys)
}
