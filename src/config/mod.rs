//! Typed settings: the file's sections assembled into [`Settings`], each validated on its own.
//!
//! This module owns the configuration as a whole: the TOML file layout ([`RawConfig`]: `[xmpp]`,
//! `[status]`, `[http]`, `[tigase]`, …), environment overrides (`EXTPRESENCE__SECTION__KEY`),
//! rejection of unknown keys and of mistyped values (`load.rs`: errors name the file line or the
//! variable), and [`validate`], which hands each section to its own validation
//! and assembles what they return, with messages an admin understands. One file per section:
//! `xmpp.rs`, `status.rs`, `http.rs` (listener, keys, limits), `ui.rs`, `tigase.rs`, `store.rs`,
//! `ejabberd.rs` (`[ejabberd]` and the older `[observe]`), `log.rs`, `agent.rs`, `matrix.rs`;
//! `[[webhooks]]` is validated by `webhooks/` itself. The types a section turns into belong to
//! the modules that use them ([`StatusPolicy`], [`Grant`], [`LimitSettings`], [`MatrixSettings`],
//! [`PublicOrigin`], [`WebhookSettings`]); the error every section returns ([`ConfigError`]) and
//! the secret-file reader are on the ground floor (`base/config_error.rs`), so that no module
//! below imports this one. Secrets are wrapped in [`Secret`], whose `Debug` never shows the value.

mod agent;
mod ejabberd;
mod http;
mod load;
mod log;
mod matrix;
mod status;
mod store;
mod tigase;
mod ui;
mod xmpp;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use jid::BareJid;
use serde::Deserialize;

use crate::access::limits::LimitSettings;
use crate::access::Grant;
pub use crate::base::config_error::ConfigError;
use crate::base::secret::Secret;
use crate::http::matrix::MatrixSettings;
use crate::http::ui::PublicOrigin;
use crate::model::StatusPolicy;
use crate::webhooks::{RawWebhook, WebhookSettings};
pub use agent::RawAgent;
pub use ejabberd::{RawEjabberd, RawObserve};
pub use http::{RawHttp, RawKey, RawScope};
pub use load::{env_name, from_text, load, ENV_PREFIX};
pub use log::RawLog;
pub use matrix::RawMatrix;
pub use status::{OnShutdown, RawStatus};
pub use store::RawStore;
pub use tigase::RawTigase;
pub use ui::RawUi;
pub use xmpp::{BackendKind, RawXmpp};

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
    pub webhooks: Vec<RawWebhook>,
    /// The status page.
    #[serde(default)]
    pub ui: RawUi,
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
    pub keys: Vec<(Secret, Grant)>,
    /// Rate limits.
    pub limits: LimitSettings,
    /// The Matrix dialect.
    pub matrix: MatrixSettings,
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
    pub webhooks: Vec<WebhookSettings>,
    /// Reverse proxies whose forwarded headers are believed (`[http] trusted_proxies`).
    pub trusted_proxies: Vec<IpAddr>,
    /// The status page's public origin (`[ui] public_origin`).
    pub public_origin: Option<PublicOrigin>,
}

impl Settings {
    /// The component link's settings (the first served domain answers the keepalive pings).
    pub fn link_config(
        &self,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
        health: crate::base::health::Health,
    ) -> crate::xmpp::LinkConfig {
        crate::xmpp::LinkConfig {
            component: self.component.clone(),
            server: self.server.clone(),
            secret: self.secret.clone(),
            keepalive: self.keepalive,
            write_timeout: self.write_timeout,
            reconnect_max: self.reconnect_max,
            ping_to: self.first_domain().into(),
            metrics,
            health,
        }
    }

    /// The first served domain (validated: there is one).
    pub fn first_domain(&self) -> BareJid {
        BareJid::new(
            self.domains
                .iter()
                .next()
                .expect("validated: at least one domain"),
        )
        .expect("validated domain")
    }
}

/// Turn raw values into [`Settings`], or say what is wrong: each section in turn, the first
/// error found is the answer.
pub fn validate(raw: RawConfig) -> Result<Settings, ConfigError> {
    let x = xmpp::validate(raw.xmpp)?;
    let tigase_timeout = tigase::validate(&raw.tigase)?;
    let (policy, on_shutdown) = status::validate(raw.status)?;
    let h = http::validate(raw.http, &x.domains)?;
    let public_origin = ui::validate(raw.ui)?;
    let store_path = store::validate(raw.store)?;
    let ejabberd_api = ejabberd::validate(raw.observe, raw.ejabberd)?;
    let log_json = log::validate(&raw.log)?;
    let agent_watch = agent::validate(&raw.agent)?;
    let webhooks = crate::webhooks::validate(raw.webhooks, &x.domains)?;
    let matrix = matrix::validate(raw.matrix, &x.domains)?;

    Ok(Settings {
        trusted_proxies: h.trusted_proxies,
        public_origin,
        webhooks,
        ejabberd_api,
        agent_watch,
        log_json,
        component: x.component,
        server: x.server,
        secret: x.secret,
        domains: x.domains,
        backend: x.backend,
        tigase_timeout,
        keepalive: x.keepalive,
        write_timeout: x.write_timeout,
        reconnect_max: x.reconnect_max,
        policy,
        listen: h.listen,
        keys: h.keys,
        limits: h.limits,
        matrix,
        max_connections: h.max_connections,
        header_timeout: h.header_timeout,
        body_timeout: h.body_timeout,
        store_path,
        on_shutdown,
    })
}

#[cfg(test)]
mod tests;
