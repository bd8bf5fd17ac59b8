//! The Waher Agent API dialect (seeds 000 and 001): `POST /Agent/Xmpp/PresenceProbe`,
//! `SendPresenceSubscription`, `GetRoster` and `GetRosterItem`, in a user's name.
//!
//! It translates only ([`crate::agent`] does the work): the request's format comes from
//! `Content-Type` (`application/json`, `text/xml`, `application/xml`), the answer's from `Accept`
//! (default: the request's); XML is in the namespace `https://waher.se/Schema/BrokerAgent.xsd`
//! with the seeds' element and attribute names; a stanza in a JSON answer is converted as the
//! Agent API does ([`xml_json`]). Errors are `text/plain` with the Agent API's codes: 400, 401,
//! 403, 404 (also the calls not offered, with the reason), 405, 406 (a format not supported),
//! 413, 429, 503. The acting user: a user token acts as its user (`?user=` may only repeat it);
//! an admin or domain key names the user with `?user=`.

pub mod xml_json;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use jid::{BareJid, Jid};
use minidom::rxml::NcName;
use minidom::Element;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::Refusal;
use super::error::{retry_after, ApiError};
use super::input;
use super::state::{AppState, MAX_BODY_BYTES};
use crate::access::{Grant, Need, Scope};
use crate::agent::{self, AgentError, Contact, SubscribeRequest, MAX_CUSTOM_XML};
use crate::base::clock::rfc3339;
use crate::model::validate_text;
use crate::observe::Latest;
use crate::xmpp::stanzas;

/// The Agent API's XML namespace.
pub const NS: &str = "https://waher.se/Schema/BrokerAgent.xsd";

/// An error: status and a plain-text message.
#[derive(Debug)]
pub struct WaherError {
    status: StatusCode,
    /// The code counted and logged by the pipeline (the Agent API's answers carry none): the
    /// shared check's or the agent's when one refused, else one named after the status.
    code: &'static str,
    message: String,
    retry_after: Option<std::time::Duration>,
}

fn err(status: StatusCode, message: impl Into<String>) -> WaherError {
    WaherError {
        status,
        code: status_code(status),
        message: message.into(),
        retry_after: None,
    }
}

/// The pipeline's code of a refusal the Agent API names only by its status.
fn status_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        406 => "not_acceptable",
        413 => "body_too_large",
        415 => "unsupported_media_type",
        429 => "rate_limited",
        503 => "unavailable",
        s if s >= 500 => "failed",
        _ => "refused",
    }
}

fn bad(message: impl Into<String>) -> WaherError {
    err(StatusCode::BAD_REQUEST, message)
}

impl IntoResponse for WaherError {
    fn into_response(self) -> Response {
        let mut r = (self.status, self.message.clone()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(wait) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, retry_after(wait));
        }
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        Refusal::attach(r, self.code, self.message)
    }
}

impl From<ApiError> for WaherError {
    fn from(e: ApiError) -> WaherError {
        let code = e.code();
        let mut w = match e {
            ApiError::MissingKey | ApiError::WrongKey { .. } => err(
                StatusCode::UNAUTHORIZED,
                format!("{e}: unauthorized access was prevented"),
            ),
            ApiError::RateLimited(wait) => WaherError {
                status: StatusCode::TOO_MANY_REQUESTS,
                code,
                message: e.to_string(),
                retry_after: Some(wait),
            },
            other => err(other.status(), other.to_string()),
        };
        w.code = code;
        w
    }
}

impl From<AgentError> for WaherError {
    fn from(e: AgentError) -> WaherError {
        let (status, code) = match &e {
            AgentError::Unsupported => (StatusCode::NOT_FOUND, "not_offered"),
            AgentError::Unknown(_) => (StatusCode::NOT_FOUND, "unknown_contact"),
            AgentError::NotInRoster { .. } => (StatusCode::NOT_FOUND, "not_in_roster"),
            AgentError::NotSubscribed { .. } => (StatusCode::FORBIDDEN, "not_subscribed"),
            AgentError::Roster(_) => (StatusCode::SERVICE_UNAVAILABLE, "roster_unavailable"),
            AgentError::Full(_) => (StatusCode::SERVICE_UNAVAILABLE, "too_many_held"),
            AgentError::Storage(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
            AgentError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        };
        let mut w = err(status, e.to_string());
        w.code = code;
        w
    }
}

/// A request or answer format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    /// XML, with the media type to answer with.
    Xml(&'static str),
}

impl Format {
    fn of_media(media: &str) -> Option<Format> {
        match media.trim().to_ascii_lowercase().as_str() {
            "application/json" => Some(Format::Json),
            "text/xml" => Some(Format::Xml("text/xml")),
            "application/xml" => Some(Format::Xml("application/xml")),
            _ => None,
        }
    }
}

/// The request's format, from `Content-Type`.
fn request_format(headers: &HeaderMap) -> Result<Format, WaherError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let media = given.split(';').next().unwrap_or_default();
    Format::of_media(media).ok_or_else(|| {
        err(
            StatusCode::NOT_ACCEPTABLE,
            format!(
                "Content-Type {:?} is not supported: use application/json, text/xml or application/xml",
                given.chars().take(100).collect::<String>()
            ),
        )
    })
}

/// The answer's format, from `Accept` (the most preferred acceptable range; none: the
/// request's).
fn answer_format(headers: &HeaderMap, request: Format) -> Result<Format, WaherError> {
    let values: Vec<String> = headers
        .get_all(header::ACCEPT)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    if values.is_empty() {
        return Ok(request);
    }
    // Media ranges by preference (q, highest first; in order among equals); q=0 refuses.
    let mut ranges: Vec<(f32, String)> = values
        .iter()
        .flat_map(|v| v.split(','))
        .filter_map(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q=").map(str::to_string))
                .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok())?;
            (q > 0.0 && !media.is_empty()).then_some((q, media))
        })
        .collect();
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (_, media) in &ranges {
        let f = match media.as_str() {
            "*/*" => Some(request),
            "application/*" => Some(match request {
                Format::Xml(_) => Format::Xml("application/xml"),
                json => json,
            }),
            "text/*" => Some(Format::Xml("text/xml")),
            m => Format::of_media(m),
        };
        if let Some(f) = f {
            return Ok(f);
        }
    }
    Err(err(
        StatusCode::NOT_ACCEPTABLE,
        format!(
            "Not acceptable response format: {:?}; this resource answers application/json, text/xml or application/xml",
            values.join(", ").chars().take(200).collect::<String>()
        ),
    ))
}

/// The Agent API routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/Agent/Xmpp/{call}", any(call))
        .route("/Agent/{*rest}", any(unknown))
}

async fn unknown() -> Response {
    err(
        StatusCode::NOT_FOUND,
        "Not found: extpresence offers /Agent/Xmpp/PresenceProbe, SendPresenceSubscription, GetRoster and GetRosterItem",
    )
    .into_response()
}

/// The calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    PresenceProbe,
    SendPresenceSubscription,
    GetRoster,
    GetRosterItem,
}

/// Why a call of the Agent API is not offered (`None`: it is, or it is no call).
fn not_offered(name: &str) -> Option<&'static str> {
    Some(match name {
        "SendSubscriptionAccepted" | "SendSubscriptionDeclined" | "SendPresenceUnsubscription" => {
            "Not offered: approving, declining or cancelling a subscription in a user's name changes \
             only the other side's roster on Prosody and ejabberd (the user's roster keeps its item \
             and its subscription state), so it would leave the two sides disagreeing; see the \
             README, \"Acting in a user's name\""
        }
        "SetRosterItem" | "RemoveRosterItem" => {
            "Not offered: extpresence does not edit users' rosters for API clients (ejabberd 23.01 \
             refuses privileged roster sets, and a removal would not tell the contact); it only \
             completes the user's side of a subscription it requested"
        }
        "SendTextMessage" | "SendFormattedMessage" | "SendXmlMessage" | "InformationQuery"
        | "PopMessages" | "ClearMessages" | "RegisterEventHandler" => {
            "Not offered: extpresence is about presence; it sends no messages or iqs in a user's \
             name and receives none for them"
        }
        _ => return None,
    })
}

async fn call(
    State(state): State<Arc<AppState>>,
    method: Method,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(&state, method, &name, query.as_deref(), &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn handle(
    state: &AppState,
    method: Method,
    name: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, WaherError> {
    let call = match name {
        "PresenceProbe" => Call::PresenceProbe,
        "SendPresenceSubscription" => Call::SendPresenceSubscription,
        "GetRoster" => Call::GetRoster,
        "GetRosterItem" => Call::GetRosterItem,
        other => {
            return Err(err(
                StatusCode::NOT_FOUND,
                not_offered(other).unwrap_or("Not found: no such Agent API call"),
            ))
        }
    };
    if method != Method::POST {
        return Err(ApiError::Method(method.to_string(), "POST").into());
    }
    let grant = state.keys.check(query, headers)?;
    let user = acting_user(state, &grant, query)?;
    let need = match call {
        Call::SendPresenceSubscription => Need::Write,
        _ => Need::Read,
    };
    grant
        .allows(need, &user)
        .map_err(|e| err(StatusCode::FORBIDDEN, e.to_string()))?;
    let input = request_format(headers)?;
    let output = answer_format(headers, input)?;
    let body = input::read_body(headers, body, MAX_BODY_BYTES, state.body_timeout).await?;
    let request = Request::parse(call, input, &body)?;
    let agent = &state.agent;
    let json = |v: Value| Ok(typed(v.to_string(), output));
    match request {
        Request::Probe { to } => {
            if to == user {
                return Err(bad("to: a user does not probe their own presence"));
            }
            let latest = agent
                .probe(&user, &to, grant.has(Need::Write).is_ok())
                .await?;
            let mut r = probe_result(&user, &latest, output);
            // Whether the server has told everything (else a session may have ended unseen:
            // README "What the server tells"); the Agent API's format has no place for it.
            r.headers_mut().insert(
                "extpresence-complete",
                HeaderValue::from_static(if state.observed.complete() {
                    "true"
                } else {
                    "false"
                }),
            );
            Ok(r)
        }
        Request::Subscribe(req) => {
            if req.to == user {
                return Err(bad("to: a user does not subscribe to their own presence"));
            }
            let s = agent.subscribe(&user, req).await?;
            match output {
                Format::Json => json(json!({
                    "sent": s.sent,
                    "id": s.id,
                    "RosterItem": item_json(&s.item),
                })),
                Format::Xml(_) => {
                    let root = element("PresenceSubscriptionResult")
                        .attr(nc("sent"), s.sent.to_string())
                        .attr(nc("id"), s.id.as_str())
                        .append(item_xml("RosterItem", &s.item))
                        .build();
                    Ok(xml_answer(&root, output))
                }
            }
        }
        Request::Roster { offset, max } => {
            let items = agent.roster(&user).await?;
            let page = items.iter().skip(offset).take(max.unwrap_or(usize::MAX));
            match output {
                Format::Json => {
                    json(json!({ "RosterItems": page.map(item_json).collect::<Vec<_>>() }))
                }
                Format::Xml(_) => {
                    let list = element("RosterItems")
                        .append_all(page.map(|i| item_xml("Item", i)))
                        .build();
                    let root = element("Roster").append(list).build();
                    Ok(xml_answer(&root, output))
                }
            }
        }
        Request::RosterItem { jid } => {
            let item = agent.roster_item(&user, &jid).await?;
            match output {
                Format::Json => json(item_json(&item)),
                Format::Xml(_) => Ok(xml_answer(&item_xml("RosterItem", &item), output)),
            }
        }
    }
}

/// The user the call acts for (module doc).
fn acting_user(
    state: &AppState,
    grant: &Grant,
    query: Option<&str>,
) -> Result<BareJid, WaherError> {
    let named: Vec<String> = query
        .into_iter()
        .flat_map(|q| form_urlencoded::parse(q.as_bytes()))
        .filter(|(k, _)| k == "user")
        .map(|(_, v)| v.into_owned())
        .collect();
    if named.len() > 1 {
        return Err(bad("?user= given more than once"));
    }
    let named = match named.first() {
        Some(raw) => Some(input::served_user(raw, &state.domains)?),
        None => None,
    };
    match (&grant.scope, named) {
        (Scope::User(own), None) => Ok(own.clone()),
        (Scope::User(own), Some(u)) if &u == own => Ok(u),
        (Scope::User(own), Some(u)) => Err(err(
            StatusCode::FORBIDDEN,
            format!("this token acts for {own}; it may not act for {u}"),
        )),
        (_, None) => Err(bad(
            "an admin or domain key must name the user it acts for: ?user=alice@example.com",
        )),
        (_, Some(u)) => Ok(u),
    }
}

/// A parsed request.
enum Request {
    Probe { to: BareJid },
    Subscribe(SubscribeRequest),
    Roster { offset: usize, max: Option<usize> },
    RosterItem { jid: BareJid },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeJson {
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SubscribeJson {
    to: String,
    custom_xml: Option<String>,
    language: Option<String>,
    id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RosterJson {
    offset: Option<i64>,
    max_count: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RosterItemJson {
    bare_jid: String,
}

fn json_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, WaherError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON body: {e}")))
}

/// A JID field: bare or full, taken bare; no control characters.
fn jid_field(field: &str, raw: &str) -> Result<BareJid, WaherError> {
    let invalid = || {
        bad(format!(
            "{field}: {:?} is not a valid JID",
            raw.chars().take(100).collect::<String>()
        ))
    };
    if raw.chars().any(char::is_control) {
        return Err(invalid());
    }
    Jid::new(raw).map(|j| j.to_bare()).map_err(|_| invalid())
}

/// A contact's JID (the `to` of a probe or a subscription request): a user's bare JID, no
/// resource, not a domain.
fn contact_field(field: &str, raw: &str) -> Result<BareJid, WaherError> {
    let jid = jid_field(field, raw)?;
    if Jid::new(raw).is_ok_and(|j| j.resource().is_some()) {
        return Err(bad(format!(
            "{field}: {:?} has a resource; a contact is a bare JID (user@domain)",
            raw.chars().take(100).collect::<String>()
        )));
    }
    agent::check_contact(&jid).map_err(|e| bad(format!("{field}: {e}")))?;
    Ok(jid)
}

fn text_field(
    field: &str,
    value: Option<String>,
    max: usize,
) -> Result<Option<String>, WaherError> {
    match value {
        // Control characters, and what XML cannot carry (U+FFFE, U+FFFF).
        Some(v) if v.chars().any(char::is_control) || validate_text(&v).is_err() => Err(bad(
            format!("{field} may not contain control characters or U+FFFE/U+FFFF"),
        )),
        Some(v) if v.len() > max => Err(bad(format!("{field} is longer than {max} bytes"))),
        Some(v) if v.is_empty() => Ok(None),
        v => Ok(v),
    }
}

fn language(value: Option<String>) -> Result<Option<String>, WaherError> {
    let v = text_field("language", value, 35)?;
    if let Some(l) = &v {
        let ok = l
            .split('-')
            .all(|p| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_alphanumeric()));
        if !ok {
            return Err(bad(format!(
                "language: {l:?} is not a language tag (e.g. \"en\" or \"sv-SE\")"
            )));
        }
    }
    Ok(v)
}

/// The custom XML of a subscription request: at most [`MAX_CUSTOM_XML`] bytes of well-formed XML
/// elements, without a DOCTYPE.
fn custom_xml(value: Option<String>) -> Result<Option<String>, WaherError> {
    let Some(xml) = value.filter(|x| !x.trim().is_empty()) else {
        return Ok(None);
    };
    if xml.len() > MAX_CUSTOM_XML {
        return Err(bad(format!(
            "customXml is {} bytes; at most {MAX_CUSTOM_XML}",
            xml.len()
        )));
    }
    let upper = xml.to_ascii_uppercase();
    if upper.contains("<!DOCTYPE") || upper.contains("<!ENTITY") {
        return Err(bad(
            "customXml may not contain a DOCTYPE or entity declarations",
        ));
    }
    agent::parse_custom_xml(&xml).map_err(|e| bad(format!("customXml: {e}")))?;
    Ok(Some(xml))
}

fn count(field: &str, v: Option<i64>, min: i64) -> Result<Option<usize>, WaherError> {
    match v {
        Some(n) if n < min || n > i32::MAX as i64 => Err(bad(format!(
            "{field}: {n} is not between {min} and {}",
            i32::MAX
        ))),
        Some(n) => Ok(Some(n as usize)),
        None => Ok(None),
    }
}

/// Attributes of an XML request: only `allowed`, each once (the parser refuses repeats).
fn xml_attrs(el: &Element, allowed: &[&str]) -> Result<(), WaherError> {
    for ((ns, name), _) in el.attrs().iter() {
        if !ns.as_str().is_empty() || !allowed.contains(&name.as_str()) {
            return Err(bad(format!(
                "<{}> has no attribute {:?}; it has {}",
                el.name(),
                name.as_str(),
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            )));
        }
    }
    Ok(())
}

fn xml_int(el: &Element, name: &str) -> Result<Option<i64>, WaherError> {
    el.attr(name)
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| bad(format!("{name}: {v:?} is not an integer")))
        })
        .transpose()
}

impl Request {
    fn parse(call: Call, format: Format, body: &[u8]) -> Result<Request, WaherError> {
        match format {
            Format::Json => Request::parse_json(call, body),
            Format::Xml(_) => Request::parse_xml(call, body),
        }
    }

    fn parse_json(call: Call, body: &[u8]) -> Result<Request, WaherError> {
        Ok(match call {
            Call::PresenceProbe => {
                let p: ProbeJson = json_body(body)?;
                Request::Probe {
                    to: contact_field("to", &p.to)?,
                }
            }
            Call::SendPresenceSubscription => {
                let s: SubscribeJson = json_body(body)?;
                Request::Subscribe(SubscribeRequest {
                    to: contact_field("to", &s.to)?,
                    custom_xml: custom_xml(s.custom_xml)?,
                    language: language(s.language)?,
                    id: text_field("id", s.id, 256)?,
                })
            }
            Call::GetRoster => {
                let r: RosterJson = json_body(body)?;
                Request::Roster {
                    offset: count("offset", r.offset, 0)?.unwrap_or(0),
                    max: count("maxCount", r.max_count, 1)?,
                }
            }
            Call::GetRosterItem => {
                let r: RosterItemJson = json_body(body)?;
                Request::RosterItem {
                    jid: jid_field("bareJid", &r.bare_jid)?,
                }
            }
        })
    }

    fn parse_xml(call: Call, body: &[u8]) -> Result<Request, WaherError> {
        let text = std::str::from_utf8(body).map_err(|_| bad("malformed XML body: not UTF-8"))?;
        let wrapper = stanzas::parse_fragment(text, "")
            .map_err(|e| bad(format!("malformed XML body: {e}")))?;
        let mut roots = wrapper.children();
        let (Some(el), None) = (roots.next(), roots.next()) else {
            return Err(bad("malformed XML body: it must hold exactly one element"));
        };
        if wrapper.texts().any(|t| !t.trim().is_empty()) {
            return Err(bad("malformed XML body: text outside the element"));
        }
        let name = match call {
            Call::PresenceProbe => "PresenceProbe",
            Call::SendPresenceSubscription => "SendPresenceSubscription",
            Call::GetRoster => "GetRoster",
            Call::GetRosterItem => "GetRosterItem",
        };
        if !el.is(name, NS) {
            return Err(bad(format!(
                "malformed XML body: the root must be <{name} xmlns=\"{NS}\">, not <{}> in {:?}",
                el.name(),
                el.ns()
            )));
        }
        let required = |attr: &str| {
            el.attr(attr)
                .map(str::to_string)
                .ok_or_else(|| bad(format!("<{name}> needs the attribute {attr}")))
        };
        let no_children = || match el.children().next() {
            Some(c) => Err(bad(format!(
                "<{name}> has no child elements; found <{}>",
                c.name()
            ))),
            None => Ok(()),
        };
        Ok(match call {
            Call::PresenceProbe => {
                xml_attrs(el, &["to"])?;
                no_children()?;
                Request::Probe {
                    to: contact_field("to", &required("to")?)?,
                }
            }
            Call::SendPresenceSubscription => {
                xml_attrs(el, &["to", "language", "id"])?;
                let custom = el
                    .children()
                    .map(stanzas::render)
                    .collect::<Result<String, stanzas::XmlError>>()
                    .map_err(|e| bad(format!("customXml: {e}")))?;
                Request::Subscribe(SubscribeRequest {
                    to: contact_field("to", &required("to")?)?,
                    custom_xml: custom_xml(Some(custom))?,
                    language: language(el.attr("language").map(str::to_string))?,
                    id: text_field("id", el.attr("id").map(str::to_string), 256)?,
                })
            }
            Call::GetRoster => {
                xml_attrs(el, &["offset", "maxCount"])?;
                no_children()?;
                Request::Roster {
                    offset: count("offset", xml_int(el, "offset")?, 0)?.unwrap_or(0),
                    max: count("maxCount", xml_int(el, "maxCount")?, 1)?,
                }
            }
            Call::GetRosterItem => {
                xml_attrs(el, &["bareJid"])?;
                no_children()?;
                Request::RosterItem {
                    jid: jid_field("bareJid", &required("bareJid")?)?,
                }
            }
        })
    }
}

fn nc(name: &'static str) -> NcName {
    NcName::try_from(name).expect("a valid XML name")
}

fn element(name: &'static str) -> minidom::ElementBuilder {
    Element::builder(name, NS)
}

fn item_json(c: &Contact) -> Value {
    json!({
        "bareJid": c.jid.as_str(),
        "pendingSubscription": c.pending,
        "status": c.subscription,
        "name": c.name.clone().unwrap_or_default(),
        "Groups": c.groups,
    })
}

fn item_xml(name: &'static str, c: &Contact) -> Element {
    let groups = element("Groups")
        .append_all(
            c.groups
                .iter()
                .map(|g| element("Item").append(g.as_str()).build()),
        )
        .build();
    element(name)
        .attr(nc("bareJid"), c.jid.as_str())
        .attr(nc("pendingSubscription"), c.pending.to_string())
        .attr(nc("status"), c.subscription)
        .attr(nc("name"), c.name.clone().unwrap_or_default())
        .append(groups)
        .build()
}

/// The presence stanza a probe answers with: as `user` received it.
pub fn stanza(user: &BareJid, latest: &Latest) -> Element {
    let mut p = Element::builder("presence", "jabber:client")
        .attr(nc("from"), latest.from.as_str())
        .attr(nc("to"), user.as_str());
    if !latest.available {
        p = p.attr(nc("type"), "unavailable");
    }
    let text =
        |name: &'static str, v: String| Element::builder(name, "jabber:client").append(v).build();
    if let Some(show) = latest.show {
        p = p.append(text("show", show.as_str().to_string()));
    }
    if let Some(status) = &latest.status {
        p = p.append(text("status", status.clone()));
    }
    if latest.priority != 0 {
        p = p.append(text("priority", latest.priority.to_string()));
    }
    let extra = latest
        .extra
        .as_deref()
        .and_then(|x| agent::parse_elements(x).ok())
        .unwrap_or_default();
    p.append_all(extra).build()
}

fn probe_result(user: &BareJid, latest: &Latest, output: Format) -> Response {
    let stanza = stanza(user, latest);
    let type_ = if latest.available { "" } else { "unavailable" };
    let received = rfc3339(latest.received);
    match output {
        Format::Json => typed(
            json!({
                "jid": latest.from.as_str(),
                "type": type_,
                "received": received,
                "Stanza": xml_json::to_json(&stanza),
            })
            .to_string(),
            output,
        ),
        Format::Xml(_) => {
            let root = element("ProbeResult")
                .attr(nc("jid"), latest.from.as_str())
                .attr(nc("type"), type_)
                .attr(nc("received"), received)
                .append(element("Stanza").append(stanza).build())
                .build();
            xml_answer(&root, output)
        }
    }
}

fn typed(body: String, format: Format) -> Response {
    let ct = match format {
        Format::Json => "application/json; charset=utf-8",
        Format::Xml("text/xml") => "text/xml; charset=utf-8",
        Format::Xml(_) => "application/xml; charset=utf-8",
    };
    let mut r = body.into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

fn xml_answer(root: &Element, format: Format) -> Response {
    typed(String::from(root), format)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> Result<Format, WaherError> {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        answer_format(&h, Format::Json)
    }

    #[test]
    fn accept_follows_preference() {
        assert_eq!(
            answer_format(&HeaderMap::new(), Format::Json).unwrap(),
            Format::Json
        );
        assert_eq!(accept("*/*").unwrap(), Format::Json);
        assert_eq!(accept("text/xml").unwrap(), Format::Xml("text/xml"));
        assert_eq!(
            accept("application/json;q=0.5, application/xml").unwrap(),
            Format::Xml("application/xml")
        );
        assert_eq!(
            accept("application/xml;q=0, application/json;q=0.1").unwrap(),
            Format::Json
        );
        assert_eq!(
            accept("image/png, text/html").unwrap_err().status,
            StatusCode::NOT_ACCEPTABLE
        );
        assert_eq!(
            accept("application/xml;q=0").unwrap_err().status,
            StatusCode::NOT_ACCEPTABLE
        );
    }
}
