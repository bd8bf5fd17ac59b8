//! `[tigase]`: Tigase session mode (`backend = "tigase"`).

use std::time::Duration;

use serde::Deserialize;

use crate::base::config_error::{invalid, ConfigError};

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

/// How long Tigase may take to answer a USER_STATUS command.
pub(super) fn validate(raw: &RawTigase) -> Result<Duration, ConfigError> {
    if raw.timeout_secs == 0 || raw.timeout_secs > 300 {
        return Err(invalid(
            "tigase.timeout_secs",
            format!("{} is not between 1 and 300", raw.timeout_secs),
        ));
    }
    Ok(Duration::from_secs(raw.timeout_secs))
}
