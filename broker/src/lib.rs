//! mqim's embedded MQTT broker: rumqttd 0.20, made safe for an IM server.
//!
//! rumqttd routes fast but has no authorization hook and a few defects that let one
//! client hurt others. This crate wraps it through its public API (rumqttd itself is
//! patched only in its accept and connect path, for speed: see `vendor/README.md`):
//!
//! * [`topics`] — the topic rules of SPEC §4 as pure functions;
//! * [`clientid`] — client id rules, checked before rumqttd sees an id;
//! * `guard` — the per-connection codec wrapper that applies the rules to every packet;
//! * [`registry`] — live connections and the users they are bound to;
//! * [`embedded`] — starting the router and listeners on our runtime, publishing, and
//!   closing connections;
//! * `ws` — MQTT over WebSocket through our own listener.
//!
//! The service plugs in through [`Hooks`].

pub mod clientid;
pub mod embedded;
mod guard;
pub mod hooks;
pub mod peer;
pub mod registry;
pub mod topics;
mod ws;

pub use embedded::{Batch, BrokerConfig, BrokerError, Closer, EmbeddedBroker, Publisher};
pub use guard::{device_topic, DEVICE_TOPIC_PREFIX, SINK_TOPIC};
pub use hooks::{BoxFuture, Denied, Hooks};
pub use registry::{now_ms, Connection, Principal, Registry};
/// What the router's logs hold ([`EmbeddedBroker::log_stats`]).
pub use rumqttd::LogStats;
pub use topics::{AccessGraph, Fmt, Grant, Topic};
