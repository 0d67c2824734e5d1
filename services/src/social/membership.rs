//! Group membership: join requests and their approval, adding people, kicking,
//! leaving, roles (with ownership transfer) and mutes. The rules themselves are the
//! `require_*` functions of [`super::group_rules`].

use serde::Serialize;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::ToSchema;

use super::friends::{require_not_blocked, RequestState};
use super::group_rules::{
    lock_group, require_admin, require_can_add, require_member, require_outranks, require_owner,
    require_room, role_of, visible_or_404,
};
use super::groups::{
    announce_joined, load_group, load_member, member_not_found, JoinPolicy, Member, Role,
};
use super::{
    active_user, brief, brief_cols, check_text, enum_str, group_event, parse_enum, Tx, UserBrief,
};
use crate::error::{on_unique, ApiError, ApiResult};
use crate::now_ms;
use crate::state::AppState;

/// A request to join a group.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct JoinRequest {
    /// Request id.
    pub id: i64,
    /// The group.
    pub group_id: i64,
    /// Who asks to join.
    pub user: UserBrief,
    /// Their note (may be empty).
    pub message: String,
    /// `pending`, `accepted` or `rejected`.
    pub state: RequestState,
    /// Asked at, unix ms.
    pub created_at: i64,
    /// Last state change, unix ms.
    pub updated_at: i64,
}

fn request_select() -> String {
    format!(
        "SELECT r.id, r.group_id, r.message, r.state, r.created_at, r.updated_at, {} \
         FROM group_join_requests r JOIN users u ON u.id = r.user_id",
        brief_cols("u", "u_")
    )
}

fn request_of(row: &AnyRow) -> Result<JoinRequest, sqlx::Error> {
    Ok(JoinRequest {
        id: row.try_get("id")?,
        group_id: row.try_get("group_id")?,
        user: brief(row, "u_")?,
        message: row.try_get("message")?,
        state: parse_enum(&row.try_get::<String, _>("state")?)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

async fn load_request(tx: &mut Tx, rid: i64) -> ApiResult<JoinRequest> {
    let row = sqlx::query(&format!("{} WHERE r.id = $1", request_select()))
        .bind(rid)
        .fetch_one(&mut **tx)
        .await?;
    Ok(request_of(&row)?)
}

fn already_member() -> ApiError {
    ApiError::conflict(
        "already_member",
        "the user is already a member of this group",
    )
}

async fn insert_member(tx: &mut Tx, gid: i64, uid: i64) -> ApiResult<()> {
    sqlx::query(
        "INSERT INTO group_members (group_id, user_id, role, joined_at) VALUES ($1, $2, 'member', $3)",
    )
    .bind(gid)
    .bind(uid)
    .bind(now_ms())
    .execute(&mut **tx)
    .await
    .map_err(|e| on_unique(e, already_member()))?;
    Ok(())
}

/// Settles `uid`'s pending join request, if any, as `state`.
async fn settle_pending(tx: &mut Tx, gid: i64, uid: i64, state: RequestState) -> ApiResult<()> {
    sqlx::query(
        "UPDATE group_join_requests SET state = $1, updated_at = $2 \
         WHERE group_id = $3 AND user_id = $4 AND state = 'pending'",
    )
    .bind(state.as_str())
    .bind(now_ms())
    .bind(gid)
    .bind(uid)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Owner and admins of `gid`, who answer join requests.
async fn admins(tx: &mut Tx, gid: i64) -> ApiResult<Vec<i64>> {
    let rows = sqlx::query(
        "SELECT user_id FROM group_members WHERE group_id = $1 AND role IN ('owner', 'admin')",
    )
    .bind(gid)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get("user_id"))
        .collect::<Result<_, _>>()?)
}

/// Asks to join a group. An `open` group is joined at once (state `accepted`,
/// GROUP_JOINED); an `approval` group gets a pending request (GROUP_JOIN_REQUEST to
/// owner and admins).
///
/// # Errors
/// 404 `group_not_found` (also for `invite_only` groups); 409 `already_member`,
/// `request_pending`, `group_full`, `group_limit_reached`; 422 `invalid_message`.
pub async fn request_join(
    st: &AppState,
    me: i64,
    gid: i64,
    message: &str,
) -> ApiResult<JoinRequest> {
    check_text("invalid_message", "message", message, 200, true)?;
    let mut tx = st.db.begin_write().await?;
    let policy = lock_group(&mut tx, gid).await?;
    let role = role_of(&mut tx, gid, me).await?;
    visible_or_404(&mut tx, gid, me, role).await?;
    if role.is_some() {
        return Err(already_member());
    }
    require_room(st, &mut tx, gid, me, me).await?;
    let open = policy == JoinPolicy::Open;
    let now = now_ms();
    let rid: i64 = sqlx::query(
        "INSERT INTO group_join_requests (group_id, user_id, message, state, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
    )
    .bind(gid)
    .bind(me)
    .bind(message)
    .bind(if open { "accepted" } else { "pending" })
    .bind(now)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| on_unique(e, ApiError::conflict("request_pending", "you already asked to join this group")))?
    .try_get("id")?;
    if open {
        insert_member(&mut tx, gid, me).await?;
    }
    let req = load_request(&mut tx, rid).await?;
    let group = load_group(&mut *tx, gid, me).await?;
    if open {
        let member = load_member(&mut tx, gid, me).await?;
        tx.commit().await?;
        announce_joined(st, &group, &member, None);
    } else {
        let admins = admins(&mut tx, gid).await?;
        tx.commit().await?;
        st.push.event(
            &admins,
            "GROUP_JOIN_REQUEST",
            json!({"group_id": gid, "group_name": group.name, "request": req}),
        );
    }
    Ok(req)
}

/// A group's join requests, newest first (owner and admins).
///
/// # Errors
/// 404 `group_not_found`; 403 `not_member`/`not_admin`.
pub async fn list_requests(
    st: &AppState,
    me: i64,
    gid: i64,
    state: Option<RequestState>,
    limit: i64,
    offset: i64,
) -> ApiResult<Vec<JoinRequest>> {
    let mut tx = st.db.begin_write().await?;
    let role = role_of(&mut tx, gid, me).await?;
    visible_or_404(&mut tx, gid, me, role).await?;
    require_admin(role)?;
    let cond = if state.is_some() {
        " AND r.state = $4"
    } else {
        ""
    };
    let sql = format!(
        "{} WHERE r.group_id = $1{cond} ORDER BY r.id DESC LIMIT $2 OFFSET $3",
        request_select()
    );
    let mut q = sqlx::query(&sql).bind(gid).bind(limit).bind(offset);
    if let Some(s) = state {
        q = q.bind(s.as_str());
    }
    let rows = q.fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows.iter().map(request_of).collect::<Result<_, _>>()?)
}

/// Accepts (`accept`) or rejects a pending join request (owner and admins). Acceptance
/// makes the requester a member (GROUP_JOINED), rejection tells them
/// (GROUP_JOIN_REJECTED).
///
/// # Errors
/// 404 `group_not_found`/`request_not_found`; 403 `not_member`/`not_admin`; 409
/// `request_not_pending`, `group_full`, `group_limit_reached`.
pub async fn answer_request(
    st: &AppState,
    me: i64,
    gid: i64,
    rid: i64,
    accept: bool,
) -> ApiResult<JoinRequest> {
    let mut tx = st.db.begin_write().await?;
    lock_group(&mut tx, gid).await?;
    let role = role_of(&mut tx, gid, me).await?;
    visible_or_404(&mut tx, gid, me, role).await?;
    require_admin(role)?;
    let row = sqlx::query(
        "SELECT user_id, state FROM group_join_requests WHERE id = $1 AND group_id = $2",
    )
    .bind(rid)
    .bind(gid)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| ApiError::not_found("request_not_found", "no such join request"))?;
    let (uid, state): (i64, String) = (row.try_get("user_id")?, row.try_get("state")?);
    if state != RequestState::Pending.as_str() {
        return Err(ApiError::conflict(
            "request_not_pending",
            "the request was already answered",
        ));
    }
    let joins = accept && role_of(&mut tx, gid, uid).await?.is_none();
    if joins {
        require_room(st, &mut tx, gid, uid, me).await?;
        insert_member(&mut tx, gid, uid).await?;
    }
    let new_state = if accept {
        RequestState::Accepted
    } else {
        RequestState::Rejected
    };
    settle_pending(&mut tx, gid, uid, new_state).await?;
    let req = load_request(&mut tx, rid).await?;
    let group = load_group(&mut *tx, gid, me).await?;
    let member = if joins {
        Some(load_member(&mut tx, gid, uid).await?)
    } else {
        None
    };
    tx.commit().await?;
    if let Some(m) = member {
        announce_joined(st, &group, &m, Some(me));
    } else if !accept {
        st.push.event(
            &[uid],
            "GROUP_JOIN_REJECTED",
            json!({"group_id": gid, "group_name": group.name, "request_id": rid, "by": me}),
        );
    }
    Ok(req)
}

/// Adds `uid` to the group (see [`require_can_add`] for who may); the user must not
/// block the caller.
///
/// # Errors
/// 404 `group_not_found`/`user_not_found`; 403 `not_member`/`not_admin`/`blocked`;
/// 409 `already_member`, `unblock_first`, `group_full`, `group_limit_reached`.
pub async fn add_member(st: &AppState, me: i64, gid: i64, uid: i64) -> ApiResult<Member> {
    let mut tx = st.db.begin_write().await?;
    let policy = lock_group(&mut tx, gid).await?;
    let role = role_of(&mut tx, gid, me).await?;
    visible_or_404(&mut tx, gid, me, role).await?;
    require_can_add(policy, role)?;
    active_user(&mut *tx, uid).await?;
    if role_of(&mut tx, gid, uid).await?.is_some() {
        return Err(already_member());
    }
    require_not_blocked(&mut tx, me, uid).await?;
    require_room(st, &mut tx, gid, uid, me).await?;
    insert_member(&mut tx, gid, uid).await?;
    settle_pending(&mut tx, gid, uid, RequestState::Accepted).await?;
    let group = load_group(&mut *tx, gid, me).await?;
    let member = load_member(&mut tx, gid, uid).await?;
    tx.commit().await?;
    announce_joined(st, &group, &member, Some(me));
    Ok(member)
}

/// Removes `uid` from the group: leaving when it is the caller (not the owner, who
/// transfers ownership or dissolves instead), else kicking (owner or admin, of lower
/// rank). The removed user stops receiving the group's frames at once.
///
/// # Errors
/// 404 `group_not_found`/`member_not_found`; 403 `not_member`/`not_admin`/`outranked`;
/// 409 `owner_cannot_leave`.
pub async fn remove_member(st: &AppState, me: i64, gid: i64, uid: i64) -> ApiResult<()> {
    let mut tx = st.db.begin_write().await?;
    lock_group(&mut tx, gid).await?;
    let role = role_of(&mut tx, gid, me).await?;
    visible_or_404(&mut tx, gid, me, role).await?;
    let leaving = uid == me;
    if leaving {
        if require_member(role)? == Role::Owner {
            return Err(ApiError::conflict(
                "owner_cannot_leave",
                "the owner must transfer ownership or dissolve the group",
            ));
        }
    } else {
        let actor = require_admin(role)?;
        let target = role_of(&mut tx, gid, uid)
            .await?
            .ok_or_else(member_not_found)?;
        require_outranks(actor, target)?;
    }
    sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2")
        .bind(gid)
        .bind(uid)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    st.graph.remove_member(gid, uid);
    let at = now_ms();
    if leaving {
        group_event(
            st,
            gid,
            &[uid],
            "GROUP_LEFT",
            json!({"group_id": gid, "user_id": uid, "at": at}),
        );
    } else {
        group_event(
            st,
            gid,
            &[uid],
            "GROUP_KICKED",
            json!({"group_id": gid, "user_id": uid, "by": me, "at": at}),
        );
    }
    Ok(())
}

/// Changes a member's role and/or mute. `role: owner` (by the owner) transfers
/// ownership: the target becomes owner and the caller admin. Other role changes are
/// the owner's; mutes are for the owner and admins on members of lower rank.
/// `muted_until: Some(None)` lifts a mute. GROUP_MEMBER_UPDATED goes to the group and
/// to each member whose role or mute changed.
///
/// # Errors
/// 404 `group_not_found`/`member_not_found`; 403 `not_member`/`not_admin`/`not_owner`/
/// `outranked`; 409 `owner_must_transfer`; 422 `invalid_muted_until`.
pub async fn update_member(
    st: &AppState,
    me: i64,
    gid: i64,
    uid: i64,
    new_role: Option<Role>,
    muted_until: Option<Option<i64>>,
) -> ApiResult<Member> {
    let now = now_ms();
    if let Some(Some(t)) = muted_until {
        if t <= now {
            return Err(ApiError::invalid(
                "invalid_muted_until",
                "muted_until must be a future time in unix ms, or null to unmute",
            ));
        }
    }
    let mut tx = st.db.begin_write().await?;
    lock_group(&mut tx, gid).await?;
    let role = role_of(&mut tx, gid, me).await?;
    visible_or_404(&mut tx, gid, me, role).await?;
    require_member(role)?;
    let target = role_of(&mut tx, gid, uid)
        .await?
        .ok_or_else(member_not_found)?;
    let mut changed = Vec::new();
    if let Some(until) = muted_until {
        changed.push(uid);
        let actor = require_admin(role)?;
        require_outranks(actor, target)?;
        sqlx::query(
            "UPDATE group_members SET muted_until = $1 WHERE group_id = $2 AND user_id = $3",
        )
        .bind(until)
        .bind(gid)
        .bind(uid)
        .execute(&mut *tx)
        .await?;
    }
    if let Some(r) = new_role.filter(|r| *r != target) {
        require_owner(role)?;
        if uid == me {
            return Err(ApiError::conflict(
                "owner_must_transfer",
                "make another member owner to give up ownership",
            ));
        }
        set_role(&mut tx, gid, uid, r).await?;
        if changed.is_empty() {
            changed.push(uid);
        }
        if r == Role::Owner {
            set_role(&mut tx, gid, me, Role::Admin).await?;
            sqlx::query("UPDATE chat_groups SET owner_id = $1, updated_at = $2 WHERE id = $3")
                .bind(uid)
                .bind(now)
                .bind(gid)
                .execute(&mut *tx)
                .await?;
            changed.push(me);
        }
    }
    if changed.is_empty() {
        return load_member(&mut tx, gid, uid).await;
    }
    let mut members = Vec::new();
    for u in &changed {
        members.push(load_member(&mut tx, gid, *u).await?);
    }
    tx.commit().await?;
    if let Some(until) = muted_until {
        st.graph.set_muted(gid, uid, until);
    }
    for m in &members {
        group_event(
            st,
            gid,
            &[m.user.id],
            "GROUP_MEMBER_UPDATED",
            json!({"group_id": gid, "user": m.user, "role": m.role, "muted_until": m.muted_until, "by": me}),
        );
    }
    members.into_iter().next().ok_or_else(member_not_found)
}

async fn set_role(tx: &mut Tx, gid: i64, uid: i64, role: Role) -> ApiResult<()> {
    sqlx::query("UPDATE group_members SET role = $1 WHERE group_id = $2 AND user_id = $3")
        .bind(enum_str(&role))
        .bind(gid)
        .bind(uid)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
