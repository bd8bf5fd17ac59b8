//! API key checks.
//!
//! A key may come as `?api-key=`, an `Api-Key` header or `Authorization: Bearer`, exactly once: a
//! request that carries more than one of these (also the same one twice, also an empty one, also
//! an `Authorization` of another scheme beside a key) is refused with 400, so no credential can
//! hide another and no order of precedence needs remembering. Keys are compared in constant time:
//! both sides are hashed (SHA-1, so lengths do not leak) and compared with `subtle`, against every
//! configured key without an early exit.
//!
//! Failed authentications are limited per client address ([`FailedAuth`]), here, for every
//! dialect and the status page's sign-in form: a wrong key is charged to the address; an address
//! over its budget has every authentication answered 429 with `Retry-After` (in its dialect's
//! format) until it refills, and is logged once a minute in a line meant for fail2ban:
//! `too many failed authentications from <address>; …`. The client address is the peer's, or, when
//! the peer is one of `[http] trusted_proxies`, the last `X-Forwarded-For` entry (what the proxy
//! added); [`scope_client`] puts it where [`ApiKeys::check`] finds it ([`client`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::access::limits::{FailedAuth, Limits};
use crate::access::tokens::{self, Lifetime, Tokens};
use crate::access::Grant;
use crate::base::secret::Secret;

/// The configured keys, kept only as digests, each with what it may do.
#[derive(Clone)]
pub struct ApiKeys {
    digests: Vec<([u8; 20], Arc<Grant>)>,
    /// Per-user tokens minted at run time (`ept_…`).
    pub tokens: Arc<Tokens>,
    /// Token buckets per credential and global.
    pub limits: Arc<Limits>,
    /// Failed authentications per client address.
    pub failures: Arc<FailedAuth>,
    /// Peers whose `X-Forwarded-For`, `-Proto` and `-Host` are believed (`[http] trusted_proxies`).
    proxies: Arc<[IpAddr]>,
}

/// Where a request comes from, as far as the daemon can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The client's address: the peer's, or what a trusted proxy says.
    pub ip: IpAddr,
    /// Whether the client reached us over HTTPS (only a trusted proxy can say so: the daemon itself
    /// serves plain HTTP).
    pub https: bool,
    /// The host the client asked for, as a trusted proxy forwarded it (`X-Forwarded-Host`).
    pub forwarded_host: Option<String>,
}

tokio::task_local! {
    /// The client of the request being handled (set by [`scope_client`]).
    static CLIENT: Client;
}

/// The client of the request being handled, if the request came through the listener.
pub fn client() -> Option<Client> {
    CLIENT.try_with(Client::clone).ok()
}

/// Middleware: work out the request's [`Client`] and handle the request with it in scope.
pub async fn scope_client(State(keys): State<ApiKeys>, req: Request, next: Next) -> Response {
    let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() else {
        return next.run(req).await;
    };
    let client = keys.client_of(peer.ip(), req.headers());
    CLIENT.scope(client, next.run(req)).await
}

/// The last value of header `name` (the last of its comma-separated entries), trimmed.
fn last_forwarded(headers: &HeaderMap, name: &str) -> Option<String> {
    let v = headers.get_all(name).iter().next_back()?.to_str().ok()?;
    let last = v.rsplit(',').next()?.trim();
    (!last.is_empty()).then(|| last.to_string())
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys, MASKED)", self.digests.len())
    }
}

fn digest(s: &str) -> [u8; 20] {
    Sha1::digest(s.as_bytes()).into()
}

impl ApiKeys {
    /// Keep the digests of `keys` and their grants.
    pub fn new(keys: &[(Secret, Grant)], tokens: Arc<Tokens>, limits: Arc<Limits>) -> ApiKeys {
        ApiKeys {
            digests: keys
                .iter()
                .map(|(k, g)| (digest(k.expose()), Arc::new(g.clone())))
                .collect(),
            tokens,
            limits,
            failures: Arc::default(),
            proxies: Arc::from([]),
        }
    }

    /// Believe `X-Forwarded-For`, `-Proto` and `-Host` from these peers.
    pub fn with_trusted_proxies(mut self, proxies: &[IpAddr]) -> ApiKeys {
        self.proxies = proxies.into();
        self
    }

    /// The client of a request from `peer` with `headers`.
    pub fn client_of(&self, peer: IpAddr, headers: &HeaderMap) -> Client {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        if !self.proxies.contains(&peer) {
            return Client {
                ip: peer,
                https: false,
                forwarded_host: None,
            };
        }
        Client {
            ip: last_forwarded(headers, "x-forwarded-for")
                .and_then(|a| a.parse().ok())
                .unwrap_or(peer),
            https: last_forwarded(headers, "x-forwarded-proto")
                .is_some_and(|p| p.eq_ignore_ascii_case("https")),
            forwarded_host: last_forwarded(headers, "x-forwarded-host"),
        }
    }

    /// The grant of `key` for the request being handled, with the failed-authentication limit of
    /// its client: refused with 429 while the client's budget is spent (before the key is looked
    /// at), and a wrong key charged to it.
    pub fn authenticate(&self, key: &str) -> Result<Arc<Grant>, ApiError> {
        let client = client();
        let now = Instant::now();
        if let Some(c) = &client {
            if let Some(refusal) = self.failures.refused(c.ip, now) {
                if refusal.log {
                    tracing::warn!(
                        client = %c.ip,
                        "too many failed authentications from {}; its attempts are refused for {} s",
                        c.ip,
                        refusal.wait.as_secs().max(1)
                    );
                }
                return Err(ApiError::RateLimited(refusal.wait));
            }
        }
        match self.grant(key) {
            Some(g) => Ok(g),
            None => {
                if let Some(c) = &client {
                    self.failures.failed(c.ip, now);
                }
                Err(ApiError::WrongKey { plus_hint: false })
            }
        }
    }

    /// The grant of `given`, if it is one of the keys (constant time in the key's content: every
    /// key is compared, without an early exit).
    pub fn grant(&self, given: &str) -> Option<Arc<Grant>> {
        if given.starts_with(tokens::PREFIX) {
            return self.tokens.grant(given);
        }
        let d = digest(given);
        let mut found = None;
        for (k, g) in &self.digests {
            if bool::from(k.ct_eq(&d)) {
                found = Some(g.clone());
            }
        }
        found
    }

    /// How long `grant` (as [`grant`](Self::grant) or [`check`](Self::check) gave it) stays
    /// good for an open event stream: a configured key's for the process's life, a token's until
    /// it is revoked or expires.
    pub fn lifetime(&self, grant: &Arc<Grant>) -> Lifetime {
        if self.digests.iter().any(|(_, g)| Arc::ptr_eq(g, grant)) {
            return Lifetime::default();
        }
        self.tokens.lifetime(grant).unwrap_or_default()
    }

    /// Check the request's key: 401 when none is given, 400 when more than one credential is
    /// given, 403 when it is wrong.
    pub fn check(&self, query: Option<&str>, headers: &HeaderMap) -> Result<Arc<Grant>, ApiError> {
        let from_query = query
            .into_iter()
            .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
            .filter(|(k, _)| k == "api-key")
            .map(|(_, v)| Some(v.into_owned()));
        let from_header = headers
            .get_all("api-key")
            .into_iter()
            .map(|v| Some(String::from_utf8_lossy(v.as_bytes()).into_owned()));
        // Any Authorization counts as a credential; only a Bearer one carries a key.
        let from_authorization = headers
            .get_all(axum::http::header::AUTHORIZATION)
            .into_iter()
            .map(|v| {
                let v = String::from_utf8_lossy(v.as_bytes());
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_string())
            });
        let mut given = from_query.chain(from_header).chain(from_authorization);
        let first = given.next();
        let more = given.count();
        if more > 0 {
            return Err(ApiError::AmbiguousCredentials(more + 1));
        }
        match first.flatten() {
            None => Err(ApiError::MissingKey),
            Some(k) if k.is_empty() => Err(ApiError::MissingKey),
            Some(k) => {
                let grant = self.authenticate(&k).map_err(|e| match e {
                    // The only credential, so the query's if the query has one.
                    ApiError::WrongKey { .. } if k.contains(' ') && in_query(query) => {
                        ApiError::WrongKey { plus_hint: true }
                    }
                    e => e,
                })?;
                // Before the body is read or anything is stored.
                self.limits
                    .check(&grant.name)
                    .map_err(ApiError::RateLimited)?;
                Ok(grant)
            }
        }
    }
}

/// Whether the query carries `api-key`.
fn in_query(query: Option<&str>) -> bool {
    query.is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "api-key"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn sources_and_outcomes() {
        let keys = ApiKeys::new(
            &[
                (Secret::new("k1"), Grant::admin("one")),
                (Secret::new("second key"), Grant::admin("two")),
            ],
            Arc::new(Tokens::load(None)),
            Arc::new(Limits::new(Default::default())),
        );
        assert_eq!(&*keys.grant("second key").unwrap().name, "two");
        assert!(keys.grant("second").is_none());
        let none = HeaderMap::new();
        assert!(keys.check(Some("api-key=k1"), &none).is_ok());
        assert!(keys.check(Some("x=1&api-key=second%20key"), &none).is_ok());
        assert!(matches!(
            keys.check(Some("api-key=k2"), &none),
            Err(ApiError::WrongKey { plus_hint: false })
        ));
        // A '+' in a query is a space: a key that then has one is told how to encode it.
        let plus = ApiKeys::new(
            &[(Secret::new("a+b/c="), Grant::admin("b64"))],
            Arc::new(Tokens::load(None)),
            Arc::new(Limits::new(Default::default())),
        );
        assert!(plus.check(Some("api-key=a%2Bb%2Fc%3D"), &none).is_ok());
        assert!(plus.check(Some("api-key=a%2Bb/c="), &none).is_ok());
        let e = plus.check(Some("api-key=a+b/c="), &none).unwrap_err();
        assert!(matches!(e, ApiError::WrongKey { plus_hint: true }), "{e:?}");
        assert_eq!(e.code(), "invalid_api_key");
        assert!(
            e.to_string()
                .ends_with("a '+' in a query must be percent-encoded as %2B"),
            "{e}"
        );
        let mut h = HeaderMap::new();
        h.insert("Api-Key", HeaderValue::from_static("a b"));
        assert!(matches!(
            plus.check(None, &h),
            Err(ApiError::WrongKey { plus_hint: false })
        ));
        assert!(matches!(keys.check(None, &none), Err(ApiError::MissingKey)));
        let mut h = HeaderMap::new();
        h.insert("Api-Key", HeaderValue::from_static("k1"));
        assert!(keys.check(None, &h).is_ok());
        let mut h = HeaderMap::new();
        h.insert(
            "Authorization",
            HeaderValue::from_static("Bearer second key"),
        );
        assert!(keys.check(None, &h).is_ok());
        h.insert("Authorization", HeaderValue::from_static("Basic azE="));
        assert!(matches!(keys.check(None, &h), Err(ApiError::MissingKey)));
        assert!(!format!("{keys:?}").contains("k1"));
        // More than one credential, whatever they hold: 400, none is taken.
        let mut both = HeaderMap::new();
        both.insert("Api-Key", HeaderValue::from_static("k1"));
        for (query, headers) in [
            (Some("api-key=&api-key=k1"), &none),
            (Some("api-key=k1"), &both),
            (Some("api-key="), &both),
            (None, &{
                let mut h = both.clone();
                h.insert("Authorization", HeaderValue::from_static("Basic azE="));
                h
            }),
            (None, &{
                let mut h = both.clone();
                h.append("Api-Key", HeaderValue::from_static("k1"));
                h
            }),
        ] {
            assert!(
                matches!(
                    keys.check(query, headers),
                    Err(ApiError::AmbiguousCredentials(2))
                ),
                "{query:?} {headers:?}"
            );
        }
    }
}
