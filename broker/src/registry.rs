//! Live MQTT connections, keyed by a process-unique connection number.
//!
//! The broker's router only knows client ids; the service needs to know which *user* a
//! connection belongs to (for authorization, presence, revocation and device lists), so
//! every connection is registered here when its CONNECT is read and bound to its
//! [`Principal`] once the token has been checked.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// The authenticated identity behind a connection. Fixed for the connection's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Account id.
    pub user_id: i64,
    /// Account username (also the client id prefix).
    pub username: String,
    /// Id of the token the connection logged in with, so that revoking the token can
    /// close exactly the connections that used it.
    pub token_id: i64,
}

/// One MQTT connection (one device).
#[derive(Debug)]
pub struct Connection {
    /// Process-unique number of this connection.
    pub id: u64,
    /// The client id the device sent (its device id).
    pub client_id: String,
    /// The client id rumqttd knows this connection by: `client_id~id`. Unique per
    /// connection so that a connection dying early can never collide with a later one
    /// (rumqttd bug 2).
    pub(crate) internal_id: String,
    /// Username from CONNECT (not yet verified until `principal` is set).
    pub(crate) username: String,
    principal: OnceLock<Principal>,
    /// When the connection was accepted, in unix milliseconds.
    pub connected_at: i64,
    /// The client's address, when known (see [`crate::peer`]).
    pub peer: Option<std::net::SocketAddr>,
    online: AtomicBool,
    closing: AtomicBool,
    /// Payloads on their way to this connection's own user that are copies of messages
    /// this connection sent (see [`Connection::expect_own_copy`]).
    own_copies: OwnPayloads<()>,
    /// `ack` payloads of messages this connection sent whose copy was not published to
    /// it at all (see [`Connection::expect_own_ack`]).
    own_acks: OwnPayloads<(String, i64)>,
}

/// A short list of payloads with a value each, matched by buffer (address and length):
/// each entry keeps its buffer alive, so no other buffer can have its address while it
/// is listed.
#[derive(Debug)]
struct OwnPayloads<T> {
    list: Mutex<VecDeque<(bytes::Bytes, T)>>,
    /// Whether `list` may be non-empty: every publish written to (or acknowledged by)
    /// every connection asks, and almost always the answer is no, without the lock.
    any: AtomicBool,
}

impl<T> Default for OwnPayloads<T> {
    fn default() -> Self {
        OwnPayloads {
            list: Mutex::new(VecDeque::new()),
            any: AtomicBool::new(false),
        }
    }
}

impl<T> OwnPayloads<T> {
    fn expect(&self, payload: bytes::Bytes, value: T) {
        if payload.len() > OWN_COPY_MAX_BYTES {
            return;
        }
        let mut own = self.list.lock();
        if own.len() >= OWN_COPIES_MAX {
            own.pop_front();
        }
        own.push_back((payload, value));
        self.any.store(true, Ordering::Release);
    }

    /// The value of `payload`, if it is listed (forgotten once asked).
    fn take(&self, payload: &bytes::Bytes) -> Option<T> {
        // Set before the service publishes the payload, so it is never missed.
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let mut own = self.list.lock();
        let found = own
            .iter()
            .position(|(b, _)| b.as_ptr() == payload.as_ptr() && b.len() == payload.len())?;
        let (_, value) = own.remove(found)?;
        if own.is_empty() {
            self.any.store(false, Ordering::Release);
        }
        Some(value)
    }
}

/// Own copies remembered per connection; an older one is forgotten (and then simply
/// delivered) when more are waiting.
const OWN_COPIES_MAX: usize = 32;

/// Larger payloads are not remembered (so the list pins at most 32 × 16 KiB); their copy
/// is delivered.
const OWN_COPY_MAX_BYTES: usize = 16 * 1024;

impl Connection {
    /// The authenticated identity, once the token was accepted.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.get()
    }

    /// The user id, once authenticated.
    pub fn user_id(&self) -> Option<i64> {
        self.principal.get().map(|p| p.user_id)
    }

    pub(crate) fn bind(&self, p: Principal) -> bool {
        self.principal.set(p).is_ok()
    }

    /// Whether the CONNACK was sent and the connection has not ended.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    pub(crate) fn set_online(&self, v: bool) -> bool {
        self.online.swap(v, Ordering::AcqRel)
    }

    /// Marks the connection as being closed by the server; returns whether it already was.
    pub(crate) fn mark_closing(&self) -> bool {
        self.closing.swap(true, Ordering::AcqRel)
    }

    /// Whether the server asked for this connection to be closed.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// `payload` is about to be published to this connection's user (inbox or group
    /// topic) as the copy of a message this connection itself sent: the guard writes it
    /// to the user's other devices but not to this one, which has the message already
    /// and gets its `ack`. Its cursor still advances, once everything written to it
    /// before the copy is acknowledged. Call before publishing; the payload is matched
    /// by buffer (address and length), so it must be the very `Bytes` published.
    pub fn expect_own_copy(&self, payload: bytes::Bytes) {
        self.own_copies.expect(payload, ());
    }

    /// Whether `payload` is one of this connection's own copies (forgotten once asked).
    pub(crate) fn take_own_copy(&self, payload: &bytes::Bytes) -> bool {
        self.own_copies.take(payload).is_some()
    }

    /// `payload` is about to be published to this connection's user as the `ack` of a
    /// message this connection sent, and no copy of the message is published to it (no
    /// other device of the user was connected to need one): the device acknowledging
    /// this ack stands for it having message `seq` of conversation `cid`. Matched by
    /// buffer, as own copies are.
    pub fn expect_own_ack(&self, payload: bytes::Bytes, cid: String, seq: i64) {
        self.own_acks.expect(payload, (cid, seq));
    }

    /// If `payload` is the ack of one of this connection's messages that had no copy:
    /// that message's conversation and seq (forgotten once asked).
    pub fn take_own_ack(&self, payload: &bytes::Bytes) -> Option<(String, i64)> {
        self.own_acks.take(payload)
    }
}

/// All connections of this process, indexed by number, client id and user, so that
/// what happens on every connect (session takeover by client id, a user's presence,
/// single-session policy) costs the same with 10 or 10,000 connections.
#[derive(Debug, Default)]
pub struct Registry {
    next: AtomicU64,
    inner: Mutex<Index>,
}

#[derive(Debug, Default)]
struct Index {
    conns: HashMap<u64, Arc<Connection>>,
    by_client: HashMap<String, Vec<u64>>,
    by_user: HashMap<i64, Vec<u64>>,
}

impl Index {
    fn resolve(&self, ids: Option<&Vec<u64>>) -> Vec<Arc<Connection>> {
        ids.into_iter()
            .flatten()
            .filter_map(|id| self.conns.get(id))
            .filter(|c| c.principal().is_some())
            .cloned()
            .collect()
    }
}

fn unlink<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<u64>>, key: &K, id: u64) {
    if let Some(v) = map.get_mut(key) {
        v.retain(|&x| x != id);
        if v.is_empty() {
            map.remove(key);
        }
    }
}

impl Registry {
    /// A new connection number. The guard takes one when rumqttd's accept loop clones
    /// it for a socket, so numbers follow the order sockets were accepted in — not the
    /// order their CONNECTs happen to be read by their (concurrently scheduled) tasks.
    /// Session takeover relies on it: of two connections with one client id, the one
    /// accepted later is the newer.
    pub(crate) fn next_number(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers connection number `id` (from [`Registry::next_number`]).
    pub(crate) fn insert(
        &self,
        id: u64,
        client_id: &str,
        username: &str,
        peer: Option<std::net::SocketAddr>,
    ) -> Arc<Connection> {
        let conn = Arc::new(Connection {
            id,
            client_id: client_id.to_owned(),
            internal_id: format!("{client_id}~{id}"),
            username: username.to_owned(),
            principal: OnceLock::new(),
            connected_at: now_ms(),
            peer,
            online: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            own_copies: OwnPayloads::default(),
            own_acks: OwnPayloads::default(),
        });
        let mut ix = self.inner.lock();
        ix.conns.insert(id, conn.clone());
        ix.by_client
            .entry(client_id.to_owned())
            .or_default()
            .push(id);
        conn
    }

    /// Binds `conn` to the user its token belongs to; false if it already was bound.
    pub(crate) fn bind(&self, conn: &Connection, p: Principal) -> bool {
        let uid = p.user_id;
        if !conn.bind(p) {
            return false;
        }
        let mut ix = self.inner.lock();
        // Only while registered: a connection removed meanwhile stays out of the index.
        if ix.conns.contains_key(&conn.id) {
            ix.by_user.entry(uid).or_default().push(conn.id);
        }
        true
    }

    pub(crate) fn remove(&self, id: u64) {
        let mut ix = self.inner.lock();
        let Some(conn) = ix.conns.remove(&id) else {
            return;
        };
        unlink(&mut ix.by_client, &conn.client_id, id);
        if let Some(uid) = conn.user_id() {
            unlink(&mut ix.by_user, &uid, id);
        }
    }

    /// The connection an internal client id names, if it is still registered.
    pub(crate) fn by_internal_id(&self, internal_id: &str) -> Option<Arc<Connection>> {
        let (_, n) = internal_id.rsplit_once('~')?;
        let id: u64 = n.parse().ok()?;
        self.inner.lock().conns.get(&id).cloned()
    }

    /// Authenticated connections of user `uid`.
    pub fn of_user(&self, uid: i64) -> Vec<Arc<Connection>> {
        let ix = self.inner.lock();
        ix.resolve(ix.by_user.get(&uid))
    }

    /// Whether user `uid` has an authenticated connection other than `except`.
    pub fn has_other_connection(&self, uid: i64, except: u64) -> bool {
        self.inner
            .lock()
            .by_user
            .get(&uid)
            .is_some_and(|ids| ids.iter().any(|&id| id != except))
    }

    /// Authenticated connections with client id `client_id`.
    pub fn with_client_id(&self, client_id: &str) -> Vec<Arc<Connection>> {
        let ix = self.inner.lock();
        ix.resolve(ix.by_client.get(client_id))
    }

    /// Authenticated connections matching `pred` (a scan of all connections: for
    /// admin and rare paths; see [`Registry::of_user`]).
    pub fn select(&self, mut pred: impl FnMut(&Connection) -> bool) -> Vec<Arc<Connection>> {
        self.inner
            .lock()
            .conns
            .values()
            .filter(|c| c.principal().is_some() && pred(c))
            .cloned()
            .collect()
    }

    /// Number of registered connections (including ones still authenticating).
    pub fn len(&self) -> usize {
        self.inner.lock().conns.len()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(uid: i64) -> Principal {
        Principal {
            user_id: uid,
            username: format!("u{uid}"),
            token_id: uid,
        }
    }

    #[test]
    fn indexes_follow_insert_bind_and_remove() {
        let r = Registry::default();
        let a = r.insert(r.next_number(), "phone", "u1", None);
        let b = r.insert(r.next_number(), "phone", "u1", None);
        let c = r.insert(r.next_number(), "laptop", "u2", None);
        // Not yet authenticated: invisible to every lookup.
        assert!(r.with_client_id("phone").is_empty());
        assert!(r.of_user(1).is_empty());
        assert!(r.bind(&a, principal(1)));
        assert!(r.bind(&b, principal(1)));
        assert!(r.bind(&c, principal(2)));
        assert!(!r.bind(&c, principal(3)), "a principal is bound once");
        let ids = |v: Vec<Arc<Connection>>| v.iter().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(ids(r.with_client_id("phone")), vec![a.id, b.id]);
        assert_eq!(ids(r.of_user(1)), vec![a.id, b.id]);
        assert_eq!(ids(r.of_user(2)), vec![c.id]);
        assert!(r.of_user(3).is_empty());
        r.remove(a.id);
        assert_eq!(ids(r.with_client_id("phone")), vec![b.id]);
        assert_eq!(ids(r.of_user(1)), vec![b.id]);
        r.remove(b.id);
        r.remove(b.id);
        assert!(r.of_user(1).is_empty());
        assert!(r.with_client_id("phone").is_empty());
        // Bound after removal (a CONNECT whose socket died during the token check).
        let d = r.insert(r.next_number(), "tablet", "u4", None);
        r.remove(d.id);
        assert!(r.bind(&d, principal(4)));
        assert!(r.of_user(4).is_empty());
        assert_eq!(r.len(), 1);
    }
}
