//! The event hub: one [`Event`] per change of a served user's presence, numbered, kept in a
//! bounded buffer for resuming, and handed to every subscriber.
//!
//! Producers (the status table's commit acknowledgements, the fan-out task's observed sessions)
//! only [`EventHub::notify`]: a push onto a channel, cheap enough for the store's writer thread.
//! One task ([`EventHub::run`]) turns each notification into an event: it reads the user's
//! presence as it is now (held statuses and observed sessions, aggregated), renders it to JSON
//! once, numbers it and publishes it:
//! - to the resume buffer (the last [`BUFFER`] events, at most [`BUFFER_BYTES`]), and to each subscriber whose [`Filter`] passes it
//!   (subscribers are indexed by user and domain, so an event costs only its own subscribers).
//!   Each subscriber (an SSE stream, `http/read.rs`) has a bounded queue of [`SUBSCRIBER_QUEUE`]
//!   events; one that falls that far behind has its queue ended and is sent `reset`: publishing
//!   never waits, so a slow client never slows the others or this task.
//! - to the durable consumers ([`EventHub::tap`], the webhooks), which see every event in order.
//!
//! Event ids are unique and increasing, also across restarts: an id is the time in microseconds
//! since the Unix epoch, or the previous id + 1 if that is not larger. A `Last-Event-ID` from
//! before this process started (or older than the buffer) cannot be resumed: [`Resume::Reset`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use jid::BareJid;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::observe::{self, Observed};
use crate::status::{now_ms, StatusTable};

/// Events kept for `Last-Event-ID` resumption (at most).
pub const BUFFER: usize = 16_384;
/// Bytes of event data kept for resumption (at most): an event carries every resource of its user,
/// so a user with many long statuses makes large events (measured: 50 resources with 1 KB texts,
/// 55 KB each; 16,384 of those would be 900 MB).
pub const BUFFER_BYTES: usize = 32 << 20;
/// Events a subscriber may fall behind before it is reset.
pub const SUBSCRIBER_QUEUE: usize = 4096;

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
    /// and shared by every other (`http/read.rs`; BENCHMARKS.md P9).
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

/// A subscriber's end: the events it missed (when resuming), then its live queue.
#[derive(Debug)]
pub struct Subscription {
    /// The resume could not be served (too old, from before a restart, or unknown): tell the
    /// client to read again.
    pub reset: bool,
    /// Buffered events after the resumed id that pass the filter.
    pub backlog: Vec<Arc<Event>>,
    /// Live events that pass the filter. Ends when the hub closes, or when the subscriber fell
    /// [`SUBSCRIBER_QUEUE`] events behind ([`Subscription::lagged`]).
    pub rx: mpsc::Receiver<Arc<Event>>,
    lagged: Arc<AtomicBool>,
    /// Unregisters on drop.
    _guard: Registered,
}

impl Subscription {
    /// Whether the queue was ended because the subscriber fell behind.
    pub fn lagged(&self) -> bool {
        self.lagged.load(Ordering::Relaxed)
    }
}

/// A subscriber as the publisher sees it.
#[derive(Debug)]
struct Sub {
    tx: mpsc::Sender<Arc<Event>>,
    lagged: Arc<AtomicBool>,
    /// The subscriber's user filter (a subscriber listed under a domain and also under the user
    /// gets the event once).
    users: Arc<HashSet<BareJid>>,
}

/// Subscribers indexed by what they want, so that an event costs only its own subscribers.
#[derive(Debug, Default)]
struct Registry {
    all: HashMap<u64, Sub>,
    by_user: HashMap<BareJid, HashMap<u64, Sub>>,
    by_domain: HashMap<String, HashMap<u64, Sub>>,
    next: u64,
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
    subs: Registry,
}

#[derive(Debug)]
struct Inner {
    notify: mpsc::UnboundedSender<(BareJid, Cause, u64)>,
    /// The resume buffer and the subscribers, under one lock: subscribing and publishing are
    /// ordered, so a backlog and the live queue neither overlap nor leave a gap.
    buffer: Mutex<Buffer>,
    taps: Mutex<Vec<mpsc::UnboundedSender<Arc<Event>>>>,
    closed: AtomicBool,
    published: AtomicU64,
}

/// Removes a subscriber from the registry when its stream goes.
#[derive(Debug)]
struct Registered {
    hub: EventHub,
    id: u64,
    filter: Filter,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut buf = self.hub.lock_buffer();
        let r = &mut buf.subs;
        let mut removed = r.all.remove(&self.id).is_some();
        for u in &self.filter.users {
            if let Some(m) = r.by_user.get_mut(u) {
                removed |= m.remove(&self.id).is_some();
                if m.is_empty() {
                    r.by_user.remove(u);
                }
            }
        }
        for d in &self.filter.domains {
            if let Some(m) = r.by_domain.get_mut(d) {
                removed |= m.remove(&self.id).is_some();
                if m.is_empty() {
                    r.by_domain.remove(d);
                }
            }
        }
        if removed {
            r.count -= 1;
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
                    subs: Registry::default(),
                }),
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

    /// Subscribe to the events `filter` passes, resuming after `last_event_id` if given.
    pub fn subscribe(&self, filter: Filter, last_event_id: Option<u64>) -> Subscription {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        let mut buf = self.lock_buffer();
        let (reset, backlog) = match last_event_id {
            None => (false, Vec::new()),
            Some(id) if id < buf.floor || id > buf.last => (true, Vec::new()),
            Some(id) => {
                let skip = buf.events.partition_point(|e| e.id <= id);
                let backlog = buf
                    .events
                    .iter()
                    .skip(skip)
                    .filter(|e| filter.wants(&e.user))
                    .cloned()
                    .collect();
                (false, backlog)
            }
        };
        let r = &mut buf.subs;
        r.next += 1;
        let id = r.next;
        let sub = || Sub {
            tx: tx.clone(),
            lagged: lagged.clone(),
            users: Arc::new(filter.users.clone()),
        };
        if !self.inner.closed.load(Ordering::Relaxed) {
            r.count += 1;
            if filter.users.is_empty() && filter.domains.is_empty() {
                r.all.insert(id, sub());
            }
            for u in &filter.users {
                r.by_user.entry(u.clone()).or_default().insert(id, sub());
            }
            for d in &filter.domains {
                r.by_domain.entry(d.clone()).or_default().insert(id, sub());
            }
        }
        drop(buf);
        Subscription {
            reset,
            backlog,
            rx,
            lagged,
            _guard: Registered {
                hub: self.clone(),
                id,
                filter,
            },
        }
    }

    /// Events published since start.
    pub fn published(&self) -> u64 {
        self.inner.published.load(Ordering::Relaxed)
    }

    /// Subscribers connected now.
    pub fn subscribers(&self) -> usize {
        self.lock_buffer().subs.count
    }

    /// Number and publish one event.
    fn publish(&self, user: BareJid, at: u64, render: impl FnOnce(u64) -> String) {
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
        self.inner.published.fetch_add(1, Ordering::Relaxed);
        let r = &mut buf.subs;
        let offer = |subs: &mut HashMap<u64, Sub>, skip_listed_user: bool| {
            subs.retain(|_, sub| {
                if skip_listed_user && sub.users.contains(&event.user) {
                    return true; // it has the event through its user list
                }
                match sub.tx.try_send(event.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // Too far behind: its queue ends here, and it is told to read again.
                        sub.lagged.store(true, Ordering::Relaxed);
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
        };
        offer(&mut r.all, false);
        if let Some(subs) = r.by_user.get_mut(&event.user) {
            offer(subs, false);
        }
        if let Some(subs) = r.by_domain.get_mut(event.user.domain().as_str()) {
            offer(subs, true);
        }
        drop(buf);
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
            self.publish(user, at, |_| presence.event_json(at, cause));
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
        self.inner.closed.store(true, Ordering::Relaxed);
        let mut buf = self.lock_buffer();
        let r = &mut buf.subs;
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
        while let Ok(e) = sub.rx.try_recv() {
            out.push(e.user.to_string());
        }
        out
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
        assert!(hub.lock_buffer().subs.by_user.is_empty());
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

    #[test]
    fn a_subscriber_that_falls_behind_is_cut_off_and_others_are_not() {
        let (hub, _n) = EventHub::new();
        let slow = hub.subscribe(Filter::default(), None);
        let mut fast = hub.subscribe(Filter::default(), None);
        for _ in 0..SUBSCRIBER_QUEUE + 1 {
            publish(&hub, "alice@a");
            while fast.rx.try_recv().is_ok() {}
        }
        assert!(slow.lagged());
        assert!(!fast.lagged());
        publish(&hub, "alice@a");
        assert!(fast.rx.try_recv().is_ok());
    }
}
