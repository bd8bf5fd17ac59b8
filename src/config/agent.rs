//! `[agent]`: acting in users' names (the Waher Agent API calls).

use std::time::Duration;

use serde::Deserialize;

use crate::base::config_error::{invalid, ConfigError};

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

/// How long a subscription requested in a user's name is watched (1 minute to 30 days).
pub(super) fn validate(raw: &RawAgent) -> Result<Duration, ConfigError> {
    let watch_secs = raw.watch_secs;
    if !(60..=30 * 86_400).contains(&watch_secs) {
        return Err(invalid(
            "agent.watch_secs",
            format!("{watch_secs} is not between 60 and 2592000 (30 days)"),
        ));
    }
    Ok(Duration::from_secs(watch_secs))
}
