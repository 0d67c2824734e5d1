//! Message storage: group-committed inserts with per-conversation seq, history, the
//! conversation list, read state, device cursors and the offline backlog.
//!
//! Runtime SQL that runs unchanged on SQLite and PostgreSQL (see `crate::db`).

use foldhash::{HashMap, HashMapExt};
use mqim_proto::{ConversationId, MessageFrame, MsgType};
use sqlx::any::AnyRow;
use std::collections::hash_map::Entry;

use sqlx::Row;

use crate::db::{Db, WriteTx};
use crate::error::ApiError;
use crate::now_ms;
use crate::sqlite_writer::WriterGone;

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
    frame_from(r)
}

/// Column access shared by the pool's rows and the writer thread's (rusqlite) rows, so
/// one function reads a message row from either.
trait Cols {
    type E;
    fn int(&self, c: &str) -> Result<i64, Self::E>;
    fn opt_int(&self, c: &str) -> Result<Option<i64>, Self::E>;
    fn text(&self, c: &str) -> Result<String, Self::E>;
}

impl Cols for AnyRow {
    type E = sqlx::Error;
    fn int(&self, c: &str) -> Result<i64, sqlx::Error> {
        self.try_get(c)
    }
    fn opt_int(&self, c: &str) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(c)
    }
    fn text(&self, c: &str) -> Result<String, sqlx::Error> {
        self.try_get(c)
    }
}

impl Cols for rusqlite::Row<'_> {
    type E = rusqlite::Error;
    fn int(&self, c: &str) -> Result<i64, rusqlite::Error> {
        self.get(c)
    }
    fn opt_int(&self, c: &str) -> Result<Option<i64>, rusqlite::Error> {
        self.get(c)
    }
    fn text(&self, c: &str) -> Result<String, rusqlite::Error> {
        self.get(c)
    }
}

fn frame_from<R: Cols>(r: &R) -> Result<MessageFrame, R::E> {
    Ok(MessageFrame {
        id: r.int("id")?,
        conversation_id: r.text("conversation_id")?,
        seq: r.int("seq")?,
        from: r.int("sender_id")?,
        to_user: r.opt_int("to_user")?,
        to_group: r.opt_int("to_group")?,
        msg_type: r.text("msg_type")?.parse().unwrap_or(MsgType::Custom),
        content: r.text("content")?,
        client_msg_id: r.text("client_msg_id")?,
        created_at: r.int("created_at")?,
        reply_to: r.opt_int("reply_to")?,
        recalled: r.opt_int("recalled_at")?.is_some(),
    })
}

/// A database failure of a write, through the pool or the writer thread.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Through the pool.
    #[error(transparent)]
    Pool(#[from] sqlx::Error),
    /// On the writer thread.
    #[error(transparent)]
    Thread(#[from] rusqlite::Error),
    /// The writer thread stopped.
    #[error(transparent)]
    Gone(#[from] WriterGone),
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        ApiError::internal(e)
    }
}

/// Rows per multi-row statement of the device batches: keeps every statement under
/// SQLite's and PostgreSQL's bind-parameter limits.
const ROWS_PER_STATEMENT: usize = 100;

/// Stores a batch of messages in one transaction.
///
/// On SQLite (a file database) the whole batch is one job on the writer thread (see
/// [`crate::sqlite_writer`]): prepared single-row statements, no round trips. On
/// PostgreSQL every statement is a round trip to the server, so the batch is a fixed
/// number of statements whatever its size (see [`store_steps`]).
///
/// Returns one result per message, in order: the earlier message for a repeated
/// `(sender, client_msg_id)` (also when both are in this batch), otherwise the new one
/// with its conversation's next seq (in batch order).
///
/// # Errors
/// Per message: `invalid_reply` (422) for a `reply_to` outside the conversation.
/// For the whole batch: database errors (nothing of the batch is then stored).
pub async fn store_many(
    db: &Db,
    msgs: &[&NewMessage],
) -> Result<Vec<Result<Stored, ApiError>>, ApiError> {
    let owned: Vec<NewMessage> = msgs.iter().map(|m| (*m).clone()).collect();
    if let Some(r) = db
        .write_job(move |conn| store_on_thread(conn, &owned))
        .await
    {
        return r.map_err(WriteError::from)?;
    }
    let mut tx = db.begin_message_write().await?;
    let out = store_steps(&mut tx, msgs).await?;
    tx.commit().await?;
    Ok(out)
}

/// Idempotency within a batch: the first index of each `(sender, client_msg_id)`, and
/// `(repeat, first)` for the repeats.
type FirstOf<'a> = (HashMap<(i64, &'a str), usize>, Vec<(usize, usize)>);

fn first_of<'a, M: std::borrow::Borrow<NewMessage>>(msgs: &'a [M]) -> FirstOf<'a> {
    let mut first: HashMap<(i64, &str), usize> = HashMap::new();
    let mut repeats = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let m = m.borrow();
        match first.entry((m.sender, m.client_msg_id.as_str())) {
            Entry::Occupied(e) => repeats.push((i, *e.get())),
            Entry::Vacant(e) => {
                e.insert(i);
            }
        }
    }
    (first, repeats)
}

/// The results of a batch once its new and found messages are in place: a key repeated
/// in the batch answers like its first occurrence.
fn finish(
    mut out: Vec<Option<Result<Stored, ApiError>>>,
    repeats: Vec<(usize, usize)>,
) -> Result<Vec<Result<Stored, ApiError>>, ApiError> {
    for (i, first) in repeats {
        out[i] = Some(match &out[first] {
            Some(Ok(s)) => Ok(Stored {
                frame: s.frame.clone(),
                duplicate: true,
            }),
            Some(Err(e)) => Err(e.clone()),
            None => Err(ApiError::internal("no result for a repeated send")),
        });
    }
    out.into_iter()
        .map(|r| r.ok_or_else(|| ApiError::internal("message left unstored")))
        .collect()
}

fn invalid_reply() -> ApiError {
    ApiError::invalid(
        "invalid_reply",
        "reply_to is not a message of this conversation",
    )
}

/// The new message `m` as stored with `id` and `seq` at `now`.
fn stored(m: &NewMessage, cid: String, id: i64, seq: i64, now: i64) -> Stored {
    Stored {
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
    }
}

/// `(user_a, user_b, group_id)` of a conversation row.
fn parties(conv: &ConversationId) -> (Option<i64>, Option<i64>, Option<i64>) {
    match *conv {
        ConversationId::Direct(a, b) => (Some(a), Some(b), None),
        ConversationId::Group(g) => (None, None, Some(g)),
    }
}

const UPSERT_CONVERSATIONS: &str =
    "INSERT INTO conversations (id, user_a, user_b, group_id, last_seq, updated_at) VALUES ";
const UPSERT_CONVERSATIONS_END: &str = " ON CONFLICT (id) DO UPDATE SET \
     last_seq = conversations.last_seq + excluded.last_seq, updated_at = excluded.updated_at";
const INSERT_MESSAGES: &str = "INSERT INTO messages (conversation_id, seq, sender_id, to_user, \
     to_group, msg_type, content, client_msg_id, reply_to, created_at) VALUES ";

/// A conversation's seqs within one SQLite batch.
struct SeqRun {
    /// A message of the batch in it (for the conversation row's parties).
    first: usize,
    /// The seq its next new message takes.
    next: i64,
    /// Seqs taken but not (yet) given to a message: its candidates until the upsert
    /// took them, then those left over by repeats the insert found.
    unused: i64,
}

/// [`store_many`] on SQLite's writer thread: one transaction, each step a prepared
/// single-row statement (in-process calls, no statement journal).
///
/// A repeated `client_msg_id` is found by the insert itself (`ON CONFLICT … DO NOTHING`
/// on the sender's key) rather than by a lookup before it, so a new message costs one
/// statement, not two. Seqs are taken up front for every candidate and handed out only
/// as inserts succeed; a conversation that had repeats gives the unused ones back before
/// commit, so seqs stay gapless.
fn store_on_thread(
    conn: &mut rusqlite::Connection,
    msgs: &[NewMessage],
) -> Result<Vec<Result<Stored, ApiError>>, ApiError> {
    use rusqlite::OptionalExtension;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut out: Vec<Option<Result<Stored, ApiError>>> = (0..msgs.len()).map(|_| None).collect();
    let (first, repeats) = first_of(msgs);
    let cids: Vec<String> = msgs.iter().map(|m| m.conv.to_string()).collect();
    let mut find = tx.prepare_cached(&format!(
        "SELECT {MSG_COLS} FROM messages WHERE sender_id = ?1 AND client_msg_id = ?2"
    ))?;
    // 1. Candidates: first occurrences in the batch whose reply (if any) is valid. An
    //    invalid reply of a repeated send answers with the original, as repeats do.
    let mut fresh: Vec<usize> = Vec::with_capacity(msgs.len());
    {
        let mut reply =
            tx.prepare_cached("SELECT 1 FROM messages WHERE id = ?1 AND conversation_id = ?2")?;
        for (i, m) in msgs.iter().enumerate() {
            if first.get(&(m.sender, m.client_msg_id.as_str())) != Some(&i) {
                continue;
            }
            match m.reply_to {
                Some(to) if !reply.exists((to, &cids[i]))? => {
                    let found = find
                        .query_row((m.sender, &m.client_msg_id), |r| frame_from(r))
                        .optional()?;
                    out[i] = Some(match found {
                        Some(frame) => Ok(Stored {
                            frame,
                            duplicate: true,
                        }),
                        None => Err(invalid_reply()),
                    });
                }
                _ => fresh.push(i),
            }
        }
    }
    // 2. Seqs: each conversation takes a run of as many seqs as it has candidates.
    let now = now_ms();
    let mut next: HashMap<&str, SeqRun> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for &i in &fresh {
        next.entry(cids[i].as_str())
            .or_insert_with(|| {
                order.push(cids[i].as_str());
                SeqRun {
                    first: i,
                    next: 0,
                    unused: 0,
                }
            })
            .unused += 1;
    }
    {
        let mut upsert = tx.prepare_cached(&format!(
            "{UPSERT_CONVERSATIONS}(?1, ?2, ?3, ?4, ?5, ?6){UPSERT_CONVERSATIONS_END} \
             RETURNING last_seq"
        ))?;
        for cid in &order {
            if let Some(run) = next.get_mut(cid) {
                let (a, b, g) = parties(&msgs[run.first].conv);
                let last: i64 = upsert.query_row((cid, a, b, g, run.unused, now), |r| r.get(0))?;
                run.next = last - run.unused + 1;
            }
        }
    }
    // 3. Insert, in batch order; a conflict on the sender's key is a repeated send.
    {
        let mut insert = tx.prepare_cached(&format!(
            "{INSERT_MESSAGES}(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
             ON CONFLICT (sender_id, client_msg_id) DO NOTHING"
        ))?;
        for &i in &fresh {
            let m = &msgs[i];
            let Some(run) = next.get_mut(cids[i].as_str()) else {
                continue;
            };
            let inserted = insert.execute((
                &cids[i],
                run.next,
                m.sender,
                m.to_user,
                m.to_group,
                m.msg_type.as_str(),
                &m.content,
                &m.client_msg_id,
                m.reply_to,
                now,
            ))?;
            if inserted == 0 {
                let frame = find.query_row((m.sender, &m.client_msg_id), |r| frame_from(r))?;
                out[i] = Some(Ok(Stored {
                    frame,
                    duplicate: true,
                }));
                continue;
            }
            out[i] = Some(Ok(stored(
                m,
                cids[i].clone(),
                tx.last_insert_rowid(),
                run.next,
                now,
            )));
            run.next += 1;
            run.unused -= 1;
        }
    }
    // 4. Seqs taken for repeats the insert found (a client's retry) go back.
    for (cid, run) in &next {
        if run.unused > 0 {
            tx.prepare_cached("UPDATE conversations SET last_seq = last_seq - ?1 WHERE id = ?2")?
                .execute((run.unused, cid))?;
        }
    }
    drop(find);
    tx.commit()?;
    finish(out, repeats)
}

/// A bind value of a batch statement.
enum Arg<'a> {
    Int(i64),
    Text(&'a str),
    /// A JSON document, bound as text (cast with `$n::json` in the statement).
    Json(String),
}

/// A statement and its arguments.
struct Stmt<'a> {
    sql: String,
    args: Vec<Arg<'a>>,
    /// Planned anew at each run (an unnamed statement) rather than prepared once per
    /// connection, for a query whose best plan depends on the table's current size.
    plan_each_time: bool,
}

impl<'a> Stmt<'a> {
    fn new(sql: impl Into<String>, args: Vec<Arg<'a>>) -> Stmt<'a> {
        Stmt {
            sql: sql.into(),
            args,
            plan_each_time: false,
        }
    }
}

/// Runs `s` in `tx` and returns the rows it produced.
async fn run(tx: &mut WriteTx, s: &Stmt<'_>) -> Result<Vec<AnyRow>, sqlx::Error> {
    s.args
        .iter()
        .fold(sqlx::query(&s.sql), bind)
        .persistent(!s.plan_each_time)
        .fetch_all(&mut **tx)
        .await
}

fn bind<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    a: &'q Arg<'q>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    match a {
        Arg::Int(v) => q.bind(*v),
        Arg::Text(v) => q.bind(*v),
        Arg::Json(v) => q.bind(v.as_str()),
    }
}

/// [`store_many`] on PostgreSQL, where every statement is a round trip to the server:
/// three statements whatever the batch size — one lookup of the idempotency keys, one
/// upsert of the conversations (taking a run of seqs each), one insert of the new
/// messages — plus one query per `reply_to`.
///
/// Each statement takes its rows as one JSON array (`json_to_recordset`), so its text
/// is the same for every batch: it is parsed and prepared once per connection, and
/// the server plans it without a parameter list of batch size. With one tuple of
/// placeholders per row (as before session 20) every batch size was a statement of
/// its own: in a run of changing sizes each batch prepared its statements anew, and
/// planning the lookup's 100-way `OR` alone took longer than running it.
async fn store_steps(
    tx: &mut WriteTx,
    msgs: &[&NewMessage],
) -> Result<Vec<Result<Stored, ApiError>>, ApiError> {
    let mut out: Vec<Option<Result<Stored, ApiError>>> = (0..msgs.len()).map(|_| None).collect();
    // 1. Idempotency: keys stored earlier, and keys repeated within the batch.
    let (first_of, repeats) = first_of(msgs);
    let keys: Vec<KeyRow> = first_of.keys().map(|&(s, c)| KeyRow { s, c }).collect();
    // One index lookup per key (LATERAL), planned at each batch: a plan kept from the
    // first batches, when the table was empty, scanned the whole table for every key
    // once it had grown (2.9 ms a batch against 0.7 ms planned afresh), since a new
    // database is not analyzed for the first minute.
    let lookup = Stmt {
        plan_each_time: true,
        ..Stmt::new(
            format!(
                "SELECT m.* FROM json_to_recordset($1::json) AS k(s BIGINT, c TEXT), \
                 LATERAL (SELECT {MSG_COLS} FROM messages \
                 WHERE sender_id = k.s AND client_msg_id = k.c) AS m"
            ),
            vec![Arg::Json(to_json(&keys)?)],
        )
    };
    for r in run(tx, &lookup).await? {
        let frame = frame_of(&r)?;
        if let Some(&i) = first_of.get(&(frame.from, frame.client_msg_id.as_str())) {
            out[i] = Some(Ok(Stored {
                frame,
                duplicate: true,
            }));
        }
    }
    // 2. Replies must name a message of the same conversation (rare: one query each).
    let cids: Vec<String> = msgs.iter().map(|m| m.conv.to_string()).collect();
    let mut fresh: Vec<usize> = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        if out[i].is_some() || first_of.get(&(m.sender, m.client_msg_id.as_str())) != Some(&i) {
            continue;
        }
        if let Some(reply) = m.reply_to {
            let check = Stmt::new(
                "SELECT 1 AS found FROM messages WHERE id = $1 AND conversation_id = $2",
                vec![Arg::Int(reply), Arg::Text(&cids[i])],
            );
            if run(tx, &check).await?.is_empty() {
                out[i] = Some(Err(invalid_reply()));
                continue;
            }
        }
        fresh.push(i);
    }
    if fresh.is_empty() {
        return finish(out, repeats);
    }
    // 3. Seqs: each conversation takes a run of as many seqs as it has new messages
    //    (upsert, returning its new last_seq), and the j-th of its n new messages in
    //    this batch gets `last_seq - n + 1 + j`. The rows are locked in id order, so
    //    two instances writing batches of the same conversations cannot deadlock.
    let now = now_ms();
    let mut counts: Vec<ConvRow> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    let mut place: Vec<i64> = Vec::with_capacity(fresh.len());
    for &i in &fresh {
        let cid = cids[i].as_str();
        let k = *at.entry(cid).or_insert_with(|| {
            let (a, b, g) = parties(&msgs[i].conv);
            counts.push(ConvRow {
                id: cid,
                a,
                b,
                g,
                n: 0,
            });
            counts.len() - 1
        });
        place.push(counts[k].n);
        counts[k].n += 1;
    }
    let upsert = Stmt::new(
        format!(
            "{UPSERT_CONVERSATIONS_FROM_JSON}{UPSERT_CONVERSATIONS_END} RETURNING id, last_seq"
        ),
        vec![Arg::Json(to_json(&counts)?), Arg::Int(now)],
    );
    let mut last_seq: HashMap<String, i64> = HashMap::with_capacity(counts.len());
    for r in run(tx, &upsert).await? {
        last_seq.insert(r.try_get("id")?, r.try_get("last_seq")?);
    }
    // 4. Insert, in batch order, so seqs follow the order the sends arrived in.
    let mut rows: Vec<MessageRow> = Vec::with_capacity(fresh.len());
    for (&i, &j) in fresh.iter().zip(&place) {
        let m = msgs[i];
        let n = counts[at[cids[i].as_str()]].n;
        let last = last_seq
            .get(&cids[i])
            .ok_or_else(|| ApiError::internal("upsert returned no conversation"))?;
        rows.push(MessageRow {
            c: &cids[i],
            q: last - n + 1 + j,
            s: m.sender,
            tu: m.to_user,
            tg: m.to_group,
            t: m.msg_type.as_str(),
            b: &m.content,
            k: &m.client_msg_id,
            r: m.reply_to,
        });
    }
    let insert = Stmt::new(
        INSERT_MESSAGES_FROM_JSON,
        vec![Arg::Json(to_json(&rows)?), Arg::Int(now)],
    );
    let mut ids: HashMap<(String, i64), i64> = HashMap::with_capacity(rows.len());
    for r in run(tx, &insert).await? {
        ids.insert(
            (r.try_get("conversation_id")?, r.try_get("seq")?),
            r.try_get("id")?,
        );
    }
    for (&i, row) in fresh.iter().zip(&rows) {
        let id = ids
            .remove(&(cids[i].clone(), row.q))
            .ok_or_else(|| ApiError::internal("insert returned no id"))?;
        out[i] = Some(Ok(stored(msgs[i], cids[i].clone(), id, row.q, now)));
    }
    finish(out, repeats)
}

/// An idempotency key of the lookup (`json_to_recordset` row).
#[derive(serde::Serialize)]
struct KeyRow<'a> {
    s: i64,
    c: &'a str,
}

/// A conversation row of the upsert: its parties and how many seqs it takes.
#[derive(serde::Serialize)]
struct ConvRow<'a> {
    id: &'a str,
    a: Option<i64>,
    b: Option<i64>,
    g: Option<i64>,
    n: i64,
}

/// A message row of the insert (short keys: the JSON is sent for every message).
#[derive(serde::Serialize)]
struct MessageRow<'a> {
    c: &'a str,
    q: i64,
    s: i64,
    tu: Option<i64>,
    tg: Option<i64>,
    t: &'a str,
    b: &'a str,
    k: &'a str,
    r: Option<i64>,
}

fn to_json<T: serde::Serialize>(rows: &T) -> Result<String, ApiError> {
    serde_json::to_string(rows).map_err(ApiError::internal)
}

/// The upsert's rows from JSON (`$1`), `$2` the time (PostgreSQL).
const UPSERT_CONVERSATIONS_FROM_JSON: &str =
    "INSERT INTO conversations (id, user_a, user_b, group_id, last_seq, updated_at) \
     SELECT id, a, b, g, n, $2 FROM json_to_recordset($1::json) \
     AS r(id TEXT, a BIGINT, b BIGINT, g BIGINT, n BIGINT) ORDER BY id";

/// The insert's rows from JSON (`$1`), `$2` the time (PostgreSQL).
const INSERT_MESSAGES_FROM_JSON: &str = "INSERT INTO messages (conversation_id, seq, sender_id, \
     to_user, to_group, msg_type, content, client_msg_id, reply_to, created_at) \
     SELECT c, q, s, tu, tg, t, b, k, r, $2 FROM json_to_recordset($1::json) \
     AS r(c TEXT, q BIGINT, s BIGINT, tu BIGINT, tg BIGINT, t TEXT, b TEXT, k TEXT, r BIGINT) \
     RETURNING id, conversation_id, seq";

/// `($1, $2, …), ($k+1, …), …`: `rows` tuples of `cols` placeholders (the device
/// batches' statements, on both backends).
fn placeholders(rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            n += 1;
            s.push_str(&param(n));
        }
        s.push(')');
    }
    s
}

/// PostgreSQL placeholder number `n` (1-based).
fn param(n: usize) -> String {
    format!("${n}")
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
    let _turn = db.write_turn().await;
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
    let _turn = db.write_turn().await;
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

const UPSERT_CURSORS: &str =
    "INSERT INTO device_cursors (user_id, client_id, conversation_id, acked_seq) VALUES ";
const UPSERT_CURSORS_END: &str = " ON CONFLICT (user_id, client_id, conversation_id) \
     DO UPDATE SET acked_seq = CASE WHEN excluded.acked_seq > device_cursors.acked_seq \
     THEN excluded.acked_seq ELSE device_cursors.acked_seq END";

/// Raises device cursors (never lowers them), 200 per transaction: between them the
/// write gate lets message batches in, so a large flush does not stall sends (each row
/// stands on its own). On SQLite a transaction is one job on the writer thread.
///
/// # Errors
/// Database errors.
pub async fn save_cursors(db: &Db, cursors: &[(CursorKey, i64)]) -> Result<(), WriteError> {
    for chunk in cursors.chunks(ROWS_PER_STATEMENT * 2) {
        let rows = chunk.to_vec();
        let job = db.write_job(move |conn| -> Result<(), rusqlite::Error> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut upsert = tx.prepare_cached(&format!(
                    "{UPSERT_CURSORS}(?1, ?2, ?3, ?4){UPSERT_CURSORS_END}"
                ))?;
                for (k, seq) in &rows {
                    upsert.execute((k.uid, &k.client_id, &k.conversation_id, seq))?;
                }
            }
            tx.commit()
        });
        if let Some(r) = job.await {
            r??;
            continue;
        }
        let upsert = Stmt::new(
            format!(
                "{UPSERT_CURSORS}{}{UPSERT_CURSORS_END}",
                placeholders(chunk.len(), 4)
            ),
            chunk
                .iter()
                .flat_map(|(k, seq)| {
                    [
                        Arg::Int(k.uid),
                        Arg::Text(&k.client_id),
                        Arg::Text(&k.conversation_id),
                        Arg::Int(*seq),
                    ]
                })
                .collect(),
        );
        let mut tx = db.begin_message_write().await?;
        run(&mut tx, &upsert).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Records that a device connected (first and last seen).
///
/// # Errors
/// Database errors.
pub async fn touch_device(db: &Db, uid: i64, client_id: &str) -> Result<(), sqlx::Error> {
    touch_devices(db, &[(uid, client_id.to_owned(), now_ms())]).await
}

/// Records devices as seen at the given times (unix ms), in one statement: new ones with
/// that time as first and last seen, known ones with a later last seen (never an
/// earlier one: batches of different writers may land in any order). At most one entry
/// per device (PostgreSQL refuses to update a row twice in one statement), and few
/// enough for the placeholder limits (4 per entry).
///
/// # Errors
/// Database errors.
pub async fn touch_devices(db: &Db, seen: &[(i64, String, i64)]) -> Result<(), sqlx::Error> {
    if seen.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO devices (user_id, client_id, first_seen, last_seen) VALUES {} \
         ON CONFLICT (user_id, client_id) DO UPDATE SET last_seen = \
         CASE WHEN excluded.last_seen > devices.last_seen THEN excluded.last_seen \
         ELSE devices.last_seen END",
        placeholders(seen.len(), 4)
    );
    let mut q = sqlx::query(&sql);
    for (uid, client, at) in seen {
        q = q.bind(*uid).bind(client.as_str()).bind(*at).bind(*at);
    }
    let _turn = db.write_turn().await;
    q.execute(&db.pool).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// A migrated database: SQLite in a fresh directory, or a fresh PostgreSQL
    /// database when `TEST_POSTGRES_URL` is set (as CI does).
    async fn fresh_db(name: &str) -> Db {
        let mut cfg = Config::load(None).expect("defaults load");
        let dir = std::env::temp_dir().join(format!(
            "mqim-store-{name}-{}-{}",
            std::process::id(),
            now_ms()
        ));
        cfg.data_dir = dir;
        if let Ok(pg) = std::env::var("TEST_POSTGRES_URL") {
            sqlx::any::install_default_drivers();
            let admin = sqlx::AnyPool::connect(&pg).await.expect("postgres");
            let db = format!("mqim_unit_{name}_{}", now_ms());
            sqlx::query(&format!("CREATE DATABASE {db}"))
                .execute(&admin)
                .await
                .expect("create database");
            let base = pg.rsplit_once('/').map_or(pg.as_str(), |(b, _)| b);
            cfg.database.url = format!("{base}/{db}");
        }
        let db = Db::connect(&cfg).await.expect("connect");
        db.migrate().await.expect("migrate");
        for name in ["alice", "bob", "carol"] {
            sqlx::query(
                "INSERT INTO users (username, password_hash, created_at, updated_at) VALUES ($1, 'x', 0, 0)",
            )
            .bind(name)
            .execute(&db.pool)
            .await
            .expect("user");
        }
        db
    }

    fn msg(sender: i64, to: i64, key: &str) -> NewMessage {
        NewMessage {
            sender,
            conv: ConversationId::direct(sender, to),
            to_user: Some(to),
            to_group: None,
            msg_type: MsgType::Text,
            content: format!("content of {key}"),
            client_msg_id: key.to_owned(),
            reply_to: None,
        }
    }

    /// The seqs of the stored (or found) messages of a batch's results, in order.
    fn seqs_of(results: &[Result<Stored, ApiError>]) -> Vec<i64> {
        results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|s| s.frame.seq)
            .collect()
    }

    async fn count_messages(db: &Db) -> i64 {
        sqlx::query("SELECT COUNT(*) AS n FROM messages")
            .fetch_one(&db.pool)
            .await
            .and_then(|r| r.try_get("n"))
            .expect("count")
    }

    async fn store(db: &Db, msgs: &[NewMessage]) -> Vec<Result<Stored, ApiError>> {
        let refs: Vec<&NewMessage> = msgs.iter().collect();
        store_many(db, &refs).await.expect("store")
    }

    #[tokio::test]
    async fn a_batch_takes_seqs_in_order_and_answers_repeats_like_the_first() {
        let db = fresh_db("batch").await;
        let first = store(&db, &[msg(1, 2, "a1"), msg(1, 3, "a2")]).await;
        assert!(first.iter().all(|r| r.as_ref().is_ok_and(|s| !s.duplicate)));
        // One batch: two conversations interleaved, a key repeated inside the batch, a
        // key stored by the earlier batch, and the same key from another sender.
        let batch = [
            msg(1, 2, "b1"),
            msg(2, 1, "b2"),
            msg(1, 3, "b3"),
            msg(1, 2, "b1"),
            msg(1, 2, "a1"),
            msg(2, 1, "b1"),
            msg(3, 1, "b4"),
        ];
        let out: Vec<Stored> = store(&db, &batch)
            .await
            .into_iter()
            .map(|r| r.expect("stored"))
            .collect();
        let seqs: Vec<(&str, i64, bool)> = out
            .iter()
            .map(|s| (s.frame.conversation_id.as_str(), s.frame.seq, s.duplicate))
            .collect();
        assert_eq!(
            seqs,
            vec![
                ("u:1:2", 2, false),
                ("u:1:2", 3, false),
                ("u:1:3", 2, false),
                ("u:1:2", 2, true),
                ("u:1:2", 1, true),
                ("u:1:2", 4, false),
                ("u:1:3", 3, false),
            ]
        );
        assert_eq!(
            out[3].frame.id, out[0].frame.id,
            "in-batch repeat is the first"
        );
        assert_eq!(
            out[4].frame.id,
            first[0].as_ref().map(|s| s.frame.id).unwrap_or(-1)
        );
        assert_eq!(out[1].frame.client_msg_id, "b2");
        assert_eq!(out[5].frame.from, 2);
        // Ids are the stored rows' ids, matched to the right messages.
        for s in &out {
            let row = message(&db, s.frame.id).await.expect("query").expect("row");
            assert_eq!(
                (
                    row.conversation_id.as_str(),
                    row.seq,
                    row.client_msg_id.as_str(),
                    row.from
                ),
                (
                    s.frame.conversation_id.as_str(),
                    s.frame.seq,
                    s.frame.client_msg_id.as_str(),
                    s.frame.from
                )
            );
        }
        let n = count_messages(&db).await;
        assert_eq!(n, 7, "2 + 5 new rows, repeats stored nothing");
        // The seq the stored repeat had taken went back: the next message follows on.
        let next = store(&db, &[msg(2, 1, "c1"), msg(3, 1, "c2")]).await;
        let seqs = seqs_of(&next);
        assert_eq!(seqs, vec![5, 4]);
    }

    #[tokio::test]
    async fn any_text_comes_back_as_sent() {
        // On PostgreSQL a batch's rows travel as one JSON document: quotes,
        // backslashes, control characters, non-ASCII and JSON-looking text must come
        // back unchanged, in content and in the idempotency key alike.
        let db = fresh_db("text").await;
        let texts = [
            "plain",
            "quote \" and 'apostrophe'",
            "back\\slash \\u0041 \\n",
            "line\nbreak\ttab\r\u{1}\u{1f}",
            "emoji 😀 and CJK 你好 and é",
            "{\"looks\": [\"like\", \"json\"]}",
            "$1 ::json ; DROP TABLE messages; --",
        ];
        let batch: Vec<NewMessage> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let mut m = msg(1, 2, &format!("{t}#{i}"));
                m.content = (*t).to_owned();
                m
            })
            .collect();
        let out = store(&db, &batch).await;
        for (i, t) in texts.iter().enumerate() {
            let stored = out[i].as_ref().expect("stored");
            assert_eq!(stored.frame.content, *t);
            let again = message(&db, stored.frame.id)
                .await
                .expect("read")
                .expect("found");
            assert_eq!(again.content, *t, "content read back");
            assert_eq!(again.client_msg_id, format!("{t}#{i}"), "key read back");
        }
        // The same keys again are repeats, found by the lookup.
        let again = store(&db, &batch).await;
        assert!(again.iter().all(|r| r.as_ref().is_ok_and(|s| s.duplicate)));
        assert_eq!(count_messages(&db).await, texts.len() as i64);
    }

    #[tokio::test]
    async fn a_bad_reply_fails_only_its_own_message_and_large_batches_span_statements() {
        let db = fresh_db("reply").await;
        let mut bad = msg(1, 2, "r1");
        bad.reply_to = Some(999_999);
        let mut batch = vec![msg(1, 2, "ok0"), bad];
        batch.extend((0..250).map(|i| msg(1 + i % 2, 2 - i % 2, &format!("k{i}"))));
        let out = store(&db, &batch).await;
        assert_eq!(out[1].as_ref().err().map(|e| e.code), Some("invalid_reply"));
        let seqs = seqs_of(&out);
        assert_eq!(
            seqs,
            (1..=251).collect::<Vec<_>>(),
            "no gap for the refused one"
        );
    }

    /// A batch that fails in the database stores nothing — not even its conversations'
    /// seq runs — and the next batch works (on SQLite the writer thread's transaction is
    /// dropped uncommitted, and the thread goes on with the next job).
    #[tokio::test]
    async fn a_failed_batch_stores_nothing_and_the_next_one_continues_the_seqs() {
        let db = fresh_db("failed").await;
        let first = store(&db, &[msg(1, 2, "f1")]).await;
        assert_eq!(first[0].as_ref().map(|s| s.frame.seq).ok(), Some(1));
        // Sender 999 does not exist: the insert breaks the foreign key, after the
        // conversation upsert of the same batch already ran.
        let ghost = msg(999, 2, "g1");
        let refs = [&msg(1, 2, "f2"), &ghost];
        assert!(store_many(&db, &refs).await.is_err(), "the batch fails");
        let n = count_messages(&db).await;
        assert_eq!(n, 1, "nothing of the failed batch is stored");
        let next = store(&db, &[msg(1, 2, "f2"), msg(2, 1, "f3")]).await;
        let seqs = seqs_of(&next);
        assert_eq!(seqs, vec![2, 3], "seqs continue without a gap");
        for s in next.iter().filter_map(|r| r.as_ref().ok()) {
            let row = message(&db, s.frame.id).await.expect("query").expect("row");
            assert_eq!(
                (row.seq, row.client_msg_id.as_str()),
                (s.frame.seq, s.frame.client_msg_id.as_str())
            );
        }
    }
}
