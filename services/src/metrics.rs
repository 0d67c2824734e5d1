//! Prometheus metrics, rendered as text at `GET /metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
