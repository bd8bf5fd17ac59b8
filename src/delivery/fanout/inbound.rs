//! Inbound routing: what the link tells the fan-out, to the part it concerns.
//!
//! The link's events set the readiness ([`Readiness`]: up, the wait for the privilege
//! advertisement, ready) and reset the parts on a connect or a loss. Its stanzas go where they
//! belong: the privilege advertisement makes us ready (which replays everything held); a
//! presence feeds the read model and greets a contact resource that comes online; an iq is the
//! answer to an agent's exchange, to the sync disco query, or to a roster request (whose roster
//! the delivery then uses), or a request we answer.

use std::time::Duration;

use jid::{BareJid, Jid};
use tokio::time::Instant;
use tracing::{info, warn};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::stanza::Stanza;

use super::Fanout;
use crate::base::clock::now_ms;
use crate::xmpp::stanzas::{self, Privileges};
use crate::xmpp::LinkEvent;

/// How long to wait for the privilege advertisement after the handshake before warning and going on.
const PRIVILEGE_WAIT: Duration = Duration::from_secs(5);

/// Where the link stands, as the fan-out sees it.
#[derive(Default)]
pub(super) struct Readiness {
    /// Link is up (handshake done).
    pub(super) up: bool,
    /// Ready to send: link up and privileges advertised (or the wait for them is over).
    pub(super) ready: bool,
    /// End of the wait for the privilege advertisement after the last connect.
    privilege_deadline: Option<Instant>,
    /// Warned once already that no advertisement arrived.
    warned_no_privilege: bool,
}

impl Readiness {
    /// When the wait for the privilege advertisement ends, if we wait.
    pub(super) fn privilege_deadline(&self) -> Option<Instant> {
        self.privilege_deadline
    }

    /// The wait for the privilege advertisement is over without one: warn, once.
    fn privilege_wait_over(&mut self, component: &BareJid) {
        self.privilege_deadline = None;
        if !self.warned_no_privilege {
            self.warned_no_privilege = true;
            warn!(
                "no XEP-0356 privilege advertisement from the server within {PRIVILEGE_WAIT:?}: \
                 rosters and contacts' presence are unavailable. Prosody: load \"privilege\" \
                 globally and on the Component, and set privileged_entities = {{ [\"{c}\"] = \
                 {{ roster = \"get\"; presence = \"managed_entity\" }} }} on the VirtualHost. \
                 ejabberd: mod_privilege with roster: {{get: …}} and presence: \
                 {{managed_entity: …}} for {c}",
                c = component
            );
        }
    }
}

impl Fanout {
    fn set_ready(&mut self, ready: bool) {
        self.state.ready = ready;
        self.exchanges.tell_ready(ready);
    }

    pub(super) async fn on_link(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Up => {
                self.state.up = true;
                self.set_ready(false);
                self.state.privilege_deadline = Some(Instant::now() + PRIVILEGE_WAIT);
                self.sessions.link_up();
            }
            LinkEvent::Down => {
                self.state.up = false;
                self.set_ready(false);
                self.exchanges.link_down();
                self.state.privilege_deadline = None;
                // Answers to requests of the old stream never come.
                self.sessions.link_down();
                self.rosters.link_down();
            }
            LinkEvent::Stanza(stanza) => self.on_stanza(*stanza).await,
        }
    }

    /// No privilege advertisement within [`PRIVILEGE_WAIT`]: warn, and go on without.
    pub(super) async fn on_privilege_wait_over(&mut self) {
        self.state.privilege_wait_over(&self.component);
        self.become_ready().await;
    }

    /// Start delivering: replay everything held. Every entry counts as undelivered again, and
    /// every user's roster is fetched (a slot at a time), which then delivers it all.
    async fn become_ready(&mut self) {
        if self.state.ready || !self.state.up {
            return;
        }
        self.set_ready(true);
        self.state.privilege_deadline = None;
        self.deliverer.forget_deliveries();
        let id = self.sessions.next_sync_id();
        self.link
            .send(stanzas::server_info_query(
                &self.component,
                &self.domain,
                id,
            ))
            .await;
        let users = self.deliverer.users();
        self.rosters.replay(users).await;
    }

    async fn on_stanza(&mut self, stanza: Stanza) {
        match stanza {
            Stanza::Message(m) => {
                if let Some(p) = stanzas::parse_privileges(&m) {
                    self.on_privileges(m.from.as_ref(), p).await;
                }
            }
            Stanza::Presence(p) => self.on_presence(p).await,
            Stanza::Iq(iq) => self.on_iq(iq).await,
        }
    }

    async fn on_privileges(&mut self, from: Option<&Jid>, p: Privileges) {
        let from = from.map(|j| j.to_string()).unwrap_or_default();
        info!(%from, namespace = p.namespace, roster = ?p.roster, presence = ?p.presence, "XEP-0356 privileges granted");
        if !p.can_get_roster() {
            warn!(%from, "the server does not let us read rosters: grant roster = \"get\" (Prosody privileged_entities) or mod_privilege roster: {{get: …}} (ejabberd)");
        }
        self.sessions.set_presence_granted(p.gets_presence());
        if !p.gets_presence() {
            warn!(%from, "the server does not forward users' presence: contacts who log in later will not see held statuses; grant presence = \"managed_entity\"");
        }
        self.become_ready().await;
    }

    async fn on_presence(&mut self, p: Presence) {
        let Some(Ok(from)) = p.from.as_ref().map(Jid::try_as_full) else {
            return;
        };
        let from = from.clone();
        if stanzas::is_own_echo(&p) {
            return; // one of our own presences, forwarded back (ejabberd, presence = roster)
        }
        // A resource that comes online (the read model's sessions are also the list of contact
        // resources online: one copy of each, BENCHMARKS.md P8).
        let newly = p.type_ == PresenceType::None && self.sessions.is_new_session(&from);
        if let Some(what) = stanzas::announced(&p, now_ms()) {
            self.sessions.announce(&from, what);
        }
        // A contact resource came online: send it every held presence of users it follows
        // (not before ready: the replay after connect reaches it through its bare JID).
        if newly && self.state.ready {
            let users = self.rosters.followers(&from.to_bare());
            self.deliverer.greet(&from, users).await;
        }
    }

    async fn on_iq(&mut self, iq: Iq) {
        if let Some(w) = self.exchanges.take(&iq) {
            if let Some(user) = w.changes_roster_of() {
                self.rosters.forget_contacts(user);
            }
            w.answer(iq);
            return;
        }
        match &iq {
            Iq::Get { .. } | Iq::Set { .. } => {
                if let Some(answer) = stanzas::answer_request(&self.component, &iq) {
                    self.link.send(answer).await;
                }
            }
            Iq::Result { id, payload, .. } => {
                if self.sessions.is_sync(id) {
                    self.sessions.synced(stanzas::server_name(payload.as_ref()));
                    return;
                }
                let Some(user) = self.rosters.take_request(id) else {
                    return;
                };
                if let Some(contacts) = self.rosters.on_result(&user, payload.as_ref()) {
                    self.on_roster(user.clone(), contacts).await;
                }
                self.rosters.request_done(user).await;
            }
            Iq::Error { id, error, .. } => {
                if self.sessions.is_sync(id) {
                    self.sessions.synced(None);
                    return;
                }
                let Some(user) = self.rosters.take_request(id) else {
                    return;
                };
                self.rosters.on_refused(&user, error);
                self.rosters.request_done(user).await;
            }
        }
    }

    /// `user`'s roster arrived: cache it, and deliver what the change of contacts calls for.
    async fn on_roster(&mut self, user: BareJid, contacts: Vec<BareJid>) {
        let (old, new) = self.rosters.store(&user, contacts);
        self.deliverer
            .roster_changed(&user, old.as_ref(), &new)
            .await;
    }
}
