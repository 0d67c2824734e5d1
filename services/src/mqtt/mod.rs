//! The service side of the embedded broker: authentication of CONNECT, bookkeeping of
//! connections, and the hand-off of client frames to the frame dispatcher.

pub mod dispatch;

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use mqim_broker::{AccessGraph, BoxFuture, Connection, Denied, Fmt, Grant, Hooks, Principal};
use tokio::sync::mpsc;

use crate::accounts;
use crate::db::Db;
use crate::graph::SocialGraph;
use crate::messaging::delivery::Delivery;
use crate::metrics::Metrics;
use crate::push::InboxFormats;

/// What the broker tells the service, in order, through one channel.
#[derive(Debug)]
pub enum Inbound {
    /// A frame a client published on its own `out` topic (raw, not yet decoded).
    Frame {
        /// The sending connection (bound to its user).
        conn: Arc<Connection>,
        /// Format of the topic it came on.
        fmt: Fmt,
        /// Raw payload.
        payload: Bytes,
    },
    /// A subscription became active.
    Subscribed {
        /// The connection.
        conn: Arc<Connection>,
        /// What it covers.
        grant: Grant,
        /// Its QoS.
        qos: u8,
    },
    /// The device came online.
    Connected(Arc<Connection>),
    /// The device went offline.
    Disconnected(Arc<Connection>),
}

/// Implements the broker's [`Hooks`] for mqim.
pub struct ServiceHooks {
    db: Db,
    graph: Arc<SocialGraph>,
    metrics: Arc<Metrics>,
    inbound: mpsc::UnboundedSender<Inbound>,
    inbox_formats: InboxFormats,
    /// Offline delivery and cursors, once started (it needs the broker's publisher, so
    /// it exists only after the hooks do). Acknowledgements are handled right in the
    /// hook, on the acknowledging connection's task: through the one dispatcher task
    /// they were three events per message, and the dispatcher the bottleneck.
    delivery: Arc<OnceLock<Arc<Delivery>>>,
}

impl ServiceHooks {
    /// Hooks that send inbound frames to `inbound`.
    pub fn new(
        db: Db,
        graph: Arc<SocialGraph>,
        metrics: Arc<Metrics>,
        inbound: mpsc::UnboundedSender<Inbound>,
        inbox_formats: InboxFormats,
    ) -> ServiceHooks {
        ServiceHooks {
            db,
            graph,
            metrics,
            inbound,
            inbox_formats,
            delivery: Arc::default(),
        }
    }

    /// Hands acknowledgements to `delivery` directly from now on.
    pub fn set_delivery(&self, delivery: Arc<Delivery>) {
        let _ = self.delivery.set(delivery);
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
        let _ = self.inbound.send(Inbound::Connected(conn.clone()));
    }

    fn disconnected(&self, conn: &Arc<Connection>) {
        self.metrics.mqtt_connections.dec();
        tracing::debug!(conn = conn.id, client_id = %conn.client_id, "MQTT disconnected");
        let _ = self.inbound.send(Inbound::Disconnected(conn.clone()));
    }

    fn subscribed(&self, conn: &Arc<Connection>, grant: Grant, qos: u8) {
        // Synchronously, before the SUBACK reaches the client: a frame pushed after
        // the client saw its SUBACK must go to this format.
        // Live acknowledgements wait for the backlog from here on (delivery's docs).
        if let Grant::Inbox { uid, fmt } = &grant {
            self.inbox_formats.subscribed(*uid, *fmt);
            if let Some(d) = self.delivery.get() {
                d.subscribing(conn);
            }
        }
        let _ = self.inbound.send(Inbound::Subscribed {
            conn: conn.clone(),
            grant,
            qos,
        });
    }

    fn delivered(&self, conn: &Arc<Connection>, topic: &Bytes, payload: &Bytes) {
        // Unset only before the service has published anything, so there is nothing
        // to acknowledge yet.
        if let Some(d) = self.delivery.get() {
            d.delivered(conn, topic, payload);
        }
    }

    fn frame(&self, conn: &Arc<Connection>, fmt: Fmt, payload: Bytes) {
        let _ = self.inbound.send(Inbound::Frame {
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
