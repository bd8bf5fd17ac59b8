//! `[ui]`: the status page's public origin ([`PublicOrigin`]).

use serde::Deserialize;

use crate::base::config_error::{invalid, ConfigError};
use crate::http::ui::PublicOrigin;

/// `[ui]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawUi {
    /// The page's public origin (`https://presence.example.com`): requests to the page naming
    /// another host are refused, and sign-in and sign-out must come from it.
    pub public_origin: Option<String>,
}

/// The public origin, if one is given.
pub(super) fn validate(raw: RawUi) -> Result<Option<PublicOrigin>, ConfigError> {
    raw.public_origin
        .as_deref()
        .map(|o| PublicOrigin::parse(o).map_err(|e| invalid("ui.public_origin", e.to_string())))
        .transpose()
}
