//! Handles what the broker reports, in order: client frames, subscriptions (offline
//! delivery), connects and disconnects. (Acknowledgements go straight from the broker
//! hook to `messaging::delivery`.)
//!
//! Every frame is decoded and validated; a bad one gets an `error` frame (code
//! `bad_frame`, or the rule that refused it) on the sender's inbox and nothing else
//! happens: the connection stays open and no other client is affected.
//!
//! Sends, pings, typing and one-to-one `delivered` receipts are handled right here, one
//! after another: they need only memory (and the writer's queue), so every user's
//! sends keep their order and nobody waits on a database. Frames that do wait on the
//! database — `sync`, `recall`, `read` receipts and receipts of group conversations —
//! go to one of a few [`Lanes`] instead, chosen by user, so that one user's stream of
//! them keeps its order but cannot hold up everybody else's messages behind it (a
//! client sending hundreds of `sync` frames once delayed every send on the server by
//! their total time). A user may have [`PER_USER_QUEUED`] of them waiting; more are
//! refused with `rate_limited`.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;

use mqim_broker::{Connection, Grant};
use mqim_proto::{
    decode_client, peek_client_msg_id, ClientFrame, ConversationId, ReceiptKind, ServerFrame,
};
use parking_lot::Mutex;

use tokio::sync::mpsc;

use super::Inbound;
use crate::error::{ApiError, ApiResult};
use crate::messaging::delivery::format_of;
use crate::messaging::{store, SendRequest};
use crate::metrics::Metrics;
use crate::state::AppState;

/// Lanes for frames that wait on the database.
pub const LANES: usize = 4;
/// Database-bound frames one user may have waiting or running at once.
pub const PER_USER_QUEUED: usize = 32;

/// A frame handed to a lane.
struct Slow {
    conn: Arc<Connection>,
    uid: i64,
    frame: ClientFrame,
}

/// The lanes of database-bound frames (see the module docs): each runs its frames one
/// after another; a user's frames always go to the same lane.
struct Lanes {
    lanes: Vec<mpsc::Sender<Slow>>,
    /// Frames of each user waiting or running in a lane.
    queued: Arc<Mutex<HashMap<i64, usize>>>,
}

impl Lanes {
    fn start(state: &AppState) -> Lanes {
        let queued: Arc<Mutex<HashMap<i64, usize>>> = Arc::default();
        let lanes = (0..LANES)
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Slow>(PER_USER_QUEUED * 8);
                let state = state.clone();
                let queued = queued.clone();
                tokio::spawn(async move {
                    while let Some(Slow { conn, uid, frame }) = rx.recv().await {
                        // A panic in one frame's handling must not end the lane (and
                        // leave its users' counts up for good).
                        let handled = AssertUnwindSafe(handle(&state, &conn, uid, frame))
                            .catch_unwind()
                            .await;
                        match handled {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => state
                                .push
                                .to_user(uid, &ServerFrame::error(None, e.code, e.message)),
                            Err(_) => tracing::error!(uid, "handling a frame panicked"),
                        }
                        let mut q = queued.lock();
                        if let Some(n) = q.get_mut(&uid) {
                            *n -= 1;
                            if *n == 0 {
                                q.remove(&uid);
                            }
                        }
                    }
                });
                tx
            })
            .collect();
        Lanes { lanes, queued }
    }

    /// Queues `frame` in the user's lane; `false` when the user has too many waiting
    /// (or the lane is full).
    fn offer(&self, conn: Arc<Connection>, uid: i64, frame: ClientFrame) -> bool {
        let mut q = self.queued.lock();
        let n = q.entry(uid).or_insert(0);
        if *n >= PER_USER_QUEUED {
            return false;
        }
        let lane = &self.lanes[uid.unsigned_abs() as usize % LANES];
        if lane.try_send(Slow { conn, uid, frame }).is_err() {
            if *n == 0 {
                q.remove(&uid);
            }
            return false;
        }
        *n += 1;
        true
    }
}

/// Most devices in one [`DeviceLog`] statement.
pub const DEVICE_BATCH: usize = 1000;

/// Device records (`first_seen`, `last_seen`) of connects and disconnects, written in
/// batches: one upsert per batch instead of one statement — a round trip to a pool
/// worker thread — per connect and per disconnect, which was half the database work of
/// a connect storm (BENCHMARKS.md, "Connect storm"). A batch is whatever queued while
/// the previous one was written. Devices are never deleted, so a late batch cannot
/// bring one back; `GET /me/devices` lists live connections not yet recorded. What is
/// queued at a shutdown is lost: a last-seen time a moment too early.
struct DeviceLog {
    tx: mpsc::UnboundedSender<(i64, String, i64)>,
}

impl DeviceLog {
    fn start(db: crate::db::Db) -> DeviceLog {
        let (tx, mut rx) = mpsc::unbounded_channel::<(i64, String, i64)>();
        tokio::spawn(async move {
            let mut batch: HashMap<(i64, String), i64> = HashMap::new();
            fn add(batch: &mut HashMap<(i64, String), i64>, (uid, client, at): (i64, String, i64)) {
                let e = batch.entry((uid, client)).or_insert(at);
                *e = (*e).max(at);
            }
            while let Some(first) = rx.recv().await {
                add(&mut batch, first);
                while batch.len() < DEVICE_BATCH {
                    match rx.try_recv() {
                        Ok(entry) => add(&mut batch, entry),
                        Err(_) => break,
                    }
                }
                let rows: Vec<(i64, String, i64)> =
                    batch.drain().map(|((u, c), at)| (u, c, at)).collect();
                if let Err(e) = store::touch_devices(&db, &rows).await {
                    tracing::warn!(error = %e, n = rows.len(), "recording devices failed");
                }
            }
        });
        DeviceLog { tx }
    }

    /// Device `client_id` of `uid` was seen now (connected or disconnected).
    fn seen(&self, uid: i64, client_id: &str) {
        let _ = self
            .tx
            .send((uid, client_id.to_owned(), mqim_broker::now_ms()));
    }
}

/// Whether handling `frame` waits on the database (so it goes to a lane).
fn waits_on_database(frame: &ClientFrame) -> bool {
    match frame {
        ClientFrame::Sync { .. } | ClientFrame::Recall { .. } => true,
        ClientFrame::Receipt {
            kind,
            conversation_id,
            ..
        } => *kind == ReceiptKind::Read || conversation_id.starts_with("g:"),
        ClientFrame::Send { .. } | ClientFrame::Typing { .. } | ClientFrame::Ping {} => false,
    }
}

/// Runs until the inbound channel closes.
pub async fn run(state: AppState, mut rx: mpsc::UnboundedReceiver<Inbound>) {
    let lanes = Lanes::start(&state);
    let devices = DeviceLog::start(state.db.clone());
    while let Some(ev) = rx.recv().await {
        match ev {
            Inbound::Frame { conn, fmt, payload } => {
                let Some(uid) = conn.user_id() else { continue };
                let fmt = format_of(fmt);
                let frame =
                    match decode_client(fmt, &payload).and_then(|f| f.validate().map(|()| f)) {
                        Ok(f) => f,
                        Err(e) => {
                            Metrics::inc(&state.metrics.frames_in, "bad_frame");
                            let id = peek_client_msg_id(fmt, &payload);
                            state.push.to_user(uid, &e.to_server_frame(id));
                            continue;
                        }
                    };
                Metrics::inc(&state.metrics.frames_in, frame.kind());
                if waits_on_database(&frame) {
                    if !lanes.offer(conn, uid, frame) {
                        state.push.to_user(
                            uid,
                            &ServerFrame::error(
                                None,
                                "rate_limited",
                                "too many sync, recall and receipt frames waiting; slow down",
                            ),
                        );
                    }
                    continue;
                }
                let id = frame.client_msg_id().map(str::to_owned);
                if let Err(e) = handle(&state, &conn, uid, frame).await {
                    state
                        .push
                        .to_user(uid, &ServerFrame::error(id, e.code, e.message));
                }
            }
            Inbound::Subscribed { conn, grant, qos } => match grant {
                Grant::Inbox { fmt, .. } => {
                    // Live frames already flow to this format (the hook registered it,
                    // see push::InboxFormats); the backlog goes up to now.
                    state
                        .messaging
                        .delivery
                        .drain(conn, fmt.unwrap_or(mqim_broker::Fmt::Json), qos)
                }
                Grant::Presence { uid } => state.presence.watched(uid),
                Grant::Group { .. } => {}
            },
            Inbound::Connected(conn) => connected(&state, &devices, &conn),
            Inbound::Disconnected(conn) => {
                state.messaging.delivery.forget(&conn);
                if let Some(uid) = conn.user_id() {
                    state.presence.touched(uid);
                    devices.seen(uid, &conn.client_id);
                }
            }
        }
    }
}

/// A device came online: presence, the device record, and the session policy.
fn connected(state: &AppState, devices: &DeviceLog, conn: &Arc<Connection>) {
    let Some(uid) = conn.user_id() else { return };
    state.presence.touched(uid);
    if state.config.mqtt.session_policy == "single" {
        // Only older connections: this event may be handled after a newer connection of
        // the user came online, and that one's own event closes this one. (Closing
        // every other one let two quick logins close each other.)
        let mut older = state.connections.of_user(uid);
        older.retain(|c| c.id < conn.id);
        state.closer.close(older);
    }
    devices.seen(uid, &conn.client_id);
}

fn conversation(cid: &str) -> ApiResult<ConversationId> {
    ConversationId::parse(cid).map_err(|e| ApiError::invalid("bad_frame", e.to_string()))
}

async fn handle(
    state: &AppState,
    conn: &Arc<Connection>,
    uid: i64,
    frame: ClientFrame,
) -> ApiResult<()> {
    let m = &state.messaging;
    match frame {
        ClientFrame::Ping {} => state.push.to_user(uid, &ServerFrame::Pong {}),
        ClientFrame::Send {
            client_msg_id,
            to_user,
            to_group,
            msg_type,
            content,
            reply_to,
        } => {
            let req = SendRequest {
                client_msg_id,
                to_user,
                to_group,
                msg_type,
                content,
                reply_to,
            };
            let msg = m.authorize(uid, &req).await?;
            m.submit(msg, false, Some(conn.clone())).await?;
        }
        ClientFrame::Receipt {
            conversation_id,
            seq,
            kind,
        } => {
            let cid = conversation(&conversation_id)?;
            if !m.participant(uid, &cid) {
                return Err(ApiError::forbidden("not_member", "not your conversation"));
            }
            match kind {
                ReceiptKind::Delivered => {
                    m.delivery.received(conn, uid, &conversation_id, seq, false)
                }
                ReceiptKind::Read => store::mark_read(m.db(), uid, &conversation_id, seq).await?,
            }
            relay_receipt(state, uid, &cid, &conversation_id, seq, kind).await?;
        }
        ClientFrame::Typing { to_user, to_group } => {
            let (cid, ok) = match (to_user, to_group) {
                (Some(to), None) => {
                    let cid = ConversationId::direct(uid, to);
                    (
                        cid,
                        mqim_broker::AccessGraph::are_friends(state.graph.as_ref(), uid, to),
                    )
                }
                (None, Some(g)) => (
                    ConversationId::group(g),
                    m.participant(uid, &ConversationId::group(g)),
                ),
                _ => {
                    return Err(ApiError::invalid(
                        "bad_frame",
                        "exactly one of to_user and to_group",
                    ))
                }
            };
            if !ok {
                return Err(ApiError::forbidden(
                    if to_user.is_some() {
                        "not_friends"
                    } else {
                        "not_member"
                    },
                    "you cannot type to this conversation",
                ));
            }
            let f = ServerFrame::Typing {
                from: uid,
                to_user,
                to_group,
                conversation_id: cid.to_string(),
            };
            match to_user {
                Some(to) => state.push.to_user(to, &f),
                None => m.to_conversation(&cid, &f),
            }
        }
        ClientFrame::Recall { message_id } => {
            crate::messaging::recall(state, uid, message_id).await?
        }
        ClientFrame::Sync {
            conversation_id,
            after_seq,
            limit,
        } => {
            let limit = i64::from(limit.unwrap_or(100).clamp(1, 500));
            let f = match conversation_id {
                Some(c) => {
                    let cid = conversation(&c)?;
                    if !m.participant(uid, &cid) {
                        return Err(ApiError::forbidden("not_member", "not your conversation"));
                    }
                    let (messages, has_more) =
                        store::history(m.db(), &c, after_seq, None, limit).await?;
                    ServerFrame::SyncResult {
                        messages,
                        has_more,
                        conversation_id: Some(c),
                    }
                }
                None => {
                    // Everything this device has not acknowledged, across conversations.
                    let convs = m.delivery.positions(uid, &conn.client_id).await?;
                    let mut messages = Vec::new();
                    let mut has_more = false;
                    for c in convs.iter().filter(|c| c.last_seq > c.base) {
                        let mut p = store::pending(m.db(), c, limit, i64::MAX).await?;
                        let room = limit as usize - messages.len();
                        if p.len() > room {
                            p.truncate(room);
                            has_more = true;
                        }
                        messages.extend(p);
                        if messages.len() as i64 >= limit {
                            has_more = true;
                            break;
                        }
                    }
                    ServerFrame::SyncResult {
                        messages,
                        has_more,
                        conversation_id: None,
                    }
                }
            };
            state.push.to_user(uid, &f);
        }
    }
    Ok(())
}

/// Tells the other side of a receipt: the peer of a one-to-one conversation, or the
/// sender of that message in a group.
async fn relay_receipt(
    state: &AppState,
    uid: i64,
    cid: &ConversationId,
    conversation_id: &str,
    seq: i64,
    kind: ReceiptKind,
) -> ApiResult<()> {
    let f = ServerFrame::Receipt {
        conversation_id: conversation_id.to_owned(),
        seq,
        kind,
        from: uid,
    };
    let to = match cid.peer_of(uid) {
        Some(peer) => Some(peer),
        None => store::sender_of(state.messaging.db(), conversation_id, seq).await?,
    };
    if let Some(to) = to.filter(|&t| t != uid) {
        state.push.to_user(to, &f);
    }
    Ok(())
}
