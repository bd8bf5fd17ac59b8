//! Fan-out delivery for Prosody and ejabberd (XEP-0356).
//!
//! This task owns what the server tells us about users and contacts: the roster cache (who
//! receives a user's presence: subscription `from` or `both`) and its reverse index (whose
//! presence a contact receives); it feeds the read model ([`Observed`]) with the presence the
//! server forwards under the XEP-0356 presence permission, which is also its list of the contact
//! resources online. It turns table changes into one directed presence per
//! subscribed contact, re-sends held presences to a contact resource that comes online, replays
//! everything after every (re)connect, and sends `unavailable` for every held resource on shutdown.
//! It also carries the agent's stanzas in users' names ([`Exchange`]: presences, then an iq whose
//! answer it routes back) while it is ready, and tells the agent when it is.
//!
//! Rosters are cached for immediate delivery, but every change of a user also schedules a refresh
//! of that user's roster, sent at the next [`ROSTER_REFRESH`] tick (so at most one per user and
//! tick, however often the user changes; at most one request in flight per user): a contact added
//! since the last fetch is sent the held presences when the fresh roster arrives, and a contact
//! removed gets `unavailable`. A change of a user whose roster is not cached fetches it at once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use jid::{BareJid, FullJid, Jid};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::base::escape::Escaped;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::stanza::Stanza;

use crate::agent::Exchange;
use crate::base::clock::now_ms;
use crate::events::{Cause, EventHub};
use crate::metrics::Metrics;
use crate::model::{Announced, RosterItem};
use crate::observe::ejabberd_api::Polled;
use crate::observe::{Observed, RosterQuery};
use crate::status::{Changes, Held, Roster, StatusTable};
use crate::xmpp::stanzas::{self, PresenceBatch, PresenceTemplate, Privileges};
use crate::xmpp::{LinkEvent, LinkHandle};

/// Most presences in one batch to the link. The link's queue is bounded in commands, so this
/// bounds what it can hold (a user with thousands of contacts, a replay against a slow server).
const BATCH_MAX: usize = 32;
/// How long to wait for the privilege advertisement after the handshake before warning and going on.
const PRIVILEGE_WAIT: Duration = Duration::from_secs(5);
/// A roster request without an answer for this long is given up and may be sent again.
const ROSTER_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the rosters of users changed since the last tick are fetched again. Fetching on
/// every change cost one roster get per status update, on the server and here (the benchmark's
/// P3: 47 -> 30 µs of extpresence's CPU per update without it, and Prosody loads an offline
/// user's roster from storage for each).
pub const ROSTER_REFRESH: Duration = Duration::from_secs(1);
/// Most roster requests in flight at once (replays of many users queue behind this).
const MAX_ROSTER_INFLIGHT: usize = 256;

/// Requests to the fan-out task.
#[derive(Debug)]
pub enum Control {
    /// Send `unavailable` for every held resource, then answer.
    Shutdown(oneshot::Sender<()>),
}

/// What the fan-out task needs.
pub struct FanoutConfig {
    /// The component's JID (sender of roster requests).
    pub component: BareJid,
    /// Roster cache counters.
    pub metrics: std::sync::Arc<Metrics>,
    /// A served domain: the disco query that ends the server's announcement of sessions goes
    /// there.
    pub domain: BareJid,
    /// Served domains (events are for served users only).
    pub domains: std::collections::BTreeSet<String>,
    /// The read model the forwarded presence feeds.
    pub observed: Observed,
    /// Told of every change of a served user's sessions.
    pub hub: EventHub,
    /// ejabberd's admin API, when configured: its session lists, and the trigger of a poll.
    pub api: Option<(mpsc::Receiver<Polled>, Arc<Notify>)>,
    /// The agent's exchanges (stanzas in users' names), and where readiness is told.
    pub agent: Option<(mpsc::Receiver<Exchange>, watch::Sender<bool>)>,
}

/// An exchange of the agent waiting for its iq's answer.
struct Waiting {
    since: Instant,
    changes_roster_of: Option<BareJid>,
    answer: oneshot::Sender<Result<Result<Option<minidom::Element>, String>, String>>,
}

/// Where a roster read for the API is answered.
type RosterAnswer = oneshot::Sender<Result<Arc<[RosterItem]>, String>>;

/// How long a roster read for the API is reused: at most one roster get per user and second.
const CONTACTS_FRESH: Duration = Duration::from_secs(1);

#[derive(Default)]
struct RosterRequests {
    /// iq id → user.
    by_id: HashMap<String, (BareJid, Instant)>,
    /// Users with a request in flight.
    inflight: HashSet<BareJid>,
    /// Users whose roster must be fetched again once the request in flight is answered.
    again: HashSet<BareJid>,
    /// Users waiting for a free slot.
    queue: VecDeque<BareJid>,
    queued: HashSet<BareJid>,
    next_id: u64,
}

struct Fanout {
    cfg: FanoutConfig,
    table: StatusTable,
    link: LinkHandle,
    /// Link is up (handshake done).
    up: bool,
    /// Ready to send: link up and privileges advertised (or the wait for them is over).
    ready: bool,
    /// End of the wait for the privilege advertisement after the last connect.
    privilege_deadline: Option<Instant>,
    /// Warned once already that no advertisement arrived.
    warned_no_privilege: bool,
    /// The cached roster of a user with an empty roster (shared: one allocation for all).
    no_contacts: Roster,
    /// contact → users whose presence the contact receives.
    followers: HashMap<BareJid, HashSet<BareJid>>,
    /// Users whose roster is still to be requested for the replay after a (re)connect; they
    /// take a request slot when one is free (the replay itself is the table's `delivered`
    /// marks being reset, so the fresh roster delivers everything). Emptied, and its memory
    /// freed, as the replay proceeds: with a million users a set of them costs ~70 MB.
    replay: Vec<BareJid>,
    requests: RosterRequests,
    /// Users changed since the last [`ROSTER_REFRESH`] tick whose cached roster is to be
    /// refreshed at the next.
    refresh: HashSet<BareJid>,
    /// The server forwards users' presence to us (advertised privilege).
    presence_granted: bool,
    /// The id of the disco query sent after the privilege advertisement; its answer ends the
    /// server's announcement of the sessions online.
    sync_id: Option<String>,
    sync_count: u64,
    /// Sessions known before the link came up and not announced again since.
    unconfirmed: HashSet<FullJid>,
    /// Full rosters read for the API, reused for [`CONTACTS_FRESH`].
    contacts: HashMap<BareJid, (Instant, Arc<[RosterItem]>)>,
    /// API readers waiting for a user's roster.
    contact_waiters: HashMap<BareJid, Vec<RosterAnswer>>,
    /// Asks ejabberd's admin API for the sessions at once (`[observe] ejabberd_api`).
    api_now: Option<Arc<Notify>>,
    /// The last poll of that API succeeded.
    api_ok: bool,
    /// Its failure has been logged since it last succeeded.
    api_warned: bool,
    /// Synchronised since the link came up (the disco answer arrived).
    synced: bool,
    /// Told whether we are ready (the agent sends only then).
    agent_ready: Option<watch::Sender<bool>>,
    /// The agent's exchanges waiting for their iq's answer, by iq id.
    exchanges: HashMap<String, Waiting>,
}

/// Run the fan-out task until shutdown.
pub async fn run(
    cfg: FanoutConfig,
    table: StatusTable,
    mut changes: Changes,
    link: LinkHandle,
    mut events: mpsc::UnboundedReceiver<LinkEvent>,
    mut control: mpsc::Receiver<Control>,
    mut roster_queries: mpsc::Receiver<RosterQuery>,
) {
    let mut cfg = cfg;
    let (mut api_polls, api_now) = match cfg.api.take() {
        Some((polls, now)) => (Some(polls), Some(now)),
        None => (None, None),
    };
    let (mut agent_rx, agent_ready) = match cfg.agent.take() {
        Some((rx, ready)) => (Some(rx), Some(ready)),
        None => (None, None),
    };
    let mut f = Fanout {
        cfg,
        table,
        link,
        up: false,
        ready: false,
        privilege_deadline: None,
        warned_no_privilege: false,
        no_contacts: Arc::new(Box::new([])),
        followers: HashMap::new(),
        replay: Vec::new(),
        requests: RosterRequests::default(),
        refresh: HashSet::new(),
        presence_granted: false,
        sync_id: None,
        sync_count: 0,
        unconfirmed: HashSet::new(),
        contacts: HashMap::new(),
        contact_waiters: HashMap::new(),
        api_now,
        api_ok: false,
        api_warned: false,
        synced: false,
        agent_ready,
        exchanges: HashMap::new(),
    };
    let mut refresh = tokio::time::interval(ROSTER_REFRESH);
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    loop {
        let deadline = f.privilege_deadline;
        tokio::select! {
            Some(user) = changes.recv() => f.on_change(user).await,
            Some(ev) = events.recv() => f.on_link(ev).await,
            _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => {
                f.privilege_deadline = None;
                if !f.warned_no_privilege {
                    f.warned_no_privilege = true;
                    warn!(
                        "no XEP-0356 privilege advertisement from the server within {PRIVILEGE_WAIT:?}: \
                         rosters and contacts' presence are unavailable. Prosody: load \"privilege\" \
                         globally and on the Component, and set privileged_entities = {{ [\"{c}\"] = \
                         {{ roster = \"get\"; presence = \"managed_entity\" }} }} on the VirtualHost. \
                         ejabberd: mod_privilege with roster: {{get: …}} and presence: \
                         {{managed_entity: …}} for {c}",
                        c = f.cfg.component
                    );
                }
                f.become_ready().await;
            }
            _ = sweep.tick() => {
                f.expire_requests().await;
                f.expire_exchanges();
                let now = Instant::now();
                f.contacts.retain(|_, (at, _)| now.duration_since(*at) < CONTACTS_FRESH);
            }
            Some(q) = roster_queries.recv() => f.on_roster_query(q).await,
            Some(x) = async {
                match agent_rx.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => f.on_exchange(x).await,
            Some(p) = async {
                match api_polls.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => f.on_polled(p),
            _ = refresh.tick() => f.refresh_rosters().await,
            Some(ctl) = control.recv() => match ctl {
                Control::Shutdown(done) => {
                    f.shutdown().await;
                    let _ = done.send(());
                    return;
                }
            },
            else => return,
        }
    }
}

impl Fanout {
    async fn send(&self, stanza: stanzas::Outbound) {
        self.link.send(stanza).await;
    }

    fn set_ready(&mut self, ready: bool) {
        self.ready = ready;
        if let Some(tx) = &self.agent_ready {
            tx.send_replace(ready);
        }
    }

    /// The agent's stanzas: sent in order when ready, the iq's answer routed back.
    async fn on_exchange(&mut self, x: Exchange) {
        if !self.ready {
            let _ = x.answer.send(Err("the XMPP link is down".into()));
            return;
        }
        self.link.send_batch(x.presences).await;
        self.exchanges.insert(
            x.id,
            Waiting {
                since: Instant::now(),
                changes_roster_of: x.changes_roster_of,
                answer: x.answer,
            },
        );
        self.send(x.iq).await;
    }

    fn expire_exchanges(&mut self) {
        let now = Instant::now();
        let old: Vec<String> = self
            .exchanges
            .iter()
            .filter(|(_, w)| now.duration_since(w.since) > ROSTER_TIMEOUT)
            .map(|(id, _)| id.clone())
            .collect();
        for id in old {
            if let Some(w) = self.exchanges.remove(&id) {
                let _ = w.answer.send(Err("no answer from the server".into()));
            }
        }
    }

    fn full(user: &BareJid, held: &Held) -> FullJid {
        user.with_resource(&held.resource)
    }

    /// One entry of `user`, rendered once: its presence, or `unavailable` for a tombstone.
    fn template(user: &BareJid, held: &Held) -> PresenceTemplate {
        PresenceTemplate::new(&Self::full(user, held), held.status.as_ref())
    }

    /// `unavailable` of one entry of `user`, whatever its status.
    fn unavailable(user: &BareJid, held: &Held) -> PresenceTemplate {
        PresenceTemplate::new(&Self::full(user, held), None)
    }

    /// Send `template` to each of `to`, in batches of at most [`BATCH_MAX`].
    async fn send_to<'a>(
        &self,
        template: &PresenceTemplate,
        to: impl IntoIterator<Item = &'a BareJid>,
    ) {
        let mut batch = PresenceBatch::new();
        for jid in to {
            template.push_to(&mut batch, jid.as_str());
            if batch.len() >= BATCH_MAX {
                self.link.send_batch(std::mem::take(&mut batch)).await;
            }
        }
        self.link.send_batch(batch).await;
    }

    /// Deliver the entries of `user` changed since their last delivery to the cached contacts,
    /// and mark them delivered.
    async fn deliver(&self, user: &BareJid) {
        let Some(contacts) = self.table.roster(user) else {
            return;
        };
        for held in self.table.entries(user) {
            if held.delivered == held.seq {
                continue;
            }
            self.send_to(&Self::template(user, &held), contacts.iter())
                .await;
            self.table.mark_delivered(user, &held.resource, held.seq);
        }
    }

    async fn on_change(&mut self, user: BareJid) {
        if !self.ready {
            return; // replayed when ready
        }
        if self.table.roster(&user).is_some() {
            Metrics::inc(&self.cfg.metrics.roster_hits);
            self.deliver(&user).await;
            self.refresh.insert(user);
        } else {
            Metrics::inc(&self.cfg.metrics.roster_misses);
            self.request_roster(user).await;
        }
    }

    /// Fetch again the rosters of the users changed since the last tick.
    async fn refresh_rosters(&mut self) {
        if self.refresh.is_empty() {
            return;
        }
        for user in std::mem::take(&mut self.refresh) {
            self.request_roster(user).await;
        }
    }

    async fn on_link(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Up => {
                self.up = true;
                self.set_ready(false);
                self.privilege_deadline = Some(Instant::now() + PRIVILEGE_WAIT);
                self.presence_granted = false;
                // Sessions seen before are kept (flagged incomplete) until the server has
                // announced again who is online.
                self.unconfirmed = self.cfg.observed.session_jids().into_iter().collect();
            }
            LinkEvent::Down => {
                self.up = false;
                self.set_ready(false);
                for (_, w) in self.exchanges.drain() {
                    let _ = w.answer.send(Err("the XMPP link went down".into()));
                }
                self.privilege_deadline = None;
                // Answers to requests of the old stream never come.
                self.cfg.observed.set_complete(false);
                self.sync_id = None;
                self.synced = false;
                for (_, waiters) in self.contact_waiters.drain() {
                    for w in waiters {
                        let _ = w.send(Err("the XMPP link is down".into()));
                    }
                }
                self.requests = RosterRequests::default();
                self.replay = Vec::new();
                self.refresh = HashSet::new();
            }
            LinkEvent::Stanza(stanza) => self.on_stanza(*stanza).await,
        }
    }

    /// Start delivering: replay everything held. Every entry counts as undelivered again, and
    /// every user's roster is fetched (a slot at a time), which then delivers it all.
    async fn become_ready(&mut self) {
        if self.ready || !self.up {
            return;
        }
        self.set_ready(true);
        self.privilege_deadline = None;
        self.table.forget_deliveries();
        self.sync_count += 1;
        let id = format!("sync-{}", self.sync_count);
        self.sync_id = Some(id.clone());
        self.send(stanzas::server_info_query(
            &self.cfg.component,
            &self.cfg.domain,
            id,
        ))
        .await;
        self.replay = self.table.users();
        info!(users = self.replay.len(), "replaying held statuses");
        self.next_requests().await;
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
        self.presence_granted = p.gets_presence();
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
        let contact = from.to_bare();
        if stanzas::is_own_echo(&p) {
            return; // one of our own presences, forwarded back (ejabberd, presence = roster)
        }
        // A resource that comes online (the read model's sessions are also the list of contact
        // resources online: one copy of each, BENCHMARKS.md P8).
        let newly =
            p.type_ == PresenceType::None && self.cfg.observed.session_since(&from).is_none();
        if let Some(what) = stanzas::announced(&p, now_ms()) {
            self.unconfirmed.remove(&from);
            if self.cfg.observed.announce(&from, what) && self.serves(&contact) {
                self.cfg.hub.notify(contact, Cause::Session);
            }
        }
        if newly {
            self.greet(&from).await;
        }
    }

    /// A contact resource came online: send it every held presence of users it follows.
    async fn greet(&self, contact: &FullJid) {
        if !self.ready {
            return; // the replay after connect reaches it through its bare JID
        }
        let Some(users) = self.followers.get(&contact.to_bare()) else {
            return;
        };
        let mut batch = PresenceBatch::new();
        for user in users {
            for held in self.table.entries(user) {
                if held.status.is_some() {
                    Self::template(user, &held).push_to(&mut batch, contact.as_str());
                    if batch.len() >= BATCH_MAX {
                        self.link.send_batch(std::mem::take(&mut batch)).await;
                    }
                }
            }
        }
        self.link.send_batch(batch).await;
        debug!(%contact, users = users.len(), "contact online: held presences sent");
    }

    async fn on_iq(&mut self, iq: Iq) {
        if let Iq::Result { id, .. } | Iq::Error { id, .. } = &iq {
            if let Some(w) = self.exchanges.remove(id.as_str()) {
                if let Some(user) = &w.changes_roster_of {
                    self.contacts.remove(user);
                }
                let answer = match iq {
                    Iq::Result { payload, .. } => Ok(payload),
                    Iq::Error { error, .. } => Err(stanzas::error_reason(&error)),
                    _ => unreachable!("matched above"),
                };
                let _ = w.answer.send(Ok(answer));
                return;
            }
        }
        match &iq {
            Iq::Get { .. } | Iq::Set { .. } => {
                if let Some(answer) = stanzas::answer_request(&self.cfg.component, &iq) {
                    self.send(answer).await;
                }
            }
            Iq::Result { id, payload, .. } => {
                if self.sync_id.as_deref() == Some(id.as_str()) {
                    self.synced(stanzas::server_name(payload.as_ref())).await;
                    return;
                }
                let Some((user, _)) = self.requests.by_id.remove(id) else {
                    return;
                };
                match stanzas::roster_items(payload.as_ref()) {
                    Ok(items) => {
                        let contacts = items
                            .iter()
                            .filter(|i| i.sees_user())
                            .map(|i| i.jid.clone())
                            .collect();
                        self.answer_contacts(&user, Ok(items.into()));
                        self.on_roster(user.clone(), contacts).await;
                    }
                    Err(e) => {
                        warn!(%user, error = %e, "unparseable roster result");
                        self.answer_contacts(&user, Err(format!("unparseable roster: {e}")));
                    }
                }
                self.request_done(user).await;
            }
            Iq::Error { id, error, .. } => {
                if self.sync_id.as_deref() == Some(id.as_str()) {
                    self.synced(None).await;
                    return;
                }
                let Some((user, _)) = self.requests.by_id.remove(id) else {
                    return;
                };
                self.answer_contacts(
                    &user,
                    Err(format!(
                        "the server refused the roster request: {}",
                        stanzas::error_reason(error)
                    )),
                );
                warn!(
                    %user,
                    condition = ?error.defined_condition,
                    text = ?error.texts.values().next(),
                    "the server refused the roster request; check the roster privilege \
                     (Prosody: privileged_entities roster = \"get\" and \"privilege\" in the \
                     Component's modules_enabled; ejabberd: mod_privilege roster: {{get: …}})"
                );
                self.requests.again.remove(&user);
                self.request_done(user).await;
            }
        }
    }

    fn serves(&self, jid: &BareJid) -> bool {
        self.cfg.domains.contains(jid.domain().as_str())
    }

    /// The server answered the disco query sent after the privilege advertisement: everything
    /// it announces at connect came before. Decide whether what we observe is complete.
    async fn synced(&mut self, server: Option<String>) {
        self.sync_id = None;
        self.synced = true;
        let name = server.unwrap_or_default();
        // ejabberd 23.01 announces no session at connect and forwards no `unavailable` when a
        // client closes its stream without one (measured; README "What the server tells").
        let is_ejabberd = name.to_ascii_lowercase().contains("ejabberd");
        let tells_all = self.presence_granted && !is_ejabberd;
        if let Some(now) = &self.api_now {
            // Its admin API fills the gaps: complete once a poll after this connect succeeded.
            self.api_ok = false;
            now.notify_one();
            if is_ejabberd {
                self.unconfirmed.clear();
                self.cfg.observed.set_complete(false);
                info!(server = %Escaped(&name), "observed sessions: asking ejabberd's admin API");
                return;
            }
        }
        if tells_all {
            // Sessions known before the link went and not announced again are gone.
            for jid in std::mem::take(&mut self.unconfirmed) {
                if self
                    .cfg
                    .observed
                    .announce(&jid, Announced::Unavailable { status: None })
                {
                    let user = jid.to_bare();
                    if self.serves(&user) {
                        self.cfg.hub.notify(user, Cause::Session);
                    }
                }
            }
        } else {
            self.unconfirmed.clear();
        }
        self.cfg.observed.set_complete(tells_all);
        info!(
            server = %Escaped(&name),
            presence_granted = self.presence_granted,
            complete = tells_all,
            "observed sessions synchronised"
        );
    }

    /// A session list from ejabberd's admin API: reconcile the observed sessions of served users
    /// with it. What changed after the request was sent is newer than the list and kept.
    fn on_polled(&mut self, p: Polled) {
        let sessions = match p.result {
            Ok(s) => s,
            Err(e) => {
                // Once per outage, not once per poll.
                if self.api_ok || !self.api_warned {
                    self.api_warned = true;
                    warn!(error = %Escaped(&e), "ejabberd's admin API did not list the sessions; observed sessions are incomplete until it does");
                }
                self.api_ok = false;
                self.cfg.observed.set_complete(false);
                return;
            }
        };
        if !self.synced {
            return; // the next poll after the link is up counts
        }
        let observed = &self.cfg.observed;
        let listed: HashSet<&FullJid> = sessions.iter().map(|s| &s.jid).collect();
        let mut changed: HashSet<BareJid> = HashSet::new();
        for jid in observed.session_jids() {
            let user = jid.to_bare();
            if !self.serves(&user) || listed.contains(&jid) {
                continue;
            }
            if observed.session_since(&jid).is_some_and(|t| t >= p.started) {
                continue; // announced after the list was made
            }
            if observed.announce(&jid, Announced::Unavailable { status: None }) {
                changed.insert(user);
            }
        }
        let now = now_ms();
        for s in sessions {
            let user = s.jid.to_bare();
            if !self.serves(&user) || observed.session_since(&s.jid).is_some() {
                continue;
            }
            if observed.last_active(&user) >= p.started {
                continue; // logged out (or changed) after the list was made
            }
            let since = now.saturating_sub(s.uptime_secs.saturating_mul(1000));
            let what = Announced::Available {
                show: s.show,
                status: s.status,
                priority: s.priority,
                since,
                extra: None,
            };
            if observed.announce(&s.jid, what) {
                changed.insert(user);
            }
        }
        for user in changed {
            self.cfg.hub.notify(user, Cause::Session);
        }
        if !self.api_ok {
            info!("observed sessions complete: ejabberd's admin API listed them");
        }
        self.api_ok = true;
        self.api_warned = false;
        observed.set_complete(true);
    }

    /// An API reader wants `q.user`'s roster: a fresh one from the cache, else from the server.
    async fn on_roster_query(&mut self, q: RosterQuery) {
        if let Some((at, items)) = self.contacts.get(&q.user) {
            if at.elapsed() < CONTACTS_FRESH {
                let _ = q.answer.send(Ok(items.clone()));
                return;
            }
        }
        if !self.ready {
            let _ = q.answer.send(Err("the XMPP link is down".into()));
            return;
        }
        let first = !self.contact_waiters.contains_key(&q.user);
        self.contact_waiters
            .entry(q.user.clone())
            .or_default()
            .push(q.answer);
        if first {
            self.request_roster(q.user).await;
        }
    }

    /// A roster read for `user` finished: answer the API readers waiting for it.
    fn answer_contacts(&mut self, user: &BareJid, result: Result<Arc<[RosterItem]>, String>) {
        let Some(waiters) = self.contact_waiters.remove(user) else {
            return;
        };
        if let Ok(items) = &result {
            self.contacts
                .insert(user.clone(), (Instant::now(), items.clone()));
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }

    async fn on_roster(&mut self, user: BareJid, contacts: Vec<BareJid>) {
        let new: HashSet<BareJid> = contacts.into_iter().collect();
        let cached = if new.is_empty() {
            self.no_contacts.clone()
        } else {
            Arc::new(new.iter().cloned().collect())
        };
        let old: Option<HashSet<BareJid>> = self
            .table
            .replace_roster(&user, cached)
            .map(|old| old.iter().cloned().collect());
        for c in old.iter().flatten().filter(|c| !new.contains(*c)) {
            if let Some(f) = self.followers.get_mut(c) {
                f.remove(&user);
                if f.is_empty() {
                    self.followers.remove(c);
                }
            }
        }
        for c in &new {
            self.followers
                .entry(c.clone())
                .or_default()
                .insert(user.clone());
        }
        let entries = self.table.entries(&user);
        if let Some(old) = &old {
            // Contacts gone since the last fetch no longer see us; new ones get what the others
            // already have (after a reconnect nothing counts as delivered: all goes below).
            for held in entries.iter().filter(|h| h.status.is_some()) {
                self.send_to(&Self::unavailable(&user, held), old.difference(&new))
                    .await;
                if held.delivered == held.seq {
                    self.send_to(&Self::template(&user, held), new.difference(old))
                        .await;
                }
            }
        }
        // Whatever is not yet delivered goes to everyone now.
        self.deliver(&user).await;
    }

    async fn request_roster(&mut self, user: BareJid) {
        let r = &mut self.requests;
        if r.inflight.contains(&user) {
            r.again.insert(user);
            return;
        }
        if r.inflight.len() >= MAX_ROSTER_INFLIGHT {
            if r.queued.insert(user.clone()) {
                r.queue.push_back(user);
            }
            return;
        }
        r.next_id += 1;
        let id = format!("roster-{}", r.next_id);
        r.inflight.insert(user.clone());
        r.by_id.insert(id.clone(), (user.clone(), Instant::now()));
        let iq = stanzas::roster_get(&self.cfg.component, &user, id);
        self.send(iq).await;
    }

    /// A request for `user` finished: fetch again if asked, and let queued users go.
    async fn request_done(&mut self, user: BareJid) {
        self.requests.inflight.remove(&user);
        if self.requests.again.remove(&user) {
            self.request_roster(user).await;
        }
        self.next_requests().await;
    }

    /// Fill free request slots: queued users first, then the replay.
    async fn next_requests(&mut self) {
        while self.requests.inflight.len() < MAX_ROSTER_INFLIGHT {
            if let Some(next) = self.requests.queue.pop_front() {
                self.requests.queued.remove(&next);
                self.request_roster(next).await;
            } else if let Some(next) = self.replay.pop() {
                self.request_roster(next).await;
            } else {
                break;
            }
        }
        // Give back what a burst (or a replay) made these grow to.
        let r = &mut self.requests;
        if r.queue.is_empty() && r.queued.capacity() > 4 * MAX_ROSTER_INFLIGHT {
            r.queue = VecDeque::new();
            r.queued = HashSet::new();
        }
        if self.replay.is_empty() && self.replay.capacity() > 0 {
            self.replay = Vec::new();
        }
    }

    async fn expire_requests(&mut self) {
        let now = Instant::now();
        let expired: Vec<(String, BareJid)> = self
            .requests
            .by_id
            .iter()
            .filter(|(_, (_, t))| now.duration_since(*t) > ROSTER_TIMEOUT)
            .map(|(id, (u, _))| (id.clone(), u.clone()))
            .collect();
        for (id, user) in expired {
            warn!(%user, "no answer to the roster request; retrying");
            self.requests.by_id.remove(&id);
            self.requests.again.insert(user.clone());
            self.request_done(user).await;
        }
    }

    async fn shutdown(&mut self) {
        if !self.up {
            warn!("XMPP link is down: contacts keep seeing held statuses until the server notices");
            return;
        }
        let mut sent = 0usize;
        for user in self.table.users() {
            let Some(contacts) = self.table.roster(&user) else {
                continue;
            };
            for held in self.table.entries(&user) {
                if held.status.is_some() {
                    self.send_to(&Self::unavailable(&user, &held), contacts.iter())
                        .await;
                    sent += contacts.len();
                }
            }
        }
        info!(sent, "sent unavailable for held resources");
    }
}
