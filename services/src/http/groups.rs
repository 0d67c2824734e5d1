//! Groups, join requests and members (SPEC §3 "Groups"); the rules live in
//! [`crate::social::groups`] and [`crate::social::membership`], these handlers only
//! translate HTTP.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Auth, Json, Page, PageParams, Path, Query};
use crate::error::{ApiResult, ErrorBody};
use crate::social::friends::RequestState;
use crate::social::groups::{self, Group, JoinPolicy, Member, Role};
use crate::social::membership::{self, JoinRequest};
use crate::state::AppState;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_group, search_groups))
        .routes(routes!(my_groups))
        .routes(routes!(get_group, update_group, dissolve_group))
        .routes(routes!(request_join, list_join_requests))
        .routes(routes!(accept_join))
        .routes(routes!(reject_join))
        .routes(routes!(list_members, add_member))
        .routes(routes!(update_member, remove_member))
}

/// A new group.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    /// 1–64 characters.
    pub name: String,
    /// Up to 1000 characters.
    #[serde(default)]
    pub announcement: String,
    /// `open`, `approval` or `invite_only`.
    pub join_policy: JoinPolicy,
}

/// POST /api/v1/groups — create a group; the caller becomes its owner.
#[utoipa::path(post, path = "/groups", tag = "groups", security(("bearer" = [])), request_body = NewGroup,
    responses((status = 201, body = Group), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_group(
    State(st): State<AppState>,
    Auth(me): Auth,
    Json(g): Json<NewGroup>,
) -> ApiResult<(StatusCode, axum::Json<Group>)> {
    let g = groups::create(&st, me.user_id, &g.name, &g.announcement, g.join_policy).await?;
    Ok((StatusCode::CREATED, axum::Json(g)))
}

/// Query of `GET /groups`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GroupSearch {
    /// Name prefix, case-insensitive (default: every listed group).
    #[serde(default)]
    pub q: String,
    /// Page size.
    pub limit: Option<i64>,
    /// Items to skip.
    pub offset: Option<i64>,
}

/// GET /api/v1/groups?q= — search `open` and `approval` groups by name prefix.
#[utoipa::path(get, path = "/groups", tag = "groups", security(("bearer" = [])), params(GroupSearch),
    responses((status = 200, body = Page<Group>), (status = 422, body = ErrorBody)))]
async fn search_groups(
    State(st): State<AppState>,
    Auth(me): Auth,
    Query(q): Query<GroupSearch>,
) -> ApiResult<axum::Json<Page<Group>>> {
    let (limit, offset) = PageParams {
        limit: q.limit,
        offset: q.offset,
    }
    .resolve(&st);
    let items = groups::search(&st, me.user_id, &q.q, limit, offset).await?;
    Ok(axum::Json(Page::new(items, limit, offset)))
}

/// GET /api/v1/me/groups — the caller's groups, most recently joined first.
#[utoipa::path(get, path = "/me/groups", tag = "groups", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<Group>), (status = 401, body = ErrorBody)))]
async fn my_groups(
    State(st): State<AppState>,
    Auth(me): Auth,
    Query(p): Query<PageParams>,
) -> ApiResult<axum::Json<Page<Group>>> {
    let (limit, offset) = p.resolve(&st);
    let items = groups::mine(&st, me.user_id, limit, offset).await?;
    Ok(axum::Json(Page::new(items, limit, offset)))
}

/// GET /api/v1/groups/{id} — a group's details and the caller's role in it.
#[utoipa::path(get, path = "/groups/{id}", tag = "groups", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id")),
    responses((status = 200, body = Group), (status = 404, body = ErrorBody)))]
async fn get_group(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<i64>,
) -> ApiResult<axum::Json<Group>> {
    Ok(axum::Json(groups::details(&st, me.user_id, id).await?))
}

/// Group changes; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupPatch {
    /// 1–64 characters.
    pub name: Option<String>,
    /// Up to 1000 characters.
    pub announcement: Option<String>,
    /// `open`, `approval` or `invite_only`.
    pub join_policy: Option<JoinPolicy>,
}

/// PATCH /api/v1/groups/{id} — change name, announcement or join policy (owner or
/// admin); GROUP_UPDATED to the group.
#[utoipa::path(patch, path = "/groups/{id}", tag = "groups", security(("bearer" = [])), request_body = GroupPatch,
    params(("id" = i64, Path, description = "Group id")),
    responses((status = 200, body = Group), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn update_group(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<i64>,
    Json(p): Json<GroupPatch>,
) -> ApiResult<axum::Json<Group>> {
    let g = groups::update(
        &st,
        me.user_id,
        id,
        p.name.as_deref(),
        p.announcement.as_deref(),
        p.join_policy,
    )
    .await?;
    Ok(axum::Json(g))
}

/// DELETE /api/v1/groups/{id} — dissolve the group (owner); GROUP_DISSOLVED to every
/// member.
#[utoipa::path(delete, path = "/groups/{id}", tag = "groups", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn dissolve_group(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    groups::dissolve(&st, me.user_id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A request to join.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJoinRequest {
    /// A note for the owner and admins, up to 200 characters.
    #[serde(default)]
    pub message: String,
}

/// POST /api/v1/groups/{id}/join-requests — ask to join. An `open` group is joined at
/// once (state `accepted`); an `approval` group's owner and admins get
/// GROUP_JOIN_REQUEST (state `pending`). Body `{}` or `{"message": "…"}`.
#[utoipa::path(post, path = "/groups/{id}/join-requests", tag = "groups", security(("bearer" = [])), request_body = NewJoinRequest,
    params(("id" = i64, Path, description = "Group id")),
    responses((status = 201, body = JoinRequest), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn request_join(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<i64>,
    Json(r): Json<NewJoinRequest>,
) -> ApiResult<(StatusCode, axum::Json<JoinRequest>)> {
    let req = membership::request_join(&st, me.user_id, id, &r.message).await?;
    Ok((StatusCode::CREATED, axum::Json(req)))
}

/// Query of `GET /groups/{id}/join-requests`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JoinRequestFilter {
    /// Only requests in this state (default all).
    pub state: Option<RequestState>,
    /// Page size.
    pub limit: Option<i64>,
    /// Items to skip.
    pub offset: Option<i64>,
}

/// GET /api/v1/groups/{id}/join-requests — the group's join requests, newest first
/// (owner and admins).
#[utoipa::path(get, path = "/groups/{id}/join-requests", tag = "groups", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id"), JoinRequestFilter),
    responses((status = 200, body = Page<JoinRequest>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_join_requests(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<i64>,
    Query(f): Query<JoinRequestFilter>,
) -> ApiResult<axum::Json<Page<JoinRequest>>> {
    let (limit, offset) = PageParams {
        limit: f.limit,
        offset: f.offset,
    }
    .resolve(&st);
    let items = membership::list_requests(&st, me.user_id, id, f.state, limit, offset).await?;
    Ok(axum::Json(Page::new(items, limit, offset)))
}

/// POST /api/v1/groups/{id}/join-requests/{rid}/accept — admit the requester (owner or
/// admin); GROUP_JOINED to them and the group.
#[utoipa::path(post, path = "/groups/{id}/join-requests/{rid}/accept", tag = "groups", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id"), ("rid" = i64, Path, description = "Join request id")),
    responses((status = 200, body = JoinRequest), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn accept_join(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path((id, rid)): Path<(i64, i64)>,
) -> ApiResult<axum::Json<JoinRequest>> {
    Ok(axum::Json(
        membership::answer_request(&st, me.user_id, id, rid, true).await?,
    ))
}

/// POST /api/v1/groups/{id}/join-requests/{rid}/reject — refuse the requester (owner
/// or admin); GROUP_JOIN_REJECTED to them.
#[utoipa::path(post, path = "/groups/{id}/join-requests/{rid}/reject", tag = "groups", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id"), ("rid" = i64, Path, description = "Join request id")),
    responses((status = 200, body = JoinRequest), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn reject_join(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path((id, rid)): Path<(i64, i64)>,
) -> ApiResult<axum::Json<JoinRequest>> {
    Ok(axum::Json(
        membership::answer_request(&st, me.user_id, id, rid, false).await?,
    ))
}

/// GET /api/v1/groups/{id}/members — the members, owner and admins first (members
/// only).
#[utoipa::path(get, path = "/groups/{id}/members", tag = "groups", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id"), PageParams),
    responses((status = 200, body = Page<Member>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_members(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<i64>,
    Query(p): Query<PageParams>,
) -> ApiResult<axum::Json<Page<Member>>> {
    let (limit, offset) = p.resolve(&st);
    let items = groups::members(&st, me.user_id, id, limit, offset).await?;
    Ok(axum::Json(Page::new(items, limit, offset)))
}

/// Whom to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    /// The user to add.
    pub user_id: i64,
}

/// POST /api/v1/groups/{id}/members — add a user (any member of an `open` group,
/// otherwise owner or admin); GROUP_JOINED to them and the group.
#[utoipa::path(post, path = "/groups/{id}/members", tag = "groups", security(("bearer" = [])), request_body = NewMember,
    params(("id" = i64, Path, description = "Group id")),
    responses((status = 201, body = Member), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn add_member(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<i64>,
    Json(m): Json<NewMember>,
) -> ApiResult<(StatusCode, axum::Json<Member>)> {
    let m = membership::add_member(&st, me.user_id, id, m.user_id).await?;
    Ok((StatusCode::CREATED, axum::Json(m)))
}

/// DELETE /api/v1/groups/{id}/members/{user_id} — leave (the caller's own id;
/// GROUP_LEFT) or kick (owner or admin, of a lower role; GROUP_KICKED).
#[utoipa::path(delete, path = "/groups/{id}/members/{user_id}", tag = "groups", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Group id"), ("user_id" = i64, Path, description = "Member")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn remove_member(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path((id, uid)): Path<(i64, i64)>,
) -> ApiResult<StatusCode> {
    membership::remove_member(&st, me.user_id, id, uid).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Member changes; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberPatch {
    /// New role (owner only); `owner` transfers ownership, the caller becomes admin.
    pub role: Option<Role>,
    /// Mute until this future time (unix ms), or `null` to unmute (owner or admin).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub muted_until: Option<Option<i64>>,
}

/// Tells a JSON `null` (`Some(None)`) from an absent field (`None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

/// PATCH /api/v1/groups/{id}/members/{user_id} — change a member's role or mute;
/// GROUP_MEMBER_UPDATED to the group and the member.
#[utoipa::path(patch, path = "/groups/{id}/members/{user_id}", tag = "groups", security(("bearer" = [])), request_body = MemberPatch,
    params(("id" = i64, Path, description = "Group id"), ("user_id" = i64, Path, description = "Member")),
    responses((status = 200, body = Member), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_member(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path((id, uid)): Path<(i64, i64)>,
    Json(p): Json<MemberPatch>,
) -> ApiResult<axum::Json<Member>> {
    let m = membership::update_member(&st, me.user_id, id, uid, p.role, p.muted_until).await?;
    Ok(axum::Json(m))
}
