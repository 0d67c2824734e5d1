//! Messages: authorize → store with the conversation's next seq (group commit) → ack →
//! deliver; receipts, typing, recall, sync; and offline delivery to returning devices.
//!
//! * One writer task per process stores messages in batches: it takes every send that
//!   is waiting (up to `messages.batch_max`) into one transaction, so under load there
//!   is one commit per batch rather than per message, and with no load a message is
//!   committed at once. Acks and deliveries go out only after the commit.
//! * seq comes from an upsert on the conversation row inside that transaction, so
//!   seqs have no gaps and follow commit order, also with several service instances on
//!   one PostgreSQL.
//! * Offline delivery: when a device subscribes to its inbox the service sends it, on
//!   its private device topic, every message after its cursor, a window at a time, as
//!   its PUBACKs come back (see `delivery`).

pub mod delivery;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use mqim_broker::{Batch, Connection, Registry};
use mqim_proto::{ConversationId, MsgType, ServerFrame};
use parking_lot::Mutex;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use crate::config::MessagesConfig;
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::graph::SocialGraph;
use crate::now_ms;
use crate::push::Push;
use store::{NewMessage, Stored};

/// What a client asks to send (the fields of the `send` frame).
#[derive(Debug, Clone)]
pub struct SendRequest {
    /// Sender's idempotency key (1–64 characters).
    pub client_msg_id: String,
    /// One-to-one recipient.
    pub to_user: Option<i64>,
    /// Group recipient.
    pub to_group: Option<i64>,
    /// Type.
    pub msg_type: MsgType,
    /// Content.
    pub content: String,
    /// Message replied to.
    pub reply_to: Option<i64>,
}

struct Job {
    msg: NewMessage,
    reply: Option<oneshot::Sender<ApiResult<Stored>>>,
    /// The connection the message was sent on (MQTT sends), which gets the ack but not
    /// a copy of its own message.
    origin: Option<Arc<Connection>>,
}

/// Token bucket per user.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The messaging service.
pub struct Messaging {
    db: Db,
    graph: Arc<SocialGraph>,
    push: Push,
    cfg: MessagesConfig,
    jobs: mpsc::Sender<Job>,
    buckets: Mutex<HashMap<i64, Bucket>>,
    /// Uploaded files, which media messages must refer to.
    files: Arc<crate::files::FileStore>,
    /// Offline delivery and device cursors.
    pub delivery: Arc<delivery::Delivery>,
}

impl Messaging {
    /// Starts the writer and delivery tasks.
    pub fn start(
        db: Db,
        graph: Arc<SocialGraph>,
        push: Push,
        connections: Arc<Registry>,
        files: Arc<crate::files::FileStore>,
        cfg: MessagesConfig,
    ) -> Arc<Messaging> {
        let (jobs, rx) = mpsc::channel(cfg.batch_max * 8);
        let delivery = delivery::Delivery::start(db.clone(), push.clone(), cfg.clone());
        tokio::spawn(writer(
            db.clone(),
            push.clone(),
            connections,
            rx,
            cfg.batch_max,
        ));
        Arc::new(Messaging {
            db,
            graph,
            push,
            cfg,
            jobs,
            buckets: Mutex::new(HashMap::new()),
            files,
            delivery,
        })
    }

    /// Takes one token from the user's bucket.
    fn rate_ok(&self, uid: i64) -> bool {
        let mut b = self.buckets.lock();
        let now = Instant::now();
        let e = b.entry(uid).or_insert(Bucket {
            tokens: self.cfg.rate_burst,
            at: now,
        });
        let refill = now.duration_since(e.at).as_secs_f64() * self.cfg.rate_per_sec;
        e.tokens = (e.tokens + refill).min(self.cfg.rate_burst);
        e.at = now;
        if e.tokens >= 1.0 {
            e.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Checks a send against the rules: size, rate, friendship or blocking for
    /// one-to-one, membership and mute for groups.
    ///
    /// # Errors
    /// `too_large` 413, `rate_limited` 429, `user_not_found`/`group_not_found` 404,
    /// `not_friends`/`blocked`/`not_member`/`muted` 403, `bad_frame` 422 (also for a
    /// NUL character in content or `client_msg_id`),
    /// `file_not_found` 422 for a media message that names no uploaded file.
    pub async fn authorize(&self, sender: i64, r: &SendRequest) -> ApiResult<NewMessage> {
        let n = r.client_msg_id.chars().count();
        if n == 0 || n > 64 {
            return Err(ApiError::invalid(
                "bad_frame",
                "client_msg_id must be 1-64 characters",
            ));
        }
        // PostgreSQL's text cannot hold NUL (the whole batch would fail and this send
        // come back as an internal error); refused on both backends alike.
        if r.content.contains('\0') || r.client_msg_id.contains('\0') {
            return Err(ApiError::invalid(
                "bad_frame",
                "content and client_msg_id may not contain NUL characters",
            ));
        }
        if r.content.len() > self.cfg.max_content_bytes {
            return Err(ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("content is over {} bytes", self.cfg.max_content_bytes),
            ));
        }
        if !self.rate_ok(sender) {
            return Err(ApiError::rate_limited("too many messages; slow down"));
        }
        if matches!(
            r.msg_type,
            MsgType::Image | MsgType::Voice | MsgType::Video | MsgType::File
        ) {
            self.files.check_reference(&self.db, &r.content).await?;
        }
        let conv = match (r.to_user, r.to_group) {
            (Some(to), None) => {
                self.check_direct(sender, to).await?;
                ConversationId::direct(sender, to)
            }
            (None, Some(gid)) => {
                self.check_group_sender(sender, gid).await?;
                ConversationId::group(gid)
            }
            _ => {
                return Err(ApiError::invalid(
                    "bad_frame",
                    "exactly one of to_user and to_group is required",
                ))
            }
        };
        Ok(NewMessage {
            sender,
            conv,
            to_user: r.to_user,
            to_group: r.to_group,
            msg_type: r.msg_type,
            content: r.content.clone(),
            client_msg_id: r.client_msg_id.clone(),
            reply_to: r.reply_to,
        })
    }

    /// One-to-one: the recipient exists, has not blocked the sender, and is a friend.
    async fn check_direct(&self, sender: i64, to: i64) -> ApiResult<()> {
        if to == sender {
            return Err(ApiError::invalid("bad_frame", "cannot message yourself"));
        }
        let blocked = self.graph.is_blocked(to, sender);
        if blocked {
            return Err(ApiError::forbidden(
                "blocked",
                "the recipient has blocked you",
            ));
        }
        if mqim_broker::AccessGraph::are_friends(self.graph.as_ref(), sender, to) {
            return Ok(());
        }
        let exists = sqlx::query("SELECT 1 FROM users WHERE id = $1")
            .bind(to)
            .fetch_optional(&self.db.pool)
            .await?
            .is_some();
        if exists {
            Err(ApiError::forbidden(
                "not_friends",
                "you can only message friends",
            ))
        } else {
            Err(ApiError::not_found("user_not_found", "no such user"))
        }
    }

    /// Group: the sender is a member and not muted.
    ///
    /// Members are checked in memory (the graph holds memberships and mutes, updated
    /// after each change commits); only a sender the graph does not list as a member
    /// is looked up in the database, to tell `not_member` from `group_not_found` (and
    /// to admit a join whose commit the graph has not caught up with yet).
    async fn check_group_sender(&self, sender: i64, gid: i64) -> ApiResult<()> {
        if mqim_broker::AccessGraph::is_member(self.graph.as_ref(), sender, gid) {
            return match self.graph.muted_until(gid, sender) {
                Some(t) if t > now_ms() => {
                    Err(ApiError::forbidden("muted", "you are muted in this group"))
                }
                _ => Ok(()),
            };
        }
        let row = sqlx::query(
            "SELECT m.muted_until FROM group_members m JOIN chat_groups g ON g.id = m.group_id \
             WHERE m.group_id = $1 AND m.user_id = $2 AND g.dissolved_at IS NULL",
        )
        .bind(gid)
        .bind(sender)
        .fetch_optional(&self.db.pool)
        .await?;
        match row {
            Some(r) => {
                let muted: Option<i64> = r.try_get("muted_until")?;
                if muted.is_some_and(|t| t > now_ms()) {
                    return Err(ApiError::forbidden("muted", "you are muted in this group"));
                }
                Ok(())
            }
            None => {
                let exists =
                    sqlx::query("SELECT 1 FROM chat_groups WHERE id = $1 AND dissolved_at IS NULL")
                        .bind(gid)
                        .fetch_optional(&self.db.pool)
                        .await?
                        .is_some();
                if exists {
                    Err(ApiError::forbidden(
                        "not_member",
                        "you are not a member of this group",
                    ))
                } else {
                    Err(ApiError::not_found("group_not_found", "no such group"))
                }
            }
        }
    }

    /// Queues an authorized message for storage; the writer acks and delivers it after
    /// commit. With `wait`, returns the stored message.
    ///
    /// # Errors
    /// Storage errors, when waiting.
    pub async fn submit(
        &self,
        msg: NewMessage,
        wait: bool,
        origin: Option<Arc<Connection>>,
    ) -> ApiResult<Option<Stored>> {
        let (tx, rx) = if wait {
            let (t, r) = oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        self.jobs
            .send(Job {
                msg,
                reply: tx,
                origin,
            })
            .await
            .map_err(|_| ApiError::internal("message writer stopped"))?;
        match rx {
            Some(rx) => rx
                .await
                .map_err(|_| ApiError::internal("message writer dropped a send"))?
                .map(Some),
            None => Ok(None),
        }
    }

    /// Whether `uid` takes part in conversation `cid` (now).
    pub fn participant(&self, uid: i64, cid: &ConversationId) -> bool {
        match *cid {
            ConversationId::Direct(a, b) => uid == a || uid == b,
            ConversationId::Group(g) => {
                mqim_broker::AccessGraph::is_member(self.graph.as_ref(), uid, g)
            }
        }
    }

    /// Sends a frame to everyone in a conversation: both users, or the group topic.
    pub fn to_conversation(&self, cid: &ConversationId, frame: &ServerFrame) {
        match *cid {
            ConversationId::Direct(a, b) => {
                self.push.to_user(a, frame);
                self.push.to_user(b, frame);
            }
            ConversationId::Group(g) => self.push.to_group(g, frame),
        }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Settings.
    pub fn config(&self) -> &MessagesConfig {
        &self.cfg
    }

    /// Push handle.
    pub fn push(&self) -> &Push {
        &self.push
    }
}

/// The group-commit writer: one transaction per batch of waiting sends.
async fn writer(
    db: Db,
    push: Push,
    connections: Arc<Registry>,
    mut rx: mpsc::Receiver<Job>,
    batch_max: usize,
) {
    let (deliveries, mut committed) =
        mpsc::unbounded_channel::<Vec<(NewMessage, Option<Arc<Connection>>, ApiResult<Stored>)>>();
    tokio::spawn(async move {
        while let Some(done) = committed.recv().await {
            // One hand-over to the broker per committed batch, in commit order.
            let mut out = Batch::default();
            for (msg, origin, res) in done {
                match res {
                    Ok(stored) => deliver(
                        &push,
                        &connections,
                        &mut out,
                        &msg,
                        origin.as_deref(),
                        &stored,
                    ),
                    Err(e) => {
                        push.to_users_in(
                            &mut out,
                            &[msg.sender],
                            &ServerFrame::error(Some(msg.client_msg_id), e.code, e.message),
                        );
                    }
                }
            }
            push.send(out);
        }
    });
    let mut batch = Vec::with_capacity(batch_max);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let results = match store_batch(&db, &batch).await {
            Ok(r) => r,
            Err(e) => {
                // The batch failed as a whole (e.g. a PostgreSQL statement error aborts
                // its transaction): store each message on its own so one bad message
                // cannot fail the others.
                tracing::warn!(error = %e.message, n = batch.len(), "batch store failed; storing one by one");
                let mut out = Vec::with_capacity(batch.len());
                for j in &batch {
                    out.push(
                        store_batch(&db, std::slice::from_ref(j))
                            .await
                            .and_then(|mut v| {
                                v.pop()
                                    .unwrap_or_else(|| Err(ApiError::internal("empty result")))
                            }),
                    );
                }
                out
            }
        };
        let mut done = Vec::with_capacity(batch.len());
        for (job, res) in batch.drain(..).zip(results) {
            if let Some(reply) = job.reply {
                let _ = reply.send(res.clone());
            }
            done.push((job.msg, job.origin, res));
        }
        // Encoding and publishing the acks and messages runs beside the next batch's
        // transaction; one task keeps them in commit order.
        let _ = deliveries.send(done);
    }
}

/// Stores a batch in one transaction. Per-message rule failures (a bad `reply_to`) are
/// per-message results; a database failure fails the whole batch.
async fn store_batch(db: &Db, batch: &[Job]) -> Result<Vec<ApiResult<Stored>>, ApiError> {
    let msgs: Vec<&NewMessage> = batch.iter().map(|j| &j.msg).collect();
    store::store_many(db, &msgs).await
}
/// After commit: the ack to the sender's devices; the message to the recipients and to
/// the sender's other devices (not to the device it was sent from, `origin`: its guard
/// skips that copy). A repeated send gets the original ack only.
///
/// A one-to-one message sent from a device when no other device of the sender is
/// connected is not published to the sender's inbox at all: nobody would be written
/// that copy (its guard would skip it), and routing it cost a third of the message's
/// deliveries. The device's `ack` then stands for the copy (`Connection::expect_own_ack`).
/// A device of the sender that connects later finds the message in its backlog.
fn deliver(
    push: &Push,
    connections: &Registry,
    out: &mut Batch,
    m: &NewMessage,
    origin: Option<&Connection>,
    s: &Stored,
) {
    let f = &s.frame;
    let ack = ServerFrame::Ack {
        client_msg_id: f.client_msg_id.clone(),
        id: f.id,
        conversation_id: f.conversation_id.clone(),
        seq: f.seq,
        created_at: f.created_at,
    };
    let acks = push.to_users_in(out, &[m.sender], &ack);
    if s.duplicate {
        return;
    }
    let frame = ServerFrame::Message(f.clone());
    let payloads = match (m.to_user, m.to_group) {
        (Some(to), _) => match origin {
            Some(o) if !connections.has_other_connection(m.sender, o.id) => {
                for p in acks.into_iter().flatten() {
                    o.expect_own_ack(p, f.conversation_id.clone(), f.seq);
                }
                push.to_users_in(out, &[to], &frame);
                return;
            }
            _ => push.to_users_in(out, &[to, m.sender], &frame),
        },
        (_, Some(g)) => push.to_group_in(out, g, &frame),
        _ => [None, None],
    };
    // The sending device has the message (and its ack); its guard skips the copy.
    if let Some(origin) = origin {
        for p in payloads.into_iter().flatten() {
            origin.expect_own_copy(p);
        }
    }
}

/// Recalls message `id` on behalf of `uid`: its sender within the recall window, or an
/// owner or admin of its group at any time. Everyone in the conversation is told.
///
/// # Errors
/// `message_not_found` 404 (also for messages of conversations the caller is not in),
/// `recall_window_passed` / `not_sender` 403.
pub async fn recall(state: &crate::state::AppState, uid: i64, id: i64) -> ApiResult<()> {
    let m = &state.messaging;
    let msg = store::message(m.db(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("message_not_found", "no such message"))?;
    let cid = ConversationId::parse(&msg.conversation_id)
        .map_err(|_| ApiError::internal("stored conversation id is invalid"))?;
    if !m.participant(uid, &cid) {
        return Err(ApiError::not_found("message_not_found", "no such message"));
    }
    let moderator = match cid {
        ConversationId::Group(g) => {
            let role: Option<String> =
                sqlx::query("SELECT role FROM group_members WHERE group_id = $1 AND user_id = $2")
                    .bind(g)
                    .bind(uid)
                    .fetch_optional(&m.db().pool)
                    .await?
                    .map(|r| r.try_get("role"))
                    .transpose()?;
            matches!(role.as_deref(), Some("owner" | "admin"))
        }
        ConversationId::Direct(..) => false,
    };
    if !moderator {
        if msg.from != uid {
            return Err(ApiError::forbidden(
                "not_sender",
                "only the sender (or a group admin) may recall",
            ));
        }
        if now_ms() - msg.created_at > m.cfg.recall_window_secs * 1000 {
            return Err(ApiError::forbidden(
                "recall_window_passed",
                "too late to recall this message",
            ));
        }
    }
    store::recall(m.db(), id).await?;
    m.to_conversation(
        &cid,
        &ServerFrame::Recall {
            message_id: id,
            conversation_id: msg.conversation_id.clone(),
            seq: msg.seq,
            by: uid,
        },
    );
    Ok(())
}
