//! The read model's sessions: fed from the forwarded presence, reconciled after each connect.
//!
//! [`Reconciler`] writes what the server announces into [`Observed`] (and tells the event hub of
//! a served user's change), remembers the sessions known before the link came up, and decides
//! whether what we observe is complete: when the server has answered the disco query sent
//! after the privilege advertisement (everything it announces at connect came before), and,
//! for ejabberd when its admin API is configured, when a session list from that API has been
//! reconciled with ours ([`Reconciler::on_polled`]).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use jid::{BareJid, FullJid};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::base::clock::now_ms;
use crate::base::escape::Escaped;
use crate::events::{Cause, EventHub};
use crate::model::Announced;
use crate::observe::ejabberd_api::Polled;
use crate::observe::Observed;

/// The observed sessions' feed and completeness.
pub(super) struct Reconciler {
    /// The read model the forwarded presence feeds.
    observed: Observed,
    /// Told of every change of a served user's sessions.
    hub: EventHub,
    /// Served domains (events are for served users only).
    domains: BTreeSet<String>,
    /// The server forwards users' presence to us (advertised privilege).
    presence_granted: bool,
    /// The id of the disco query sent after the privilege advertisement; its answer ends the
    /// server's announcement of the sessions online.
    sync_id: Option<String>,
    sync_count: u64,
    /// Sessions known before the link came up and not announced again since.
    unconfirmed: HashSet<FullJid>,
    /// Asks ejabberd's admin API for the sessions at once (`[observe] ejabberd_api`).
    api_now: Option<Arc<Notify>>,
    /// The last poll of that API succeeded.
    api_ok: bool,
    /// Its failure has been logged since it last succeeded.
    api_warned: bool,
    /// Synchronised since the link came up (the disco answer arrived).
    synced: bool,
}

impl Reconciler {
    pub(super) fn new(
        observed: Observed,
        hub: EventHub,
        domains: BTreeSet<String>,
        api_now: Option<Arc<Notify>>,
    ) -> Self {
        Reconciler {
            observed,
            hub,
            domains,
            presence_granted: false,
            sync_id: None,
            sync_count: 0,
            unconfirmed: HashSet::new(),
            api_now,
            api_ok: false,
            api_warned: false,
            synced: false,
        }
    }

    fn serves(&self, jid: &BareJid) -> bool {
        self.domains.contains(jid.domain().as_str())
    }

    /// The link came up: no privilege advertised yet. Sessions seen before are kept (flagged
    /// incomplete) until the server has announced again who is online.
    pub(super) fn link_up(&mut self) {
        self.presence_granted = false;
        self.unconfirmed = self.observed.session_jids().into_iter().collect();
    }

    /// The link went down: incomplete, and the disco answer of the old stream never comes.
    pub(super) fn link_down(&mut self) {
        self.observed.set_complete(false);
        self.sync_id = None;
        self.synced = false;
    }

    /// The privilege advertisement said whether the server forwards users' presence.
    pub(super) fn set_presence_granted(&mut self, granted: bool) {
        self.presence_granted = granted;
    }

    /// The id of a new disco query ending the announcement of sessions (the one awaited now).
    pub(super) fn next_sync_id(&mut self) -> String {
        self.sync_count += 1;
        let id = format!("sync-{}", self.sync_count);
        self.sync_id = Some(id.clone());
        id
    }

    /// Whether `id` is the disco query awaited.
    pub(super) fn is_sync(&self, id: &str) -> bool {
        self.sync_id.as_deref() == Some(id)
    }

    /// Whether `from` is not a session observed yet.
    pub(super) fn is_new_session(&self, from: &FullJid) -> bool {
        self.observed.session_since(from).is_none()
    }

    /// The server announced `what` of session `from`.
    pub(super) fn announce(&mut self, from: &FullJid, what: Announced) {
        self.unconfirmed.remove(from);
        let contact = from.to_bare();
        if self.observed.announce(from, what) && self.serves(&contact) {
            self.hub.notify(contact, Cause::Session);
        }
    }

    /// The server answered the disco query sent after the privilege advertisement: everything
    /// it announces at connect came before. Decide whether what we observe is complete.
    pub(super) fn synced(&mut self, server: Option<String>) {
        self.sync_id = None;
        self.synced = true;
        // No name: the domain asked is not served, or the server names no identity.
        let name = server.unwrap_or_else(|| "(unnamed)".into());
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
                self.observed.set_complete(false);
                info!(server = %Escaped(&name), "observed sessions: asking ejabberd's admin API");
                return;
            }
        }
        if tells_all {
            // Sessions known before the link went and not announced again are gone.
            for jid in std::mem::take(&mut self.unconfirmed) {
                if self
                    .observed
                    .announce(&jid, Announced::Unavailable { status: None })
                {
                    let user = jid.to_bare();
                    if self.serves(&user) {
                        self.hub.notify(user, Cause::Session);
                    }
                }
            }
        } else {
            self.unconfirmed.clear();
        }
        self.observed.set_complete(tells_all);
        info!(
            server = %Escaped(&name),
            presence_granted = self.presence_granted,
            complete = tells_all,
            "observed sessions synchronised"
        );
    }

    /// A session list from ejabberd's admin API: reconcile the observed sessions of served users
    /// with it. What changed after the request was sent is newer than the list and kept.
    pub(super) fn on_polled(&mut self, p: Polled) {
        let sessions = match p.result {
            Ok(s) => s,
            Err(e) => {
                // Once per outage, not once per poll.
                if self.api_ok || !self.api_warned {
                    self.api_warned = true;
                    warn!(error = %Escaped(&e), "ejabberd's admin API did not list the sessions; observed sessions are incomplete until it does");
                }
                self.api_ok = false;
                self.observed.set_complete(false);
                return;
            }
        };
        if !self.synced {
            return; // the next poll after the link is up counts
        }
        let observed = &self.observed;
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
            self.hub.notify(user, Cause::Session);
        }
        if !self.api_ok {
            info!("observed sessions complete: ejabberd's admin API listed them");
        }
        self.api_ok = true;
        self.api_warned = false;
        observed.set_complete(true);
    }
}
