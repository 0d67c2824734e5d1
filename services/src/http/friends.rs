//! Friends, friend requests and blocks (SPEC §3 "Friends"); the rules live in
//! [`crate::social::friends`], these handlers only translate HTTP.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Auth, Json, Page, PageParams, Path, Query};
use crate::error::{ApiResult, ErrorBody};
use crate::social::friends::{self, BlockedUser, Direction, Friend, FriendRequest, RequestState};
use crate::state::AppState;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_friends))
        .routes(routes!(remove_friend))
        .routes(routes!(send_request, list_requests))
        .routes(routes!(accept_request))
        .routes(routes!(reject_request))
        .routes(routes!(cancel_request))
        .routes(routes!(list_blocks))
        .routes(routes!(block, unblock))
}

/// GET /api/v1/friends — the caller's friends, by username.
#[utoipa::path(get, path = "/friends", tag = "friends", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<Friend>), (status = 401, body = ErrorBody)))]
async fn list_friends(
    State(st): State<AppState>,
    Auth(me): Auth,
    Query(p): Query<PageParams>,
) -> ApiResult<axum::Json<Page<Friend>>> {
    let (limit, offset) = p.resolve(&st);
    let items = friends::list_friends(&st, me.user_id, limit, offset).await?;
    Ok(axum::Json(Page::new(items, limit, offset)))
}

/// DELETE /api/v1/friends/{user_id} — end a friendship; both get FRIEND_REMOVED.
#[utoipa::path(delete, path = "/friends/{user_id}", tag = "friends", security(("bearer" = [])),
    params(("user_id" = i64, Path, description = "The friend's user id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn remove_friend(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path(uid): Path<i64>,
) -> ApiResult<StatusCode> {
    friends::remove_friend(&st, me.user_id, uid).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A friend request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFriendRequest {
    /// Whom to befriend.
    pub user_id: i64,
    /// A note for the recipient, up to 200 characters.
    #[serde(default)]
    pub message: String,
}

/// POST /api/v1/friends/requests — ask a user to be friends (FRIEND_INVITE to them).
/// When they already asked the caller, this accepts their request instead (state
/// `accepted`, FRIEND_AGREE to both).
#[utoipa::path(post, path = "/friends/requests", tag = "friends", security(("bearer" = [])), request_body = NewFriendRequest,
    responses((status = 201, body = FriendRequest), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn send_request(
    State(st): State<AppState>,
    Auth(me): Auth,
    Json(r): Json<NewFriendRequest>,
) -> ApiResult<(StatusCode, axum::Json<FriendRequest>)> {
    let req = friends::send_request(&st, me.user_id, r.user_id, &r.message).await?;
    Ok((StatusCode::CREATED, axum::Json(req)))
}

/// Query of `GET /friends/requests`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RequestFilter {
    /// `incoming` or `outgoing` (default both).
    pub direction: Option<Direction>,
    /// Only requests in this state (default all).
    pub state: Option<RequestState>,
    /// Page size.
    pub limit: Option<i64>,
    /// Items to skip.
    pub offset: Option<i64>,
}

/// GET /api/v1/friends/requests — the caller's incoming and outgoing requests with
/// their state, newest first; how a user who was offline finds pending requests.
#[utoipa::path(get, path = "/friends/requests", tag = "friends", security(("bearer" = [])), params(RequestFilter),
    responses((status = 200, body = Page<FriendRequest>), (status = 400, body = ErrorBody)))]
async fn list_requests(
    State(st): State<AppState>,
    Auth(me): Auth,
    Query(f): Query<RequestFilter>,
) -> ApiResult<axum::Json<Page<FriendRequest>>> {
    let (limit, offset) = PageParams {
        limit: f.limit,
        offset: f.offset,
    }
    .resolve(&st);
    let items =
        friends::list_requests(&st, me.user_id, f.direction, f.state, limit, offset).await?;
    Ok(axum::Json(Page::new(items, limit, offset)))
}

/// POST /api/v1/friends/requests/{id}/accept — accept a request sent to the caller.
#[utoipa::path(post, path = "/friends/requests/{id}/accept", tag = "friends", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Request id")),
    responses((status = 200, body = FriendRequest), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn accept_request(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<FriendRequest>> {
    Ok(axum::Json(
        friends::accept_request(&st, me.user_id, id).await?,
    ))
}

/// POST /api/v1/friends/requests/{id}/reject — reject a request sent to the caller.
#[utoipa::path(post, path = "/friends/requests/{id}/reject", tag = "friends", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Request id")),
    responses((status = 200, body = FriendRequest), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn reject_request(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<FriendRequest>> {
    Ok(axum::Json(
        friends::reject_request(&st, me.user_id, id).await?,
    ))
}

/// POST /api/v1/friends/requests/{id}/cancel — withdraw a request the caller sent (while
/// pending); the recipient gets FRIEND_CANCEL.
#[utoipa::path(post, path = "/friends/requests/{id}/cancel", tag = "friends", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Request id")),
    responses((status = 200, body = FriendRequest), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn cancel_request(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<FriendRequest>> {
    Ok(axum::Json(
        friends::cancel_request(&st, me.user_id, id).await?,
    ))
}

/// GET /api/v1/blocks — the users the caller blocks.
#[utoipa::path(get, path = "/blocks", tag = "friends", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<BlockedUser>), (status = 401, body = ErrorBody)))]
async fn list_blocks(
    State(st): State<AppState>,
    Auth(me): Auth,
    Query(p): Query<PageParams>,
) -> ApiResult<axum::Json<Page<BlockedUser>>> {
    let (limit, offset) = p.resolve(&st);
    let items = friends::list_blocks(&st, me.user_id, limit, offset).await?;
    Ok(axum::Json(Page::new(items, limit, offset)))
}

/// PUT /api/v1/blocks/{user_id} — block a user: they can no longer message the caller
/// or send requests. Idempotent; cancels pending requests between the two.
#[utoipa::path(put, path = "/blocks/{user_id}", tag = "friends", security(("bearer" = [])),
    params(("user_id" = i64, Path, description = "User to block")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn block(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path(uid): Path<i64>,
) -> ApiResult<StatusCode> {
    friends::block(&st, me.user_id, uid).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// DELETE /api/v1/blocks/{user_id} — stop blocking a user.
#[utoipa::path(delete, path = "/blocks/{user_id}", tag = "friends", security(("bearer" = [])),
    params(("user_id" = i64, Path, description = "User to unblock")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn unblock(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path(uid): Path<i64>,
) -> ApiResult<StatusCode> {
    friends::unblock(&st, me.user_id, uid).await?;
    Ok(StatusCode::NO_CONTENT)
}
