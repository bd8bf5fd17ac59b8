//! `[status]`: the defaults and limits of a status ([`StatusPolicy`]), and what contacts see
//! when extpresence stops.

use jid::ResourcePart;
use serde::Deserialize;

use crate::base::config_error::{invalid, ConfigError};
use crate::model::StatusPolicy;

/// What to do with held statuses when extpresence stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnShutdown {
    /// Send `unavailable` for every held resource (contacts see them go).
    #[default]
    Unavailable,
    /// Send nothing: contacts keep seeing the statuses during a quick restart, and the replay
    /// after it fixes anything that changed.
    Keep,
}

/// `[status]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatus {
    /// Resource used when the request names none.
    #[serde(default = "default_resource")]
    pub default_resource: String,
    /// Priority used when the request names none.
    #[serde(default = "default_priority")]
    pub default_priority: i64,
    /// Whether requests may set a priority of 0 or more (then the synthetic resource may receive messages).
    #[serde(default)]
    pub allow_non_negative_priority: bool,
    /// What contacts see when extpresence stops.
    #[serde(default, deserialize_with = "on_shutdown")]
    pub on_shutdown: OnShutdown,
}

fn on_shutdown<'de, D: serde::Deserializer<'de>>(d: D) -> Result<OnShutdown, D::Error> {
    super::load::one_of(
        d,
        &[
            ("unavailable", OnShutdown::Unavailable),
            ("keep", OnShutdown::Keep),
        ],
    )
}

impl Default for RawStatus {
    fn default() -> Self {
        RawStatus {
            default_resource: default_resource(),
            default_priority: default_priority(),
            allow_non_negative_priority: false,
            on_shutdown: OnShutdown::default(),
        }
    }
}

fn default_resource() -> String {
    "tigase-external".into()
}
fn default_priority() -> i64 {
    -1
}

/// The default resource and priority (negative unless allowed otherwise), and `on_shutdown`.
pub(super) fn validate(s: RawStatus) -> Result<(StatusPolicy, OnShutdown), ConfigError> {
    let default_resource = ResourcePart::new(&s.default_resource)
        .map_err(|e| {
            invalid(
                "status.default_resource",
                format!("{:?} is not a valid resource: {e}", s.default_resource),
            )
        })?
        .into_owned();
    let default_priority = i8::try_from(s.default_priority).map_err(|_| {
        invalid(
            "status.default_priority",
            format!("{} is outside -128..127", s.default_priority),
        )
    })?;
    if default_priority >= 0 && !s.allow_non_negative_priority {
        return Err(invalid(
            "status.default_priority",
            "must be negative (a synthetic resource with priority >= 0 would receive messages); \
             set allow_non_negative_priority = true if you really want that",
        ));
    }
    let policy = StatusPolicy {
        default_resource,
        default_priority,
        allow_non_negative_priority: s.allow_non_negative_priority,
    };
    Ok((policy, s.on_shutdown))
}
