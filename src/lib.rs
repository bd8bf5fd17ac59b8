//! extpresence: set and read the presence of XMPP users over HTTP.
//!
//! An external system says "alice@example.com is away: On the phone" over HTTP; extpresence holds
//! that status and, connected to the XMPP server as a XEP-0114 component, makes alice's contacts
//! see a synthetic resource (`alice@example.com/tigase-external`) with that show and status.
//!
//! # Layout
//! ```text
//! HTTP request ─► http/      listener.rs (accept loop: header/idle timeout, connection cap,
//!                            write stall), router.rs (the top: every route, the fallback, the
//!                            layers), pipeline.rs (what every request of every dialect goes
//!                            through: dialect, span, requests/refusals/latency recorded in one
//!                            place, the refusal log; may_read, require_json, others),
//!                            state.rs (AppState), auth.rs (credential → grant, rate limit),
//!                            input.rs (JIDs, domains, bodies), error.rs (ApiError → answer;
//!                            Refusal), log.rs (escaped, rate-limited), ops.rs (/healthz,
//!                            /readyz, /metrics), readiness.rs (the report behind /readyz,
//!                            the page and `extpresence status`; writes held say "pending"),
//!                            sse.rs (the event stream over HTTP, for v1/
//!                            and ui/), openapi.rs (the document of v1/ and tigase/); the
//!                            dialects, which only translate and import no other dialect:
//!                            tigase/ (mod.rs: its order of steps, command.rs: its wire format),
//!                            v1/ (status.rs, read.rs, tokens.rs, common.rs), matrix.rs, waher/
//!                            (the Agent API calls; xml_json.rs: stanzas as JSON), ui/ (the
//!                            live status page: sign-in cookie, its JSON, assets)
//!              ─► access/    who may do what: Grant (scope, access), tokens.rs (per-user
//!                            tokens, hashed in the store), limits.rs (token buckets;
//!                            failed authentications per client address)
//!              ─► agent/     acting in a user's name: probes answered from observe/,
//!                            subscription requests held in the store, sent through the
//!                            backend (Exchange), the user's roster side completed
//!              ─► status/    StatusTable (table.rs: the handle, loading, applying an edit;
//!                            held.rs: sources per resource, effective presence; commit.rs:
//!                            commit order through the store; expiry.rs: heap + task;
//!                            lanes.rs: change lanes, delivery marks, roster cache)
//!              ─► store/     the durable copy (redb, format 2 + upgrade; side tables: tokens,
//!                            subscriptions); reloaded at start; writer.rs: the one group-commit
//!                            writer (also the webhook outbox's), reopened after a failed commit
//!              ─► delivery/  fanout/: rosters via XEP-0356, one directed presence per contact
//!                            (mod.rs the task's loop; inbound.rs, deliver.rs, rosters.rs,
//!                            exchanges.rs, reconcile.rs: routing, delivery, roster cache, the
//!                            agent's exchanges, observed sessions + ejabberd's admin API);
//!                            tigase.rs: Tigase holds a session per resource (USER_STATUS), and
//!                            its answer is the HTTP answer (mod.rs: Delivery::confirm)
//!              ─► xmpp/      link.rs: the supervised component connection (failures classified,
//!                            counted, hinted; the wrong port named); stanzas.rs: build/parse;
//!                            check.rs: one test connection (`check-config --connect`)
//! inbound stanzas ◄─ xmpp/link.rs ─► the backend: delivery/fanout/ (roster results, contact
//!                                    presence, the agent's iq answers, iqs) or delivery/tigase.rs
//!                                    (command answers, CHECK_USER_CONNECTION, iqs)
//! read side:   observe/   the sessions the server announces, with each one's latest presence
//!                         (fed by fanout/; ejabberd_api.rs polls ejabberd's admin API when
//!                         configured, and writes roster items for agent/) and the aggregated
//!                         presence
//!              events/    one event per change of a served user's presence (fed by the table's
//!                         commits and fanout/): numbered, buffered for resuming, fanned out
//!                         to SSE subscribers (http/sse.rs) and durable taps
//!              webhooks/  a tap: every event POSTed to the `[[webhooks]]` endpoints, signed
//!                         (Standard Webhooks), at least once and in order, from a durable
//!                         outbox beside the store (outbox.rs, sender.rs, sign.rs)
//! ground floor: base/     helpers every layer may use, importing nothing of ours: clock.rs
//!                         (now_ms, rfc3339), config_error.rs (ConfigError, read_secret_file),
//!                         domain.rs (normalize_domain), escape.rs (Escaped: outside text as
//!                         logged), health.rs (what delivery depends on: the link, each
//!                         served domain's privileges, as reported), exposition.rs (scrape-time values as Prometheus
//!                         series), secret.rs (Secret, MASKED)
//!              model/     the model, importing only base/: Status, Show, Word, Source,
//!                         StatusPolicy and their validation; observed.rs: what the server
//!                         announces (Announced: a session's presence; RosterItem)
//! config/: mod.rs assembles Settings from the sections, one file each validating its section
//! into its module's type (xmpp, status, http, ui, tigase, store, ejabberd, log, agent, matrix;
//! [[webhooks]] in webhooks/); load.rs reads the file strictly, then the environment overrides,
//! naming the file line or the variable at fault. metrics/: every /metrics series in one prometheus-client
//! Registry (mod.rs; histogram.rs: the lock-free latency histogram; process.rs: process_*).
//! sdnotify.rs: systemd READY/STOPPING. main.rs: command line (daemon, check-config, the client
//! commands), tracing (text or JSON), signals. man.rs: the man page, from main.rs's clap
//! definitions and its written sections. cli.rs: the client (`set`, `clear`, `get`,
//! `watch`, `token`) of a running extpresence over `/v1`.
//! ```
//! [`run`] wires these together on listeners bound by the caller (tests bind port 0).

pub mod access;
pub mod agent;
pub mod base;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod events;
pub mod http;
pub mod man;
pub mod metrics;
pub mod model;
pub mod observe;
pub mod sdnotify;
pub mod status;
pub mod store;
pub mod webhooks;
pub mod xmpp;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use agent::{Agent, AgentLink, AgentSettings};
use config::{BackendKind, OnShutdown, Settings};
use delivery::fanout::{self, Control, FanoutConfig};
use delivery::tigase::{self, TigaseConfig};
use delivery::Delivery;
use events::{Cause, EventHub};
use metrics::Metrics;
use observe::{Observed, Rosters};
use status::StatusTable;
use store::Store;

/// Longest wait for in-flight HTTP requests at shutdown.
const HTTP_DRAIN: Duration = Duration::from_secs(5);
/// Longest wait for the event hub to publish what the drained requests changed.
const EVENTS_DRAIN: Duration = Duration::from_secs(2);
/// A client that reads nothing of its response (or event stream) for this long is disconnected.
const HTTP_WRITE_STALL: Duration = Duration::from_secs(60);
/// Longest wait for the `unavailable` fan-out and the stream close at shutdown.
const XMPP_DRAIN: Duration = Duration::from_secs(5);
/// Longest wait for the webhook outbox's last commit at shutdown.
const WEBHOOKS_DRAIN: Duration = Duration::from_secs(5);

/// Run extpresence until `shutdown` is cancelled (each notification of `reconnect` connects the
/// component link again at once), then stop taking requests, send `unavailable`
/// for every held resource (unless `on_shutdown = "keep"`), close the XMPP stream and return.
///
/// The store is opened and reloaded first; an error there is returned before anything starts.
pub async fn run(
    settings: Settings,
    http: TcpListener,
    shutdown: CancellationToken,
    reconnect: Arc<tokio::sync::Notify>,
) -> std::io::Result<()> {
    let path = settings.store_path.clone();
    let (store, records) = tokio::task::spawn_blocking(move || Store::open(&path))
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)?;
    let tokens = Arc::new(access::tokens::Tokens::load(Some(store.clone())));
    let agent_store = store.clone();
    let (table, changes) = StatusTable::new(Some(store), records);
    let expiry = tokio::spawn(table.clone().run_expiry());
    // The read side: sessions the server announces, and one event per change of a served
    // user's presence (held statuses and sessions).
    let observed = Observed::new();
    let (hub, notifications) = EventHub::new();
    // Taken before anything can publish, so that the webhooks see every event.
    let webhook_events = hub.tap();
    table.set_observer({
        let hub = hub.clone();
        Box::new(move |user, expiry| {
            let cause = if expiry { Cause::Expiry } else { Cause::Status };
            hub.notify(user.clone(), cause);
        })
    });
    // Stopped after the HTTP drain (see below), not at the shutdown signal.
    let events_stop = CancellationToken::new();
    let events_task = tokio::spawn(hub.clone().run(
        notifications,
        table.clone(),
        observed.clone(),
        events_stop.clone(),
    ));
    let metrics = Arc::new(Metrics::default());
    // Webhooks: stopped after the hub's last events (below); a pending event waits in the
    // outbox for the next start.
    let webhooks_stop = CancellationToken::new();
    let webhooks_task = webhooks::start(
        settings.webhooks.clone(),
        &settings.store_path,
        webhook_events,
        &metrics.webhooks,
        webhooks_stop.clone(),
    )
    .await?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    // What delivery depends on: the link, and (fan-out) each served domain's privileges.
    let health = base::health::Health::new(
        settings.domains.iter().map(String::as_str),
        settings.backend == BackendKind::Fanout,
    );
    let (link, link_task) = xmpp::link::spawn(
        settings.link_config(metrics.clone(), health.clone()),
        events_tx,
    );
    let (control_tx, control_rx) = mpsc::channel(4);
    let (rosters, roster_queries) = Rosters::new();
    let (agent_link, exchanges, agent_ready) = AgentLink::new();
    let (delivery, rosters, agent_link, delivery_task) = match settings.backend {
        BackendKind::Fanout => (
            Delivery::Fanout,
            rosters,
            Some(agent_link),
            tokio::spawn(fanout::run(
                FanoutConfig {
                    component: settings.component.clone(),
                    metrics: metrics.clone(),
                    domain: settings.first_domain(),
                    domains: settings.domains.clone(),
                    observed: observed.clone(),
                    hub: hub.clone(),
                    api: settings.ejabberd_api.clone().map(|(url, every)| {
                        let (tx, rx) = mpsc::channel(2);
                        let now = Arc::new(tokio::sync::Notify::new());
                        tokio::spawn(observe::ejabberd_api::run(
                            url,
                            every,
                            now.clone(),
                            tx,
                            shutdown.clone(),
                        ));
                        (rx, now)
                    }),
                    agent: Some((exchanges, agent_ready)),
                    health: health.clone(),
                },
                table.clone(),
                changes,
                link.clone(),
                events_rx,
                control_rx,
                roster_queries,
            )),
        ),
        BackendKind::Tigase => {
            let handle = tigase::Handle::new(settings.tigase_timeout, &link);
            let task = tokio::spawn(tigase::run(
                TigaseConfig {
                    component: settings.component.clone(),
                    timeout: settings.tigase_timeout,
                    handle: handle.clone(),
                },
                table.clone(),
                changes,
                link.clone(),
                events_rx,
                control_rx,
            ));
            (Delivery::Tigase(handle), Rosters::unsupported(), None, task)
        }
    };
    // Acting in users' names: held subscription requests go out once the link is ready.
    let agent = Agent::new(
        settings.component.clone(),
        agent_link,
        rosters.clone(),
        observed.clone(),
        Some(agent_store),
        settings.domains.clone(),
        AgentSettings {
            watch: settings.agent_watch,
            ejabberd_api: settings.ejabberd_api.as_ref().map(|(url, _)| url.clone()),
        },
    );
    tokio::spawn(agent.clone().run(shutdown.clone()));

    let open_files = http::listener::open_file_limit();
    let limits = http::listener::HttpLimits {
        max_connections: http::listener::connection_cap(settings.max_connections, open_files),
        header_timeout: settings.header_timeout,
        write_stall: HTTP_WRITE_STALL,
    };
    if limits.max_connections < settings.max_connections {
        warn!(
            configured = settings.max_connections,
            cap = limits.max_connections,
            open_files = ?open_files,
            "[http] max_connections lowered to stay {} descriptors below the open-file limit; \
             raise LimitNOFILE= (systemd) or ulimit -n to allow more",
            http::listener::RESERVED_FDS
        );
    }
    let connections = Arc::new(http::listener::ConnStats::default());
    let requests = Arc::new(http::log::RequestLog::default());
    let ui = Arc::new(
        http::ui::UiState::new().with_settings(settings.public_origin.clone(), &settings.webhooks),
    );
    let state = Arc::new(http::AppState {
        table,
        observed,
        rosters,
        agent,
        hub: hub.clone(),
        policy: settings.policy.clone(),
        domains: settings.domains.clone(),
        keys: http::auth::ApiKeys::new(
            &settings.keys,
            tokens,
            Arc::new(access::limits::Limits::new(settings.limits)),
        )
        .with_trusted_proxies(&settings.trusted_proxies),
        delivery,
        metrics,
        link: link.clone(),
        health,
        server: settings.server.to_string(),
        component: settings.component.to_string(),
        connections: connections.clone(),
        max_connections: limits.max_connections,
        body_timeout: settings.body_timeout,
        requests: requests.clone(),
    });
    // The status page's rates and sparkline.
    tokio::spawn(http::ui::sample_rates(
        ui.clone(),
        state.clone(),
        shutdown.clone(),
    ));
    // The summary of a flood of refusals is written when its period is over, also if no request
    // comes after it.
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let mut tick = tokio::time::interval(http::log::PERIOD);
            while shutdown.run_until_cancelled(tick.tick()).await.is_some() {
                requests.flush();
            }
        }
    });
    // Asked to connect again (SIGHUP, see main.rs): servers grant XEP-0356 privileges at connect.
    tokio::spawn({
        let link = link.clone();
        let shutdown = shutdown.clone();
        async move {
            while shutdown
                .run_until_cancelled(reconnect.notified())
                .await
                .is_some()
            {
                link.restart("asked to connect again (SIGHUP)".into()).await;
            }
        }
    });
    let addr = http.local_addr()?;
    info!(%addr, max_connections = limits.max_connections, "HTTP API listening");
    sdnotify::notify("READY=1");
    let server_task = tokio::spawn(http::listener::serve(
        http,
        http::router(state, settings.matrix.clone(), ui),
        limits,
        connections,
        shutdown.clone(),
        HTTP_DRAIN,
    ));

    shutdown.cancelled().await;
    info!("shutting down: no new requests");
    sdnotify::notify("STOPPING=1");
    // Event streams never end by themselves: end them so that they do not hold the drain.
    hub.end_streams();
    // The listener drains in-flight requests itself, bounded by HTTP_DRAIN.
    if let Err(e) = server_task.await {
        warn!(error = %e, "the HTTP listener task failed");
    }
    // Every change the drained requests committed becomes an event before the taps close.
    events_stop.cancel();
    if tokio::time::timeout(EVENTS_DRAIN, events_task)
        .await
        .is_err()
    {
        warn!("the event hub did not finish in {EVENTS_DRAIN:?}");
    }
    // What the hub published last goes to the webhook outbox before the process ends.
    webhooks_stop.cancel();
    if tokio::time::timeout(WEBHOOKS_DRAIN, webhooks_task)
        .await
        .is_err()
    {
        warn!("the webhooks did not finish in {WEBHOOKS_DRAIN:?}");
    }

    let (done_tx, done_rx) = oneshot::channel();
    let on_shutdown = settings.on_shutdown;
    let drained = tokio::time::timeout(XMPP_DRAIN, async {
        if on_shutdown == OnShutdown::Unavailable
            && control_tx.send(Control::Shutdown(done_tx)).await.is_ok()
        {
            let _ = done_rx.await;
        }
        link.close().await;
    })
    .await;
    if drained.is_err() {
        warn!("XMPP shutdown did not finish in {XMPP_DRAIN:?}");
    }
    delivery_task.abort();
    link_task.abort();
    expiry.abort();
    info!("stopped");
    Ok(())
}
