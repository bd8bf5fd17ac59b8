//! The agent's exchanges: its stanzas in users' names, and the answers routed back.
//!
//! [`Exchanges`] sends an [`Exchange`] (presences, then an iq) while the fan-out is ready,
//! keeps it until the server answers the iq (or [`ROSTER_TIMEOUT`] passes, or the link goes
//! down), and tells the agent whether it may send at all.

use std::collections::HashMap;

use jid::BareJid;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use xmpp_parsers::iq::Iq;

use super::ROSTER_TIMEOUT;
use crate::agent::Exchange;
use crate::xmpp::stanzas;
use crate::xmpp::LinkHandle;

/// An exchange of the agent waiting for its iq's answer.
pub(super) struct Waiting {
    since: Instant,
    changes_roster_of: Option<BareJid>,
    answer: oneshot::Sender<Result<Result<Option<minidom::Element>, String>, String>>,
}

impl Waiting {
    /// The user whose roster the exchange changes, if any.
    pub(super) fn changes_roster_of(&self) -> Option<&BareJid> {
        self.changes_roster_of.as_ref()
    }

    /// Route the server's answer (`iq`, a result or an error) back to the agent.
    pub(super) fn answer(self, iq: Iq) {
        let answer = match iq {
            Iq::Result { payload, .. } => Ok(payload),
            Iq::Error { error, .. } => Err(stanzas::error_reason(&error)),
            _ => unreachable!("only answers are taken"),
        };
        let _ = self.answer.send(Ok(answer));
    }
}

/// The agent's exchanges in flight, and where readiness is told.
pub(super) struct Exchanges {
    /// Where the agent's stanzas go.
    link: LinkHandle,
    /// Told whether we are ready (the agent sends only then).
    agent_ready: Option<watch::Sender<bool>>,
    /// The agent's exchanges waiting for their iq's answer, by iq id.
    waiting: HashMap<String, Waiting>,
}

impl Exchanges {
    pub(super) fn new(link: LinkHandle, agent_ready: Option<watch::Sender<bool>>) -> Self {
        Exchanges {
            link,
            agent_ready,
            waiting: HashMap::new(),
        }
    }

    /// Tell the agent whether we are ready.
    pub(super) fn tell_ready(&self, ready: bool) {
        if let Some(tx) = &self.agent_ready {
            tx.send_replace(ready);
        }
    }

    /// The agent's stanzas: sent in order when `ready`, the iq's answer routed back.
    pub(super) async fn on_exchange(&mut self, x: Exchange, ready: bool) {
        if !ready {
            let _ = x.answer.send(Err("the XMPP link is down".into()));
            return;
        }
        self.link.send_batch(x.presences).await;
        self.waiting.insert(
            x.id,
            Waiting {
                since: Instant::now(),
                changes_roster_of: x.changes_roster_of,
                answer: x.answer,
            },
        );
        self.link.send(x.iq).await;
    }

    /// The exchange `iq` answers, if it is a result or an error of one (it is no longer
    /// waiting).
    pub(super) fn take(&mut self, iq: &Iq) -> Option<Waiting> {
        if let Iq::Result { id, .. } | Iq::Error { id, .. } = iq {
            return self.waiting.remove(id.as_str());
        }
        None
    }

    /// Give up the exchanges left unanswered for [`ROSTER_TIMEOUT`].
    pub(super) fn expire(&mut self) {
        let now = Instant::now();
        let old: Vec<String> = self
            .waiting
            .iter()
            .filter(|(_, w)| now.duration_since(w.since) > ROSTER_TIMEOUT)
            .map(|(id, _)| id.clone())
            .collect();
        for id in old {
            if let Some(w) = self.waiting.remove(&id) {
                let _ = w.answer.send(Err("no answer from the server".into()));
            }
        }
    }

    /// The link went down: the answers never come.
    pub(super) fn link_down(&mut self) {
        for (_, w) in self.waiting.drain() {
            let _ = w.answer.send(Err("the XMPP link went down".into()));
        }
    }
}
