//! The Tigase dialect's wire format: the fields of `POST /rest/user/{user-jid}/status[/{resource}]`
//! as Tigase's UserStatusEndpoint documents them, their validation, and the response body.
//!
//! Request bodies: XML `<command><available/><priority/><show/><status/></command>` or the JSON
//! object with the same fields (strings as in Tigase's documentation; JSON booleans and numbers are
//! accepted too). Responses: `{"status":{"user":…,"available":"true","priority":"-1","show":…,
//! "status":…,"success":true}}` or the same as XML `<status>…</status>`; when the server did not
//! take the change, `"success":false` and a `"reason"` (XML `<success>false</success><reason>…`).

use std::fmt::Write as _;

use serde_json::Value;

use crate::http::error::{xml_escape, ApiError, Format};
use crate::model::{validate_text, Show, Status, StatusPolicy};
use crate::xmpp::stanzas;

/// The fields of a request, as given (strings), before validation.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Command {
    /// `true`/`false`; absent means `true`.
    pub available: Option<String>,
    /// An integer; absent means the configured default.
    pub priority: Option<String>,
    /// chat/away/xa/dnd.
    pub show: Option<String>,
    /// Status text.
    pub status: Option<String>,
}

impl Command {
    /// The slot of field `name`, if it is one of [`FIELDS`].
    fn field(&mut self, name: &str) -> Option<&mut Option<String>> {
        match name {
            "available" => Some(&mut self.available),
            "priority" => Some(&mut self.priority),
            "show" => Some(&mut self.show),
            "status" => Some(&mut self.status),
            _ => None,
        }
    }
}

/// What a valid request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Hold this status.
    Set(Status),
    /// Clear the resource (`available=false`).
    Clear,
}

const FIELDS: [&str; 4] = ["available", "priority", "show", "status"];
/// Namespace given to the (namespace-less) request XML so minidom accepts it.
const NS_BODY: &str = "urn:extpresence:tigase-command";

fn malformed(format: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::Malformed {
        format,
        message: message.into(),
    }
}

/// Parse an XML body: one `<command>` root, optionally after an XML declaration, and nothing
/// but white space after it.
pub fn parse_xml(body: &[u8]) -> Result<Command, ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| malformed("XML", "not UTF-8"))?;
    let wrapper =
        stanzas::parse_fragment(text, NS_BODY).map_err(|e| malformed("XML", e.to_string()))?;
    let mut roots = wrapper.children();
    let (Some(root), None) = (roots.next(), roots.next()) else {
        return Err(malformed(
            "XML",
            "the body must hold exactly one <command> element",
        ));
    };
    if wrapper.texts().any(|t| !t.trim().is_empty()) {
        return Err(malformed(
            "XML",
            "text outside the <command> element is not allowed",
        ));
    }
    if root.name() != "command" || root.ns() != NS_BODY {
        return Err(malformed(
            "XML",
            format!("the root element must be <command>, not <{}>", root.name()),
        ));
    }
    let mut cmd = Command::default();
    for child in root.children() {
        if child.ns() != NS_BODY {
            return Err(malformed(
                "XML",
                format!("unexpected namespace on <{}>", child.name()),
            ));
        }
        if child.children().next().is_some() {
            return Err(malformed(
                "XML",
                format!("<{}> must hold text only", child.name()),
            ));
        }
        let Some(slot) = cmd.field(child.name()) else {
            return Err(malformed(
                "XML",
                format!(
                    "unknown element <{}>; expected one of {FIELDS:?}",
                    child.name()
                ),
            ));
        };
        if slot.is_some() {
            return Err(malformed("XML", format!("<{}> given twice", child.name())));
        }
        *slot = Some(child.text());
    }
    Ok(cmd)
}

/// A JSON body as given: the derived deserializer refuses unknown and duplicate fields.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "a JSON object with the fields available, priority, show, status"
)]
pub struct JsonCommand {
    /// `"true"` (default) or `"false"` (clears the resource); a JSON boolean too.
    #[schema(value_type = Option<String>, example = "true", pattern = "^(true|false)$")]
    available: Option<Value>,
    /// An integer, -128..127, negative unless allowed; as a string or a JSON number.
    #[schema(value_type = Option<String>, example = "-1", pattern = "^-([1-9]|[1-9][0-9]|1[01][0-9]|12[0-8])$")]
    priority: Option<Value>,
    /// `chat`, `away`, `xa` or `dnd`.
    #[schema(value_type = Option<String>, example = "xa", pattern = "^(chat|away|xa|dnd)$")]
    show: Option<Value>,
    /// Status text: up to 1,024 characters, no control characters but tab and line feed.
    #[schema(value_type = Option<String>, max_length = 1024, example = "On the phone", pattern = "^[^\\u0000-\\u0008\\u000b-\\u001f\\u007f-\\u009f\\ufffe\\uffff]*$")]
    status: Option<Value>,
}

/// The answer of the Tigase dialect (rendered by [`response`]; JSON shown).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct StatusResponse {
    /// The status as held.
    status: StatusResponseBody,
}

/// The `status` object of [`StatusResponse`].
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct StatusResponseBody {
    /// The full JID of the synthetic resource.
    user: String,
    /// `"true"` or `"false"`.
    available: String,
    /// The priority, as a string.
    priority: Option<String>,
    /// `chat`, `away`, `xa` or `dnd`.
    show: Option<String>,
    /// The status text.
    status: Option<String>,
    /// Whether the change took effect (always with the fan-out backend).
    success: bool,
    /// Why not (Tigase backend).
    reason: Option<String>,
}

/// Parse a JSON body: an object with the fields of [`FIELDS`], each at most once.
pub fn parse_json(body: &[u8]) -> Result<Command, ApiError> {
    let given: JsonCommand =
        serde_json::from_slice(body).map_err(|e| malformed("JSON", e.to_string()))?;
    let mut cmd = Command::default();
    let fields = [
        ("available", given.available),
        ("priority", given.priority),
        ("show", given.show),
        ("status", given.status),
    ];
    for (key, v) in fields {
        let slot = cmd.field(key).expect("one of FIELDS");
        *slot = match v.unwrap_or(Value::Null) {
            Value::Null => None,
            Value::String(s) => Some(s),
            Value::Bool(b) if key == "available" => Some(b.to_string()),
            Value::Number(n) if key == "priority" => Some(n.to_string()),
            other => {
                return Err(malformed(
                    "JSON",
                    format!("field {key:?} must be a string, not {other}"),
                ))
            }
        };
    }
    Ok(cmd)
}

/// Validate a command against the policy.
pub fn validate(cmd: &Command, policy: &StatusPolicy) -> Result<Request, ApiError> {
    let available = match cmd.available.as_deref().map(str::trim) {
        None | Some("") => true,
        Some(s) if s.eq_ignore_ascii_case("true") => true,
        Some(s) if s.eq_ignore_ascii_case("false") => false,
        Some(other) => {
            return Err(malformed(
                "request",
                format!(
                    "available {:?} must be true or false",
                    other.chars().take(64).collect::<String>()
                ),
            ))
        }
    };
    // Validate every field even for a clear, so a bad request never half-succeeds.
    let priority = policy.priority(cmd.priority.as_deref())?;
    let show = match cmd.show.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(Show::parse(s)?),
    };
    let text = match cmd.status.as_deref() {
        None | Some("") => None,
        Some(s) => {
            validate_text(s)?;
            Some(s.to_string())
        }
    };
    if !available {
        return Ok(Request::Clear);
    }
    Ok(Request::Set(Status {
        show,
        text,
        priority,
    }))
}

/// The response: `failure` is `None` when the change took effect, else why not.
pub fn response(
    format: Format,
    user: &str,
    request: &Request,
    failure: Option<&str>,
    pending: Option<&str>,
) -> String {
    let (available, status) = match request {
        Request::Set(s) => ("true", Some(s)),
        Request::Clear => ("false", None),
    };
    let priority = status.map(|s| s.priority);
    let show = status.and_then(|s| s.show.map(Show::as_str));
    let text = status.and_then(|s| s.text.as_deref());
    // Written directly into one buffer (in the documented field order) rather than through a
    // serde_json::Value tree (~5% of the CPU per request, benchmark P3) or one `format!` per field.
    // Writing to a String cannot fail.
    let mut out = String::with_capacity(128 + user.len() + text.map_or(0, str::len));
    match format {
        Format::Json => {
            let quoted = |out: &mut String, t: &str| {
                out.push_str(&serde_json::to_string(t).expect("a string serialises"));
            };
            out.push_str(r#"{"status":{"user":"#);
            quoted(&mut out, user);
            let _ = write!(out, r#","available":"{available}""#);
            if let Some(p) = priority {
                let _ = write!(out, r#","priority":"{p}""#);
            }
            if let Some(s) = show {
                let _ = write!(out, r#","show":"{s}""#);
            }
            if let Some(t) = text {
                out.push_str(r#","status":"#);
                quoted(&mut out, t);
            }
            match failure {
                None if pending.is_some() => {
                    out.push_str(r#","success":true,"delivery":"pending","reason":"#);
                    quoted(&mut out, pending.unwrap_or_default());
                    out.push_str("}}");
                }
                None => out.push_str(r#","success":true}}"#),
                Some(reason) => {
                    out.push_str(r#","success":false,"reason":"#);
                    quoted(&mut out, reason);
                    out.push_str("}}");
                }
            }
        }
        Format::Xml => {
            let _ = write!(
                out,
                "<status><user>{}</user><available>{available}</available>",
                xml_escape(user)
            );
            if let Some(p) = priority {
                let _ = write!(out, "<priority>{p}</priority>");
            }
            if let Some(s) = show {
                let _ = write!(out, "<show>{s}</show>");
            }
            if let Some(t) = text {
                let _ = write!(out, "<status>{}</status>", xml_escape(t));
            }
            match failure {
                None => {
                    out.push_str("<success>true</success>");
                    if let Some(reason) = pending {
                        let _ = write!(
                            out,
                            "<delivery>pending</delivery><reason>{}</reason>",
                            xml_escape(reason)
                        );
                    }
                }
                Some(reason) => {
                    let _ = write!(
                        out,
                        "<success>false</success><reason>{}</reason>",
                        xml_escape(reason)
                    );
                }
            }
            out.push_str("</status>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use jid::ResourcePart;

    fn policy() -> StatusPolicy {
        StatusPolicy {
            default_resource: ResourcePart::new("tigase-external").unwrap().into_owned(),
            default_priority: -1,
            allow_non_negative_priority: false,
        }
    }

    #[test]
    fn seed_xml_and_json_agree() {
        let xml = b"<command>\n  <available>true</available>\n  <priority>-1</priority>\n  <show>xa</show>\n  <status>On the phone</status>\n</command>";
        let json =
            br#"{"available": "true", "priority": "-1", "show": "xa", "status": "On the phone"}"#;
        let a = parse_xml(xml).unwrap();
        let b = parse_json(json).unwrap();
        assert_eq!(a, b);
        let r = validate(&a, &policy()).unwrap();
        assert_eq!(
            r,
            Request::Set(Status {
                show: Some(Show::Xa),
                text: Some("On the phone".into()),
                priority: -1
            })
        );
        let body = response(
            Format::Json,
            "test@domain.com/tigase-external",
            &r,
            None,
            None,
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status":{"user":"test@domain.com/tigase-external","available":"true",
                "priority":"-1","show":"xa","status":"On the phone","success":true}})
        );
        assert_eq!(
            response(Format::Xml, "test@domain.com/tigase-external", &r, None, None),
            "<status><user>test@domain.com/tigase-external</user><available>true</available>\
             <priority>-1</priority><show>xa</show><status>On the phone</status><success>true</success></status>"
        );
    }

    #[test]
    fn failure_has_success_false_and_reason() {
        let why = "the XMPP server refused it: forbidden: Only trusted entity can do it.";
        let body = response(Format::Json, "a@b.c/r", &Request::Clear, Some(why), None);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status":{"user":"a@b.c/r","available":"false","success":false,"reason":why}})
        );
        assert_eq!(
            response(
                Format::Xml,
                "a@b.c/r",
                &Request::Clear,
                Some("no <answer>"),
                None
            ),
            "<status><user>a@b.c/r</user><available>false</available>\
             <success>false</success><reason>no &lt;answer&gt;</reason></status>"
        );
    }

    #[test]
    fn success_held_for_later_says_delivery_pending() {
        let why = "the XMPP component link is down";
        let body = response(Format::Json, "a@b.c/r", &Request::Clear, None, Some(why));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status":{"user":"a@b.c/r","available":"false","success":true,
                "delivery":"pending","reason":why}})
        );
        assert_eq!(
            response(Format::Xml, "a@b.c/r", &Request::Clear, None, Some(why)),
            "<status><user>a@b.c/r</user><available>false</available><success>true</success>\
             <delivery>pending</delivery><reason>the XMPP component link is down</reason></status>"
        );
    }

    #[test]
    fn json_native_types_and_defaults() {
        let c = parse_json(br#"{"available": true, "priority": -5}"#).unwrap();
        assert_eq!(c.priority.as_deref(), Some("-5"));
        assert!(matches!(validate(&c, &policy()).unwrap(), Request::Set(s) if s.priority == -5));
        let c = parse_json(br#"{"available": false}"#).unwrap();
        assert_eq!(validate(&c, &policy()).unwrap(), Request::Clear);
        let c = parse_json(b"{}").unwrap();
        assert!(
            matches!(validate(&c, &policy()).unwrap(), Request::Set(s) if s.priority == -1 && s.show.is_none())
        );
    }

    #[test]
    fn malformed_bodies() {
        for bad in [
            &b"<command><show>xa</command>"[..],
            b"<!DOCTYPE x [<!ENTITY a 'b'>]><command/>",
            b"<cmd/>",
            b"<command><colour>red</colour></command>",
            b"<command><show><b/></show></command>",
            b"",
            b"<command><show>xa</show></command><command><show>dnd</show></command>",
            b"<command/>\x01\x02<<<",
            b"<command/>trailing",
            b"<command/><?pi x?>",
            b"<command/></extpresence-body><extpresence-body>",
        ] {
            assert!(
                matches!(parse_xml(bad), Err(ApiError::Malformed { .. })),
                "{bad:?}"
            );
        }
        for bad in [
            &b"{"[..],
            b"[]",
            br#"{"show": 1}"#,
            br#"{"mood": "x"}"#,
            br#"{"show": "xa", "show": "dnd"}"#,
            br#"{"status": "a"} {"status": "b"}"#,
        ] {
            assert!(
                matches!(parse_json(bad), Err(ApiError::Malformed { .. })),
                "{bad:?}"
            );
        }
        // A declaration before and white space after the root are fine.
        let c = parse_xml(
            b"<?xml version='1.0' encoding='UTF-8'?>\n<command><show>xa</show></command>\n",
        )
        .unwrap();
        assert_eq!(c.show.as_deref(), Some("xa"));
        let c = parse_json(br#"{"available": "maybe"}"#).unwrap();
        assert!(validate(&c, &policy()).is_err());
    }
}
