//! Peer addresses of MQTT connections.
//!
//! rumqttd never shows the codec the socket it reads from, but its accept loop logs an
//! `accept` event with the peer address and then, synchronously on the same thread,
//! clones the protocol value for the new connection. [`AcceptLayer`], a `tracing` layer
//! the binary installs, remembers that address in a thread-local slot and
//! `Guard::clone` takes it. Connections that arrive through the WebSocket proxy come
//! from the proxy's loopback socket; the proxy registers which client each of its
//! sockets carries, so the real client address is reported for them too.
//!
//! This depends on rumqttd's log event: if a later version changes it, addresses are
//! simply unknown (`None`) — nothing else is affected.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::OnceLock;

use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::filter::{FilterFn, Filtered};
use tracing_subscriber::layer::{Context, Layer};

thread_local! {
    static ACCEPTED: Cell<Option<SocketAddr>> = const { Cell::new(None) };
}

/// rumqttd's module that logs accepted sockets.
const TARGET: &str = "rumqttd::server::broker";

/// The tracing layer that learns peer addresses from rumqttd's accept events.
pub struct AcceptLayer;

impl AcceptLayer {
    /// The layer with its own filter, so it sees rumqttd's accept events whatever the
    /// log level of the other layers.
    ///
    /// Events only: a filter by target would also enable rumqttd's per-connection span
    /// (`remote_link`, same module, INFO), and every poll of every connection task would
    /// then enter and leave it in the subscriber's registry (~2 % of the connection
    /// tasks' CPU in a broadcast).
    pub fn filtered<S: Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>>(
    ) -> Filtered<AcceptLayer, FilterFn<AcceptFilter>, S> {
        AcceptLayer.with_filter(FilterFn::new(accept_events as AcceptFilter))
    }
}

/// The filter of [`AcceptLayer::filtered`].
pub type AcceptFilter = fn(&Metadata<'_>) -> bool;

fn accept_events(m: &Metadata<'_>) -> bool {
    m.is_event() && m.target() == TARGET && *m.level() <= tracing::Level::INFO
}

impl<S: Subscriber> Layer<S> for AcceptLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut v = AddrVisitor(None);
        event.record(&mut v);
        if let Some(a) = v.0 {
            ACCEPTED.with(|c| c.set(Some(a)));
        }
    }
}

struct AddrVisitor(Option<SocketAddr>);

impl Visit for AddrVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "addr" {
            self.0 = format!("{value:?}").parse().ok();
        }
    }
}

/// The address of the socket rumqttd accepted last on this thread, once.
pub(crate) fn take_accepted() -> Option<SocketAddr> {
    ACCEPTED.with(|c| c.take())
}

fn proxied() -> &'static Mutex<HashMap<SocketAddr, SocketAddr>> {
    static MAP: OnceLock<Mutex<HashMap<SocketAddr, SocketAddr>>> = OnceLock::new();
    MAP.get_or_init(Default::default)
}

/// The WebSocket proxy's socket `local` carries client `client`.
pub(crate) fn register_proxied(local: SocketAddr, client: SocketAddr) {
    proxied().lock().insert(local, client);
}

/// The proxy's socket closed.
pub(crate) fn forget_proxied(local: SocketAddr) {
    proxied().lock().remove(&local);
}

/// The client behind `peer` (itself unless it is one of the proxy's sockets).
pub(crate) fn resolve(peer: SocketAddr) -> SocketAddr {
    proxied().lock().get(&peer).copied().unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn learns_accepted_addresses_without_enabling_rumqttds_spans() {
        let subscriber = tracing_subscriber::registry().with(AcceptLayer::filtered());
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::span!(target: TARGET, tracing::Level::INFO, "remote_link");
            assert!(
                span.is_disabled(),
                "rumqttd's connection span must stay off"
            );
            let addr: SocketAddr = "192.0.2.7:4321".parse().expect("address");
            tracing::info!(target: TARGET, ?addr, "accept");
            assert_eq!(take_accepted(), Some(addr));
            assert_eq!(take_accepted(), None, "taken once");
            tracing::debug!(target: TARGET, ?addr, "accept");
            assert_eq!(take_accepted(), None, "below INFO is not an accept event");
        });
    }
}
