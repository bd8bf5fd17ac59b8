//! The one place where API errors become HTTP responses.
//!
//! Every refusal is an [`ApiError`]; [`ApiError::into_response`] maps it to a status code and a
//! machine-readable body in the request's format ([`Format`]): JSON
//! `{"error":{"status":400,"code":"invalid_show","message":"…"}}` or XML
//! `<error><status>400</status><code>invalid_show</code><message>…</message></error>`.
//! Every dialect's refusal, whatever its body, carries a [`Refusal`] for the pipeline to count
//! and log.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::delivery::DeliveryError;
use crate::model::InvalidStatus;

/// Body format of a request and its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json`
    Json,
    /// `application/xml`
    Xml,
}

impl Format {
    /// The response Content-Type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Xml => "application/xml; charset=utf-8",
        }
    }

    /// The format named by a Content-Type or Accept value, if it is one of ours.
    pub fn from_media_type(value: &str) -> Option<Format> {
        let mut best = None;
        for part in value.split(',') {
            let media = part
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let f = match media.as_str() {
                "application/json" => Some(Format::Json),
                "application/xml" | "text/xml" => Some(Format::Xml),
                m if m.ends_with("+json") => Some(Format::Json),
                m if m.ends_with("+xml") => Some(Format::Xml),
                _ => None,
            };
            if f.is_some() {
                best = f;
                break;
            }
        }
        best
    }
}

/// The error body of every API error (the OpenAPI schema of what [`ApiError::into_response`]
/// writes as JSON).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// An API error.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// The HTTP status code.
    pub status: u16,
    /// A stable machine-readable code (see the README's table).
    pub code: String,
    /// What is wrong, for people.
    pub message: String,
}

/// Why a request was refused or failed, attached to its answer by the dialect's error rendering
/// and read by [`RecordLayer`](super::pipeline::RecordLayer): the code for
/// `extpresence_http_refused_total`, the message for the log.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The machine-readable code (`missing_api_key`, Matrix's `M_FORBIDDEN`, …).
    pub code: &'static str,
    /// What went wrong, as the client was told (escaped when logged).
    pub message: String,
}

impl Refusal {
    /// Attach a refusal to an answer.
    pub fn attach(mut resp: Response, code: &'static str, message: impl Into<String>) -> Response {
        resp.extensions_mut().insert(Refusal {
            code,
            message: message.into(),
        });
        resp
    }
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No API key given.
    #[error("an API key is required (?api-key=, Api-Key header or Authorization: Bearer)")]
    MissingKey,
    /// The API key is not one of ours. `plus_hint`: it came in the query with a space, which
    /// is what an unencoded `+` decodes to (base64 keys have them).
    #[error(
        "the API key is not valid{}",
        if *.plus_hint {
            "; it has a space: a '+' in a query must be percent-encoded as %2B"
        } else {
            ""
        }
    )]
    WrongKey {
        /// Add the hint about `+` in a query.
        plus_hint: bool,
    },
    /// More than one credential was given.
    #[error("{0} credentials given; give the API key once: ?api-key=, an Api-Key header or Authorization: Bearer")]
    AmbiguousCredentials(usize),
    /// Method other than the ones the endpoint serves: the method, and the ones it serves (the
    /// `Allow` header, RFC 9110 §15.5.6).
    #[error("method {0} is not allowed here; allowed: {1}")]
    Method(String, &'static str),
    /// Content-Type is not JSON or XML.
    #[error("Content-Type {0:?} is not supported; use application/json or application/xml")]
    MediaType(String),
    /// Body larger than the limit.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    /// Body could not be read.
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    /// The body did not arrive in time.
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// A path segment is not valid percent-encoded UTF-8.
    #[error("the request path is not valid UTF-8 after percent-decoding")]
    InvalidPath,
    /// The user JID does not parse or names no user.
    #[error("{0:?} is not a valid user JID (expected user@domain)")]
    Jid(String),
    /// The user's domain is not one we serve.
    #[error("domain {0:?} is not served by this extpresence")]
    Domain(String),
    /// Malformed body.
    #[error("malformed {format} body: {message}")]
    Malformed {
        /// `JSON` or `XML`.
        format: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A field has a wrong value.
    #[error("{0}")]
    Invalid(#[from] InvalidStatus),
    /// No such endpoint.
    #[error("no such endpoint")]
    NotFound,
    /// `DELETE /v1/tokens/{id}` names no token held (never minted, revoked already, or purged
    /// after it expired).
    #[error("no such token: {0:?} (GET /v1/tokens lists the tokens held)")]
    NoSuchToken(String),
    /// A query parameter is wrong.
    #[error("malformed query: {0}")]
    MalformedQuery(String),
    /// A bulk request has too many updates.
    #[error("{0} updates in one request; at most {1}")]
    TooManyUpdates(usize, usize),
    /// The status could not be made durable; it is not acknowledged.
    #[error("the status could not be stored: {0}")]
    Storage(String),
    /// The user's roster could not be read from the server.
    #[error("{0}")]
    Roster(String),
    /// The backend cannot do this (e.g. read rosters on Tigase).
    #[error("{0}")]
    Unsupported(String),
    /// The credential may not do this (scope or access).
    #[error("{0}")]
    Forbidden(#[from] crate::access::Denied),
    /// Over the credential's (or the global) rate limit: retry after this long.
    #[error("too many requests: retry after {} s", .0.as_secs().max(1))]
    RateLimited(std::time::Duration),
    /// A presence query names a user twice: the index of the repeat, of the first, and the user.
    #[error("users[{0}] repeats users[{1}] ({2}); name each user once")]
    DuplicateUser(usize, usize, String),
    /// A presence query's answer would be larger than the limit (bytes) by the user at this
    /// index.
    #[error(
        "the answer would be larger than {0} bytes at users[{1}]; ask for fewer users at a time"
    )]
    AnswerTooLarge(usize, usize),
    /// As many live tokens as the cap are held: revoke some first.
    #[error("{0} live tokens are held already (the cap); revoke some first")]
    TooManyTokens(usize),
    /// An event stream would follow more users than [`crate::events::MAX_FOLLOWED`].
    #[error("{0}")]
    TooManyUsers(String),
    /// A `Last-Event-ID` that is not an event id.
    #[error("Last-Event-ID {0:?} is not an event id")]
    LastEventId(String),
}

impl ApiError {
    /// HTTP status code.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingKey => StatusCode::UNAUTHORIZED,
            ApiError::WrongKey { .. } | ApiError::Domain(_) | ApiError::Forbidden(_) => {
                StatusCode::FORBIDDEN
            }
            ApiError::Method(..) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::MediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound | ApiError::NoSuchToken(_) => StatusCode::NOT_FOUND,
            ApiError::Storage(_) | ApiError::Roster(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TooManyTokens(_) => StatusCode::CONFLICT,
            ApiError::BodyRead(_)
            | ApiError::AmbiguousCredentials(_)
            | ApiError::InvalidPath
            | ApiError::MalformedQuery(_)
            | ApiError::LastEventId(_)
            | ApiError::TooManyUpdates(..)
            | ApiError::DuplicateUser(..)
            | ApiError::AnswerTooLarge(..)
            | ApiError::TooManyUsers(_)
            | ApiError::Jid(_)
            | ApiError::Malformed { .. }
            | ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingKey => "missing_api_key",
            ApiError::WrongKey { .. } => "invalid_api_key",
            ApiError::AmbiguousCredentials(_) => "ambiguous_credentials",
            ApiError::InvalidPath => "invalid_path",
            ApiError::MalformedQuery(_) => "malformed_query",
            ApiError::TooManyUpdates(..) => "too_many_updates",
            ApiError::DuplicateUser(..) => "duplicate_user",
            ApiError::AnswerTooLarge(..) => "answer_too_large",
            ApiError::TooManyUsers(_) => "too_many_users",
            ApiError::Method(..) => "method_not_allowed",
            ApiError::MediaType(_) => "unsupported_media_type",
            ApiError::TooLarge(_) => "body_too_large",
            ApiError::BodyRead(_) => "body_unreadable",
            ApiError::BodyTimeout(_) => "body_timeout",
            ApiError::Jid(_) => "invalid_jid",
            ApiError::Domain(_) => "domain_not_served",
            ApiError::Malformed { .. } => "malformed_body",
            ApiError::Invalid(InvalidStatus::Show(_)) => "invalid_show",
            ApiError::Invalid(InvalidStatus::Priority(_))
            | ApiError::Invalid(InvalidStatus::NonNegativePriority(_)) => "invalid_priority",
            ApiError::Invalid(InvalidStatus::ControlCharacter(_))
            | ApiError::Invalid(InvalidStatus::TooLong(_)) => "invalid_status",
            ApiError::Invalid(InvalidStatus::Resource(_)) => "invalid_resource",
            ApiError::Invalid(InvalidStatus::Presence(_)) => "invalid_presence",
            ApiError::Invalid(InvalidStatus::Source(_)) => "invalid_source",
            ApiError::Invalid(
                InvalidStatus::TooManySources | InvalidStatus::TooManySourcesOf(_),
            ) => "too_many_sources",
            ApiError::Invalid(InvalidStatus::Expiry(_)) => "invalid_expiry",
            ApiError::NotFound => "not_found",
            ApiError::NoSuchToken(_) => "no_such_token",
            ApiError::Storage(_) => "storage_unavailable",
            ApiError::Roster(_) => "roster_unavailable",
            ApiError::Unsupported(_) => "not_supported",
            ApiError::LastEventId(_) => "invalid_last_event_id",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::TooManyTokens(_) => "too_many_tokens",
        }
    }

    /// The response in `format`.
    pub fn into_response(self, format: Format) -> Response {
        let status = self.status();
        let message = self.to_string();
        let body = match format {
            Format::Json => serde_json::json!({
                "error": { "status": status.as_u16(), "code": self.code(), "message": message }
            })
            .to_string(),
            Format::Xml => format!(
                "<error><status>{}</status><code>{}</code><message>{}</message></error>",
                status.as_u16(),
                self.code(),
                xml_escape(&message)
            ),
        };
        let mut resp = (status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(format.content_type()),
        );
        match self {
            ApiError::Method(_, allow) => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::MissingKey => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::RateLimited(wait) => {
                headers.insert(header::RETRY_AFTER, retry_after(wait));
            }
            _ => {}
        }
        Refusal::attach(resp, self.code(), message)
    }
}

impl From<crate::access::tokens::MintError> for ApiError {
    fn from(e: crate::access::tokens::MintError) -> ApiError {
        use crate::access::tokens::MintError;
        match e {
            MintError::Full(cap) => ApiError::TooManyTokens(cap),
            MintError::Store(e) => ApiError::Storage(e.to_string()),
        }
    }
}

/// `Retry-After` in whole seconds, rounded up (at least 1).
pub fn retry_after(wait: std::time::Duration) -> HeaderValue {
    let secs = wait.as_millis().div_ceil(1000).max(1);
    HeaderValue::from_str(&secs.to_string()).expect("digits")
}

/// HTTP status of a status response whose change did not take effect on the server (the body is
/// the usual status object with `success: false` and the reason): 502 when the server refused it,
/// 504 when it did not answer in time, 503 while the link is down.
pub fn delivery_status(error: &DeliveryError) -> StatusCode {
    match error {
        DeliveryError::Refused(_) => StatusCode::BAD_GATEWAY,
        DeliveryError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        DeliveryError::LinkDown => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Escape text for XML content.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Never echo characters XML cannot carry.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        assert_eq!(
            Format::from_media_type("application/json; charset=utf-8"),
            Some(Format::Json)
        );
        assert_eq!(Format::from_media_type("text/xml"), Some(Format::Xml));
        assert_eq!(
            Format::from_media_type("application/atom+xml"),
            Some(Format::Xml)
        );
        assert_eq!(Format::from_media_type("text/plain"), None);
        assert_eq!(
            Format::from_media_type("text/html, application/xml;q=0.9"),
            Some(Format::Xml)
        );
    }

    #[test]
    fn escape() {
        assert_eq!(
            xml_escape("a<b>&\"'\u{7}"),
            "a&lt;b&gt;&amp;&quot;&apos;\u{fffd}"
        );
    }

    /// A mint refused over the cap (`access/tokens.rs`, expired_tokens_do_not_count_toward_the_cap)
    /// answers 409 `too_many_tokens`.
    #[test]
    fn full_token_cap_is_409() {
        let api = ApiError::from(crate::access::tokens::MintError::Full(10));
        assert_eq!(
            (api.status().as_u16(), api.code()),
            (409, "too_many_tokens")
        );
    }
}
