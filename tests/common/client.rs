//! Real XMPP users for integration tests: a logged-in c2s client ([`TestClient`]) and helpers
//! that build rosters the way real clients do ([`subscribe_mutual`], [`subscribe_one_way`]).
//!
//! Why not `tokio_xmpp::Client`: the crate enables xmpp-parsers' `component` feature, which makes
//! every stanza type (`Presence`, `Iq`, `Message`) live in `jabber:component:accept`. A
//! `tokio_xmpp::Client` then sends its resource-binding `<iq xmlns='jabber:component:accept'>` on a
//! c2s stream and Prosody closes it with `<unsupported-stanza-type/>`; incoming `jabber:client`
//! stanzas would not parse either. So this file logs in itself on tokio-xmpp's XML stream layer
//! (`xmlstream::initiate_stream`, SASL PLAIN, resource binding), reads and writes
//! `minidom::Element`s, and swaps the stanza namespace between `jabber:client` on the wire and
//! xmpp-parsers' default namespace in memory, so tests still get typed `Presence` / `Roster`.
//!
//! Each [`TestClient`] owns a background task that drives the stream and forwards every received
//! stanza into an unbounded channel, so nothing is lost while a test is busy elsewhere. The task
//! accepts nothing on its own: subscription requests are answered by the helpers, explicitly. It
//! only answers IQ requests addressed to the client (roster pushes with a result, anything else
//! with `service-unavailable`) as RFC 6120/6121 require (those IQs are still forwarded), and
//! pings the server when the stream has been silent for a minute. It does not reconnect: when
//! the server goes away the client is dead and a test logs in again with a new one. All waits are
//! bounded and panic with what was seen.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use jid::{BareJid, FullJid, Jid};
use minidom::{Element, Node};
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tokio_xmpp::xmlstream::{initiate_stream, ReadError, StreamHeader, Timeouts, XmlStream};
use xmpp_parsers::bind::{BindQuery, BindResponse};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::presence::{Presence, Type as PresenceType};
use xmpp_parsers::roster::{Roster, Subscription};
use xmpp_parsers::sasl::{Auth, Mechanism};
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

use super::{DOMAIN, PASSWORD};

/// Longest wait for login.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a stanza to be written, for an IQ answer, for a clean close.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait in the subscription helpers for each step and for the rosters to settle.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Namespace of stanzas on a c2s stream.
const NS_CLIENT: &str = "jabber:client";
/// Namespace xmpp-parsers gives stanzas (`jabber:component:accept` with its `component` feature).
const NS_PARSERS: &str = xmpp_parsers::ns::DEFAULT_NS;
const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
const NS_ROSTER: &str = "jabber:iq:roster";
const NS_PING: &str = "urn:xmpp:ping";

/// The c2s XML stream, carrying raw elements.
type C2s = XmlStream<BufStream<TcpStream>, Element>;

/// What the background task reports.
enum Incoming {
    Stanza(Box<Stanza>),
    /// An element that is not a (parsable) stanza, as XML text.
    Other(String),
    /// The stream ended; the task is gone.
    Disconnected(String),
}

/// What the test asks the background task to do.
enum Command {
    Send(Box<Stanza>, oneshot::Sender<Result<(), String>>),
    Close(oneshot::Sender<()>),
}

/// A logged-in user, `user@DOMAIN/<server-assigned resource>`.
pub struct TestClient {
    /// The bound full JID.
    pub jid: jid::FullJid,
    commands: mpsc::UnboundedSender<Command>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    /// Stanzas read from `incoming` but not consumed yet (kept by [`TestClient::roster`]).
    pending: VecDeque<Stanza>,
    /// Whether this session has sent initial presence (and not `unavailable` since).
    available: bool,
    task: Option<JoinHandle<()>>,
    /// The last presences received, as the server sent them (what parsing drops, e.g.
    /// `xml:lang`, is still there).
    raw_presences: std::sync::Arc<std::sync::Mutex<VecDeque<Element>>>,
}

impl TestClient {
    /// Log in `user@DOMAIN` with [`PASSWORD`] over plaintext c2s on 127.0.0.1:`port`, wait for
    /// the session (bounded), and send `<presence/>` when `initial_presence`.
    pub async fn connect(port: u16, user: &str, initial_presence: bool) -> TestClient {
        TestClient::connect_as(port, user, None, initial_presence).await
    }

    /// Like [`connect`](Self::connect), asking the server to bind `resource` (else it picks one).
    pub async fn connect_as(
        port: u16,
        user: &str,
        resource: Option<&str>,
        initial_presence: bool,
    ) -> TestClient {
        let bare: BareJid = format!("{user}@{DOMAIN}")
            .parse()
            .unwrap_or_else(|e| panic!("bad test user {user:?}: {e}"));
        let (stream, jid) = match timeout(LOGIN_TIMEOUT, login(port, &bare, resource)).await {
            Ok(Ok(logged_in)) => logged_in,
            Ok(Err(e)) => panic!("{bare} could not log in on 127.0.0.1:{port}: {e}"),
            Err(_) => panic!("{bare} not logged in on 127.0.0.1:{port} within {LOGIN_TIMEOUT:?}"),
        };
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (incoming_tx, incoming) = mpsc::unbounded_channel();
        let raw_presences = std::sync::Arc::new(std::sync::Mutex::new(VecDeque::new()));
        let task = tokio::spawn(drive(
            stream,
            command_rx,
            incoming_tx,
            raw_presences.clone(),
        ));
        let mut client = TestClient {
            jid,
            commands,
            incoming,
            pending: VecDeque::new(),
            available: false,
            task: Some(task),
            raw_presences,
        };
        if initial_presence {
            client.send(Presence::available()).await;
        }
        client
    }

    /// The last (at most 100) presences received, as the server sent them.
    pub fn raw_presences(&self) -> Vec<Element> {
        self.raw_presences.lock().unwrap().iter().cloned().collect()
    }

    /// The bound JID without resource.
    pub fn bare(&self) -> BareJid {
        self.jid.to_bare()
    }

    /// Send a stanza and wait (bounded) until it is written to the stream.
    pub async fn send(&mut self, stanza: impl Into<Stanza>) {
        let stanza = stanza.into();
        if let Stanza::Presence(p @ Presence { to: None, .. }) = &stanza {
            match p.type_ {
                PresenceType::None => self.available = true,
                PresenceType::Unavailable => self.available = false,
                _ => {}
            }
        }
        let (done, result) = oneshot::channel();
        self.commands
            .send(Command::Send(Box::new(stanza), done))
            .unwrap_or_else(|_| panic!("{}: client task is gone", self.jid));
        match timeout(OP_TIMEOUT, result).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("{}: send failed: {e}", self.jid),
            Ok(Err(_)) => panic!("{}: client task is gone", self.jid),
            Err(_) => panic!("{}: stanza not sent within {OP_TIMEOUT:?}", self.jid),
        }
    }

    /// Wait up to `timeout` for a presence matching `pred`, discarding everything else. Panics
    /// with a list of what was seen when none matches in time.
    pub async fn expect_presence(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Presence) -> bool,
    ) -> Presence {
        let deadline = Instant::now() + timeout;
        let mut seen = String::new();
        while let Some(stanza) = self.next_until(deadline).await {
            if let Stanza::Presence(p) = &stanza {
                if pred(p) {
                    return p.clone();
                }
            }
            let _ = writeln!(seen, "  {}", describe(&stanza));
        }
        panic!(
            "{}: no matching presence within {timeout:?}; seen meanwhile:\n{}",
            self.jid,
            if seen.is_empty() {
                "  (nothing)"
            } else {
                &seen
            }
        );
    }

    /// Every presence received within `window` (other stanzas are discarded).
    pub async fn presences_within(&mut self, window: Duration) -> Vec<Presence> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(stanza) = self.next_until(deadline).await {
            if let Stanza::Presence(p) = stanza {
                out.push(p);
            }
        }
        out
    }

    /// Drop everything received so far.
    pub fn drain(&mut self) {
        self.pending.clear();
        while self.incoming.try_recv().is_ok() {}
    }

    /// Fetch the own roster. Stanzas that arrive meanwhile are kept for later reads.
    pub async fn roster(&mut self) -> Roster {
        let id = format!("roster-{}", next_id());
        let get = Iq::from_get(
            id.clone(),
            Roster {
                ver: None,
                items: vec![],
            },
        );
        self.send(get).await;
        let deadline = Instant::now() + OP_TIMEOUT;
        let mut kept = Vec::new();
        let answer = loop {
            let Some(stanza) = self.next_until(deadline).await else {
                break None;
            };
            match stanza {
                Stanza::Iq(iq @ (Iq::Result { .. } | Iq::Error { .. })) if iq.id() == id => {
                    break Some(iq)
                }
                other => kept.push(other),
            }
        };
        // Put back what arrived meanwhile, in order, ahead of anything still pending.
        for stanza in kept.into_iter().rev() {
            self.pending.push_front(stanza);
        }
        match answer {
            Some(Iq::Result {
                payload: Some(payload),
                ..
            }) => Roster::try_from(payload)
                .unwrap_or_else(|e| panic!("{}: bad roster result: {e}", self.jid)),
            Some(Iq::Result { payload: None, .. }) => Roster {
                ver: None,
                items: vec![],
            },
            Some(other) => panic!("{}: roster get failed: {other:?}", self.jid),
            None => panic!("{}: no roster result within {OP_TIMEOUT:?}", self.jid),
        }
    }

    /// Close the stream cleanly (bounded) and end the background task.
    pub async fn disconnect(mut self) {
        let (done, closed) = oneshot::channel();
        if self.commands.send(Command::Close(done)).is_ok() {
            let _ = timeout(OP_TIMEOUT, closed).await;
        }
        if let Some(task) = self.task.take() {
            let _ = timeout(OP_TIMEOUT, task).await;
        }
    }

    /// Drop the TCP connection without a stream footer or `unavailable` (a client that crashed
    /// or lost its network).
    pub async fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// The next stanza (pending ones first), or `None` at `deadline`. Non-stanza elements and a
    /// disconnect are reported on stderr and otherwise treated like silence.
    async fn next_until(&mut self, deadline: Instant) -> Option<Stanza> {
        if let Some(stanza) = self.pending.pop_front() {
            return Some(stanza);
        }
        loop {
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Ok(Some(Incoming::Stanza(stanza))) => return Some(*stanza),
                Ok(Some(Incoming::Other(xml))) => {
                    eprintln!("{}: ignoring non-stanza element {xml}", self.jid);
                }
                Ok(Some(Incoming::Disconnected(why))) => {
                    eprintln!("{}: stream ended: {why}", self.jid);
                }
                Ok(None) => {
                    tokio::time::sleep_until(deadline).await;
                    return None;
                }
                Err(_) => return None,
            }
        }
    }
}

/// Log in `user@DOMAIN` like [`TestClient::connect`] (SASL PLAIN, resource binding; no initial
/// presence), but hand back the raw byte stream instead of a parsing client: for load tests whose
/// contacts only count what arrives. Panics when the login fails or takes too long.
pub async fn login_stream(port: u16, user: &str) -> (BufStream<TcpStream>, FullJid) {
    let bare: BareJid = format!("{user}@{DOMAIN}")
        .parse()
        .unwrap_or_else(|e| panic!("bad test user {user:?}: {e}"));
    match timeout(LOGIN_TIMEOUT, login(port, &bare, None)).await {
        // Nothing is in flight after the bind result, so no buffered XML is lost here.
        Ok(Ok((stream, jid))) => (stream.into_inner(), jid),
        Ok(Err(e)) => panic!("{bare} could not log in on 127.0.0.1:{port}: {e}"),
        Err(_) => panic!("{bare} not logged in on 127.0.0.1:{port} within {LOGIN_TIMEOUT:?}"),
    }
}

/// Connect, authenticate with SASL PLAIN and bind a resource; returns the stream and bound JID.
async fn login(
    port: u16,
    user: &BareJid,
    resource: Option<&str>,
) -> Result<(C2s, FullJid), String> {
    let header = || StreamHeader {
        from: None,
        to: Some(Cow::Borrowed(DOMAIN)),
        id: None,
    };
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("TCP connect: {e}"))?;
    let (features, mut stream) =
        initiate_stream(BufStream::new(tcp), NS_CLIENT, header(), Timeouts::tight())
            .await
            .map_err(|e| format!("stream header: {e}"))?
            .recv_features::<Element>()
            .await
            .map_err(|e| format!("stream features: {e}"))?;
    if !features.sasl_mechanisms.contains("PLAIN") {
        return Err(format!(
            "server offers no SASL PLAIN (is allow_unencrypted_plain_auth set?): {:?}",
            features.sasl_mechanisms
        ));
    }
    let node = user.node().map(|n| n.as_str()).unwrap_or_default();
    let auth = Auth {
        mechanism: Mechanism::Plain,
        data: format!("\0{node}\0{PASSWORD}").into_bytes(),
    };
    send_element(&mut stream, &Element::from(auth)).await?;
    let answer = read_element(&mut stream).await?;
    if !answer.is("success", NS_SASL) {
        return Err(format!("SASL PLAIN refused: {}", xml(&answer)));
    }
    let (_, mut stream) = stream
        .initiate_reset()
        .send_header(header())
        .await
        .map_err(|e| format!("stream restart: {e}"))?
        .recv_features::<Element>()
        .await
        .map_err(|e| format!("stream features after SASL: {e}"))?;
    let bind = Iq::from_set("bind-1", BindQuery::new(resource.map(str::to_string)));
    send_element(&mut stream, &to_wire(Stanza::Iq(bind))).await?;
    loop {
        let element = read_element(&mut stream).await?;
        match from_wire(element.clone()) {
            Some(Stanza::Iq(Iq::Result {
                id,
                payload: Some(payload),
                ..
            })) if id == "bind-1" => {
                let bound =
                    BindResponse::try_from(payload).map_err(|e| format!("bad bind result: {e}"))?;
                return Ok((stream, FullJid::from(bound)));
            }
            Some(Stanza::Iq(iq)) if iq.id() == "bind-1" => {
                return Err(format!("resource binding failed: {}", xml(&element)));
            }
            _ => {}
        }
    }
}

/// Write one element and flush.
async fn send_element(stream: &mut C2s, element: &Element) -> Result<(), String> {
    stream
        .send(element)
        .await
        .map_err(|e| format!("write {}: {e}", xml(element)))
}

/// Read the next element during login; stream errors and the end of the stream are errors.
async fn read_element(stream: &mut C2s) -> Result<Element, String> {
    loop {
        match stream.next().await {
            Some(Ok(element)) if element.is("error", NS_STREAMS) => {
                return Err(format!("stream error: {}", xml(&element)))
            }
            Some(Ok(element)) => return Ok(element),
            Some(Err(ReadError::SoftTimeout)) => {}
            Some(Err(e)) => return Err(format!("read: {e}")),
            None => return Err("stream closed".to_string()),
        }
    }
}

/// A stanza as it goes on a c2s stream.
fn to_wire(stanza: Stanza) -> Element {
    swap_ns(Element::from(stanza), NS_PARSERS, NS_CLIENT)
}

/// A c2s element as a typed stanza, if it is one.
fn from_wire(element: Element) -> Option<Stanza> {
    if !element.has_ns(NS_CLIENT) {
        return None;
    }
    Stanza::try_from(swap_ns(element, NS_CLIENT, NS_PARSERS)).ok()
}

/// Copy of `element` with every element in namespace `from` moved to namespace `to`.
fn swap_ns(mut element: Element, from: &str, to: &str) -> Element {
    if from == to {
        return element;
    }
    let ns = element.ns();
    let mut out = Element::bare(element.name(), if ns == from { to.to_string() } else { ns });
    *out.attrs_mut() = element.attrs().clone();
    for node in element.take_nodes() {
        match node {
            Node::Element(child) => {
                out.append_child(swap_ns(child, from, to));
            }
            Node::Text(text) => out.append_text_node(text),
        }
    }
    out
}

/// An element as XML text, for messages.
fn xml(element: &Element) -> String {
    String::from(element)
}

/// The background task: drive the stream, forward what it receives, execute commands.
async fn drive(
    mut stream: C2s,
    mut commands: mpsc::UnboundedReceiver<Command>,
    incoming: mpsc::UnboundedSender<Incoming>,
    raw_presences: std::sync::Arc<std::sync::Mutex<VecDeque<Element>>>,
) {
    let mut pings = 0u64;
    loop {
        tokio::select! {
            read = stream.next() => match read {
                Some(Ok(element)) => {
                    if element.is("error", NS_STREAMS) {
                        let _ = incoming.send(Incoming::Disconnected(format!("stream error: {}", xml(&element))));
                        return;
                    }
                    if element.name() == "presence" {
                        let mut raw = raw_presences.lock().unwrap();
                        if raw.len() >= 100 {
                            raw.pop_front();
                        }
                        raw.push_back(element.clone());
                    }
                    match from_wire(element.clone()) {
                        Some(stanza) => {
                            if let Some(answer) = answer_iq(&stanza) {
                                let _ = send_element(&mut stream, &to_wire(Stanza::Iq(answer))).await;
                            }
                            let _ = incoming.send(Incoming::Stanza(Box::new(stanza)));
                        }
                        None => {
                            let _ = incoming.send(Incoming::Other(xml(&element)));
                        }
                    }
                }
                Some(Err(ReadError::SoftTimeout)) => {
                    // A minute of silence: make the server say something before the hard timeout.
                    pings += 1;
                    let ping = Element::builder("ping", NS_PING).build();
                    let iq = Iq::Get {
                        from: None,
                        to: Some(Jid::new(DOMAIN).expect("domain JID")),
                        id: format!("keepalive-{pings}"),
                        payload: ping,
                    };
                    let _ = send_element(&mut stream, &to_wire(Stanza::Iq(iq))).await;
                }
                Some(Err(ReadError::ParseError(e))) => {
                    let _ = incoming.send(Incoming::Other(format!("unparsable element: {e}")));
                }
                Some(Err(e)) => {
                    let _ = incoming.send(Incoming::Disconnected(e.to_string()));
                    return;
                }
                None => {
                    let _ = incoming.send(Incoming::Disconnected("stream closed".to_string()));
                    return;
                }
            },
            command = commands.recv() => match command {
                Some(Command::Send(stanza, done)) => {
                    let result = send_element(&mut stream, &to_wire(*stanza)).await;
                    let _ = done.send(result);
                }
                Some(Command::Close(done)) => {
                    close(&mut stream).await;
                    let _ = done.send(());
                    return;
                }
                None => {
                    close(&mut stream).await;
                    return;
                }
            },
        }
    }
}

/// Send the stream footer and wait (bounded) for the server's, so the session is really over.
async fn close(stream: &mut C2s) {
    if timeout(OP_TIMEOUT, stream.shutdown()).await.is_err() {
        return;
    }
    let _ = timeout(OP_TIMEOUT, async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
}

/// The answer a well-behaved client gives to an IQ request: a result for roster pushes,
/// `service-unavailable` for anything else.
fn answer_iq(stanza: &Stanza) -> Option<Iq> {
    let Stanza::Iq(iq) = stanza else {
        return None;
    };
    let (from, id, payload) = match iq {
        Iq::Get {
            from, id, payload, ..
        }
        | Iq::Set {
            from, id, payload, ..
        } => (from.clone(), id.clone(), payload),
        _ => return None,
    };
    let mut answer = if matches!(iq, Iq::Set { .. }) && payload.is("query", NS_ROSTER) {
        Iq::Result {
            from: None,
            to: None,
            id,
            payload: None,
        }
    } else {
        Iq::from_error(
            id,
            StanzaError::new(
                ErrorType::Cancel,
                DefinedCondition::ServiceUnavailable,
                "en",
                "not supported by the test client",
            ),
        )
    };
    if let Some(from) = from {
        answer = answer.with_to(from);
    }
    Some(answer)
}

/// One line about a stanza for panic messages.
fn describe(stanza: &Stanza) -> String {
    match stanza {
        Stanza::Presence(p) => format!(
            "presence type={:?} from={} to={} show={:?} status={:?} priority={}",
            p.type_,
            opt(&p.from),
            opt(&p.to),
            p.show,
            p.statuses.values().next(),
            p.priority.0
        ),
        Stanza::Message(m) => format!(
            "message type={:?} from={} to={} payloads={}",
            m.type_,
            opt(&m.from),
            opt(&m.to),
            m.payloads
                .iter()
                .map(|e| format!("{{{}}}{}", e.ns(), e.name()))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Stanza::Iq(iq) => format!("iq {iq:?}"),
    }
}

fn opt(jid: &Option<Jid>) -> String {
    jid.as_ref().map_or_else(|| "-".to_string(), Jid::to_string)
}

fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A presence of `type_` to `to`.
fn presence_to(to: &BareJid, type_: PresenceType) -> Presence {
    let mut p = Presence::new(type_);
    p.to = Some(to.clone().into());
    p
}

/// Whether `p` is a presence of `type_` from the bare JID `from`.
fn is_from(p: &Presence, from: &BareJid, type_: PresenceType) -> bool {
    p.type_ == type_ && p.from.as_ref().is_some_and(|j| j.to_bare() == *from)
}

/// The subscription `client`'s roster shows for `contact` (`None` when absent).
async fn subscription_of(client: &mut TestClient, contact: &BareJid) -> Option<Subscription> {
    client
        .roster()
        .await
        .items
        .into_iter()
        .find(|item| item.jid == *contact)
        .map(|item| item.subscription)
}

/// Poll both rosters until `a` shows `b` as `want_a` and `b` shows `a` as `want_b` (bounded).
async fn wait_rosters(
    a: &mut TestClient,
    want_a: Subscription,
    b: &mut TestClient,
    want_b: Subscription,
) {
    let (a_bare, b_bare) = (a.bare(), b.bare());
    let deadline = Instant::now() + SUBSCRIBE_TIMEOUT;
    loop {
        let got_a = subscription_of(a, &b_bare).await;
        let got_b = subscription_of(b, &a_bare).await;
        if got_a == Some(want_a.clone()) && got_b == Some(want_b.clone()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "rosters did not settle within {SUBSCRIBE_TIMEOUT:?}: {a_bare} has {b_bare} as \
             {got_a:?} (want {want_a:?}), {b_bare} has {a_bare} as {got_b:?} (want {want_b:?})"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

/// `subscriber` asks for `owner`'s presence and `owner` approves it, with real presences.
async fn request_and_approve(subscriber: &mut TestClient, owner: &mut TestClient) {
    let (subscriber_bare, owner_bare) = (subscriber.bare(), owner.bare());
    for client in [&*subscriber, &*owner] {
        assert!(
            client.available,
            "{}: the subscription helpers need clients connected with initial_presence = true \
             (Prosody delivers subscription requests only to sessions that sent initial presence)",
            client.jid
        );
    }
    // Prosody 0.12 delivers `subscribe` to available sessions but `subscribed` only to
    // "interested" ones, i.e. sessions that fetched their roster (as real clients do at login).
    subscriber.roster().await;
    owner.roster().await;
    subscriber
        .send(presence_to(&owner_bare, PresenceType::Subscribe))
        .await;
    owner
        .expect_presence(SUBSCRIBE_TIMEOUT, |p| {
            is_from(p, &subscriber_bare, PresenceType::Subscribe)
        })
        .await;
    owner
        .send(presence_to(&subscriber_bare, PresenceType::Subscribed))
        .await;
    subscriber
        .expect_presence(SUBSCRIBE_TIMEOUT, |p| {
            is_from(p, &owner_bare, PresenceType::Subscribed)
        })
        .await;
}

/// Make `a` and `b` mutual contacts (`both` on both sides) with real subscribe / subscribed
/// exchanges in both directions, and wait until both rosters show `both`. Both clients must have
/// sent initial presence. Stanzas received meanwhile (presences included) are discarded.
pub async fn subscribe_mutual(a: &mut TestClient, b: &mut TestClient) {
    request_and_approve(a, b).await;
    request_and_approve(b, a).await;
    wait_rosters(a, Subscription::Both, b, Subscription::Both).await;
}

/// Make `follower` subscribed to `owner`'s presence only: `owner`'s roster shows `follower`
/// with subscription `from` (and `follower`'s shows `owner` with `to`). Both clients must have
/// sent initial presence. Stanzas received meanwhile (presences included) are discarded.
pub async fn subscribe_one_way(follower: &mut TestClient, owner: &mut TestClient) {
    request_and_approve(follower, owner).await;
    wait_rosters(owner, Subscription::From, follower, Subscription::To).await;
}
