//! `[log]`: the log line format.

use serde::Deserialize;

use crate::base::config_error::{invalid, ConfigError};

/// `[log]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `text` (default) or `json` (one JSON object per line, with the span fields).
    pub format: Option<String>,
}

/// Whether log lines are JSON objects (else text).
pub(super) fn validate(raw: &RawLog) -> Result<bool, ConfigError> {
    match raw.format.as_deref().map(str::trim) {
        None | Some("text") => Ok(false),
        Some("json") => Ok(true),
        Some(other) => Err(invalid(
            "log.format",
            format!("{other:?} is not \"text\" or \"json\""),
        )),
    }
}
