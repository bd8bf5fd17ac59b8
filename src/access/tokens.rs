//! Per-user API tokens, minted at run time by an admin credential.
//!
//! A token is `ept_<id>.<secret>`: the id (12 hex digits) is public and names the token in lists
//! and in `DELETE /v1/tokens/{id}`; the secret is 32 random bytes (256 bits, base64url) that only
//! the caller of `POST /v1/tokens` ever sees. The durable store keeps the SHA-256 of the secret
//! with the token's user, access, name and expiry (table `tokens`), so tokens survive restarts
//! and a copy of the store reveals none. A token is checked by its id, then its secret's digest
//! compared in constant time; an expired token is refused; a revoked one is refused at once (it
//! leaves memory before the store has removed it). A request still being answered with a token
//! (an event stream) ends when the token is revoked or expires ([`Lifetime`]).
//!
//! At most [`MAX_TOKENS`] are held. Expired tokens do not count: they are purged (from memory
//! and the store) when the cap is reached and at most once a minute while tokens are minted, so
//! short-lived tokens never fill the cap. A mint over the cap is refused ([`MintError::Full`],
//! `409 too_many_tokens`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use jid::BareJid;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{Access, Grant, Scope};
use crate::base::clock::now_ms;
use crate::store::{Side, Store, StoreError, Write};

/// What every token starts with (so a token is never mistaken for a configured key).
pub const PREFIX: &str = "ept_";
/// Most live tokens held at once.
pub const MAX_TOKENS: usize = 100_000;
/// Expired tokens are purged at most this often while tokens are minted (and always when the
/// cap is reached).
const PURGE_EVERY_MS: u64 = 60_000;

/// What a token is, as listed (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    /// The public id.
    pub id: String,
    /// The user it acts for.
    pub user: String,
    /// `read`, `write` or `read-write`.
    pub access: String,
    /// A name for people.
    pub name: Option<String>,
    /// When it was minted (ms since the Unix epoch).
    pub created_at: u64,
    /// When it stops working (ms since the Unix epoch), if ever.
    pub expires_at: Option<u64>,
}

/// As stored: the info and the secret's digest.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    info: TokenInfo,
    /// Hex SHA-256 of the secret.
    sha256: String,
}

struct Entry {
    digest: [u8; 32],
    grant: Arc<Grant>,
    info: TokenInfo,
    /// Cancelled when the token is revoked: what was opened with it (event streams) ends.
    revoked: CancellationToken,
}

/// How long a checked credential stays good for what was opened with it (an event stream):
/// until its token is revoked or expires; for ever (the process's life) for a configured key.
#[derive(Debug, Clone, Default)]
pub struct Lifetime {
    /// Cancelled when the token is revoked.
    pub revoked: CancellationToken,
    /// When it expires (ms since the Unix epoch), if ever.
    pub expires_at: Option<u64>,
}

impl Lifetime {
    /// A lifetime that is over already (a token revoked meanwhile).
    pub fn over() -> Lifetime {
        let l = Lifetime::default();
        l.revoked.cancel();
        l
    }

    /// Whether it is over now.
    pub fn is_over(&self) -> bool {
        self.revoked.is_cancelled() || self.expires_at.is_some_and(|at| at <= now_ms())
    }

    /// Completes when it is over: at revocation, or at the expiry time.
    pub async fn ended(&self) {
        let expiry = async {
            match self.expires_at {
                Some(at) => {
                    let left = at.saturating_sub(now_ms());
                    tokio::time::sleep(std::time::Duration::from_millis(left)).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = self.revoked.cancelled() => {}
            () = expiry => {}
        }
    }
}

/// The tokens held.
pub struct Tokens {
    map: RwLock<HashMap<String, Entry>>,
    store: Option<Store>,
    /// Most tokens held ([`MAX_TOKENS`]; smaller in tests).
    cap: usize,
    /// When expired tokens were last purged (ms since the Unix epoch).
    purged_at: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} held, MASKED)", self.read().len())
    }
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// Too many live tokens held (the cap).
    #[error("{0} live tokens are held already (the cap); revoke some first")]
    Full(usize),
    /// The store could not commit it.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn grant_of(info: &TokenInfo) -> Option<Grant> {
    Some(Grant {
        name: format!("token {}", info.id).into(),
        scope: Scope::User(BareJid::new(&info.user).ok()?),
        access: Access::parse(&info.access)?,
    })
}

impl Tokens {
    /// The tokens the store held at open (`store.take(Side::Tokens)`); damaged records are skipped
    /// (logged), expired ones forgotten.
    pub fn load(store: Option<Store>) -> Tokens {
        Tokens::load_with_cap(store, MAX_TOKENS)
    }

    /// [`load`](Self::load) holding at most `cap` live tokens.
    pub fn load_with_cap(store: Option<Store>, cap: usize) -> Tokens {
        let now = now_ms();
        let mut map = HashMap::new();
        for (id, bytes) in store
            .as_ref()
            .map(|s| s.take(Side::Tokens))
            .unwrap_or_default()
        {
            let parsed = serde_json::from_slice::<Stored>(&bytes).ok().and_then(|s| {
                let digest = unhex(&s.sha256)?;
                let grant = grant_of(&s.info)?;
                Some(Entry {
                    digest,
                    grant: Arc::new(grant),
                    info: s.info,
                    revoked: CancellationToken::new(),
                })
            });
            match parsed {
                Some(e) if e.info.expires_at.is_some_and(|at| at <= now) => {
                    if let Some(store) = &store {
                        store.write_then(vec![Write::Remove(Side::Tokens, id)], Box::new(|_| {}));
                    }
                }
                Some(e) => {
                    map.insert(id, e);
                }
                None => warn!(id = %id, "a damaged API token record was skipped"),
            }
        }
        Tokens {
            map: RwLock::new(map),
            store,
            cap,
            purged_at: std::sync::atomic::AtomicU64::new(now),
        }
    }

    /// Forget every expired token, in memory and (not awaited) in the store; returns how many.
    pub fn purge_expired(&self) -> usize {
        let now = now_ms();
        self.purged_at
            .store(now, std::sync::atomic::Ordering::Relaxed);
        let gone: Vec<String> = {
            let mut map = self.write();
            let gone: Vec<String> = map
                .iter()
                .filter(|(_, e)| e.info.expires_at.is_some_and(|at| at <= now))
                .map(|(id, _)| id.clone())
                .collect();
            for id in &gone {
                map.remove(id);
            }
            gone
        };
        if let (Some(store), false) = (&self.store, gone.is_empty()) {
            // If this write fails, the next purge or start removes them (a start forgets
            // expired tokens too).
            let writes = gone
                .iter()
                .map(|id| Write::Remove(Side::Tokens, id.clone()))
                .collect();
            store.write_then(writes, Box::new(|_| {}));
        }
        gone.len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Mint a token for `user`; returns it (the only time its secret is seen) once it is durable.
    pub async fn mint(
        &self,
        user: &BareJid,
        access: Access,
        name: Option<String>,
        expires_in_secs: Option<u64>,
    ) -> Result<(String, TokenInfo), MintError> {
        let due = now_ms()
            .saturating_sub(self.purged_at.load(std::sync::atomic::Ordering::Relaxed))
            >= PURGE_EVERY_MS;
        if due || self.read().len() >= self.cap {
            self.purge_expired();
        }
        if self.read().len() >= self.cap {
            return Err(MintError::Full(self.cap));
        }
        // (The thread's generator is not Send: it must not live across the await below.)
        let (id, secret) = {
            let mut rng = rand::rng();
            let mut id = [0u8; 6];
            rng.fill_bytes(&mut id);
            let mut secret = [0u8; 32];
            rng.fill_bytes(&mut secret);
            (id, secret)
        };
        let id = hex(&id);
        let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let now = now_ms();
        let info = TokenInfo {
            id: id.clone(),
            user: user.to_string(),
            access: access.as_str().to_string(),
            name,
            created_at: now,
            expires_at: expires_in_secs.map(|s| now.saturating_add(s.saturating_mul(1000))),
        };
        let d = digest(&secret);
        let stored = Stored {
            info: info.clone(),
            sha256: hex(&d),
        };
        if let Some(store) = &self.store {
            let record = serde_json::to_vec(&stored).expect("serialisable");
            store
                .write(vec![Write::Put(Side::Tokens, id.clone(), record)])
                .durable()
                .await?;
        }
        let grant = grant_of(&info).expect("a served user and a known access");
        self.write().insert(
            id.clone(),
            Entry {
                digest: d,
                grant: Arc::new(grant),
                info: info.clone(),
                revoked: CancellationToken::new(),
            },
        );
        Ok((format!("{PREFIX}{id}.{secret}"), info))
    }

    /// Every token held, oldest first (never a secret).
    pub fn list(&self) -> Vec<TokenInfo> {
        let now = now_ms();
        let mut v: Vec<TokenInfo> = self
            .read()
            .values()
            .filter(|e| e.info.expires_at.is_none_or(|at| at > now))
            .map(|e| e.info.clone())
            .collect();
        v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        v
    }

    /// Revoke token `id`: refused at once, its open event streams ended, removed from the store
    /// before this returns. `false` when there is no such token.
    pub async fn revoke(&self, id: &str) -> Result<bool, StoreError> {
        let Some(entry) = self.write().remove(id) else {
            return Ok(false);
        };
        entry.revoked.cancel();
        if let Some(store) = &self.store {
            store
                .write(vec![Write::Remove(Side::Tokens, id.to_string())])
                .durable()
                .await?;
        }
        Ok(true)
    }

    /// The lifetime of `grant` if it is a token's grant (as [`grant`](Self::grant) gave it):
    /// [`Lifetime::over`] if the token was revoked since. `None` when it is not a token's.
    pub fn lifetime(&self, grant: &Arc<Grant>) -> Option<Lifetime> {
        let id = grant.name.strip_prefix("token ")?;
        if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(match self.read().get(id) {
            Some(e) if Arc::ptr_eq(&e.grant, grant) => Lifetime {
                revoked: e.revoked.clone(),
                expires_at: e.info.expires_at,
            },
            _ => Lifetime::over(),
        })
    }

    /// The grant of `credential` if it is a live token.
    pub fn grant(&self, credential: &str) -> Option<Arc<Grant>> {
        let (id, secret) = credential.strip_prefix(PREFIX)?.split_once('.')?;
        let given = digest(secret);
        let map = self.read();
        let e = map.get(id)?;
        if !bool::from(e.digest.ct_eq(&given)) {
            return None;
        }
        if e.info.expires_at.is_some_and(|at| at <= now_ms()) {
            return None;
        }
        Some(e.grant.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Open the store again once the previous writer thread has let go of the file.
    fn reopen(path: &std::path::Path) -> Store {
        for _ in 0..500 {
            if let Ok((store, _)) = Store::open(path) {
                return store;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the store did not reopen");
    }

    #[tokio::test]
    async fn mint_check_list_revoke_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let alice = BareJid::new("alice@example.com").unwrap();
        let (token, info, kept) = {
            let (store, _) = Store::open(&path).unwrap();
            let t = Tokens::load(Some(store));
            let (token, info) = t
                .mint(&alice, Access::ReadWrite, Some("phone".into()), None)
                .await
                .unwrap();
            let (short, _) = t
                .mint(&alice, Access::Read, None, Some(3600))
                .await
                .unwrap();
            assert!(token.starts_with(PREFIX) && token.len() > 50);
            let g = t.grant(&token).unwrap();
            assert_eq!(g.scope, Scope::User(alice.clone()));
            assert_eq!(g.access, Access::ReadWrite);
            assert!(t.grant(&format!("{token}x")).is_none());
            assert!(t.grant(&token.replace(PREFIX, "")).is_none());
            assert_eq!(t.list().len(), 2);
            assert!(!format!("{:?}", t.list()).contains(token.split('.').nth(1).unwrap()));
            (token, info, short)
        };
        // The store file holds no secret.
        let raw = std::fs::read(&path).unwrap();
        let secret = token.split('.').nth(1).unwrap();
        assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()));
        // After a restart: still valid; revoked at once.
        let t = Tokens::load(Some(reopen(&path)));
        assert_eq!(t.list()[0], info);
        assert!(t.grant(&token).is_some());
        assert!(t.grant(&kept).is_some());
        assert!(t.revoke(&info.id).await.unwrap());
        assert!(t.grant(&token).is_none());
        assert!(!t.revoke(&info.id).await.unwrap());
        drop(t);
        let t = Tokens::load(Some(reopen(&path)));
        assert!(t.grant(&token).is_none(), "revoked durably");
        assert_eq!(t.list().len(), 1);
    }

    /// The cap counts live tokens only: expired ones are purged (from memory and the store) when
    /// it is reached; over it, minting is refused with `Full` (409 `too_many_tokens`: tested in
    /// `http/error.rs`, which owns that mapping).
    #[tokio::test]
    async fn expired_tokens_do_not_count_toward_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let alice = BareJid::new("alice@example.com").unwrap();
        {
            let (store, _) = Store::open(&path).unwrap();
            let t = Tokens::load_with_cap(Some(store), 10);
            for _ in 0..10 {
                t.mint(&alice, Access::Read, None, Some(1)).await.unwrap();
            }
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
            // Ten expired tokens held, none live: the cap is not reached.
            let mut kept = Vec::new();
            for _ in 0..10 {
                kept.push(t.mint(&alice, Access::Read, None, None).await.unwrap().0);
            }
            assert_eq!(t.list().len(), 10);
            assert_eq!(t.read().len(), 10, "the expired ones left memory");
            let e = t.mint(&alice, Access::Read, None, None).await.unwrap_err();
            assert!(matches!(e, MintError::Full(10)), "{e}");
            assert!(kept.iter().all(|k| t.grant(k).is_some()));
            // A revocation makes room again.
            let id = t.list()[0].id.clone();
            assert!(t.revoke(&id).await.unwrap());
            t.mint(&alice, Access::Read, None, None).await.unwrap();
        }
        // The expired ones left the store too (purged there, not only forgotten at load).
        let store = reopen(&path);
        assert_eq!(store.take(Side::Tokens).len(), 10);
    }
}
