//! The service side of the embedded broker: authentication of CONNECT, bookkeeping of
//! connections, and the hand-off of client frames to the frame dispatcher.

pub mod dispatch;

use std::sync::Arc;

use bytes::Bytes;
use mqim_broker::{AccessGraph, BoxFuture, Connection, Denied, Fmt, Hooks, Principal};
use tokio::sync::mpsc;

use crate::accounts;
use crate::db::Db;
use crate::graph::SocialGraph;
use crate::metrics::Metrics;

/// A frame a client published on its own `out` topic.
#[derive(Debug)]
pub struct Inbound {
    /// The sending connection (bound to its user).
    pub conn: Arc<Connection>,
    /// Format of the topic it came on.
    pub fmt: Fmt,
    /// Raw payload, not yet decoded.
    pub payload: Bytes,
}

/// Implements the broker's [`Hooks`] for mqim.
pub struct ServiceHooks {
    db: Db,
    graph: Arc<SocialGraph>,
    metrics: Arc<Metrics>,
    inbound: mpsc::UnboundedSender<Inbound>,
}

impl ServiceHooks {
    /// Hooks that send inbound frames to `inbound`.
    pub fn new(
        db: Db,
        graph: Arc<SocialGraph>,
        metrics: Arc<Metrics>,
        inbound: mpsc::UnboundedSender<Inbound>,
    ) -> ServiceHooks {
        ServiceHooks {
            db,
            graph,
            metrics,
            inbound,
        }
    }
}

impl Hooks for ServiceHooks {
    fn authenticate(&self, username: &str, password: &str) -> BoxFuture<Option<Principal>> {
        let db = self.db.clone();
        let metrics = self.metrics.clone();
        let username = username.to_owned();
        let password = password.to_owned();
        Box::pin(async move {
            let owner = match accounts::authenticate(&db, &password).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(error = %e, "token lookup failed during CONNECT");
                    None
                }
            };
            match owner {
                Some(o) if o.username == username => Some(Principal {
                    user_id: o.user_id,
                    username: o.username,
                    token_id: o.token_id,
                }),
                _ => {
                    metrics.mqtt_auth_failures.inc();
                    tracing::debug!(%username, "MQTT CONNECT refused: bad token");
                    None
                }
            }
        })
    }

    fn graph(&self) -> &dyn AccessGraph {
        self.graph.as_ref()
    }

    fn connected(&self, conn: &Arc<Connection>) {
        self.metrics.mqtt_connects.inc();
        self.metrics.mqtt_connections.inc();
        tracing::debug!(conn = conn.id, client_id = %conn.client_id, "MQTT connected");
    }

    fn disconnected(&self, conn: &Arc<Connection>) {
        self.metrics.mqtt_connections.dec();
        tracing::debug!(conn = conn.id, client_id = %conn.client_id, "MQTT disconnected");
    }

    fn frame(&self, conn: &Arc<Connection>, fmt: Fmt, payload: Bytes) {
        let _ = self.inbound.send(Inbound {
            conn: conn.clone(),
            fmt,
            payload,
        });
    }

    fn denied(&self, _conn: &Arc<Connection>, what: Denied<'_>) {
        let kind = match what {
            Denied::Subscribe(_) => "subscribe",
            Denied::Publish(_) => "publish",
            Denied::Delivery(_) => "delivery",
        };
        Metrics::inc(&self.metrics.mqtt_denied, kind);
    }
}
