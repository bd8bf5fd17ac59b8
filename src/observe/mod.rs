//! The read model: what the server tells us about real sessions, and the aggregated presence.
//!
//! [`Observed`] keeps, per bare JID, every real session the server's forwarded presence announced
//! (XEP-0356 presence permission): resource, show, status text, priority and since when; a
//! session goes on `unavailable`. It also remembers each JID's last activity (the last change of
//! a real session, or its logout). The JIDs are the served users and whatever else the server
//! forwards (with `presence = "roster"`, the presence users' contacts send them): a contact's
//! presence as users see it is read from the same map.
//!
//! What the server does not say cannot be known, and is not guessed: [`Observed::complete`] is
//! false until the server has told us everything since the link came up — on Prosody once its
//! announcement of the sessions already online is over (the answer to a disco query sent after
//! the privilege advertisement comes after it); never on ejabberd 23.01, which announces nothing
//! at connect and forwards no `unavailable` when a client just closes its stream (README,
//! "What the server tells"). The fan-out task decides, [`Observed::set_complete`].
//!
//! [`presence`] merges observed sessions with the held synthetic resources into the presence an
//! XMPP client would show (highest priority, then the most available show, then the most recent)
//! — the object of `GET /v1/users/{jid}/presence`, the events and the webhooks.
//!
//! Memory: a session is 32 bytes plus one allocation for its resource, status text and other
//! presence children (capabilities, avatar hash…; at most [`MAX_EXTRA`] bytes, kept for the Agent
//! API's PresenceProbe); a JID's entry holds one session inline, or, once the last session left,
//! that `unavailable`'s resource and status (BENCHMARKS.md, P8).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use jid::{BareJid, FullJid};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;

use crate::base::clock::{now_ms, rfc3339};
use crate::model::{Announced, RosterItem, Show, Word};
use crate::status::StatusTable;

pub mod ejabberd_api;

/// One real session, as the server last announced it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Session {
    /// The resource, then `\0` and the status text if any, then `\0` and the presence's other
    /// children as XML if any (resourceprep forbids `\0`, and XML has none): [`pack`].
    text: Box<str>,
    /// When the server announced its current presence (ms since the Unix epoch).
    since: u64,
    show: Option<Show>,
    priority: i8,
}

/// `resource[\0status[\0extra]]`, one allocation.
fn pack(resource: &str, status: Option<&str>, extra: Option<&str>) -> Box<str> {
    let status = status.filter(|s| !s.is_empty());
    match (status, extra.filter(|x| !x.is_empty())) {
        (None, None) => resource.into(),
        (Some(s), None) => format!("{resource}\0{s}").into(),
        (s, Some(x)) => format!("{resource}\0{}\0{x}", s.unwrap_or_default()).into(),
    }
}

/// The parts of a [`pack`]ed text: resource, status, extra children.
fn unpack(text: &str) -> (&str, Option<&str>, Option<&str>) {
    let mut parts = text.splitn(3, '\0');
    let resource = parts.next().unwrap_or_default();
    let status = parts.next().filter(|s| !s.is_empty());
    (resource, status, parts.next())
}

impl Session {
    fn resource(&self) -> &str {
        unpack(&self.text).0
    }

    fn status(&self) -> Option<&str> {
        unpack(&self.text).1
    }
}

/// The largest presence children kept per session (bytes of XML); larger ones are dropped.
pub const MAX_EXTRA: usize = 2048;

/// A JID's sessions: most have none or one, held inline.
#[derive(Debug, Default)]
enum Sessions {
    #[default]
    None,
    One(Session),
    Many(Box<[Session]>),
    /// None, and the last one left with this `unavailable` ([`pack`]ed; at `last_active`).
    Gone(Box<str>),
}

impl Sessions {
    fn as_slice(&self) -> &[Session] {
        match self {
            Sessions::None | Sessions::Gone(_) => &[],
            Sessions::One(s) => std::slice::from_ref(s),
            Sessions::Many(v) => v,
        }
    }

    fn from_vec(mut v: Vec<Session>) -> Sessions {
        match v.len() {
            0 => Sessions::None,
            1 => Sessions::One(v.pop().expect("one")),
            _ => Sessions::Many(v.into_boxed_slice()),
        }
    }
}

#[derive(Debug, Default)]
struct JidEntry {
    sessions: Sessions,
    /// Last change of a real session, or its logout (ms since the Unix epoch; 0: unknown).
    last_active: u64,
}

/// The latest presence observed from a JID (a PresenceProbe's answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latest {
    /// The full JID it came from.
    pub from: FullJid,
    /// Available (else `unavailable`).
    pub available: bool,
    /// When it was received (ms; for an announcement at connect, its delay stamp).
    pub received: u64,
    /// `<show/>`.
    pub show: Option<Show>,
    /// `<status/>`.
    pub status: Option<String>,
    /// `<priority/>`.
    pub priority: i8,
    /// Its other children, as XML.
    pub extra: Option<String>,
}

#[derive(Debug)]
struct Inner {
    map: DashMap<BareJid, JidEntry>,
    complete: AtomicBool,
}

/// Cheap-to-clone handle over the observed sessions.
#[derive(Debug, Clone)]
pub struct Observed {
    inner: Arc<Inner>,
}

impl Default for Observed {
    fn default() -> Self {
        Observed::new()
    }
}

impl Observed {
    /// Nothing observed yet; not complete.
    pub fn new() -> Observed {
        Observed {
            inner: Arc::new(Inner {
                map: DashMap::new(),
                complete: AtomicBool::new(false),
            }),
        }
    }

    /// Record what the server announced for `from`; returns whether anything changed.
    pub fn announce(&self, from: &FullJid, what: Announced) -> bool {
        let bare = from.to_bare();
        let resource = from.resource().as_str();
        let now = now_ms();
        match what {
            Announced::Available {
                show,
                status,
                priority,
                since,
                extra,
            } => {
                let extra = extra.filter(|x| x.len() <= MAX_EXTRA);
                let text = pack(resource, status.as_deref(), extra.as_deref());
                let session = Session {
                    text,
                    since,
                    show,
                    priority,
                };
                let mut e = match self.inner.map.get_mut(&bare) {
                    Some(e) => e,
                    None => self.inner.map.entry(bare).or_default(),
                };
                e.last_active = e.last_active.max(since);
                let mut v = std::mem::take(&mut e.sessions).as_slice().to_vec();
                let changed = match v.iter_mut().find(|s| s.resource() == resource) {
                    Some(old) => {
                        // Only show, status and priority make a change (an event); other
                        // children (a new capabilities hash, an avatar) are kept silently.
                        let same = old.status() == session.status()
                            && old.show == session.show
                            && old.priority == session.priority;
                        if same {
                            old.text = session.text;
                        } else {
                            *old = session;
                        }
                        !same
                    }
                    None => {
                        v.push(session);
                        true
                    }
                };
                e.sessions = Sessions::from_vec(v);
                changed
            }
            Announced::Unavailable { status } => {
                let gone = || Sessions::Gone(pack(resource, status.as_deref(), None));
                let Some(mut e) = self.inner.map.get_mut(&bare) else {
                    // Logged out before we knew of it: remember it all the same.
                    let mut e = self.inner.map.entry(bare).or_default();
                    e.last_active = now;
                    e.sessions = gone();
                    return true;
                };
                let mut v = std::mem::take(&mut e.sessions).as_slice().to_vec();
                let before = v.len();
                v.retain(|s| s.resource() != resource);
                let changed = v.len() != before;
                e.sessions = if v.is_empty() {
                    gone()
                } else {
                    Sessions::from_vec(v)
                };
                if changed {
                    e.last_active = now;
                }
                changed
            }
        }
    }

    /// Whether the server has told us everything since the link came up (module doc).
    pub fn complete(&self) -> bool {
        self.inner.complete.load(Ordering::Relaxed)
    }

    /// Say whether what we know is complete (the fan-out task's verdict).
    pub fn set_complete(&self, complete: bool) {
        self.inner.complete.store(complete, Ordering::Relaxed);
    }

    /// Real sessions observed now (all JIDs).
    pub fn sessions(&self) -> usize {
        self.inner
            .map
            .iter()
            .map(|e| e.sessions.as_slice().len())
            .sum()
    }

    /// The full JIDs of every session observed now.
    pub fn session_jids(&self) -> Vec<FullJid> {
        self.inner
            .map
            .iter()
            .flat_map(|e| {
                let bare = e.key().clone();
                e.sessions
                    .as_slice()
                    .iter()
                    .filter_map(|s| {
                        jid::ResourcePart::new(s.resource())
                            .ok()
                            .map(|r| bare.with_resource(&r))
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// When `jid`'s session got its presence, if it is observed.
    pub fn session_since(&self, jid: &FullJid) -> Option<u64> {
        let e = self.inner.map.get(&jid.to_bare())?;
        let resource = jid.resource().as_str();
        e.sessions
            .as_slice()
            .iter()
            .find(|s| s.resource() == resource)
            .map(|s| s.since)
    }

    /// `jid`'s last activity (ms since the Unix epoch; 0: unknown).
    pub fn last_active(&self, jid: &jid::BareJid) -> u64 {
        self.inner.map.get(jid).map_or(0, |e| e.last_active)
    }

    /// The latest presence observed from `jid`: of its sessions online, the one announced last;
    /// else the `unavailable` of the last to leave. `None` when nothing was observed.
    pub fn latest(&self, jid: &BareJid) -> Option<Latest> {
        let e = self.inner.map.get(jid)?;
        let latest = |text: &str, available, received, show, priority| {
            let (resource, status, extra) = unpack(text);
            Some(Latest {
                from: jid.with_resource(&jid::ResourcePart::new(resource).ok()?),
                available,
                received,
                show,
                status: status.map(str::to_string),
                priority,
                extra: extra.map(str::to_string),
            })
        };
        match &e.sessions {
            Sessions::Gone(text) => latest(text, false, e.last_active, None, 0),
            Sessions::None => None,
            sessions => {
                let s = sessions.as_slice().iter().max_by_key(|s| s.since)?;
                latest(&s.text, true, s.since, s.show, s.priority)
            }
        }
    }

    /// JIDs with an entry (sessions or a remembered last activity).
    pub fn jids(&self) -> usize {
        self.inner.map.len()
    }

    fn snapshot(&self, jid: &BareJid) -> (Vec<Session>, u64) {
        self.inner
            .map
            .get(jid)
            .map(|e| (e.sessions.as_slice().to_vec(), e.last_active))
            .unwrap_or_default()
    }
}

/// A request for a user's roster, answered by the delivery backend (which owns the link).
#[derive(Debug)]
pub struct RosterQuery {
    /// Whose roster.
    pub user: BareJid,
    /// Where the answer goes.
    pub answer: oneshot::Sender<Result<Arc<[RosterItem]>, String>>,
}

/// Why a roster cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RosterError {
    /// The backend cannot read rosters (Tigase).
    #[error("rosters cannot be read with this backend")]
    Unsupported,
    /// The server did not answer in time, refused, or the link is down.
    #[error("the roster could not be read: {0}")]
    Unavailable(String),
}

/// The handle that reads users' rosters through the delivery backend.
#[derive(Debug, Clone)]
pub struct Rosters {
    tx: Option<mpsc::Sender<RosterQuery>>,
}

impl Rosters {
    /// A handle and the backend's end of it.
    pub fn new() -> (Rosters, mpsc::Receiver<RosterQuery>) {
        let (tx, rx) = mpsc::channel(256);
        (Rosters { tx: Some(tx) }, rx)
    }

    /// A handle for a backend that cannot read rosters.
    pub fn unsupported() -> Rosters {
        Rosters { tx: None }
    }

    /// `user`'s roster, waiting at most `timeout`.
    pub async fn get(
        &self,
        user: &BareJid,
        timeout: Duration,
    ) -> Result<Arc<[RosterItem]>, RosterError> {
        let tx = self.tx.as_ref().ok_or(RosterError::Unsupported)?;
        let (answer, rx) = oneshot::channel();
        let asked = async {
            tx.send(RosterQuery {
                user: user.clone(),
                answer,
            })
            .await
            .map_err(|_| RosterError::Unavailable("shutting down".into()))?;
            rx.await
                .map_err(|_| RosterError::Unavailable("shutting down".into()))?
                .map_err(RosterError::Unavailable)
        };
        tokio::time::timeout(timeout, asked)
            .await
            .unwrap_or_else(|_| {
                Err(RosterError::Unavailable(format!(
                    "the server did not answer within {timeout:?}"
                )))
            })
    }
}

/// Where a resource comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A real XMPP session, as the server announced it.
    Session,
    /// A synthetic resource held by extpresence.
    Extpresence,
}

/// One resource of a user's presence.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ResourcePresence {
    /// The resource.
    pub resource: String,
    /// A real session or one of ours.
    pub origin: Origin,
    /// The presence word (`online`, `chat`, `away`, `xa`, `dnd`).
    #[schema(value_type = String, example = "away")]
    pub presence: &'static str,
    /// The status text.
    pub status: Option<String>,
    /// The priority.
    pub priority: i8,
    /// Since when it has this presence (RFC 3339).
    pub since: String,
    /// The sources that speak for a synthetic resource, the winning one last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<String>>,
    #[serde(skip)]
    since_ms: u64,
    #[serde(skip)]
    show: Option<Show>,
}

/// A user's presence: what an XMPP client would show, and every resource it is made of.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserPresence {
    /// The user.
    pub user: String,
    /// The aggregated presence word; `offline` when no resource is available.
    #[schema(value_type = String, example = "away")]
    pub presence: &'static str,
    /// The status text of the resource shown.
    pub status: Option<String>,
    /// Milliseconds since the user's last real activity (a session's last change or logout);
    /// absent when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_active_ago: Option<u64>,
    /// Whether a real session is available.
    pub currently_active: bool,
    /// False when the server may not have told us everything (after a link loss until it has;
    /// always on servers that do not announce every logout, README "What the server tells").
    pub complete: bool,
    /// Every available resource, real and synthetic; the one shown first.
    pub resources: Vec<ResourcePresence>,
}

/// How available a show is when resources are compared: `chat` > online > `away` > `xa` > `dnd`.
fn availability(show: Option<Show>) -> u8 {
    match show {
        Some(Show::Chat) => 4,
        None => 3,
        Some(Show::Away) => 2,
        Some(Show::Xa) => 1,
        Some(Show::Dnd) => 0,
    }
}

/// `user`'s presence at `now` (ms): observed sessions and held synthetic resources.
pub fn presence(
    table: &StatusTable,
    observed: &Observed,
    user: &BareJid,
    now: u64,
) -> UserPresence {
    let (sessions, last_active) = observed.snapshot(user);
    let mut resources: Vec<ResourcePresence> = sessions
        .iter()
        .map(|s| ResourcePresence {
            resource: s.resource().to_string(),
            origin: Origin::Session,
            presence: Word::of(s.show).as_str(),
            status: s.status().map(str::to_string),
            priority: s.priority,
            since: rfc3339(s.since),
            sources: None,
            since_ms: s.since,
            show: s.show,
        })
        .collect();
    let currently_active = !resources.is_empty();
    for held in table.statuses(user) {
        let Some(eff) = held.effective else { continue };
        // The winner last, as the held sources are listed.
        let mut sources: Vec<String> = held
            .sources
            .iter()
            .filter(|s| s.source != eff.source)
            .map(|s| s.source.as_str().to_string())
            .collect();
        sources.push(eff.source.as_str().to_string());
        resources.push(ResourcePresence {
            resource: held.resource.to_string(),
            origin: Origin::Extpresence,
            presence: Word::of(eff.status.show).as_str(),
            status: eff.status.text.clone(),
            priority: eff.status.priority,
            since: rfc3339(eff.updated_at),
            sources: Some(sources),
            since_ms: eff.updated_at,
            show: eff.status.show,
        });
    }
    // The one shown first: highest priority, then most available, then most recent.
    resources.sort_by_key(|r| std::cmp::Reverse((r.priority, availability(r.show), r.since_ms)));
    let (word, status) = match resources.first() {
        Some(r) => (r.presence, r.status.clone()),
        None => (Word::Offline.as_str(), None),
    };
    UserPresence {
        user: user.to_string(),
        presence: word,
        status,
        last_active_ago: (last_active != 0).then(|| now.saturating_sub(last_active)),
        currently_active,
        complete: observed.complete(),
        resources,
    }
}

impl UserPresence {
    /// When the newest of its resources got its presence (ms), if any.
    pub fn received(&self) -> Option<u64> {
        self.resources.iter().map(|r| r.since_ms).max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &str) -> FullJid {
        FullJid::new(s).unwrap()
    }

    fn avail(show: Option<Show>, status: Option<&str>, priority: i8, since: u64) -> Announced {
        Announced::Available {
            show,
            status: status.map(str::to_string),
            priority,
            since,
            extra: None,
        }
    }

    #[test]
    fn sessions_come_change_and_go() {
        let o = Observed::new();
        assert!(o.announce(
            &full("bob@x/phone"),
            avail(Some(Show::Dnd), Some("busy"), 5, 10)
        ));
        assert!(!o.announce(
            &full("bob@x/phone"),
            avail(Some(Show::Dnd), Some("busy"), 5, 20)
        ));
        assert!(o.announce(&full("bob@x/laptop"), avail(None, None, 0, 30)));
        assert_eq!(o.sessions(), 2);
        let (s, last) = o.snapshot(&BareJid::new("bob@x").unwrap());
        assert_eq!(s[0].resource(), "phone");
        assert_eq!(s[0].status(), Some("busy"));
        assert_eq!(s[1].status(), None);
        assert_eq!(last, 30);
        assert!(o.announce(
            &full("bob@x/phone"),
            Announced::Unavailable { status: None }
        ));
        assert!(!o.announce(
            &full("bob@x/phone"),
            Announced::Unavailable { status: None }
        ));
        assert_eq!(o.sessions(), 1);
        assert!(o.announce(
            &full("bob@x/laptop"),
            Announced::Unavailable { status: None }
        ));
        assert_eq!(o.sessions(), 0);
        assert_eq!(o.jids(), 1, "last activity is kept");
        assert!(o.last_active(&BareJid::new("bob@x").unwrap()) > 30);
    }

    #[test]
    fn latest_is_the_last_announced_session_else_the_last_unavailable() {
        let o = Observed::new();
        let bob = BareJid::new("bob@x").unwrap();
        assert_eq!(o.latest(&bob), None, "nothing observed: unknown");
        let mut with_caps = avail(Some(Show::Dnd), Some("busy"), 5, 10);
        if let Announced::Available { extra, .. } = &mut with_caps {
            *extra = Some("<c xmlns='urn:caps' ver='v'/>".into());
        }
        o.announce(&full("bob@x/phone"), with_caps);
        o.announce(&full("bob@x/laptop"), avail(None, None, 0, 20));
        let l = o.latest(&bob).unwrap();
        assert_eq!(
            (l.from.to_string(), l.available, l.received),
            ("bob@x/laptop".into(), true, 20)
        );
        o.announce(
            &full("bob@x/laptop"),
            Announced::Unavailable { status: None },
        );
        let l = o.latest(&bob).unwrap();
        assert_eq!(
            l.from.to_string(),
            "bob@x/phone",
            "another session is still online"
        );
        assert_eq!(
            (l.show, l.status.as_deref(), l.priority),
            (Some(Show::Dnd), Some("busy"), 5)
        );
        assert_eq!(l.extra.as_deref(), Some("<c xmlns='urn:caps' ver='v'/>"));
        o.announce(
            &full("bob@x/phone"),
            Announced::Unavailable {
                status: Some("bye".into()),
            },
        );
        let l = o.latest(&bob).unwrap();
        assert!(!l.available);
        assert_eq!(
            (l.from.to_string(), l.status.as_deref()),
            ("bob@x/phone".into(), Some("bye"))
        );
        assert_eq!(o.sessions(), 0);
        // Other children change without a change of the presence: kept, no event.
        let mut caps = avail(None, None, 0, 40);
        if let Announced::Available { extra, .. } = &mut caps {
            *extra = Some("<c xmlns='urn:caps' ver='v2'/>".into());
        }
        o.announce(&full("bob@x/tablet"), avail(None, None, 0, 35));
        assert!(!o.announce(&full("bob@x/tablet"), caps), "not a change");
        let l = o.latest(&bob).unwrap();
        assert_eq!(
            (l.received, l.extra.as_deref()),
            (35, Some("<c xmlns='urn:caps' ver='v2'/>"))
        );
        o.announce(
            &full("bob@x/tablet"),
            Announced::Unavailable { status: None },
        );
        // Too large other children are dropped, the rest kept.
        let mut big = avail(None, None, 0, 30);
        if let Announced::Available { extra, .. } = &mut big {
            *extra = Some("x".repeat(MAX_EXTRA + 1));
        }
        o.announce(&full("bob@x/phone"), big);
        assert_eq!(o.latest(&bob).unwrap().extra, None);
        assert!(o.latest(&bob).unwrap().available);
    }

    #[test]
    fn aggregate_prefers_priority_then_availability_then_recency() {
        let (table, _changes) = StatusTable::in_memory();
        let o = Observed::new();
        let bob = BareJid::new("bob@x").unwrap();
        let empty = presence(&table, &o, &bob, 1000);
        assert_eq!(empty.presence, "offline");
        assert_eq!(empty.last_active_ago, None);
        assert!(!empty.currently_active);
        o.announce(&full("bob@x/a"), avail(Some(Show::Away), None, 0, 100));
        o.announce(&full("bob@x/b"), avail(Some(Show::Chat), Some("hi"), 0, 50));
        o.announce(&full("bob@x/c"), avail(Some(Show::Dnd), None, -1, 200));
        let p = presence(&table, &o, &bob, 1000);
        assert_eq!((p.presence, p.status.as_deref()), ("chat", Some("hi")));
        assert_eq!(p.last_active_ago, Some(800));
        o.announce(&full("bob@x/c"), avail(Some(Show::Dnd), None, 1, 300));
        assert_eq!(presence(&table, &o, &bob, 1000).presence, "dnd");
        o.announce(
            &full("bob@x/d"),
            avail(Some(Show::Dnd), Some("newer"), 1, 400),
        );
        let p = presence(&table, &o, &bob, 1000);
        assert_eq!(p.status.as_deref(), Some("newer"));
        assert_eq!(p.resources.len(), 4);
        assert!(p.resources.iter().all(|r| r.origin == Origin::Session));
    }
}
