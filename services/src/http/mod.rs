//! The HTTP layer: REST API under `/api/v1`, operations endpoints, and the OpenAPI
//! document generated from the handlers' annotations (`/openapi.json`).
//!
//! Each resource module exposes an `OpenApiRouter`; merging them here both mounts the
//! routes and collects their documentation, so an endpoint cannot be added without
//! appearing in the document.

pub mod accounts;
pub mod admin;
pub mod devices;
pub mod extract;
pub mod files;
pub mod friends;
pub mod groups;
pub mod messages;
pub mod mqtt_hooks;
pub mod ops;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::error::ApiError;
use crate::metrics::HttpLabels;
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "mqim REST API", description = "Accounts, social graph, messages and files of mqim. All /api/v1 calls except register and login need `Authorization: Bearer <token>`. Times are unix milliseconds."),
    modifiers(&BearerAuth),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = openapi.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
            c.add_security_scheme(
                "admin",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some("the admin.token of the server configuration"))
                        .build(),
                ),
            );
            c.add_security_scheme(
                "mqtt_hooks",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "the mqtt_hooks.secret of the server configuration; with none \
                             set, only loopback callers are answered",
                        ))
                        .build(),
                ),
            );
        }
    }
}

/// The `/api/v1` routes with their documentation (used by the router and by tests
/// that check the document is complete).
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(accounts::router())
        .merge(friends::router())
        .merge(groups::router())
        .merge(messages::router())
        .merge(files::router())
        .merge(devices::router())
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let (api, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", api())
        .nest("/admin/v1", admin::router())
        .merge(mqtt_hooks::router())
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let doc = std::sync::Arc::new(doc);
    let max_body = state.config.http.max_body_bytes;
    api.merge(ops::router())
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint")
}

/// Counts requests by method and status, and turns axum's own plain-text rejections
/// (e.g. 405) into the JSON error body.
async fn count_requests(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    st.metrics
        .http_requests
        .get_or_create(&HttpLabels {
            method,
            status: status.as_u16(),
        })
        .inc();
    if status == StatusCode::METHOD_NOT_ALLOWED {
        return ApiError::new(status, "method_not_allowed", "method not allowed").into_response();
    }
    resp
}
