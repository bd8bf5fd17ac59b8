//! Validation at the boundary that every dialect shares: user JIDs in paths, served domains, and
//! request bodies read with a size and a time limit.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use jid::{BareJid, Jid};

use super::error::ApiError;

/// Parse the `{user-jid}` path segment: a user JID (`user@domain`, optionally with a resource).
pub fn parse_user(raw: &str) -> Result<(BareJid, Option<String>), ApiError> {
    let bad = || ApiError::Jid(raw.chars().take(128).collect());
    if raw.chars().any(char::is_control) {
        return Err(bad());
    }
    let jid = Jid::new(raw).map_err(|_| bad())?;
    if jid.node().is_none() {
        return Err(bad());
    }
    let resource = jid.resource().map(|r| r.as_str().to_string());
    Ok((jid.to_bare(), resource))
}

/// A user JID of a served domain, without resource (the native API names resources elsewhere).
pub fn served_user(raw: &str, domains: &BTreeSet<String>) -> Result<BareJid, ApiError> {
    let (user, resource) = parse_user(raw).map_err(|e| {
        // `user@domain` whose domain does not parse (e.g. a label IDNA refuses, `ab--c`) names
        // no served domain either: 403 as for any domain not served (the document's pattern
        // allows such a domain, so a 400 would contradict it).
        match raw.split_once('@') {
            Some((_, d)) if !d.contains(['@', '/']) && !domains.contains(&d.to_lowercase()) => {
                ApiError::Domain(d.chars().take(128).collect())
            }
            _ => e,
        }
    })?;
    if resource.is_some() {
        return Err(ApiError::Jid(raw.chars().take(128).collect()));
    }
    if !domains.contains(user.domain().as_str()) {
        return Err(ApiError::Domain(user.domain().as_str().to_string()));
    }
    Ok(user)
}

/// Read a request body of at most `limit` bytes (413 beyond, whether or not Content-Length says
/// so) within `within` (408 after).
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    within: Duration,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge(limit));
    }
    tokio::time::timeout(within, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| ApiError::BodyTimeout(within))?
        .map_err(|e| {
            // `to_bytes` reports the limit as a length error somewhere in the source chain.
            let mut src: Option<&dyn std::error::Error> = Some(&e);
            while let Some(s) = src {
                if s.is::<http_body_util::LengthLimitError>() {
                    return ApiError::TooLarge(limit);
                }
                src = s.source();
            }
            ApiError::BodyRead(e.to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users() {
        let (u, r) = parse_user("Alice@Example.COM").unwrap();
        assert_eq!((u.as_str(), r), ("alice@example.com", None));
        let (_, r) = parse_user("alice@example.com/phone").unwrap();
        assert_eq!(r.as_deref(), Some("phone"));
        for bad in [
            "example.com",
            "@example.com",
            "a@b@c",
            "",
            "al\u{1}ice@example.com",
        ] {
            assert!(parse_user(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn served_users() {
        let domains = BTreeSet::from(["example.com".to_string()]);
        assert!(served_user("alice@example.com", &domains).is_ok());
        assert!(matches!(
            served_user("alice@example.org", &domains),
            Err(ApiError::Domain(_))
        ));
        assert!(matches!(
            served_user("alice@example.com/phone", &domains),
            Err(ApiError::Jid(_))
        ));
    }
}
