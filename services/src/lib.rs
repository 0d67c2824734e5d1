//! mqim: an instant-messaging server whose transport is MQTT.
//!
//! Layers, each depending only on those below it:
//! * `http` (REST handlers) and `mqtt` (frame handlers) — the edges;
//! * `accounts`, … — domain services: validation, permissions, transactions;
//! * `db` — the sqlx pool (SQLite or PostgreSQL) and migrations;
//! * beside them: `graph` (in-memory social graph for topic rules), `push` (frames
//!   into the broker), `metrics`, `config`.
//!
//! The embedded broker lives in the `mqim-broker` crate, the wire frames in `mqim-proto`.

pub mod accounts;
pub mod app;
pub mod config;
pub mod db;
pub mod error;
pub mod files;
pub mod graph;
pub mod http;
pub mod messaging;
pub mod metrics;
pub mod mqtt;
pub mod passwords;
pub mod presence;
pub mod push;
pub mod social;
pub mod sqlite_writer;
pub mod state;
pub mod tokens;

pub use mqim_broker::now_ms;
