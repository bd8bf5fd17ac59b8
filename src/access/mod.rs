//! Who may do what: the grant a credential carries, and the checks every dialect makes with it.
//!
//! A credential is a configured key (`[[http.keys]]`, or the older `api_keys`, which mean admin
//! read-write) or a per-user token minted at run time (`tokens.rs`). Either resolves to a
//! [`Grant`]: a name (for logs and metrics, never the secret), a [`Scope`] (everything, some
//! domains, or one user) and an [`Access`] (read, write or both).
//!
//! - A write to user U needs write access and U in the scope.
//! - A read of U needs read access and U in the scope — or, for a user-scoped grant of A, U in
//!   A's roster with subscription `to` or `both` (what A may see): the dialect asks the roster
//!   ([`Grant::reads_through_roster`]).
//! - Minting, listing and revoking tokens needs an admin grant with write access.

pub mod limits;
pub mod tokens;

use std::collections::BTreeSet;
use std::sync::Arc;

use jid::BareJid;
use serde::Deserialize;

/// What a grant may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Read presence, contacts and events.
    Read,
    /// Set and clear statuses.
    Write,
    /// Both.
    ReadWrite,
}

impl Access {
    /// The config and API value.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "read-write",
        }
    }

    /// Parse the config and API value.
    pub fn parse(s: &str) -> Option<Access> {
        match s {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "read-write" => Some(Access::ReadWrite),
            _ => None,
        }
    }

    fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

/// Whose presence a grant covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every served user; may mint tokens.
    Admin,
    /// The users of these domains.
    Domains(BTreeSet<String>),
    /// One user.
    User(BareJid),
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Reading.
    Read,
    /// Writing.
    Write,
}

/// Why a grant does not allow something (the dialect renders it as its own 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Read-only or write-only.
    #[error("the credential {name:?} has {access} access; this needs {need}")]
    Access {
        /// The grant's name.
        name: String,
        /// Its access.
        access: &'static str,
        /// What was needed.
        need: &'static str,
    },
    /// The user is outside the scope.
    #[error("the credential {name:?} may not act for {user}")]
    Scope {
        /// The grant's name.
        name: String,
        /// The user asked for.
        user: String,
    },
    /// Only an admin may do this.
    #[error("the credential {0:?} is not an admin credential")]
    NotAdmin(String),
}

/// What one credential may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Shown in logs and metrics (never the secret).
    pub name: Arc<str>,
    /// Whose presence.
    pub scope: Scope,
    /// Read, write or both.
    pub access: Access,
}

impl Grant {
    /// An admin read-write grant (the older `api_keys`).
    pub fn admin(name: impl Into<Arc<str>>) -> Grant {
        Grant {
            name: name.into(),
            scope: Scope::Admin,
            access: Access::ReadWrite,
        }
    }

    /// Whether the grant has `need` at all (whatever the user).
    pub fn has(&self, need: Need) -> Result<(), Denied> {
        let ok = match need {
            Need::Read => self.access.reads(),
            Need::Write => self.access.writes(),
        };
        ok.then_some(()).ok_or_else(|| Denied::Access {
            name: self.name.to_string(),
            access: self.access.as_str(),
            need: match need {
                Need::Read => "read",
                Need::Write => "write",
            },
        })
    }

    fn covers(&self, user: &BareJid) -> bool {
        match &self.scope {
            Scope::Admin => true,
            Scope::Domains(d) => d.contains(user.domain().as_str()),
            Scope::User(u) => u == user,
        }
    }

    /// May this grant do `need` for `user` directly (without asking a roster)?
    pub fn allows(&self, need: Need, user: &BareJid) -> Result<(), Denied> {
        self.has(need)?;
        if self.covers(user) {
            Ok(())
        } else {
            Err(Denied::Scope {
                name: self.name.to_string(),
                user: user.to_string(),
            })
        }
    }

    /// For a read of `user` that [`allows`](Self::allows) refused on scope: the user whose roster
    /// decides (this grant's own user), if the grant may read at all.
    pub fn reads_through_roster(&self, user: &BareJid) -> Option<&BareJid> {
        match &self.scope {
            Scope::User(own) if own != user && self.access.reads() => Some(own),
            _ => None,
        }
    }

    /// Admin grants only (token management), with write access.
    pub fn admin_write(&self) -> Result<(), Denied> {
        match self.scope {
            Scope::Admin => self.has(Need::Write),
            _ => Err(Denied::NotAdmin(self.name.to_string())),
        }
    }

    /// Whether every user of `domain` is in the scope (event filters by domain).
    pub fn covers_domain(&self, domain: &str) -> bool {
        match &self.scope {
            Scope::Admin => true,
            Scope::Domains(d) => d.contains(domain),
            Scope::User(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> BareJid {
        BareJid::new(s).unwrap()
    }

    #[test]
    fn scopes_and_rights() {
        let admin = Grant::admin("ops");
        let dom = Grant {
            name: "team-a".into(),
            scope: Scope::Domains(["a.example".to_string()].into()),
            access: Access::Write,
        };
        let alice = Grant {
            name: "alice's phone".into(),
            scope: Scope::User(jid("alice@a.example")),
            access: Access::Read,
        };
        let (a, b) = (jid("alice@a.example"), jid("bob@b.example"));
        assert!(admin.allows(Need::Write, &b).is_ok());
        assert!(admin.admin_write().is_ok());
        assert!(dom.allows(Need::Write, &a).is_ok());
        assert!(matches!(
            dom.allows(Need::Write, &b),
            Err(Denied::Scope { .. })
        ));
        assert!(matches!(
            dom.allows(Need::Read, &a),
            Err(Denied::Access { .. })
        ));
        assert!(matches!(dom.admin_write(), Err(Denied::NotAdmin(_))));
        assert!(alice.allows(Need::Read, &a).is_ok());
        assert!(matches!(
            alice.allows(Need::Write, &a),
            Err(Denied::Access { .. })
        ));
        assert!(alice.allows(Need::Read, &b).is_err());
        assert_eq!(alice.reads_through_roster(&b), Some(&a));
        assert_eq!(alice.reads_through_roster(&a), None);
        assert_eq!(dom.reads_through_roster(&b), None);
        assert!(dom.covers_domain("a.example") && !alice.covers_domain("a.example"));
    }
}
