//! The router: each dialect's routes (given their own settings and state), the operations
//! routes, the OpenAPI document, the 404 fallback, and around every route the client scope and
//! the request pipeline's record. The top of `http/`: it imports the dialects, nothing imports it
//! but `lib.rs`.

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::response::Response;
use axum::Router;

use super::error::ApiError;
use super::matrix::MatrixSettings;
use super::pipeline::{reply_format, RecordLayer, Recorder};
use super::state::AppState;
use super::ui::UiState;

/// The API router.
pub fn router(state: Arc<AppState>, matrix: MatrixSettings, ui: Arc<UiState>) -> Router {
    Router::new()
        .merge(super::tigase::routes())
        .merge(super::ops::routes())
        .merge(super::v1::routes())
        .merge(super::openapi::routes())
        .merge(super::matrix::routes(matrix))
        .merge(super::waher::routes())
        .merge(super::ui::routes(ui))
        .fallback(not_found)
        // Inside the client scope, and on every route and the fallback (axum applies a router's
        // layer to each route, after routing: the route that matched is known).
        .layer(RecordLayer(Recorder {
            metrics: state.metrics.clone(),
            requests: state.requests.clone(),
        }))
        .layer(axum::middleware::from_fn_with_state(
            state.keys.clone(),
            super::auth::scope_client,
        ))
        .with_state(state)
}

async fn not_found(headers: HeaderMap) -> Response {
    ApiError::NotFound.into_response(reply_format(&headers))
}
