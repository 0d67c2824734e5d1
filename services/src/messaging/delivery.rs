//! Offline delivery and device cursors.
//!
//! A device's position in each conversation is the highest seq it acknowledged (a QoS 1
//! PUBACK seen by the broker guard, or a `delivered` receipt). Cursor updates are
//! coalesced and written every second; if the process dies before a write,
//! those messages are sent again on the next connect (at least once, never lost).
//!
//! When a device subscribes to its inbox, its backlog — every message of its
//! conversations after its cursor (for a device seen the first time: after the user's
//! read position), oldest first per conversation — is published on the device's own
//! device topic, so only that device gets it. At most `backlog_window` messages wait
//! for PUBACK at once, which keeps the broker's per-connection queue (100 in flight)
//! and its per-topic log from overflowing on a large backlog.
//!
//! A cursor is one number per conversation, so it may only move past messages the
//! device has. Live messages interleave with the backlog (they are newer than all of
//! it), so while a backlog drains, acknowledgements of live frames are held on the
//! connection's [`Track`] and applied only once the whole backlog is acknowledged; if
//! the device leaves first they are dropped and those live messages come again with
//! the rest of the backlog next time (at least once, never a gap). The track is made
//! synchronously when the broker grants the inbox subscription, before the SUBACK, so
//! no live acknowledgement can slip in before the drain starts.

use foldhash::{HashMap, HashMapExt};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mqim_broker::{device_topic, Connection, Fmt, DEVICE_TOPIC_PREFIX};
use mqim_proto::{encode_server, peek_message, Format, ServerFrame};
use parking_lot::Mutex;
use sqlx::Row;
use tokio::sync::Notify;

use super::store::{self, CursorKey};
use crate::config::MessagesConfig;
use crate::db::Db;
use crate::http::admin::NOTICES;
use crate::push::Push;

/// How long acknowledged positions collect before they are written in one transaction.
/// Until then `unsaved` answers for them; a crash within it re-sends those messages.
const CURSOR_FLUSH: Duration = Duration::from_secs(1);

/// How long a backlog waits for a silent device before checking it is still there.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// Payloads whose (conversation, seq) are remembered by [`Peeks`]: enough for the
/// messages of a burst being acknowledged at once (each device acknowledges its
/// messages in order, so a burst of 50 cycles through 50 payloads per device).
const PEEK_SLOTS: usize = 64;

/// Larger payloads are parsed every time, so the cache pins at most
/// `PEEK_SLOTS × PEEK_MAX_BYTES` (1 MiB) of message buffers.
const PEEK_MAX_BYTES: usize = 16 * 1024;

/// The (conversation, seq) of recently acknowledged payloads. One message goes to many
/// devices as one shared buffer (a group of 10,000 online devices: 10,000 PUBACKs for
/// the same `Bytes`), so parsing it once instead of once per PUBACK saves most of the
/// cursor bookkeeping's cost (the JSON parse was ~10 % of the server's CPU in the
/// broadcast benchmark). Each slot keeps its buffer alive, so while it is cached no other
/// buffer can have the same address: same address and length means the same payload.
#[derive(Default)]
struct Peeks {
    slots: Vec<(bytes::Bytes, Option<Peek>)>,
    next: usize,
}

impl Peeks {
    /// The remembered peek of `payload`, if it is one of the cached buffers.
    fn find(&self, payload: &bytes::Bytes) -> Option<Option<Peek>> {
        let same = |b: &bytes::Bytes| b.as_ptr() == payload.as_ptr() && b.len() == payload.len();
        self.slots
            .iter()
            .find(|(b, _)| same(b))
            .map(|(_, peek)| peek.clone())
    }

    fn insert(&mut self, payload: bytes::Bytes, peek: Option<Peek>) {
        if self.slots.len() < PEEK_SLOTS {
            self.slots.push((payload, peek));
        } else {
            self.slots[self.next] = (payload, peek);
            self.next = (self.next + 1) % PEEK_SLOTS;
        }
    }
}

/// A message's conversation (shared by every device that acknowledges it) and seq.
type Peek = (Arc<str>, i64);

/// (conversation, seq) of a message payload, parsed at most once while cached. The parse
/// runs outside the lock, so PUBACKs of different payloads on two workers never wait
/// for each other's parse.
fn peek_cached(peeks: &Mutex<Peeks>, fmt: Format, payload: &bytes::Bytes) -> Option<Peek> {
    if let Some(peek) = peeks.lock().find(payload) {
        return peek;
    }
    let peek = peek_message(fmt, payload).map(|(cid, seq)| (Arc::<str>::from(cid), seq));
    if payload.len() <= PEEK_MAX_BYTES {
        peeks.lock().insert(payload.clone(), peek.clone());
    }
    peek
}

/// A connection's backlog in progress (see the module docs).
struct Track {
    /// Backlog messages the device acknowledged.
    acked: AtomicU64,
    notify: Notify,
    /// Whether a drain runs for this track (a second inbox subscription shares it).
    running: AtomicBool,
    /// Positions acknowledged on live topics while the backlog drains, highest seq per
    /// conversation; `None` once the drain ended and took them.
    held: Mutex<Option<HashMap<String, i64>>>,
}

impl Track {
    fn new() -> Track {
        Track {
            acked: AtomicU64::new(0),
            notify: Notify::new(),
            running: AtomicBool::new(false),
            held: Mutex::new(Some(HashMap::new())),
        }
    }

    /// Holds a live acknowledgement back; `false` once the drain ended (apply it now).
    fn hold(&self, cid: &str, seq: i64) -> bool {
        let mut held = self.held.lock();
        let Some(h) = held.as_mut() else {
            return false;
        };
        match h.get_mut(cid) {
            Some(s) => *s = (*s).max(seq),
            None => {
                h.insert(cid.to_owned(), seq);
            }
        }
        true
    }
}

/// Offline delivery and cursor bookkeeping.
pub struct Delivery {
    db: Db,
    push: Push,
    cfg: MessagesConfig,
    /// Cursor positions acknowledged but not yet written, so a device that reconnects
    /// within those milliseconds is not sent them again.
    unsaved: Arc<Mutex<Unsaved>>,
    tracks: Tracks,
    peeks: Mutex<Peeks>,
}

/// Cursor positions not yet written. hashbrown's, for lookups by borrowed parts
/// ([`CursorRef`]): a hit on every PUBACK then builds no owned key.
type Unsaved = hashbrown::HashMap<CursorKey, i64, foldhash::fast::RandomState>;

/// A [`CursorKey`] by reference; hashes like one (`String` and `&str` hash alike).
#[derive(Hash)]
struct CursorRef<'a> {
    uid: i64,
    client_id: &'a str,
    conversation_id: &'a str,
}

impl hashbrown::Equivalent<CursorKey> for CursorRef<'_> {
    fn equivalent(&self, key: &CursorKey) -> bool {
        self.uid == key.uid
            && self.client_id == key.client_id
            && self.conversation_id == key.conversation_id
    }
}

impl CursorRef<'_> {
    fn to_owned_key(&self) -> CursorKey {
        CursorKey {
            uid: self.uid,
            client_id: self.client_id.to_owned(),
            conversation_id: self.conversation_id.to_owned(),
        }
    }
}

/// The connections whose backlog is in progress, by connection number.
///
/// Every PUBACK asks whether its connection has one, and while no backlog drains (a
/// broadcast to devices that are all caught up) the answer is no without taking the
/// process-wide lock: `len` mirrors the map's size, updated under the lock.
#[derive(Default)]
struct Tracks {
    map: Mutex<HashMap<u64, Arc<Track>>>,
    len: AtomicUsize,
}

impl Tracks {
    fn get(&self, conn: u64) -> Option<Arc<Track>> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.map.lock().get(&conn).cloned()
    }

    /// Runs `f` on the map under the lock.
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<u64, Arc<Track>>) -> R) -> R {
        let mut map = self.map.lock();
        let r = f(&mut map);
        self.len.store(map.len(), Ordering::Release);
        r
    }
}

pub use crate::push::format_of;

impl Delivery {
    /// Starts the cursor writer.
    pub fn start(db: Db, push: Push, cfg: MessagesConfig) -> Arc<Delivery> {
        let unsaved = Arc::new(Mutex::new(Unsaved::default()));
        tokio::spawn(cursor_writer(db.clone(), unsaved.clone()));
        Arc::new(Delivery {
            db,
            push,
            cfg,
            unsaved,
            tracks: Tracks::default(),
            peeks: Mutex::new(Peeks::default()),
        })
    }

    /// The broker granted `conn` an inbox subscription and its SUBACK is not yet out:
    /// from now until its backlog is acknowledged, live acknowledgements are held.
    pub fn subscribing(&self, conn: &Connection) {
        self.tracks.with(|t| {
            t.entry(conn.id).or_insert_with(|| Arc::new(Track::new()));
        });
    }

    /// The device acknowledged a publish; if it was a message, its cursor advances
    /// (live ones only after its backlog, see the module docs).
    pub fn delivered(&self, conn: &Connection, topic: &[u8], payload: &bytes::Bytes) {
        let fmt = if topic.ends_with(b"/pb") {
            Format::Pb
        } else {
            Format::Json
        };
        let Some(uid) = conn.user_id() else {
            return;
        };
        // The ack of a message of this device that had no copy stands for the copy.
        let peek = conn
            .take_own_ack(payload)
            .map(|(cid, seq)| (Arc::<str>::from(cid), seq))
            .or_else(|| peek_cached(&self.peeks, fmt, payload));
        let Some((cid, seq)) = peek else {
            return;
        };
        let backlog = topic.starts_with(DEVICE_TOPIC_PREFIX.as_bytes());
        self.received(conn, uid, &cid, seq, backlog);
    }

    /// Device `conn` of `uid` has `seq` of conversation `cid`: from its backlog (on its
    /// device topic) or not (a live frame, or a `delivered` receipt).
    pub fn received(&self, conn: &Connection, uid: i64, cid: &str, seq: i64, backlog: bool) {
        if let Some(t) = self.tracks.get(conn.id) {
            if backlog {
                t.acked.fetch_add(1, Ordering::Relaxed);
                t.notify.notify_one();
            } else if t.hold(cid, seq) {
                return;
            }
        }
        self.advance(uid, &conn.client_id, cid, seq);
    }

    /// Records that device `client_id` of `uid` has `seq` of conversation `cid` (in
    /// memory; the cursor writer saves it within a second).
    pub fn advance(&self, uid: i64, client_id: &str, cid: &str, seq: i64) {
        let key = CursorRef {
            uid,
            client_id,
            conversation_id: cid,
        };
        let mut u = self.unsaved.lock();
        match u.get_mut(&key) {
            Some(e) => *e = (*e).max(seq),
            None => {
                u.insert(key.to_owned_key(), seq);
            }
        }
    }

    /// Writes every position acknowledged so far (at shutdown; otherwise the cursor
    /// writer does it every second).
    pub async fn flush(&self) {
        save_unsaved(&self.db, &self.unsaved).await;
    }

    /// Conversations of a device with positions acknowledged but not yet written
    /// folded in.
    pub async fn positions(
        &self,
        uid: i64,
        client_id: &str,
    ) -> Result<Vec<store::ConvState>, sqlx::Error> {
        let mut convs = store::conversations_of(&self.db, uid, Some(client_id)).await?;
        let u = self.unsaved.lock();
        for c in &mut convs {
            let key = CursorRef {
                uid,
                client_id,
                conversation_id: &c.id,
            };
            if let Some(&seq) = u.get(&key) {
                c.base = c.base.max(seq);
            }
        }
        Ok(convs)
    }

    /// The connection ended: a drain still waiting for it gives up now, and what it
    /// held is dropped.
    pub fn forget(&self, conn: &Connection) {
        if let Some(t) = self.tracks.with(|t| t.remove(&conn.id)) {
            t.notify.notify_one();
        }
    }

    /// Sends the device its backlog in `fmt` (see the module docs). Runs in its own
    /// task; a second call while one runs for the connection does nothing.
    pub fn drain(self: &Arc<Self>, conn: Arc<Connection>, fmt: Fmt, qos: u8) {
        let track = self.tracks.with(|tracks| {
            tracks
                .entry(conn.id)
                .or_insert_with(|| Arc::new(Track::new()))
                .clone()
        });
        if track.running.swap(true, Ordering::AcqRel) {
            return;
        }
        // Messages stored after the subscription became active reach the device live;
        // the backlog stops there (a message created just before and committed just
        // after may come both ways: clients deduplicate by id).
        let since = crate::now_ms();
        let me = self.clone();
        tokio::spawn(async move {
            let complete = match me.run_drain(&conn, fmt, qos, &track, since).await {
                Ok(complete) => complete,
                Err(e) => {
                    tracing::warn!(error = %e, conn = conn.id, "offline delivery failed");
                    false
                }
            };
            me.tracks.with(|tracks| {
                if tracks.get(&conn.id).is_some_and(|t| Arc::ptr_eq(t, &track)) {
                    tracks.remove(&conn.id);
                }
            });
            // Acknowledgements from here on advance directly (`hold` sees `None`).
            let held = track.held.lock().take().unwrap_or_default();
            match (complete, conn.user_id()) {
                (true, Some(uid)) => {
                    for (cid, seq) in held {
                        me.advance(uid, &conn.client_id, &cid, seq);
                    }
                }
                _ if !held.is_empty() => tracing::debug!(
                    conn = conn.id,
                    n = held.len(),
                    "backlog not acknowledged; live acknowledgements dropped"
                ),
                _ => {}
            }
        });
    }

    async fn run_drain(
        &self,
        conn: &Connection,
        fmt: Fmt,
        qos: u8,
        track: &Track,
        since: i64,
    ) -> Result<bool, sqlx::Error> {
        let Some(uid) = conn.user_id() else {
            return Ok(true);
        };
        store::touch_device(&self.db, uid, &conn.client_id).await?;
        let topic = device_topic(uid, &conn.client_id, fmt);
        let convs = self.positions(uid, &conn.client_id).await?;
        let window = self.cfg.backlog_window as u64;
        let mut sent: u64 = 0;
        let mut total = 0usize;
        for c in convs.iter().filter(|c| c.last_seq > c.base) {
            let msgs =
                store::pending(&self.db, c, self.cfg.backlog_max_per_conversation, since).await?;
            for m in msgs {
                if !conn.is_online() {
                    return Ok(false);
                }
                if qos > 0 {
                    while sent.saturating_sub(track.acked.load(Ordering::Relaxed)) >= window {
                        let waited = tokio::time::timeout(ACK_WAIT, track.notify.notified()).await;
                        if !conn.is_online() {
                            return Ok(false);
                        }
                        if waited.is_err() {
                            tracing::debug!(
                                conn = conn.id,
                                sent,
                                "device slow to acknowledge its backlog"
                            );
                        }
                    }
                }
                let payload = encode_server(format_of(fmt), &ServerFrame::Message(m));
                self.push.publisher().publish(topic.clone(), payload, false);
                sent += 1;
                total += 1;
            }
        }
        total += self.send_notices(conn, uid, &topic, fmt).await?;
        // The held live positions may only be applied once every backlog message is
        // acknowledged. One that never is (the guard dropped it: the device lost
        // access meanwhile) ends the wait after `ACK_WAIT` without progress.
        while qos > 0 && track.acked.load(Ordering::Relaxed) < sent {
            let waited = tokio::time::timeout(ACK_WAIT, track.notify.notified()).await;
            if !conn.is_online() || waited.is_err() {
                return Ok(false);
            }
        }
        if total > 0 {
            tracing::debug!(conn = conn.id, total, "backlog delivered");
        }
        Ok(true)
    }

    /// System notices the device has not had (see `http::admin`), oldest first. The
    /// device's notice position advances as they are sent.
    async fn send_notices(
        &self,
        conn: &Connection,
        uid: i64,
        topic: &str,
        fmt: Fmt,
    ) -> Result<usize, sqlx::Error> {
        let key = CursorRef {
            uid,
            client_id: &conn.client_id,
            conversation_id: NOTICES,
        };
        let saved: Option<i64> = sqlx::query(
            "SELECT acked_seq FROM device_cursors WHERE user_id = $1 AND client_id = $2 AND conversation_id = $3",
        )
        .bind(uid)
        .bind(&conn.client_id)
        .bind(NOTICES)
        .fetch_optional(&self.db.pool)
        .await?
        .map(|r| r.try_get("acked_seq"))
        .transpose()?;
        let after = saved
            .unwrap_or(0)
            .max(self.unsaved.lock().get(&key).copied().unwrap_or(0));
        let rows = sqlx::query(
            "SELECT n.id, n.text, n.created_at FROM notices n JOIN users u ON u.id = $1 \
             WHERE (n.user_id = $1 OR n.user_id IS NULL) AND n.id > $2 AND n.created_at >= u.created_at \
             ORDER BY n.id LIMIT 1000",
        )
        .bind(uid)
        .bind(after)
        .fetch_all(&self.db.pool)
        .await?;
        for r in &rows {
            let id: i64 = r.try_get("id")?;
            let text: String = r.try_get("text")?;
            let created_at: i64 = r.try_get("created_at")?;
            let frame = ServerFrame::Event {
                event: "SYSTEM_NOTICE".into(),
                data: serde_json::json!({"id": id, "text": text, "created_at": created_at}),
            };
            self.push.publisher().publish(
                topic.to_owned(),
                encode_server(format_of(fmt), &frame),
                false,
            );
            self.advance(uid, &conn.client_id, NOTICES, id);
        }
        Ok(rows.len())
    }
}

/// Saves the acknowledged positions every `CURSOR_FLUSH`: one row per device and
/// conversation however many acknowledgements came in between (a broadcast to 10,000
/// devices is 10,000 rows, not one write or message per PUBACK).
async fn cursor_writer(db: Db, unsaved: Arc<Mutex<Unsaved>>) {
    let mut tick = tokio::time::interval(CURSOR_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if db.pool.is_closed() {
            break;
        }
        save_unsaved(&db, &unsaved).await;
    }
}

/// Writes a snapshot of `unsaved`, then forgets what the database now has (unless it
/// moved on meanwhile).
async fn save_unsaved(db: &Db, unsaved: &Mutex<Unsaved>) {
    let batch: Vec<(CursorKey, i64)> = unsaved
        .lock()
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    if batch.is_empty() {
        return;
    }
    match store::save_cursors(db, &batch).await {
        Ok(()) => {
            let mut u = unsaved.lock();
            for (k, seq) in &batch {
                if u.get(k).is_some_and(|&v| v <= *seq) {
                    u.remove(k);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, n = batch.len(), "saving device cursors failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(seq: i64) -> Bytes {
        Bytes::from(format!(
            r#"{{"type":"message","conversation_id":"g:{seq}","seq":{seq},"content":"x"}}"#
        ))
    }

    fn expect(seq: i64) -> Option<Peek> {
        Some((Arc::from(format!("g:{seq}")), seq))
    }

    /// A position is found by borrowed parts exactly when its owned key is there.
    #[test]
    fn cursor_refs_find_their_keys() {
        let mut u = Unsaved::default();
        let r = |c: &'static str, v: &'static str| CursorRef {
            uid: 7,
            client_id: c,
            conversation_id: v,
        };
        u.insert(r("phone", "u:1:7").to_owned_key(), 3);
        u.insert(r("phone", "g:2").to_owned_key(), 5);
        assert_eq!(u.get(&r("phone", "u:1:7")), Some(&3));
        assert_eq!(u.get(&r("phone", "g:2")), Some(&5));
        assert_eq!(u.get(&r("phone", "g:3")), None);
        assert_eq!(u.get(&r("laptop", "g:2")), None);
        // The parts do not run into each other.
        assert_eq!(u.get(&r("phoneg", ":2")), None);
        assert_eq!(
            u.get(&CursorRef {
                uid: 8,
                ..r("phone", "g:2")
            }),
            None
        );
    }

    #[test]
    fn peeks_answer_for_the_payload_asked_about() {
        let p = Mutex::new(Peeks::default());
        // More payloads than slots, in rounds (every lookup a miss after the first
        // round's evictions) and hot ones repeated (hits).
        let frames: Vec<Bytes> = (1..=2 * PEEK_SLOTS as i64).map(frame).collect();
        for _ in 0..3 {
            for (i, f) in frames.iter().enumerate() {
                assert_eq!(peek_cached(&p, Format::Json, f), expect(i as i64 + 1));
            }
        }
        for _ in 0..20 {
            for (i, f) in frames.iter().enumerate().take(3) {
                assert_eq!(peek_cached(&p, Format::Json, f), expect(i as i64 + 1));
            }
        }
        // Same content and length in another buffer, and the same length with other
        // content: each answered for itself.
        let copy = frame(2);
        assert_eq!(peek_cached(&p, Format::Json, &copy), expect(2));
        let (a, b) = (frame(5), frame(6));
        assert_eq!(a.len(), b.len());
        assert_eq!(peek_cached(&p, Format::Json, &a), expect(5));
        assert_eq!(peek_cached(&p, Format::Json, &b), expect(6));
        // Same address, other length (a prefix of a cached buffer): not a hit.
        let cached = frame(7);
        assert_eq!(peek_cached(&p, Format::Json, &cached), expect(7));
        let prefix = cached.slice(..cached.len() - 1);
        assert_eq!(peek_cached(&p, Format::Json, &prefix), None);
        assert_eq!(peek_cached(&p, Format::Json, &cached), expect(7));
        // A large payload is answered but not kept.
        let big = Bytes::from(format!(
            r#"{{"type":"message","conversation_id":"g:9","seq":9,"content":"{}"}}"#,
            "y".repeat(PEEK_MAX_BYTES)
        ));
        let kept: Vec<*const u8> = p.lock().slots.iter().map(|(b, _)| b.as_ptr()).collect();
        assert_eq!(peek_cached(&p, Format::Json, &big), expect(9));
        assert!(p
            .lock()
            .slots
            .iter()
            .all(|(b, _)| b.as_ptr() != big.as_ptr()));
        assert_eq!(p.lock().slots.len(), kept.len());
        // Not a message frame.
        let ack = Bytes::from_static(br#"{"type":"ack","conversation_id":"g:1","seq":1}"#);
        assert_eq!(peek_cached(&p, Format::Json, &ack), None);
        assert_eq!(peek_cached(&p, Format::Json, &ack), None);
    }
}
