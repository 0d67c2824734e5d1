//! Live MQTT connections, keyed by a process-unique connection number.
//!
//! The broker's router only knows client ids; the service needs to know which *user* a
//! connection belongs to (for authorization, presence, revocation and device lists), so
//! every connection is registered here when its CONNECT is read and bound to its
//! [`Principal`] once the token has been checked.

use std::collections::HashMap;
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
}

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
}

/// All connections of this process.
#[derive(Debug, Default)]
pub struct Registry {
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Connection>>>,
}

impl Registry {
    pub(crate) fn insert(
        &self,
        client_id: &str,
        username: &str,
        peer: Option<std::net::SocketAddr>,
    ) -> Arc<Connection> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
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
        });
        self.conns.lock().insert(id, conn.clone());
        conn
    }

    pub(crate) fn remove(&self, id: u64) {
        self.conns.lock().remove(&id);
    }

    /// The connection an internal client id names, if it is still registered.
    pub(crate) fn by_internal_id(&self, internal_id: &str) -> Option<Arc<Connection>> {
        let (_, n) = internal_id.rsplit_once('~')?;
        let id: u64 = n.parse().ok()?;
        self.conns.lock().get(&id).cloned()
    }

    /// Authenticated connections matching `pred`.
    pub fn select(&self, mut pred: impl FnMut(&Connection) -> bool) -> Vec<Arc<Connection>> {
        self.conns
            .lock()
            .values()
            .filter(|c| c.principal().is_some() && pred(c))
            .cloned()
            .collect()
    }

    /// Number of registered connections (including ones still authenticating).
    pub fn len(&self) -> usize {
        self.conns.lock().len()
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
