//! Accounts, tokens and profiles (SPEC §2, §3 "Profiles").

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Auth, Json, Page, PageParams, Path, Query};
use crate::accounts::{self, Me, NearbyUser, PublicUser, Session};
use crate::error::{ApiResult, ErrorBody};
use crate::metrics::Metrics;
use crate::state::AppState;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(get_me, patch_me))
        .routes(routes!(change_password))
        .routes(routes!(set_location))
        .routes(routes!(nearby))
        .routes(routes!(search_users))
        .routes(routes!(get_user))
}

/// Registration body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RegisterRequest {
    /// `^[a-z0-9_]{3,32}$`, unique, never changes.
    pub username: String,
    /// 8–128 characters.
    pub password: String,
    /// Display name (defaults to the username).
    pub nickname: Option<String>,
}

/// POST /api/v1/auth/register — create an account and get a token.
#[utoipa::path(post, path = "/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, body = Session), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 400, body = ErrorBody)))]
async fn register(
    State(st): State<AppState>,
    Json(req): Json<RegisterRequest>,
) -> ApiResult<(StatusCode, axum::Json<Session>)> {
    let s = accounts::register(
        &st.db,
        &st.hasher,
        st.config.auth.token_ttl_secs,
        &req.username,
        &req.password,
        req.nickname.as_deref(),
    )
    .await?;
    st.metrics.registrations.inc();
    Ok((StatusCode::CREATED, axum::Json(s)))
}

/// Login body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoginRequest {
    /// Username.
    pub username: String,
    /// Password.
    pub password: String,
}

/// POST /api/v1/auth/login — exchange username and password for a new token.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = Session), (status = 401, body = ErrorBody)))]
async fn login(
    State(st): State<AppState>,
    Json(req): Json<LoginRequest>,
) -> ApiResult<axum::Json<Session>> {
    let r = accounts::login(
        &st.db,
        &st.hasher,
        st.config.auth.token_ttl_secs,
        &req.username,
        &req.password,
    )
    .await;
    Metrics::inc(&st.metrics.logins, if r.is_ok() { "ok" } else { "failed" });
    Ok(axum::Json(r?))
}

/// POST /api/v1/auth/logout — revoke the token used; its MQTT connections close.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ErrorBody)))]
async fn logout(State(st): State<AppState>, Auth(me): Auth) -> ApiResult<StatusCode> {
    accounts::revoke_token(&st.db, me.token_id).await?;
    st.close_token_connections(&[me.token_id]);
    Ok(StatusCode::NO_CONTENT)
}

/// GET /api/v1/me — the caller's profile.
#[utoipa::path(get, path = "/me", tag = "profile", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
async fn get_me(State(st): State<AppState>, Auth(me): Auth) -> ApiResult<axum::Json<Me>> {
    Ok(axum::Json(accounts::get_me(&st.db, me.user_id).await?))
}

/// Profile changes; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchMe {
    /// Display name, 1–64 characters.
    pub nickname: Option<String>,
    /// http(s) URL or `/api/v1/files/…`, up to 512 characters; empty clears it.
    pub avatar_url: Option<String>,
    /// Up to 500 characters.
    pub bio: Option<String>,
}

/// PATCH /api/v1/me — change nickname, avatar URL or bio.
#[utoipa::path(patch, path = "/me", tag = "profile", security(("bearer" = [])), request_body = PatchMe,
    responses((status = 200, body = Me), (status = 422, body = ErrorBody)))]
async fn patch_me(
    State(st): State<AppState>,
    Auth(me): Auth,
    Json(p): Json<PatchMe>,
) -> ApiResult<axum::Json<Me>> {
    let m = accounts::update_profile(
        &st.db,
        me.user_id,
        p.nickname.as_deref(),
        p.avatar_url.as_deref(),
        p.bio.as_deref(),
    )
    .await?;
    Ok(axum::Json(m))
}

/// Password change body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct PasswordChange {
    /// The current password.
    pub current_password: String,
    /// The new password, 8–128 characters.
    pub new_password: String,
}

/// PUT /api/v1/me/password — change the password; every other token is revoked and
/// its MQTT connections closed.
#[utoipa::path(put, path = "/me/password", tag = "profile", security(("bearer" = [])), request_body = PasswordChange,
    responses((status = 204), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn change_password(
    State(st): State<AppState>,
    Auth(me): Auth,
    Json(p): Json<PasswordChange>,
) -> ApiResult<StatusCode> {
    let revoked = accounts::change_password(
        &st.db,
        &st.hasher,
        &me,
        &p.current_password,
        &p.new_password,
    )
    .await?;
    st.close_token_connections(&revoked);
    Ok(StatusCode::NO_CONTENT)
}

/// A location.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Location {
    /// Latitude, -90…90.
    pub lat: f64,
    /// Longitude, -180…180.
    pub lon: f64,
}

/// PUT /api/v1/me/location — report where the caller is, for "people nearby".
#[utoipa::path(put, path = "/me/location", tag = "profile", security(("bearer" = [])), request_body = Location,
    responses((status = 204), (status = 422, body = ErrorBody)))]
async fn set_location(
    State(st): State<AppState>,
    Auth(me): Auth,
    Json(l): Json<Location>,
) -> ApiResult<StatusCode> {
    accounts::set_location(&st.db, me.user_id, l.lat, l.lon).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /users/nearby`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct NearbyParams {
    /// Radius in km, (0, 1000].
    pub radius_km: f64,
    /// Most results (default page size).
    pub limit: Option<i64>,
}

/// GET /api/v1/users/nearby — users within `radius_km` of the caller, nearest first.
#[utoipa::path(get, path = "/users/nearby", tag = "users", security(("bearer" = [])), params(NearbyParams),
    responses((status = 200, body = Vec<NearbyUser>), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn nearby(
    State(st): State<AppState>,
    Auth(me): Auth,
    Query(q): Query<NearbyParams>,
) -> ApiResult<axum::Json<Vec<NearbyUser>>> {
    let l = &st.config.limits;
    let limit = q.limit.unwrap_or(l.page_size).clamp(1, l.max_page_size);
    Ok(axum::Json(
        accounts::nearby(&st.db, me.user_id, q.radius_km, limit).await?,
    ))
}

/// Query of `GET /users`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct SearchParams {
    /// Username or nickname prefix (case-insensitive).
    pub q: String,
    /// Page size.
    pub limit: Option<i64>,
    /// Items to skip.
    pub offset: Option<i64>,
}

/// GET /api/v1/users?q= — search users by username or nickname prefix.
#[utoipa::path(get, path = "/users", tag = "users", security(("bearer" = [])), params(SearchParams),
    responses((status = 200, body = Page<PublicUser>), (status = 422, body = ErrorBody)))]
async fn search_users(
    State(st): State<AppState>,
    Auth(_me): Auth,
    Query(q): Query<SearchParams>,
) -> ApiResult<axum::Json<Page<PublicUser>>> {
    let (limit, offset) = PageParams {
        limit: q.limit,
        offset: q.offset,
    }
    .resolve(&st);
    let items = accounts::search(&st.db, &q.q, limit, offset).await?;
    Ok(axum::Json(Page::new(items, limit, offset)))
}

/// GET /api/v1/users/{id} — a user's public profile.
#[utoipa::path(get, path = "/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id")),
    responses((status = 200, body = PublicUser), (status = 404, body = ErrorBody)))]
async fn get_user(
    State(st): State<AppState>,
    Auth(_me): Auth,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<PublicUser>> {
    Ok(axum::Json(accounts::get_user(&st.db, id).await?))
}
