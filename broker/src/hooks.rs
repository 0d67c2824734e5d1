//! What the embedded broker asks of, and tells, the service beside it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::registry::{Connection, Principal};
use crate::topics::{AccessGraph, Fmt, Grant};

/// A boxed, sendable future (the hooks trait must stay object safe).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a packet was refused, for metrics and debug logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied<'a> {
    /// A SUBSCRIBE filter outside the rules (answered with SUBACK 0x80).
    Subscribe(&'a str),
    /// A PUBLISH outside the rules (dropped).
    Publish(&'a str),
    /// A PUBLISH the recipient may no longer receive (dropped at delivery).
    Delivery(&'a str),
}

/// The service side of the broker. Every method except [`Hooks::authenticate`] runs on
/// the connection's packet path and must return quickly without blocking: hand work to
/// a channel.
pub trait Hooks: Send + Sync + 'static {
    /// Checks CONNECT credentials: `password` is an access token of `username`.
    /// `None` refuses the connection (no CONNACK, no session).
    fn authenticate(&self, username: &str, password: &str) -> BoxFuture<Option<Principal>>;

    /// The membership and friendship view the topic rules consult.
    fn graph(&self) -> &dyn AccessGraph;

    /// The CONNACK was sent: the device is online.
    fn connected(&self, _conn: &Arc<Connection>) {}

    /// An online connection ended (clean disconnect, keep-alive expiry, socket loss or
    /// eviction).
    fn disconnected(&self, _conn: &Arc<Connection>) {}

    /// A frame the user published on their own `out` topic. It is consumed here and not
    /// routed by the broker.
    fn frame(&self, _conn: &Arc<Connection>, _fmt: Fmt, _payload: Bytes) {}

    /// A subscription was granted at `qos` and is now active (its SUBACK was written).
    /// For an inbox grant the device's own device topic is active too.
    fn subscribed(&self, _conn: &Arc<Connection>, _grant: Grant, _qos: u8) {}

    /// The device acknowledged (PUBACK) a QoS 1 publish the broker wrote to it; `topic`
    /// is the topic it was routed on (for a backlog message, the device topic).
    fn delivered(&self, _conn: &Arc<Connection>, _topic: &Bytes, _payload: &Bytes) {}

    /// A packet was refused.
    fn denied(&self, _conn: &Arc<Connection>, _what: Denied<'_>) {}
}
