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

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
