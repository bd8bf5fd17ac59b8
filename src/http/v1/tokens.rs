//! `/v1/tokens`: per-user tokens, managed with an admin credential (write access).
//!
//! - `POST /v1/tokens {"user","access","name","expires_in"}` → 201 with the token, the only time
//!   it is shown;
//! - `GET /v1/tokens` → every token held (never a secret);
//! - `DELETE /v1/tokens/{id}` → 204; refused at once by every dialect.
//!
//! The model is [`crate::access::tokens`]; this file only translates.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, MethodRouter};
use axum::Router;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::common::{finish, json, malformed};
use crate::access::tokens::TokenInfo;
use crate::access::Access;
use crate::base::clock::rfc3339;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::input;
use crate::http::pipeline::{others, require_json};
use crate::http::state::{AppState, MAX_BODY_BYTES};

/// Longest lifetime of a token: 10 years.
const MAX_EXPIRES_IN: u64 = 10 * 366 * 24 * 3600;

/// The token routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/v1/tokens",
            MethodRouter::new()
                .get(list)
                .post(mint)
                .fallback(others("GET, POST")),
        )
        .route("/v1/tokens/{id}", delete(revoke).fallback(others("DELETE")))
}

/// A token to mint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintRequest {
    /// The user it acts for (a served domain).
    #[schema(
        pattern = "^[a-z0-9._-]{1,64}@[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?){0,4}$"
    )]
    user: String,
    /// `read`, `write` or `read-write`.
    #[schema(value_type = AccessDoc)]
    access: String,
    /// A name for people (1..64 characters, no control characters).
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    name: Option<String>,
    /// Seconds until it stops working (1..316,224,000); never when absent.
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 316224000)]
    expires_in: Option<serde_json::Value>,
}

/// What a token may do (documentation type).
#[derive(ToSchema)]
#[schema(rename_all = "kebab-case")]
#[allow(dead_code)]
pub enum AccessDoc {
    /// Read presence, contacts and events.
    Read,
    /// Set and clear statuses.
    Write,
    /// Both.
    ReadWrite,
}

/// What a token is, as answered (never its secret): [`TokenInfo`] with its times in RFC 3339,
/// like every other `/v1` time.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenAnswer {
    /// The public id (12 hex digits): `DELETE /v1/tokens/{id}` revokes it.
    id: String,
    /// The user it acts for.
    user: String,
    /// `read`, `write` or `read-write`.
    access: String,
    /// A name for people.
    name: Option<String>,
    /// When it was minted (RFC 3339).
    #[schema(format = DateTime)]
    created_at: String,
    /// When it stops working (RFC 3339); never when null.
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<String>,
}

impl From<TokenInfo> for TokenAnswer {
    fn from(t: TokenInfo) -> TokenAnswer {
        TokenAnswer {
            id: t.id,
            user: t.user,
            access: t.access,
            name: t.name,
            created_at: rfc3339(t.created_at),
            expires_at: t.expires_at.map(rfc3339),
        }
    }
}

/// A minted token.
#[derive(Debug, Serialize, ToSchema)]
pub struct Minted {
    /// The token: give it as `Authorization: Bearer`, `Api-Key` or `?api-key=`. Shown only now.
    token: String,
    /// What it is.
    #[serde(flatten)]
    info: TokenAnswer,
}

/// Every token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    /// Oldest first.
    tokens: Vec<TokenAnswer>,
}

fn invalid(message: String) -> ApiError {
    ApiError::Malformed {
        format: "JSON",
        message,
    }
}

/// Mint a per-user token.
#[utoipa::path(
    post,
    path = "/v1/tokens",
    tag = "v1",
    request_body(content = MintRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Minted and durable; the token is in the answer only", body = Minted),
        (status = 400, description = "A wrong field (`malformed_body`, `invalid_jid`)", body = ErrorBody),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Not an admin credential with write access (`forbidden`), or a domain not served", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 413, description = "Body over 16 KiB", body = ErrorBody),
        (status = 409, description = "100,000 live tokens are held already (`too_many_tokens`): revoke some first (expired tokens do not count)", body = ErrorBody),
        (status = 415, description = "Not `application/json`", body = ErrorBody),
        (status = 429, description = "Over the rate limit (`rate_limited`, `Retry-After`)", body = ErrorBody),
        (status = 503, description = "The store cannot commit: no token", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn mint(
    State(state): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let grant = state.keys.check(q.as_deref(), &headers)?;
        grant.admin_write()?;
        require_json(&headers)?;
        let body = input::read_body(&headers, body, MAX_BODY_BYTES, state.body_timeout).await?;
        let req: MintRequest = serde_json::from_slice(&body).map_err(malformed)?;
        let user = input::served_user(&req.user, &state.domains)?;
        let access = Access::parse(&req.access).ok_or_else(|| {
            invalid(format!(
                "access {:?} is not one of read, write, read-write",
                req.access
            ))
        })?;
        if let Some(n) = &req.name {
            if n.is_empty() || n.chars().count() > 64 || n.chars().any(char::is_control) {
                return Err(invalid(
                    "name must be 1 to 64 characters without control characters".into(),
                ));
            }
        }
        // JSON has numbers, not integers: 3600.0 is 3600.
        let expires_in = match &req.expires_in {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64))
                    .filter(|s| (1..=MAX_EXPIRES_IN).contains(s))
                    .ok_or_else(|| {
                        invalid(format!(
                            "expires_in must be a whole number of seconds between 1 and {MAX_EXPIRES_IN}"
                        ))
                    })?,
            ),
        };
        let (token, info) = state
            .keys
            .tokens
            .mint(&user, access, req.name, expires_in)
            .await?;
        Ok(json(
            StatusCode::CREATED,
            &Minted {
                token,
                info: info.into(),
            },
        ))
    }
    .await;
    finish(r)
}

/// Every token held (never a secret).
#[utoipa::path(
    get,
    path = "/v1/tokens",
    tag = "v1",
    responses(
        (status = 200, description = "The tokens, oldest first", body = TokenList),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Not an admin credential with write access", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let r = (|| {
        let grant = state.keys.check(q.as_deref(), &headers)?;
        grant.admin_write()?;
        Ok(json(
            StatusCode::OK,
            &TokenList {
                tokens: state
                    .keys
                    .tokens
                    .list()
                    .into_iter()
                    .map(Into::into)
                    .collect(),
            },
        ))
    })();
    finish(r)
}

/// Revoke a token: refused at once, everywhere.
#[utoipa::path(
    delete,
    path = "/v1/tokens/{id}",
    tag = "v1",
    params(("id" = String, Path, description = "The token's id (from the list or the mint answer)", pattern = "^[0-9a-f]{12}$")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "No API key", body = ErrorBody),
        (status = 403, description = "Not an admin credential with write access", body = ErrorBody),
        (status = 404, description = "No such token (`no_such_token`)", body = ErrorBody),
        (status = 503, description = "Refused from now on, but the store could not commit the removal", body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn revoke(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let grant = state.keys.check(q.as_deref(), &headers)?;
        grant.admin_write()?;
        let Ok(Path(id)) = &path else {
            return Err(ApiError::InvalidPath);
        };
        match state.keys.tokens.revoke(id).await {
            Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
            Ok(false) => Err(ApiError::NoSuchToken(id.chars().take(64).collect())),
            Err(e) => Err(ApiError::Storage(e.to_string())),
        }
    }
    .await;
    finish(r)
}
