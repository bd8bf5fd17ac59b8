//! Inbound routing: what the link tells the fan-out, to the part it concerns.
//!
//! The link's events set the readiness ([`Readiness`]: up, the wait for the privilege
//! advertisements, ready) and reset the parts on a connect or a loss. Its stanzas go where they
//! belong: a privilege advertisement makes us ready (which replays everything held) and is
//! reported per served domain to [`Health`](crate::base::health::Health), as are domains without
//! one, domains the server does not serve, and privileges withdrawn (a refused roster request);
//! while no domain works a reconnect looks again (servers grant privileges at connect). A
//! presence feeds the read model and greets a contact resource that comes online; an iq is the
//! answer to an agent's exchange, to the sync or a domain's disco query, or to a roster request
//! (whose roster the delivery then uses), or a request we answer.

use std::time::Duration;

use jid::{BareJid, Jid};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::stanza::Stanza;

use super::Fanout;
use crate::base::clock::now_ms;
use crate::base::health::Privilege;
use crate::xmpp::stanzas::{self, Privileges};
use crate::xmpp::LinkEvent;

/// How long to wait for the privilege advertisements after the handshake before reporting the
/// domains without one and going on.
const PRIVILEGE_WAIT: Duration = Duration::from_secs(5);
/// Id prefix of the disco#info query sent to a served domain without privileges: an error
/// answer says the server does not serve it.
const DOMAIN_CHECK: &str = "extpresence-domain-";
/// The first wait before reconnecting to be granted privileges that were missing (servers grant
/// them at connect: a fixed config takes effect on the next connect); doubled each time.
pub(super) const PRIVILEGE_RETRY: Duration = Duration::from_secs(10);
/// The longest wait between such reconnects.
const PRIVILEGE_RETRY_MAX: Duration = Duration::from_secs(300);

/// Where the link stands, as the fan-out sees it.
#[derive(Default)]
pub(super) struct Readiness {
    /// Link is up (handshake done).
    pub(super) up: bool,
    /// Ready to send: link up and privileges advertised (or the wait for them is over).
    pub(super) ready: bool,
    /// End of the wait for the privilege advertisement after the last connect.
    privilege_deadline: Option<Instant>,
    /// When to reconnect to look again for privileges that were missing.
    retry_at: Option<Instant>,
    /// The wait before the next such reconnect.
    retry_wait: Option<Duration>,
    /// Warned already (since privileges were last complete) that some are missing.
    warned_no_privilege: bool,
    /// Served domains whose privileges were advertised since the last connect.
    advertised: std::collections::BTreeSet<String>,
}

impl Readiness {
    /// When the wait for the privilege advertisement ends, if we wait.
    pub(super) fn privilege_deadline(&self) -> Option<Instant> {
        self.privilege_deadline
    }

    /// When to reconnect to look again for missing privileges, if some are missing.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }
}

/// What to change in the server's config when `domain` grants no privileges to `component`:
/// the shipped snippets (etc/prosody/extpresence.cfg.lua, etc/ejabberd/extpresence.yml).
fn privilege_fix(domain: &str, component: &BareJid) -> String {
    format!(
        "Prosody: in VirtualHost \"{domain}\" set modules_enabled = {{ \"privilege\" }} and \
         privileged_entities = {{ [\"{component}\"] = {{ roster = \"both\"; presence = \
         \"managed_entity\" }} }}, and in Component \"{component}\" modules_enabled = {{ \
         \"privilege\" }} (etc/prosody/extpresence.cfg.lua); then restart Prosody or run \
         `prosodyctl shell module reload privilege {domain}` (prosodyctl reload alone does not \
         apply it; `module load` if it was not loaded). ejabberd: mod_privilege with roster: {{get: privileged}} and presence: \
         {{managed_entity: privileged}}, the access rule allowing {component} \
         (etc/ejabberd/extpresence.yml). Then send extpresence SIGHUP (systemctl kill -s HUP \
         extpresence) to connect again at once; it also does by itself while no served domain works"
    )
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
                self.state.retry_at = None;
                self.state.advertised.clear();
                self.sessions.link_up();
            }
            LinkEvent::Down => {
                self.state.up = false;
                self.set_ready(false);
                self.exchanges.link_down();
                self.state.privilege_deadline = None;
                self.state.retry_at = None;
                // Answers to requests of the old stream never come.
                self.sessions.link_down();
                self.rosters.link_down();
            }
            LinkEvent::Stanza(stanza) => self.on_stanza(*stanza).await,
        }
    }

    /// The wait for the privilege advertisements is over: every served domain without one is
    /// reported (health, one warning per outage; a disco#info query asks whether the server
    /// serves it), a reconnect to look again is scheduled while no domain works
    /// ([`reschedule`](Self::reschedule)), and delivery goes on for the others.
    pub(super) async fn on_privilege_wait_over(&mut self) {
        self.state.privilege_deadline = None;
        let missing: Vec<String> = self
            .domains
            .iter()
            .filter(|d| !self.state.advertised.contains(*d))
            .cloned()
            .collect();
        for domain in &missing {
            if let Ok(to) = BareJid::new(domain) {
                let id = format!("{DOMAIN_CHECK}{domain}");
                self.link
                    .send(stanzas::server_info_query(&self.component, &to, id))
                    .await;
            }
            self.missing(
                domain,
                format!(
                    "the server sent no XEP-0356 privilege advertisement for {domain} within \
                     {PRIVILEGE_WAIT:?} (no privileged_entities for the component, the privilege \
                     module not loaded on that VirtualHost or on the Component, or {domain} not \
                     served by this server)"
                ),
            );
        }
        self.become_ready().await;
    }

    /// `domain` grants no roster privilege: report it, and reschedule the reconnect that looks
    /// again ([`reschedule`](Self::reschedule)).
    fn missing(&mut self, domain: &str, reason: String) {
        let fix = privilege_fix(domain, &self.component);
        if !self.state.warned_no_privilege {
            self.state.warned_no_privilege = true;
            warn!(%domain, "{reason}: nothing reaches this domain's contacts; updates are held and delivered once it is fixed. Fix: {fix}");
        }
        self.health.set_privilege(
            domain,
            Privilege::Missing {
                reason,
                fix,
                retry_at_ms: None,
            },
        );
        self.reschedule();
    }

    /// Decide the reconnect that looks again for missing privileges. Only while no served domain
    /// is granted: a reconnect replays everything held and interrupts the agent's exchanges, so
    /// it is not imposed on domains that work for the sake of one that does not (a typo in
    /// `[xmpp] domains`, a domain left without privileges); there SIGHUP connects again once the
    /// admin has fixed it.
    fn reschedule(&mut self) {
        let privileges = self.health.privileges();
        let any_missing = privileges
            .values()
            .any(|p| matches!(p, Privilege::Missing { .. }));
        let any_granted = privileges.values().any(Privilege::granted);
        if any_missing && !any_granted {
            let wait = self.state.retry_wait.unwrap_or(PRIVILEGE_RETRY);
            let at = *self
                .state
                .retry_at
                .get_or_insert_with(|| Instant::now() + wait);
            let in_ms = at.saturating_duration_since(Instant::now()).as_millis() as u64;
            self.health.set_privilege_retry(Some(now_ms() + in_ms));
        } else {
            self.state.retry_at = None;
            self.health.set_privilege_retry(None);
        }
    }

    /// A roster request refused as forbidden for a domain whose privileges were granted: they
    /// were withdrawn (ejabberd drops them when another connection of the component
    /// disconnects). Reported, and the retry scheduled, like privileges missing at connect.
    fn on_roster_refused(
        &mut self,
        user: &BareJid,
        error: &xmpp_parsers::stanza_error::StanzaError,
    ) {
        use xmpp_parsers::stanza_error::DefinedCondition as C;
        let domain = user.domain().as_str().to_string();
        if matches!(error.defined_condition, C::Forbidden | C::NotAuthorized)
            && self
                .health
                .privileges()
                .get(&domain)
                .is_some_and(Privilege::granted)
        {
            self.missing(
                &domain,
                format!(
                    "the server refused a roster request for {domain}: the XEP-0356 roster \
                     privilege was withdrawn (on ejabberd, another connection of this component \
                     disconnected?)"
                ),
            );
        }
    }

    /// A served domain without privileges answered our disco#info query with an error: the
    /// server does not serve it (a typo in `[xmpp] domains`, or the wrong server).
    fn not_served(&mut self, domain: &str, error: &xmpp_parsers::stanza_error::StanzaError) {
        use xmpp_parsers::stanza_error::DefinedCondition as C;
        debug!(%domain, condition = ?error.defined_condition, "a served domain's disco#info answer");
        if !self.domains.contains(domain)
            || !matches!(
                error.defined_condition,
                C::RemoteServerNotFound
                    | C::RemoteServerTimeout
                    | C::ItemNotFound
                    | C::ServiceUnavailable
                    // Prosody 0.12 (without s2s) for a host it does not have: measured by
                    // tests/diagnostics.rs.
                    | C::NotAllowed
            )
        {
            return; // another error says nothing about the domain: the reason given stands
        }
        let reason = format!(
            "the XMPP server does not serve {domain} (it answered a disco#info query with \
             {}): check [xmpp] domains, and that the server has this VirtualHost (Prosody) or \
             host (ejabberd)",
            minidom::Element::from(error.defined_condition.clone()).name()
        );
        warn!(%domain, "{reason}");
        let fix = format!(
            "remove {domain} from [xmpp] domains, or add it to the XMPP server (Prosody: \
             VirtualHost \"{domain}\"; ejabberd: hosts) with the privileges of the shipped \
             snippet"
        );
        let retry_at_ms = match self.health.privileges().get(domain) {
            Some(Privilege::Missing { retry_at_ms, .. }) => *retry_at_ms,
            _ => None,
        };
        self.health.set_privilege(
            domain,
            Privilege::Missing {
                reason,
                fix,
                retry_at_ms,
            },
        );
    }

    /// Time to look again for missing privileges: reconnect (the server grants them at
    /// connect), and wait longer before the next time.
    pub(super) async fn on_privilege_retry(&mut self) {
        self.state.retry_at = None;
        let wait = self.state.retry_wait.unwrap_or(PRIVILEGE_RETRY);
        self.state.retry_wait = Some((wait * 2).min(PRIVILEGE_RETRY_MAX));
        info!("reconnecting to look again for the missing XEP-0356 privileges");
        self.link
            .restart("to look again for missing XEP-0356 privileges".into())
            .await;
    }

    /// Start delivering: replay everything held. Every entry counts as undelivered again, and
    /// every user's roster is fetched (a slot at a time), which then delivers it all.
    async fn become_ready(&mut self) {
        if self.state.ready || !self.state.up {
            return;
        }
        self.set_ready(true);
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
        let from = from
            .map(|j| j.domain().as_str().to_string())
            .unwrap_or_default();
        if !self.domains.contains(&from) {
            warn!(%from, served = ?self.domains, "XEP-0356 privileges advertised by a domain that is not served ([xmpp] domains): were privileged_entities set on the wrong VirtualHost?");
            return;
        }
        self.state.advertised.insert(from.clone());
        if p.can_get_roster() {
            let was = self.health.privileges().get(&from).cloned();
            self.health.set_privilege(
                &from,
                Privilege::Granted {
                    roster: p.roster.clone().unwrap_or_default(),
                    presence: p
                        .gets_presence()
                        .then(|| p.presence.clone().unwrap_or_default()),
                },
            );
            self.reschedule();
            // After the report: a reader of this line finds the health record up to date.
            info!(%from, namespace = p.namespace, roster = ?p.roster, presence = ?p.presence, "XEP-0356 privileges granted");
            // Granted after we became ready (late, or again after a refusal): its users' held
            // statuses go out now.
            if self.state.ready && !was.as_ref().is_some_and(Privilege::granted) {
                let users: Vec<BareJid> = self
                    .deliverer
                    .users()
                    .into_iter()
                    .filter(|u| u.domain().as_str() == from)
                    .collect();
                self.rosters.replay_more(users).await;
            }
        } else {
            self.missing(
                &from,
                format!(
                    "the server's privilege advertisement for {from} grants no roster access \
                     (roster = {:?}): rosters cannot be read",
                    p.roster.as_deref().unwrap_or("none")
                ),
            );
        }
        self.sessions.set_presence_granted(p.gets_presence());
        if !p.gets_presence() {
            warn!(%from, "the server does not forward users' presence: contacts who log in later will not see held statuses; grant presence = \"managed_entity\"");
        }
        if self.state.advertised.len() == self.domains.len() {
            self.state.privilege_deadline = None;
            if self.health.privileges().values().all(Privilege::granted) {
                self.state.warned_no_privilege = false;
                self.state.retry_wait = None;
                self.state.retry_at = None;
            }
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
                if id.starts_with(DOMAIN_CHECK) {
                    return; // the domain exists: the missing privileges' reason stands
                }
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
                if let Some(domain) = id.strip_prefix(DOMAIN_CHECK) {
                    let domain = domain.to_string();
                    self.not_served(&domain, error);
                    return;
                }
                if self.sessions.is_sync(id) {
                    self.sessions.synced(None);
                    return;
                }
                let Some(user) = self.rosters.take_request(id) else {
                    return;
                };
                self.rosters.on_refused(&user, error);
                self.on_roster_refused(&user, error);
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
