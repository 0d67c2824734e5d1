//! Friend requests, friendships and blocks.
//!
//! Rules (each checked by one function below):
//! * a request needs a real, enabled target other than oneself ([`send_request`]);
//! * a user blocked by the target may not send requests (403 `blocked`), and a user
//!   who blocks the target must unblock first (409 `unblock_first`) — [`require_not_blocked`];
//! * a request to someone whose own request is pending accepts that request;
//! * only the recipient answers a request, once ([`require_recipient`]); only the sender
//!   cancels it, while pending;
//! * nobody exceeds `limits.max_friends` ([`require_friend_capacity`]).
//!
//! Blocking does not unfriend (unblocking restores the old state); it cancels pending
//! requests between the two and the messaging path refuses the blocked user's messages.

use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::ToSchema;

use super::{active_user, brief, brief_cols, check_text, lock_users, parse_enum, Tx, UserBrief};
use crate::error::{on_unique, ApiError, ApiResult};
use crate::now_ms;
use crate::state::AppState;

/// The life of a friend request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting for the recipient.
    Pending,
    /// Accepted: the two are friends.
    Accepted,
    /// Rejected by the recipient.
    Rejected,
    /// Withdrawn by a block.
    Canceled,
}

impl RequestState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Accepted => "accepted",
            RequestState::Rejected => "rejected",
            RequestState::Canceled => "canceled",
        }
    }
}

/// Which side of a request the caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Sent to the caller.
    Incoming,
    /// Sent by the caller.
    Outgoing,
}

/// A friend request as one of its two parties sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FriendRequest {
    /// Request id.
    pub id: i64,
    /// Sender.
    pub from: UserBrief,
    /// Recipient.
    pub to: UserBrief,
    /// Relative to the caller.
    pub direction: Direction,
    /// The sender's note (may be empty).
    pub message: String,
    /// Current state.
    pub state: RequestState,
    /// Sent at, unix ms.
    pub created_at: i64,
    /// Last state change, unix ms.
    pub updated_at: i64,
}

/// A friend.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Friend {
    /// The friend.
    #[serde(flatten)]
    pub user: UserBrief,
    /// Friends since, unix ms.
    pub since: i64,
}

/// A user the caller blocks.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BlockedUser {
    /// The blocked user.
    #[serde(flatten)]
    pub user: UserBrief,
    /// Blocked since, unix ms.
    pub since: i64,
}

fn request_select() -> String {
    format!(
        "SELECT r.id, r.from_id, r.to_id, r.message, r.state, r.created_at, r.updated_at, \
         {}, {} FROM friend_requests r \
         JOIN users f ON f.id = r.from_id JOIN users t ON t.id = r.to_id",
        brief_cols("f", "f_"),
        brief_cols("t", "t_")
    )
}

fn request_of(row: &AnyRow, viewer: i64) -> Result<FriendRequest, sqlx::Error> {
    let from = brief(row, "f_")?;
    Ok(FriendRequest {
        id: row.try_get("id")?,
        direction: if from.id == viewer {
            Direction::Outgoing
        } else {
            Direction::Incoming
        },
        from,
        to: brief(row, "t_")?,
        message: row.try_get("message")?,
        state: parse_enum(&row.try_get::<String, _>("state")?)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

async fn load_request(tx: &mut Tx, id: i64, viewer: i64) -> ApiResult<FriendRequest> {
    let row = sqlx::query(&format!("{} WHERE r.id = $1", request_select()))
        .bind(id)
        .fetch_one(&mut **tx)
        .await?;
    Ok(request_of(&row, viewer)?)
}

/// Rule: `from` may address `to` only if neither blocks the other.
///
/// # Errors
/// 403 `blocked` when `to` blocks `from`; 409 `unblock_first` when `from` blocks `to`.
pub async fn require_not_blocked(tx: &mut Tx, from: i64, to: i64) -> ApiResult<()> {
    let rows = sqlx::query(
        "SELECT user_id FROM blocks WHERE (user_id = $1 AND blocked_id = $2) \
         OR (user_id = $2 AND blocked_id = $1)",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&mut **tx)
    .await?;
    let blockers = rows
        .iter()
        .map(|r| r.try_get::<i64, _>("user_id"))
        .collect::<Result<Vec<_>, _>>()?;
    if blockers.contains(&to) {
        return Err(ApiError::forbidden("blocked", "this user has blocked you"));
    }
    if blockers.contains(&from) {
        return Err(ApiError::conflict(
            "unblock_first",
            "you block this user; unblock them first",
        ));
    }
    Ok(())
}

/// Rule: `uid` has room for one more friend.
///
/// # Errors
/// 409 `friend_limit_reached`.
pub async fn require_friend_capacity(tx: &mut Tx, uid: i64, max: i64, me: i64) -> ApiResult<()> {
    let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM friendships WHERE user_id = $1")
        .bind(uid)
        .fetch_one(&mut **tx)
        .await?
        .try_get("n")?;
    if n < max {
        return Ok(());
    }
    let whose = if uid == me {
        "you have"
    } else {
        "this user has"
    };
    Err(ApiError::conflict(
        "friend_limit_reached",
        format!("{whose} reached the limit of {max} friends"),
    ))
}

/// Which party of a friend request acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Party {
    /// Accepts or rejects it.
    Recipient,
    /// Cancels it.
    Sender,
}

/// Rule: only the recipient of a request answers it, and only while pending.
/// Returns `(from, to)`.
///
/// # Errors
/// 404 `request_not_found` unless the caller is a party; 403 `not_recipient` for the
/// sender; 409 `request_not_pending` for an answered request.
pub async fn require_recipient(tx: &mut Tx, rid: i64, me: i64) -> ApiResult<(i64, i64)> {
    require_party(tx, rid, me, Party::Recipient).await
}

/// The party check behind [`require_recipient`], and for cancels (403 `not_sender` for
/// the recipient).
async fn require_party(tx: &mut Tx, rid: i64, me: i64, who: Party) -> ApiResult<(i64, i64)> {
    let row = sqlx::query("SELECT from_id, to_id, state FROM friend_requests WHERE id = $1")
        .bind(rid)
        .fetch_optional(&mut **tx)
        .await?;
    let not_found = || ApiError::not_found("request_not_found", "no such friend request");
    let row = row.ok_or_else(not_found)?;
    let (from, to, state): (i64, i64, String) = (
        row.try_get("from_id")?,
        row.try_get("to_id")?,
        row.try_get("state")?,
    );
    if from != me && to != me {
        return Err(not_found());
    }
    match who {
        Party::Recipient if to != me => {
            return Err(ApiError::forbidden(
                "not_recipient",
                "only the recipient answers a friend request",
            ))
        }
        Party::Sender if from != me => {
            return Err(ApiError::forbidden(
                "not_sender",
                "only the sender cancels a friend request",
            ))
        }
        _ => {}
    }
    if state != RequestState::Pending.as_str() {
        return Err(not_pending());
    }
    Ok((from, to))
}

fn not_pending() -> ApiError {
    ApiError::conflict("request_not_pending", "the request was already answered")
}

async fn are_friends(tx: &mut Tx, a: i64, b: i64) -> ApiResult<bool> {
    Ok(
        sqlx::query("SELECT 1 FROM friendships WHERE user_id = $1 AND friend_id = $2")
            .bind(a)
            .bind(b)
            .fetch_optional(&mut **tx)
            .await?
            .is_some(),
    )
}

/// Accepts pending request `rid` from `from` to `to` inside `tx` (users locked).
async fn befriend(st: &AppState, tx: &mut Tx, rid: i64, from: i64, to: i64) -> ApiResult<()> {
    let max = st.config.limits.max_friends;
    require_friend_capacity(tx, to, max, to).await?;
    require_friend_capacity(tx, from, max, to).await?;
    let now = now_ms();
    let done = sqlx::query(
        "UPDATE friend_requests SET state = 'accepted', updated_at = $1 \
         WHERE id = $2 AND state = 'pending'",
    )
    .bind(now)
    .bind(rid)
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() != 1 {
        return Err(not_pending());
    }
    // A crossing request the other way is settled by the same friendship.
    sqlx::query(
        "UPDATE friend_requests SET state = 'accepted', updated_at = $1 \
         WHERE from_id = $2 AND to_id = $3 AND state = 'pending'",
    )
    .bind(now)
    .bind(to)
    .bind(from)
    .execute(&mut **tx)
    .await?;
    for (a, b) in [(from, to), (to, from)] {
        sqlx::query(
            "INSERT INTO friendships (user_id, friend_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, friend_id) DO NOTHING",
        )
        .bind(a)
        .bind(b)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// After a committed acceptance: graph, then FRIEND_AGREE to both.
fn announce_friends(st: &AppState, req: &FriendRequest) {
    st.graph.add_friends(req.from.id, req.to.id);
    for (me, friend) in [(&req.from, &req.to), (&req.to, &req.from)] {
        st.push.event(
            &[me.id],
            "FRIEND_AGREE",
            json!({"request_id": req.id, "friend": friend, "since": req.updated_at}),
        );
    }
}

/// Sends a friend request from `me` to `to`, or accepts `to`'s pending request to `me`.
/// The answer's `state` tells which (`pending` or `accepted`).
///
/// # Errors
/// 422 `cannot_befriend_self`/`invalid_message`; 404 `user_not_found`; 403 `blocked`;
/// 409 `unblock_first`, `already_friends`, `request_pending`, `friend_limit_reached`.
pub async fn send_request(
    st: &AppState,
    me: i64,
    to: i64,
    message: &str,
) -> ApiResult<FriendRequest> {
    if me == to {
        return Err(ApiError::invalid(
            "cannot_befriend_self",
            "you cannot send yourself a friend request",
        ));
    }
    check_text("invalid_message", "message", message, 200, true)?;
    let mut tx = st.db.begin_write().await?;
    lock_users(&mut tx, me, to).await?;
    active_user(&mut *tx, to).await?;
    require_not_blocked(&mut tx, me, to).await?;
    if are_friends(&mut tx, me, to).await? {
        return Err(ApiError::conflict(
            "already_friends",
            "you are already friends",
        ));
    }
    let crossing = sqlx::query(
        "SELECT id FROM friend_requests WHERE from_id = $1 AND to_id = $2 AND state = 'pending'",
    )
    .bind(to)
    .bind(me)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(row) = crossing {
        let rid: i64 = row.try_get("id")?;
        befriend(st, &mut tx, rid, to, me).await?;
        let req = load_request(&mut tx, rid, me).await?;
        tx.commit().await?;
        announce_friends(st, &req);
        return Ok(req);
    }
    require_friend_capacity(&mut tx, me, st.config.limits.max_friends, me).await?;
    let now = now_ms();
    let rid: i64 = sqlx::query(
        "INSERT INTO friend_requests (from_id, to_id, message, state, created_at, updated_at) \
         VALUES ($1, $2, $3, 'pending', $4, $4) RETURNING id",
    )
    .bind(me)
    .bind(to)
    .bind(message)
    .bind(now)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| {
        on_unique(
            e,
            ApiError::conflict(
                "request_pending",
                "you already have a pending request to this user",
            ),
        )
    })?
    .try_get("id")?;
    let req = load_request(&mut tx, rid, me).await?;
    tx.commit().await?;
    st.push.event(
        &[to],
        "FRIEND_INVITE",
        json!({"request_id": rid, "from": req.from, "message": req.message, "created_at": now}),
    );
    Ok(req)
}

/// Accepts request `rid` addressed to `me`; both become friends.
///
/// # Errors
/// See [`require_recipient`] and [`require_friend_capacity`].
pub async fn accept_request(st: &AppState, me: i64, rid: i64) -> ApiResult<FriendRequest> {
    let mut tx = st.db.begin_write().await?;
    let (from, to) = require_recipient(&mut tx, rid, me).await?;
    lock_users(&mut tx, from, to).await?;
    befriend(st, &mut tx, rid, from, to).await?;
    let req = load_request(&mut tx, rid, me).await?;
    tx.commit().await?;
    announce_friends(st, &req);
    Ok(req)
}

/// Rejects request `rid` addressed to `me`; the sender gets FRIEND_REJECT.
///
/// # Errors
/// See [`require_recipient`].
pub async fn reject_request(st: &AppState, me: i64, rid: i64) -> ApiResult<FriendRequest> {
    close_request(st, me, rid, Party::Recipient).await
}

/// Cancels request `rid` sent by `me`; the recipient gets FRIEND_CANCEL. The sender may
/// ask again afterwards.
///
/// # Errors
/// 404 `request_not_found` unless `me` is a party; 403 `not_sender` for the recipient;
/// 409 `request_not_pending` once answered.
pub async fn cancel_request(st: &AppState, me: i64, rid: i64) -> ApiResult<FriendRequest> {
    close_request(st, me, rid, Party::Sender).await
}

/// Ends pending request `rid` without a friendship: rejected by its recipient or
/// canceled by its sender; the other party is told.
async fn close_request(st: &AppState, me: i64, rid: i64, who: Party) -> ApiResult<FriendRequest> {
    let (state, event) = match who {
        Party::Recipient => ("rejected", "FRIEND_REJECT"),
        Party::Sender => ("canceled", "FRIEND_CANCEL"),
    };
    let mut tx = st.db.begin_write().await?;
    let (from, to) = require_party(&mut tx, rid, me, who).await?;
    let done = sqlx::query(
        "UPDATE friend_requests SET state = $1, updated_at = $2 \
         WHERE id = $3 AND state = 'pending'",
    )
    .bind(state)
    .bind(now_ms())
    .bind(rid)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        return Err(not_pending());
    }
    let req = load_request(&mut tx, rid, me).await?;
    tx.commit().await?;
    let (other, by) = match who {
        Party::Recipient => (from, &req.to),
        Party::Sender => (to, &req.from),
    };
    st.push.event(
        &[other],
        event,
        json!({"request_id": rid, "by": by, "at": req.updated_at}),
    );
    Ok(req)
}

/// Ends the friendship of `me` and `other` (both directions); both get FRIEND_REMOVED.
///
/// # Errors
/// 404 `friend_not_found` when they are not friends.
pub async fn remove_friend(st: &AppState, me: i64, other: i64) -> ApiResult<()> {
    let mut tx = st.db.begin_write().await?;
    let done = sqlx::query(
        "DELETE FROM friendships WHERE (user_id = $1 AND friend_id = $2) \
         OR (user_id = $2 AND friend_id = $1)",
    )
    .bind(me)
    .bind(other)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found(
            "friend_not_found",
            "this user is not your friend",
        ));
    }
    tx.commit().await?;
    st.graph.remove_friends(me, other);
    let at = now_ms();
    for (uid, gone) in [(me, other), (other, me)] {
        st.push.event(
            &[uid],
            "FRIEND_REMOVED",
            json!({"user_id": gone, "by": me, "at": at}),
        );
    }
    Ok(())
}

/// `me` blocks `other` (idempotent). Pending requests between them are canceled.
///
/// # Errors
/// 422 `cannot_block_self`; 404 `user_not_found`.
pub async fn block(st: &AppState, me: i64, other: i64) -> ApiResult<()> {
    if me == other {
        return Err(ApiError::invalid(
            "cannot_block_self",
            "you cannot block yourself",
        ));
    }
    let mut tx = st.db.begin_write().await?;
    active_user(&mut *tx, other).await?;
    let now = now_ms();
    sqlx::query(
        "INSERT INTO blocks (user_id, blocked_id, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id, blocked_id) DO NOTHING",
    )
    .bind(me)
    .bind(other)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE friend_requests SET state = 'canceled', updated_at = $1 WHERE state = 'pending' \
         AND ((from_id = $2 AND to_id = $3) OR (from_id = $3 AND to_id = $2))",
    )
    .bind(now)
    .bind(me)
    .bind(other)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    st.graph.add_block(me, other);
    Ok(())
}

/// `me` stops blocking `other`.
///
/// # Errors
/// 404 `not_blocked` when `me` does not block `other`.
pub async fn unblock(st: &AppState, me: i64, other: i64) -> ApiResult<()> {
    let done = sqlx::query("DELETE FROM blocks WHERE user_id = $1 AND blocked_id = $2")
        .bind(me)
        .bind(other)
        .execute(&st.db.pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(ApiError::not_found(
            "not_blocked",
            "you do not block this user",
        ));
    }
    st.graph.remove_block(me, other);
    Ok(())
}

/// `me`'s friends by username.
///
/// # Errors
/// Database errors.
pub async fn list_friends(
    st: &AppState,
    me: i64,
    limit: i64,
    offset: i64,
) -> ApiResult<Vec<Friend>> {
    let rows = users_since(st, "friendships", "friend_id", me, limit, offset).await?;
    Ok(rows
        .into_iter()
        .map(|(user, since)| Friend { user, since })
        .collect())
}

/// The users `me` blocks, by username.
///
/// # Errors
/// Database errors.
pub async fn list_blocks(
    st: &AppState,
    me: i64,
    limit: i64,
    offset: i64,
) -> ApiResult<Vec<BlockedUser>> {
    let rows = users_since(st, "blocks", "blocked_id", me, limit, offset).await?;
    Ok(rows
        .into_iter()
        .map(|(user, since)| BlockedUser { user, since })
        .collect())
}

/// The one query behind the friend and block lists: the users named by `other` in
/// `me`'s rows of `table` (`user_id = me`), by username, each with its row's
/// `created_at`. `table` and `other` are constants of this module, never input.
async fn users_since(
    st: &AppState,
    table: &'static str,
    other: &'static str,
    me: i64,
    limit: i64,
    offset: i64,
) -> ApiResult<Vec<(UserBrief, i64)>> {
    let rows = sqlx::query(&format!(
        "SELECT {}, x.created_at AS since FROM {table} x JOIN users u ON u.id = x.{other} \
         WHERE x.user_id = $1 ORDER BY u.username LIMIT $2 OFFSET $3",
        brief_cols("u", "")
    ))
    .bind(me)
    .bind(limit)
    .bind(offset)
    .fetch_all(&st.db.pool)
    .await?;
    rows.iter()
        .map(|r| Ok((brief(r, "")?, r.try_get("since")?)))
        .collect()
}

/// `me`'s requests, newest first: incoming, outgoing or both, in one state or all.
///
/// # Errors
/// Database errors.
pub async fn list_requests(
    st: &AppState,
    me: i64,
    direction: Option<Direction>,
    state: Option<RequestState>,
    limit: i64,
    offset: i64,
) -> ApiResult<Vec<FriendRequest>> {
    let side = match direction {
        Some(Direction::Incoming) => "r.to_id = $1",
        Some(Direction::Outgoing) => "r.from_id = $1",
        None => "(r.to_id = $1 OR r.from_id = $1)",
    };
    let state_cond = if state.is_some() {
        " AND r.state = $4"
    } else {
        ""
    };
    let sql = format!(
        "{} WHERE {side}{state_cond} ORDER BY r.id DESC LIMIT $2 OFFSET $3",
        request_select()
    );
    let mut q = sqlx::query(&sql).bind(me).bind(limit).bind(offset);
    if let Some(s) = state {
        q = q.bind(s.as_str());
    }
    let rows = q.fetch_all(&st.db.pool).await?;
    rows.iter()
        .map(|r| request_of(r, me).map_err(ApiError::from))
        .collect()
}
