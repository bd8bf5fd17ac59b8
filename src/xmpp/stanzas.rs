//! Building and parsing the stanzas extpresence exchanges with the server.
//!
//! Outgoing stanzas are [`Outbound`] values, which can only be built here and always carry a `to`
//! (ejabberd drops a component that sends a stanza without one). Parsing covers XEP-0356 privilege
//! advertisements and roster results; xmpp-parsers has no XEP-0356 types, so those are minidom.

use std::collections::BTreeMap;

use jid::{BareJid, FullJid, Jid};
use minidom::Element;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::message::{Lang, Message};
use xmpp_parsers::presence::{Presence, Priority, Show as XShow, Type as PresenceType};
use xmpp_parsers::roster::{Roster, Subscription};
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

use crate::status::{Show, Status};

/// XEP-0356 namespaces we understand.
pub const NS_PRIVILEGE_1: &str = "urn:xmpp:privilege:1";
/// XEP-0356 version 2 (Prosody's mod_privilege).
pub const NS_PRIVILEGE_2: &str = "urn:xmpp:privilege:2";
const NS_ROSTER: &str = "jabber:iq:roster";
const NS_PING: &str = "urn:xmpp:ping";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
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

/// Available presence of `from` (a user's synthetic resource) directed to `to`.
pub fn presence(from: &FullJid, to: Jid, status: &Status) -> Outbound {
    let mut p = Presence::new(PresenceType::None)
        .with_from(from.clone())
        .with_to(to);
    p.show = status.show.map(to_xshow);
    p.priority = Priority(status.priority);
    if let Some(text) = &status.text {
        p.statuses = BTreeMap::from([(Lang::from(""), text.clone())]);
    }
    Outbound(Box::new(p.into()))
}

/// `unavailable` presence of `from` directed to `to`.
pub fn unavailable(from: &FullJid, to: Jid) -> Outbound {
    Outbound(Box::new(
        Presence::new(PresenceType::Unavailable)
            .with_from(from.clone())
            .with_to(to)
            .into(),
    ))
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
pub fn presence_subscribers(payload: Option<&Element>) -> Result<Vec<BareJid>, String> {
    let Some(payload) = payload else {
        // An empty result means an empty roster.
        return Ok(Vec::new());
    };
    let roster = Roster::try_from(payload.clone()).map_err(|e| e.to_string())?;
    Ok(roster
        .items
        .into_iter()
        .filter(|i| matches!(i.subscription, Subscription::From | Subscription::Both))
        .map(|i| i.jid)
        .collect())
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
}
