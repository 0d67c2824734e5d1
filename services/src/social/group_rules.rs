//! The permission and capacity rules of group operations, one function per rule, so
//! that a rule changes in one place and every operation states which rules it needs.

use sqlx::Row;

use super::groups::{group_not_found, load_group, Group, JoinPolicy, Role};
use super::{parse_enum, Tx};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Rule: the group exists, is not dissolved, and is visible to `viewer` (an
/// `invite_only` group only to its members).
///
/// # Errors
/// 404 `group_not_found`.
pub async fn require_visible<'e>(
    exec: impl sqlx::Executor<'e, Database = sqlx::Any>,
    gid: i64,
    viewer: i64,
) -> ApiResult<Group> {
    let g = load_group(exec, gid, viewer).await?;
    if g.join_policy == JoinPolicy::InviteOnly && g.my_role.is_none() {
        return Err(group_not_found());
    }
    Ok(g)
}

/// Locks a live group's row for the rest of the transaction (so membership counts and
/// roles cannot change underneath the checks) and returns its join policy.
///
/// # Errors
/// 404 `group_not_found` for an unknown or dissolved group.
pub async fn lock_group(tx: &mut Tx, gid: i64) -> ApiResult<JoinPolicy> {
    let row = sqlx::query(
        "UPDATE chat_groups SET updated_at = updated_at \
         WHERE id = $1 AND dissolved_at IS NULL RETURNING join_policy",
    )
    .bind(gid)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(group_not_found)?;
    Ok(parse_enum(&row.try_get::<String, _>("join_policy")?)?)
}

/// `uid`'s role in `gid`, if a member.
///
/// # Errors
/// Database errors.
pub async fn role_of(tx: &mut Tx, gid: i64, uid: i64) -> ApiResult<Option<Role>> {
    let row = sqlx::query("SELECT role FROM group_members WHERE group_id = $1 AND user_id = $2")
        .bind(gid)
        .bind(uid)
        .fetch_optional(&mut **tx)
        .await?;
    match row {
        Some(r) => Ok(Some(parse_enum(&r.try_get::<String, _>("role")?)?)),
        None => Ok(None),
    }
}

/// Rule: the caller is a member.
///
/// # Errors
/// 403 `not_member`.
pub fn require_member(role: Option<Role>) -> ApiResult<Role> {
    role.ok_or_else(|| ApiError::forbidden("not_member", "you are not a member of this group"))
}

/// Rule: the caller is the owner or an admin.
///
/// # Errors
/// 403 `not_member` or `not_admin`.
pub fn require_admin(role: Option<Role>) -> ApiResult<Role> {
    let r = require_member(role)?;
    if r >= Role::Admin {
        Ok(r)
    } else {
        Err(ApiError::forbidden(
            "not_admin",
            "only the owner or an admin may do this",
        ))
    }
}

/// Rule: the caller is the owner.
///
/// # Errors
/// 403 `not_member` or `not_owner`.
pub fn require_owner(role: Option<Role>) -> ApiResult<Role> {
    let r = require_member(role)?;
    if r == Role::Owner {
        Ok(r)
    } else {
        Err(ApiError::forbidden(
            "not_owner",
            "only the owner may do this",
        ))
    }
}

/// Rule: a member is kicked or muted only by someone of higher rank (so nobody acts on
/// the owner, and admins act on plain members only).
///
/// # Errors
/// 403 `outranked`.
pub fn require_outranks(actor: Role, target: Role) -> ApiResult<()> {
    if actor > target {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "outranked",
            "only a member of higher role may do this to that member",
        ))
    }
}

/// Rule: who may add people directly — any member of an `open` group, otherwise the
/// owner and admins (an ordinary member's invitation would bypass the approval).
///
/// # Errors
/// 403 `not_member` or `not_admin`.
pub fn require_can_add(policy: JoinPolicy, role: Option<Role>) -> ApiResult<()> {
    match policy {
        JoinPolicy::Open => require_member(role).map(drop),
        JoinPolicy::Approval | JoinPolicy::InviteOnly => require_admin(role).map(drop),
    }
}

/// Rule: `uid` may belong to one more group.
///
/// # Errors
/// 409 `group_limit_reached`.
pub async fn require_group_quota(st: &AppState, tx: &mut Tx, uid: i64, me: i64) -> ApiResult<()> {
    let max = st.config.limits.max_groups_per_user;
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM group_members WHERE user_id = $1")
        .bind(uid)
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?;
    if n < max {
        return Ok(());
    }
    let whose = if uid == me { "you are" } else { "this user is" };
    Err(ApiError::conflict(
        "group_limit_reached",
        format!("{whose} already in the maximum of {max} groups"),
    ))
}

/// Rule: group `gid` (locked) has room for one more member, who has room for one more
/// group.
///
/// # Errors
/// 409 `group_full` or `group_limit_reached`.
pub async fn require_room(
    st: &AppState,
    tx: &mut Tx,
    gid: i64,
    uid: i64,
    me: i64,
) -> ApiResult<()> {
    let max = st.config.limits.max_group_members;
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM group_members WHERE group_id = $1")
        .bind(gid)
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?;
    if n >= max {
        return Err(ApiError::conflict(
            "group_full",
            format!("the group has reached its limit of {max} members"),
        ));
    }
    require_group_quota(st, tx, uid, me).await
}

/// A refusal to a non-member of an `invite_only` group must not reveal it exists.
pub(crate) async fn visible_or_404(
    tx: &mut Tx,
    gid: i64,
    me: i64,
    role: Option<Role>,
) -> ApiResult<()> {
    if role.is_none() {
        require_visible(&mut **tx, gid, me).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_rank_and_rules() {
        assert!(Role::Owner > Role::Admin && Role::Admin > Role::Member);
        assert!(require_admin(Some(Role::Admin)).is_ok());
        assert_eq!(
            require_admin(Some(Role::Member)).map_err(|e| e.code),
            Err("not_admin")
        );
        assert_eq!(require_admin(None).map_err(|e| e.code), Err("not_member"));
        assert_eq!(
            require_owner(Some(Role::Admin)).map_err(|e| e.code),
            Err("not_owner")
        );
        assert!(require_outranks(Role::Owner, Role::Admin).is_ok());
        assert!(require_outranks(Role::Admin, Role::Admin).is_err());
        assert!(require_outranks(Role::Admin, Role::Owner).is_err());
        assert!(require_can_add(JoinPolicy::Open, Some(Role::Member)).is_ok());
        assert!(require_can_add(JoinPolicy::Approval, Some(Role::Member)).is_err());
        assert!(require_can_add(JoinPolicy::InviteOnly, Some(Role::Admin)).is_ok());
    }
}
