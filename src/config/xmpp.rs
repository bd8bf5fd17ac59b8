//! `[xmpp]`: the XEP-0114 link (where, with which secret, how it is kept alive) and the user
//! domains we serve.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use jid::BareJid;
use serde::Deserialize;

use crate::base::config_error::{invalid, read_secret_file, ConfigError};
use crate::base::domain::normalize_domain;
use crate::base::secret::Secret;

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
    #[serde(default, deserialize_with = "backend")]
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

fn backend<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BackendKind, D::Error> {
    super::load::one_of(
        d,
        &[
            ("fanout", BackendKind::Fanout),
            ("tigase", BackendKind::Tigase),
        ],
    )
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

/// `[xmpp]` validated (see the fields of the same names in [`Settings`](super::Settings)).
pub(super) struct Xmpp {
    pub component: BareJid,
    pub server: String,
    pub secret: Secret,
    pub domains: BTreeSet<String>,
    pub backend: BackendKind,
    pub keepalive: Duration,
    pub write_timeout: Duration,
    pub reconnect_max: Duration,
}

/// The component, its server and secret, the served domains (normalised), the link's timing.
pub(super) fn validate(x: RawXmpp) -> Result<Xmpp, ConfigError> {
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
    Ok(Xmpp {
        component,
        server: x.server,
        secret,
        domains,
        backend: x.backend,
        keepalive: Duration::from_secs(x.keepalive_secs),
        write_timeout: Duration::from_secs(x.write_timeout_secs),
        reconnect_max: Duration::from_secs(x.reconnect_max_secs),
    })
}
