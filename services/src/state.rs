//! Shared application state handed to every HTTP handler and background task.

use std::sync::Arc;
use std::time::Instant;

use mqim_broker::{Closer, Registry};

use crate::config::Config;
use crate::db::Db;
use crate::graph::SocialGraph;
use crate::metrics::Metrics;
use crate::passwords::Hasher;
use crate::push::Push;

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Database pool.
    pub db: Db,
    /// Password hasher (bounded, blocking pool).
    pub hasher: Hasher,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// In-memory friendships and memberships (for topic rules).
    pub graph: Arc<SocialGraph>,
    /// Frames into the broker.
    pub push: Push,
    /// Closes MQTT connections (revocation, disabling).
    pub closer: Closer,
    /// Live MQTT connections.
    pub connections: Arc<Registry>,
    /// What the embedded broker's per-topic logs hold (reported at `/metrics`).
    pub broker_log: Arc<mqim_broker::LogStats>,
    /// Messages: storage, delivery, offline backlog.
    pub messaging: Arc<crate::messaging::Messaging>,
    /// Uploaded files: storage, limits, signed URLs.
    pub files: Arc<crate::files::FileStore>,
    /// Presence of users.
    pub presence: Arc<crate::presence::Presence>,
    /// Process start, for uptime.
    pub started: Instant,
}

impl AppState {
    /// Closes the MQTT connections that logged in with any of `token_ids`.
    pub fn close_token_connections(&self, token_ids: &[i64]) -> usize {
        self.closer.close_where(|c| {
            c.principal()
                .is_some_and(|p| token_ids.contains(&p.token_id))
        })
    }

    /// Closes all MQTT connections of `user_id`.
    pub fn close_user_connections(&self, user_id: i64) -> usize {
        self.closer.close(self.connections.of_user(user_id))
    }
}
