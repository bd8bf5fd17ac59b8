//! `[matrix]`: the Matrix dialect's settings ([`MatrixSettings`], owned by `http/matrix.rs`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::base::config_error::{invalid, ConfigError};
use crate::base::domain::normalize_domain;
use crate::http::matrix::MatrixSettings;
use crate::model::Source;

/// `[matrix]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMatrix {
    /// The source Matrix writes as (default `matrix`).
    pub source: Option<String>,
    /// Matrix server name → XMPP domain.
    #[serde(default)]
    pub server_names: BTreeMap<String, String>,
}

/// The source Matrix writes as, and each server name's domain (`domains`: the normalised
/// `xmpp.domains`, which each must be one of).
pub(super) fn validate(
    m: RawMatrix,
    domains: &BTreeSet<String>,
) -> Result<MatrixSettings, ConfigError> {
    let source = Source::parse(m.source.as_deref().unwrap_or("matrix"))
        .map_err(|e| invalid("matrix.source", e.to_string()))?;
    let mut server_names = BTreeMap::new();
    for (server, domain) in m.server_names {
        let d = normalize_domain(&domain)
            .filter(|d| domains.contains(d))
            .ok_or_else(|| {
                invalid(
                    "matrix.server_names",
                    format!("{server:?} maps to {domain:?}, which is not one of xmpp.domains"),
                )
            })?;
        server_names.insert(server, d);
    }
    Ok(MatrixSettings {
        source,
        server_names,
    })
}
