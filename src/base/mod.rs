//! The ground floor: helpers every layer may use, importing nothing of ours.
//!
//! - `clock.rs`: [`now_ms`](clock::now_ms) and [`rfc3339`](clock::rfc3339);
//! - `config_error.rs`: [`ConfigError`](config_error::ConfigError), what every settings section's
//!   validation returns, and [`read_secret_file`](config_error::read_secret_file);
//! - `domain.rs`: [`normalize_domain`](domain::normalize_domain), for every domain configured or
//!   asked for;
//! - `exposition.rs`: writing scrape-time values as Prometheus series (for `metrics/` and
//!   `webhooks/`);
//! - `health.rs`: [`Health`](health::Health), what delivery depends on (the link, each served
//!   domain's privileges) as the parts that know it report it;
//! - `escape.rs`: [`Escaped`](escape::Escaped), outside text as it may reach the log;
//! - `secret.rs`: [`Secret`](secret::Secret), which prints as `MASKED`.

pub mod clock;
pub mod config_error;
pub mod domain;
pub mod escape;
pub mod exposition;
pub mod health;
pub mod secret;
