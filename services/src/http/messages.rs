//! Conversations and messages over REST (SPEC §3 "Messages"), for bots, admin tools
//! and clients catching up on history. Sending goes through the same rules, storage
//! and delivery as the MQTT `send` frame.

use axum::extract::State;
use axum::http::StatusCode;
use mqim_proto::{ConversationId, MessageFrame, MsgType, ReceiptKind, ServerFrame};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Auth, Json, Path, Query};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::messaging::{self, store, SendRequest};
use crate::state::AppState;

/// Routes of this module.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_conversations))
        .routes(routes!(history))
        .routes(routes!(send))
        .routes(routes!(recall))
        .routes(routes!(mark_read))
}

/// A message (the `message` frame of SPEC §4).
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    /// Message id.
    pub id: i64,
    /// Conversation id (`u:{a}:{b}` or `g:{gid}`).
    pub conversation_id: String,
    /// Position in the conversation, 1, 2, 3 … without gaps.
    pub seq: i64,
    /// Sender.
    pub from: i64,
    /// One-to-one recipient.
    pub to_user: Option<i64>,
    /// Group.
    pub to_group: Option<i64>,
    /// text, image, voice, video, file, location or custom.
    pub msg_type: String,
    /// Content (empty once recalled).
    pub content: String,
    /// Sender's idempotency key.
    pub client_msg_id: String,
    /// Sent at, unix ms.
    pub created_at: i64,
    /// Message replied to.
    pub reply_to: Option<i64>,
    /// Whether it was recalled.
    pub recalled: bool,
}

impl From<MessageFrame> for MessageView {
    fn from(f: MessageFrame) -> Self {
        MessageView {
            id: f.id,
            conversation_id: f.conversation_id,
            seq: f.seq,
            from: f.from,
            to_user: f.to_user,
            to_group: f.to_group,
            msg_type: f.msg_type.as_str().to_owned(),
            content: f.content,
            client_msg_id: f.client_msg_id,
            created_at: f.created_at,
            reply_to: f.reply_to,
            recalled: f.recalled,
        }
    }
}

/// A conversation of the caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationView {
    /// Conversation id.
    pub conversation_id: String,
    /// The other user (one-to-one).
    pub peer_id: Option<i64>,
    /// The group (group conversations).
    pub group_id: Option<i64>,
    /// Newest seq.
    pub last_seq: i64,
    /// How far the caller has read.
    pub read_seq: i64,
    /// Messages after `read_seq`.
    pub unread: i64,
    /// The newest message.
    pub last_message: Option<MessageView>,
}

/// GET /api/v1/conversations — the caller's conversations, newest activity first, each
/// with its last message and unread count.
#[utoipa::path(get, path = "/conversations", tag = "messages", security(("bearer" = [])),
    responses((status = 200, body = Vec<ConversationView>), (status = 401, body = ErrorBody)))]
async fn list_conversations(
    State(st): State<AppState>,
    Auth(me): Auth,
) -> ApiResult<axum::Json<Vec<ConversationView>>> {
    let db = st.messaging.db();
    let convs = store::conversations_of(db, me.user_id, None).await?;
    let mut out = Vec::with_capacity(convs.len());
    for c in convs {
        let peer_id = ConversationId::parse(&c.id)
            .ok()
            .and_then(|cid| cid.peer_of(me.user_id));
        out.push(ConversationView {
            last_message: store::last_message(db, &c.id).await?.map(Into::into),
            unread: (c.last_seq - c.read_seq).max(0),
            conversation_id: c.id,
            peer_id,
            group_id: c.group_id,
            last_seq: c.last_seq,
            read_seq: c.read_seq,
        })
    }
    Ok(axum::Json(out))
}

/// Query of the history endpoint.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct HistoryParams {
    /// Only messages with a smaller seq (newest ones below it when alone).
    pub before_seq: Option<i64>,
    /// Only messages with a greater seq.
    pub after_seq: Option<i64>,
    /// At most this many (1–500, default 50).
    pub limit: Option<i64>,
}

/// A page of history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    /// Messages in ascending seq.
    pub messages: Vec<MessageView>,
    /// Whether more exist beyond this page in the direction asked.
    pub has_more: bool,
}

fn parse_cid(s: &str) -> ApiResult<ConversationId> {
    ConversationId::parse(s)
        .map_err(|_| ApiError::not_found("conversation_not_found", "no such conversation"))
}

fn own_conversation(st: &AppState, uid: i64, s: &str) -> ApiResult<ConversationId> {
    let cid = parse_cid(s)?;
    if st.messaging.participant(uid, &cid) {
        Ok(cid)
    } else {
        Err(ApiError::not_found(
            "conversation_not_found",
            "no such conversation",
        ))
    }
}

/// GET /api/v1/conversations/{cid}/messages — history by seq.
#[utoipa::path(get, path = "/conversations/{cid}/messages", tag = "messages", security(("bearer" = [])),
    params(("cid" = String, Path, description = "Conversation id, e.g. u:1:2 or g:7"), HistoryParams),
    responses((status = 200, body = HistoryPage), (status = 404, body = ErrorBody)))]
async fn history(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path(cid): Path<String>,
    Query(q): Query<HistoryParams>,
) -> ApiResult<axum::Json<HistoryPage>> {
    own_conversation(&st, me.user_id, &cid)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("invalid_limit", "limit must be 1-500"));
    }
    let (msgs, has_more) =
        store::history(st.messaging.db(), &cid, q.after_seq, q.before_seq, limit).await?;
    Ok(axum::Json(HistoryPage {
        messages: msgs.into_iter().map(Into::into).collect(),
        has_more,
    }))
}

/// Body of `POST /messages` (the fields of the MQTT `send` frame).
#[derive(Debug, Deserialize, ToSchema)]
pub struct SendBody {
    /// Idempotency key, 1–64 characters, unique per sender.
    pub client_msg_id: String,
    /// One-to-one recipient (exactly one of `to_user`, `to_group`).
    pub to_user: Option<i64>,
    /// Group recipient.
    pub to_group: Option<i64>,
    /// text, image, voice, video, file, location or custom.
    #[schema(value_type = String)]
    pub msg_type: MsgType,
    /// Content.
    pub content: String,
    /// Message replied to.
    pub reply_to: Option<i64>,
}

/// The `ack` of a stored message.
#[derive(Debug, Serialize, ToSchema)]
pub struct AckView {
    /// The sender's key.
    pub client_msg_id: String,
    /// Message id.
    pub id: i64,
    /// Conversation.
    pub conversation_id: String,
    /// Seq in the conversation.
    pub seq: i64,
    /// Stored at, unix ms.
    pub created_at: i64,
}

/// POST /api/v1/messages — send a message; answers once it is stored (201), or with
/// the original ack for a repeated `client_msg_id` (200).
#[utoipa::path(post, path = "/messages", tag = "messages", security(("bearer" = [])), request_body = SendBody,
    responses((status = 201, body = AckView), (status = 200, body = AckView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn send(
    State(st): State<AppState>,
    Auth(me): Auth,
    Json(b): Json<SendBody>,
) -> ApiResult<(StatusCode, axum::Json<AckView>)> {
    let req = SendRequest {
        client_msg_id: b.client_msg_id,
        to_user: b.to_user,
        to_group: b.to_group,
        msg_type: b.msg_type,
        content: b.content,
        reply_to: b.reply_to,
    };
    let msg = st.messaging.authorize(me.user_id, &req).await?;
    let stored = st
        .messaging
        .submit(msg, true, None)
        .await?
        .ok_or_else(|| ApiError::internal("no result from the message writer"))?;
    let f = stored.frame;
    let status = if stored.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        axum::Json(AckView {
            client_msg_id: f.client_msg_id,
            id: f.id,
            conversation_id: f.conversation_id,
            seq: f.seq,
            created_at: f.created_at,
        }),
    ))
}

/// POST /api/v1/messages/{id}/recall — recall a message (sender within the window, or a
/// group owner/admin).
#[utoipa::path(post, path = "/messages/{id}/recall", tag = "messages", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Message id")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn recall(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    messaging::recall(&st, me.user_id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body of the read endpoint.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ReadBody {
    /// Everything up to this seq is read.
    pub seq: i64,
}

/// POST /api/v1/conversations/{cid}/read — mark read up to `seq`; the other side gets a
/// `read` receipt.
#[utoipa::path(post, path = "/conversations/{cid}/read", tag = "messages", security(("bearer" = [])),
    params(("cid" = String, Path, description = "Conversation id")), request_body = ReadBody,
    responses((status = 204), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn mark_read(
    State(st): State<AppState>,
    Auth(me): Auth,
    Path(cid): Path<String>,
    Json(b): Json<ReadBody>,
) -> ApiResult<StatusCode> {
    let conv = own_conversation(&st, me.user_id, &cid)?;
    if b.seq < 1 {
        return Err(ApiError::invalid("invalid_seq", "seq must be at least 1"));
    }
    store::mark_read(st.messaging.db(), me.user_id, &cid, b.seq).await?;
    let f = ServerFrame::Receipt {
        conversation_id: cid.clone(),
        seq: b.seq,
        kind: ReceiptKind::Read,
        from: me.user_id,
    };
    let to = match conv.peer_of(me.user_id) {
        Some(p) => Some(p),
        None => store::sender_of(st.messaging.db(), &cid, b.seq).await?,
    };
    if let Some(to) = to.filter(|&t| t != me.user_id) {
        st.push.to_user(to, &f);
    }
    Ok(StatusCode::NO_CONTENT)
}
