//! Message storage: group-committed inserts with per-conversation seq, history, the
//! conversation list, read state, device cursors and the offline backlog.
//!
//! Runtime SQL that runs unchanged on SQLite and PostgreSQL (see `crate::db`).

use mqim_proto::{ConversationId, MessageFrame, MsgType};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::db::Db;
use crate::error::ApiError;
use crate::now_ms;

/// A message about to be stored (already authorized).
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Sender.
    pub sender: i64,
    /// Conversation.
    pub conv: ConversationId,
    /// Recipient user (one-to-one).
    pub to_user: Option<i64>,
    /// Recipient group.
    pub to_group: Option<i64>,
    /// Type.
    pub msg_type: MsgType,
    /// Content.
    pub content: String,
    /// Sender's idempotency key.
    pub client_msg_id: String,
    /// Message replied to.
    pub reply_to: Option<i64>,
}

/// A stored message, new or found by its idempotency key.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The message as delivered.
    pub frame: MessageFrame,
    /// True when the send repeated an earlier `client_msg_id`: nothing was stored.
    pub duplicate: bool,
}

const MSG_COLS: &str =
    "id, conversation_id, seq, sender_id, to_user, to_group, msg_type, content, \
                        client_msg_id, reply_to, created_at, recalled_at";

/// Builds a frame from a `messages` row selected with `MSG_COLS`.
pub fn frame_of(r: &AnyRow) -> Result<MessageFrame, sqlx::Error> {
    let t: String = r.try_get("msg_type")?;
    let recalled: Option<i64> = r.try_get("recalled_at")?;
    Ok(MessageFrame {
        id: r.try_get("id")?,
        conversation_id: r.try_get("conversation_id")?,
        seq: r.try_get("seq")?,
        from: r.try_get("sender_id")?,
        to_user: r.try_get("to_user")?,
        to_group: r.try_get("to_group")?,
        msg_type: t.parse().unwrap_or(MsgType::Custom),
        content: r.try_get("content")?,
        client_msg_id: r.try_get("client_msg_id")?,
        created_at: r.try_get("created_at")?,
        reply_to: r.try_get("reply_to")?,
        recalled: recalled.is_some(),
    })
}

/// Stores one message inside `tx`: returns the earlier message for a repeated
/// `(sender, client_msg_id)`, otherwise takes the conversation's next seq and inserts.
///
/// # Errors
/// `invalid_reply` (422) for a `reply_to` outside the conversation; database errors.
pub async fn store_one(tx: &mut Transaction<'_, Any>, m: &NewMessage) -> Result<Stored, ApiError> {
    let existing = sqlx::query(&format!(
        "SELECT {MSG_COLS} FROM messages WHERE sender_id = $1 AND client_msg_id = $2"
    ))
    .bind(m.sender)
    .bind(&m.client_msg_id)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(r) = existing {
        return Ok(Stored {
            frame: frame_of(&r)?,
            duplicate: true,
        });
    }
    let cid = m.conv.to_string();
    if let Some(reply) = m.reply_to {
        let ok = sqlx::query("SELECT 1 FROM messages WHERE id = $1 AND conversation_id = $2")
            .bind(reply)
            .bind(&cid)
            .fetch_optional(&mut **tx)
            .await?
            .is_some();
        if !ok {
            return Err(ApiError::invalid(
                "invalid_reply",
                "reply_to is not a message of this conversation",
            ));
        }
    }
    let now = now_ms();
    let (a, b, g) = match m.conv {
        ConversationId::Direct(a, b) => (Some(a), Some(b), None),
        ConversationId::Group(g) => (None, None, Some(g)),
    };
    let seq: i64 = sqlx::query(
        "INSERT INTO conversations (id, user_a, user_b, group_id, last_seq, updated_at) \
         VALUES ($1, $2, $3, $4, 1, $5) \
         ON CONFLICT (id) DO UPDATE SET last_seq = conversations.last_seq + 1, updated_at = $5 \
         RETURNING last_seq",
    )
    .bind(&cid)
    .bind(a)
    .bind(b)
    .bind(g)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?
    .try_get("last_seq")?;
    let id: i64 = sqlx::query(
        "INSERT INTO messages (conversation_id, seq, sender_id, to_user, to_group, msg_type, content, \
         client_msg_id, reply_to, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(&cid)
    .bind(seq)
    .bind(m.sender)
    .bind(m.to_user)
    .bind(m.to_group)
    .bind(m.msg_type.as_str())
    .bind(&m.content)
    .bind(&m.client_msg_id)
    .bind(m.reply_to)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?
    .try_get("id")?;
    Ok(Stored {
        frame: MessageFrame {
            id,
            conversation_id: cid,
            seq,
            from: m.sender,
            to_user: m.to_user,
            to_group: m.to_group,
            msg_type: m.msg_type,
            content: m.content.clone(),
            client_msg_id: m.client_msg_id.clone(),
            created_at: now,
            reply_to: m.reply_to,
            recalled: false,
        },
        duplicate: false,
    })
}

/// Messages of a conversation by seq: after `after` and/or before `before`, at most
/// `limit`, ascending. Returns whether more exist in that direction.
///
/// # Errors
/// Database errors.
pub async fn history(
    db: &Db,
    cid: &str,
    after: Option<i64>,
    before: Option<i64>,
    limit: i64,
) -> Result<(Vec<MessageFrame>, bool), sqlx::Error> {
    let fetch = limit + 1;
    let rows = if before.is_some() && after.is_none() {
        // Newest first below `before`, then reversed to ascending.
        let mut rows = sqlx::query(&format!(
            "SELECT {MSG_COLS} FROM messages WHERE conversation_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
        ))
        .bind(cid)
        .bind(before.unwrap_or(i64::MAX))
        .bind(fetch)
        .fetch_all(&db.pool)
        .await?;
        let more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        rows.reverse();
        let frames = rows.iter().map(frame_of).collect::<Result<Vec<_>, _>>()?;
        return Ok((frames, more));
    } else {
        sqlx::query(&format!(
            "SELECT {MSG_COLS} FROM messages WHERE conversation_id = $1 AND seq > $2 AND seq < $3 ORDER BY seq LIMIT $4"
        ))
        .bind(cid)
        .bind(after.unwrap_or(0))
        .bind(before.unwrap_or(i64::MAX))
        .bind(fetch)
        .fetch_all(&db.pool)
        .await?
    };
    let more = rows.len() as i64 > limit;
    let frames = rows
        .iter()
        .take(limit as usize)
        .map(frame_of)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((frames, more))
}

/// One message by id.
///
/// # Errors
/// Database errors.
pub async fn message(db: &Db, id: i64) -> Result<Option<MessageFrame>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {MSG_COLS} FROM messages WHERE id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(frame_of).transpose()
}

/// The sender of message `seq` of a conversation.
///
/// # Errors
/// Database errors.
pub async fn sender_of(db: &Db, cid: &str, seq: i64) -> Result<Option<i64>, sqlx::Error> {
    let row = sqlx::query("SELECT sender_id FROM messages WHERE conversation_id = $1 AND seq = $2")
        .bind(cid)
        .bind(seq)
        .fetch_optional(&db.pool)
        .await?;
    row.map(|r| r.try_get("sender_id")).transpose()
}

/// Marks a message recalled and clears its content.
///
/// # Errors
/// Database errors.
pub async fn recall(db: &Db, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE messages SET recalled_at = $1, content = '' WHERE id = $2 AND recalled_at IS NULL",
    )
    .bind(now_ms())
    .bind(id)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Raises the user's read position in a conversation (never lowers it).
///
/// # Errors
/// Database errors.
pub async fn mark_read(db: &Db, uid: i64, cid: &str, seq: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO read_state (user_id, conversation_id, read_seq, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_id, conversation_id) DO UPDATE SET \
         read_seq = CASE WHEN excluded.read_seq > read_state.read_seq THEN excluded.read_seq ELSE read_state.read_seq END, \
         updated_at = excluded.updated_at",
    )
    .bind(uid)
    .bind(cid)
    .bind(seq)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// A device acknowledged `seq` of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CursorKey {
    /// User.
    pub uid: i64,
    /// Device (client id).
    pub client_id: String,
    /// Conversation.
    pub conversation_id: String,
}

/// Raises device cursors (never lowers them), in one transaction.
///
/// # Errors
/// Database errors.
pub async fn save_cursors(db: &Db, cursors: &[(CursorKey, i64)]) -> Result<(), sqlx::Error> {
    let mut tx = db.begin_write().await?;
    for (k, seq) in cursors {
        sqlx::query(
            "INSERT INTO device_cursors (user_id, client_id, conversation_id, acked_seq) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id, client_id, conversation_id) DO UPDATE SET \
             acked_seq = CASE WHEN excluded.acked_seq > device_cursors.acked_seq \
             THEN excluded.acked_seq ELSE device_cursors.acked_seq END",
        )
        .bind(k.uid)
        .bind(&k.client_id)
        .bind(&k.conversation_id)
        .bind(*seq)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Records that a device connected (first and last seen).
///
/// # Errors
/// Database errors.
pub async fn touch_device(db: &Db, uid: i64, client_id: &str) -> Result<(), sqlx::Error> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO devices (user_id, client_id, first_seen, last_seen) VALUES ($1, $2, $3, $3) \
         ON CONFLICT (user_id, client_id) DO UPDATE SET last_seen = excluded.last_seen",
    )
    .bind(uid)
    .bind(client_id)
    .bind(now)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Records that a device was last seen now.
///
/// # Errors
/// Database errors.
pub async fn device_seen(db: &Db, uid: i64, client_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE devices SET last_seen = $1 WHERE user_id = $2 AND client_id = $3")
        .bind(now_ms())
        .bind(uid)
        .bind(client_id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// A conversation of a user with where a device (or the user) stands in it.
#[derive(Debug, Clone)]
pub struct ConvState {
    /// Conversation id.
    pub id: String,
    /// Newest seq.
    pub last_seq: i64,
    /// Group, for group conversations.
    pub group_id: Option<i64>,
    /// Where delivery to the device resumes (device cursor, else the user's read
    /// position, else 0).
    pub base: i64,
    /// The user's read position.
    pub read_seq: i64,
    /// When the user joined the group (group conversations): older messages are not
    /// theirs to receive.
    pub joined_at: Option<i64>,
}

/// All conversations of `uid` (one-to-one, and groups they are a member of), with the
/// delivery position of `client_id` (or of no device when `None`).
///
/// # Errors
/// Database errors.
pub async fn conversations_of(
    db: &Db,
    uid: i64,
    client_id: Option<&str>,
) -> Result<Vec<ConvState>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT c.id, c.last_seq, c.group_id, d.acked_seq, r.read_seq, gm.joined_at \
         FROM conversations c \
         LEFT JOIN group_members gm ON gm.group_id = c.group_id AND gm.user_id = $1 \
         LEFT JOIN device_cursors d ON d.user_id = $1 AND d.client_id = $2 AND d.conversation_id = c.id \
         LEFT JOIN read_state r ON r.user_id = $1 AND r.conversation_id = c.id \
         WHERE c.user_a = $1 OR c.user_b = $1 OR gm.user_id IS NOT NULL \
         ORDER BY c.updated_at DESC",
    )
    .bind(uid)
    .bind(client_id.unwrap_or(""))
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let acked: Option<i64> = r.try_get("acked_seq")?;
            let read: Option<i64> = r.try_get("read_seq")?;
            Ok(ConvState {
                id: r.try_get("id")?,
                last_seq: r.try_get("last_seq")?,
                group_id: r.try_get("group_id")?,
                base: acked.or(read).unwrap_or(0),
                read_seq: read.unwrap_or(0),
                joined_at: r.try_get("joined_at")?,
            })
        })
        .collect()
}

/// Messages of `c` after `c.base` that the user may receive (for groups, sent since
/// they joined), created at or before `before`, oldest first, at most `limit` (the
/// newest ones if more).
///
/// # Errors
/// Database errors.
pub async fn pending(
    db: &Db,
    c: &ConvState,
    limit: i64,
    before: i64,
) -> Result<Vec<MessageFrame>, sqlx::Error> {
    let from = c.base.max(c.last_seq - limit);
    let rows = sqlx::query(&format!(
        "SELECT {MSG_COLS} FROM messages WHERE conversation_id = $1 AND seq > $2 AND created_at >= $3 \
         AND created_at <= $4 ORDER BY seq"
    ))
    .bind(&c.id)
    .bind(from)
    .bind(c.joined_at.unwrap_or(0))
    .bind(before)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(frame_of).collect()
}

/// The newest message of a conversation.
///
/// # Errors
/// Database errors.
pub async fn last_message(db: &Db, cid: &str) -> Result<Option<MessageFrame>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {MSG_COLS} FROM messages WHERE conversation_id = $1 ORDER BY seq DESC LIMIT 1"
    ))
    .bind(cid)
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref().map(frame_of).transpose()
}
