//! `extpresence check-config --connect`: one connection with the configured component, to test
//! the handshake and see the privileges the server grants, then a clean close. Nothing is sent
//! but the handshake and the stream's end. The caller makes sure no running extpresence holds
//! the link (a second connection disturbs it: Prosody refuses it, and on ejabberd its
//! disconnect removes the running instance's privileges).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::{timeout, Instant};
use tokio_xmpp::xmlstream::{FallibleStreamElement, ReadError, XmppStreamElement};
use xmpp_parsers::stanza::Stanza;

use super::link::{self, LinkConfig, LinkError};
use super::stanzas;

/// How long to wait for the privilege advertisements after the handshake.
pub const PRIVILEGE_WAIT: Duration = Duration::from_secs(5);

/// The roster and presence access one advertisement granted.
pub type Granted = (Option<String>, Option<String>);

/// What one test connection found.
#[derive(Debug)]
pub struct Checked {
    /// The handshake's outcome.
    pub handshake: Result<(), LinkError>,
    /// For each served domain: the roster and presence access its advertisement granted
    /// (`None`: no advertisement within [`PRIVILEGE_WAIT`]).
    pub privileges: BTreeMap<String, Option<Granted>>,
    /// Domains that advertised privileges but are not served (the wrong VirtualHost?).
    pub others: Vec<String>,
}

/// Connect once with `cfg`, wait (when `privileges`) for the advertisement of each of
/// `domains`, and close.
pub async fn connect_once(cfg: &LinkConfig, domains: &[String], privileges: bool) -> Checked {
    let mut checked = Checked {
        handshake: Ok(()),
        privileges: domains.iter().map(|d| (d.clone(), None)).collect(),
        others: Vec::new(),
    };
    let connected = match timeout(Duration::from_secs(10), link::connect(cfg)).await {
        Ok(r) => r,
        Err(_) => Err(LinkError::Timeout("connect")),
    };
    let mut stream = match connected {
        Ok(s) => s,
        Err(e) => {
            checked.handshake = Err(link::diagnose(cfg, e).await);
            return checked;
        }
    };
    if privileges {
        let deadline = Instant::now() + PRIVILEGE_WAIT;
        while checked.privileges.values().any(Option::is_none) {
            let Ok(item) = tokio::time::timeout_at(deadline, stream.next()).await else {
                break;
            };
            match item {
                Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Stanza(
                    Stanza::Message(m),
                )))) => {
                    let Some(p) = stanzas::parse_privileges(&m) else {
                        continue;
                    };
                    let from = m
                        .from
                        .as_ref()
                        .map(|j| j.domain().as_str().to_string())
                        .unwrap_or_default();
                    match checked.privileges.get_mut(&from) {
                        Some(slot) => *slot = Some((p.roster, p.presence)),
                        None => checked.others.push(from),
                    }
                }
                Some(Ok(_)) | Some(Err(ReadError::SoftTimeout | ReadError::ParseError(_))) => {}
                Some(Err(_)) | None => break,
            }
        }
    }
    link::close_stream(&mut stream).await;
    checked
}
