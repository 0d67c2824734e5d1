//! The caller's devices and their friends' presence (issue 6).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use sqlx::Row;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Auth, Path};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_devices))
        .routes(routes!(disconnect_device))
        .routes(routes!(friends_presence))
}

/// A device (MQTT client id) of the caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct Device {
    /// The client id.
    pub client_id: String,
    /// Whether it is connected now.
    pub online: bool,
    /// When the current connection was accepted (unix ms), if online.
    pub connected_since: Option<i64>,
    /// When it was first seen (unix ms).
    pub first_seen: i64,
    /// When it was last connected (unix ms; now if online).
    pub last_seen: i64,
    /// The client's address (ip:port) of the current connection, when online and known.
    pub address: Option<String>,
}

/// GET /api/v1/me/devices — the caller's devices, online ones first.
#[utoipa::path(get, path = "/me/devices", tag = "devices", security(("bearer" = [])),
    responses((status = 200, body = Vec<Device>), (status = 401, body = ErrorBody)))]
async fn list_devices(
    State(st): State<AppState>,
    Auth(me): Auth,
) -> ApiResult<axum::Json<Vec<Device>>> {
    let rows = sqlx::query("SELECT client_id, first_seen, last_seen FROM devices WHERE user_id = $1 ORDER BY last_seen DESC")
        .bind(me.user_id)
        .fetch_all(&st.db.pool)
        .await?;
    let mut live = st.connections.of_user(me.user_id);
    live.retain(|c| c.is_online());
    let now = crate::now_ms();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let client_id: String = r.try_get("client_id")?;
        let conn = live.iter().find(|c| c.client_id == client_id);
        out.push(Device {
            online: conn.is_some(),
            connected_since: conn.map(|c| c.connected_at),
            first_seen: r.try_get("first_seen")?,
            last_seen: if conn.is_some() {
                now
            } else {
                r.try_get("last_seen")?
            },
            address: conn.and_then(|c| c.peer).map(|a| a.to_string()),
            client_id,
        });
    }
    // A device that connected a moment ago may not be recorded yet.
    for c in &live {
        if !out.iter().any(|d| d.client_id == c.client_id) {
            out.push(Device {
                client_id: c.client_id.clone(),
                online: true,
                connected_since: Some(c.connected_at),
                first_seen: c.connected_at,
                last_seen: now,
                address: c.peer.map(|a| a.to_string()),
            });
        }
    }
    out.sort_by_key(|d| !d.online);
    Ok(axum::Json(out))
}

/// DELETE /api/v1/me/devices/{client_id} — disconnect that device now (it may connect
/// again with a valid token; log it out with `POST /auth/logout` from the device, or
/// change the password, to keep it out).
#[utoipa::path(delete, path = "/me/devices/{client_id}", tag = "devices", security(("bearer" = [])),
    params(("client_id" = String, Path, description = "The device's MQTT client id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn disconnect_device(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path(client_id): Path<String>,
) -> ApiResult<StatusCode> {
    let known = sqlx::query("SELECT 1 FROM devices WHERE user_id = $1 AND client_id = $2")
        .bind(me.user_id)
        .bind(&client_id)
        .fetch_optional(&st.db.pool)
        .await?
        .is_some();
    let mut victims = st.connections.of_user(me.user_id);
    victims.retain(|c| c.client_id == client_id);
    let closed = st.closer.close(victims);
    if known || closed > 0 {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("device_not_found", "no such device"))
    }
}

/// A friend's presence.
#[derive(Debug, Serialize, ToSchema)]
pub struct FriendPresence {
    /// The friend.
    pub user_id: i64,
    /// Online and last seen.
    #[serde(flatten)]
    pub presence: crate::presence::State,
}

/// GET /api/v1/me/friends/presence — who of the caller's friends is online.
#[utoipa::path(get, path = "/me/friends/presence", tag = "devices", security(("bearer" = [])),
    responses((status = 200, body = Vec<FriendPresence>), (status = 401, body = ErrorBody)))]
async fn friends_presence(
    State(st): State<AppState>,
    Auth(me): Auth,
) -> ApiResult<axum::Json<Vec<FriendPresence>>> {
    let mut friends = st.graph.friends_of(me.user_id);
    friends.sort_unstable();
    Ok(axum::Json(
        friends
            .into_iter()
            .map(|f| FriendPresence {
                user_id: f,
                presence: st.presence.state(f),
            })
            .collect(),
    ))
}
