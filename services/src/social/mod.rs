//! The social graph (SPEC §3 "Friends" and "Groups"): validation, permission rules,
//! transactions, and the events that tell users about each change.
//!
//! Every operation follows the same order, so the three views of the graph never
//! disagree for long: check the rules and write inside one transaction; commit; update
//! the in-memory [`SocialGraph`](crate::graph::SocialGraph) (which the broker consults
//! at delivery, so a kick or unfriend takes effect on live subscriptions at once); then
//! publish `event` frames. An event is never sent for a change that did not commit.
//!
//! Transactions that check a limit or a state before writing start by "touching" the
//! rows they depend on (an `UPDATE … SET x = x`), which takes the row lock on
//! PostgreSQL and the write lock on SQLite up front, so two concurrent requests cannot
//! both pass a check that only one of them should.

pub mod friends;
pub mod group_rules;
pub mod groups;
pub mod membership;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// An open transaction on the pool.
pub type Tx = crate::db::WriteTx;

/// The little of a user that lists and events carry, so a client can render a row
/// without fetching the profile.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserBrief {
    /// User id.
    pub id: i64,
    /// Username.
    pub username: String,
    /// Display name.
    pub nickname: String,
    /// Avatar URL (may be empty).
    pub avatar_url: String,
}

/// The `users` columns a [`UserBrief`] is read from, for a table aliased `alias`,
/// named `{prefix}id`, `{prefix}username`, … so two users fit in one row.
pub(crate) fn brief_cols(alias: &str, prefix: &str) -> String {
    ["id", "username", "nickname", "avatar_url"]
        .iter()
        .map(|c| format!("{alias}.{c} AS {prefix}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads the columns selected by [`brief_cols`] with the same `prefix`.
pub(crate) fn brief(row: &AnyRow, prefix: &str) -> Result<UserBrief, sqlx::Error> {
    Ok(UserBrief {
        id: row.try_get(format!("{prefix}id").as_str())?,
        username: row.try_get(format!("{prefix}username").as_str())?,
        nickname: row.try_get(format!("{prefix}nickname").as_str())?,
        avatar_url: row.try_get(format!("{prefix}avatar_url").as_str())?,
    })
}

/// The brief of an enabled user.
///
/// # Errors
/// 404 `user_not_found` when there is no such user or the account is disabled.
pub(crate) async fn active_user<'e>(
    exec: impl sqlx::Executor<'e, Database = sqlx::Any>,
    uid: i64,
) -> ApiResult<UserBrief> {
    let row = sqlx::query(&format!(
        "SELECT {} FROM users u WHERE u.id = $1 AND u.disabled = 0",
        brief_cols("u", "")
    ))
    .bind(uid)
    .fetch_optional(exec)
    .await?
    .ok_or_else(|| ApiError::not_found("user_not_found", "no such user"))?;
    Ok(brief(&row, "")?)
}

/// Takes the row locks of users `a` and `b` (in id order, so two transactions over
/// the same pair cannot deadlock) for checks that span both, like friend limits.
pub(crate) async fn lock_users(tx: &mut Tx, a: i64, b: i64) -> ApiResult<()> {
    for id in [a.min(b), a.max(b)] {
        sqlx::query("UPDATE users SET updated_at = updated_at WHERE id = $1")
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Parses a stored snake_case enum value (a state, a role, a policy) into its type.
pub(crate) fn parse_enum<T: DeserializeOwned>(s: &str) -> Result<T, sqlx::Error> {
    serde_json::from_value(Value::String(s.to_owned()))
        .map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// The stored spelling of a snake_case enum value.
pub(crate) fn enum_str<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Publishes event `name` to the inboxes of `uids` and to group `gid`'s topic (where
/// only current members receive it).
pub(crate) fn group_event(st: &AppState, gid: i64, uids: &[i64], name: &str, data: Value) {
    st.push.event(uids, name, data.clone());
    st.push.to_group(
        gid,
        &mqim_proto::ServerFrame::Event {
            event: name.to_owned(),
            data,
        },
    );
}

/// Checks free text: at most `max` characters, no control characters except newline,
/// and (unless `allow_empty`) not blank.
///
/// # Errors
/// 422 with `code`.
pub(crate) fn check_text(
    code: &'static str,
    field: &str,
    v: &str,
    max: usize,
    allow_empty: bool,
) -> ApiResult<()> {
    if !allow_empty && v.trim().is_empty() {
        return Err(ApiError::invalid(
            code,
            format!("{field} must not be empty"),
        ));
    }
    if v.chars().count() > max || v.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::invalid(
            code,
            format!("{field} must be at most {max} characters without control characters"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_rules() {
        assert!(check_text("c", "f", "hi", 5, false).is_ok());
        assert!(check_text("c", "f", "", 5, true).is_ok());
        assert_eq!(
            check_text("c", "f", "  ", 5, false).map_err(|e| e.code),
            Err("c")
        );
        assert!(check_text("c", "f", "toolong", 5, true).is_err());
        assert!(check_text("c", "f", "a\u{7}", 5, true).is_err());
        assert!(check_text("c", "f", "a\nb", 5, true).is_ok());
    }

    #[test]
    fn brief_columns_are_prefixed() {
        assert_eq!(
            brief_cols("f", "from_"),
            "f.id AS from_id, f.username AS from_username, \
             f.nickname AS from_nickname, f.avatar_url AS from_avatar_url"
        );
    }
}
