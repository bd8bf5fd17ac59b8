//! Acting in a user's name, as far as the server allows (the Waher Agent API's calls,
//! `http/waher/`): probing a contact's presence, requesting a presence subscription, reading the
//! roster.
//!
//! What the servers allow was measured (README "Acting in a user's name"): a probe sent in a
//! user's name is answered to the user's sessions, never to us, so [`Agent::probe`] answers from
//! the read model ([`Observed::latest`]); a `subscribe` sent in the user's name reaches the contact
//! as a normal request, but the user's roster gets nothing and the contact's approval is not
//! reported to anyone we can hear. So [`Agent::subscribe`] holds the request durably (store side
//! table `subscriptions`), sends it once the link is ready (its confirmation is the answer to a
//! ping sent after it: the server handles a stream's stanzas in order), then completes the user's
//! side where it can: it adds the contact to the user's roster (Prosody: privileged roster set;
//! ejabberd 23.01, whose privileged sets fail: its admin API's `add_rosteritem` when
//! `[ejabberd] api_url` is set), and for a contact of a served domain it watches the contact's
//! roster (privileged roster get; 1 s after sending, then backing off to once a minute, at most
//! [`CHECKS_PER_TICK`] reads a second overall) until it shows the approval (`from`/`both`), then
//! sets the user's item to `to` (or `both`) and sends a probe in the user's name, which the
//! contact's server answers to the user's sessions. It gives up after `[agent] watch_secs`. A
//! request is pending (`pendingSubscription`) while it is held here, or while the roster says
//! `ask='subscribe'` (a request the user's own client made).
//!
//! The backend carries the stanzas: [`Exchange`] is a batch of presences followed by one iq,
//! answered with the iq's result ([`AgentLink`]; the fan-out task serves it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jid::BareJid;
use minidom::Element;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::base::clock::now_ms;
use crate::base::escape::Escaped;
use crate::model::RosterItem;
use crate::observe::{Latest, Observed, RosterError, Rosters};
use crate::store::{Pending, Side, Store, StoreError, Write};
use crate::xmpp::stanzas::{self, Outbound, PresenceBatch};

/// Custom XML of a subscription request: at most this many bytes.
pub const MAX_CUSTOM_XML: usize = 4096;
/// At most one automatic subscription request (a probe without subscription) per user and
/// contact in this time.
pub const AUTO_SUBSCRIBE_EVERY: Duration = Duration::from_secs(3600);
/// Most subscription requests held at once.
pub const MAX_HELD: usize = 100_000;
/// Most subscription requests held at once for one user.
pub const MAX_PER_USER: usize = 1_000;
/// Most roster reads of the approval watch per second.
pub const CHECKS_PER_TICK: usize = 20;
/// The longest wait between two reads of one contact's roster.
const CHECK_MAX: Duration = Duration::from_secs(60);
/// How long [`Agent::subscribe`] waits for its request to be sent before answering `sent: false`.
const SEND_WAIT: Duration = Duration::from_secs(3);
/// How long a roster read may take.
const ROSTER_WAIT: Duration = Duration::from_secs(5);

/// A batch of presences, then one iq (with its id), for the backend to send in order; the answer
/// is the iq's (`Ok(Ok(payload))` a result, `Ok(Err(reason))` an error) or why nothing came
/// (`Err`: the link is down or went down).
pub struct Exchange {
    /// Presences sent first (may be empty).
    pub presences: PresenceBatch,
    /// The iq sent after them.
    pub iq: Outbound,
    /// The iq's id.
    pub id: String,
    /// The user whose roster this changes (cached reads of it are dropped when answered).
    pub changes_roster_of: Option<BareJid>,
    /// Where the answer goes.
    pub answer: oneshot::Sender<Result<Result<Option<Element>, String>, String>>,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("presences", &self.presences.len())
            .field("id", &self.id)
            .finish()
    }
}

/// The backend's side for the agent: exchanges, and whether it is ready to send.
#[derive(Debug, Clone)]
pub struct AgentLink {
    /// Exchanges to send.
    pub tx: mpsc::Sender<Exchange>,
    /// Ready (link up, privileges known).
    pub ready: watch::Receiver<bool>,
}

impl AgentLink {
    /// A link for the backend to serve: the handle, and the backend's ends.
    pub fn new() -> (AgentLink, mpsc::Receiver<Exchange>, watch::Sender<bool>) {
        let (tx, rx) = mpsc::channel(64);
        let (ready_tx, ready) = watch::channel(false);
        (AgentLink { tx, ready }, rx, ready_tx)
    }
}

/// Settings (`[agent]`, `[ejabberd] api_url`).
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// How long the approval of a request is watched.
    pub watch: Duration,
    /// ejabberd's admin API, for the user's side of a subscription.
    pub ejabberd_api: Option<reqwest::Url>,
}

/// Why a call cannot be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The backend cannot act in users' names (Tigase).
    #[error("not offered with this backend: extpresence cannot read rosters or send stanzas in a user's name through Tigase's USER_STATUS")]
    Unsupported,
    /// The user's roster could not be read.
    #[error("{0}")]
    Roster(String),
    /// No subscription to the contact's presence.
    #[error("{user} has no subscription to {contact}'s presence (roster subscription `to` or `both`); {sent}")]
    NotSubscribed {
        /// The user.
        user: String,
        /// The contact.
        contact: String,
        /// What was done about it.
        sent: String,
    },
    /// Nothing observed from the contact.
    #[error("extpresence has received no presence from {0} since it started (the server forwards the presence of local users, and of remote contacts to users while they are offline)")]
    Unknown(String),
    /// Not in the roster.
    #[error("{contact} is not in {user}'s roster")]
    NotInRoster {
        /// The user.
        user: String,
        /// The contact.
        contact: String,
    },
    /// Too many held requests.
    #[error("{0}; try again later")]
    Full(String),
    /// The store could not commit.
    #[error("the request could not be stored: {0}")]
    Storage(String),
    /// The request itself is refused (a contact that is not a user's JID, custom XML refused).
    #[error("{0}")]
    Invalid(String),
}

impl From<RosterError> for AgentError {
    fn from(e: RosterError) -> AgentError {
        match e {
            RosterError::Unsupported => AgentError::Unsupported,
            RosterError::Unavailable(s) => AgentError::Roster(s),
        }
    }
}

impl From<StoreError> for AgentError {
    fn from(e: StoreError) -> AgentError {
        AgentError::Storage(e.to_string())
    }
}

/// A subscription request, as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    /// The contact: a user's JID (a localpart; [`check_contact`]).
    pub to: BareJid,
    /// Custom XML elements (checked by [`parse_custom_xml`], also by the dialect; at most
    /// [`MAX_CUSTOM_XML`] bytes).
    pub custom_xml: Option<String>,
    /// `xml:lang`.
    pub language: Option<String>,
    /// The stanza's id (generated when absent).
    pub id: Option<String>,
}

/// A roster item as the calls show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// The contact.
    pub jid: BareJid,
    /// `none`, `to`, `from` or `both` (`none` also for a contact not in the roster).
    pub subscription: &'static str,
    /// The user's name for the contact.
    pub name: Option<String>,
    /// The user's groups of it.
    pub groups: Vec<String>,
    /// A subscription request to the contact is pending.
    pub pending: bool,
    /// It is in the roster.
    pub in_roster: bool,
}

/// The answer of [`Agent::subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    /// Sent to the server already (else held and sent when the link allows).
    pub sent: bool,
    /// The stanza's id.
    pub id: String,
    /// The user's roster item for the contact now.
    pub item: Contact,
}

/// A held request, as stored (JSON, `v` 1).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Held {
    v: u32,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    lang: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    xml: Option<String>,
    /// When it was asked (ms).
    requested: u64,
    /// Sent to the server.
    sent: bool,
    /// The watch ends (ms).
    until: u64,
    /// Not stored: which request this is (ids come from clients and may repeat), the next read
    /// of the contact's roster (ms), and how many reads were made.
    #[serde(skip)]
    gen: u64,
    /// Not stored: sent and the user's side done (an answer waiting for it may go).
    #[serde(skip)]
    settled: bool,
    #[serde(skip)]
    next_check: u64,
    #[serde(skip)]
    checks: u32,
}

type Pair = (BareJid, BareJid);
/// Held requests taken out of the map to work on.
type Taken = Vec<(Pair, Held)>;
/// Held requests picked by pair and generation.
type Picked = Vec<(Pair, u64)>;

fn key(user: &BareJid, contact: &BareJid) -> String {
    format!("{user}\0{contact}")
}

struct Inner {
    /// The component's JID (sender of iqs).
    component: BareJid,
    link: Option<AgentLink>,
    rosters: Rosters,
    observed: Observed,
    store: Option<Store>,
    domains: std::collections::BTreeSet<String>,
    settings: AgentSettings,
    held: Mutex<HashMap<Pair, Held>>,
    /// Automatic requests: when each was sent (ms).
    auto: Mutex<HashMap<Pair, u64>>,
    /// Something to send.
    wake: Notify,
    /// Bumped whenever requests were sent.
    sent: watch::Sender<u64>,
    /// The requests (by generation) whose [`Agent::subscribe`] waits for its answer, and
    /// whether each went out: a record gone from `held` may also have been dropped unsent.
    outcomes: Mutex<HashMap<u64, bool>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// Cheap-to-clone handle.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Agent({} held)", self.lock_held().len())
    }
}

impl Agent {
    /// The agent over `link` (`None`: the backend cannot act in users' names), with the requests
    /// the store held at open.
    pub fn new(
        component: BareJid,
        link: Option<AgentLink>,
        rosters: Rosters,
        observed: Observed,
        store: Option<Store>,
        domains: std::collections::BTreeSet<String>,
        settings: AgentSettings,
    ) -> Agent {
        let mut held = HashMap::new();
        for (k, bytes) in store
            .as_ref()
            .map(|s| s.take(Side::Subscriptions))
            .unwrap_or_default()
        {
            let parsed = k.split_once('\0').and_then(|(u, c)| {
                let mut h: Held = serde_json::from_slice(&bytes).ok()?;
                h.gen = held.len() as u64 + 1;
                Some(((BareJid::new(u).ok()?, BareJid::new(c).ok()?), h))
            });
            match parsed {
                // Refused since issue 19: the watch of its approval read the domain's "roster"
                // for the whole watch, and the server refused every read.
                Some(((user, contact), _)) if check_contact(&contact).is_err() => {
                    warn!(%user, %contact, "a held subscription request to a domain was dropped");
                    if let Some(store) = &store {
                        let _ = store.write(vec![Write::Remove(Side::Subscriptions, k)]);
                    }
                }
                Some((pair, h)) => {
                    held.insert(pair, h);
                }
                None => {
                    warn!(key = %Escaped(&k), "a damaged subscription request record was skipped")
                }
            }
        }
        if !held.is_empty() {
            info!(held = held.len(), "subscription requests held");
        }
        let loaded = held.len() as u64;
        Agent {
            inner: Arc::new(Inner {
                component,
                link,
                rosters,
                observed,
                store,
                domains,
                settings,
                held: Mutex::new(held),
                auto: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                sent: watch::channel(0).0,
                outcomes: Mutex::new(HashMap::new()),
                next_id: std::sync::atomic::AtomicU64::new(loaded + 1),
            }),
        }
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, HashMap<Pair, Held>> {
        self.inner.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn offered(&self) -> Result<&AgentLink, AgentError> {
        self.inner.link.as_ref().ok_or(AgentError::Unsupported)
    }

    /// Requests held now (for `/metrics`).
    pub fn held(&self) -> usize {
        self.lock_held().len()
    }

    async fn roster_of(&self, user: &BareJid) -> Result<Arc<[RosterItem]>, AgentError> {
        Ok(self.inner.rosters.get(user, ROSTER_WAIT).await?)
    }

    fn contact(&self, user: &BareJid, jid: &BareJid, item: Option<&RosterItem>) -> Contact {
        let held = self.lock_held().contains_key(&(user.clone(), jid.clone()));
        match item {
            Some(i) => Contact {
                jid: jid.clone(),
                subscription: i.subscription,
                name: i.name.clone(),
                groups: i.groups.clone(),
                // A held request is moot once the roster says the user is subscribed.
                pending: (held && !i.sees_contact()) || i.asked,
                in_roster: true,
            },
            None => Contact {
                jid: jid.clone(),
                subscription: "none",
                name: None,
                groups: Vec::new(),
                pending: held,
                in_roster: false,
            },
        }
    }

    /// `user`'s roster, as the calls show it.
    pub async fn roster(&self, user: &BareJid) -> Result<Vec<Contact>, AgentError> {
        self.offered()?;
        let items = self.roster_of(user).await?;
        Ok(items
            .iter()
            .map(|i| self.contact(user, &i.jid, Some(i)))
            .collect())
    }

    /// `user`'s item for `contact`.
    pub async fn roster_item(
        &self,
        user: &BareJid,
        contact: &BareJid,
    ) -> Result<Contact, AgentError> {
        self.offered()?;
        let items = self.roster_of(user).await?;
        match items.iter().find(|i| &i.jid == contact) {
            Some(i) => Ok(self.contact(user, contact, Some(i))),
            None => Err(AgentError::NotInRoster {
                user: user.to_string(),
                contact: contact.to_string(),
            }),
        }
    }

    /// The latest presence `user` has from `contact`. Without a subscription (`to`/`both`) a
    /// request is sent in the user's name (when `may_request`, none is pending already, and none
    /// was sent automatically for the pair in the last [`AUTO_SUBSCRIBE_EVERY`]) and the answer
    /// is [`AgentError::NotSubscribed`].
    pub async fn probe(
        &self,
        user: &BareJid,
        contact: &BareJid,
        may_request: bool,
    ) -> Result<Latest, AgentError> {
        self.offered()?;
        let items = self.roster_of(user).await?;
        let item = items.iter().find(|i| &i.jid == contact);
        if !item.is_some_and(RosterItem::sees_contact) {
            let pair = (user.clone(), contact.clone());
            let pending = item.is_some_and(|i| i.asked) || self.lock_held().contains_key(&pair);
            let sent = if pending {
                format!("a subscription request of {user} to {contact} is pending already; none was sent now")
            } else if !may_request {
                "none was requested: the credential may not write".to_string()
            } else if let Err(why) = self.auto_allowed(&pair) {
                why
            } else {
                self.subscribe(
                    user,
                    SubscribeRequest {
                        to: contact.clone(),
                        custom_xml: None,
                        language: None,
                        id: None,
                    },
                )
                .await?;
                self.auto_record(pair);
                format!("a subscription request was sent in {user}'s name")
            };
            return Err(AgentError::NotSubscribed {
                user: user.to_string(),
                contact: contact.to_string(),
                sent,
            });
        }
        self.inner
            .observed
            .latest(contact)
            .ok_or_else(|| AgentError::Unknown(contact.to_string()))
    }

    fn lock_outcomes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, bool>> {
        self.inner
            .outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn lock_auto(&self) -> std::sync::MutexGuard<'_, HashMap<Pair, u64>> {
        self.inner.auto.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an automatic request for the pair may go now, else why not.
    fn auto_allowed(&self, pair: &Pair) -> Result<(), String> {
        let now = now_ms();
        let every = AUTO_SUBSCRIBE_EVERY.as_millis() as u64;
        let mut auto = self.lock_auto();
        if auto.len() >= MAX_HELD {
            auto.retain(|_, at| now.saturating_sub(*at) < every);
        }
        match auto.get(pair) {
            Some(at) if now.saturating_sub(*at) < every => Err(format!(
                "a subscription request was sent in {}'s name less than {} minutes ago; none was sent now",
                pair.0,
                every / 60_000
            )),
            None if auto.len() >= MAX_HELD => Err(format!(
                "{MAX_HELD} automatic subscription requests were sent in the last hour; none was sent now"
            )),
            _ => Ok(()),
        }
    }

    fn auto_record(&self, pair: Pair) {
        self.lock_auto().insert(pair, now_ms());
    }

    fn next_gen(&self) -> u64 {
        self.inner
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Request a subscription to `req.to`'s presence in `user`'s name: held durably before this
    /// returns, sent when the link allows (waits a little for that), the user's side completed
    /// where the server allows (module doc).
    pub async fn subscribe(
        &self,
        user: &BareJid,
        req: SubscribeRequest,
    ) -> Result<Subscribed, AgentError> {
        self.offered()?;
        check_contact(&req.to).map_err(|e| AgentError::Invalid(format!("to: {e}")))?;
        if let Some(xml) = &req.custom_xml {
            parse_custom_xml(xml).map_err(|e| AgentError::Invalid(format!("customXml: {e}")))?;
        }
        let now = now_ms();
        let gen = self.next_gen();
        let id = req
            .id
            .clone()
            .unwrap_or_else(|| format!("extpresence-sub-{now:x}-{gen}"));
        let held = Held {
            v: 1,
            id: id.clone(),
            lang: req.language.clone(),
            xml: req.custom_xml.clone(),
            requested: now,
            sent: false,
            until: now.saturating_add(self.inner.settings.watch.as_millis() as u64),
            gen,
            settled: false,
            next_check: 0,
            checks: 0,
        };
        let pair = (user.clone(), req.to.clone());
        let mut sent_rx = self.inner.sent.subscribe();
        // Into the map and the store's queue under one lock, so that the store sees the changes
        // of a pair in the order the map does.
        let written = {
            let mut map = self.lock_held();
            if !map.contains_key(&pair) {
                if map.len() >= MAX_HELD {
                    return Err(AgentError::Full(format!(
                        "{MAX_HELD} subscription requests are held already"
                    )));
                }
                if map.keys().filter(|(u, _)| u == user).count() >= MAX_PER_USER {
                    return Err(AgentError::Full(format!(
                        "{MAX_PER_USER} subscription requests of {user} are held already"
                    )));
                }
            }
            let written = self.queue_put(&pair, &held);
            self.lock_outcomes().insert(gen, false);
            map.insert(pair.clone(), held);
            written
        };
        // Its outcome is forgotten however this call ends (also when the client goes away).
        let _outcome = OutcomeGuard { agent: self, gen };
        if let Err(e) = written.durable().await {
            // Not acknowledged: take it back (unless a newer request replaced it).
            let mut map = self.lock_held();
            if map.get(&pair).is_some_and(|h| h.gen == gen) {
                map.remove(&pair);
            }
            return Err(e.into());
        }
        self.inner.wake.notify_one();
        // Wait a little for it to go out and the user's side to be done, so the answer can say
        // so (a record gone or replaced is done with; whether it went out is in `outcomes`).
        let settled = |agent: &Agent| {
            agent
                .lock_held()
                .get(&pair)
                .filter(|h| h.gen == gen)
                .is_none_or(|h| h.settled)
        };
        let _ = tokio::time::timeout(SEND_WAIT, async {
            while !settled(self) {
                if sent_rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        let sent = self.lock_outcomes().get(&gen).copied().unwrap_or(false);
        let item = match self.roster_of(user).await {
            Ok(items) => {
                let i = items.iter().find(|i| i.jid == req.to);
                self.contact(user, &req.to, i)
            }
            Err(_) => self.contact(user, &req.to, None),
        };
        Ok(Subscribed { sent, id, item })
    }

    /// Queue the store write of `held` (call with the map locked).
    fn queue_put(&self, pair: &Pair, held: &Held) -> Pending {
        match &self.inner.store {
            Some(store) => store.write(vec![Write::Put(
                Side::Subscriptions,
                key(&pair.0, &pair.1),
                serde_json::to_vec(held).expect("serialisable"),
            )]),
            None => Pending::done(),
        }
    }

    /// Drop request `gen` of `pair` (a newer one stays), from the map and the store.
    async fn forget(&self, pair: &Pair, gen: u64) {
        let written = {
            let mut map = self.lock_held();
            match map.get(pair) {
                Some(h) if h.gen == gen => {
                    map.remove(pair);
                    self.inner.store.as_ref().map(|store| {
                        store.write(vec![Write::Remove(
                            Side::Subscriptions,
                            key(&pair.0, &pair.1),
                        )])
                    })
                }
                _ => None,
            }
        };
        if let Some(written) = written {
            if let Err(e) = written.durable().await {
                warn!(error = %e, "a finished subscription request could not be removed from the store; it is loaded again at the next start");
            }
        }
    }

    fn next_iq_id(&self) -> String {
        format!(
            "agent-{}",
            self.inner
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )
    }

    /// Send `presences` then a ping; `Ok` once the server has handled them.
    async fn exchange(
        &self,
        presences: PresenceBatch,
        iq: Option<(Outbound, String, BareJid)>,
    ) -> Result<Result<Option<Element>, String>, String> {
        let link = self.offered().map_err(|e| e.to_string())?;
        let (iq, id, changes_roster_of) = match iq {
            Some((iq, id, user)) => (iq, id, Some(user)),
            None => {
                let id = self.next_iq_id();
                let domain = self
                    .inner
                    .domains
                    .iter()
                    .next()
                    .cloned()
                    .unwrap_or_default();
                let to = BareJid::new(&domain).map_err(|e| e.to_string())?;
                let ping = stanzas::ping(&self.inner.component, to.into(), id.clone());
                (ping, id, None)
            }
        };
        let (answer, rx) = oneshot::channel();
        link.tx
            .send(Exchange {
                presences,
                iq,
                id,
                changes_roster_of,
                answer,
            })
            .await
            .map_err(|_| "shutting down".to_string())?;
        tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .map_err(|_| "no answer from the server".to_string())?
            .map_err(|_| "shutting down".to_string())?
    }

    /// Set `user`'s item for `contact` to `subscription` (keeping name and groups): a privileged
    /// roster set, else ejabberd's admin API when configured. `Err((retry, why))`: `retry` when
    /// the link failed (worth trying again), not when the server refused.
    async fn set_user_item(
        &self,
        user: &BareJid,
        item: &RosterItem,
        subscription: &str,
    ) -> Result<(), (bool, String)> {
        let id = self.next_iq_id();
        let iq = stanzas::roster_set(&self.inner.component, user, item, subscription, id.clone());
        let refused = match self
            .exchange(PresenceBatch::new(), Some((iq, id, user.clone())))
            .await
        {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(reason)) => reason,
            Err(link) => return Err((true, link)),
        };
        match &self.inner.settings.ejabberd_api {
            Some(api) => crate::observe::ejabberd_api::add_rosteritem(api, user, item, subscription)
                .await
                .map_err(|e| (true, format!("the privileged roster set was refused ({refused}), and ejabberd's admin API: {e}"))),
            None => Err((false, format!("the server refused the privileged roster set ({refused}); with ejabberd 23.01 set [ejabberd] api_url"))),
        }
    }

    /// Send what is held and unsent, complete the user's side, and (once a second) watch
    /// approvals, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let Some(link) = self.inner.link.clone() else {
            return;
        };
        let mut ready = link.ready.clone();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let watch = tokio::select! {
                () = stop.cancelled() => return,
                () = self.inner.wake.notified() => false,
                _ = tick.tick() => true,
                r = ready.changed() => if r.is_err() { return } else { false },
            };
            if !*ready.borrow() {
                continue;
            }
            self.send_held().await;
            if watch {
                self.watch_approvals().await;
            }
        }
    }

    async fn send_held(&self) {
        loop {
            let unsent: Taken = self
                .lock_held()
                .iter()
                .filter(|(_, h)| !h.sent)
                .take(32)
                .map(|(p, h)| (p.clone(), h.clone()))
                .collect();
            if unsent.is_empty() {
                return;
            }
            let mut batch = PresenceBatch::new();
            let mut bad = Vec::new();
            let mut in_batch = Vec::new();
            for ((user, contact), h) in &unsent {
                // Validated (and rendered) when asked; a record that still cannot be rendered (a
                // damaged store) is dropped, and its request answered `sent: false`.
                let rendered = match h.xml.as_deref() {
                    Some(x) => parse_elements(x),
                    None => Ok(Vec::new()),
                }
                .and_then(|children| {
                    PresenceBatch::in_users_name(
                        "subscribe",
                        user,
                        contact,
                        &h.id,
                        h.lang.as_deref(),
                        &children,
                    )
                    .map_err(ElementsError::from)
                });
                match rendered {
                    Ok(b) => {
                        batch.append(b);
                        in_batch.push(h.gen);
                    }
                    Err(e) => bad.push((user, contact, h.gen, e)),
                }
            }
            for (user, contact, gen, why) in bad {
                warn!(%user, %contact, error = %Escaped(&why), "a held subscription request was dropped");
                self.forget(&(user.clone(), contact.clone()), gen).await;
            }
            if batch.is_empty() {
                continue;
            }
            if let Err(e) = self.exchange(batch, None).await {
                debug!(error = %e, "subscription requests not sent yet");
                return;
            }
            // Sent: marked at once (a crash from here on does not send them again), then the
            // users' sides.
            {
                let mut outcomes = self.lock_outcomes();
                for gen in in_batch {
                    if let Some(sent) = outcomes.get_mut(&gen) {
                        *sent = true;
                    }
                }
            }
            let now = now_ms();
            let written: Vec<Pending> = {
                let mut map = self.lock_held();
                unsent
                    .iter()
                    .filter_map(|(pair, h)| {
                        let cur = map.get_mut(pair).filter(|c| c.gen == h.gen)?;
                        cur.sent = true;
                        cur.xml = None;
                        cur.next_check = now + 1000;
                        let cur = cur.clone();
                        Some(self.queue_put(pair, &cur))
                    })
                    .collect()
            };
            for w in written {
                if let Err(e) = w.durable().await {
                    warn!(error = %e, "a sent subscription request could not be marked sent; it may be sent again after a restart");
                }
            }
            for (pair, h) in &unsent {
                info!(user = %pair.0, contact = %pair.1, id = %Escaped(&h.id), "subscription request sent in the user's name");
                self.add_to_user_roster(pair).await;
                if let Some(cur) = self.lock_held().get_mut(pair).filter(|c| c.gen == h.gen) {
                    cur.settled = true;
                }
            }
            self.inner.sent.send_modify(|n| *n += 1);
        }
    }

    /// Put the contact in the user's roster (subscription as it is, `none` for a new item).
    async fn add_to_user_roster(&self, pair: &Pair) {
        let (user, contact) = pair;
        let Ok(items) = self.roster_of(user).await else {
            return;
        };
        if items.iter().any(|i| &i.jid == contact) {
            return;
        }
        let item = RosterItem {
            jid: contact.clone(),
            subscription: "none",
            asked: false,
            name: None,
            groups: Vec::new(),
        };
        if let Err((_, e)) = self.set_user_item(user, &item, "none").await {
            debug!(%user, %contact, error = %Escaped(&e), "the contact could not be added to the user's roster");
        }
    }

    /// Read the rosters of up to [`CHECKS_PER_TICK`] local contacts whose approval is due, and
    /// drop the requests whose watch is over.
    async fn watch_approvals(&self) {
        let now = now_ms();
        let (due, expired): (Picked, Picked) = {
            let map = self.lock_held();
            let expired = map
                .iter()
                .filter(|(_, h)| h.until <= now)
                .map(|(p, h)| (p.clone(), h.gen))
                .collect();
            let mut due: Vec<(u64, &Pair, u64)> = map
                .iter()
                .filter(|((_, c), h)| {
                    h.sent
                        && h.until > now
                        && h.next_check <= now
                        && self.inner.domains.contains(c.domain().as_str())
                })
                .map(|(p, h)| (h.next_check, p, h.gen))
                .collect();
            if due.len() > CHECKS_PER_TICK {
                due.select_nth_unstable_by_key(CHECKS_PER_TICK, |(at, _, _)| *at);
                due.truncate(CHECKS_PER_TICK);
            }
            let due = due.into_iter().map(|(_, p, g)| (p.clone(), g)).collect();
            (due, expired)
        };
        for (pair, gen) in expired {
            info!(user = %pair.0, contact = %pair.1, "no approval of the subscription request seen; no longer watched");
            self.forget(&pair, gen).await;
        }
        for (pair, gen) in due {
            let (user, contact) = &pair;
            let approved = match self.roster_of(contact).await {
                Ok(items) => items.iter().any(|i| &i.jid == user && i.sees_user()),
                Err(e) => {
                    debug!(%contact, error = %e, "the contact's roster could not be read");
                    false
                }
            };
            if approved {
                info!(%user, %contact, "the contact approved the subscription request");
                if self.complete(user, contact).await {
                    self.forget(&pair, gen).await;
                    continue;
                }
            }
            let mut map = self.lock_held();
            if let Some(cur) = map.get_mut(&pair).filter(|c| c.gen == gen) {
                cur.checks += 1;
                let wait = Duration::from_secs(1u64 << cur.checks.min(6)).min(CHECK_MAX);
                cur.next_check = now_ms() + wait.as_millis() as u64;
            }
        }
    }

    /// The contact approved: the user's item becomes `to` (`both` if it was `from`), and a
    /// probe in the user's name makes the contact's server send its presence to the user.
    /// `false`: not done, try again at the next check.
    async fn complete(&self, user: &BareJid, contact: &BareJid) -> bool {
        let item = match self.roster_of(user).await {
            Ok(items) => items.iter().find(|i| &i.jid == contact).cloned(),
            Err(e) => {
                debug!(%user, error = %e, "the user's roster could not be read to record the approval");
                return false;
            }
        };
        let item = item.unwrap_or(RosterItem {
            jid: contact.clone(),
            subscription: "none",
            asked: false,
            name: None,
            groups: Vec::new(),
        });
        if !item.sees_contact() {
            let to = if item.sees_user() { "both" } else { "to" };
            match self.set_user_item(user, &item, to).await {
                Ok(()) => {}
                Err((true, e)) => {
                    debug!(%user, %contact, error = %Escaped(&e), "the approval could not be recorded yet");
                    return false;
                }
                Err((false, e)) => {
                    warn!(%user, %contact, error = %Escaped(&e), "the approval could not be recorded in the user's roster; the user's side stays as it is (README \"Acting in a user's name\")");
                    return true;
                }
            }
        }
        let probe =
            PresenceBatch::in_users_name("probe", user, contact, &self.next_iq_id(), None, &[])
                .expect("no children to render");
        if let Err(e) = self.exchange(probe, None).await {
            debug!(%user, %contact, error = %e, "the probe after the approval was not sent");
        }
        true
    }
}

/// Removes a request's entry in `outcomes` when its [`Agent::subscribe`] call ends.
struct OutcomeGuard<'a> {
    agent: &'a Agent,
    gen: u64,
}

impl Drop for OutcomeGuard<'_> {
    fn drop(&mut self) {
        self.agent.lock_outcomes().remove(&self.gen);
    }
}

/// Why XML elements sent in a user's name cannot be taken ([`parse_elements`],
/// [`parse_custom_xml`]).
#[derive(Debug, thiserror::Error)]
pub enum ElementsError {
    /// Not well-formed, or refused by the XML checks.
    #[error("not well-formed XML: {0}")]
    NotWellFormed(stanzas::XmlError),
    /// Text beside the elements.
    #[error("text outside of an element")]
    TextOutside,
    /// An element in one of the [`REFUSED_NAMESPACES`].
    #[error("<{name}> in the namespace {ns} is not allowed (README \"Acting in a user's name\")")]
    RefusedNamespace {
        /// The element's name.
        name: String,
        /// Its namespace.
        ns: String,
    },
    /// An element cannot be written (or read back as one element).
    #[error(transparent)]
    Unwritable(#[from] stanzas::XmlError),
    /// Written, it does not read back as one element.
    #[error("it cannot be written as XML")]
    NotOneElement,
}

/// Why a contact is refused ([`check_contact`]).
#[derive(Debug, thiserror::Error)]
pub enum ContactError {
    /// A domain (no localpart).
    #[error("{0} is a domain, not a user's JID (user@domain)")]
    Domain(BareJid),
}

/// Parse XML elements (a subscription request's custom XML, a presence's other children):
/// elements only (whitespace between them allowed), unprefixed ones in `jabber:client`.
pub fn parse_elements(xml: &str) -> Result<Vec<Element>, ElementsError> {
    let root =
        stanzas::parse_fragment(xml, "jabber:client").map_err(ElementsError::NotWellFormed)?;
    if root.texts().any(|t| !t.trim().is_empty()) {
        return Err(ElementsError::TextOutside);
    }
    Ok(root.children().cloned().collect())
}

/// Namespaces refused in custom XML, at any depth: the stanza namespaces (a stanza inside the
/// request, and unprefixed elements without `xmlns`, which are in `jabber:client`), and what a
/// receiving client takes as a statement of origin, routing or time made by a server: XEP-0297
/// forwarding, XEP-0203 and XEP-0091 delay, XEP-0280 carbons, XEP-0356 privilege, XEP-0355
/// delegation, XEP-0033 addressing, XEP-0359 stanza and origin ids, XEP-0313 archive results,
/// XEP-0045 MUC occupant data, XEP-0319 idle time, XEP-0202 entity time.
pub const REFUSED_NAMESPACES: &[&str] = &[
    "jabber:client",
    "jabber:server",
    "jabber:component:accept",
    "jabber:component:connect",
    "urn:xmpp:forward:0",
    "urn:xmpp:delay",
    "jabber:x:delay",
    "urn:xmpp:carbons:2",
    "urn:xmpp:privilege:1",
    "urn:xmpp:privilege:2",
    "urn:xmpp:delegation:1",
    "urn:xmpp:delegation:2",
    "http://jabber.org/protocol/address",
    "urn:xmpp:sid:0",
    "urn:xmpp:mam:2",
    "http://jabber.org/protocol/muc#user",
    "urn:xmpp:idle:1",
    "urn:xmpp:time",
];

/// Check a subscription request's custom XML: [`parse_elements`], no element in
/// [`REFUSED_NAMESPACES`] at any depth, and each element written once and read back (so that
/// what is accepted is known to render, well-formed, when it is sent).
pub fn parse_custom_xml(xml: &str) -> Result<Vec<Element>, ElementsError> {
    let elements = parse_elements(xml)?;
    let mut stack: Vec<&Element> = elements.iter().collect();
    while let Some(el) = stack.pop() {
        if REFUSED_NAMESPACES.contains(&el.ns().as_str()) {
            return Err(ElementsError::RefusedNamespace {
                name: el.name().to_string(),
                ns: el.ns(),
            });
        }
        stack.extend(el.children());
    }
    // Written as it will be sent, and read back: what goes on the wire is well-formed.
    for el in &elements {
        let written = stanzas::render(el)?;
        if parse_elements(&written)?.len() != 1 {
            return Err(ElementsError::NotOneElement);
        }
    }
    Ok(elements)
}

/// Check a contact a request is sent to: a user's JID (with a localpart), not a server or a
/// service domain.
pub fn check_contact(jid: &BareJid) -> Result<(), ContactError> {
    match jid.node() {
        Some(_) => Ok(()),
        None => Err(ContactError::Domain(jid.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_xml_is_elements_only() {
        let els = parse_elements("<a xmlns='urn:x'><b/></a> <c/>").unwrap();
        assert_eq!(els.len(), 2);
        assert_eq!(els[0].ns(), "urn:x");
        assert_eq!(els[1].ns(), "jabber:client");
        assert!(parse_elements("text").is_err());
        assert!(parse_elements("<a>").is_err());
        assert!(parse_elements("</extpresence-body><y>").is_err());
        assert!(parse_elements("<a/></x><y>").is_err());
        assert!(parse_elements("<!DOCTYPE x [<!ENTITY e 'x'>]><a/>").is_err());
        assert!(parse_elements(
            "<a xmlns='urn:a' xmlns:xml='http://www.w3.org/XML/1998/namespace'/>"
        )
        .is_err());
    }

    #[test]
    fn custom_xml_refuses_stanzas_and_origin_claims_at_any_depth() {
        for xml in [
            "<presence xmlns='jabber:client' type='subscribed'/>",
            "<x xmlns='urn:x'><message xmlns='jabber:client'/></x>",
            "<x xmlns='urn:x'><iq xmlns='jabber:server' type='set'/></x>",
            "<x xmlns='urn:x'><y xmlns='jabber:component:accept'/></x>",
            // No xmlns: jabber:client.
            "<note>hi</note>",
            "<x xmlns='urn:x'><y><z xmlns='jabber:client'/></y></x>",
            "<forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' from='bob@example.com'/></forwarded>",
            "<delay xmlns='urn:xmpp:delay' stamp='2002-09-10T23:08:25Z'/>",
            "<x xmlns='jabber:x:delay' stamp='20020910T23:08:25'/>",
            "<received xmlns='urn:xmpp:carbons:2'/>",
            "<privilege xmlns='urn:xmpp:privilege:2'/>",
            "<privilege xmlns='urn:xmpp:privilege:1'/>",
            "<addresses xmlns='http://jabber.org/protocol/address'><address type='ofrom' jid='bob@example.com'/></addresses>",
            "<stanza-id xmlns='urn:xmpp:sid:0' by='example.com' id='1'/>",
            "<a xmlns='urn:a'><b><c><d><origin-id xmlns='urn:xmpp:sid:0' id='1'/></d></c></b></a>",
            "<p:x xmlns:p='urn:xmpp:delay'/>",
        ] {
            let e = parse_custom_xml(xml).expect_err(xml).to_string();
            assert!(e.contains("is not allowed"), "{xml}: {e}");
        }
        let ok = "<nick xmlns='http://jabber.org/protocol/nick'>Alice</nick><a xmlns='urn:a'><b/><c xmlns=''/></a>";
        assert_eq!(parse_custom_xml(ok).unwrap().len(), 2);
        // Elsewhere (a presence's other children, as the server sent them) these are fine.
        assert!(
            parse_elements("<delay xmlns='urn:xmpp:delay' stamp='2002-09-10T23:08:25Z'/>").is_ok()
        );
    }

    #[test]
    fn a_contact_is_a_users_jid() {
        assert!(check_contact(&BareJid::new("bob@example.com").unwrap()).is_ok());
        let e = check_contact(&BareJid::new("example.com").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a domain"), "{e}");
    }

    /// A request to a domain held by an earlier version is dropped at start, also from the store.
    #[tokio::test]
    async fn held_requests_to_a_domain_are_dropped_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let open = |path: &std::path::Path| {
            for _ in 0..500 {
                if let Ok((store, _)) = Store::open(path) {
                    return store;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("the store did not reopen");
        };
        let agent = |store: Store| {
            let (link, _rx, _ready) = AgentLink::new();
            Agent::new(
                BareJid::new("status.example.com").unwrap(),
                Some(link),
                Rosters::unsupported(),
                Observed::new(),
                Some(store),
                ["example.com".to_string()].into(),
                AgentSettings {
                    watch: Duration::from_secs(60),
                    ejabberd_api: None,
                },
            )
        };
        let record = |to: &str| {
            let h = Held {
                v: 1,
                id: "x".into(),
                lang: None,
                xml: None,
                requested: 1,
                sent: true,
                until: u64::MAX,
                gen: 0,
                settled: false,
                next_check: 0,
                checks: 0,
            };
            Write::Put(
                Side::Subscriptions,
                format!("alice@example.com\0{to}"),
                serde_json::to_vec(&h).unwrap(),
            )
        };
        {
            let store = open(&path);
            store
                .write(vec![record("example.com"), record("bob@example.com")])
                .durable()
                .await
                .unwrap();
        }
        let a = agent(open(&path));
        assert_eq!(a.held(), 1, "only the request to bob stays");
        // The removal is durable: the next start finds only bob's.
        drop(a);
        let store = open(&path);
        let keys: Vec<String> = store
            .take(Side::Subscriptions)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec!["alice@example.com\0bob@example.com".to_string()]);
    }
}
