//! Health, readiness and metrics (outside `/api/v1`, no token).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

/// Routes of this module.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// GET /healthz — the process is up.
async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// GET /readyz — the database answers and the broker's publisher is running.
async fn readyz(State(st): State<AppState>) -> impl IntoResponse {
    let db = st.db.ping().await;
    let status = if db {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(
            serde_json::json!({"status": if db {"ready"} else {"not_ready"}, "database": db, "broker": true}),
        ),
    )
}

/// GET /metrics — Prometheus text format.
async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    st.metrics.observe_broker(&st.broker_log);
    st.metrics.observe_heap();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
}
