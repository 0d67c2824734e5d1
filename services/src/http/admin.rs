//! The admin API (`/admin/v1`), for operators: users, disabling, token revocation,
//! who is online, system notices and statistics.
//!
//! Authenticated by `Authorization: Bearer <admin.token>` compared in constant time;
//! with no admin token configured every admin route answers 404 `admin_disabled`.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::Row;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{bearer, Json, Page, Path, Query};
use crate::accounts;
use crate::db::like_prefix;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::state::AppState;

/// The pseudo-conversation under which device cursors remember notices.
pub const NOTICES: &str = "sys:notices";

/// Routes of this module (mounted under `/admin/v1`).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users))
        .routes(routes!(disable_user))
        .routes(routes!(enable_user))
        .routes(routes!(revoke_tokens))
        .routes(routes!(online))
        .routes(routes!(send_notice))
        .routes(routes!(stats))
}

/// Proof that the request carries the admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let expected = st.config.admin.token.as_bytes();
        if expected.is_empty() {
            return Err(ApiError::not_found(
                "admin_disabled",
                "the admin API is disabled (no admin.token configured)",
            ));
        }
        let given = bearer(parts).unwrap_or("").as_bytes();
        if given.ct_eq(expected).into() {
            Ok(Admin)
        } else {
            Err(ApiError::unauthorized("missing or wrong admin token"))
        }
    }
}

/// A user as administrators see them.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminUser {
    /// Id.
    pub id: i64,
    /// Username.
    pub username: String,
    /// Nickname.
    pub nickname: String,
    /// Whether disabled.
    pub disabled: bool,
    /// Created, unix ms.
    pub created_at: i64,
    /// Whether a device is connected now.
    pub online: bool,
}

/// Query of the user list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct UserQuery {
    /// Username or nickname prefix.
    pub q: Option<String>,
    /// Page size.
    pub limit: Option<i64>,
    /// Items to skip.
    pub offset: Option<i64>,
}

/// GET /admin/v1/users — list or search users (including disabled ones).
#[utoipa::path(get, path = "/users", tag = "admin", security(("admin" = [])), params(UserQuery),
    responses((status = 200, body = Page<AdminUser>), (status = 401, body = ErrorBody)))]
async fn list_users(
    State(st): State<AppState>,
    _: Admin,
    Query(q): Query<UserQuery>,
) -> ApiResult<axum::Json<Page<AdminUser>>> {
    let (limit, offset) = super::extract::PageParams {
        limit: q.limit,
        offset: q.offset,
    }
    .resolve(&st);
    let pattern = like_prefix(&q.q.unwrap_or_default().trim().to_lowercase());
    let rows = sqlx::query(
        "SELECT id, username, nickname, disabled, created_at FROM users \
         WHERE username LIKE $1 ESCAPE '\\' OR lower(nickname) LIKE $1 ESCAPE '\\' \
         ORDER BY id LIMIT $2 OFFSET $3",
    )
    .bind(pattern)
    .bind(limit)
    .bind(offset)
    .fetch_all(&st.db.pool)
    .await?;
    let online = st.presence.online_users();
    let items = rows
        .iter()
        .map(|r| {
            let id: i64 = r.try_get("id")?;
            Ok(AdminUser {
                id,
                username: r.try_get("username")?,
                nickname: r.try_get("nickname")?,
                disabled: r.try_get::<i64, _>("disabled")? != 0,
                created_at: r.try_get("created_at")?,
                online: online.contains(&id),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(axum::Json(Page::new(items, limit, offset)))
}

async fn set_disabled(st: &AppState, id: i64, disabled: bool) -> ApiResult<()> {
    let n = sqlx::query("UPDATE users SET disabled = $1, updated_at = $2 WHERE id = $3")
        .bind(i64::from(disabled))
        .bind(crate::now_ms())
        .bind(id)
        .execute(&st.db.pool)
        .await?
        .rows_affected();
    if n == 0 {
        return Err(ApiError::not_found("user_not_found", "no such user"));
    }
    if disabled {
        st.close_user_connections(id);
    }
    Ok(())
}

/// POST /admin/v1/users/{id}/disable — disable an account: its connections close, its
/// tokens stop working, login and CONNECT are refused.
#[utoipa::path(post, path = "/users/{id}/disable", tag = "admin", security(("admin" = [])),
    params(("id" = i64, Path, description = "User id")), responses((status = 204), (status = 404, body = ErrorBody)))]
async fn disable_user(
    State(st): State<AppState>,
    _: Admin,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    set_disabled(&st, id, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// POST /admin/v1/users/{id}/enable — enable a disabled account again.
#[utoipa::path(post, path = "/users/{id}/enable", tag = "admin", security(("admin" = [])),
    params(("id" = i64, Path, description = "User id")), responses((status = 204), (status = 404, body = ErrorBody)))]
async fn enable_user(
    State(st): State<AppState>,
    _: Admin,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    set_disabled(&st, id, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// POST /admin/v1/users/{id}/revoke-tokens — revoke all of a user's tokens and close
/// their connections.
#[utoipa::path(post, path = "/users/{id}/revoke-tokens", tag = "admin", security(("admin" = [])),
    params(("id" = i64, Path, description = "User id")), responses((status = 200, body = serde_json::Value), (status = 404, body = ErrorBody)))]
async fn revoke_tokens(
    State(st): State<AppState>,
    _: Admin,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<serde_json::Value>> {
    accounts::get_user(&st.db, id).await?;
    let revoked = accounts::revoke_all(&st.db, id, None).await?;
    st.close_user_connections(id);
    Ok(axum::Json(json!({"revoked": revoked.len()})))
}

/// An online device.
#[derive(Debug, Serialize, ToSchema)]
pub struct OnlineDevice {
    /// Client id.
    pub client_id: String,
    /// Connected since, unix ms.
    pub connected_since: i64,
}

/// An online user.
#[derive(Debug, Serialize, ToSchema)]
pub struct OnlineUser {
    /// Id.
    pub user_id: i64,
    /// Username.
    pub username: String,
    /// Connected devices.
    pub devices: Vec<OnlineDevice>,
}

/// Who is online.
#[derive(Debug, Serialize, ToSchema)]
pub struct Online {
    /// Number of users online.
    pub users: usize,
    /// Number of devices online.
    pub devices: usize,
    /// The users, by id.
    pub items: Vec<OnlineUser>,
}

/// GET /admin/v1/online — online users and their devices.
#[utoipa::path(get, path = "/online", tag = "admin", security(("admin" = [])),
    responses((status = 200, body = Online), (status = 401, body = ErrorBody)))]
async fn online(State(st): State<AppState>, _: Admin) -> ApiResult<axum::Json<Online>> {
    let conns = st.connections.select(|c| c.is_online());
    let mut by_user: std::collections::BTreeMap<i64, OnlineUser> = Default::default();
    for c in &conns {
        let Some(p) = c.principal() else { continue };
        by_user
            .entry(p.user_id)
            .or_insert_with(|| OnlineUser {
                user_id: p.user_id,
                username: p.username.clone(),
                devices: Vec::new(),
            })
            .devices
            .push(OnlineDevice {
                client_id: c.client_id.clone(),
                connected_since: c.connected_at,
            });
    }
    Ok(axum::Json(Online {
        users: by_user.len(),
        devices: conns.len(),
        items: by_user.into_values().collect(),
    }))
}

/// A system notice.
#[derive(Debug, Deserialize, ToSchema)]
pub struct NoticeBody {
    /// The recipient; absent for everyone.
    pub user_id: Option<i64>,
    /// The text (1–2000 characters).
    pub text: String,
}

/// POST /admin/v1/notices — send a SYSTEM_NOTICE event to one user or everyone: online
/// devices get it now, others when they next subscribe to their inbox.
#[utoipa::path(post, path = "/notices", tag = "admin", security(("admin" = [])), request_body = NoticeBody,
    responses((status = 202, body = serde_json::Value), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn send_notice(
    State(st): State<AppState>,
    _: Admin,
    Json(b): Json<NoticeBody>,
) -> ApiResult<(StatusCode, axum::Json<serde_json::Value>)> {
    let n = b.text.chars().count();
    if n == 0 || n > 2000 {
        return Err(ApiError::invalid(
            "invalid_text",
            "text must be 1-2000 characters",
        ));
    }
    if let Some(uid) = b.user_id {
        accounts::get_user(&st.db, uid).await?;
    }
    let now = crate::now_ms();
    let id: i64 = sqlx::query(
        "INSERT INTO notices (user_id, text, created_at) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(b.user_id)
    .bind(&b.text)
    .bind(now)
    .fetch_one(&st.db.pool)
    .await?
    .try_get("id")?;
    let data = json!({"id": id, "text": b.text, "created_at": now});
    let conns = st
        .connections
        .select(|c| c.is_online() && b.user_id.is_none_or(|u| c.user_id() == Some(u)));
    let mut users: Vec<i64> = conns.iter().filter_map(|c| c.user_id()).collect();
    users.sort_unstable();
    users.dedup();
    st.push.event(&users, "SYSTEM_NOTICE", data);
    for c in &conns {
        if let Some(uid) = c.user_id() {
            st.messaging
                .delivery
                .advance(uid, &c.client_id, NOTICES, id);
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"id": id, "delivered_now": users.len()})),
    ))
}

/// Server statistics.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    /// Accounts.
    pub users: i64,
    /// Groups (not dissolved).
    pub groups: i64,
    /// Messages stored.
    pub messages: i64,
    /// Devices connected.
    pub connections: usize,
    /// Users online.
    pub online_users: usize,
    /// Seconds since start.
    pub uptime_secs: u64,
}

/// GET /admin/v1/stats — users, groups, messages, connections, uptime.
#[utoipa::path(get, path = "/stats", tag = "admin", security(("admin" = [])),
    responses((status = 200, body = Stats), (status = 401, body = ErrorBody)))]
async fn stats(State(st): State<AppState>, _: Admin) -> ApiResult<axum::Json<Stats>> {
    let count = |sql: &'static str| {
        let db = st.db.clone();
        async move {
            sqlx::query(sql)
                .fetch_one(&db.pool)
                .await
                .and_then(|r| r.try_get::<i64, _>(0))
        }
    };
    Ok(axum::Json(Stats {
        users: count("SELECT COUNT(*) FROM users").await?,
        groups: count("SELECT COUNT(*) FROM chat_groups WHERE dissolved_at IS NULL").await?,
        messages: count("SELECT COUNT(*) FROM messages").await?,
        connections: st.connections.select(|c| c.is_online()).len(),
        online_users: st.presence.online_users().len(),
        uptime_secs: st.started.elapsed().as_secs(),
    }))
}
