//! Building and parsing the stanzas extpresence exchanges with the server.
//!
//! Outgoing stanzas are [`Outbound`] values, or for a fan-out a [`PresenceBatch`] of presences
//! rendered once by a [`PresenceTemplate`]; both can only be built here and every stanza in them
//! carries a `to` (ejabberd drops a component that sends a stanza without one). Parsing covers
//! XEP-0356 privilege advertisements and roster results; xmpp-parsers has no XEP-0356 types, so
//! those are minidom.
//! Tigase's session-manager commands (`USER_STATUS`, `CHECK_USER_CONNECTION`) are XEP-0050
//! `<command/>`s with a XEP-0004 form, also built and read as minidom elements (xmpp-parsers 0.23
//! has no XEP-0050 types).

use std::collections::BTreeMap;

use jid::{BareJid, FullJid, Jid};
use minidom::rxml::xml_ncname;
use minidom::Element;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::message::{Lang, Message};
use xmpp_parsers::presence::{Presence, Priority, Show as XShow, Type as PresenceType};
use xmpp_parsers::roster::{Roster, Subscription};
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

use crate::model::{Announced, RosterItem, Show, Status};

/// XEP-0356 namespaces we understand.
pub const NS_PRIVILEGE_1: &str = "urn:xmpp:privilege:1";
/// XEP-0356 version 2 (Prosody's mod_privilege).
pub const NS_PRIVILEGE_2: &str = "urn:xmpp:privilege:2";
const NS_ROSTER: &str = "jabber:iq:roster";
/// XEP-0050 ad-hoc commands: Tigase's session-manager commands use this element.
pub const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
const NS_DATA: &str = "jabber:x:data";
/// Tigase re-namespaces the `<presence/>` of a USER_STATUS command to `jabber:client`
/// (SessionManager.java); we send it that way.
const NS_CLIENT: &str = "jabber:client";
/// Tigase's command creating, updating or closing a synthetic session.
pub const NODE_USER_STATUS: &str = "USER_STATUS";
/// Tigase's command asking a session's owner whether the session is still alive.
pub const NODE_CHECK_USER_CONNECTION: &str = "CHECK_USER_CONNECTION";
const NS_PING: &str = "urn:xmpp:ping";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
/// XEP-0203 Delayed Delivery.
const NS_DELAY: &str = "urn:xmpp:delay";
const DISCO_INFO: &str = "<query xmlns='http://jabber.org/protocol/disco#info'>\
    <identity category='component' type='presence' name='extpresence'/>\
    <feature var='http://jabber.org/protocol/disco#info'/><feature var='urn:xmpp:ping'/></query>";

/// A stanza ready to go on the wire. It always has a `to`.
#[derive(Debug)]
pub struct Outbound(Box<Stanza>);

impl Outbound {
    /// The stanza.
    pub fn stanza(&self) -> &Stanza {
        &self.0
    }

    /// Unwrap into the stanza.
    pub fn into_stanza(self) -> Stanza {
        *self.0
    }
}

fn to_xshow(show: Show) -> XShow {
    match show {
        Show::Chat => XShow::Chat,
        Show::Away => XShow::Away,
        Show::Xa => XShow::Xa,
        Show::Dnd => XShow::Dnd,
    }
}

/// The `id` of every presence we send: random per process, so a presence the server forwards
/// back with it is our own echo, and one without it a real session — also on a resource named
/// like one we hold (a real client cannot know the value; a contact who received it could copy
/// it, but only to hide its own session from us).
pub fn echo_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("extpresence-{:016x}", rand::random::<u64>()))
}

/// Whether `p` is one of our own presences, forwarded back to us.
pub fn is_own_echo(p: &Presence) -> bool {
    p.id.as_deref() == Some(echo_id())
}

/// Available presence of `from` (a user's synthetic resource) directed to `to`.
pub fn presence(from: &FullJid, to: Jid, status: &Status) -> Outbound {
    let mut p = Presence::new(PresenceType::None)
        .with_from(from.clone())
        .with_to(to);
    p.id = Some(echo_id().to_string());
    p.show = status.show.map(to_xshow);
    p.priority = Priority(status.priority);
    if let Some(text) = &status.text {
        p.statuses = BTreeMap::from([(Lang::from(""), text.clone())]);
    }
    Outbound(Box::new(p.into()))
}

/// `unavailable` presence of `from` directed to `to`.
pub fn unavailable(from: &FullJid, to: Jid) -> Outbound {
    let mut p = Presence::new(PresenceType::Unavailable)
        .with_from(from.clone())
        .with_to(to);
    p.id = Some(echo_id().to_string());
    Outbound(Box::new(p.into()))
}

/// The presence of one synthetic resource (available with its status, or `unavailable`),
/// rendered as XML text once and then addressed to any number of recipients: a fan-out sends the
/// same stanza to every contact with only `to` changed. Rendering it through xmpp-parsers and
/// the stream's XML writer once per contact was ~40% of extpresence's CPU when fanning out on
/// ejabberd (benchmark P1/P2, `perf`); see BENCHMARKS.md. The text parses to what [`presence`]
/// and [`unavailable`] build (a unit test compares them).
#[derive(Debug, Clone)]
pub struct PresenceTemplate {
    /// `<presence xmlns='jabber:component:accept' id='…' from='…' to='`
    head: String,
    /// `'>…</presence>` or `' type='unavailable'/>`
    tail: String,
}

impl PresenceTemplate {
    /// `from`'s presence: available with `status`, or `unavailable` for `None`.
    pub fn new(from: &FullJid, status: Option<&Status>) -> PresenceTemplate {
        let mut head = String::with_capacity(80 + from.as_str().len());
        head.push_str("<presence xmlns='jabber:component:accept' id='");
        head.push_str(echo_id());
        head.push_str("' from='");
        escape_into(&mut head, from.as_str(), true);
        head.push_str("' to='");
        let tail = match status {
            None => "' type='unavailable'/>".to_string(),
            Some(s) => {
                let mut t = String::with_capacity(64 + s.text.as_deref().map_or(0, str::len));
                t.push_str("'>");
                if let Some(show) = s.show {
                    t.push_str("<show>");
                    t.push_str(show.as_str());
                    t.push_str("</show>");
                }
                if let Some(text) = s.text.as_deref().filter(|t| !t.is_empty()) {
                    t.push_str("<status>");
                    escape_into(&mut t, text, false);
                    t.push_str("</status>");
                }
                t.push_str("<priority>");
                t.push_str(&s.priority.to_string());
                t.push_str("</priority></presence>");
                t
            }
        };
        PresenceTemplate { head, tail }
    }

    /// Append this presence, addressed to `to`, to `batch`.
    pub fn push_to(&self, batch: &mut PresenceBatch, to: &str) {
        batch.xml.push_str(&self.head);
        escape_into(&mut batch.xml, to, true);
        batch.xml.push_str(&self.tail);
        batch.count += 1;
    }
}

/// Presences rendered by [`PresenceTemplate`], each with a `to`, written to the stream as they
/// are, in order, in one piece.
#[derive(Debug, Default)]
pub struct PresenceBatch {
    xml: String,
    count: usize,
}

impl PresenceBatch {
    /// An empty batch.
    pub fn new() -> PresenceBatch {
        PresenceBatch::default()
    }

    /// How many presences it holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The XML text of every presence, one after the other.
    pub fn xml(&self) -> &str {
        &self.xml
    }
}

impl PresenceBatch {
    /// A batch of one presence sent in a user's name: `type_` (`subscribe`, `probe`) from the
    /// user's bare JID `from` to `to`, with `id`, `xml:lang` and `children` (validated XML
    /// elements, e.g. a subscription request's custom XML) as given; `Err` when a child cannot
    /// be written ([`render`]).
    pub fn in_users_name(
        type_: &str,
        from: &BareJid,
        to: &BareJid,
        id: &str,
        lang: Option<&str>,
        children: &[Element],
    ) -> Result<PresenceBatch, XmlError> {
        let mut xml = String::with_capacity(160);
        xml.push_str("<presence xmlns='jabber:component:accept' type='");
        escape_into(&mut xml, type_, true);
        xml.push_str("' from='");
        escape_into(&mut xml, from.as_str(), true);
        xml.push_str("' to='");
        escape_into(&mut xml, to.as_str(), true);
        xml.push_str("' id='");
        escape_into(&mut xml, id, true);
        if let Some(lang) = lang {
            xml.push_str("' xml:lang='");
            escape_into(&mut xml, lang, true);
        }
        if children.is_empty() {
            xml.push_str("'/>");
        } else {
            xml.push_str("'>");
            for child in children {
                xml.push_str(&render(child)?);
            }
            xml.push_str("</presence>");
        }
        Ok(PresenceBatch { xml, count: 1 })
    }

    /// Append the presences of `other`.
    pub fn append(&mut self, other: PresenceBatch) {
        self.xml.push_str(&other.xml);
        self.count += other.count;
    }
}

/// XML-escape `s` into `out`: `&`, `<`, `>` always; quotes and whitespace other than a space too
/// in an attribute value (where a parser would normalise them); `\r` also in text.
fn escape_into(out: &mut String, s: &str, attribute: bool) {
    let mut rest = s;
    while let Some(i) = rest.find(|c: char| {
        matches!(c, '&' | '<' | '>' | '\r') || (attribute && matches!(c, '\'' | '"' | '\n' | '\t'))
    }) {
        out.push_str(&rest[..i]);
        let c = rest[i..].chars().next().expect("found above");
        out.push_str(match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            '\'' => "&apos;",
            '"' => "&quot;",
            '\n' => "&#xA;",
            '\t' => "&#x9;",
            _ => "&#xD;",
        });
        rest = &rest[i + c.len_utf8()..];
    }
    out.push_str(rest);
}

/// Privileged roster get (XEP-0356) for `user`, sent from the component.
pub fn roster_get(component: &BareJid, user: &BareJid, id: String) -> Outbound {
    Outbound(Box::new(
        Iq::Get {
            from: Some(component.clone().into()),
            to: Some(user.clone().into()),
            id,
            payload: Element::builder("query", NS_ROSTER).build(),
        }
        .into(),
    ))
}

/// Privileged roster set (XEP-0356) of `user`'s item for `item.jid`, with `subscription`
/// (Prosody applies it as given; ejabberd 23.01 refuses every privileged set).
pub fn roster_set(
    component: &BareJid,
    user: &BareJid,
    item: &RosterItem,
    subscription: &str,
    id: String,
) -> Outbound {
    use xmpp_parsers::roster::{Ask, Group, Item};
    let subscription = match subscription {
        "to" => Subscription::To,
        "from" => Subscription::From,
        "both" => Subscription::Both,
        _ => Subscription::None,
    };
    let roster = Roster {
        ver: None,
        items: vec![Item {
            jid: item.jid.clone(),
            name: item.name.clone(),
            subscription,
            ask: Ask::None,
            groups: item.groups.iter().map(|g| Group(g.clone())).collect(),
            approved: None,
        }],
    };
    Outbound(Box::new(
        Iq::Set {
            from: Some(component.clone().into()),
            to: Some(user.clone().into()),
            id,
            payload: roster.into(),
        }
        .into(),
    ))
}

/// XMPP ping (XEP-0199) from the component to `to`, used as keepalive.
pub fn ping(component: &BareJid, to: Jid, id: String) -> Outbound {
    Outbound(Box::new(
        Iq::Get {
            from: Some(component.clone().into()),
            to: Some(to),
            id,
            payload: Element::builder("ping", NS_PING).build(),
        }
        .into(),
    ))
}

fn data_field(var: &str, value: &str) -> Element {
    Element::builder("field", NS_DATA)
        .attr(xml_ncname!("var").into(), var)
        .append(Element::builder("value", NS_DATA).append(value))
        .build()
}

fn text_child(name: &str, text: impl Into<String>) -> Element {
    Element::builder(name, NS_CLIENT)
        .append(text.into())
        .build()
}

/// Tigase's `USER_STATUS` command (SessionManager.java, as UserStatus.groovy sends it): from
/// `sender`, the synthetic session's own address (the component with a resource per
/// user+resource), to the session manager `sess_man`, for `user`. `Some(status)` opens the
/// session or updates its presence (`available=true` and a `<presence/>` with priority, show and
/// status); `None` closes it (`available=false`, no presence).
pub fn user_status(
    sender: &FullJid,
    sess_man: &BareJid,
    id: String,
    user: &FullJid,
    status: Option<&Status>,
) -> Outbound {
    let form = Element::builder("x", NS_DATA)
        .attr(xml_ncname!("type").into(), "submit")
        .append(data_field("jid", user.as_str()))
        .append(data_field(
            "available",
            if status.is_some() { "true" } else { "false" },
        ))
        .build();
    let mut command = Element::builder("command", NS_COMMANDS)
        .attr(xml_ncname!("node").into(), NODE_USER_STATUS)
        .append(form);
    if let Some(status) = status {
        let mut presence = Element::builder("presence", NS_CLIENT)
            .append(text_child("priority", status.priority.to_string()));
        if let Some(show) = status.show {
            presence = presence.append(text_child("show", show.as_str()));
        }
        if let Some(text) = &status.text {
            presence = presence.append(text_child("status", text.clone()));
        }
        command = command.append(presence.build());
    }
    Outbound(Box::new(
        Iq::Set {
            from: Some(sender.clone().into()),
            to: Some(sess_man.clone().into()),
            id,
            payload: command.build(),
        }
        .into(),
    ))
}

/// A `CHECK_USER_CONNECTION` request: Tigase's session manager asks the owner of a session
/// (`to`, one of our synthetic session addresses) whether it is alive; no result within 30 s,
/// or an error, closes the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionCheck {
    /// The request's id, echoed in the answer.
    pub id: String,
    /// The session manager asking (`sess-man@domain`); the answer goes there.
    pub from: Jid,
    /// The session address asked about.
    pub to: FullJid,
    /// The `user-jid` field: the user whose session is checked.
    pub user: Option<BareJid>,
}

/// The value of the form field `var` in the XEP-0004 form of a `<command/>`.
fn command_field(command: &Element, var: &str) -> Option<String> {
    command
        .get_child("x", NS_DATA)?
        .children()
        .find(|f| f.is("field", NS_DATA) && f.attr("var") == Some(var))?
        .get_child("value", NS_DATA)
        .map(Element::text)
}

/// `iq` as a `CHECK_USER_CONNECTION` request to a full JID, if it is one.
pub fn connection_check(iq: &Iq) -> Option<ConnectionCheck> {
    let (from, to, id, payload) = match iq {
        Iq::Get {
            from,
            to,
            id,
            payload,
        }
        | Iq::Set {
            from,
            to,
            id,
            payload,
        } => (from.as_ref()?, to.as_ref()?, id, payload),
        _ => return None,
    };
    if !payload.is("command", NS_COMMANDS)
        || payload.attr("node") != Some(NODE_CHECK_USER_CONNECTION)
    {
        return None;
    }
    Some(ConnectionCheck {
        id: id.clone(),
        from: from.clone(),
        to: to.try_as_full().ok()?.clone(),
        user: command_field(payload, "user-jid").and_then(|u| BareJid::new(u.trim()).ok()),
    })
}

/// Our answer to a [`ConnectionCheck`]: an empty result ("the session is alive"), sent from the
/// address that was asked. Every check addressed to us is answered so: Tigase closes a session
/// whose check goes unanswered or is refused.
pub fn connection_check_answer(check: &ConnectionCheck) -> Outbound {
    Outbound(Box::new(
        Iq::Result {
            from: Some(Jid::from(check.to.clone())),
            to: Some(check.from.clone()),
            id: check.id.clone(),
            payload: None,
        }
        .into(),
    ))
}

/// An error reply as text an admin can act on: the defined condition, then the server's text
/// (`forbidden: Only trusted entity can do it.`).
pub fn error_reason(error: &StanzaError) -> String {
    let condition = Element::from(error.defined_condition.clone())
        .name()
        .to_string();
    match error.texts.values().next() {
        Some(text) if !text.trim().is_empty() => format!("{condition}: {}", text.trim()),
        _ => condition,
    }
}

/// Our answer to an iq request addressed to the component, or `None` when `iq` is not a request
/// or has no sender. Ping gets a result, disco#info our identity, anything else
/// `service-unavailable`.
pub fn answer_request(component: &BareJid, iq: &Iq) -> Option<Outbound> {
    let (from, id, payload, is_get) = match iq {
        Iq::Get {
            from, id, payload, ..
        } => (from.as_ref()?, id, payload, true),
        Iq::Set {
            from, id, payload, ..
        } => (from.as_ref()?, id, payload, false),
        _ => return None,
    };
    let me: Jid = component.clone().into();
    let reply = if is_get && payload.is("ping", NS_PING) {
        Iq::Result {
            from: Some(me),
            to: Some(from.clone()),
            id: id.clone(),
            payload: None,
        }
    } else if is_get && payload.is("query", NS_DISCO_INFO) {
        let query: Element = DISCO_INFO.parse().expect("static disco#info parses");
        Iq::Result {
            from: Some(me),
            to: Some(from.clone()),
            id: id.clone(),
            payload: Some(query),
        }
    } else {
        Iq::Error {
            from: Some(me),
            to: Some(from.clone()),
            id: id.clone(),
            payload: None,
            error: StanzaError::new(
                ErrorType::Cancel,
                DefinedCondition::ServiceUnavailable,
                "en",
                "extpresence does not handle this request",
            ),
        }
    };
    Some(Outbound(Box::new(reply.into())))
}

/// What the server granted us in a XEP-0356 advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileges {
    /// The namespace version used (`urn:xmpp:privilege:1` or `:2`).
    pub namespace: &'static str,
    /// Roster access (`none`, `get`, `set`, `both`), if advertised.
    pub roster: Option<String>,
    /// Presence access (`managed_entity`, `roster`), if advertised.
    pub presence: Option<String>,
}

impl Privileges {
    /// Whether we may read rosters.
    pub fn can_get_roster(&self) -> bool {
        matches!(self.roster.as_deref(), Some("get" | "both"))
    }

    /// Whether the server forwards users' presence to us.
    pub fn gets_presence(&self) -> bool {
        matches!(self.presence.as_deref(), Some("managed_entity" | "roster"))
    }
}

/// The privileges advertised in `message`, if it is a XEP-0356 advertisement (v1 or v2).
pub fn parse_privileges(message: &Message) -> Option<Privileges> {
    message.payloads.iter().find_map(|el| {
        let namespace = if el.is("privilege", NS_PRIVILEGE_1) {
            NS_PRIVILEGE_1
        } else if el.is("privilege", NS_PRIVILEGE_2) {
            NS_PRIVILEGE_2
        } else {
            return None;
        };
        let mut p = Privileges {
            namespace,
            roster: None,
            presence: None,
        };
        for perm in el.children().filter(|c| c.is("perm", namespace)) {
            let kind = perm.attr("type").map(str::to_string);
            match perm.attr("access") {
                Some("roster") => p.roster = kind,
                Some("presence") => p.presence = kind,
                _ => {}
            }
        }
        Some(p)
    })
}

/// Contacts of a roster result that receive the user's presence (subscription `from` or `both`).
pub fn presence_subscribers(payload: Option<&Element>) -> Result<Vec<BareJid>, RosterError> {
    let Some(payload) = payload else {
        // An empty result means an empty roster.
        return Ok(Vec::new());
    };
    let roster = Roster::try_from(payload.clone()).map_err(|e| RosterError(e.to_string()))?;
    Ok(roster
        .items
        .into_iter()
        .filter(|i| matches!(i.subscription, Subscription::From | Subscription::Both))
        .map(|i| i.jid)
        .collect())
}

/// Every item of a roster result (a `remove` item is skipped: it is no item).
pub fn roster_items(payload: Option<&Element>) -> Result<Vec<RosterItem>, RosterError> {
    let Some(payload) = payload else {
        return Ok(Vec::new());
    };
    let roster = Roster::try_from(payload.clone()).map_err(|e| RosterError(e.to_string()))?;
    Ok(roster
        .items
        .into_iter()
        .filter_map(|i| {
            let subscription = match i.subscription {
                Subscription::None => "none",
                Subscription::To => "to",
                Subscription::From => "from",
                Subscription::Both => "both",
                Subscription::Remove => return None,
            };
            Some(RosterItem {
                jid: i.jid,
                subscription,
                asked: i.ask == xmpp_parsers::roster::Ask::Subscribe,
                name: i.name.filter(|n| !n.is_empty()),
                groups: i.groups.into_iter().map(|g| g.0).collect(),
            })
        })
        .collect())
}

/// A disco#info query from the component to the server (`to` a served domain): the answer says
/// which server it is, and comes after everything the server sent before it.
pub fn server_info_query(component: &BareJid, to: &BareJid, id: String) -> Outbound {
    let iq = Iq::Get {
        from: Some(component.clone().into()),
        to: Some(to.clone().into()),
        id,
        payload: Element::builder("query", NS_DISCO_INFO).build(),
    };
    Outbound(Box::new(iq.into()))
}

/// The server's name in a disco#info answer (the `name` of its `server` identity), if any.
pub fn server_name(payload: Option<&Element>) -> Option<String> {
    payload?
        .children()
        .filter(|c| c.is("identity", NS_DISCO_INFO))
        .find(|c| c.attr("category") == Some("server"))
        .and_then(|c| c.attr("name"))
        .map(str::to_string)
}

/// What a presence forwarded by the server says of its sender's session, received at `now`
/// (ms): `None` for presence types other than available and `unavailable`. An announcement of an
/// older presence (a XEP-0203 delay stamp) dates from its stamp.
pub fn announced(p: &Presence, now: u64) -> Option<Announced> {
    let status = || {
        p.statuses
            .get("")
            .or_else(|| p.statuses.values().next())
            .map(|s| s.chars().filter(|c| !c.is_control()).take(1024).collect())
    };
    match p.type_ {
        PresenceType::None => {
            let show = p.show.as_ref().map(|s| match s {
                XShow::Away => Show::Away,
                XShow::Chat => Show::Chat,
                XShow::Dnd => Show::Dnd,
                XShow::Xa => Show::Xa,
            });
            let since = p
                .payloads
                .iter()
                .find(|el| el.is("delay", NS_DELAY))
                .and_then(|el| el.attr("stamp"))
                .and_then(|st| chrono::DateTime::parse_from_rfc3339(st).ok())
                .map(|t| (t.timestamp_millis().max(0) as u64).min(now))
                .unwrap_or(now);
            // The other children (capabilities, avatar hash…), as sent; the delay stamp is
            // `since`. One that cannot be written is left out (never a panic of the link).
            let extra: String = p
                .payloads
                .iter()
                .filter(|el| !el.is("delay", NS_DELAY))
                .filter_map(|el| render(el).ok())
                .collect();
            Some(Announced::Available {
                show,
                status: status(),
                priority: p.priority.0,
                since,
                extra: (!extra.is_empty()).then_some(extra),
            })
        }
        PresenceType::Unavailable => Some(Announced::Unavailable { status: status() }),
        _ => None,
    }
}

/// The element that wraps XML content while it is parsed: the parser stops after one root
/// element, so whatever follows it is only seen (and refused) inside a wrapper.
const WRAPPER: &str = "extpresence-body";

/// Why XML given by a client cannot be taken, or an element cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// `<!` in the text.
    #[error("DOCTYPE, entity declarations, CDATA and comments are not allowed")]
    Declarations,
    /// The wrapper's name in the text.
    #[error("<{WRAPPER}> is not allowed")]
    Wrapper,
    /// `<?xml` without `?>`.
    #[error("unterminated XML declaration")]
    UnterminatedDeclaration,
    /// The reserved prefixes or namespaces declared, or used for elements.
    #[error("the reserved prefixes xml and xmlns and their namespaces may not be declared or used for elements")]
    Reserved,
    /// An attribute twice on one element.
    #[error("duplicate attribute {0}")]
    DuplicateAttribute(String),
    /// Not well-formed (the parser's message).
    #[error("{0}")]
    Malformed(String),
    /// The writer failed.
    #[error("it cannot be written as XML: {0}")]
    Unwritable(String),
    /// The writer panicked (e.g. a reserved namespace).
    #[error("it cannot be written as XML")]
    WriterPanicked,
    /// The writer wrote something that is not UTF-8.
    #[error(transparent)]
    NotUtf8(#[from] std::string::FromUtf8Error),
}

/// A roster result that cannot be parsed (the parser's message).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RosterError(String);

/// Parse XML content (elements and text) given by an API client: inside a wrapper element whose
/// default namespace is `ns` (returned; its children and texts are the content). An XML
/// declaration at the start is skipped; `<!` (DOCTYPE, entity declarations, CDATA, comments) is
/// refused, and so is the wrapper's name; so are duplicate attributes and the reserved prefixes
/// and namespaces ([`check_well_formed`]).
pub fn parse_fragment(text: &str, ns: &str) -> Result<Element, XmlError> {
    if text.contains("<!") {
        return Err(XmlError::Declarations);
    }
    if text.contains(WRAPPER) {
        return Err(XmlError::Wrapper);
    }
    let content = match text.trim_start().strip_prefix("<?xml") {
        Some(rest) => match rest.split_once("?>") {
            Some((_, content)) => content,
            None => return Err(XmlError::UnterminatedDeclaration),
        },
        None => text,
    };
    let wrapped = format!("<{WRAPPER}>{content}</{WRAPPER}>");
    check_well_formed(&wrapped)?;
    Element::from_reader_with_prefixes(wrapped.as_bytes(), ns.to_string())
        .map_err(|e| XmlError::Malformed(e.to_string()))
}

/// What minidom's tree builder does not check, checked with the tokenizer it uses (rxml): the
/// namespace-aware reader refuses duplicate attributes (also two prefixes of one namespace,
/// XML 1.0 "Unique Att Spec", Namespaces "Attributes Unique"), undeclared prefixes and the
/// reserved bindings it knows; the raw pass refuses what it lets through: a second default
/// `xmlns`, and any declaration of the reserved prefixes `xml` and `xmlns` or of their namespaces
/// (minidom's writer panics on them). Elements in those namespaces are refused too.
fn check_well_formed(wrapped: &str) -> Result<(), XmlError> {
    use minidom::rxml::{Event, RawEvent, RawReader, Reader, XMLNS_XML, XMLNS_XMLNS};
    let mut raw = RawReader::new(wrapped.as_bytes());
    let mut seen: Vec<(Option<String>, String)> = Vec::new();
    while let Some(ev) = raw.read().map_err(|e| XmlError::Malformed(e.to_string()))? {
        match ev {
            RawEvent::ElementHeadOpen(..) => seen.clear(),
            RawEvent::Attribute(_, (prefix, local), value) => {
                let prefix = prefix.map(|p| p.as_str().to_string());
                let local = local.as_str().to_string();
                let declares = match prefix.as_deref() {
                    Some("xmlns") => {
                        if local == "xml" || local == "xmlns" {
                            return Err(XmlError::Reserved);
                        }
                        true
                    }
                    None => local == "xmlns",
                    Some(_) => false,
                };
                if declares && (value == XMLNS_XML || value == XMLNS_XMLNS) {
                    return Err(XmlError::Reserved);
                }
                let key = (prefix, local);
                if seen.contains(&key) {
                    let name = match &key.0 {
                        Some(p) => format!("{p}:{}", key.1),
                        None => key.1,
                    };
                    return Err(XmlError::DuplicateAttribute(name));
                }
                seen.push(key);
            }
            _ => {}
        }
    }
    let mut reader = Reader::new(wrapped.as_bytes());
    while let Some(ev) = reader
        .read()
        .map_err(|e| XmlError::Malformed(e.to_string()))?
    {
        if let Event::StartElement(_, (ns, _), attrs) = ev {
            if ns == XMLNS_XML
                || ns == XMLNS_XMLNS
                || attrs.iter().any(|((ns, _), _)| ns == XMLNS_XMLNS)
            {
                return Err(XmlError::Reserved);
            }
        }
    }
    Ok(())
}

/// Serialise an element, or say why it cannot be: minidom's writer panics on what it cannot
/// write (e.g. a reserved namespace); the panic is caught here so that it never ends a task.
/// Content from clients is rendered once when it is accepted, so what was accepted renders.
pub fn render(el: &Element) -> Result<String, XmlError> {
    let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut out = Vec::new();
        el.write_to(&mut out).map(|()| out)
    }));
    match written {
        Ok(Ok(bytes)) => Ok(String::from_utf8(bytes)?),
        Ok(Err(e)) => Err(XmlError::Unwritable(e.to_string())),
        Err(_) => Err(XmlError::WriterPanicked),
    }
}

/// Serialise a stanza (for logs at TRACE and tests).
pub fn to_xml(stanza: &Stanza) -> String {
    let el: Element = match stanza {
        Stanza::Iq(i) => i.clone().into(),
        Stanza::Message(m) => m.clone().into(),
        Stanza::Presence(p) => p.clone().into(),
    };
    String::from(&el)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> Jid {
        Jid::new(s).unwrap()
    }

    #[test]
    fn presence_has_to_show_status_priority() {
        let from = FullJid::new("alice@example.com/tigase-external").unwrap();
        let st = Status {
            show: Some(Show::Xa),
            text: Some("On the phone".into()),
            priority: -1,
        };
        let xml = to_xml(presence(&from, jid("bob@example.com"), &st).stanza());
        for part in [
            "from='alice@example.com/tigase-external'",
            "to='bob@example.com'",
            "<show>xa</show>",
            "<status>On the phone</status>",
            "<priority>-1</priority>",
        ] {
            assert!(xml.contains(part), "{part} missing in {xml}");
        }
        let xml = to_xml(unavailable(&from, jid("bob@example.com")).stanza());
        assert!(xml.contains("type='unavailable'") && xml.contains("to='bob@example.com'"));
    }

    /// Parse every presence of a batch's text (as the server would) into xmpp-parsers values.
    fn parse_batch(batch: &PresenceBatch) -> Vec<Presence> {
        let wrapped = format!(
            "<stream xmlns='jabber:component:accept'>{}</stream>",
            batch.xml()
        );
        let root: Element = wrapped.parse().expect("well-formed XML");
        root.children()
            .map(|e| Presence::try_from(e.clone()).expect("a valid presence"))
            .collect()
    }

    fn as_presence(o: Outbound) -> Presence {
        match o.into_stanza() {
            Stanza::Presence(p) => p,
            other => panic!("not a presence: {other:?}"),
        }
    }

    #[test]
    fn template_renders_what_the_builders_build() {
        let froms = [
            FullJid::new("alice@example.com/tigase-external").unwrap(),
            FullJid::new("alice@example.com/ph'o\"ne <&> x").unwrap(),
        ];
        let statuses = [
            None,
            Some(Status {
                show: Some(Show::Dnd),
                text: Some("Im Gespräch <&> 'quoted' \"too\"\nline\r\ttab ]]>".into()),
                priority: -128,
            }),
            Some(Status {
                show: None,
                text: None,
                priority: 0,
            }),
            Some(Status {
                show: Some(Show::Chat),
                text: Some(String::new()),
                priority: 127,
            }),
        ];
        let tos = [
            jid("bob@example.com"),
            jid("bob@example.com/phone 'x' \"y\" <z> &"),
            jid("example.net"),
        ];
        for from in &froms {
            for status in &statuses {
                let template = PresenceTemplate::new(from, status.as_ref());
                let mut batch = PresenceBatch::new();
                for to in &tos {
                    template.push_to(&mut batch, to.as_str());
                }
                assert_eq!(batch.len(), tos.len());
                let parsed = parse_batch(&batch);
                for (to, got) in tos.iter().zip(parsed) {
                    let want = as_presence(match status {
                        Some(st) => presence(from, to.clone(), st),
                        None => unavailable(from, to.clone()),
                    });
                    assert_eq!(got.from, want.from, "{}", batch.xml());
                    assert_eq!(got.id.as_deref(), Some(echo_id()), "{}", batch.xml());
                    assert_eq!(got.id, want.id, "{}", batch.xml());
                    assert_eq!(got.to, want.to, "{}", batch.xml());
                    assert_eq!(got.type_, want.type_, "{}", batch.xml());
                    assert_eq!(got.show, want.show, "{}", batch.xml());
                    assert_eq!(got.priority, want.priority, "{}", batch.xml());
                    // An empty status text carries nothing (the template leaves it out).
                    let text = |p: &Presence| p.statuses.values().find(|t| !t.is_empty()).cloned();
                    assert_eq!(text(&got), text(&want), "{}", batch.xml());
                    if status.is_none() {
                        assert!(got.statuses.is_empty() && got.show.is_none());
                    }
                }
            }
        }
    }

    #[test]
    fn privileges_v1_and_v2() {
        for (ns, presence) in [
            (NS_PRIVILEGE_2, "roster"),
            (NS_PRIVILEGE_1, "managed_entity"),
        ] {
            let xml = format!(
                "<message xmlns='jabber:component:accept' from='example.com' to='status.example.com'>\
                 <privilege xmlns='{ns}'><perm access='roster' type='get'/>\
                 <perm access='message' type='none'/><perm access='presence' type='{presence}'/></privilege></message>"
            );
            let el: Element = xml.parse().unwrap();
            let m = Message::try_from(el).unwrap();
            let p = parse_privileges(&m).unwrap();
            assert_eq!(p.namespace, ns);
            assert!(p.can_get_roster() && p.gets_presence());
            assert_eq!(p.presence.as_deref(), Some(presence));
        }
    }

    #[test]
    fn roster_filters_subscriptions() {
        let el: Element = "<query xmlns='jabber:iq:roster'>\
            <item jid='bob@example.com' subscription='both'/>\
            <item jid='dave@example.com' subscription='from'/>\
            <item jid='erin@example.com' subscription='to'/>\
            <item jid='frank@example.com' subscription='none' ask='subscribe'/>\
            <item jid='carl@example.com'/></query>"
            .parse()
            .unwrap();
        let subs = presence_subscribers(Some(&el)).unwrap();
        let names: Vec<_> = subs.iter().map(|j| j.as_str()).collect();
        assert_eq!(names, ["bob@example.com", "dave@example.com"]);
        assert!(presence_subscribers(None).unwrap().is_empty());
    }

    #[test]
    fn answers() {
        let me = BareJid::new("status.example.com").unwrap();
        let iq: Iq = Iq::try_from(
            "<iq xmlns='jabber:component:accept' type='get' id='p1' from='example.com' to='status.example.com'><ping xmlns='urn:xmpp:ping'/></iq>"
                .parse::<Element>()
                .unwrap(),
        )
        .unwrap();
        let xml = to_xml(answer_request(&me, &iq).unwrap().stanza());
        assert!(
            xml.contains("type='result'") && xml.contains("to='example.com'"),
            "{xml}"
        );
        let iq: Iq = Iq::try_from(
            "<iq xmlns='jabber:component:accept' type='set' id='x' from='bob@example.com/r' to='status.example.com'><foo xmlns='urn:x'/></iq>"
                .parse::<Element>()
                .unwrap(),
        )
        .unwrap();
        let xml = to_xml(answer_request(&me, &iq).unwrap().stanza());
        assert!(xml.contains("service-unavailable"), "{xml}");
    }

    fn parse_iq(xml: &str) -> Iq {
        Iq::try_from(xml.parse::<Element>().unwrap()).unwrap()
    }

    #[test]
    fn user_status_set_and_clear() {
        let sender = FullJid::new("status.example.com/0123abcd").unwrap();
        let sm = BareJid::new("sess-man@example.com").unwrap();
        let user = FullJid::new("alice@example.com/tigase-external").unwrap();
        let st = Status {
            show: Some(Show::Xa),
            text: Some("On the <phone>".into()),
            priority: -1,
        };
        let el = Element::from(
            match user_status(&sender, &sm, "us-1".into(), &user, Some(&st)).into_stanza() {
                Stanza::Iq(iq) => iq,
                other => panic!("not an iq: {other:?}"),
            },
        );
        assert_eq!(el.attr("type"), Some("set"));
        assert_eq!(el.attr("from"), Some("status.example.com/0123abcd"));
        assert_eq!(el.attr("to"), Some("sess-man@example.com"));
        let command = el.get_child("command", NS_COMMANDS).expect("command");
        assert_eq!(command.attr("node"), Some("USER_STATUS"));
        assert_eq!(
            command.get_child("x", NS_DATA).unwrap().attr("type"),
            Some("submit")
        );
        assert_eq!(
            command_field(command, "jid").as_deref(),
            Some("alice@example.com/tigase-external")
        );
        assert_eq!(command_field(command, "available").as_deref(), Some("true"));
        let p = command.get_child("presence", NS_CLIENT).expect("presence");
        assert_eq!(p.get_child("priority", NS_CLIENT).unwrap().text(), "-1");
        assert_eq!(p.get_child("show", NS_CLIENT).unwrap().text(), "xa");
        assert_eq!(
            p.get_child("status", NS_CLIENT).unwrap().text(),
            "On the <phone>"
        );

        let plain = Status {
            show: None,
            text: None,
            priority: -5,
        };
        let el = Element::from(
            match user_status(&sender, &sm, "us-2".into(), &user, Some(&plain)).into_stanza() {
                Stanza::Iq(iq) => iq,
                other => panic!("not an iq: {other:?}"),
            },
        );
        let p = el
            .get_child("command", NS_COMMANDS)
            .unwrap()
            .get_child("presence", NS_CLIENT)
            .unwrap();
        assert_eq!(
            p.children()
                .map(|c| c.name().to_string())
                .collect::<Vec<_>>(),
            ["priority"]
        );

        let xml = to_xml(user_status(&sender, &sm, "us-3".into(), &user, None).stanza());
        let el: Element = xml.parse().unwrap();
        let command = el.get_child("command", NS_COMMANDS).unwrap();
        assert_eq!(
            command_field(command, "available").as_deref(),
            Some("false")
        );
        assert!(command.get_child("presence", NS_CLIENT).is_none(), "{xml}");
    }

    #[test]
    fn connection_checks() {
        // As Tigase's SessionManager builds it (Command.CHECK_USER_CONNECTION.getPacket, type get).
        let iq = parse_iq(
            "<iq xmlns='jabber:component:accept' type='get' id='c-1' from='sess-man@example.com' to='status.example.com/0123abcd'>\
             <command xmlns='http://jabber.org/protocol/commands' node='CHECK_USER_CONNECTION'>\
             <x xmlns='jabber:x:data' type='submit'><field var='user-jid'><value>alice@example.com</value></field></x>\
             </command></iq>",
        );
        let check = connection_check(&iq).expect("a check");
        assert_eq!(check.id, "c-1");
        assert_eq!(check.to.as_str(), "status.example.com/0123abcd");
        assert_eq!(
            check.user.as_ref().map(|u| u.as_str()),
            Some("alice@example.com")
        );
        let xml = to_xml(connection_check_answer(&check).stanza());
        for part in [
            "type='result'",
            "id='c-1'",
            "from='status.example.com/0123abcd'",
            "to='sess-man@example.com'",
        ] {
            assert!(xml.contains(part), "{part} missing in {xml}");
        }
        // Other commands and other iqs are not checks.
        let other = parse_iq(
            "<iq xmlns='jabber:component:accept' type='set' id='c-2' from='sess-man@example.com' to='status.example.com/x'>\
             <command xmlns='http://jabber.org/protocol/commands' node='CLOSE'/></iq>",
        );
        assert!(connection_check(&other).is_none());
        let ping = parse_iq(
            "<iq xmlns='jabber:component:accept' type='get' id='p' from='example.com' to='status.example.com/x'><ping xmlns='urn:xmpp:ping'/></iq>",
        );
        assert!(connection_check(&ping).is_none());
    }

    #[test]
    fn error_reasons() {
        // Tigase's error replies carry the original command and a legacy `code`.
        let iq = parse_iq(
            "<iq xmlns='jabber:component:accept' type='error' id='us-1' from='sess-man@example.com' to='status.example.com/x'>\
             <command xmlns='http://jabber.org/protocol/commands' node='USER_STATUS'/>\
             <error type='auth' code='403'><forbidden xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
             <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>Only trusted entity can do it.</text></error></iq>",
        );
        let Iq::Error { error, .. } = iq else {
            panic!("not an error")
        };
        assert_eq!(
            error_reason(&error),
            "forbidden: Only trusted entity can do it."
        );
        let bare = StanzaError::new(ErrorType::Cancel, DefinedCondition::ItemNotFound, "en", "");
        assert_eq!(error_reason(&bare), "item-not-found");
    }

    #[test]
    fn fragments_with_duplicate_attributes_are_refused() {
        for xml in [
            "<a xmlns='urn:a' b='1' b='2'/>",
            "<a xmlns='urn:a'><c b='1' b='2'/></a>",
            "<a xmlns='urn:a' xmlns='urn:b'/>",
            "<a xmlns:p='urn:p' xmlns:p='urn:q'/>",
            // Two prefixes of one namespace: the same attribute (Namespaces "Attributes Unique").
            "<a xmlns:p='urn:x' xmlns:q='urn:x' p:b='1' q:b='2'/>",
        ] {
            let e = parse_fragment(xml, "jabber:client")
                .expect_err(xml)
                .to_string();
            assert!(e.contains("duplicate attribute"), "{xml}: {e}");
        }
        let el = parse_fragment("<a xmlns='urn:a' b='1' c='2'/>", "").unwrap();
        assert_eq!(el.children().next().unwrap().attr("b"), Some("1"));
    }

    #[test]
    fn fragments_with_reserved_namespaces_are_refused() {
        for xml in [
            "<a xmlns='http://www.w3.org/2000/xmlns/'/>",
            "<p:a xmlns:p='http://www.w3.org/2000/xmlns/'/>",
            "<a xmlns='urn:a' xmlns:p='http://www.w3.org/2000/xmlns/' p:b='1'/>",
            "<a xmlns='http://www.w3.org/XML/1998/namespace'/>",
            "<a xmlns:p='http://www.w3.org/XML/1998/namespace'/>",
            "<a xmlns='urn:a' xmlns:xml='http://www.w3.org/XML/1998/namespace'/>",
            "<a xmlns='urn:a' xmlns:xml='urn:other'/>",
            "<a xmlns='urn:a' xmlns:xmlns='urn:other'/>",
            "<xml:a/>",
            "<a xmlns='urn:a'><b><c xmlns='http://www.w3.org/2000/xmlns/'/></b></a>",
        ] {
            assert!(parse_fragment(xml, "jabber:client").is_err(), "{xml}");
        }
        // The xml prefix is used, not declared: fine.
        let el = parse_fragment("<a xmlns='urn:a' xml:lang='en'/>", "jabber:client").unwrap();
        assert!(render(el.children().next().unwrap()).is_ok());
    }

    /// What minidom's writer cannot write is an error, not a panic.
    #[test]
    fn render_never_panics() {
        // minidom's own parser takes it, its writer then panics (the customXml).
        let bad: Element = "<a xmlns='http://www.w3.org/2000/xmlns/'/>"
            .parse()
            .unwrap();
        assert!(render(&bad).is_err());
        let good = Element::builder("a", "urn:a")
            .attr(minidom::rxml::xml_ncname!("b").to_owned(), "1")
            .build();
        assert_eq!(render(&good).unwrap(), "<a xmlns='urn:a' b='1'/>");
    }
}
