//! Prometheus metrics, rendered as text at `GET /metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;

/// What the memory allocator holds, in bytes (jemalloc's `stats.*`).
///
/// RSS alone cannot tell a heap that live data fills from one that the allocator keeps
/// after the data was freed; these figures split the two (BENCHMARKS.md, "Memory after
/// traffic").
#[derive(Clone, Copy, Debug, Default)]
pub struct HeapStats {
    /// Bytes in live allocations.
    pub allocated: u64,
    /// Bytes in the pages that hold live allocations.
    pub active: u64,
    /// Bytes of the allocator's memory that are resident (part of RSS).
    pub resident: u64,
    /// Bytes the allocator mapped and gave back to the kernel but keeps reserved.
    pub retained: u64,
    /// Whether the allocator's background thread returns freed pages to the kernel
    /// while the process is quiet (see `main.rs`).
    pub background_purge: bool,
}

/// Reads the allocator's figures; `None` when they cannot be read.
pub type HeapReader = fn() -> Option<HeapStats>;

static HEAP_READER: OnceLock<HeapReader> = OnceLock::new();

/// Installs the reader of the heap figures. The binary does, since it chooses the
/// global allocator; the library cannot know it, so without a reader the `heap_*`
/// gauges stay absent from `/metrics`.
pub fn set_heap_reader(reader: HeapReader) {
    let _ = HEAP_READER.set(reader);
}

/// Labels of the HTTP request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct HttpLabels {
    /// Method.
    pub method: String,
    /// Status class or code.
    pub status: u16,
}

/// Labels of counters split by kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct KindLabels {
    /// What was counted.
    pub kind: String,
}

/// All metrics of the process.
pub struct Metrics {
    registry: Registry,
    /// Open, authenticated MQTT connections (devices online).
    pub mqtt_connections: Gauge,
    /// MQTT connections accepted (CONNACK sent) since start.
    pub mqtt_connects: Counter,
    /// MQTT CONNECTs refused (bad token, bad client id).
    pub mqtt_auth_failures: Counter,
    /// Packets refused by the topic rules, by kind (subscribe, publish, delivery).
    pub mqtt_denied: Family<KindLabels, Counter>,
    /// Logins by outcome (ok, failed).
    pub logins: Family<KindLabels, Counter>,
    /// Registrations.
    pub registrations: Counter,
    /// HTTP requests by method and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// Frames received from clients, by frame type.
    pub frames_in: Family<KindLabels, Counter>,
    /// Users with at least one connected device.
    pub online_users: Gauge,
    /// Retained presence updates published.
    pub presence_updates: Counter,
    /// Bytes held by the embedded broker's per-topic logs (set when rendered).
    pub broker_log_bytes: Gauge,
    /// Topics (subscription filters) the embedded broker keeps a log for.
    pub broker_log_topics: Gauge,
    /// Persistent sessions the embedded broker keeps for clients that are gone.
    pub broker_saved_sessions: Gauge,
    /// Bytes in live allocations (set when rendered, if the binary installed a reader).
    pub heap_allocated_bytes: Gauge,
    /// Bytes of the allocator's memory that are resident.
    pub heap_resident_bytes: Gauge,
    /// Bytes in the pages that hold live allocations.
    pub heap_active_bytes: Gauge,
    /// Bytes the allocator keeps reserved after giving them back to the kernel.
    pub heap_retained_bytes: Gauge,
    /// 1 when the allocator's background thread purges freed pages.
    pub heap_background_purge: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mqim");
        let m = Metrics {
            mqtt_connections: Gauge::default(),
            mqtt_connects: Counter::default(),
            mqtt_auth_failures: Counter::default(),
            mqtt_denied: Family::default(),
            logins: Family::default(),
            registrations: Counter::default(),
            http_requests: Family::default(),
            frames_in: Family::default(),
            online_users: Gauge::default(),
            presence_updates: Counter::default(),
            broker_log_bytes: Gauge::default(),
            broker_log_topics: Gauge::default(),
            broker_saved_sessions: Gauge::default(),
            heap_allocated_bytes: Gauge::default(),
            heap_resident_bytes: Gauge::default(),
            heap_active_bytes: Gauge::default(),
            heap_retained_bytes: Gauge::default(),
            heap_background_purge: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "mqtt_connections",
            "Open authenticated MQTT connections",
            m.mqtt_connections.clone(),
        );
        registry.register(
            "mqtt_connects",
            "MQTT connections accepted",
            m.mqtt_connects.clone(),
        );
        registry.register(
            "mqtt_auth_failures",
            "MQTT CONNECTs refused",
            m.mqtt_auth_failures.clone(),
        );
        registry.register(
            "mqtt_denied",
            "Packets refused by the topic rules",
            m.mqtt_denied.clone(),
        );
        registry.register("logins", "Password logins by outcome", m.logins.clone());
        registry.register("registrations", "Accounts created", m.registrations.clone());
        registry.register(
            "http_requests",
            "HTTP requests by method and status",
            m.http_requests.clone(),
        );
        registry.register(
            "frames_in",
            "Frames received from clients by type",
            m.frames_in.clone(),
        );
        registry.register(
            "online_users",
            "Users with at least one connected device",
            m.online_users.clone(),
        );
        registry.register(
            "presence_updates",
            "Retained presence updates published",
            m.presence_updates.clone(),
        );
        registry.register(
            "broker_log_bytes",
            "Bytes held by the broker's per-topic logs (entries, topics and payloads)",
            m.broker_log_bytes.clone(),
        );
        registry.register(
            "broker_log_topics",
            "Topics the broker keeps a log for",
            m.broker_log_topics.clone(),
        );
        registry.register(
            "broker_saved_sessions",
            "Sessions the broker keeps for clients that are gone",
            m.broker_saved_sessions.clone(),
        );
        if HEAP_READER.get().is_some() {
            registry.register(
                "heap_allocated_bytes",
                "Bytes in live allocations",
                m.heap_allocated_bytes.clone(),
            );
            registry.register(
                "heap_active_bytes",
                "Bytes in the allocator's pages that hold live allocations",
                m.heap_active_bytes.clone(),
            );
            registry.register(
                "heap_resident_bytes",
                "Bytes of the allocator's memory that are resident",
                m.heap_resident_bytes.clone(),
            );
            registry.register(
                "heap_retained_bytes",
                "Bytes the allocator gave back to the kernel and keeps reserved",
                m.heap_retained_bytes.clone(),
            );
            registry.register(
                "heap_background_purge",
                "1 when the allocator's background thread gives freed pages back while quiet",
                m.heap_background_purge.clone(),
            );
        }
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts one event of `kind` in `family`.
    pub fn inc(family: &Family<KindLabels, Counter>, kind: &str) {
        family
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Takes the broker's log figures into their gauges (they are the router's, read
    /// when rendered rather than pushed on every change).
    pub fn observe_broker(&self, log: &mqim_broker::LogStats) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.broker_log_bytes.set(g(log.bytes()));
        self.broker_log_topics.set(g(log.filters()));
        self.broker_saved_sessions.set(g(log.saved_sessions()));
    }

    /// Sets the heap gauges from the installed reader, if any.
    pub fn observe_heap(&self) {
        let Some(stats) = HEAP_READER.get().and_then(|read| read()) else {
            return;
        };
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.heap_allocated_bytes.set(g(stats.allocated));
        self.heap_active_bytes.set(g(stats.active));
        self.heap_resident_bytes.set(g(stats.resident));
        self.heap_retained_bytes.set(g(stats.retained));
        self.heap_background_purge
            .set(i64::from(stats.background_purge));
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
