//! One handle over the XMPP servers the suite runs against, so every scenario is written once and
//! run on each: [`Server::start`] with a [`Kind`] starts a throwaway Prosody or ejabberd from the
//! Debian packages (tests fail loudly, never skip, when one cannot start).

use super::ejabberd::Ejabberd;
use super::{Prosody, COMPONENT, DOMAIN, PASSWORD, SECRET};

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Prosody 0.12 with mod_privilege from prosody-modules.
    Prosody,
    /// ejabberd 23.01 with its built-in mod_privilege.
    Ejabberd,
}

/// A running server of either kind.
pub enum Server {
    /// Prosody.
    Prosody(Prosody),
    /// ejabberd.
    Ejabberd(Ejabberd),
}

impl Server {
    /// Start a server of `kind` with the test domain, component and secret.
    pub async fn start(kind: Kind) -> Server {
        match kind {
            Kind::Prosody => Server::Prosody(Prosody::start().await),
            Kind::Ejabberd => Server::Ejabberd(Ejabberd::start(DOMAIN, COMPONENT, SECRET).await),
        }
    }

    /// The kind of this server.
    pub fn kind(&self) -> Kind {
        match self {
            Server::Prosody(_) => Kind::Prosody,
            Server::Ejabberd(_) => Kind::Ejabberd,
        }
    }

    /// Client port.
    pub fn c2s_port(&self) -> u16 {
        match self {
            Server::Prosody(s) => s.c2s_port,
            Server::Ejabberd(s) => s.c2s_port,
        }
    }

    /// Component (XEP-0114) port.
    pub fn component_port(&self) -> u16 {
        match self {
            Server::Prosody(s) => s.component_port,
            Server::Ejabberd(s) => s.component_port,
        }
    }

    /// Register users with [`PASSWORD`].
    pub async fn register(&self, users: &[&str]) {
        match self {
            Server::Prosody(s) => s.register(users).await,
            Server::Ejabberd(s) => s.register(users, PASSWORD).await,
        }
    }

    /// Stop the server, keeping its data and ports.
    pub async fn stop(&mut self) {
        match self {
            Server::Prosody(s) => s.stop().await,
            Server::Ejabberd(s) => s.stop().await,
        }
    }

    /// Start it again on the same ports and data.
    pub async fn start_again(&mut self) {
        match self {
            Server::Prosody(s) => s.start_again().await,
            Server::Ejabberd(s) => s.start_again().await,
        }
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        match self {
            Server::Prosody(s) => s.log_tail(),
            Server::Ejabberd(s) => s.log_tail(),
        }
    }
}
