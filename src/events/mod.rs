//! The event hub: one [`Event`] per change of a served user's presence, numbered, kept in a
//! bounded buffer for resuming, and handed to every subscriber.
//!
//! Producers (the status table's commit acknowledgements, the fan-out task's observed sessions)
//! only [`EventHub::notify`]: a push onto a channel, cheap enough for the store's writer thread.
//! One task ([`EventHub::run`]) turns each notification into an event: it reads the user's
//! presence as it is now (held statuses and observed sessions, aggregated), renders it to JSON
//! once (the event object, [`PresenceEvent`]: the presence, when and why), numbers it and
//! publishes it:
//! - to the resume buffer (the last [`BUFFER`] events, at most [`BUFFER_BYTES`]), and to each subscriber whose [`Filter`] passes it
//!   (subscribers are indexed by user and domain, so an event costs only its own subscribers,
//!   and a subscriber costs one index entry per user or domain it follows, at most
//!   [`MAX_FOLLOWED`] users; it is registered a few entries per taking of the lock, so a large
//!   filter never holds up publishing). Each subscriber (an SSE stream, `http/sse.rs`) has a
//!   queue bounded to [`SUBSCRIBER_QUEUE`] events and [`SUBSCRIBER_QUEUE_BYTES`] of event data;
//!   one that falls that far behind has its queue ended and is sent `reset`: publishing never
//!   waits, so a slow client never slows the others or this task.
//! - to the durable consumers ([`EventHub::tap`], the webhooks), which see every event in order.
//!
//! Event ids are unique and increasing, also across restarts: an id is the time in microseconds
//! since the Unix epoch, or the previous id + 1 if that is not larger. A `Last-Event-ID` from
//! before this process started (or older than the buffer) cannot be resumed: the subscriber is told
//! so (the event stream's `reset`), with the id to resume after from then on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use jid::BareJid;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::base::clock::{now_ms, rfc3339};
use crate::observe::{self, Observed, UserPresence};
use crate::status::StatusTable;

/// Events kept for `Last-Event-ID` resumption (at most).
pub const BUFFER: usize = 16_384;
/// Bytes of event data kept for resumption (at most): an event carries every resource of its user,
/// so a user with many long statuses makes large events (measured: 50 resources with 1 KB texts,
/// 55 KB each; 16,384 of those would be 900 MB).
pub const BUFFER_BYTES: usize = 32 << 20;
/// Events a subscriber may fall behind before it is reset.
pub const SUBSCRIBER_QUEUE: usize = 4096;
/// Bytes of event data a subscriber may fall behind before it is reset (an event larger than
/// this still reaches a subscriber whose queue is empty).
pub const SUBSCRIBER_QUEUE_BYTES: usize = 16 << 20;
/// Most users one subscriber may follow (`?user=`, or a user token's contacts): each costs an
/// index entry while the stream is open.
pub const MAX_FOLLOWED: usize = 10_000;
/// Index entries a subscriber registers per taking of the registry's lock: publishing waits
/// for at most this many insertions.
const REGISTER_CHUNK: usize = 256;

/// Why a user's presence changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A real session logged in, changed or logged out.
    Session,
    /// A held status was set or cleared through the API.
    Status,
    /// A held status expired.
    Expiry,
}

impl Cause {
    /// The `cause` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Session => "session",
            Cause::Status => "status",
            Cause::Expiry => "expiry",
        }
    }
}

/// An event's object: the presence, when and why it changed.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceEvent<'a> {
    /// The presence after the change.
    #[serde(flatten)]
    pub presence: &'a UserPresence,
    /// When it changed (RFC 3339).
    pub at: String,
    /// `session`, `status` or `expiry`.
    pub cause: &'static str,
}

/// The event object of `presence`, changed at `at` (ms) for `cause`, as JSON.
fn event_json(presence: &UserPresence, at: u64, cause: Cause) -> String {
    serde_json::to_string(&PresenceEvent {
        presence,
        at: rfc3339(at),
        cause: cause.as_str(),
    })
    .expect("serialisable")
}

/// One change of a served user's presence.
#[derive(Debug)]
pub struct Event {
    /// Unique and increasing, also across restarts.
    pub id: u64,
    /// The user whose presence changed.
    pub user: BareJid,
    /// When (ms since the Unix epoch).
    pub at: u64,
    /// The presence object (`GET /v1/users/{jid}/presence`) plus `"at"` and `"cause"`, as JSON.
    pub data: Arc<str>,
    /// The event as a Server-Sent Events frame, rendered once by the first stream that sends it
    /// and shared by every other (`http/sse.rs`; BENCHMARKS.md P9).
    pub sse_frame: std::sync::OnceLock<bytes::Bytes>,
}

/// Which users a subscriber wants: those listed, and those of the domains listed; everyone when
/// both are empty.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Users.
    pub users: HashSet<BareJid>,
    /// Domains.
    pub domains: HashSet<String>,
}

impl Filter {
    /// Whether `user`'s events pass.
    pub fn wants(&self, user: &BareJid) -> bool {
        (self.users.is_empty() && self.domains.is_empty())
            || self.users.contains(user)
            || self.domains.contains(user.domain().as_str())
    }
}

/// What a subscriber's queue holds now, shared by the publisher and the subscriber.
#[derive(Debug, Default)]
struct Queue {
    /// The queue was ended because the subscriber fell behind.
    lagged: AtomicBool,
    /// Bytes of event data queued and not yet received.
    bytes: AtomicUsize,
}

/// A subscriber's end: the events it missed (when resuming), then its live queue.
#[derive(Debug)]
pub struct Subscription {
    /// The resume could not be served (too old, from before a restart, or unknown): tell the
    /// client to read again.
    pub reset: bool,
    /// Buffered events after the resumed id that pass the filter.
    pub backlog: Vec<Arc<Event>>,
    /// Live events that pass the filter. Ends when the hub closes, or when the subscriber fell
    /// [`SUBSCRIBER_QUEUE`] events or [`SUBSCRIBER_QUEUE_BYTES`] behind ([`Subscription::lagged`]).
    rx: mpsc::Receiver<Arc<Event>>,
    /// Live events up to this id are in `backlog` already, or came before the subscription.
    seen: u64,
    queue: Arc<Queue>,
    /// Unregisters on drop.
    _guard: Registered,
}

impl Subscription {
    /// The id to resume after to get exactly what this subscription delivers next (the
    /// `Last-Event-ID` a client told of a `reset` should use from now on).
    pub fn resume_id(&self) -> u64 {
        self.seen
    }

    /// Whether the queue was ended because the subscriber fell behind.
    pub fn lagged(&self) -> bool {
        self.queue.lagged.load(Ordering::Relaxed)
    }

    /// The next live event; `None` when the queue ended (hub closed, or [`lagged`](Self::lagged)).
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Option<Arc<Event>> {
        loop {
            let e = self.rx.recv().await?;
            if let Some(e) = self.received(e) {
                return Some(e);
            }
        }
    }

    /// Account for `e` leaving the queue; `None` if the backlog had it already.
    fn received(&self, e: Arc<Event>) -> Option<Arc<Event>> {
        self.queue.bytes.fetch_sub(e.data.len(), Ordering::Relaxed);
        (e.id > self.seen).then_some(e)
    }
}

/// A subscriber as the publisher sees it: one per subscriber, shared by each index entry (so a
/// subscriber costs one entry per user or domain it follows, and its filter once).
#[derive(Debug)]
struct Sub {
    tx: mpsc::Sender<Arc<Event>>,
    queue: Arc<Queue>,
    /// The subscriber's filter (a subscriber listed under a domain and also under the user gets
    /// the event once).
    filter: Arc<Filter>,
}

impl Sub {
    /// Queue `event`; `false` when this subscriber is to be dropped (gone, or too far behind: its
    /// queue ends here, and it is told to read again).
    fn offer(&self, event: &Arc<Event>) -> bool {
        if self.queue.lagged.load(Ordering::Relaxed) {
            return false;
        }
        let len = event.data.len();
        let queued = self.queue.bytes.load(Ordering::Relaxed);
        // An event alone always fits: a reader that keeps up gets even a huge one.
        if queued > 0 && queued.saturating_add(len) > SUBSCRIBER_QUEUE_BYTES {
            self.queue.lagged.store(true, Ordering::Relaxed);
            return false;
        }
        // Counted before it can be received (and uncounted), so the count never wraps.
        self.queue.bytes.fetch_add(len, Ordering::Relaxed);
        match self.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.queue.lagged.store(true, Ordering::Relaxed);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Subscribers indexed by what they want, so that an event costs only its own subscribers.
#[derive(Debug, Default)]
struct Registry {
    all: HashMap<u64, Arc<Sub>>,
    by_user: HashMap<BareJid, HashMap<u64, Arc<Sub>>>,
    by_domain: HashMap<String, HashMap<u64, Arc<Sub>>>,
    next: u64,
    /// Subscriptions alive.
    count: usize,
}

#[derive(Debug)]
struct Buffer {
    events: VecDeque<Arc<Event>>,
    /// Every id up to this one was either evicted or assigned before this process: a resume
    /// from an id below it is refused.
    floor: u64,
    /// The last id assigned.
    last: u64,
    /// Bytes of data in `events`.
    bytes: usize,
}

#[derive(Debug)]
struct Inner {
    notify: mpsc::UnboundedSender<(BareJid, Cause, u64)>,
    /// The resume buffer. An event enters it before it is offered to the subscribers.
    buffer: Mutex<Buffer>,
    /// The subscribers. Registering one takes this lock for [`REGISTER_CHUNK`] entries at a
    /// time, so publishing never waits for a large filter; what is published meanwhile is
    /// found in the buffer ([`EventHub::subscribe`]).
    subs: Mutex<Registry>,
    taps: Mutex<Vec<mpsc::UnboundedSender<Arc<Event>>>>,
    closed: AtomicBool,
    published: AtomicU64,
}

/// Removes a subscriber from the registry when its stream goes.
#[derive(Debug)]
struct Registered {
    hub: EventHub,
    id: u64,
    filter: Arc<Filter>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let hub = &self.hub;
        let id = self.id;
        {
            let mut r = hub.lock_subs();
            r.count -= 1;
            r.all.remove(&id);
            for d in &self.filter.domains {
                if let Some(m) = r.by_domain.get_mut(d) {
                    m.remove(&id);
                    if m.is_empty() {
                        r.by_domain.remove(d);
                    }
                }
            }
        }
        let mut users = self.filter.users.iter().peekable();
        while users.peek().is_some() {
            let mut r = hub.lock_subs();
            for u in users.by_ref().take(REGISTER_CHUNK) {
                if let Some(m) = r.by_user.get_mut(u) {
                    m.remove(&id);
                    if m.is_empty() {
                        r.by_user.remove(u);
                    }
                }
            }
        }
    }
}

/// Cheap-to-clone handle of the hub.
#[derive(Debug, Clone)]
pub struct EventHub {
    inner: Arc<Inner>,
}

/// The hub task's end of the notifications.
#[derive(Debug)]
pub struct Notifications(mpsc::UnboundedReceiver<(BareJid, Cause, u64)>);

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl EventHub {
    /// A hub and the receiver its [`run`](Self::run) task reads.
    pub fn new() -> (EventHub, Notifications) {
        let (tx, rx) = mpsc::unbounded_channel();
        let start = now_us();
        let hub = EventHub {
            inner: Arc::new(Inner {
                notify: tx,
                buffer: Mutex::new(Buffer {
                    events: VecDeque::new(),
                    floor: start,
                    last: start,
                    bytes: 0,
                }),
                subs: Mutex::new(Registry::default()),
                taps: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
                published: AtomicU64::new(0),
            }),
        };
        (hub, Notifications(rx))
    }

    /// `user`'s presence changed now because of `cause`.
    pub fn notify(&self, user: BareJid, cause: Cause) {
        // The receiver goes only at shutdown; then nothing needs to be told.
        let _ = self.inner.notify.send((user, cause, now_ms()));
    }

    /// A durable consumer: receives every event from now on, in order (unbounded: the consumer
    /// must keep up or spill to disk itself).
    pub fn tap(&self) -> mpsc::UnboundedReceiver<Arc<Event>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock_taps().push(tx);
        rx
    }

    fn lock_taps(&self) -> std::sync::MutexGuard<'_, Vec<mpsc::UnboundedSender<Arc<Event>>>> {
        self.inner.taps.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_buffer(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.inner.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_subs(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner.subs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribe to the events `filter` passes, resuming after `last_event_id` if given.
    ///
    /// The subscriber is registered [`REGISTER_CHUNK`] entries per taking of the lock, while
    /// events go on being published; then the buffer gives it what was published since it began
    /// (or since `last_event_id`), and its live queue skips what that backlog holds: no gap, no
    /// duplicate. The caller bounds the filter ([`MAX_FOLLOWED`]).
    pub fn subscribe(&self, filter: Filter, last_event_id: Option<u64>) -> Subscription {
        self.subscribe_with(filter, last_event_id, || {})
    }

    /// [`subscribe`](Self::subscribe), calling `between` each time the lock is let go while
    /// registering (tests publish there).
    fn subscribe_with(
        &self,
        filter: Filter,
        last_event_id: Option<u64>,
        mut between: impl FnMut(),
    ) -> Subscription {
        let began = self.lock_buffer().last;
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let queue = Arc::new(Queue::default());
        let filter = Arc::new(filter);
        let id = {
            let mut r = self.lock_subs();
            r.next += 1;
            r.count += 1;
            r.next
        };
        // From here on, this unregisters whatever was registered.
        let guard = Registered {
            hub: self.clone(),
            id,
            filter: filter.clone(),
        };
        let sub = Arc::new(Sub {
            tx,
            queue: queue.clone(),
            filter: filter.clone(),
        });
        {
            let mut r = self.lock_subs();
            if !self.inner.closed.load(Ordering::Relaxed) {
                if filter.users.is_empty() && filter.domains.is_empty() {
                    r.all.insert(id, sub.clone());
                }
                for d in &filter.domains {
                    r.by_domain
                        .entry(d.clone())
                        .or_default()
                        .insert(id, sub.clone());
                }
            }
        }
        let mut users = filter.users.iter().peekable();
        while users.peek().is_some() {
            between();
            let mut r = self.lock_subs();
            if self.inner.closed.load(Ordering::Relaxed) {
                break;
            }
            for u in users.by_ref().take(REGISTER_CHUNK) {
                r.by_user
                    .entry(u.clone())
                    .or_default()
                    .insert(id, sub.clone());
            }
        }
        // The registry's entries hold the sender now: the queue ends when they go.
        drop(sub);
        let buf = self.lock_buffer();
        let from = last_event_id.unwrap_or(began);
        // Too old (evicted, or from before this process), or from the future: what was missed
        // cannot be told. (Without a resume, `began` is evicted only if the buffer turned over
        // while registering.)
        let reset = from < buf.floor || from > buf.last;
        let backlog = if reset {
            Vec::new()
        } else {
            let skip = buf.events.partition_point(|e| e.id <= from);
            buf.events
                .iter()
                .skip(skip)
                .filter(|e| filter.wants(&e.user))
                .cloned()
                .collect()
        };
        let seen = buf.last;
        drop(buf);
        Subscription {
            reset,
            backlog,
            rx,
            seen,
            queue,
            _guard: guard,
        }
    }

    /// The last `n` events of the resume buffer that `wants` passes, oldest first (the status
    /// page shows them at load, and resumes its live stream after the last one). The scan walks
    /// back from the newest and stops after `n` matches or `scan` events looked at, so a rare user
    /// never costs a walk over the whole buffer under the lock.
    pub fn recent(
        &self,
        n: usize,
        scan: usize,
        wants: impl Fn(&BareJid) -> bool,
    ) -> (Vec<Arc<Event>>, u64) {
        let buf = self.lock_buffer();
        let mut out: Vec<Arc<Event>> = buf
            .events
            .iter()
            .rev()
            .take(scan)
            .filter(|e| wants(&e.user))
            .take(n)
            .cloned()
            .collect();
        out.reverse();
        (out, buf.last)
    }

    /// Events published since start.
    pub fn published(&self) -> u64 {
        self.inner.published.load(Ordering::Relaxed)
    }

    /// Subscribers connected now.
    pub fn subscribers(&self) -> usize {
        self.lock_subs().count
    }

    /// Number and publish one event.
    fn publish(&self, user: BareJid, at: u64, render: impl FnOnce(u64) -> String) {
        let event = {
            let mut buf = self.lock_buffer();
            let id = now_us().max(buf.last + 1);
            buf.last = id;
            let event = Arc::new(Event {
                id,
                user,
                at,
                data: render(id).into(),
                sse_frame: std::sync::OnceLock::new(),
            });
            buf.bytes += event.data.len();
            buf.events.push_back(event.clone());
            while buf.events.len() > BUFFER || buf.bytes > BUFFER_BYTES {
                let Some(old) = buf.events.pop_front() else {
                    break;
                };
                buf.floor = old.id;
                buf.bytes -= old.data.len();
            }
            event
        };
        self.inner.published.fetch_add(1, Ordering::Relaxed);
        {
            let mut r = self.lock_subs();
            let r = &mut *r;
            r.all.retain(|_, sub| sub.offer(&event));
            if let Some(subs) = r.by_user.get_mut(&event.user) {
                subs.retain(|_, sub| sub.offer(&event));
            }
            if let Some(subs) = r.by_domain.get_mut(event.user.domain().as_str()) {
                subs.retain(|_, sub| {
                    // One listed under the user too has the event through that entry.
                    sub.filter.users.contains(&event.user) || sub.offer(&event)
                });
            }
        }
        self.lock_taps()
            .retain(|tap| tap.send(event.clone()).is_ok());
    }

    /// Turn notifications into events until `shutdown`; then close the live channel (the SSE
    /// streams end) and the taps.
    ///
    /// `stop` comes after the HTTP requests have drained: the changes they committed are still
    /// published (to the taps: webhooks must not lose them) before the taps are closed.
    pub async fn run(
        self,
        mut notifications: Notifications,
        table: StatusTable,
        observed: Observed,
        stop: CancellationToken,
    ) {
        let event = |(user, cause, at): (BareJid, Cause, u64)| {
            let presence = observe::presence(&table, &observed, &user, at);
            self.publish(user, at, |_| event_json(&presence, at, cause));
        };
        while let Some(Some(n)) = stop.run_until_cancelled(notifications.0.recv()).await {
            event(n);
        }
        while let Ok(n) = notifications.0.try_recv() {
            event(n);
        }
        self.end_streams();
        self.lock_taps().clear();
    }

    /// End every subscriber's stream (at shutdown, so that they do not hold the HTTP drain);
    /// events are still published to the taps until [`run`](Self::run) stops.
    pub fn end_streams(&self) {
        let mut r = self.lock_subs();
        self.inner.closed.store(true, Ordering::Relaxed);
        r.all.clear();
        r.by_user.clear();
        r.by_domain.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> BareJid {
        BareJid::new(s).unwrap()
    }

    fn publish(hub: &EventHub, user: &str) -> u64 {
        hub.publish(jid(user), 0, |id| format!("{{\"n\":{id}}}"));
        hub.lock_buffer().last
    }

    fn drain(sub: &mut Subscription) -> Vec<String> {
        let mut out: Vec<String> = sub.backlog.drain(..).map(|e| e.user.to_string()).collect();
        while let Some(e) = try_next(sub) {
            out.push(e.user.to_string());
        }
        out
    }

    #[test]
    fn recent_gives_the_last_matching_events_oldest_first() {
        let (hub, _n) = EventHub::new();
        let mut ids = Vec::new();
        for u in ["alice@a", "bob@a", "alice@a", "carol@b", "alice@a"] {
            ids.push(publish(&hub, u));
        }
        let (all, last) = hub.recent(3, usize::MAX, |_| true);
        assert_eq!(last, ids[4]);
        assert_eq!(
            all.iter().map(|e| e.id).collect::<Vec<_>>(),
            [ids[2], ids[3], ids[4]]
        );
        let (alice, _) = hub.recent(10, usize::MAX, |u| u == &jid("alice@a"));
        assert_eq!(
            alice.iter().map(|e| e.id).collect::<Vec<_>>(),
            [ids[0], ids[2], ids[4]]
        );
        // The scan is bounded: only the last 2 events are looked at.
        let (bounded, _) = hub.recent(10, 2, |u| u == &jid("alice@a"));
        assert_eq!(bounded.iter().map(|e| e.id).collect::<Vec<_>>(), [ids[4]]);
    }

    #[test]
    fn filters_by_user_and_domain_without_duplicates() {
        let (hub, _n) = EventHub::new();
        let mut all = hub.subscribe(Filter::default(), None);
        let mut alice = hub.subscribe(
            Filter {
                users: [jid("alice@a")].into(),
                domains: HashSet::new(),
            },
            None,
        );
        let mut both = hub.subscribe(
            Filter {
                users: [jid("alice@a")].into(),
                domains: ["a".to_string()].into(),
            },
            None,
        );
        assert_eq!(hub.subscribers(), 3);
        for u in ["alice@a", "bob@a", "carol@b"] {
            publish(&hub, u);
        }
        assert_eq!(drain(&mut all), ["alice@a", "bob@a", "carol@b"]);
        assert_eq!(drain(&mut alice), ["alice@a"]);
        assert_eq!(drain(&mut both), ["alice@a", "bob@a"], "once each");
        drop(alice);
        drop(both);
        assert_eq!(hub.subscribers(), 1);
        assert!(hub.lock_subs().by_user.is_empty());
    }

    #[test]
    fn resume_gives_exactly_the_missed_events_or_reset() {
        let (hub, _n) = EventHub::new();
        let first = publish(&hub, "alice@a");
        publish(&hub, "bob@a");
        let third = publish(&hub, "alice@a");
        let mut sub = hub.subscribe(Filter::default(), Some(first));
        assert!(!sub.reset);
        assert_eq!(drain(&mut sub), ["bob@a", "alice@a"]);
        let mut none = hub.subscribe(Filter::default(), Some(third));
        assert!(!none.reset);
        assert!(drain(&mut none).is_empty());
        // From before this process (ids are time-based: an older id), or from the future.
        assert!(
            hub.subscribe(Filter::default(), Some(first - 1_000_000))
                .reset
        );
        assert!(hub.subscribe(Filter::default(), Some(third + 1)).reset);
        // Live events follow the backlog without a gap.
        publish(&hub, "carol@a");
        assert_eq!(drain(&mut sub), ["carol@a"]);
    }

    #[test]
    fn ids_increase_and_the_buffer_is_bounded() {
        let (hub, _n) = EventHub::new();
        let first = publish(&hub, "alice@a");
        let mut last = first;
        for _ in 0..BUFFER + 10 {
            let id = publish(&hub, "alice@a");
            assert!(id > last);
            last = id;
        }
        assert_eq!(hub.lock_buffer().events.len(), BUFFER);
        assert!(
            hub.subscribe(Filter::default(), Some(first)).reset,
            "evicted: not resumable"
        );
        assert_eq!(hub.published(), BUFFER as u64 + 11);
    }

    #[test]
    fn the_buffer_is_bounded_in_bytes_too() {
        let (hub, _n) = EventHub::new();
        let big = "x".repeat(1 << 20);
        let first = {
            hub.publish(jid("alice@a"), 0, |_| big.clone());
            hub.lock_buffer().last
        };
        for _ in 0..40 {
            hub.publish(jid("alice@a"), 0, |_| big.clone());
        }
        let buf = hub.lock_buffer();
        assert!(buf.bytes <= BUFFER_BYTES);
        assert_eq!(buf.events.len(), BUFFER_BYTES >> 20);
        assert!(buf.floor >= first);
    }

    /// Index entries plus the users of each distinct filter they hold (what following costs).
    fn stored_user_entries(hub: &EventHub) -> usize {
        let r = hub.lock_subs();
        let mut seen = HashSet::new();
        let mut total = 0;
        for m in r.by_user.values() {
            for s in m.values() {
                total += 1;
                if seen.insert(Arc::as_ptr(&s.filter) as usize) {
                    total += s.filter.users.len();
                }
            }
        }
        total
    }

    /// The next live event if one is queued (as [`Subscription::recv`] gives them).
    fn try_next(sub: &mut Subscription) -> Option<Arc<Event>> {
        loop {
            let e = sub.rx.try_recv().ok()?;
            if let Some(e) = sub.received(e) {
                return Some(e);
            }
        }
    }

    #[test]
    fn a_subscriber_costs_what_it_follows() {
        let (hub, _n) = EventHub::new();
        let n = 2000;
        let users: HashSet<BareJid> = (0..n).map(|i| jid(&format!("u{i}@a"))).collect();
        let mut sub = hub.subscribe(
            Filter {
                users,
                domains: HashSet::new(),
            },
            None,
        );
        let stored = stored_user_entries(&hub);
        assert!(
            stored <= 2 * n,
            "{stored} entries stored for {n} users followed"
        );
        publish(&hub, "u7@a");
        publish(&hub, "x@a");
        publish(&hub, "u1999@a");
        assert_eq!(drain(&mut sub), ["u7@a", "u1999@a"]);
        drop(sub);
        assert_eq!(stored_user_entries(&hub), 0);
        assert_eq!(hub.subscribers(), 0);
    }

    #[test]
    fn what_is_published_while_registering_arrives_once() {
        let (hub, _n) = EventHub::new();
        let users: HashSet<BareJid> = (0..3 * REGISTER_CHUNK)
            .map(|i| jid(&format!("u{i}@a")))
            .collect();
        // The order of registration: the first chunk is in before the first pause, the last not.
        let order: Vec<String> = users.iter().map(|u| u.to_string()).collect();
        let (first, last) = (order[0].clone(), order[order.len() - 1].clone());
        let mut pauses = 0;
        let mut sub = hub.subscribe_with(
            Filter {
                users,
                domains: HashSet::new(),
            },
            None,
            || {
                pauses += 1;
                if pauses == 2 {
                    publish(&hub, &first);
                    publish(&hub, "x@a");
                    publish(&hub, &last);
                }
            },
        );
        assert_eq!(pauses, 3);
        publish(&hub, &first);
        assert_eq!(drain(&mut sub), [first.clone(), last, first]);
    }

    #[test]
    fn a_subscriber_is_cut_off_by_bytes_before_the_count() {
        let (hub, _n) = EventHub::new();
        let slow = hub.subscribe(Filter::default(), None);
        let mut fast = hub.subscribe(Filter::default(), None);
        let big = "x".repeat(1 << 20);
        let n = SUBSCRIBER_QUEUE_BYTES / big.len() + 1;
        assert!(n < SUBSCRIBER_QUEUE, "the byte bound must come first");
        for _ in 0..n {
            hub.publish(jid("alice@a"), 0, |_| big.clone());
            while try_next(&mut fast).is_some() {}
        }
        assert!(
            slow.lagged(),
            "{n} events of 1 MiB did not cut off a reader that never reads"
        );
        assert!(!fast.lagged());
        // One event larger than the whole bound still reaches a reader that keeps up.
        let huge = "y".repeat(SUBSCRIBER_QUEUE_BYTES + 1);
        hub.publish(jid("alice@a"), 0, |_| huge.clone());
        assert_eq!(try_next(&mut fast).unwrap().data.len(), huge.len());
        assert!(!fast.lagged());
    }

    #[test]
    fn a_subscriber_that_falls_behind_is_cut_off_and_others_are_not() {
        let (hub, _n) = EventHub::new();
        let slow = hub.subscribe(Filter::default(), None);
        let mut fast = hub.subscribe(Filter::default(), None);
        for _ in 0..SUBSCRIBER_QUEUE + 1 {
            publish(&hub, "alice@a");
            while try_next(&mut fast).is_some() {}
        }
        assert!(slow.lagged());
        assert!(!fast.lagged());
        publish(&hub, "alice@a");
        assert!(try_next(&mut fast).is_some());
    }
}
