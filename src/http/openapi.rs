//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of `/v1` and the Tigase dialect, derived
//! from the handlers and types (utoipa), so it cannot drift; above both dialects (it reads their
//! handlers' annotations), with the key scheme and the 429 of every keyed
//! operation added once for all.

use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use utoipa::OpenApi;

use super::error::{ErrorBody, ErrorDetail};
use super::pipeline::others;
use super::state::AppState;

/// `GET /v1/openapi.json`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/v1/openapi.json", get(openapi).fallback(others("GET")))
}

/// This document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "v1",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)),
    security(())
)]
pub async fn openapi() -> Response {
    let mut r = ApiDoc::openapi()
        .to_json()
        .expect("the document serialises")
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The key scheme of the document: the `Api-Key` header. `?api-key=` and `Authorization: Bearer`
/// work too (the document's description says so); the document names one scheme because a
/// request must carry exactly one credential.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "api_key",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                    "Api-Key",
                    "An API key from [http] api_keys. Instead of this header: ?api-key= or \
                     Authorization: Bearer — exactly one of the three.",
                ))),
            );
    }
}

/// Every keyed operation (one that documents 401) can be refused by the credential's or the
/// global rate limit, checked with the key: its 429 is added here, once for all, so that no
/// route can miss it.
struct RateLimited;

impl utoipa::Modify for RateLimited {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::{schema::Type, Content, ObjectBuilder, Ref, RefOr, ResponseBuilder};
        let answer = ResponseBuilder::new()
            .description(
                "Over the credential's or the global rate limit (`rate_limited`): retry after \
                 `Retry-After` seconds",
            )
            .header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(1)),
                    )
                    .description(Some("Seconds to wait"))
                    .build(),
            )
            .content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("ErrorBody"))),
            )
            .build();
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                let r = &mut op.responses.responses;
                if r.contains_key("401") && !r.contains_key("429") {
                    r.insert("429".into(), RefOr::T(answer.clone()));
                }
            }
        }
    }
}

/// The OpenAPI document of `/v1` and the Tigase dialect.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "extpresence",
        description = "Set and read the presence of XMPP users over HTTP. Give the API key once: \
                       an `Api-Key` header, `?api-key=` or `Authorization: Bearer` (several \
                       credentials are refused with 400 `ambiguous_credentials`)."
    ),
    paths(
        crate::http::v1::status::put_status,
        crate::http::v1::status::delete_status,
        crate::http::v1::status::get_status,
        crate::http::v1::status::bulk,
        openapi,
        crate::http::v1::read::get_presence,
        crate::http::v1::read::query,
        crate::http::v1::read::get_contacts,
        crate::http::v1::read::events,
        crate::http::v1::tokens::mint,
        crate::http::v1::tokens::list,
        crate::http::v1::tokens::revoke,
        crate::http::tigase::status_default,
        crate::http::tigase::status_resource
    ),
    components(schemas(
        crate::http::v1::status::Presence,
        ErrorBody,
        ErrorDetail,
        crate::http::v1::status::BulkItem,
        crate::http::tigase::command::StatusResponse,
        crate::http::tigase::command::StatusResponseBody
    )),
    modifiers(&Security, &RateLimited)
)]
pub struct ApiDoc;
