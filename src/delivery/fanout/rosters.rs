//! The roster cache: who receives a user's presence, fetched from the server (XEP-0356).
//!
//! [`Rosters`] keeps the cached rosters up to date (they live in the table, read by the
//! delivery) and their reverse index (whose presence a contact receives). It sends the roster
//! requests: at most one in flight per user and [`MAX_ROSTER_INFLIGHT`] in all (the others
//! queue), a refresh of every user changed since the last [`ROSTER_REFRESH`] tick, the replay
//! of every user after a connect a slot at a time, and a retry of a request left unanswered.
//! It also answers the read side's roster queries ([`RosterQuery`]), reusing a full roster for
//! [`CONTACTS_FRESH`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use jid::BareJid;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{info, warn};
use xmpp_parsers::stanza_error::StanzaError;

use super::ROSTER_TIMEOUT;
use crate::model::RosterItem;
use crate::observe::RosterQuery;
use crate::status::{Roster, StatusTable};
use crate::xmpp::stanzas;
use crate::xmpp::LinkHandle;

/// How often the rosters of users changed since the last tick are fetched again. Fetching on
/// every change cost one roster get per status update, on the server and here (the benchmark's
/// P3: 47 -> 30 µs of extpresence's CPU per update without it, and Prosody loads an offline
/// user's roster from storage for each).
pub const ROSTER_REFRESH: Duration = Duration::from_secs(1);
/// Most roster requests in flight at once (replays of many users queue behind this).
const MAX_ROSTER_INFLIGHT: usize = 256;

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

/// The roster cache, its reverse index and the requests that fill it.
pub(super) struct Rosters {
    /// The component's JID (sender of roster requests).
    component: BareJid,
    /// Holds the cached rosters (read by the delivery).
    table: StatusTable,
    /// Where roster requests go.
    link: LinkHandle,
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
    /// Full rosters read for the API, reused for [`CONTACTS_FRESH`].
    contacts: HashMap<BareJid, (Instant, Arc<[RosterItem]>)>,
    /// API readers waiting for a user's roster.
    contact_waiters: HashMap<BareJid, Vec<RosterAnswer>>,
}

impl Rosters {
    pub(super) fn new(component: BareJid, table: StatusTable, link: LinkHandle) -> Self {
        Rosters {
            component,
            table,
            link,
            no_contacts: Arc::new(Box::new([])),
            followers: HashMap::new(),
            replay: Vec::new(),
            requests: RosterRequests::default(),
            refresh: HashSet::new(),
            contacts: HashMap::new(),
            contact_waiters: HashMap::new(),
        }
    }

    /// The users whose presence `contact` receives.
    pub(super) fn followers(&self, contact: &BareJid) -> Option<&HashSet<BareJid>> {
        self.followers.get(contact)
    }

    /// `user` changed: refresh its cached roster at the next tick.
    pub(super) fn refresh_later(&mut self, user: BareJid) {
        self.refresh.insert(user);
    }

    /// Fetch again the rosters of the users changed since the last tick.
    pub(super) async fn refresh(&mut self) {
        if self.refresh.is_empty() {
            return;
        }
        for user in std::mem::take(&mut self.refresh) {
            self.request(user).await;
        }
    }

    /// The link went down: answers to requests of the old stream never come.
    pub(super) fn link_down(&mut self) {
        for (_, waiters) in self.contact_waiters.drain() {
            for w in waiters {
                let _ = w.send(Err("the XMPP link is down".into()));
            }
        }
        self.requests = RosterRequests::default();
        self.replay = Vec::new();
        self.refresh = HashSet::new();
    }

    /// The replay after a connect: fetch the roster of each of `users`, a slot at a time.
    pub(super) async fn replay(&mut self, users: Vec<BareJid>) {
        self.replay = users;
        info!(users = self.replay.len(), "replaying held statuses");
        self.next_requests().await;
    }

    /// Add `users` to the replay under way (or start one): a domain whose privileges came late.
    pub(super) async fn replay_more(&mut self, users: Vec<BareJid>) {
        info!(
            users = users.len(),
            "replaying held statuses of a domain granted late"
        );
        self.replay.extend(users);
        self.next_requests().await;
    }

    /// The agent changed `user`'s roster: the full roster read for the API is stale.
    pub(super) fn forget_contacts(&mut self, user: &BareJid) {
        self.contacts.remove(user);
    }

    /// Drop the full rosters read for the API longer than [`CONTACTS_FRESH`] ago.
    pub(super) fn expire_contacts(&mut self) {
        let now = Instant::now();
        self.contacts
            .retain(|_, (at, _)| now.duration_since(*at) < CONTACTS_FRESH);
    }

    /// An API reader wants `q.user`'s roster: a fresh one from the cache, else from the server
    /// (if `ready`).
    pub(super) async fn on_query(&mut self, q: RosterQuery, ready: bool) {
        if let Some((at, items)) = self.contacts.get(&q.user) {
            if at.elapsed() < CONTACTS_FRESH {
                let _ = q.answer.send(Ok(items.clone()));
                return;
            }
        }
        if !ready {
            let _ = q.answer.send(Err("the XMPP link is down".into()));
            return;
        }
        let first = !self.contact_waiters.contains_key(&q.user);
        self.contact_waiters
            .entry(q.user.clone())
            .or_default()
            .push(q.answer);
        if first {
            self.request(q.user).await;
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

    /// The user whose roster request has iq id `id`, if one is in flight (it is no longer).
    pub(super) fn take_request(&mut self, id: &str) -> Option<BareJid> {
        self.requests.by_id.remove(id).map(|(user, _)| user)
    }

    /// The roster of `user` arrived: answer the API readers, and return the contacts who see
    /// the user (None if it does not parse).
    pub(super) fn on_result(
        &mut self,
        user: &BareJid,
        payload: Option<&minidom::Element>,
    ) -> Option<Vec<BareJid>> {
        match stanzas::roster_items(payload) {
            Ok(items) => {
                let contacts = items
                    .iter()
                    .filter(|i| i.sees_user())
                    .map(|i| i.jid.clone())
                    .collect();
                self.answer_contacts(user, Ok(items.into()));
                Some(contacts)
            }
            Err(e) => {
                warn!(%user, error = %e, "unparseable roster result");
                self.answer_contacts(user, Err(format!("unparseable roster: {e}")));
                None
            }
        }
    }

    /// The server refused the roster request for `user`: tell the API readers, and fetch it
    /// no more until asked again.
    pub(super) fn on_refused(&mut self, user: &BareJid, error: &StanzaError) {
        self.answer_contacts(
            user,
            Err(format!(
                "the server refused the roster request: {}",
                stanzas::error_reason(error)
            )),
        );
        warn!(
            %user,
            condition = ?error.defined_condition,
            text = ?error.texts.values().next(),
            "the server refused the roster request; check the roster privilege as in the \
             shipped snippets (Prosody, etc/prosody/extpresence.cfg.lua: privileged_entities \
             roster = \"both\" on the VirtualHost, and modules_enabled = {{ \"privilege\" }} on \
             the VirtualHost and on the Component; ejabberd, etc/ejabberd/extpresence.yml: \
             mod_privilege roster: {{get: privileged}}); GET /readyz names what is missing"
        );
        self.requests.again.remove(user);
    }

    /// Cache `contacts` as `user`'s roster and update the reverse index. Returns the roster
    /// cached before (if any) and the new one, for the delivery to tell the difference.
    pub(super) fn store(
        &mut self,
        user: &BareJid,
        contacts: Vec<BareJid>,
    ) -> (Option<HashSet<BareJid>>, HashSet<BareJid>) {
        let new: HashSet<BareJid> = contacts.into_iter().collect();
        let cached = if new.is_empty() {
            self.no_contacts.clone()
        } else {
            Arc::new(new.iter().cloned().collect())
        };
        let old: Option<HashSet<BareJid>> = self
            .table
            .replace_roster(user, cached)
            .map(|old| old.iter().cloned().collect());
        for c in old.iter().flatten().filter(|c| !new.contains(*c)) {
            if let Some(f) = self.followers.get_mut(c) {
                f.remove(user);
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
        (old, new)
    }

    /// Ask the server for `user`'s roster (or once more after the request in flight, or when a
    /// slot is free).
    pub(super) async fn request(&mut self, user: BareJid) {
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
        let iq = stanzas::roster_get(&self.component, &user, id);
        self.link.send(iq).await;
    }

    /// A request for `user` finished: fetch again if asked, and let queued users go.
    pub(super) async fn request_done(&mut self, user: BareJid) {
        self.requests.inflight.remove(&user);
        if self.requests.again.remove(&user) {
            self.request(user).await;
        }
        self.next_requests().await;
    }

    /// Fill free request slots: queued users first, then the replay.
    async fn next_requests(&mut self) {
        while self.requests.inflight.len() < MAX_ROSTER_INFLIGHT {
            if let Some(next) = self.requests.queue.pop_front() {
                self.requests.queued.remove(&next);
                self.request(next).await;
            } else if let Some(next) = self.replay.pop() {
                self.request(next).await;
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

    /// Retry the requests left unanswered for [`ROSTER_TIMEOUT`].
    pub(super) async fn expire_requests(&mut self) {
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
}
