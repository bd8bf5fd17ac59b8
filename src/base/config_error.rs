//! What every settings section's validation shares, wherever the section lives: the error
//! ([`ConfigError`], each message naming the key and the fix), [`invalid`] to build one, and
//! [`read_secret_file`] for the `*_file` keys that hold a secret.
//!
//! It sits on the ground floor so that a module validating its own section (`webhooks/`) and
//! `config/` assembling them all use one error without importing each other.

use std::path::Path;

use super::secret::Secret;

/// Why a configuration was refused; every message names the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot load configuration: {0}")]
    Load(String),
    /// The file is wrong: unknown keys, a value of the wrong type, or a value refused.
    #[error("in {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// Where (line, setting) and what is wrong.
        message: String,
    },
    /// An override variable is wrong: an unknown setting, or a value of the wrong type or refused.
    #[error("in the environment variable {var}: {message}")]
    Env {
        /// The variable, e.g. `EXTPRESENCE__HTTP__LISTEN`.
        var: String,
        /// The setting and what is wrong.
        message: String,
    },
    /// A value is wrong.
    #[error("{key}: {message}")]
    Invalid {
        /// The offending key, e.g. `xmpp.component`.
        key: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// A [`ConfigError::Invalid`] for `key`.
pub fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// The secret in the first line of `path` (trimmed); `key` names the setting in the error.
pub fn read_secret_file(key: &'static str, path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let value = text.lines().next().unwrap_or("").trim().to_string();
    if value.is_empty() {
        return Err(invalid(key, format!("{} is empty", path.display())));
    }
    Ok(Secret::new(value))
}
