//! The one supervised component connection (XEP-0114).
//!
//! [`spawn`] starts a task that connects, performs the handshake, then pumps stanzas both ways:
//! inbound ones become [`LinkEvent::Stanza`], outbound ones come from the [`LinkHandle`] (stanzas
//! through tokio-xmpp's writer; pre-rendered presence batches straight to the socket once that
//! writer is flushed, so everything goes out in the order it was queued). Silence
//! longer than the keepalive interval makes it ping the server; no answer within the response
//! timeout counts as a dead link. Every failure is classified ([`LinkError`]), logged with the
//! server's own text and the fix where we know it, and followed by a reconnect after a jittered,
//! capped exponential backoff (reset after a healthy period). After every successful handshake it
//! announces [`LinkEvent::Up`], and the delivery backend replays what is held.
//!
//! A server that stops reading (frozen, overloaded, a dead peer behind a live socket) is noticed
//! while updates flow too: every write must be taken by the socket within the write timeout, else
//! the link counts as dead and is reconnected (a blocked write would otherwise stall the link,
//! the keepalive and everything queued behind it). The task takes at most [`MAX_TURN`] queued
//! commands before it reads again, so inbound stanzas and the keepalive are served under load.

use std::io;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use jid::{BareJid, Jid};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{timeout, Instant};
use tokio_xmpp::xmlstream::{
    initiate_stream, FallibleStreamElement, ReadError, StreamHeader, Timeouts, XmppStream,
    XmppStreamElement,
};
use tracing::{debug, error, info, trace, warn};
use xmpp_parsers::component::Handshake;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stream_error::StreamError;

use super::stanzas::{self, Outbound, PresenceBatch};
use crate::base::clock::now_ms;
use crate::base::health::{Failure, Health};
use crate::base::secret::Secret;
use crate::metrics::Metrics;

/// Rendered presences gathered beyond this many bytes are written at once (see `write_text`),
/// the threshold tokio-xmpp's own writer uses: the server gets a burst as it is produced rather
/// than in large pieces later (BENCHMARKS.md, fan-out).
const TEXT_HIGH_WATER: usize = 2048;
/// The write buffer is given back when a large batch (a replay, a user with many contacts) made
/// it grow beyond this.
const TEXT_KEEP: usize = 256 * 1024;
/// How long a TCP connect plus stream header exchange plus handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First reconnect delay.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// A session that lasted this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// Most queued commands written in one turn before the task reads from the server again.
const MAX_TURN: usize = 256;
/// Id prefix of our keepalive pings, so their answers are not passed on.
const PING_PREFIX: &str = "extpresence-ping-";

/// What the link needs to know.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// The component's JID.
    pub component: BareJid,
    /// `host:port` of the component listener, resolved at every connect.
    pub server: String,
    /// Shared secret for the handshake.
    pub secret: Secret,
    /// Silence before a keepalive ping.
    pub keepalive: Duration,
    /// Longest time a write may wait for the server to take data before the link counts as dead.
    pub write_timeout: Duration,
    /// Cap of the reconnect backoff.
    pub reconnect_max: Duration,
    /// Where keepalive pings go (a served domain: the server answers them).
    pub ping_to: Jid,
    /// Stanza and reconnect counters.
    pub metrics: std::sync::Arc<Metrics>,
    /// Where the link's state, last failure and next attempt are reported.
    pub health: Health,
}

/// What the link reports to the delivery backend.
#[derive(Debug)]
pub enum LinkEvent {
    /// The handshake succeeded; stanzas can flow.
    Up,
    /// The connection is gone; a reconnect is under way.
    Down,
    /// A stanza from the server.
    Stanza(Box<Stanza>),
}

/// Whether the link is established (for readiness and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Connecting or waiting to reconnect.
    Down,
    /// Handshake done.
    Up,
}

/// Why a connection attempt or session ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// TCP connect or name resolution failed.
    #[error("cannot connect to {server}: {source}")]
    Connect {
        /// The configured server.
        server: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The server refused our handshake.
    #[error("the server refused the component handshake: {0}")]
    Auth(String),
    /// The server sent a stream error.
    #[error("stream error from server: {condition}{text}")]
    Stream {
        /// The defined condition, e.g. `invalid-from`.
        condition: String,
        /// The server's text, formatted as ` ("…")` or empty.
        text: String,
    },
    /// Nothing arrived in time (connect, handshake or keepalive).
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The server took no data for the write timeout (frozen or overloaded).
    #[error("the server accepted no data for {0:?} (frozen or overloaded?); reconnecting")]
    Stalled(Duration),
    /// The server closed the stream or the connection.
    #[error("connection closed by the server: {0}")]
    Closed(String),
    /// The port answered with a stream of another kind: a client (c2s) or server (s2s)
    /// listener, or no XMPP at all.
    #[error("{server} is not a component port: {what}")]
    WrongPort {
        /// The configured server.
        server: String,
        /// What answered (e.g. "it answered as a client (c2s) listener: jabber:client").
        what: String,
    },
    /// We closed the connection on purpose to connect again (e.g. to be granted privileges
    /// fixed in the server's config: servers grant them at connect).
    #[error("reconnecting on purpose: {0}")]
    Restart(String),
    /// Any other I/O failure.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

impl LinkError {
    /// The `result` label of `extpresence_link_attempts_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            LinkError::Connect { .. } => "connect",
            LinkError::WrongPort { .. } => "wrong_port",
            LinkError::Auth(_) => "auth",
            LinkError::Stream { .. } => "stream_error",
            LinkError::Timeout(_) | LinkError::Stalled(_) => "timeout",
            LinkError::Closed(_) | LinkError::Restart(_) => "closed",
            LinkError::Io(_) => "io",
        }
    }

    /// The fix for this error, where we know it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            LinkError::Auth(_) => Some(
                "wrong component secret: [xmpp] secret must equal the component_secret of the \
                 Component (Prosody), the password of the ejabberd_service host (ejabberd) or the \
                 secret of the component's externalComponentItems line (Tigase)",
            ),
            LinkError::Stream { condition, .. } => match condition.as_str() {
                "invalid-from" => Some(
                    "the server does not let the component send as users: set \
                     validate_from_addresses = false on the Component (Prosody) or \
                     check_from: false on the ejabberd_service listener (ejabberd)",
                ),
                "not-authorized" => Some(
                    "wrong component secret: [xmpp] secret must equal the component_secret \
                     (Prosody) or the ejabberd_service password (ejabberd)",
                ),
                "host-unknown" => Some(
                    "the server has no component by this name: [xmpp] component must match a \
                     Component block (Prosody) or an ejabberd_service host (ejabberd)",
                ),
                "conflict" => Some(
                    "another connection already uses this component name (a second extpresence?)",
                ),
                "system-shutdown" => Some(
                    "the XMPP server is shutting down or restarting; extpresence reconnects by \
                     itself when it is back",
                ),
                "improper-addressing" => {
                    Some("a stanza without 'to' was sent (a bug: please report it)")
                }
                _ => None,
            },
            LinkError::Connect { .. } => Some(
                "is the server's component listener running on [xmpp] server (Prosody: \
                 component_ports, ejabberd: ejabberd_service, Tigase: the port of the \
                 externalComponentItems line)?",
            ),
            LinkError::WrongPort { .. } => Some(
                "[xmpp] server must name the server's component port (XEP-0114), not the client \
                 port 5222 or the server-to-server port 5269: Prosody component_ports (5347 by \
                 default), ejabberd the ejabberd_service listener, Tigase the port of the \
                 externalComponentItems line",
            ),
            LinkError::Closed(_) => Some(
                "the XMPP server went away (stopped, restarted, crashed, or a proxy closed the \
                 connection); extpresence reconnects by itself: if it stays down, check the \
                 server (systemctl status prosody / ejabberd) and its log",
            ),
            LinkError::Timeout(_) | LinkError::Stalled(_) => Some(
                "the server is not answering: is it overloaded or frozen, or is a firewall \
                 dropping packets on the way to [xmpp] server?",
            ),
            _ => None,
        }
    }
}

enum Command {
    Send(Outbound),
    SendBatch(PresenceBatch),
    Close(oneshot::Sender<()>),
    Restart(String),
}

/// Handle to the link task: send stanzas, close the stream.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<LinkState>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Send(o) => write!(f, "Send({})", stanzas::to_xml(o.stanza())),
            Command::SendBatch(b) => write!(f, "SendBatch({} presences)", b.len()),
            Command::Close(_) => f.write_str("Close"),
            Command::Restart(why) => write!(f, "Restart({why})"),
        }
    }
}

impl LinkHandle {
    /// Queue a stanza. Stanzas queued while the link is down are dropped: the delivery backend
    /// replays everything held after the next [`LinkEvent::Up`].
    pub async fn send(&self, stanza: Outbound) {
        // Fails only when the link task is gone (shutdown): nothing left to do with the stanza.
        let _ = self.commands.send(Command::Send(stanza)).await;
    }

    /// Queue presences rendered as text (a fan-out), written in one piece, in order with the
    /// stanzas queued around them; dropped like them while the link is down.
    pub async fn send_batch(&self, batch: PresenceBatch) {
        if !batch.is_empty() {
            let _ = self.commands.send(Command::SendBatch(batch)).await;
        }
    }

    /// Send the stream footer and stop the link task; returns when done.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Close the stream and connect again at once (nothing else changes: no `unavailable` is
    /// sent, what is held is replayed after the handshake). Ignored while the link is down.
    pub async fn restart(&self, why: String) {
        let _ = self.commands.send(Command::Restart(why)).await;
    }

    /// The current link state.
    pub fn state(&self) -> LinkState {
        *self.state.borrow()
    }

    /// A receiver of link state changes.
    pub fn watch_state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }
}

/// Start the link task. Events go to `events`.
pub fn spawn(
    cfg: LinkConfig,
    events: mpsc::UnboundedSender<LinkEvent>,
) -> (LinkHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4096);
    let (state_tx, state_rx) = watch::channel(LinkState::Down);
    let task = tokio::spawn(supervise(cfg, rx, events, state_tx));
    (
        LinkHandle {
            commands: tx,
            state: state_rx,
        },
        task,
    )
}

/// The component stream.
pub type Stream = XmppStream<BufStream<TcpStream>>;

fn timeouts(cfg: &LinkConfig) -> Timeouts {
    Timeouts {
        read_timeout: cfg.keepalive,
        response_timeout: cfg
            .keepalive
            .clamp(Duration::from_secs(2), Duration::from_secs(30)),
    }
}

/// Resolve `server` (a host name or an IP, with port) and connect to the first address that
/// accepts, in the resolver's order (e.g. `localhost` may yield ::1 before 127.0.0.1).
async fn connect_tcp(server: &str) -> Result<TcpStream, LinkError> {
    let connect_err = |source| LinkError::Connect {
        server: server.to_string(),
        source,
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
    for addr in tokio::net::lookup_host(server).await.map_err(connect_err)? {
        match TcpStream::connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = e,
        }
    }
    Err(connect_err(last))
}

fn stream_error(e: &StreamError) -> LinkError {
    let condition = e.condition.to_string();
    let text = e
        .texts
        .values()
        .next()
        .map(|t| format!(" ({t:?})"))
        .unwrap_or_default();
    LinkError::Stream { condition, text }
}

/// Connect, exchange stream headers and perform the XEP-0114 handshake.
pub async fn connect(cfg: &LinkConfig) -> Result<Stream, LinkError> {
    let tcp = connect_tcp(&cfg.server).await?;
    tcp.set_nodelay(true)?;
    let mut pending = initiate_stream(
        BufStream::new(tcp),
        xmpp_parsers::ns::COMPONENT,
        StreamHeader {
            to: Some(cfg.component.as_str().to_string().into()),
            from: None,
            id: None,
        },
        timeouts(cfg),
    )
    .await?;
    let header = pending.take_header();
    let mut stream: Stream = pending.skip_features();
    let Some(id) = header.id else {
        // Usually followed by a stream error (e.g. host-unknown); read it for a better message.
        return Err(read_error_after_refusal(&mut stream, "no stream id").await);
    };
    // Written to the socket directly, not through tokio-xmpp's writer, which logs everything it
    // sends at TRACE: the digest next to the stream id is an offline guessing aid for the secret.
    let digest = Handshake::from_stream_id_and_password(id.into_owned(), cfg.secret.expose())
        .data
        .expect("a digest");
    let mut handshake = Vec::with_capacity(64);
    handshake.extend_from_slice(b"<handshake>");
    for byte in digest {
        handshake.extend_from_slice(format!("{byte:02x}").as_bytes());
    }
    handshake.extend_from_slice(b"</handshake>");
    write_text(&mut stream, &mut handshake).await?;
    loop {
        match stream.next().await {
            Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::ComponentHandshake(_)))) => {
                return Ok(stream)
            }
            Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::StreamError(e)))) => {
                let err = stream_error(&e.0);
                return Err(match err {
                    LinkError::Stream { condition, text } if condition == "not-authorized" => {
                        LinkError::Auth(format!("{condition}{text}"))
                    }
                    other => other,
                });
            }
            Some(Ok(other)) => {
                debug!(?other, "unexpected element during handshake");
            }
            Some(Err(ReadError::SoftTimeout)) => return Err(LinkError::Timeout("handshake")),
            Some(Err(ReadError::ParseError(e))) => {
                debug!(%e, "unparseable element during handshake")
            }
            Some(Err(ReadError::HardError(e))) => return Err(e.into()),
            Some(Err(ReadError::StreamFooterReceived)) | None => {
                return Err(LinkError::Auth(
                    "the server closed the stream after our handshake".into(),
                ))
            }
        }
    }
}

async fn read_error_after_refusal(stream: &mut Stream, what: &str) -> LinkError {
    let wait = timeout(Duration::from_secs(2), async {
        while let Some(item) = stream.next().await {
            if let Ok(FallibleStreamElement::Ok(XmppStreamElement::StreamError(e))) = item {
                return Some(stream_error(&e.0));
            }
            if matches!(
                item,
                Err(ReadError::HardError(_) | ReadError::StreamFooterReceived)
            ) {
                return None;
            }
        }
        None
    });
    match wait.await {
        Ok(Some(e)) => e,
        _ => LinkError::Closed(what.to_string()),
    }
}

fn jittered(delay: Duration) -> Duration {
    let ms = delay.as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

fn log_failure(err: &LinkError, attempt: u32, retry_in: Duration) {
    let hint = err.hint().unwrap_or("");
    if let LinkError::Restart(why) = err {
        info!(%why, ?retry_in, "XMPP component link closed to connect again");
    } else if attempt <= 1 || matches!(err, LinkError::Auth(_) | LinkError::Stream { .. }) {
        error!(error = %err, hint, ?retry_in, attempt, "XMPP component link failed");
    } else {
        warn!(error = %err, hint, ?retry_in, attempt, "XMPP component link still down");
    }
}

async fn supervise(
    cfg: LinkConfig,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::UnboundedSender<LinkEvent>,
    state: watch::Sender<LinkState>,
) {
    let mut attempt: u32 = 0;
    let mut connected_before = false;
    loop {
        attempt += 1;
        cfg.health.link_attempt();
        let connected = tokio::select! {
            r = timeout(CONNECT_TIMEOUT, connect(&cfg)) => r.unwrap_or(Err(LinkError::Timeout("connect"))),
            done = wait_close(&mut commands) => { let _ = done.send(()); return; }
        };
        let connected = match connected {
            Err(e) => tokio::select! {
                e = diagnose(&cfg, e) => Err(e),
                done = wait_close(&mut commands) => { let _ = done.send(()); return; }
            },
            ok => ok,
        };
        let err = match connected {
            Ok(stream) => {
                info!(server = %cfg.server, component = %cfg.component, "XMPP component link up");
                cfg.metrics.link_attempt("ok");
                if connected_before {
                    Metrics::inc(&cfg.metrics.reconnects);
                }
                connected_before = true;
                cfg.health.link_up();
                let _ = state.send(LinkState::Up);
                let _ = events.send(LinkEvent::Up);
                let started = Instant::now();
                let outcome = session(&cfg, stream, &mut commands, &events).await;
                let _ = state.send(LinkState::Down);
                let _ = events.send(LinkEvent::Down);
                match outcome {
                    SessionEnd::Closed(done) => {
                        info!("XMPP component link closed");
                        cfg.health.link_down(None, None);
                        let _ = done.send(());
                        return;
                    }
                    SessionEnd::Failed(e) => {
                        if started.elapsed() >= HEALTHY_AFTER || matches!(e, LinkError::Restart(_))
                        {
                            attempt = 1;
                        }
                        e
                    }
                }
            }
            Err(e) => {
                cfg.metrics.link_attempt(e.kind());
                e
            }
        };
        let exp = BACKOFF_BASE.saturating_mul(1u32 << (attempt - 1).min(16));
        let delay = jittered(exp.min(cfg.reconnect_max));
        log_failure(&err, attempt, delay);
        let failure = (!matches!(err, LinkError::Restart(_))).then(|| Failure {
            at_ms: now_ms(),
            error: err.to_string(),
            hint: err.hint().unwrap_or("").to_string(),
        });
        cfg.health
            .link_down(failure, Some(now_ms() + delay.as_millis() as u64));
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        tokio::select! {
            _ = &mut sleep => {}
            woken = wait_down(&mut commands) => match woken {
                Woken::Close(done) => { let _ = done.send(()); return; }
                Woken::Restart => {
                    info!("connecting again now (asked), not after the backoff");
                    attempt = 0;
                }
            }
        }
    }
}

/// A failed attempt's error, made more precise where we can: a refused or odd stream from a
/// port of another kind (c2s, s2s, not XMPP) becomes [`LinkError::WrongPort`].
pub async fn diagnose(cfg: &LinkConfig, e: LinkError) -> LinkError {
    if !before_handshake(&e) {
        return e;
    }
    match probe_port(cfg).await {
        Some(what) => LinkError::WrongPort {
            server: cfg.server.clone(),
            what,
        },
        None => e,
    }
}

/// Whether `e` ended an attempt before the handshake in a way a port of another kind would
/// (a refused stream, a closed connection, something that is not XMPP).
fn before_handshake(e: &LinkError) -> bool {
    matches!(
        e,
        LinkError::Stream { .. } | LinkError::Closed(_) | LinkError::Io(_) | LinkError::Timeout(_)
    )
}

/// After a failed attempt: connect once more and look at what the port answers to a component
/// stream header. `Some(what)` when it is not a component listener: a client (c2s) or server
/// (s2s) listener (their stream's namespace), or no XMPP at all. Bounded (2 s); only on failures.
async fn probe_port(cfg: &LinkConfig) -> Option<String> {
    let probe = async {
        let mut tcp = connect_tcp(&cfg.server).await.ok()?;
        let header = format!(
            "<?xml version='1.0'?><stream:stream xmlns='{}' \
             xmlns:stream='http://etherx.jabber.org/streams' to='{}'>",
            xmpp_parsers::ns::COMPONENT,
            cfg.component
        );
        tcp.write_all(header.as_bytes()).await.ok()?;
        let mut seen = Vec::with_capacity(1024);
        let mut buf = [0u8; 512];
        while seen.len() < 1024 {
            let n = tcp.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if stream_kind(&seen).is_some() {
                break;
            }
        }
        Some(seen)
    };
    let seen = timeout(Duration::from_secs(2), probe).await.ok()??;
    match stream_kind(&seen) {
        Some(ns) if ns == xmpp_parsers::ns::COMPONENT => None,
        Some(ns) if ns == "jabber:client" => Some(format!(
            "it answered as a client (c2s) listener (stream namespace {ns})"
        )),
        Some(ns) if ns == "jabber:server" => Some(format!(
            "it answered as a server-to-server (s2s) listener (stream namespace {ns})"
        )),
        Some(ns) => Some(format!("it answered with a stream in namespace {ns:?}")),
        None if seen.is_empty() => None,
        None => Some(format!(
            "it did not answer with an XMPP stream (it sent {:?})",
            crate::base::escape::Escaped(&String::from_utf8_lossy(&seen[..seen.len().min(40)]))
                .to_string()
        )),
    }
}

/// The default namespace of the stream header in `seen` (the server's first bytes), once the
/// header's start tag is complete.
fn stream_kind(seen: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(seen).ok()?;
    let start = text.find("<stream:stream")?;
    let tag = &text[start..start + text[start..].find('>')?];
    let at = tag.find("xmlns=")? + "xmlns=".len();
    let quote = tag[at..].chars().next()?;
    let rest = &tag[at + 1..];
    Some(rest[..rest.find(quote)?].to_string())
}

/// While the link is down: drop queued stanzas (they are replayed after reconnect) until a
/// close request arrives. Never returns otherwise.
async fn wait_close(commands: &mut mpsc::Receiver<Command>) -> oneshot::Sender<()> {
    loop {
        match wait_down(commands).await {
            Woken::Close(done) => return done,
            Woken::Restart => {} // connecting already
        }
    }
}

/// What ends a wait while the link is down.
enum Woken {
    /// Stop the link.
    Close(oneshot::Sender<()>),
    /// Connect again now (SIGHUP), not after the backoff.
    Restart,
}

/// While the link is down: drop queued stanzas (they are replayed after reconnect) until a
/// close or a restart request arrives.
async fn wait_down(commands: &mut mpsc::Receiver<Command>) -> Woken {
    loop {
        match commands.recv().await {
            Some(Command::Send(o)) => {
                trace!(stanza = %stanzas::to_xml(o.stanza()), "link down: dropped")
            }
            Some(Command::SendBatch(b)) => trace!(xml = b.xml(), "link down: dropped"),
            Some(Command::Restart(_)) => return Woken::Restart,
            Some(Command::Close(done)) => return Woken::Close(done),
            None => {
                // Every handle is gone: treat as a close request with nobody waiting.
                let (tx, _rx) = oneshot::channel();
                return Woken::Close(tx);
            }
        }
    }
}

enum SessionEnd {
    Closed(oneshot::Sender<()>),
    Failed(LinkError),
}

async fn write(stream: &mut Stream, stanza: Outbound, metrics: &Metrics) -> Result<(), io::Error> {
    let stanza = stanza.into_stanza();
    Metrics::inc(&metrics.stanzas_sent);
    trace!(stanza = %stanzas::to_xml(&stanza), "send");
    stream.feed(&XmppStreamElement::Stanza(stanza)).await
}

async fn flush(stream: &mut Stream) -> Result<(), io::Error> {
    SinkExt::<&XmppStreamElement>::flush(stream).await
}

/// Write `text` (whole stanzas) to the socket after everything fed to the XML stream so far, then
/// clear it. tokio-xmpp has no way to send pre-rendered XML, so it goes to the TCP stream under
/// the XML stream, which is flushed first (all its bytes are on the socket then) so the order of
/// what we queued is kept.
async fn write_text(stream: &mut Stream, text: &mut Vec<u8>) -> Result<(), io::Error> {
    flush(stream).await?;
    let tcp = stream.get_stream().get_ref();
    let mut rest = &text[..];
    while !rest.is_empty() {
        tcp.writable().await?;
        match tcp.try_write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    text.clear();
    if text.capacity() > TEXT_KEEP {
        text.shrink_to(TEXT_HIGH_WATER);
    }
    Ok(())
}

/// Run one write within the write timeout.
async fn within<F>(cfg: &LinkConfig, write: F) -> Result<(), LinkError>
where
    F: std::future::Future<Output = Result<(), io::Error>>,
{
    match timeout(cfg.write_timeout, write).await {
        Ok(r) => r.map_err(LinkError::from),
        Err(_) => Err(LinkError::Stalled(cfg.write_timeout)),
    }
}

async fn session(
    cfg: &LinkConfig,
    mut stream: Stream,
    commands: &mut mpsc::Receiver<Command>,
    events: &mpsc::UnboundedSender<LinkEvent>,
) -> SessionEnd {
    let mut ping_seq: u64 = 0;
    // Rendered presences waiting to be written (see `write_text`); reused across batches.
    let mut text: Vec<u8> = Vec::new();
    loop {
        tokio::select! {
            cmd = commands.recv() => {
                let mut cmd = cmd;
                // Write what is queued (at most MAX_TURN commands), then flush once. Rendered
                // presences are gathered in `text` and written before the next stanza (and at
                // the end), keeping the order. Every write has the write timeout.
                let mut turn = 0;
                loop {
                    turn += 1;
                    let written = match cmd {
                        Some(Command::Send(o)) => {
                            let pending = if text.is_empty() {
                                Ok(())
                            } else {
                                within(cfg, write_text(&mut stream, &mut text)).await
                            };
                            match pending {
                                Ok(()) => within(cfg, write(&mut stream, o, &cfg.metrics)).await,
                                e => e,
                            }
                        }
                        Some(Command::SendBatch(b)) => {
                            Metrics::add(&cfg.metrics.stanzas_sent, b.len() as u64);
                            trace!(xml = b.xml(), "send");
                            text.extend_from_slice(b.xml().as_bytes());
                            if text.len() >= TEXT_HIGH_WATER {
                                within(cfg, write_text(&mut stream, &mut text)).await
                            } else {
                                Ok(())
                            }
                        }
                        Some(Command::Close(done)) => {
                            let _ = within(cfg, write_text(&mut stream, &mut text)).await;
                            close_stream(&mut stream).await;
                            return SessionEnd::Closed(done);
                        }
                        Some(Command::Restart(why)) => {
                            let _ = within(cfg, write_text(&mut stream, &mut text)).await;
                            close_stream(&mut stream).await;
                            return SessionEnd::Failed(LinkError::Restart(why));
                        }
                        None => {
                            let _ = within(cfg, write_text(&mut stream, &mut text)).await;
                            close_stream(&mut stream).await;
                            let (tx, _rx) = oneshot::channel();
                            return SessionEnd::Closed(tx);
                        }
                    };
                    if let Err(e) = written {
                        return SessionEnd::Failed(e);
                    }
                    if turn >= MAX_TURN {
                        break;
                    }
                    match commands.try_recv() {
                        Ok(next) => cmd = Some(next),
                        Err(_) => break,
                    }
                }
                let flushed = if text.is_empty() {
                    within(cfg, flush(&mut stream)).await
                } else {
                    within(cfg, write_text(&mut stream, &mut text)).await
                };
                if let Err(e) = flushed {
                    return SessionEnd::Failed(e);
                }
            }
            item = stream.next() => match item {
                Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Stanza(stanza)))) => {
                    trace!(stanza = %stanzas::to_xml(&stanza), "recv");
                    Metrics::inc(&cfg.metrics.stanzas_received);
                    if let Stanza::Iq(Iq::Result { id, .. } | Iq::Error { id, .. }) = &stanza {
                        if id.starts_with(PING_PREFIX) {
                            continue;
                        }
                    }
                    let _ = events.send(LinkEvent::Stanza(Box::new(stanza)));
                }
                Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::StreamError(e)))) => {
                    return SessionEnd::Failed(stream_error(&e.0));
                }
                Some(Ok(FallibleStreamElement::Ok(other))) => debug!(?other, "ignored stream element"),
                Some(Ok(FallibleStreamElement::Err(e))) => warn!(error = %e, "ignored an invalid stanza from the server"),
                Some(Err(ReadError::SoftTimeout)) => {
                    ping_seq += 1;
                    let ping = stanzas::ping(&cfg.component, cfg.ping_to.clone(), format!("{PING_PREFIX}{ping_seq}"));
                    debug!("link idle: sending keepalive ping");
                    let sent = within(cfg, async {
                        write(&mut stream, ping, &cfg.metrics).await?;
                        flush(&mut stream).await
                    })
                    .await;
                    if let Err(e) = sent {
                        return SessionEnd::Failed(e);
                    }
                }
                Some(Err(ReadError::ParseError(e))) => warn!(error = %e, "ignored an unparseable element from the server"),
                Some(Err(ReadError::HardError(e))) if e.kind() == io::ErrorKind::TimedOut => {
                    return SessionEnd::Failed(LinkError::Timeout("no answer to keepalive ping"));
                }
                Some(Err(ReadError::HardError(e))) => return SessionEnd::Failed(hard_error(e)),
                Some(Err(ReadError::StreamFooterReceived)) => return SessionEnd::Failed(LinkError::Closed("it closed the stream".into())),
                None => return SessionEnd::Failed(LinkError::Closed("it closed the connection".into())),
            }
        }
    }
}

/// An I/O error while reading: the end of the connection in the middle of the stream (e.g. a
/// server that stops without closing its stream: "invalid eof") is the server going away.
fn hard_error(e: io::Error) -> LinkError {
    let text = e.to_string();
    if e.kind() == io::ErrorKind::UnexpectedEof
        || e.kind() == io::ErrorKind::ConnectionReset
        || text.contains("eof")
    {
        LinkError::Closed(format!(
            "it closed the connection without closing the stream ({text})"
        ))
    } else {
        LinkError::Io(e)
    }
}

/// Send the stream's end and wait (bounded) for the server's.
pub async fn close_stream(stream: &mut Stream) {
    let _ = timeout(Duration::from_secs(2), async {
        flush(stream).await?;
        if stream.shutdown().await.is_ok() {
            // Wait for the server's footer so everything we sent is processed.
            while let Some(item) = stream.next().await {
                if matches!(
                    item,
                    Err(ReadError::StreamFooterReceived | ReadError::HardError(_))
                ) {
                    break;
                }
            }
        }
        Ok::<(), io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_kind_reads_the_default_namespace() {
        let c2s = b"<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' from='x' id='1'><stream:error>";
        assert_eq!(stream_kind(c2s).as_deref(), Some("jabber:client"));
        let s2s = b"<stream:stream\n xmlns=\"jabber:server\" xmlns:stream=\"http://etherx.jabber.org/streams\">";
        assert_eq!(stream_kind(s2s).as_deref(), Some("jabber:server"));
        assert_eq!(stream_kind(b"<stream:stream xmlns='jabber:cli"), None);
        assert_eq!(stream_kind(b"HTTP/1.1 400 Bad Request\r\n"), None);
    }

    #[test]
    fn every_failure_has_a_result_label_and_the_likely_ones_a_hint() {
        let eof = hard_error(io::Error::new(
            io::ErrorKind::InvalidData,
            "invalid eof in text node",
        ));
        assert!(matches!(eof, LinkError::Closed(_)), "{eof:?}");
        assert_eq!(eof.kind(), "closed");
        assert!(eof.hint().unwrap().contains("went away"));
        let wrong = LinkError::WrongPort {
            server: "localhost:5222".into(),
            what: "c2s".into(),
        };
        assert_eq!(wrong.kind(), "wrong_port");
        assert!(wrong.hint().unwrap().contains("component_ports"));
    }
}
