//! `[store]`: the durable status store's file.

use std::path::PathBuf;

use serde::Deserialize;

use crate::base::config_error::{invalid, ConfigError};

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

/// The store file (a path must be given).
pub(super) fn validate(raw: RawStore) -> Result<PathBuf, ConfigError> {
    if raw.path.as_os_str().is_empty() {
        return Err(invalid("store.path", "must name the status store file"));
    }
    Ok(raw.path)
}
