//! Reading the configuration so that every mistake names where it is: the file and line, or the
//! environment variable; and the setting, with the values it accepts.
//!
//! Two passes, because the `config` crate that merges the file with the `EXTPRESENCE__SECTION__KEY`
//! variables converts types leniently: with `try_parsing` (which environment variables need, being
//! strings by nature: `EXTPRESENCE__XMPP__KEEPALIVE_SECS=30` must be a number) it also turns a
//! TOML string into a number, so `keepalive_secs = "30"` in the file passed silently, and its
//! errors name neither the variable nor the file line.
//! 1. The file on its own, strictly: `toml` deserializes it into [`RawConfig`] (a string where a
//!    number is expected is refused; serde_path_to_error gives the setting's path, the span its
//!    line).
//! 2. Then each variable on its own over the file, through the `config` crate as before (so the
//!    variables keep parsing as numbers, lists, …): the first one that does not fit is named.
//!    Then all of them together, and [`validate`](super::validate): a value refused there is
//!    blamed on its variable when one sets it, else on the file.
//!
//! Enum settings (`xmpp.backend`, `status.on_shutdown`, `http.keys[].access`) are read with
//! [`one_of`], whose message lists the valid values whichever source gave the wrong one.

use std::path::Path;

use serde::de::{Deserialize, Deserializer, Error as _};

use super::{validate, RawConfig, Settings};
use crate::base::config_error::ConfigError;

/// What every override variable starts with (`EXTPRESENCE__XMPP__SECRET`). The client's
/// `EXTPRESENCE_URL`, `EXTPRESENCE_KEY` and `EXTPRESENCE_KEY_FILE` (one underscore) are not
/// overrides.
pub const ENV_PREFIX: &str = "EXTPRESENCE__";

/// Load `path` with the environment's overrides (`EXTPRESENCE__XMPP__SECRET=…`) and validate it.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConfigError::Load(format!(
                "configuration file {} does not exist",
                path.display()
            )))
        }
        Err(e) => {
            return Err(ConfigError::Load(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if !name.starts_with(ENV_PREFIX) {
            continue;
        }
        match value.into_string() {
            Ok(v) => vars.push((name, v)),
            Err(_) => {
                return Err(ConfigError::Env {
                    var: name,
                    message: "the value is not valid UTF-8".into(),
                })
            }
        }
    }
    from_text(&path.display().to_string(), &text, &vars)
}

/// [`load`] with the file's text and the override variables given: `origin` names the file in
/// errors.
pub fn from_text(
    origin: &str,
    text: &str,
    vars: &[(String, String)],
) -> Result<Settings, ConfigError> {
    strict(origin, text)?;
    let mut vars = vars.to_vec();
    vars.sort();
    for var in &vars {
        match merged(text, std::slice::from_ref(var)) {
            // A setting given by another variable only: the pass with all of them decides.
            Err(e) if is_missing_field(&e.to_string()) => {}
            Err(e) => {
                return Err(ConfigError::Env {
                    var: var.0.clone(),
                    message: describe_config_error(&var.0, &e),
                })
            }
            Ok(_) => {}
        }
    }
    let raw = merged(text, &vars).map_err(|e| ConfigError::Load(e.to_string()))?;
    validate(raw).map_err(|e| match e {
        ConfigError::Invalid { key, .. } => {
            let var = env_name(key);
            if vars.iter().any(|(name, _)| *name == var) {
                ConfigError::Env {
                    var,
                    message: e.to_string(),
                }
            } else {
                ConfigError::File {
                    path: origin.to_string(),
                    message: e.to_string(),
                }
            }
        }
        other => other,
    })
}

/// The variable that overrides `key` (`xmpp.keepalive_secs` → `EXTPRESENCE__XMPP__KEEPALIVE_SECS`).
pub fn env_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.to_ascii_uppercase().replace('.', "__")
    )
}

/// Pass 1: the file alone, with TOML's own types.
fn strict(origin: &str, text: &str) -> Result<(), ConfigError> {
    let file_error = |message: String| ConfigError::File {
        path: origin.to_string(),
        message,
    };
    // Not the error's Display: it quotes the offending line, which may hold a secret (an
    // unterminated string or a bad escape in `secret = "…"`).
    let de = toml::Deserializer::parse(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        file_error(match line {
            Some(n) => format!("line {n}: {}", e.message()),
            None => e.message().to_string(),
        })
    })?;
    match serde_path_to_error::deserialize::<_, RawConfig>(de) {
        Ok(_) => Ok(()),
        // A required setting the file leaves to the environment: the merged pass decides.
        Err(e) if is_missing_field(e.inner().message()) => Ok(()),
        Err(e) => {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            let detail = describe(&key, inner.message(), false);
            Err(file_error(match line {
                Some(n) => format!("line {n}: {key}: {detail}"),
                None => format!("{key}: {detail}"),
            }))
        }
    }
}

/// Whether a serde message says a required setting is absent (it may come from a variable).
fn is_missing_field(message: &str) -> bool {
    // serde's wording, and the `config` crate's.
    message.contains("missing field") || message.contains("missing configuration field")
}

/// Pass 2: the file with `vars` over it, through the `config` crate.
fn merged(text: &str, vars: &[(String, String)]) -> Result<RawConfig, config::ConfigError> {
    let env = config::Environment::with_prefix("EXTPRESENCE")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .with_list_parse_key("xmpp.domains")
        .with_list_parse_key("http.api_keys")
        .with_list_parse_key("http.api_key_files")
        .source(Some(vars.iter().cloned().collect()));
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(env)
        .build()
        .and_then(|c| c.try_deserialize())
}

/// A `config` crate error about `var`, without its own "for key … in the environment" tail.
fn describe_config_error(var: &str, e: &config::ConfigError) -> String {
    let setting = var
        .strip_prefix(ENV_PREFIX)
        .unwrap_or(var)
        .to_ascii_lowercase()
        .replace("__", ".");
    match e {
        config::ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!(
            "{setting}: {}",
            describe(
                &setting,
                &format!("invalid type: {unexpected}, expected {expected}"),
                true
            )
        ),
        config::ConfigError::At { error, .. } => describe_config_error(var, error),
        config::ConfigError::Message(m) => format!("{setting}: {}", describe(&setting, m, true)),
        other => format!("{setting}: {other}"),
    }
}

/// A serde message made plain: a quoted number is named as such, and the value of a secret
/// setting is never repeated.
fn describe(key: &str, message: &str, from_env: bool) -> String {
    if let Some(rest) = message.strip_prefix("unknown field ") {
        let (field, valid) = rest.split_once(", expected ").unwrap_or((rest, "none"));
        let valid = valid.strip_prefix("one of ").unwrap_or(valid);
        return format!("there is no setting {field} (the settings here: {valid})");
    }
    let Some((unexpected, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|m| m.split_once(", expected "))
    else {
        return message.to_string();
    };
    let secret = ["secret", "key", "token"].iter().any(|s| key.contains(s));
    let shown = if secret {
        unexpected.split(' ').next().unwrap_or("value")
    } else {
        unexpected
    };
    let numeric = expected.contains("integer")
        || expected.contains("float")
        || expected.contains("number")
        || ["u8", "u16", "u32", "u64", "usize", "i32", "i64", "f64"].contains(&expected);
    let field = key.rsplit('.').next().unwrap_or(key);
    if unexpected.starts_with("string") && numeric && from_env {
        format!(
            "a number is expected, not {}",
            &unexpected["string ".len()..]
        )
    } else if unexpected.starts_with("string") && numeric && !secret {
        let value = unexpected.strip_prefix("string ").unwrap_or_default();
        format!(
            "a number is expected, not the {unexpected}: write it without quotes ({field} = {})",
            value.trim_matches('"')
        )
    } else if unexpected.starts_with("string") && expected.contains("bool") {
        format!("true or false is expected, not the {shown}: write it without quotes")
    } else {
        format!("{expected} is expected, not {shown}")
    }
}

/// Read an enum setting from its name, refusing others with the list of the valid ones.
pub(super) fn one_of<'de, D: Deserializer<'de>, T: Copy>(
    d: D,
    choices: &[(&str, T)],
) -> Result<T, D::Error> {
    let given = String::deserialize(d)?;
    choices
        .iter()
        .find(|(name, _)| *name == given)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let valid: Vec<String> = choices.iter().map(|(n, _)| format!("{n:?}")).collect();
            D::Error::custom(format!(
                "{given:?} is not a valid value: use one of {}",
                valid.join(", ")
            ))
        })
}
