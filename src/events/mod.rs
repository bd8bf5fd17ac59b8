//! The event hub: one [`Event`] per change of a served user's presence, numbered, kept in a
//! bounded buffer for resuming, and handed to every subscriber.
//!
//! Producers (the status table's commit acknowledgements, the fan-out task's observed sessions)
//! only [`EventHub::notify`]: a push onto a channel, cheap enough for the store's writer thread.
//! One task ([`EventHub::run`]) turns each notification into an event: it reads the user's
//! presence as it is now (held statuses and observed sessions, aggregated), renders it to JSON
//! once, numbers it and publishes it:
//! - to the resume buffer ([`BUFFER`] events) and a `tokio::sync::broadcast` channel that the
//!   SSE streams read (`http/events.rs`). A subscriber that falls [`SUBSCRIBER_QUEUE`] events
//!   behind loses its place (the channel overwrites, it never waits) and is sent `reset`: a slow
//!   client never slows the others or this task.
//! - to the durable consumers ([`EventHub::tap`], the webhooks), which see every event in order.
//!
//! Event ids are unique and increasing, also across restarts: an id is the time in microseconds
//! since the Unix epoch, or the previous id + 1 if that is not larger. A `Last-Event-ID` from
//! before this process started (or older than the buffer) cannot be resumed: [`Resume::Reset`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use jid::BareJid;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::observe::{self, Observed};
use crate::status::{now_ms, StatusTable};

/// Events kept for `Last-Event-ID` resumption.
pub const BUFFER: usize = 16_384;
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
}

/// Where a subscriber starts.
#[derive(Debug)]
pub enum Resume {
    /// From now on (no `Last-Event-ID`).
    Live(broadcast::Receiver<Arc<Event>>),
    /// The buffered events after the given id, then live.
    From(Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>),
    /// The given id cannot be resumed (too old, from before a restart, or unknown).
    Reset(broadcast::Receiver<Arc<Event>>),
}

#[derive(Debug)]
struct Buffer {
    events: VecDeque<Arc<Event>>,
    /// Every id up to this one was either evicted or assigned before this process: a resume
    /// from an id below it is refused.
    floor: u64,
    /// The last id assigned.
    last: u64,
}

#[derive(Debug)]
struct Inner {
    notify: mpsc::UnboundedSender<(BareJid, Cause, u64)>,
    buffer: Mutex<Buffer>,
    live: broadcast::Sender<Arc<Event>>,
    taps: Mutex<Vec<mpsc::UnboundedSender<Arc<Event>>>>,
    closing: CancellationToken,
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
        let (live, _) = broadcast::channel(SUBSCRIBER_QUEUE);
        let start = now_us();
        let hub = EventHub {
            inner: Arc::new(Inner {
                notify: tx,
                buffer: Mutex::new(Buffer {
                    events: VecDeque::new(),
                    floor: start,
                    last: start,
                }),
                live,
                taps: Mutex::new(Vec::new()),
                closing: CancellationToken::new(),
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

    /// Subscribe, resuming after `last_event_id` if given. Taken under the buffer's lock, so the
    /// backlog and the live channel neither overlap nor leave a gap.
    pub fn subscribe(&self, last_event_id: Option<u64>) -> Resume {
        let buf = self.lock_buffer();
        let rx = self.inner.live.subscribe();
        match last_event_id {
            None => Resume::Live(rx),
            Some(id) if id < buf.floor || id > buf.last => Resume::Reset(rx),
            Some(id) => {
                let skip = buf.events.partition_point(|e| e.id <= id);
                Resume::From(buf.events.iter().skip(skip).cloned().collect(), rx)
            }
        }
    }

    /// Subscribers connected now.
    pub fn subscribers(&self) -> usize {
        self.inner.live.receiver_count()
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
        });
        if buf.events.len() >= BUFFER {
            if let Some(old) = buf.events.pop_front() {
                buf.floor = old.id;
            }
        }
        buf.events.push_back(event.clone());
        // No subscriber is not an error.
        let _ = self.inner.live.send(event.clone());
        drop(buf);
        self.lock_taps()
            .retain(|tap| tap.send(event.clone()).is_ok());
    }

    /// Turn notifications into events until `shutdown`; then close the live channel (the SSE
    /// streams end) and the taps.
    pub async fn run(
        self,
        mut notifications: Notifications,
        table: StatusTable,
        observed: Observed,
        shutdown: CancellationToken,
    ) {
        while let Some(Some((user, cause, at))) =
            shutdown.run_until_cancelled(notifications.0.recv()).await
        {
            let presence = observe::presence(&table, &observed, &user, at);
            self.publish(user, at, |_| presence.event_json(at, cause));
        }
        self.close();
    }

    /// End every subscriber's stream and every tap (at shutdown).
    pub fn close(&self) {
        self.lock_taps().clear();
        self.inner.closing.cancel();
    }

    /// Cancelled when the hub closes: SSE streams end on it (the broadcast sender lives as long
    /// as any handle, so its closing cannot tell them).
    pub fn closing(&self) -> CancellationToken {
        self.inner.closing.clone()
    }
}
