//! Test harness: starts the real `mqim` binary on ephemeral ports with a fresh data
//! directory (and, when `TEST_POSTGRES_URL` names a PostgreSQL server, a fresh
//! database on it), and drives it with real clients: reqwest, rumqttc, and
//! `mosquitto_pub`/`mosquitto_sub`.
//!
//! The server is found by the log lines SPEC §1 promises (`… listening on ADDR`).
#![allow(clippy::unwrap_used)]

pub mod http;
pub mod mqtt;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub use http::{Http, TestUser};
pub use mqtt::{MqttClient, MqttError, Received};

/// A `send` frame of a text message to user `to`.
pub fn text(cmid: &str, to: i64, content: &str) -> mqim_proto::ClientFrame {
    mqim_proto::ClientFrame::Send {
        client_msg_id: cmid.into(),
        to_user: Some(to),
        to_group: None,
        msg_type: mqim_proto::MsgType::Text,
        content: content.into(),
        reply_to: None,
    }
}

/// Generous bound for anything that should happen "at once".
pub const WAIT: Duration = Duration::from_secs(10);

/// A running server.
pub struct Server {
    child: Option<Child>,
    /// Data directory (kept across restarts).
    pub data_dir: tempfile::TempDir,
    /// Database URL given to the server.
    pub database_url: String,
    /// Extra environment for the server process.
    pub env: Vec<(String, String)>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// MQTT over TCP.
    pub mqtt_addr: SocketAddr,
    /// MQTT over WebSocket (`ws://ADDR/mqtt`).
    pub ws_addr: SocketAddr,
    /// Log lines of the current process.
    pub logs: Arc<Mutex<Vec<String>>>,
    /// Tasks copying the process's stdout and stderr into `logs`.
    readers: Vec<tokio::task::JoinHandle<()>>,
    /// HTTP client bound to `base`.
    pub http: Http,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Path of the `mqim` binary built by cargo next to the test executable (or `MQIM_BIN`).
/// `cargo test --workspace` (re)builds it first because the `mqim` package has an
/// integration test of its own (`services/tests/cli.rs`).
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("MQIM_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/it-xxxx → target/<profile>/mqim
    exe.parent().unwrap().parent().unwrap().join("mqim")
}

/// A command running the `mqim` binary without any inherited `MQIM_*` variable: the
/// server rejects unknown ones (such as the harness's own `MQIM_TEST_LOG`), and the
/// developer's settings must not leak into tests.
pub fn command() -> Command {
    let mut cmd = Command::new(binary());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MQIM_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Whether tests run in CI (tools must then be present, not skipped).
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Whether an external tool is on PATH; in CI a missing tool fails the test instead.
pub fn have_tool(name: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        assert!(!in_ci(), "{name} is required in CI (.ci/run installs it)");
        eprintln!("SKIPPED PART: {name} not installed");
    }
    found
}

/// The PostgreSQL admin URL from `TEST_POSTGRES_URL`, when the suite should run on
/// PostgreSQL. Any other non-empty value is a mistake and fails loudly rather than
/// quietly testing SQLite instead.
pub fn postgres_admin_url() -> Option<String> {
    let url = std::env::var("TEST_POSTGRES_URL").ok()?;
    if url.is_empty() {
        return None;
    }
    assert!(
        url.starts_with("postgres://") || url.starts_with("postgresql://"),
        "TEST_POSTGRES_URL must be a postgres:// URL, not {url:?}"
    );
    Some(url)
}

/// A database URL for a new server: a fresh database on the `TEST_POSTGRES_URL` server
/// (named `mqim_test_<pid>_<n>`), else a SQLite file in `data_dir`.
pub async fn fresh_database_url(data_dir: &std::path::Path) -> String {
    let Some(admin) = postgres_admin_url() else {
        return format!("sqlite://{}?mode=rwc", data_dir.join("mqim.db").display());
    };
    let name = format!(
        "mqim_test_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to TEST_POSTGRES_URL: {e}"));
    sqlx::Executor::execute(&mut c, format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let _ = c.close().await;
    // Same server and credentials, other database; keep any `?query` options.
    let (path, query) = match admin.split_once('?') {
        Some((p, q)) => (p, format!("?{q}")),
        None => (admin.as_str(), String::new()),
    };
    let authority = path.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
    format!("{authority}/{name}{query}")
}

/// Starts a server with default settings.
pub async fn start_server() -> Server {
    start_server_with(&[]).await
}

/// Starts a server with extra environment variables (e.g. `MQIM_LIMITS__MAX_FRIENDS`).
pub async fn start_server_with(env: &[(&str, &str)]) -> Server {
    let data_dir = tempfile::tempdir().unwrap();
    let database_url = fresh_database_url(data_dir.path()).await;
    let mut s = Server {
        child: None,
        data_dir,
        database_url,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        base: String::new(),
        mqtt_addr: "127.0.0.1:1".parse().unwrap(),
        ws_addr: "127.0.0.1:1".parse().unwrap(),
        logs: Arc::default(),
        readers: Vec::new(),
        http: Http::new(""),
    };
    s.spawn().await;
    s
}

impl Server {
    async fn spawn(&mut self) {
        let mut cmd = command();
        cmd.arg("serve")
            .env("MQIM_HTTP_ADDR", "127.0.0.1:0")
            .env("MQIM_MQTT_ADDR", "127.0.0.1:0")
            .env("MQIM_WS_ADDR", "127.0.0.1:0")
            .env("MQIM_DATA_DIR", self.data_dir.path())
            .env("MQIM_DATABASE_URL", &self.database_url)
            .env("MQIM_ADMIN_TOKEN", "test-admin-token-0123456789")
            .env("RUST_LOG", "info,mqim=debug,rumqttd=off")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start mqim (is it built?)");
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut readers = Vec::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let logs = logs.clone();
            let tx = tx.clone();
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if std::env::var_os("MQIM_TEST_LOG").is_some() {
                        eprintln!("[mqim] {line}");
                    }
                    logs.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            }));
        }
        drop(tx);
        let (mut http, mut mqtt, mut ws) = (None, None, None);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while http.is_none() || mqtt.is_none() || ws.is_none() {
            let line = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| {
                    panic!(
                        "server did not start; log:\n{}",
                        logs.lock().unwrap().join("\n")
                    )
                });
            if !line.contains("listening on") {
                continue;
            }
            let addr = line.rsplit("listening on ").next().unwrap_or("");
            let addr: SocketAddr = addr
                .trim()
                .trim_end_matches("/mqtt")
                .parse()
                .unwrap_or_else(|_| panic!("cannot parse address in {line:?}"));
            if line.contains("mqtt-ws listening") {
                ws = Some(addr);
            } else if line.contains("mqtt listening") {
                mqtt = Some(addr);
            } else if line.contains("http listening") {
                http = Some(addr);
            }
        }
        self.base = format!("http://{}", http.unwrap());
        self.mqtt_addr = mqtt.unwrap();
        self.ws_addr = ws.unwrap();
        self.http = Http::new(&self.base);
        self.logs = logs;
        self.readers = readers;
        self.child = Some(child);
    }

    /// Stops the server with SIGTERM (graceful) and waits for it to exit.
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("server exits within 20 s of SIGTERM")
            .unwrap();
        self.drain_logs().await;
        status
    }

    /// Waits (bounded) until the output of the ended process has been read into `logs`.
    async fn drain_logs(&mut self) {
        for r in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
        }
    }

    /// Kills the server with SIGKILL (no chance to flush anything).
    pub async fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.start_kill().unwrap();
        let _ = child.wait().await;
        self.drain_logs().await;
    }

    /// Starts the server again on the same data directory and database (new ports).
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "stop or kill first");
        self.spawn().await;
    }

    /// Graceful stop, then start again.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// Registers a user (password `password-<username>`).
    pub async fn register(&self, username: &str) -> TestUser {
        self.http.register(username).await
    }

    /// A `mosquitto_sub` or `mosquitto_pub` (`tool`) connecting to this server's MQTT
    /// port as client id `id` with `username` and `password`, then `args`.
    pub fn mosquitto(
        &self,
        tool: &str,
        id: &str,
        username: &str,
        password: &str,
        args: &[&str],
    ) -> tokio::process::Command {
        let port = self.mqtt_addr.port().to_string();
        let mut c = tokio::process::Command::new(tool);
        c.args(["-h", "127.0.0.1", "-p", &port, "-i", id])
            .args(["-u", username, "-P", password])
            .args(args);
        c
    }

    /// Registers one user per name, in order (see [`Server::register`]).
    pub async fn register_all<const N: usize>(&self, names: [&str; N]) -> [TestUser; N] {
        let mut users = Vec::with_capacity(N);
        for name in names {
            users.push(self.register(name).await);
        }
        match users.try_into() {
            Ok(users) => users,
            Err(_) => unreachable!("one user per name"),
        }
    }

    /// Registers two users and makes them friends ([`Server::befriend`]).
    pub async fn register_friends(&self, a: &str, b: &str) -> (TestUser, TestUser) {
        let [a, b] = self.register_all([a, b]).await;
        self.befriend(&a, &b).await;
        (a, b)
    }

    /// Makes `a` and `b` friends: `a` asks, `b` accepts (both must succeed).
    pub async fn befriend(&self, a: &TestUser, b: &TestUser) {
        let r = self.http.ask_friend(a, b.id).await;
        assert_eq!(r.0, 201, "{}", r.1);
        let path = format!("/api/v1/friends/requests/{}/accept", r.1["id"]);
        let r = self.http.post(&path, &b.token, serde_json::json!({})).await;
        assert_eq!(r.0, 200, "{}", r.1);
    }

    /// Connects a rumqttc client for `user` with client id `user` or `user-<device>`.
    pub async fn mqtt(&self, user: &TestUser, device: Option<&str>) -> MqttClient {
        let id = match device {
            Some(d) => format!("{}-{d}", user.username),
            None => user.username.clone(),
        };
        MqttClient::connect(self.mqtt_addr, &id, &user.username, &user.token)
            .await
            .unwrap_or_else(|e| panic!("MQTT connect of {id} failed: {e:?}"))
    }

    /// Like [`Server::mqtt`], but the client acknowledges only what the test passes to
    /// [`MqttClient::ack`].
    pub async fn mqtt_manual_acks(&self, user: &TestUser, device: &str) -> MqttClient {
        let id = format!("{}-{device}", user.username);
        let mut opts =
            rumqttc::MqttOptions::new(&id, self.mqtt_addr.ip().to_string(), self.mqtt_addr.port());
        opts.set_credentials(&user.username, &user.token);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_manual_acks(true);
        MqttClient::connect_with(opts)
            .await
            .unwrap_or_else(|e| panic!("MQTT connect of {id} failed: {e:?}"))
    }

    /// Waits (up to `WAIT`) until `n` lines of the server's log contain `text`.
    pub async fn wait_for_log(&self, text: &str, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        let count = || {
            self.logs
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(text))
                .count()
        };
        while count() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "fewer than {n} log lines with {text:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /metrics` as text.
    pub async fn metrics_text(&self) -> String {
        self.http
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of the metric `name` (a line `name VALUE` of `GET /metrics`).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// The server's live heap (`mqim_heap_allocated_bytes`) apart from what the broker's
    /// logs hold, once it has settled: read until two readings 60 ms apart (longer than
    /// the router's 50 ms log-trimming interval) differ by less than 64 KiB, or `WAIT`
    /// has passed (the caller's assertion then judges the last reading).
    pub async fn live_heap_beside_logs(&self) -> f64 {
        let read = async || {
            self.metric("mqim_heap_allocated_bytes").await
                - self.metric("mqim_broker_log_bytes").await
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut last = read().await;
        loop {
            tokio::time::sleep(Duration::from_millis(60)).await;
            let now = read().await;
            if (now - last).abs() < 64.0 * 1024.0 || tokio::time::Instant::now() >= deadline {
                return now;
            }
            last = now;
        }
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}
