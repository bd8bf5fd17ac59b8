//! The native API `/v1` (JSON): presence in one word, several sources per resource, expiry, bulk
//! updates, the read side and tokens (its OpenAPI document is `http/openapi.rs`).
//!
//! - `status`: `PUT`/`DELETE`/`GET /v1/users/{jid}/status`, `POST /v1/statuses` (bulk);
//! - `read`: presence, presence queries, contacts and the event stream;
//! - `tokens`: `POST`/`GET /v1/tokens`, `DELETE /v1/tokens/{id}`;
//! - `common`: what the routes share (limits, the 405, JSON answers, the `{jid}` user).
//!
//! This file only assembles the routes: the parts import `common` and nothing of each other.

use std::sync::Arc;

use axum::routing::{post, MethodRouter};
use axum::Router;

use crate::http::pipeline::others;
use crate::http::state::AppState;

pub mod common;
pub mod read;
pub mod status;
pub mod tokens;

pub use common::{MAX_BULK_BYTES, MAX_BULK_UPDATES};

/// The `/v1` routes (and the OpenAPI document).
pub fn routes() -> Router<Arc<AppState>> {
    read::routes()
        .merge(tokens::routes())
        .route(
            "/v1/users/{jid}/status",
            MethodRouter::new()
                .get(status::get_status)
                .put(status::put_status)
                .delete(status::delete_status)
                .fallback(others("GET, PUT, DELETE")),
        )
        .route("/v1/statuses", post(status::bulk).fallback(others("POST")))
}
