//! Configuration: one serde struct, layered defaults → `--config FILE` → environment.
//!
//! The defaults are `config/default.toml`, compiled in, so the file that documents every
//! key is also the one that defines the defaults and they cannot drift apart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

/// The compiled-in defaults.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Errors loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or a value has the wrong type.
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value is out of range or inconsistent.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// All settings (see `config/default.toml` for what each means).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub mqtt: MqttConfig,
    pub auth: AuthConfig,
    pub admin: AdminConfig,
    pub mqtt_hooks: MqttHooksConfig,
    pub limits: LimitsConfig,
    pub messages: MessagesConfig,
    pub files: FilesConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagesConfig {
    pub max_content_bytes: usize,
    pub recall_window_secs: i64,
    pub rate_per_sec: f64,
    pub rate_burst: f64,
    pub batch_max: usize,
    pub backlog_max_per_conversation: i64,
    pub backlog_window: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub addr: SocketAddr,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub addr: SocketAddr,
    pub ws_addr: String,
    pub ws_path: String,
    pub max_connections: usize,
    pub max_packet_bytes: usize,
    pub connect_timeout_secs: u64,
    pub segment_bytes: usize,
    pub segment_count: usize,
    pub session_policy: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub token_ttl_secs: i64,
    pub hash_concurrency: usize,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub token: String,
}

impl std::fmt::Debug for AdminConfig {
    /// Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &if self.token.is_empty() { "" } else { "<set>" })
            .finish()
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttHooksConfig {
    pub secret: String,
}

impl std::fmt::Debug for MqttHooksConfig {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttHooksConfig")
            .field("secret", &if self.secret.is_empty() { "" } else { "<set>" })
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_friends: i64,
    pub max_group_members: i64,
    pub max_groups_per_user: i64,
    pub page_size: i64,
    pub max_page_size: i64,
}

/// Attachments: limits, allowed types, signed URLs (see `[files]` in the defaults).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    pub max_bytes: u64,
    pub max_image_bytes: u64,
    pub max_voice_bytes: u64,
    pub max_video_bytes: u64,
    pub allowed_types: Vec<String>,
    pub url_secret: String,
    pub signed_url_ttl_secs: i64,
}

impl std::fmt::Debug for FilesConfig {
    /// Never prints the URL secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilesConfig")
            .field("max_bytes", &self.max_bytes)
            .field("max_image_bytes", &self.max_image_bytes)
            .field("max_voice_bytes", &self.max_voice_bytes)
            .field("max_video_bytes", &self.max_video_bytes)
            .field("allowed_types", &self.allowed_types)
            .field(
                "url_secret",
                &if self.url_secret.is_empty() {
                    ""
                } else {
                    "<set>"
                },
            )
            .field("signed_url_ttl_secs", &self.signed_url_ttl_secs)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: String,
}

impl Config {
    /// Loads defaults, then `file` if given, then `MQIM_*` environment variables, and
    /// validates the result.
    ///
    /// # Errors
    /// A missing or malformed file, a value of the wrong type, or a value out of range.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, Env::prefixed("MQIM_"))
    }

    fn load_from(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        let env = env.map(|key| {
            let k = key.as_str().to_ascii_lowercase();
            match k.as_str() {
                "http_addr" => "http.addr".into(),
                "mqtt_addr" => "mqtt.addr".into(),
                "ws_addr" => "mqtt.ws_addr".into(),
                "database_url" => "database.url".into(),
                "data_dir" => "data_dir".into(),
                "admin_token" => "admin.token".into(),
                other => other.replace("__", ".").into(),
            }
        });
        let config: Config = fig.merge(env).extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let url = &self.database.url;
        if !(url.is_empty()
            || url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return bad(format!(
                "database.url must start with sqlite: or postgres://, got {:?}",
                redact_url(url)
            ));
        }
        if url.starts_with("sqlite:") && (url.contains(":memory:") || url.contains("mode=memory")) {
            return bad(
                "database.url: an in-memory SQLite database is not supported (every pooled \
                 connection and the writer thread would see a database of its own); use a file"
                    .into(),
            );
        }
        if self.database.max_connections == 0 {
            return bad("database.max_connections must be at least 1".into());
        }
        if !self.mqtt.ws_addr.is_empty() && self.mqtt.ws_addr.parse::<SocketAddr>().is_err() {
            return bad(format!(
                "mqtt.ws_addr {:?} is not an address like 0.0.0.0:8083",
                self.mqtt.ws_addr
            ));
        }
        if !matches!(self.mqtt.session_policy.as_str(), "multi" | "single") {
            return bad("mqtt.session_policy must be \"multi\" or \"single\"".into());
        }
        if !self.mqtt.ws_path.starts_with('/') {
            return bad("mqtt.ws_path must start with /".into());
        }
        if self.mqtt.max_connections == 0 || self.mqtt.max_packet_bytes < 1024 {
            return bad("mqtt.max_connections must be ≥ 1 and mqtt.max_packet_bytes ≥ 1024".into());
        }
        if self.auth.token_ttl_secs < 1 {
            return bad("auth.token_ttl_secs must be at least 1".into());
        }
        if self.auth.hash_concurrency == 0 {
            return bad("auth.hash_concurrency must be at least 1".into());
        }
        let l = &self.limits;
        if l.max_friends < 1 || l.max_group_members < 2 || l.max_groups_per_user < 1 {
            return bad("limits must be positive (max_group_members ≥ 2)".into());
        }
        if l.page_size < 1 || l.max_page_size < l.page_size {
            return bad("limits.page_size must be ≥ 1 and ≤ limits.max_page_size".into());
        }
        let m = &self.messages;
        if m.max_content_bytes == 0
            || m.rate_per_sec <= 0.0
            || m.rate_burst < 1.0
            || m.batch_max == 0
            || m.backlog_window == 0
            || m.backlog_max_per_conversation < 1
        {
            return bad("messages limits must be positive".into());
        }
        // A backlog window of the largest messages must fit in the broker's log of the
        // device topic, or the device falls behind the log, is disconnected and comes back
        // to the same backlog, again and again. When the newest segment fills, the oldest
        // is dropped, so `segment_count - 1` full segments are all that is sure to be
        // kept (with one, a reader even one message behind loses it at the rotation).
        // Frames carry ~1 KiB around their content.
        if self.mqtt.segment_count < 2 {
            return bad("mqtt.segment_count must be at least 2".into());
        }
        let log = self.mqtt.segment_bytes.max(1024) * (self.mqtt.segment_count - 1);
        let window = m.backlog_window * (m.max_content_bytes + 1024);
        if log < window {
            return bad(format!(
                "mqtt.segment_bytes × (mqtt.segment_count − 1) ({log} bytes) must hold a \
                 backlog window of the largest messages: messages.backlog_window × \
                 (messages.max_content_bytes + 1024) = {window} bytes"
            ));
        }
        let f = &self.files;
        if f.max_bytes == 0
            || f.max_image_bytes == 0
            || f.max_voice_bytes == 0
            || f.max_video_bytes == 0
        {
            return bad("files.max_*bytes must be at least 1".into());
        }
        if f.signed_url_ttl_secs < 1 {
            return bad("files.signed_url_ttl_secs must be at least 1".into());
        }
        if !f.url_secret.is_empty() && f.url_secret.len() < 32 {
            return bad(
                "files.url_secret must be empty (generated) or at least 32 characters".into(),
            );
        }
        if let Some(t) = f
            .allowed_types
            .iter()
            .find(|t| t.as_str() != "*" && (!t.contains('/') || t.chars().any(char::is_whitespace)))
        {
            return bad(format!(
                "files.allowed_types: {t:?} is not a type like \"image/png\", \"image/*\" or \"*\""
            ));
        }
        if !matches!(self.log.format.as_str(), "pretty" | "json") {
            return bad("log.format must be \"pretty\" or \"json\"".into());
        }
        Ok(())
    }

    /// The database URL in effect (SQLite under the data directory when unset).
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("mqim.db").display()
            )
        } else {
            self.database.url.clone()
        }
    }

    /// The WebSocket listener address, if enabled.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.mqtt.ws_addr.parse().ok()
    }
}

/// A database URL with any password replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::load_from(None, Env::prefixed("MQIM_TEST_NOTHING_")).expect("defaults");
        assert_eq!(c.http.addr.port(), 8080);
        assert_eq!(c.mqtt.addr.port(), 1883);
        assert_eq!(c.ws_addr().map(|a| a.port()), Some(8083));
        assert!(c.database_url().starts_with("sqlite://"));
    }

    #[test]
    fn file_overlays_and_rejects_bad_values() {
        let dir = std::env::temp_dir().join(format!("mqim-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let f = dir.join("c.toml");
        std::fs::write(&f, "[http]\naddr = \"127.0.0.1:0\"\n").expect("write");
        let c = Config::load_from(Some(&f), Env::prefixed("MQIM_TEST_NOTHING_")).expect("load");
        assert_eq!(c.http.addr.to_string(), "127.0.0.1:0");
        std::fs::write(&f, "[http]\naddr = \"nonsense\"\n").expect("write");
        assert!(Config::load_from(Some(&f), Env::prefixed("MQIM_TEST_NOTHING_")).is_err());
        std::fs::write(&f, "[nope]\nx = 1\n").expect("write");
        assert!(Config::load_from(Some(&f), Env::prefixed("MQIM_TEST_NOTHING_")).is_err());
        assert!(Config::load_from(Some(&dir.join("missing.toml")), Env::prefixed("X_")).is_err());
        // In-memory SQLite: each pooled connection would see a database of its own.
        for url in ["sqlite::memory:", "sqlite://x.db?mode=memory"] {
            std::fs::write(&f, format!("[database]\nurl = \"{url}\"\n")).expect("write");
            let err = Config::load_from(Some(&f), Env::prefixed("MQIM_TEST_NOTHING_"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("in-memory SQLite"), "{url}: {err}");
        }
        std::fs::write(&f, "[database]\nurl = \"sqlite://x.db?mode=rwc\"\n").expect("write");
        assert!(Config::load_from(Some(&f), Env::prefixed("MQIM_TEST_NOTHING_")).is_ok());
    }

    /// The broker's per-topic log must hold a backlog window of the largest messages.
    #[test]
    fn the_broker_log_must_hold_a_backlog_window() {
        let dir = std::env::temp_dir().join(format!("mqim-cfg-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let f = dir.join("c.toml");
        let load = |toml: &str| {
            std::fs::write(&f, toml).expect("write");
            Config::load_from(Some(&f), Env::prefixed("MQIM_TEST_NOTHING_"))
                .err()
                .map(|e| e.to_string())
        };
        let err = load("[mqtt]\nsegment_bytes = 65536\nsegment_count = 3\n").unwrap_or_default();
        assert!(err.contains("backlog"), "{err}");
        let small = "[messages]\nbacklog_window = 2\nmax_content_bytes = 512\n";
        let err = load(&format!(
            "[mqtt]\nsegment_bytes = 4096\nsegment_count = 1\n{small}"
        ))
        .unwrap_or_default();
        assert!(err.contains("segment_count must be at least 2"), "{err}");
        assert_eq!(
            load(&format!(
                "[mqtt]\nsegment_bytes = 4096\nsegment_count = 2\n{small}"
            )),
            None
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
