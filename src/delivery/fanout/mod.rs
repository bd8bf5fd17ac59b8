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
//!
//! # Parts
//! The task ([`run`]) holds one part per job and its `select!` only dispatches:
//! - `inbound.rs`: the link's events and stanzas, routed to the parts below; the readiness (up,
//!   the wait for the privilege advertisements, ready), each served domain's privileges reported
//!   to [`Health`] (a reconnect scheduled to look again while one is missing: servers grant them
//!   at connect), and the replay when ready;
//! - `deliver.rs`: held presences → directed presences (changes, a fresh roster's difference,
//!   greeting a contact resource, `unavailable` on shutdown);
//! - `rosters.rs`: the roster cache, its reverse index, refreshes, requests in flight, and the
//!   read side's roster queries;
//! - `exchanges.rs`: the agent's exchanges, their answers routed back, their expiry;
//! - `reconcile.rs`: the read model's sessions, the sync after a connect, and ejabberd's admin
//!   API (complete or not).

mod deliver;
mod exchanges;
mod inbound;
mod reconcile;
mod rosters;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use jid::BareJid;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::agent::Exchange;
use crate::base::health::Health;
use crate::events::EventHub;
use crate::metrics::Metrics;
use crate::observe::ejabberd_api::Polled;
use crate::observe::{Observed, RosterQuery};
use crate::status::{Changes, StatusTable};
use crate::xmpp::{LinkEvent, LinkHandle};

pub use rosters::ROSTER_REFRESH;

/// A roster request or an agent's exchange without an answer for this long is given up (a
/// roster request may be sent again).
const ROSTER_TIMEOUT: Duration = Duration::from_secs(15);
/// How often requests and exchanges without an answer, and stale roster reads, are expired.
const SWEEP: Duration = Duration::from_secs(5);

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
    /// Served domains (events are for served users only; each must grant its privileges).
    pub domains: BTreeSet<String>,
    /// The read model the forwarded presence feeds.
    pub observed: Observed,
    /// Told of every change of a served user's sessions.
    pub hub: EventHub,
    /// ejabberd's admin API, when configured: its session lists, and the trigger of a poll.
    pub api: Option<(mpsc::Receiver<Polled>, Arc<Notify>)>,
    /// The agent's exchanges (stanzas in users' names), and where readiness is told.
    pub agent: Option<(mpsc::Receiver<Exchange>, watch::Sender<bool>)>,
    /// Where each served domain's privileges are reported.
    pub health: Health,
}

/// The fan-out task's parts.
struct Fanout {
    /// The component's JID (sender of our queries, answerer of the server's).
    component: BareJid,
    /// A served domain: the disco query that ends the server's announcement of sessions goes
    /// there.
    domain: BareJid,
    /// The served domains, each of which must grant its privileges.
    domains: BTreeSet<String>,
    /// Where each served domain's privileges are reported.
    health: Health,
    /// Roster cache counters.
    metrics: Arc<Metrics>,
    /// Where our own queries and answers go.
    link: LinkHandle,
    /// Up, ready, the wait for the privilege advertisement.
    state: inbound::Readiness,
    /// Held presences to contacts.
    deliverer: deliver::Deliverer,
    /// The roster cache and its requests.
    rosters: rosters::Rosters,
    /// The agent's exchanges.
    exchanges: exchanges::Exchanges,
    /// The read model's sessions and their completeness.
    sessions: reconcile::Reconciler,
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
    let FanoutConfig {
        component,
        metrics,
        domain,
        domains,
        observed,
        hub,
        api,
        agent,
        health,
    } = cfg;
    let (mut api_polls, api_now) = match api {
        Some((polls, now)) => (Some(polls), Some(now)),
        None => (None, None),
    };
    let (mut agent_rx, agent_ready) = match agent {
        Some((rx, ready)) => (Some(rx), Some(ready)),
        None => (None, None),
    };
    let mut f = Fanout {
        rosters: rosters::Rosters::new(component.clone(), table.clone(), link.clone()),
        deliverer: deliver::Deliverer::new(table, link.clone()),
        exchanges: exchanges::Exchanges::new(link.clone(), agent_ready),
        sessions: reconcile::Reconciler::new(observed, hub, domains.clone(), api_now),
        state: inbound::Readiness::default(),
        component,
        domain,
        domains,
        health,
        metrics,
        link,
    };
    let mut refresh = tokio::time::interval(ROSTER_REFRESH);
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        let deadline = f.state.privilege_deadline();
        let retry_at = f.state.retry_at();
        tokio::select! {
            Some(user) = changes.recv() => f.on_change(user).await,
            Some(ev) = events.recv() => f.on_link(ev).await,
            _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => {
                f.on_privilege_wait_over().await;
            }
            _ = async { tokio::time::sleep_until(retry_at.unwrap()).await }, if retry_at.is_some() => {
                f.on_privilege_retry().await;
            }
            _ = sweep.tick() => {
                f.rosters.expire_requests().await;
                f.exchanges.expire();
                f.rosters.expire_contacts();
            }
            Some(q) = roster_queries.recv() => f.rosters.on_query(q, f.state.ready).await,
            Some(x) = async {
                match agent_rx.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => f.exchanges.on_exchange(x, f.state.ready).await,
            Some(p) = async {
                match api_polls.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => f.sessions.on_polled(p),
            _ = refresh.tick() => f.rosters.refresh().await,
            Some(ctl) = control.recv() => match ctl {
                Control::Shutdown(done) => {
                    f.deliverer.shutdown(f.state.up).await;
                    let _ = done.send(());
                    return;
                }
            },
            else => return,
        }
    }
}

impl Fanout {
    /// A user's held presence changed: deliver it to the cached roster (refreshed at the next
    /// tick), or fetch the roster first.
    async fn on_change(&mut self, user: BareJid) {
        if !self.state.ready {
            return; // replayed when ready
        }
        if self.deliverer.has_roster(&user) {
            Metrics::inc(&self.metrics.roster_hits);
            self.deliverer.deliver(&user).await;
            self.rosters.refresh_later(user);
        } else {
            Metrics::inc(&self.metrics.roster_misses);
            self.rosters.request(user).await;
        }
    }
}
