//! Groups: creation, search, details, updates and dissolution. Joining, inviting,
//! kicking, leaving and roles are in [`super::membership`]; the permission rules both
//! use are in [`super::group_rules`].
//!
//! Visibility: a dissolved group is gone for everyone (404); an `invite_only` group is
//! visible only to its members (404 for others, and it is not listed by search).

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::ToSchema;

use super::group_rules::{
    lock_group, require_admin, require_group_quota, require_member, require_owner, require_visible,
    role_of, visible_or_404,
};
use super::{
    brief, brief_cols, check_text, enum_str, group_event, lock_users, parse_enum, Tx, UserBrief,
};
use crate::db::{like_prefix, Db};
use crate::error::{ApiError, ApiResult};
use crate::now_ms;
use crate::state::AppState;

/// Who may join a group and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JoinPolicy {
    /// Anyone may join at once; any member may add people.
    Open,
    /// Join requests need an owner's or admin's approval; only they add people.
    Approval,
    /// Hidden from non-members; only owner and admins add people.
    InviteOnly,
}

/// A member's role, ordered by rank (`Member < Admin < Owner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Sends and reads.
    Member,
    /// Also updates the group, answers join requests, adds, kicks and mutes members.
    Admin,
    /// Also manages admins, transfers ownership and dissolves the group. Exactly one.
    Owner,
}

/// A group as the caller sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Group {
    /// Group id.
    pub id: i64,
    /// Name, 1–64 characters.
    pub name: String,
    /// Announcement, up to 1000 characters.
    pub announcement: String,
    /// Join policy.
    pub join_policy: JoinPolicy,
    /// The owner's user id.
    pub owner_id: i64,
    /// Current number of members.
    pub member_count: i64,
    /// The caller's role, or null when not a member.
    pub my_role: Option<Role>,
    /// Created at, unix ms.
    pub created_at: i64,
    /// Last change of name, announcement or policy, unix ms.
    pub updated_at: i64,
}

/// A member of a group.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Member {
    /// The user.
    #[serde(flatten)]
    pub user: UserBrief,
    /// Role in the group.
    pub role: Role,
    /// Muted (may not send) until this time, unix ms; null when not muted.
    pub muted_until: Option<i64>,
    /// Joined at, unix ms.
    pub joined_at: i64,
}

/// `$1` is the viewer (for `my_role`).
const GROUP_SELECT: &str = "SELECT g.id, g.name, g.announcement, g.join_policy, g.owner_id, \
     g.created_at, g.updated_at, \
     (SELECT COUNT(*) FROM group_members c WHERE c.group_id = g.id) AS member_count, \
     (SELECT v.role FROM group_members v WHERE v.group_id = g.id AND v.user_id = $1) AS my_role \
     FROM chat_groups g";

fn group_of(row: &AnyRow) -> Result<Group, sqlx::Error> {
    Ok(Group {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        announcement: row.try_get("announcement")?,
        join_policy: parse_enum(&row.try_get::<String, _>("join_policy")?)?,
        owner_id: row.try_get("owner_id")?,
        member_count: row.try_get("member_count")?,
        my_role: row
            .try_get::<Option<String>, _>("my_role")?
            .map(|r| parse_enum(&r))
            .transpose()?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn member_select() -> String {
    format!(
        "SELECT {}, m.role, m.muted_until, m.joined_at FROM group_members m \
         JOIN users u ON u.id = m.user_id",
        brief_cols("u", "")
    )
}

pub(crate) fn member_of(row: &AnyRow) -> Result<Member, sqlx::Error> {
    Ok(Member {
        user: brief(row, "")?,
        role: parse_enum(&row.try_get::<String, _>("role")?)?,
        muted_until: row.try_get("muted_until")?,
        joined_at: row.try_get("joined_at")?,
    })
}

pub(crate) async fn load_member(tx: &mut Tx, gid: i64, uid: i64) -> ApiResult<Member> {
    let row = sqlx::query(&format!(
        "{} WHERE m.group_id = $1 AND m.user_id = $2",
        member_select()
    ))
    .bind(gid)
    .bind(uid)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(member_not_found)?;
    Ok(member_of(&row)?)
}

pub(crate) async fn load_group<'e>(
    exec: impl sqlx::Executor<'e, Database = sqlx::Any>,
    gid: i64,
    viewer: i64,
) -> ApiResult<Group> {
    let row = sqlx::query(&format!(
        "{GROUP_SELECT} WHERE g.id = $2 AND g.dissolved_at IS NULL"
    ))
    .bind(viewer)
    .bind(gid)
    .fetch_optional(exec)
    .await?
    .ok_or_else(group_not_found)?;
    Ok(group_of(&row)?)
}

pub(crate) fn group_not_found() -> ApiError {
    ApiError::not_found("group_not_found", "no such group")
}

pub(crate) fn member_not_found() -> ApiError {
    ApiError::not_found("member_not_found", "this user is not a member of the group")
}

fn check_name(name: &str) -> ApiResult<()> {
    check_text("invalid_name", "name", name, 64, false)
}

fn check_announcement(a: &str) -> ApiResult<()> {
    check_text("invalid_announcement", "announcement", a, 1000, true)
}

/// Creates a group owned by `me`.
///
/// # Errors
/// 422 `invalid_name`/`invalid_announcement`; 409 `group_limit_reached`.
pub async fn create(
    st: &AppState,
    me: i64,
    name: &str,
    announcement: &str,
    policy: JoinPolicy,
) -> ApiResult<Group> {
    let name = name.trim();
    check_name(name)?;
    check_announcement(announcement)?;
    let mut tx = st.db.begin_write().await?;
    lock_users(&mut tx, me, me).await?;
    require_group_quota(st, &mut tx, me, me).await?;
    let now = now_ms();
    let gid: i64 = sqlx::query(
        "INSERT INTO chat_groups (name, announcement, join_policy, owner_id, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $5) RETURNING id",
    )
    .bind(name)
    .bind(announcement)
    .bind(enum_str(&policy))
    .bind(me)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?
    .try_get("id")?;
    sqlx::query(
        "INSERT INTO group_members (group_id, user_id, role, joined_at) VALUES ($1, $2, 'owner', $3)",
    )
    .bind(gid)
    .bind(me)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let group = load_group(&mut *tx, gid, me).await?;
    let member = load_member(&mut tx, gid, me).await?;
    tx.commit().await?;
    announce_joined(st, &group, &member, None);
    Ok(group)
}

/// After a committed join: graph, then GROUP_JOINED to the new member and the group.
pub(crate) fn announce_joined(st: &AppState, group: &Group, member: &Member, by: Option<i64>) {
    st.graph.add_member(group.id, member.user.id);
    group_event(
        st,
        group.id,
        &[member.user.id],
        "GROUP_JOINED",
        json!({"group_id": group.id, "group_name": group.name, "user": member.user,
               "role": member.role, "by": by}),
    );
}

/// Searches visible groups (not `invite_only`) by name prefix, case-insensitive; all
/// of them when `q` is empty.
///
/// # Errors
/// 422 `invalid_query` for a query over 64 characters.
pub async fn search(
    st: &AppState,
    me: i64,
    q: &str,
    limit: i64,
    offset: i64,
) -> ApiResult<Vec<Group>> {
    let q = q.trim().to_lowercase();
    if q.chars().count() > 64 {
        return Err(ApiError::invalid(
            "invalid_query",
            "q must be at most 64 characters",
        ));
    }
    let rows = sqlx::query(&format!(
        "{GROUP_SELECT} WHERE g.dissolved_at IS NULL AND g.join_policy <> 'invite_only' \
         AND lower(g.name) LIKE $2 ESCAPE '\\' ORDER BY lower(g.name), g.id LIMIT $3 OFFSET $4"
    ))
    .bind(me)
    .bind(like_prefix(&q))
    .bind(limit)
    .bind(offset)
    .fetch_all(&st.db.pool)
    .await?;
    Ok(rows.iter().map(group_of).collect::<Result<_, _>>()?)
}

/// The groups `me` belongs to, most recently joined first.
///
/// # Errors
/// Database errors.
pub async fn mine(st: &AppState, me: i64, limit: i64, offset: i64) -> ApiResult<Vec<Group>> {
    let rows = sqlx::query(&format!(
        "{GROUP_SELECT} JOIN group_members mm ON mm.group_id = g.id AND mm.user_id = $1 \
         WHERE g.dissolved_at IS NULL ORDER BY mm.joined_at DESC, g.id DESC LIMIT $2 OFFSET $3"
    ))
    .bind(me)
    .bind(limit)
    .bind(offset)
    .fetch_all(&st.db.pool)
    .await?;
    Ok(rows.iter().map(group_of).collect::<Result<_, _>>()?)
}

/// One group's details.
///
/// # Errors
/// 404 `group_not_found` (also when not visible to `me`).
pub async fn details(st: &AppState, me: i64, gid: i64) -> ApiResult<Group> {
    require_visible(&st.db.pool, gid, me).await
}

/// The members of a group, owner and admins first. Members only.
///
/// # Errors
/// 404 `group_not_found`; 403 `not_member`.
pub async fn members(
    st: &AppState,
    me: i64,
    gid: i64,
    limit: i64,
    offset: i64,
) -> ApiResult<Vec<Member>> {
    let g = require_visible(&st.db.pool, gid, me).await?;
    require_member(g.my_role)?;
    let rows = sqlx::query(&format!(
        "{} WHERE m.group_id = $1 ORDER BY CASE m.role WHEN 'owner' THEN 0 WHEN 'admin' THEN 1 \
         ELSE 2 END, m.joined_at, m.user_id LIMIT $2 OFFSET $3",
        member_select()
    ))
    .bind(gid)
    .bind(limit)
    .bind(offset)
    .fetch_all(&st.db.pool)
    .await?;
    Ok(rows.iter().map(member_of).collect::<Result<_, _>>()?)
}

/// Changes name, announcement or join policy (each only when given); owner or admin.
/// GROUP_UPDATED goes to the group topic and every member's inbox.
///
/// # Errors
/// 404 `group_not_found`; 403 `not_member`/`not_admin`; 422 `invalid_name`/`invalid_announcement`.
pub async fn update(
    st: &AppState,
    me: i64,
    gid: i64,
    name: Option<&str>,
    announcement: Option<&str>,
    policy: Option<JoinPolicy>,
) -> ApiResult<Group> {
    let name = name.map(str::trim);
    if let Some(n) = name {
        check_name(n)?;
    }
    if let Some(a) = announcement {
        check_announcement(a)?;
    }
    let mut tx = st.db.begin_write().await?;
    lock_group(&mut tx, gid).await?;
    let role = role_of(&mut tx, gid, me).await?;
    visible_or_404(&mut tx, gid, me, role).await?;
    require_admin(role)?;
    sqlx::query(
        "UPDATE chat_groups SET name = COALESCE($1, name), announcement = COALESCE($2, announcement), \
         join_policy = COALESCE($3, join_policy), updated_at = $4 WHERE id = $5",
    )
    .bind(name)
    .bind(announcement)
    .bind(policy.map(|p| enum_str(&p)))
    .bind(now_ms())
    .bind(gid)
    .execute(&mut *tx)
    .await?;
    let group = load_group(&mut *tx, gid, me).await?;
    tx.commit().await?;
    let mut data = serde_json::to_value(&group).map_err(ApiError::internal)?;
    if let Some(o) = data.as_object_mut() {
        o.remove("my_role");
    }
    group_event(
        st,
        gid,
        &st.graph.members_of(gid),
        "GROUP_UPDATED",
        json!({"group": data, "by": me}),
    );
    Ok(group)
}

/// Dissolves a group (owner only): members are removed, pending join requests
/// rejected, and every former member gets GROUP_DISSOLVED.
///
/// # Errors
/// 404 `group_not_found`; 403 `not_member`/`not_owner`.
pub async fn dissolve(st: &AppState, me: i64, gid: i64) -> ApiResult<()> {
    let mut tx = st.db.begin_write().await?;
    lock_group(&mut tx, gid).await?;
    let role = role_of(&mut tx, gid, me).await?;
    visible_or_404(&mut tx, gid, me, role).await?;
    require_owner(role)?;
    let name: String = sqlx::query("SELECT name FROM chat_groups WHERE id = $1")
        .bind(gid)
        .fetch_one(&mut *tx)
        .await?
        .try_get("name")?;
    let members: Vec<i64> =
        sqlx::query("DELETE FROM group_members WHERE group_id = $1 RETURNING user_id")
            .bind(gid)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get("user_id"))
            .collect::<Result<_, _>>()?;
    let now = now_ms();
    sqlx::query("UPDATE chat_groups SET dissolved_at = $1, updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(gid)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE group_join_requests SET state = 'rejected', updated_at = $1 \
         WHERE group_id = $2 AND state = 'pending'",
    )
    .bind(now)
    .bind(gid)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    st.graph.remove_group(gid);
    st.push.event(
        &members,
        "GROUP_DISSOLVED",
        json!({"group_id": gid, "group_name": name, "by": me, "at": now}),
    );
    Ok(())
}

/// `uid`'s role in live group `gid` and the end of their mute, or `None` when not a
/// member (for the messaging path: `muted_until > now` means the member may not send).
///
/// # Errors
/// Database errors.
pub async fn member_role(db: &Db, gid: i64, uid: i64) -> ApiResult<Option<(String, Option<i64>)>> {
    let row = sqlx::query(
        "SELECT m.role, m.muted_until FROM group_members m JOIN chat_groups g ON g.id = m.group_id \
         WHERE m.group_id = $1 AND m.user_id = $2 AND g.dissolved_at IS NULL",
    )
    .bind(gid)
    .bind(uid)
    .fetch_optional(&db.pool)
    .await?;
    match row {
        Some(r) => Ok(Some((r.try_get("role")?, r.try_get("muted_until")?))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_use_their_stored_spelling() {
        assert_eq!(enum_str(&JoinPolicy::InviteOnly), "invite_only");
        assert_eq!(parse_enum::<Role>("admin").ok(), Some(Role::Admin));
        assert!(parse_enum::<Role>("king").is_err());
    }
}
