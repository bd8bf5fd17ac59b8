//! A test double of Tigase's component listener and session manager, for `backend = "tigase"`.
//!
//! Tigase cannot be installed here, so the Tigase mode is tested against this double, built from
//! Tigase's own source and nothing else:
//! - tigase-server `tigase/server/ext/handlers/ComponentAcceptStreamOpenHandler.java` and
//!   `HandshakeProcessor.java` (the `ext` component listener, XEP-0114),
//! - tigase-server `tigase/server/xmppsession/SessionManager.java` (`processCommand`, the
//!   `USER_STATUS` branch, `registerNewSession`, `ConnectionCheckCommandHandler`),
//!   `tigase/server/Command.java` (command and form layout, `getFieldValue`) and
//!   `tigase/xmpp/Authorization.java` (error types and codes),
//! - tigase-http-api `tigase/rest/user/UserStatus.groovy` (what Tigase's own endpoint sends).
//!
//! [`SessionManager`] is the pure core (elements in, elements out, explicit time), unit-tested in
//! `tests/tigase.rs`; [`TigaseDouble`] runs it behind a real TCP listener on `127.0.0.1:0`.
//!
//! # The component listener
//! Its stream header carries `from` = the component and a fresh `id`, and no stream features
//! (ComponentAcceptStreamOpenHandler). The handshake must be the hex SHA-1 of id + secret; a
//! wrong one is not answered with a stream error: Tigase just stops the connection
//! (HandshakeProcessor: "Handshaking passwords don't match, disconnecting..."), and so does the
//! double (it sends the stream footer and closes). A header naming another component is closed
//! too (Tigase has no secret for it and its handshake fails). One difference in timing, not in
//! content: the double writes its header without waiting for the component's (tokio-xmpp's
//! responder API would force stream features, which Tigase never sends); TCP is full duplex, so
//! the component cannot tell.
//!
//! # USER_STATUS, rule by rule (`SessionManager.processCommand`)
//! 1. It is a command only if `to` is the session manager: `sess-man@<served domain>` (what
//!    UserStatus.groovy sends) or a bare served domain. Anything else is not processed as a
//!    command: the double answers `service-unavailable` and changes nothing. (The version read
//!    compares `to` with its own id, `sess-man@<default vhost>`; the double accepts
//!    `sess-man@` on every served domain, as UserStatus.groovy assumes.)
//! 2. The sender must be trusted: its bare JID or its domain in the top-level `trusted` list.
//!    Otherwise `forbidden` (type `auth`, code 403) "Only trusted entity can do it.", with the
//!    original command included, and nothing else happens.
//! 3. Form fields are read as `Command.getFieldValue` does: the first `<field var=…>` in the
//!    `jabber:x:data` form of the command. A field without `var`, or a `jid` field that is missing
//!    or not a JID, raises an exception in Tigase, answered with `undefined-condition` and the
//!    error type Tigase writes for it, `[undefined]` (not a valid XMPP error type: a strict
//!    parser drops such a reply, and the sender sees no answer at all).
//! 4. `available` is true unless the field says `false` (any case); absent means true.
//! 5. Sessions are keyed by the sender's full JID (`connectionsByFrom`):
//!    - available, no session for this sender: a session for the `jid` field's user and resource
//!      (a random resource when it has none) is opened; every other session of that user gets a
//!      `CHECK_USER_CONNECTION` (`registerNewSession`); then an empty result; then the
//!      command's `<presence/>` is broadcast (without one, Tigase's default: priority -1);
//!    - available, a session exists: **no answer at all**; the `<presence/>` (if any) is
//!      broadcast for that session's user and resource, whatever the `jid` field says;
//!    - not available, a session exists: it is closed (an unavailable broadcast) and answered
//!      with a result; none: `item-not-found` (type `cancel`, 404) "The user resource you want
//!      to remove does not exist." So a close must come from the sender that opened it.
//! 6. Not refused by Tigase, so accepted by the double too: a `jid` on a domain Tigase does not
//!    serve (the session goes on the default vhost), a user without an account, a priority of 0
//!    or more. extpresence's own checks (`domains`, negative priority) are the only guard.
//!    `prebind` (which skips the trust check in Tigase) is not modelled: extpresence never sends
//!    it, and the double records it as a violation.
//!
//! # CHECK_USER_CONNECTION
//! `<iq type='get' from='sess-man@<default domain>' to='<session sender>'>` with the command and
//! a `user-jid` field, sent when another session of the user opens ([`SessionManager::check`],
//! [`SessionManager::login_elsewhere`] for a real client's login). The answer is matched by its
//! `to` and `id` (AbstractMessageReceiver's timeout tasks). A result keeps the session; an error,
//! or no answer within the check timeout (30 s in Tigase, configurable here), closes it.
//!
//! # What else it records
//! Every USER_STATUS command with its reply, every presence it would broadcast, every check and
//! its outcome, and violations: anything extpresence sends that Tigase would not expect from it.
//! Switches: trusted list, silence (the session manager stops answering USER_STATUS: a stuck
//! queue), refusing connections, dropping the connection (sessions stay: Tigase keeps them when
//! only the component's link drops), and restart (connection dropped, sessions gone).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use jid::{BareJid, Jid};
use minidom::rxml::xml_ncname;
use minidom::Element;
use tokio::io::BufStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_xmpp::xmlstream::{initiate_stream, ReadError, StreamHeader, Timeouts, XmlStream};
use xmpp_parsers::component::Handshake;

/// Stanzas on a component stream.
pub const NS_COMPONENT: &str = "jabber:component:accept";
const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
const NS_DATA: &str = "jabber:x:data";
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
const NS_PING: &str = "urn:xmpp:ping";
const TEXT_FORBIDDEN: &str = "Only trusted entity can do it.";
const TEXT_NOT_FOUND: &str = "The user resource you want to remove does not exist.";

/// How the double is set up (what Tigase's config.tdsl and externalComponentItems say).
#[derive(Debug, Clone)]
pub struct DoubleConfig {
    /// The external component's domain (`status.example.com` in `ext`).
    pub component: String,
    /// Its secret.
    pub secret: String,
    /// Served virtual hosts; the first is the default, whose `sess-man@` sends checks.
    pub domains: Vec<String>,
    /// The top-level `trusted` list (bare JIDs or domains).
    pub trusted: Vec<String>,
    /// How long a CHECK_USER_CONNECTION may go unanswered (30 s in Tigase).
    pub check_timeout: Duration,
}

impl DoubleConfig {
    /// `component` with `secret`, serving `domain`, with the component trusted.
    pub fn new(component: &str, secret: &str, domain: &str) -> DoubleConfig {
        DoubleConfig {
            component: component.to_string(),
            secret: secret.to_string(),
            domains: vec![domain.to_string()],
            trusted: vec![component.to_string()],
            check_timeout: Duration::from_secs(30),
        }
    }
}

/// A synthetic session the double holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The sender that owns it (its connection id in Tigase).
    pub sender: String,
    /// `user@domain`.
    pub user: String,
    /// The session's resource.
    pub resource: String,
    /// Its current presence.
    pub presence: Presence,
}

/// A presence as the session manager would broadcast it to the user's contacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// `<priority/>` (0 when absent, as RFC 6121 says).
    pub priority: i32,
    /// `<show/>`.
    pub show: Option<String>,
    /// `<status/>`.
    pub status: Option<String>,
}

/// One broadcast the double would make: `available` with a presence, or unavailable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    /// `user@domain`.
    pub user: String,
    /// The resource.
    pub resource: String,
    /// The presence, `None` for unavailable.
    pub presence: Option<Presence>,
}

/// What the double answered to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An empty result.
    Result,
    /// An error with this defined condition.
    Error(String),
    /// Nothing (an update of an existing session, or silence switched on).
    Nothing,
}

/// A USER_STATUS command as received, and the reply.
#[derive(Debug, Clone)]
pub struct Command {
    /// The iq id.
    pub id: String,
    /// `from` as written.
    pub from: String,
    /// `to` as written.
    pub to: String,
    /// The `jid` field.
    pub jid: Option<String>,
    /// The `available` field.
    pub available: Option<String>,
    /// The double's reply.
    pub reply: Reply,
}

/// What became of a CHECK_USER_CONNECTION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Not answered yet.
    Pending,
    /// Answered with a result: the session stays.
    Alive,
    /// Answered with an error: the session was closed.
    Refused,
    /// No answer in time: the session was closed.
    TimedOut,
}

/// A CHECK_USER_CONNECTION the double sent.
#[derive(Debug, Clone)]
pub struct Check {
    /// Its iq id.
    pub id: String,
    /// The session sender it went to.
    pub to: String,
    /// The `user-jid` field.
    pub user: String,
    /// What became of it.
    pub outcome: CheckOutcome,
    sent: Instant,
}

/// The session manager's behaviour, without any I/O.
#[derive(Debug)]
pub struct SessionManager {
    cfg: DoubleConfig,
    /// When set, USER_STATUS commands are swallowed: not answered, not applied.
    pub silent: bool,
    sessions: BTreeMap<String, Session>,
    /// Every broadcast, in order.
    pub broadcasts: Vec<Broadcast>,
    /// Every USER_STATUS command, in order.
    pub commands: Vec<Command>,
    /// Every check sent.
    pub checks: Vec<Check>,
    /// What Tigase would not expect from extpresence.
    pub violations: Vec<String>,
    next: u64,
}

fn attr(
    builder: minidom::ElementBuilder,
    name: &'static str,
    value: &str,
) -> minidom::ElementBuilder {
    let name = match name {
        "type" => xml_ncname!("type"),
        "id" => xml_ncname!("id"),
        "from" => xml_ncname!("from"),
        "to" => xml_ncname!("to"),
        "node" => xml_ncname!("node"),
        "var" => xml_ncname!("var"),
        "code" => xml_ncname!("code"),
        other => panic!("attribute {other} not prepared"),
    };
    builder.attr(name.into(), value)
}

fn iq(kind: &str, id: &str, from: &str, to: &str) -> minidom::ElementBuilder {
    let b = Element::builder("iq", NS_COMPONENT);
    let b = attr(b, "type", kind);
    let b = attr(b, "id", id);
    let b = attr(b, "from", from);
    attr(b, "to", to)
}

/// The reply `okResult(null, 0)` builds: an empty result from the request's `to`.
fn ok_result(request: &Element) -> Element {
    iq(
        "result",
        request.attr("id").unwrap_or_default(),
        request.attr("to").unwrap_or_default(),
        request.attr("from").unwrap_or_default(),
    )
    .build()
}

/// The reply `Authorization.X.getResponseMessage(request, text, true)` builds: the original
/// children, then `<error type code>` with the condition and text.
fn error_result(request: &Element, kind: &str, code: u16, condition: &str, text: &str) -> Element {
    let error = attr(
        attr(Element::builder("error", NS_COMPONENT), "type", kind),
        "code",
        &code.to_string(),
    )
    .append(Element::builder(condition, NS_STANZAS))
    .append(Element::builder("text", NS_STANZAS).append(text))
    .build();
    iq(
        "error",
        request.attr("id").unwrap_or_default(),
        request.attr("to").unwrap_or_default(),
        request.attr("from").unwrap_or_default(),
    )
    .append_all(request.children().cloned())
    .append(error)
    .build()
}

/// `Command.getFieldValue`: `Err` where Tigase throws (a field without `var`).
fn field_value(command: &Element, var: &str) -> Result<Option<String>, String> {
    let Some(x) = command.get_child("x", NS_DATA) else {
        return Ok(None);
    };
    for child in x.children().filter(|c| c.name() == "field") {
        match child.attr("var") {
            None => return Err("java.lang.NullPointerException (a field without var)".into()),
            Some(v) if v == var => {
                return Ok(child
                    .children()
                    .find(|c| c.name() == "value")
                    .map(Element::text))
            }
            Some(_) => {}
        }
    }
    Ok(None)
}

fn text_of(el: &Element, name: &str) -> Option<String> {
    el.children().find(|c| c.name() == name).map(Element::text)
}

fn parse_presence(el: &Element) -> Presence {
    Presence {
        priority: text_of(el, "priority")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0),
        show: text_of(el, "show"),
        status: text_of(el, "status"),
    }
}

impl SessionManager {
    /// A session manager with no sessions.
    pub fn new(cfg: DoubleConfig) -> SessionManager {
        SessionManager {
            cfg,
            silent: false,
            sessions: BTreeMap::new(),
            broadcasts: Vec::new(),
            commands: Vec::new(),
            checks: Vec::new(),
            violations: Vec::new(),
            next: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DoubleConfig {
        &self.cfg
    }

    /// Replace the `trusted` list (Tigase reads it at start: use with a restart to be faithful).
    pub fn set_trusted(&mut self, trusted: Vec<String>) {
        self.cfg.trusted = trusted;
    }

    /// The session manager's own JID: `sess-man@<default domain>`.
    pub fn sm_jid(&self) -> String {
        format!("sess-man@{}", self.cfg.domains[0])
    }

    /// Every session, by sender.
    pub fn sessions(&self) -> Vec<Session> {
        self.sessions.values().cloned().collect()
    }

    /// The session of `user/resource`, if any.
    pub fn session(&self, user: &str, resource: &str) -> Option<Session> {
        self.sessions
            .values()
            .find(|s| s.user == user && s.resource == resource)
            .cloned()
    }

    /// A Tigase restart: every session and pending check is gone (records stay).
    pub fn restart(&mut self) {
        self.sessions.clear();
        for c in &mut self.checks {
            if c.outcome == CheckOutcome::Pending {
                c.outcome = CheckOutcome::TimedOut;
            }
        }
    }

    fn is_sm(&self, to: &str) -> bool {
        let Ok(to) = Jid::new(to) else {
            return false;
        };
        let domain = to.domain().as_str();
        let served = self.cfg.domains.iter().any(|d| d == domain);
        served
            && to.resource().is_none()
            && (to.node().is_none() || to.node().map(|n| n.as_str()) == Some("sess-man"))
    }

    fn is_trusted(&self, from: &Jid) -> bool {
        let bare = from.to_bare();
        self.cfg
            .trusted
            .iter()
            .any(|t| t == bare.as_str() || t == from.domain().as_str())
    }

    fn close(&mut self, sender: &str) -> bool {
        match self.sessions.remove(sender) {
            Some(s) => {
                self.broadcasts.push(Broadcast {
                    user: s.user,
                    resource: s.resource,
                    presence: None,
                });
                true
            }
            None => false,
        }
    }

    /// Handle one element from the component; returns what the server sends back.
    pub fn handle(&mut self, el: &Element, now: Instant) -> Vec<Element> {
        if el.name() != "iq" {
            self.violations
                .push(format!("unexpected <{}>: {}", el.name(), String::from(el)));
            return Vec::new();
        }
        match el.attr("type") {
            Some("result") | Some("error") => {
                self.on_answer(el);
                Vec::new()
            }
            Some("get") | Some("set") => self.on_request(el, now),
            other => {
                self.violations.push(format!("iq of type {other:?}"));
                Vec::new()
            }
        }
    }

    fn on_answer(&mut self, el: &Element) {
        let (id, to) = (
            el.attr("id").unwrap_or_default(),
            el.attr("to").unwrap_or_default(),
        );
        let sm = self.sm_jid();
        let found = self.checks.iter().position(|c| {
            c.id == id
                && c.outcome == CheckOutcome::Pending
                && Jid::new(to).ok() == Jid::new(&sm).ok()
        });
        let Some(i) = found else {
            self.violations
                .push(format!("answer to nothing pending: {}", String::from(el)));
            return;
        };
        if el.attr("type") == Some("result") {
            self.checks[i].outcome = CheckOutcome::Alive;
        } else {
            self.checks[i].outcome = CheckOutcome::Refused;
            let to = self.checks[i].to.clone();
            self.close(&to);
        }
    }

    fn on_request(&mut self, el: &Element, now: Instant) -> Vec<Element> {
        let to = el.attr("to").unwrap_or_default().to_string();
        let command = el
            .children()
            .find(|c| c.is("command", NS_COMMANDS))
            .cloned();
        let Some(command) = command else {
            if el.children().any(|c| c.is("ping", NS_PING)) && self.is_sm(&to) {
                return vec![ok_result(el)];
            }
            self.violations
                .push(format!("unexpected request: {}", String::from(el)));
            return vec![error_result(
                el,
                "cancel",
                503,
                "service-unavailable",
                "Service not available.",
            )];
        };
        if command.attr("node") != Some("USER_STATUS") {
            self.violations
                .push(format!("unexpected command: {}", String::from(el)));
            return vec![error_result(
                el,
                "cancel",
                501,
                "feature-not-implemented",
                "There is no implementation for such command on the server.",
            )];
        }
        let mut record = Command {
            id: el.attr("id").unwrap_or_default().to_string(),
            from: el.attr("from").unwrap_or_default().to_string(),
            to: to.clone(),
            jid: field_value(&command, "jid").ok().flatten(),
            available: field_value(&command, "available").ok().flatten(),
            reply: Reply::Nothing,
        };
        let out = if self.silent {
            Vec::new()
        } else if !self.is_sm(&to) {
            // Not the session manager: routed elsewhere, not a command.
            vec![error_result(
                el,
                "cancel",
                503,
                "service-unavailable",
                "Service not available.",
            )]
        } else {
            self.user_status(el, &command, now)
        };
        record.reply = match out
            .iter()
            .find(|e| e.attr("id") == Some(record.id.as_str()))
        {
            Some(e) if e.attr("type") == Some("result") => Reply::Result,
            Some(e) => Reply::Error(
                e.get_child("error", NS_COMPONENT)
                    .and_then(|err| {
                        err.children()
                            .find(|c| c.ns() == NS_STANZAS && c.name() != "text")
                    })
                    .map(|c| c.name().to_string())
                    .unwrap_or_default(),
            ),
            None => Reply::Nothing,
        };
        self.commands.push(record);
        out
    }

    /// The USER_STATUS branch of `SessionManager.processCommand`.
    fn user_status(&mut self, el: &Element, command: &Element, now: Instant) -> Vec<Element> {
        let undefined = |why: String| {
            vec![error_result(
                el,
                "[undefined]",
                500,
                "undefined-condition",
                &format!("Unexpected error occured during the request: {why}"),
            )]
        };
        let Some(from) = el.attr("from").and_then(|f| Jid::new(f).ok()) else {
            self.violations.push(format!(
                "USER_STATUS without a valid from: {}",
                String::from(el)
            ));
            return Vec::new();
        };
        let trusted = self.is_trusted(&from);
        let prebind = match field_value(command, "prebind") {
            Ok(p) => p,
            Err(e) => return undefined(e),
        };
        if prebind.is_some() {
            self.violations.push("prebind is not modelled".into());
        }
        if !trusted {
            return vec![error_result(el, "auth", 403, "forbidden", TEXT_FORBIDDEN)];
        }
        let available = match field_value(command, "available") {
            Ok(v) => !v.is_some_and(|v| v.eq_ignore_ascii_case("false")),
            Err(e) => return undefined(e),
        };
        let user = match field_value(command, "jid") {
            Err(e) => return undefined(e),
            Ok(None) => return undefined("java.lang.NullPointerException (no jid field)".into()),
            Ok(Some(j)) => match Jid::new(j.trim()) {
                Ok(j) => j,
                Err(e) => return undefined(format!("TigaseStringprepException: {e}")),
            },
        };
        let sender = from.to_string();
        let mut out = Vec::new();
        if available {
            let presence = command.children().find(|c| c.name() == "presence");
            if !self.sessions.contains_key(&sender) {
                self.next += 1;
                let resource = user
                    .resource()
                    .map(|r| r.as_str().to_string())
                    .unwrap_or_else(|| format!("random-{}", self.next));
                let bare = user.to_bare().to_string();
                // registerNewSession: every other session of the user is checked.
                let others: Vec<String> = self
                    .sessions
                    .values()
                    .filter(|s| s.user == bare)
                    .map(|s| s.sender.clone())
                    .collect();
                for other in others {
                    out.extend(self.check(&other, now));
                }
                let presence = presence.map(parse_presence).unwrap_or(Presence {
                    priority: -1,
                    show: None,
                    status: None,
                });
                self.sessions.insert(
                    sender.clone(),
                    Session {
                        sender: sender.clone(),
                        user: bare.clone(),
                        resource: resource.clone(),
                        presence: presence.clone(),
                    },
                );
                out.push(ok_result(el));
                self.broadcasts.push(Broadcast {
                    user: bare,
                    resource,
                    presence: Some(presence),
                });
            } else if let Some(p) = presence {
                let presence = parse_presence(p);
                let session = self.sessions.get_mut(&sender).expect("checked");
                session.presence = presence.clone();
                self.broadcasts.push(Broadcast {
                    user: session.user.clone(),
                    resource: session.resource.clone(),
                    presence: Some(presence),
                });
            }
        } else if self.close(&sender) {
            out.push(ok_result(el));
        } else {
            out.push(error_result(
                el,
                "cancel",
                404,
                "item-not-found",
                TEXT_NOT_FOUND,
            ));
        }
        out
    }

    /// A CHECK_USER_CONNECTION to the session owned by `sender`, if there is one.
    pub fn check(&mut self, sender: &str, now: Instant) -> Option<Element> {
        let session = self.sessions.get(sender)?;
        self.next += 1;
        let id = format!("check-{}", self.next);
        let user = session.user.clone();
        let form = attr(Element::builder("x", NS_DATA), "type", "submit")
            .append(
                attr(Element::builder("field", NS_DATA), "var", "user-jid")
                    .append(Element::builder("value", NS_DATA).append(user.as_str())),
            )
            .build();
        let command = attr(
            Element::builder("command", NS_COMMANDS),
            "node",
            "CHECK_USER_CONNECTION",
        )
        .append(form)
        .build();
        self.checks.push(Check {
            id: id.clone(),
            to: sender.to_string(),
            user,
            outcome: CheckOutcome::Pending,
            sent: now,
        });
        Some(
            iq("get", &id, &self.sm_jid(), sender)
                .append(command)
                .build(),
        )
    }

    /// A real client of `user` logs in: every session of the user is checked.
    pub fn login_elsewhere(&mut self, user: &str, now: Instant) -> Vec<Element> {
        let senders: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.user == user)
            .map(|s| s.sender.clone())
            .collect();
        senders.iter().filter_map(|s| self.check(s, now)).collect()
    }

    /// When the earliest pending check times out.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.checks
            .iter()
            .filter(|c| c.outcome == CheckOutcome::Pending)
            .map(|c| c.sent + self.cfg.check_timeout)
            .min()
    }

    /// Close the sessions whose checks went unanswered until `now`.
    pub fn expire(&mut self, now: Instant) {
        let timeout = self.cfg.check_timeout;
        let expired: Vec<usize> = (0..self.checks.len())
            .filter(|&i| {
                self.checks[i].outcome == CheckOutcome::Pending
                    && self.checks[i].sent + timeout <= now
            })
            .collect();
        for i in expired {
            self.checks[i].outcome = CheckOutcome::TimedOut;
            let to = self.checks[i].to.clone();
            self.close(&to);
        }
    }
}

/// Whether `handshake` proves the secret for stream `id` (HandshakeProcessor).
pub fn handshake_ok(handshake: &Element, id: &str, secret: &str) -> bool {
    let Ok(h) = Handshake::try_from(handshake.clone()) else {
        return false;
    };
    h.data.is_some() && h == Handshake::from_stream_id_and_password(id.to_string(), secret)
}

enum Ctl {
    Drop,
    Check(String, oneshot::Sender<Option<String>>),
    LoginElsewhere(String, oneshot::Sender<Vec<String>>),
}

struct Shared {
    core: Mutex<SessionManager>,
    /// Bumped after every change of the core or the connection.
    changed: watch::Sender<u64>,
    /// Handshakes accepted so far.
    handshakes: Mutex<usize>,
    /// Refuse new connections (accept and close at once).
    refusing: Mutex<bool>,
}

/// The double behind a TCP listener on 127.0.0.1; dropping it stops everything.
pub struct TigaseDouble {
    /// The component port.
    pub port: u16,
    shared: Arc<Shared>,
    ctl: mpsc::UnboundedSender<Ctl>,
    task: JoinHandle<()>,
}

impl Drop for TigaseDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Stream = XmlStream<BufStream<TcpStream>, Element>;

impl TigaseDouble {
    /// Listen on a free loopback port.
    pub async fn start(cfg: DoubleConfig) -> TigaseDouble {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the double");
        let port = listener.local_addr().expect("double addr").port();
        let shared = Arc::new(Shared {
            core: Mutex::new(SessionManager::new(cfg)),
            changed: watch::channel(0).0,
            handshakes: Mutex::new(0),
            refusing: Mutex::new(false),
        });
        let (ctl, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(serve(listener, shared.clone(), rx));
        TigaseDouble {
            port,
            shared,
            ctl,
            task,
        }
    }

    /// The core, locked (do not hold across an await).
    pub fn core(&self) -> MutexGuard<'_, SessionManager> {
        self.shared.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stop (or resume) answering USER_STATUS.
    pub fn set_silent(&self, silent: bool) {
        self.core().silent = silent;
    }

    /// Refuse (or accept again) new connections.
    pub fn set_refusing(&self, refusing: bool) {
        *self.shared.refusing.lock().unwrap() = refusing;
    }

    /// Handshakes accepted so far.
    pub fn handshakes(&self) -> usize {
        *self.shared.handshakes.lock().unwrap()
    }

    /// Cut the component's connection without a stream footer; sessions stay.
    pub fn drop_connection(&self) {
        let _ = self.ctl.send(Ctl::Drop);
    }

    /// A Tigase restart: the connection is cut and every session is gone.
    pub fn restart(&self) {
        self.core().restart();
        let _ = self.ctl.send(Ctl::Drop);
        self.shared.changed.send_modify(|n| *n += 1);
    }

    /// Send a CHECK_USER_CONNECTION to the session owned by `sender`; its id, if sent.
    pub async fn check(&self, sender: &str) -> Option<String> {
        let (tx, rx) = oneshot::channel();
        self.ctl.send(Ctl::Check(sender.to_string(), tx)).ok()?;
        timeout(Duration::from_secs(5), rx).await.ok()?.ok()?
    }

    /// A real client of `user` logs in: checks go to all the user's sessions; their ids.
    pub async fn login_elsewhere(&self, user: &str) -> Vec<String> {
        let (tx, rx) = oneshot::channel();
        if self
            .ctl
            .send(Ctl::LoginElsewhere(user.to_string(), tx))
            .is_err()
        {
            return Vec::new();
        }
        timeout(Duration::from_secs(5), rx)
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default()
    }

    /// Wait (bounded) until `cond` holds; panics with `what` and the double's state otherwise.
    pub async fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        cond: impl Fn(&SessionManager) -> bool,
    ) {
        let mut rx = self.shared.changed.subscribe();
        let ok = timeout(limit, async {
            loop {
                if cond(&self.core()) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if ok.is_err() || !cond(&self.core()) {
            let core = self.core();
            panic!(
                "the Tigase double never saw: {what}\nsessions: {:#?}\ncommands: {:#?}\nchecks: {:#?}\nviolations: {:#?}",
                core.sessions(),
                core.commands,
                core.checks,
                core.violations
            );
        }
    }

    /// Wait (bounded) until `n` handshakes have been accepted.
    pub async fn wait_handshakes(&self, n: usize) {
        let mut rx = self.shared.changed.subscribe();
        let ok = timeout(Duration::from_secs(20), async {
            while self.handshakes() < n {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(
            ok.is_ok() && self.handshakes() >= n,
            "only {} handshake(s) with the Tigase double, expected {n}",
            self.handshakes()
        );
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut ctl: mpsc::UnboundedReceiver<Ctl>) {
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
            cmd = ctl.recv() => {
                match cmd {
                    // Nobody connected: nothing to cut, nowhere to send a check.
                    Some(Ctl::Drop) => {}
                    Some(Ctl::Check(_, tx)) => { let _ = tx.send(None); }
                    Some(Ctl::LoginElsewhere(_, tx)) => { let _ = tx.send(Vec::new()); }
                    None => return,
                }
                continue;
            }
        };
        if *shared.refusing.lock().unwrap() {
            drop(tcp);
            continue;
        }
        connection(tcp, &shared, &mut ctl).await;
        shared.changed.send_modify(|n| *n += 1);
    }
}

/// One component connection: header, handshake, then stanzas until it ends or is cut.
async fn connection(tcp: TcpStream, shared: &Shared, ctl: &mut mpsc::UnboundedReceiver<Ctl>) {
    let (component, secret) = {
        let core = shared.core.lock().unwrap();
        (core.cfg.component.clone(), core.cfg.secret.clone())
    };
    let id = format!("{:016x}", rand::random::<u64>());
    let long = Timeouts {
        read_timeout: Duration::from_secs(600),
        response_timeout: Duration::from_secs(600),
    };
    let header = StreamHeader {
        from: Some(component.clone().into()),
        to: None,
        id: Some(id.clone().into()),
    };
    let Ok(Ok(mut pending)) = timeout(
        Duration::from_secs(10),
        initiate_stream(BufStream::new(tcp), NS_COMPONENT, header, long),
    )
    .await
    else {
        return;
    };
    let peer = pending.take_header();
    let mut stream: Stream = pending.skip_features();
    if peer.to.as_deref() != Some(component.as_str()) {
        close(&mut stream).await;
        return;
    }
    let handshake = timeout(Duration::from_secs(10), async {
        loop {
            match stream.next().await {
                Some(Ok(el)) => return Some(el),
                Some(Err(ReadError::SoftTimeout)) => {}
                _ => return None,
            }
        }
    })
    .await;
    let Ok(Some(handshake)) = handshake else {
        return;
    };
    if !handshake.is("handshake", NS_COMPONENT) || !handshake_ok(&handshake, &id, &secret) {
        close(&mut stream).await;
        return;
    }
    if stream
        .send(&Element::builder("handshake", NS_COMPONENT).build())
        .await
        .is_err()
    {
        return;
    }
    *shared.handshakes.lock().unwrap() += 1;
    shared.changed.send_modify(|n| *n += 1);
    loop {
        let next = shared.core.lock().unwrap().next_expiry();
        let out = tokio::select! {
            read = stream.next() => match read {
                Some(Ok(el)) => shared.core.lock().unwrap().handle(&el, Instant::now()),
                Some(Err(ReadError::SoftTimeout)) | Some(Err(ReadError::ParseError(_))) => Vec::new(),
                Some(Err(ReadError::StreamFooterReceived)) => {
                    close(&mut stream).await;
                    return;
                }
                Some(Err(ReadError::HardError(_))) | None => return,
            },
            cmd = ctl.recv() => match cmd {
                Some(Ctl::Drop) | None => return, // the TCP connection is dropped, no footer
                Some(Ctl::Check(sender, tx)) => {
                    let el = shared.core.lock().unwrap().check(&sender, Instant::now());
                    let _ = tx.send(el.as_ref().and_then(|e| e.attr("id")).map(str::to_string));
                    el.into_iter().collect()
                }
                Some(Ctl::LoginElsewhere(user, tx)) => {
                    let els = shared.core.lock().unwrap().login_elsewhere(&user, Instant::now());
                    let _ = tx.send(els.iter().filter_map(|e| e.attr("id")).map(str::to_string).collect());
                    els
                }
            },
            _ = async { tokio::time::sleep_until(next.unwrap()).await }, if next.is_some() => {
                shared.core.lock().unwrap().expire(Instant::now());
                Vec::new()
            }
        };
        shared.changed.send_modify(|n| *n += 1);
        for el in out {
            if stream.send(&el).await.is_err() {
                return;
            }
        }
    }
}

/// Send the stream footer and close, as Tigase's `serv.stop()` does.
async fn close(stream: &mut Stream) {
    let _ = timeout(Duration::from_secs(2), stream.shutdown()).await;
}

/// The bare JID `user@domain` as the double records it.
pub fn bare(user: &str, domain: &str) -> String {
    BareJid::new(&format!("{user}@{domain}"))
        .expect("valid test JID")
        .to_string()
}
