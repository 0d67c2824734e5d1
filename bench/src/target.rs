//! The three systems under test, each started as its own process so that its CPU time
//! (`/proc/PID/stat`) and memory (`VmRSS`) are its own and not the load generator's.
//!
//! * mqim: the built `mqim serve` on ephemeral loopback ports with a fresh data
//!   directory (SQLite), or with `--postgres ADMIN_URL` a fresh PostgreSQL database
//!   made for the run and dropped after it; found by its `… listening on ADDR` log
//!   lines.
//! * rumqttd: `mqim-bench-rumqttd`, rumqttd with the embedded broker's settings.
//! * Mosquitto: `/usr/sbin/mosquitto -c CONF` with persistence off, loopback only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use mqim::config::redact_url;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Which system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// mqim (persistence, guard, service).
    Mqim,
    /// Standalone rumqttd with mqim's broker settings.
    Rumqttd,
    /// Mosquitto from Debian, persistence off.
    Mosquitto,
}

impl Kind {
    /// Column name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Mqim => "mqim",
            Kind::Rumqttd => "rumqttd",
            Kind::Mosquitto => "mosquitto",
        }
    }

    /// Column index.
    pub fn idx(self) -> usize {
        match self {
            Kind::Mqim => 0,
            Kind::Rumqttd => 1,
            Kind::Mosquitto => 2,
        }
    }
}

/// Environment given to mqim for benchmarks (also printed in BENCHMARKS.md).
///
/// The per-user rate limit (default 50/s, burst 200) would refuse benchmark traffic,
/// which sends thousands of messages per second from a few accounts.
pub const MQIM_BENCH_ENV: &[(&str, &str)] = &[
    ("MQIM_MESSAGES__RATE_PER_SEC", "1000000"),
    ("MQIM_MESSAGES__RATE_BURST", "1000000"),
];

/// A running system under test.
pub struct Target {
    /// Which one.
    pub kind: Kind,
    child: Child,
    /// Process id (for /proc).
    pub pid: u32,
    /// MQTT over TCP.
    pub mqtt: SocketAddr,
    /// REST base URL (mqim only).
    pub http: Option<String>,
    /// Recent log lines (for error reports).
    pub logs: Arc<Mutex<Vec<String>>>,
    /// Its data directory (mqim's database lives there, kept across a restart).
    dir: Option<tempfile::TempDir>,
    /// mqim's PostgreSQL database, when it runs on one (kept across a restart,
    /// dropped by [`Target::stop`]).
    pg: Option<PgDatabase>,
}

/// A PostgreSQL database made for one mqim process.
#[derive(Debug, Clone)]
struct PgDatabase {
    /// The admin URL it was made with (to drop it).
    admin: String,
    /// Its name.
    name: String,
    /// mqim's `database.url`.
    url: String,
}

/// Tells the databases of one run apart.
static PG_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl PgDatabase {
    /// Makes `mqim_bench_<pid>_<n>` on the server of `admin` (same credentials and
    /// `?options`).
    async fn create(admin: &str) -> Result<PgDatabase> {
        use sqlx::Connection;
        let name = format!(
            "mqim_bench_{}_{}",
            std::process::id(),
            PG_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut c = sqlx::PgConnection::connect(admin).await.with_context(|| {
            format!(
                "cannot connect to the --postgres server {}",
                redact_url(admin)
            )
        })?;
        sqlx::Executor::execute(&mut c, format!("CREATE DATABASE {name}").as_str())
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        let _ = c.close().await;
        let (path, query) = match admin.split_once('?') {
            Some((p, q)) => (p, format!("?{q}")),
            None => (admin, String::new()),
        };
        let authority = path.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
        Ok(PgDatabase {
            admin: admin.to_owned(),
            url: format!("{authority}/{name}{query}"),
            name,
        })
    }

    /// Drops it (best effort: a database left behind is named for its run).
    async fn drop_database(&self) {
        use sqlx::Connection;
        if let Ok(mut c) = sqlx::PgConnection::connect(&self.admin).await {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            if let Err(e) = sqlx::Executor::execute(&mut c, sql.as_str()).await {
                eprintln!("could not drop database {}: {e}", self.name);
            }
            let _ = c.close().await;
        }
    }
}

/// Where to find the programs.
#[derive(Debug, Clone)]
pub struct Programs {
    /// The `mqim` binary.
    pub mqim: PathBuf,
    /// The `mqim-bench-rumqttd` binary.
    pub rumqttd: PathBuf,
    /// The `mosquitto` binary.
    pub mosquitto: PathBuf,
    /// mqim on PostgreSQL: the admin URL of the server to make its databases on
    /// (`None`: SQLite in the data directory).
    pub postgres: Option<String>,
}

impl Programs {
    /// Defaults: binaries next to this executable (same cargo profile), else
    /// `target/release`, else `target/debug`; Mosquitto from Debian's path.
    pub fn find(
        mqim: Option<PathBuf>,
        rumqttd: Option<PathBuf>,
        mosquitto: PathBuf,
        postgres: Option<String>,
    ) -> Programs {
        Programs {
            mqim: mqim.unwrap_or_else(|| sibling("mqim")),
            rumqttd: rumqttd.unwrap_or_else(|| sibling("mqim-bench-rumqttd")),
            mosquitto,
            postgres,
        }
    }
}

fn sibling(name: &str) -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(name));
    }
    candidates.push(PathBuf::from("target/release").join(name));
    candidates.push(PathBuf::from("target/debug").join(name));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| candidates[0].clone())
}

impl Target {
    /// Starts `kind`.
    pub async fn start(kind: Kind, progs: &Programs) -> Result<Target> {
        match kind {
            Kind::Mqim => {
                let pg = match &progs.postgres {
                    Some(admin) => Some(PgDatabase::create(admin).await?),
                    None => None,
                };
                start_mqim(&progs.mqim, tempfile::tempdir()?, pg).await
            }
            Kind::Rumqttd => start_rumqttd(&progs.rumqttd).await,
            Kind::Mosquitto => start_mosquitto(&progs.mosquitto).await,
        }
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// CPU time (user + system, all threads) in seconds.
    pub fn cpu_secs(&self) -> Option<f64> {
        cpu_secs_of(self.pid)
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last log lines.
    pub fn log_tail(&self, n: usize) -> String {
        let l = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        l[l.len().saturating_sub(n)..].join("\n")
    }

    /// Replaces the process with a fresh one, so memory is measured in a heap that
    /// earlier scenarios did not grow. mqim keeps its data directory (the accounts and
    /// tokens made at set-up; SIGKILL loses nothing committed); its ports change.
    pub async fn restart(&mut self, progs: &Programs) -> Result<()> {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        *self = match (self.kind, self.dir.take()) {
            (Kind::Mqim, Some(dir)) => start_mqim(&progs.mqim, dir, self.pg.take()).await?,
            (kind, _) => Target::start(kind, progs).await?,
        };
        Ok(())
    }

    /// Stops the process (SIGKILL: nothing to flush that the benchmark needs).
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        if let Some(pg) = self.pg.take() {
            pg.drop_database().await;
        }
    }
}

/// CPU time (user + system, all threads) of process `pid`, in seconds.
pub fn cpu_secs_of(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14, 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Spawns `cmd`, collects its output lines, and waits until `want` has found every
/// address it needs in them (or the process dies, or 60 s pass).
async fn spawn_and_wait<T>(
    mut cmd: Command,
    what: &str,
    mut want: impl FnMut(&str) -> Option<T>,
) -> Result<(Child, Arc<Mutex<Vec<String>>>, T)> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let logs: Arc<Mutex<Vec<String>>> = Arc::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let out: Vec<Box<dyn tokio::io::AsyncRead + Unpin + Send>> = vec![
        Box::new(child.stdout.take().context("stdout")?),
        Box::new(child.stderr.take().context("stderr")?),
    ];
    for stream in out {
        let logs = logs.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if std::env::var_os("BENCH_SERVER_LOG").is_some() {
                    eprintln!("[server] {line}");
                }
                {
                    let mut l = logs.lock().unwrap_or_else(|e| e.into_inner());
                    if l.len() > 2000 {
                        l.drain(..1000);
                    }
                    l.push(line.clone());
                }
                let _ = tx.send(line);
            }
        });
    }
    drop(tx);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(line)) => {
                if let Some(v) = want(&line) {
                    return Ok((child, logs, v));
                }
            }
            _ => {
                let tail = logs.lock().unwrap_or_else(|e| e.into_inner()).join("\n");
                let _ = child.start_kill();
                bail!("{what} did not start; its output:\n{tail}");
            }
        }
    }
}

fn addr_after_listening(line: &str) -> Option<SocketAddr> {
    line.rsplit("listening on ").next()?.trim().parse().ok()
}

async fn start_mqim(bin: &Path, dir: tempfile::TempDir, pg: Option<PgDatabase>) -> Result<Target> {
    if !bin.is_file() {
        bail!(
            "mqim binary not found at {} (build it: cargo build --release -p mqim)",
            bin.display()
        );
    }
    let mut cmd = Command::new(bin);
    cmd.arg("serve")
        .env("MQIM_HTTP_ADDR", "127.0.0.1:0")
        .env("MQIM_MQTT_ADDR", "127.0.0.1:0")
        .env("MQIM_WS_ADDR", "127.0.0.1:0")
        .env("MQIM_DATA_DIR", dir.path())
        .env_remove("RUST_LOG");
    match &pg {
        Some(db) => cmd.env("MQIM_DATABASE_URL", &db.url),
        None => cmd.env_remove("MQIM_DATABASE_URL"),
    };
    for (k, v) in MQIM_BENCH_ENV {
        cmd.env(k, v);
    }
    let (mut mqtt, mut http, mut backend) = (None, None, None);
    let (mut child, logs, (mqtt, http)) = spawn_and_wait(cmd, "mqim", |line| {
        if line.contains("database ready") {
            backend = Some(line.contains("backend=Postgres"));
        } else if line.contains("mqtt listening on") {
            mqtt = addr_after_listening(line);
        } else if line.contains("http listening on") {
            http = addr_after_listening(line);
        }
        match (mqtt, http) {
            (Some(m), Some(h)) => Some((m, h)),
            _ => None,
        }
    })
    .await?;
    // What it says it runs on must be what was asked for: a benchmark "on PostgreSQL"
    // that quietly measured SQLite would mislead.
    if backend != Some(pg.is_some()) {
        let _ = child.start_kill();
        bail!(
            "mqim was to run on {} but its log says {:?}",
            if pg.is_some() { "PostgreSQL" } else { "SQLite" },
            logs.lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|l| l.contains("database ready"))
        );
    }
    let pid = child.id().ok_or_else(|| anyhow!("mqim exited at once"))?;
    Ok(Target {
        kind: Kind::Mqim,
        child,
        pid,
        mqtt,
        http: Some(format!("http://{http}")),
        logs,
        dir: Some(dir),
        pg,
    })
}

async fn start_rumqttd(bin: &Path) -> Result<Target> {
    if !bin.is_file() {
        bail!(
            "mqim-bench-rumqttd not found at {} (cargo build -p mqim-bench)",
            bin.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let cmd = Command::new(bin);
    let (child, logs, mqtt) = spawn_and_wait(cmd, "rumqttd", |line| {
        line.contains("rumqttd listening on")
            .then(|| addr_after_listening(line))
            .flatten()
    })
    .await?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("rumqttd exited at once"))?;
    Ok(Target {
        kind: Kind::Rumqttd,
        child,
        pid,
        mqtt,
        http: None,
        logs,
        dir: Some(dir),
        pg: None,
    })
}

/// The Mosquitto configuration: loopback listener, anonymous, no persistence, queues
/// raised so that nothing is dropped by a limit (the offline drain queues 10,000 for
/// one client), in-flight window 100 like rumqttd's.
pub fn mosquitto_conf(port: u16) -> String {
    format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         max_inflight_messages 100\n\
         max_queued_messages 1000000\n\
         max_queued_bytes 0\n\
         max_connections -1\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n"
    )
}

async fn start_mosquitto(bin: &Path) -> Result<Target> {
    if !bin.is_file() {
        bail!(
            "mosquitto not found at {} (apt-get install mosquitto)",
            bin.display()
        );
    }
    let dir = tempfile::tempdir()?;
    for _ in 0..10 {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?.port()
        };
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(&conf, mosquitto_conf(port))?;
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        if let Some(err) = child.stderr.take() {
            let logs = logs.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    logs.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        for _ in 0..200 {
            if !matches!(child.try_wait(), Ok(None)) {
                break;
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                let pid = child.id().ok_or_else(|| anyhow!("mosquitto exited"))?;
                return Ok(Target {
                    kind: Kind::Mosquitto,
                    child,
                    pid,
                    mqtt: addr,
                    http: None,
                    logs,
                    dir: Some(dir),
                    pg: None,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = child.start_kill();
    }
    bail!("mosquitto did not start listening")
}

/// Kernel TCP memory in use (pages × page size), from /proc/net/sockstat.
pub fn kernel_tcp_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            return it.next()?.parse::<u64>().ok().map(|p| p * 4096);
        }
    }
    None
}
