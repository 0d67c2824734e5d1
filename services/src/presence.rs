//! Presence (SPEC §5): the retained `im/p/{uid}` = `{"online", "last_seen"}`, computed
//! from all of a user's devices.
//!
//! Connects and disconnects only mark a user dirty; a flush every `WINDOW` publishes the
//! users whose computed state changed. So a burst of reconnects of one user costs at most
//! one update per window, and a device that drops and comes back within it none.
//! On start-up every user is published offline with the last time any device was seen
//! (rumqttd keeps retained messages in memory only, so they are rebuilt).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use mqim_broker::Registry;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use sqlx::Row;

use crate::db::Db;
use crate::now_ms;
use crate::push::Push;

/// How long changes of one user are coalesced.
pub const WINDOW: Duration = Duration::from_millis(250);

/// A user's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct State {
    /// Whether any device is connected.
    pub online: bool,
    /// When a device was last connected (unix ms), or null if never.
    pub last_seen: Option<i64>,
}

/// Presence bookkeeping.
pub struct Presence {
    push: Push,
    registry: Arc<Registry>,
    published: Mutex<HashMap<i64, State>>,
    dirty: Mutex<HashSet<i64>>,
    updates: Counter,
    online_users: Gauge,
}

impl Presence {
    /// Publishes everyone offline (with their last-seen time) and starts the flusher.
    ///
    /// # Errors
    /// Database errors while rebuilding.
    pub async fn start(
        db: Db,
        push: Push,
        registry: Arc<Registry>,
        updates: Counter,
        online_users: Gauge,
    ) -> Result<Arc<Presence>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT u.id, MAX(d.last_seen) AS last_seen FROM users u \
             LEFT JOIN devices d ON d.user_id = u.id GROUP BY u.id",
        )
        .fetch_all(&db.pool)
        .await?;
        let mut published = HashMap::with_capacity(rows.len());
        for r in rows {
            let uid: i64 = r.try_get("id")?;
            let last_seen: Option<i64> = r.try_get("last_seen")?;
            let s = State {
                online: false,
                last_seen,
            };
            publish(&push, uid, s);
            published.insert(uid, s);
        }
        let p = Arc::new(Presence {
            push,
            registry,
            published: Mutex::new(published),
            dirty: Mutex::new(HashSet::new()),
            updates,
            online_users,
        });
        let me = p.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WINDOW);
            loop {
                tick.tick().await;
                me.flush().await;
            }
        });
        Ok(p)
    }

    /// A device of `uid` connected or disconnected.
    pub fn touched(&self, uid: i64) {
        self.dirty.lock().insert(uid);
    }

    /// Someone subscribed to `uid`'s presence: make sure there is something retained
    /// (users who registered since start-up and never connected have nothing yet).
    pub fn watched(&self, uid: i64) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.published.lock().entry(uid) {
            let s = State {
                online: self.is_online(uid),
                last_seen: None,
            };
            publish(&self.push, uid, s);
            e.insert(s);
        }
    }

    /// Whether `uid` has a connected device now.
    pub fn is_online(&self, uid: i64) -> bool {
        self.registry.of_user(uid).iter().any(|c| c.is_online())
    }

    /// The presence of `uid` as last published (or computed now if never published).
    pub fn state(&self, uid: i64) -> State {
        let online = self.is_online(uid);
        let last = self.published.lock().get(&uid).copied();
        State {
            online,
            last_seen: if online {
                Some(now_ms())
            } else {
                last.and_then(|s| s.last_seen)
            },
        }
    }

    /// Users with a connected device.
    pub fn online_users(&self) -> HashSet<i64> {
        self.registry
            .select(|c| c.is_online())
            .iter()
            .filter_map(|c| c.user_id())
            .collect()
    }

    async fn flush(&self) {
        let users: Vec<i64> = self.dirty.lock().drain().collect();
        if !users.is_empty() {
            self.online_users.set(self.online_users().len() as i64);
        }
        for uid in users {
            let online = self.is_online(uid);
            let now = now_ms();
            // Check, publish and record under one lock: `watched` may publish for the
            // same user meanwhile, and the watcher must not get the state twice.
            let mut published = self.published.lock();
            if published.get(&uid).is_some_and(|p| p.online == online) {
                continue;
            }
            let s = State {
                online,
                last_seen: Some(now),
            };
            publish(&self.push, uid, s);
            published.insert(uid, s);
            drop(published);
            self.updates.inc();
        }
    }
}

fn publish(push: &Push, uid: i64, s: State) {
    let body = serde_json::to_vec(&s).unwrap_or_default();
    push.publisher().publish(format!("im/p/{uid}"), body, true);
}
