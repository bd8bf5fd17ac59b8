//! Tigase session mode: the server holds a synthetic session per user+resource.
//!
//! A trusted component sends Tigase's session manager the ad-hoc command `USER_STATUS`; Tigase
//! then holds an in-memory session for `user@domain/resource` and broadcasts its presence,
//! answers probes and routes by priority as for a real client. This task owns:
//! - what Tigase is believed to hold for each held resource ([`Known`]),
//! - the `USER_STATUS` iqs in flight, each with its deadline (`[tigase] timeout_secs`),
//! - the outcome of every change for the HTTP layer ([`Handle::confirm`]),
//! - the answers to Tigase's `CHECK_USER_CONNECTION` probes,
//! - re-asserting everything held after every (re)connect, and closing every session on shutdown.
//!
//! Each resource has its own sender, `<component>/<hex SHA-1 of user@domain/resource>`: Tigase
//! keys a synthetic session by the sender's full JID, so one sender per user+resource, stable
//! across restarts (a session left behind by a crash is addressed again by the next process).
//!
//! What Tigase answers (SessionManager.java, `USER_STATUS` branch of `processCommand`):
//! - opening a session (`available=true`, no session for this sender): an empty result;
//! - updating one that exists: **nothing**; the presence is just applied. So an update of a
//!   session Tigase holds counts as accepted once sent (an error, should one come, is logged and
//!   the next change opens the session again);
//! - closing (`available=false`): a result, or `item-not-found` "The user resource you want to
//!   remove does not exist.";
//! - from an untrusted sender: `forbidden` "Only trusted entity can do it.".
//!
//! Silence after an open is ambiguous: Tigase may be stuck, or it may already hold a session for
//! this sender (left behind by a process that was killed) and have applied the open as a silent
//! update. So an open without answer is followed by a close from the same sender: a result says
//! there was a session (closed now, and opened again at once), `item-not-found` that there was
//! none; either way the next change starts from a known state.
//!
//! Sessions live in Tigase's memory: they survive a drop of our link but not a Tigase restart.
//! After every connect each held status is sent again: as an update where Tigase may still hold
//! the session (it creates it again if not, and answers), as a creation where it never accepted
//! one. A change whose answer is pending keeps later changes of the same resource waiting, so the
//! server sees them in order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jid::{BareJid, FullJid, ResourcePart};
use sha1::{Digest, Sha1};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::stanza::Stanza;

// The same control messages as the fan-out task (lib.rs sends Shutdown to whichever runs).
use super::fanout::Control;
use super::DeliveryError;
use crate::status::{Changes, Held, StatusTable};
use crate::xmpp::stanzas;
use crate::xmpp::{LinkEvent, LinkHandle, LinkState};

/// How long an answer that came after its deadline is still recognised (and acted upon).
const LATE_WINDOW: Duration = Duration::from_secs(60);
/// Longest wait for Tigase's answers to the closing commands at shutdown.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);
/// Settled outcomes are kept this long for [`Handle::confirm`] calls that come after the answer.
const SETTLED_KEEP: Duration = Duration::from_secs(60);

type Key = (BareJid, ResourcePart);
type Outcome = Result<(), DeliveryError>;

/// The hex SHA-1 of `user@domain/resource`: the resource of the sender that owns this
/// resource's synthetic session. Stable across restarts; 40 hex digits are a valid resourcepart.
pub fn session_id(user: &FullJid) -> String {
    Sha1::digest(user.as_str().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Outcomes of changes, shared between the task (which settles them) and request handlers.
#[derive(Debug, Default)]
struct Outcomes {
    /// Latest settled change per resource: its sequence number, outcome and when.
    settled: HashMap<Key, (u64, Outcome, Instant)>,
    /// Requests waiting for a change of a resource to settle.
    waiters: HashMap<Key, Vec<(u64, oneshot::Sender<Outcome>)>>,
}

/// Lets a request handler wait for the server's answer to its change.
#[derive(Debug, Clone)]
pub struct Handle {
    outcomes: Arc<Mutex<Outcomes>>,
    /// `[tigase] timeout_secs`: how long the server may take to answer.
    timeout: Duration,
    /// Whether the link is up, to tell "link down" from "no answer" when a wait ends.
    link: watch::Receiver<LinkState>,
}

impl Handle {
    /// A handle for a backend that gives the server `timeout` to answer.
    pub fn new(timeout: Duration, link: &LinkHandle) -> Handle {
        Handle {
            outcomes: Arc::default(),
            timeout,
            link: link.watch_state(),
        }
    }

    /// Wait until change `seq` of `user/resource`, or a later change of it, is settled. Bounded by
    /// twice the timeout plus a second: a change made while the link is down waits for the link
    /// to come back and for the server's answer.
    pub async fn confirm(&self, user: &BareJid, resource: &ResourcePart, seq: u64) -> Outcome {
        let key = (user.clone(), resource.clone());
        let rx = {
            let mut o = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((settled, outcome, _)) = o.settled.get(&key) {
                if *settled >= seq {
                    return outcome.clone();
                }
            }
            let (tx, rx) = oneshot::channel();
            let waiters = o.waiters.entry(key).or_default();
            waiters.retain(|(_, w)| !w.is_closed());
            waiters.push((seq, tx));
            rx
        };
        let bound = self.timeout * 2 + Duration::from_secs(1);
        match tokio::time::timeout(bound, rx).await {
            Ok(Ok(outcome)) => outcome,
            // The task is gone: we are shutting down.
            Ok(Err(_)) => Err(DeliveryError::LinkDown),
            Err(_) if *self.link.borrow() == LinkState::Down => Err(DeliveryError::LinkDown),
            Err(_) => Err(DeliveryError::Timeout(self.timeout)),
        }
    }

    /// Record the outcome of change `seq` of `key`; it answers every wait for `seq` or earlier.
    fn settle(&self, key: &Key, seq: u64, outcome: Outcome) {
        let mut o = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        let newer = o.settled.get(key).is_none_or(|(s, _, _)| *s <= seq);
        if newer {
            o.settled
                .insert(key.clone(), (seq, outcome.clone(), Instant::now()));
        }
        if let Some(waiters) = o.waiters.get_mut(key) {
            let mut i = 0;
            while i < waiters.len() {
                if waiters[i].0 <= seq {
                    let (_, tx) = waiters.swap_remove(i);
                    let _ = tx.send(outcome.clone());
                } else {
                    i += 1;
                }
            }
            if waiters.is_empty() {
                o.waiters.remove(key);
            }
        }
    }

    /// Forget outcomes settled long ago.
    fn prune(&self) {
        let mut o = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        o.settled
            .retain(|_, (_, _, at)| at.elapsed() < SETTLED_KEEP);
        o.waiters.retain(|_, w| {
            w.retain(|(_, tx)| !tx.is_closed());
            !w.is_empty()
        });
    }
}

/// What the task needs.
pub struct TigaseConfig {
    /// The component's JID; senders are `<component>/<session id>`.
    pub component: BareJid,
    /// How long Tigase may take to answer a command.
    pub timeout: Duration,
    /// Where outcomes are reported (the same handle the HTTP layer waits on).
    pub handle: Handle,
}

/// What Tigase is believed to hold for one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// No session: never opened, closed, or refused.
    Absent,
    /// A session Tigase accepted (or kept, as far as we can tell) on this link.
    Live,
    /// Perhaps a session: opened before the link dropped (or before we started) and not yet
    /// asserted again, or a close that got no answer.
    Stale,
}

/// Per-resource state.
#[derive(Debug)]
struct Session {
    known: Known,
    /// Sequence number of the last change sent (or re-asserted).
    processed: u64,
    /// The command whose answer decides what comes next (open or close), if any.
    inflight: Option<String>,
    /// A newer change arrived while `inflight` was pending.
    dirty: bool,
    /// Change whose open went unanswered and was followed by a probe (at most one per change).
    probed: u64,
}

impl Session {
    fn new(known: Known) -> Session {
        Session {
            known,
            processed: 0,
            inflight: None,
            dirty: false,
            probed: 0,
        }
    }
}

/// What a command in flight was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Opens a session; its answer settles the change.
    Open,
    /// Closes a session; its answer settles the change.
    Close,
    /// Updates a session Tigase holds (or, after a reconnect, may hold). Already settled as
    /// accepted; a result means Tigase had lost the session and opened it again, an error that
    /// it refused.
    Update,
    /// An `Open` past its deadline: a late answer still says what Tigase holds.
    LateOpen,
    /// A `Close` past its deadline.
    LateClose,
    /// A close sent because an `Open` got no answer: does Tigase hold a session for the sender?
    Probe,
}

#[derive(Debug)]
struct Pending {
    key: Key,
    seq: u64,
    kind: Kind,
    deadline: Instant,
}

struct Backend {
    cfg: TigaseConfig,
    table: StatusTable,
    link: LinkHandle,
    /// Handshake done and not dropped since.
    up: bool,
    sessions: HashMap<Key, Session>,
    /// Commands in flight by iq id.
    pending: HashMap<String, Pending>,
    /// Deadlines of `pending`, earliest first (entries whose command is gone are skipped).
    deadlines: BinaryHeap<Reverse<(Instant, String)>>,
    /// Session id → resource, for the senders computed so far.
    senders: HashMap<String, Key>,
    next_id: u64,
    /// Refusal conditions already warned about on this link session (then debug only).
    warned: HashSet<String>,
}

/// Run the Tigase session backend until shutdown.
pub async fn run(
    cfg: TigaseConfig,
    table: StatusTable,
    mut changes: Changes,
    link: LinkHandle,
    mut events: mpsc::UnboundedReceiver<LinkEvent>,
    mut control: mpsc::Receiver<Control>,
) {
    let mut b = Backend {
        cfg,
        table,
        link,
        up: false,
        sessions: HashMap::new(),
        pending: HashMap::new(),
        deadlines: BinaryHeap::new(),
        senders: HashMap::new(),
        next_id: 0,
        warned: HashSet::new(),
    };
    // Statuses held before we started (reloaded) may still have sessions in Tigase.
    for user in b.table.users() {
        for held in b.table.entries(&user) {
            b.sessions
                .insert((user.clone(), held.resource), Session::new(Known::Stale));
        }
    }
    let mut prune = tokio::time::interval(SETTLED_KEEP / 2);
    loop {
        let next = b.next_deadline();
        tokio::select! {
            Some(user) = changes.recv() => b.on_change(&user).await,
            Some(ev) = events.recv() => b.on_link(ev).await,
            _ = async { tokio::time::sleep_until(next.unwrap()).await }, if next.is_some() => {
                b.expire().await;
            }
            _ = prune.tick() => b.cfg.handle.prune(),
            Some(ctl) = control.recv() => match ctl {
                Control::Shutdown(done) => {
                    b.shutdown(&mut events).await;
                    let _ = done.send(());
                    return;
                }
            },
            else => return,
        }
    }
}

impl Backend {
    /// The sender owning `user/resource`'s session.
    fn sender(&mut self, user: &BareJid, resource: &ResourcePart) -> FullJid {
        let id = session_id(&user.with_resource(resource));
        let sender = self
            .cfg
            .component
            .with_resource_str(&id)
            .expect("40 hex digits are a valid resource");
        self.senders
            .entry(id)
            .or_insert_with(|| (user.clone(), resource.clone()));
        sender
    }

    fn next_id(&mut self) -> String {
        self.next_id += 1;
        format!("us-{}", self.next_id)
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, id))) = self.deadlines.peek() {
            if self.pending.get(id).is_some_and(|p| p.deadline == *at) {
                return Some(*at);
            }
            self.deadlines.pop();
        }
        None
    }

    fn track(&mut self, id: String, key: Key, seq: u64, kind: Kind, wait: Duration) {
        let deadline = Instant::now() + wait;
        self.deadlines.push(Reverse((deadline, id.clone())));
        self.pending.insert(
            id,
            Pending {
                key,
                seq,
                kind,
                deadline,
            },
        );
    }

    async fn on_change(&mut self, user: &BareJid) {
        for held in self.table.entries(user) {
            self.process(user, &held, false).await;
        }
    }

    /// Send what `held` needs, unless a command for it is pending (then it follows the answer)
    /// or it was sent already (unless `reassert`).
    async fn process(&mut self, user: &BareJid, held: &Held, reassert: bool) {
        let key = (user.clone(), held.resource.clone());
        let up = self.up;
        let session = self
            .sessions
            .entry(key.clone())
            .or_insert_with(|| Session::new(Known::Absent));
        if session.inflight.is_some() {
            session.dirty = true;
            return;
        }
        if !up || (!reassert && held.seq <= session.processed) {
            // While the link is down the change waits; the next Up re-asserts everything.
            return;
        }
        session.processed = held.seq;
        let kind = match (&held.status, session.known) {
            (Some(_), Known::Live | Known::Stale) => Kind::Update,
            (Some(_), Known::Absent) => Kind::Open,
            (None, _) => Kind::Close,
        };
        let id = self
            .send_command(&key, held.status.as_ref(), kind, held.seq)
            .await;
        let session = self.sessions.get_mut(&key).expect("inserted above");
        match kind {
            Kind::Update => {
                // Tigase does not answer an update of a session it holds: accepted once sent.
                session.known = Known::Live;
                self.table.mark_delivered(user, &held.resource, held.seq);
                self.cfg.handle.settle(&key, held.seq, Ok(()));
            }
            _ => session.inflight = Some(id),
        }
    }

    /// Send USER_STATUS for `key` (`status` `None`: close) from its sender and track the answer.
    async fn send_command(
        &mut self,
        key: &Key,
        status: Option<&crate::model::Status>,
        kind: Kind,
        seq: u64,
    ) -> String {
        debug!(user = %key.0, resource = %key.1, ?kind, seq, "USER_STATUS");
        let id = self.command(key, status).await;
        self.track(id.clone(), key.clone(), seq, kind, self.cfg.timeout);
        id
    }

    /// Send USER_STATUS for `key` (`status` `None`: close) from its own sender to the session
    /// manager of the user's domain; returns the iq id.
    async fn command(&mut self, key: &Key, status: Option<&crate::model::Status>) -> String {
        let (user, resource) = key;
        let sender = self.sender(user, resource);
        let sess_man = BareJid::new(&format!("sess-man@{}", user.domain()))
            .expect("sess-man@<a valid domain> is a valid JID");
        let full = user.with_resource(resource);
        let id = self.next_id();
        self.link
            .send(stanzas::user_status(
                &sender,
                &sess_man,
                id.clone(),
                &full,
                status,
            ))
            .await;
        id
    }

    async fn on_link(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Up => {
                self.up = true;
                self.warned.clear();
                let users = self.table.users();
                let held: usize = users.iter().map(|u| self.table.entries(u).len()).sum();
                info!(
                    users = users.len(),
                    resources = held,
                    "Tigase session mode: link up, asserting held statuses"
                );
                for user in users {
                    for held in self.table.entries(&user) {
                        self.process(&user, &held, true).await;
                    }
                }
            }
            LinkEvent::Down => {
                self.up = false;
                info!(
                    pending = self.pending.len(),
                    "Tigase session mode: link down; changes wait for the link"
                );
                // Tigase keeps its sessions when only our link drops, and loses them when it
                // restarts: we cannot tell which, so everything is asserted again on Up.
                for session in self.sessions.values_mut() {
                    if session.known == Known::Live || session.inflight.is_some() {
                        session.known = Known::Stale;
                    }
                    session.inflight = None;
                    session.dirty = false;
                }
                self.pending.clear();
                self.deadlines.clear();
            }
            LinkEvent::Stanza(stanza) => self.on_stanza(*stanza).await,
        }
    }

    async fn on_stanza(&mut self, stanza: Stanza) {
        let Stanza::Iq(iq) = stanza else {
            // Presence and messages routed to our synthetic sessions: nothing to do.
            return;
        };
        match &iq {
            Iq::Result { id, .. } => self.on_answer(id, Ok(())).await,
            Iq::Error { id, error, .. } => {
                self.on_answer(id, Err(stanzas::error_reason(error))).await
            }
            Iq::Get { .. } | Iq::Set { .. } => {
                if let Some(check) = stanzas::connection_check(&iq) {
                    if check.to.to_bare() == self.cfg.component {
                        debug!(session = %check.to, "CHECK_USER_CONNECTION answered");
                        self.link
                            .send(stanzas::connection_check_answer(&check))
                            .await;
                        return;
                    }
                }
                if let Some(answer) = stanzas::answer_request(&self.cfg.component, &iq) {
                    self.link.send(answer).await;
                }
            }
        }
    }

    async fn on_answer(&mut self, id: &str, answer: Result<(), String>) {
        let Some(p) = self.pending.remove(id) else {
            return; // not ours (or long gone)
        };
        let (user, resource) = p.key.clone();
        let jid = user.with_resource(&resource);
        let handle = self.cfg.handle.clone();
        let Some(session) = self.sessions.get_mut(&p.key) else {
            return;
        };
        let mut settled = false;
        let mut refusal = None;
        match (p.kind, answer) {
            (Kind::Open, Ok(())) => {
                session.known = Known::Live;
                self.table.mark_delivered(&user, &resource, p.seq);
                handle.settle(&p.key, p.seq, Ok(()));
                settled = true;
            }
            (Kind::Open, Err(reason)) => {
                session.known = Known::Absent;
                handle.settle(&p.key, p.seq, Err(DeliveryError::Refused(reason.clone())));
                settled = true;
                refusal = Some(reason);
            }
            (Kind::Close, answer) => {
                // A session we opened that Tigase no longer holds (it restarted, or closed it
                // after a failed check) is closed as asked: success. `item-not-found` for one
                // we never opened is reported.
                let opened = session.known != Known::Absent;
                session.known = Known::Absent;
                // Closed, or there was nothing to close (`item-not-found`), or refused: either
                // way nothing is left to do, so the tombstone goes.
                self.table.mark_delivered(&user, &resource, p.seq);
                let outcome = match answer {
                    Err(reason) if opened && reason.starts_with("item-not-found") => {
                        debug!(%jid, "Tigase no longer held the session: closed already");
                        Ok(())
                    }
                    answer => answer.map_err(DeliveryError::Refused),
                };
                if let Err(e) = &outcome {
                    info!(%jid, error = %e, "Tigase did not close the session");
                }
                handle.settle(&p.key, p.seq, outcome);
                settled = true;
            }
            (Kind::Update, Ok(())) => {
                debug!(%jid, "Tigase had no session and opened it again");
                session.known = Known::Live;
            }
            (Kind::Update, Err(reason)) => {
                session.known = Known::Absent;
                refusal = Some(reason);
            }
            (Kind::LateOpen, answer) => {
                info!(%jid, ok = answer.is_ok(), "late answer from Tigase to an open");
                if answer.is_ok() {
                    session.known = Known::Live;
                    self.table.mark_delivered(&user, &resource, p.seq);
                } else {
                    session.known = Known::Absent;
                }
            }
            (Kind::LateClose, answer) => {
                info!(%jid, ok = answer.is_ok(), "late answer from Tigase to a close");
                session.known = Known::Absent;
                self.table.mark_delivered(&user, &resource, p.seq);
            }
            (Kind::Probe, answer) => {
                session.known = Known::Absent;
                session.inflight = None;
                if answer.is_ok() {
                    // Tigase held a session for this sender and took the open as a silent
                    // update: it is closed now; open it again so Tigase answers.
                    info!(%jid, "Tigase held a session left from before; opening it again");
                    session.dirty = true;
                    session.processed = 0;
                } else {
                    debug!(%jid, "Tigase holds no session for this sender");
                }
            }
        }
        if settled && session.inflight.as_deref() == Some(id) {
            session.inflight = None;
        }
        if let Some(reason) = refusal {
            self.warn_refusal(&jid, &reason);
        }
        self.after(&p.key).await;
    }

    /// After a command for `key` settled: send what changed meanwhile, or forget the resource
    /// when the table no longer holds it.
    async fn after(&mut self, key: &Key) {
        let Some(session) = self.sessions.get_mut(key) else {
            return;
        };
        if session.inflight.is_some() {
            return;
        }
        let dirty = std::mem::take(&mut session.dirty);
        match self.table.get(&key.0, &key.1) {
            Some(held) if dirty => self.process(&key.0, &held, false).await,
            Some(_) => {}
            None if session.known == Known::Absent => {
                self.sessions.remove(key);
                let id = session_id(&key.0.with_resource(&key.1));
                self.senders.remove(&id);
            }
            None => {}
        }
    }

    fn warn_refusal(&mut self, jid: &FullJid, reason: &str) {
        let condition = reason.split(':').next().unwrap_or(reason).to_string();
        if self.warned.insert(condition.clone()) {
            let hint = if condition == "forbidden" {
                format!(
                    "Tigase accepts USER_STATUS only from trusted senders: add the component to \
                     the top-level `trusted` list of config.tdsl (trusted = [ '{}' ]) and restart \
                     Tigase; held statuses are sent again when the link reconnects",
                    self.cfg.component
                )
            } else {
                String::new()
            };
            warn!(%jid, reason, %hint, "Tigase refused the status");
        } else {
            debug!(%jid, reason, "Tigase refused the status");
        }
    }

    /// Deadlines that passed: an open or close without answer settles as a timeout (a late
    /// answer is still recognised for a while); an update's silence is the expected answer.
    async fn expire(&mut self) {
        let now = Instant::now();
        let mut touched = Vec::new();
        while let Some(Reverse((at, id))) = self.deadlines.peek().cloned() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let Some(p) = self.pending.get(&id) else {
                continue;
            };
            if p.deadline != at {
                continue;
            }
            let p = self.pending.remove(&id).expect("present");
            let late = match p.kind {
                Kind::Open => Kind::LateOpen,
                Kind::Close => Kind::LateClose,
                Kind::Probe => {
                    if let Some(session) = self.sessions.get_mut(&p.key) {
                        if session.inflight.as_deref() == Some(id.as_str()) {
                            session.inflight = None;
                        }
                    }
                    touched.push(p.key);
                    continue;
                }
                Kind::Update | Kind::LateOpen | Kind::LateClose => continue,
            };
            let jid = p.key.0.with_resource(&p.key.1);
            warn!(%jid, timeout = ?self.cfg.timeout, ?late, "no answer from Tigase");
            self.cfg
                .handle
                .settle(&p.key, p.seq, Err(DeliveryError::Timeout(self.cfg.timeout)));
            if let Some(session) = self.sessions.get_mut(&p.key) {
                // An open that got no answer did not (yet) happen; a close may have.
                session.known = if late == Kind::LateOpen {
                    Known::Absent
                } else {
                    Known::Stale
                };
                if session.inflight.as_deref() == Some(id.as_str()) {
                    session.inflight = None;
                }
            }
            self.track(id, p.key.clone(), p.seq, late, LATE_WINDOW);
            let probe = late == Kind::LateOpen
                && self.up
                && self
                    .sessions
                    .get(&p.key)
                    .is_some_and(|s| s.inflight.is_none() && s.probed < p.seq);
            if probe {
                let probe_id = self.send_command(&p.key, None, Kind::Probe, p.seq).await;
                if let Some(session) = self.sessions.get_mut(&p.key) {
                    session.probed = p.seq;
                    session.inflight = Some(probe_id);
                }
            }
            touched.push(p.key);
        }
        for key in touched {
            self.after(&key).await;
        }
    }

    /// Close every session Tigase may hold for us, and wait (briefly) for the answers.
    async fn shutdown(&mut self, events: &mut mpsc::UnboundedReceiver<LinkEvent>) {
        if !self.up {
            warn!("XMPP link is down: Tigase keeps the synthetic sessions until it restarts");
            return;
        }
        let keys: Vec<Key> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.known != Known::Absent || s.inflight.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        let mut waiting = HashSet::new();
        for key in keys {
            let id = self.command(&key, None).await;
            waiting.insert(id);
        }
        let sent = waiting.len();
        let _ = tokio::time::timeout(SHUTDOWN_WAIT.min(self.cfg.timeout), async {
            while !waiting.is_empty() {
                match events.recv().await {
                    Some(LinkEvent::Stanza(s)) => {
                        if let Stanza::Iq(Iq::Result { id, .. } | Iq::Error { id, .. }) = *s {
                            waiting.remove(&id);
                        }
                    }
                    Some(LinkEvent::Up) => {}
                    Some(LinkEvent::Down) | None => break,
                }
            }
        })
        .await;
        info!(
            sent,
            unanswered = waiting.len(),
            "closed the synthetic sessions in Tigase"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_stable_resources() {
        let a = FullJid::new("alice@example.com/tigase-external").unwrap();
        let id = session_id(&a);
        assert_eq!(id.len(), 40);
        assert!(id
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        // SHA-1 of the normalised full JID: the same input gives the same sender, always.
        assert_eq!(
            id,
            session_id(&FullJid::new("Alice@EXAMPLE.com/tigase-external").unwrap())
        );
        assert_ne!(
            id,
            session_id(&FullJid::new("alice@example.com/phone").unwrap())
        );
        assert!(ResourcePart::new(&id).is_ok());
        // Known value (sha1sum of the string), so a change of the derivation is noticed: it would
        // orphan every session a previous version opened.
        assert_eq!(
            session_id(&FullJid::new("a@b/c").unwrap()),
            "c1623892fba480b018038c1fd82bfb6ccce9da6f"
        );
    }

    #[tokio::test]
    async fn outcomes_reach_waiters_for_earlier_changes_only() {
        let (link, _task) = crate::xmpp::link::spawn(
            crate::xmpp::LinkConfig {
                component: BareJid::new("status.example.com").unwrap(),
                server: "127.0.0.1:1".into(),
                secret: crate::base::secret::Secret::new("x"),
                keepalive: Duration::from_secs(30),
                write_timeout: Duration::from_secs(10),
                reconnect_max: Duration::from_secs(30),
                ping_to: BareJid::new("example.com").unwrap().into(),
                metrics: Default::default(),
                health: crate::base::health::Health::new(["example.com"], false),
            },
            mpsc::unbounded_channel().0,
        );
        let h = Handle::new(Duration::from_millis(200), &link);
        let user = BareJid::new("alice@example.com").unwrap();
        let res = ResourcePart::new("r").unwrap().into_owned();
        let key = (user.clone(), res.clone());
        // Settled before the wait starts: answered at once.
        h.settle(&key, 3, Err(DeliveryError::Refused("forbidden".into())));
        assert_eq!(
            h.confirm(&user, &res, 3).await,
            Err(DeliveryError::Refused("forbidden".into()))
        );
        // A later change waits for its own outcome, not the older one.
        let h2 = h.clone();
        let (u2, r2) = (user.clone(), res.clone());
        let waiter = tokio::spawn(async move { h2.confirm(&u2, &r2, 5).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        h.settle(&key, 4, Ok(()));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        h.settle(&key, 6, Ok(()));
        assert_eq!(waiter.await.unwrap(), Ok(()));
        // Nothing settles: bounded, and reported as link down (this link never came up).
        let started = std::time::Instant::now();
        assert_eq!(
            h.confirm(&user, &res, 9).await,
            Err(DeliveryError::LinkDown)
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
