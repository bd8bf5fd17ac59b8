//! What the `/v1` routes share: their size limits, JSON answers and the refusal of malformed JSON, the served user of a `{jid}` path segment.

use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use jid::BareJid;
use serde::Serialize;

use crate::http::error::{ApiError, Format};
use crate::http::input;
use crate::http::state::AppState;

/// Most updates in one bulk request.
pub const MAX_BULK_UPDATES: usize = 1000;
/// Largest bulk request body.
pub const MAX_BULK_BYTES: usize = 1 << 20;

/// A JSON answer.
pub fn json(code: StatusCode, body: &impl Serialize) -> Response {
    let mut r = (
        code,
        serde_json::to_string(body).expect("answers serialise"),
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The refusal of a body that is not the JSON expected.
pub fn malformed(e: serde_json::Error) -> ApiError {
    ApiError::Malformed {
        format: "JSON",
        message: e.to_string(),
    }
}

/// Answer an error the dialect's way (its refusal recorded by the pipeline).
pub fn finish(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(|e| e.into_response(Format::Json))
}

/// The served user named by the `{jid}` path segment.
pub fn user_of(
    state: &AppState,
    path: &Result<Path<String>, PathRejection>,
) -> Result<BareJid, ApiError> {
    let Ok(Path(raw)) = path else {
        return Err(ApiError::InvalidPath);
    };
    input::served_user(raw, &state.domains)
}
