//! The ground floor: helpers every layer may use, importing nothing of ours.
//!
//! - `clock.rs`: [`now_ms`](clock::now_ms) and [`rfc3339`](clock::rfc3339);
//! - `domain.rs`: [`normalize_domain`](domain::normalize_domain), for every domain configured or
//!   asked for;
//! - `escape.rs`: [`Escaped`](escape::Escaped), outside text as it may reach the log;
//! - `secret.rs`: [`Secret`](secret::Secret), which prints as `MASKED`.

pub mod clock;
pub mod domain;
pub mod escape;
pub mod secret;
