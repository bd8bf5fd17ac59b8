//! `[ejabberd]` and its older place `[observe]`: ejabberd's admin API (mod_http_api) and how
//! often it is asked.

use std::time::Duration;

use serde::Deserialize;

use crate::base::config_error::{invalid, ConfigError};

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

/// The API's base URL and poll interval, if configured under either name (not both).
pub(super) fn validate(
    o: RawObserve,
    e: RawEjabberd,
) -> Result<Option<(reqwest::Url, Duration)>, ConfigError> {
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
    let Some(url) = o.ejabberd_api.or(e.api_url) else {
        return Ok(None);
    };
    let parsed = reqwest::Url::parse(&url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| {
            invalid(
                url_key,
                format!("{url:?} is not an http(s) URL (e.g. \"http://127.0.0.1:5281/api\")"),
            )
        })?;
    if poll_secs == 0 || poll_secs > 3600 {
        return Err(invalid(
            poll_key,
            format!("{poll_secs} is not between 1 and 3600"),
        ));
    }
    Ok(Some((parsed, Duration::from_secs(poll_secs))))
}
