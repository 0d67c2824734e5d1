//! Database access: one sqlx `Any` pool for SQLite or PostgreSQL, chosen by URL.
//!
//! Queries are written once, in the SQL both engines accept (`$1` placeholders,
//! `RETURNING`, `ON CONFLICT`), and run at run time, so one repository API serves both
//! backends and CI runs the whole suite against each. Values crossing the boundary are
//! kept to the types `Any` maps faithfully: `i64`, `f64`, `String`, `Option` of those.
//! Times are unix milliseconds (`i64`).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

use crate::sqlite_writer::{Gate, SqliteWriter, WriterGone};

use crate::config::{redact_url, Config};

/// Migrations for each backend, embedded at build time.
static SQLITE: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("../migrations/postgres");

/// Which engine the pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite (the default, embedded).
    Sqlite,
    /// PostgreSQL (for scale-out).
    Postgres,
}

/// SQLite settings for every connection. WAL: readers never block the writer.
/// synchronous=NORMAL is durable against a killed process (not power loss).
/// wal_autocheckpoint=0: the committing writer would otherwise copy the WAL back into
/// the database inside its commit every 1,000 pages (a stall of several ms on the
/// message path); a thread of its own does it instead ([`crate::sqlite_writer`]).
/// journal_size_limit: after a burst grew the WAL, it is cut back to 64 MiB when it
/// restarts.
pub(crate) const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; \
                              PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON; \
                              PRAGMA wal_autocheckpoint=0; \
                              PRAGMA journal_size_limit=67108864;";

/// The pool and its backend.
#[derive(Debug, Clone)]
pub struct Db {
    /// Connection pool.
    pub pool: AnyPool,
    /// Which engine.
    pub backend: Backend,
    /// SQLite has one writer at a time. Write transactions of this process queue here
    /// (FIFO, woken at once) rather than in SQLite's busy handler, which polls with
    /// sleeps of up to 100 ms and turned lock contention into latency spikes. The WAL
    /// checkpoint's last pass holds it too, so that the next write restarts the WAL.
    write_gate: Gate,
    /// SQLite: the thread that runs message batches and cursor flushes (see
    /// [`Db::write_job`]), and with it the WAL checkpoint thread.
    writer: Option<Arc<SqliteWriter>>,
    /// PostgreSQL: connections of the message writer and the cursor flushes alone (see
    /// [`Db::begin_message_write`]), so that they never wait for one of `pool`'s.
    message_lane: Option<AnyPool>,
}

/// Connections of the PostgreSQL message lane: one for the message writer's batches,
/// one for the delivery cursors' flushes, which run beside it.
const MESSAGE_LANE_CONNECTIONS: u32 = 2;

/// A write transaction (see [`Db::begin_write`]); dereferences to the connection, so
/// `&mut *tx` is an executor. Dropped without [`WriteTx::commit`], it rolls back.
pub struct WriteTx {
    /// Which engine (for SQL that differs).
    pub backend: Backend,
    tx: sqlx::Transaction<'static, sqlx::Any>,
    _gate: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    /// Commits (and lets the next writer in).
    ///
    /// # Errors
    /// Database errors.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }
}

/// Errors opening the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Connecting failed.
    #[error("cannot open database {url}: {source}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// The cause.
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The SQLite writer thread could not start.
    #[error("cannot open the SQLite writer on {0}: {1}")]
    Writer(String, std::io::Error),
    /// The data directory could not be created.
    #[error("cannot create data directory {0}: {1}")]
    DataDir(String, std::io::Error),
}

impl Db {
    /// Opens the database named by the configuration (creating the SQLite file and data
    /// directory if needed). Does not migrate.
    ///
    /// # Errors
    /// When the database cannot be reached or created.
    pub async fn connect(config: &Config) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| DbError::DataDir(config.data_dir.display().to_string(), e))?;
        let url = config.database_url();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let err = |source| DbError::Connect {
            url: redact_url(&url),
            source,
        };
        let opts = AnyConnectOptions::from_str(&url).map_err(err)?;
        // SQLite's writer thread opens the same file (an in-memory database is refused
        // by the configuration: each connection would see a database of its own).
        let file = match backend {
            Backend::Sqlite => Some(
                sqlx::sqlite::SqliteConnectOptions::from_str(&url)
                    .map_err(err)?
                    .get_filename()
                    .to_path_buf(),
            ),
            Backend::Postgres => None,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(config.database.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            // A ping before every acquire is a round trip to the connection's thread
            // (SQLite) or the server: ~1 ms under load on the message writer's path.
            // SQLite connections do not go stale; PostgreSQL ones can, so it stays there.
            .test_before_acquire(backend == Backend::Postgres)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(SQLITE_PRAGMAS).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts.clone())
            .await
            .map_err(err)?;
        // On PostgreSQL the message writer shared `pool` with everything else, and
        // when 2,000 devices subscribed at once their backlog queries and device
        // records held all its connections: the first batches of sends waited 40–180
        // ms for one (BENCHMARKS.md, "mqim on PostgreSQL"). Its own connections, opened now
        // so that the first send does not wait for a connect, keep that from
        // happening. (SQLite's message writes have a thread of their own instead.)
        let message_lane = match backend {
            Backend::Postgres => Some(
                AnyPoolOptions::new()
                    .max_connections(MESSAGE_LANE_CONNECTIONS)
                    .min_connections(1)
                    .acquire_timeout(Duration::from_secs(10))
                    .test_before_acquire(true)
                    .connect_with(opts)
                    .await
                    .map_err(err)?,
            ),
            Backend::Sqlite => None,
        };
        let write_gate: Gate = Arc::default();
        let writer = match file {
            Some(f) => Some(Arc::new(
                SqliteWriter::open(&f, write_gate.clone())
                    .map_err(|e| DbError::Writer(redact_url(&url), e))?,
            )),
            None => None,
        };
        Ok(Db {
            pool,
            backend,
            write_gate,
            writer,
            message_lane,
        })
    }

    /// Applies pending migrations.
    ///
    /// # Errors
    /// When a migration fails or the applied ones differ from the embedded ones.
    pub async fn migrate(&self) -> Result<(), DbError> {
        match self.backend {
            Backend::Sqlite => SQLITE.run(&self.pool).await?,
            Backend::Postgres => POSTGRES.run(&self.pool).await?,
        }
        Ok(())
    }

    /// SQLite: runs `f` on the writer thread, holding the write gate,
    /// and returns its result; `f` opens and commits its own transaction (dropping a
    /// rusqlite transaction uncommitted rolls it back). `None` on PostgreSQL: write
    /// through [`Db::begin_write`] instead.
    ///
    /// # Errors
    /// When the writer thread has stopped.
    pub async fn write_job<R, F>(&self, f: F) -> Option<Result<R, WriterGone>>
    where
        R: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> R + Send + 'static,
    {
        let writer = self.writer.as_ref()?;
        // The job keeps the gate until it has run, also if this future is dropped.
        let gate = self.write_gate.clone().lock_owned().await;
        Some(
            writer
                .run(move |conn| {
                    let r = f(conn);
                    drop(gate);
                    r
                })
                .await,
        )
    }

    /// On SQLite, waits for this process's turn to write and holds it until the guard is
    /// dropped; `None` on PostgreSQL. For a single writing statement run straight on the
    /// pool (no transaction): without the turn it would meet the writer thread's
    /// transactions in SQLite's busy handler, which sleeps up to 100 ms at a time — on
    /// both sides, so a device record written during a backlog drain could hold up the
    /// next message batch.
    pub async fn write_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match self.backend {
            Backend::Sqlite => Some(self.write_gate.clone().lock_owned().await),
            Backend::Postgres => None,
        }
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads first and writes later
    /// fails with SQLITE_BUSY, without waiting, when another connection wrote in
    /// between; taking the lock up front makes it wait its turn (`busy_timeout`) instead.
    ///
    /// # Errors
    /// Database errors.
    pub async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => {
                let gate = self.write_gate.clone().lock_owned().await;
                let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
                Ok(WriteTx {
                    backend: Backend::Sqlite,
                    tx,
                    _gate: Some(gate),
                })
            }
            Backend::Postgres => Ok(WriteTx {
                backend: Backend::Postgres,
                tx: self.pool.begin().await?,
                _gate: None,
            }),
        }
    }

    /// [`Db::begin_write`] for the message writer and the cursor flushes: on
    /// PostgreSQL on connections of their own (the message lane), which no other query
    /// can hold up; on SQLite the same as `begin_write` (those writes run on the writer
    /// thread, [`Db::write_job`], so this is the fallback only).
    ///
    /// # Errors
    /// Database errors.
    pub async fn begin_message_write(&self) -> Result<WriteTx, sqlx::Error> {
        match &self.message_lane {
            Some(lane) => Ok(WriteTx {
                backend: self.backend,
                tx: lane.begin().await?,
                _gate: None,
            }),
            None => self.begin_write().await,
        }
    }

    /// Closes the pool and the message lane (at shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
        if let Some(lane) = &self.message_lane {
            lane.close().await;
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

/// Whether `e` is a unique-constraint violation (on either backend).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.is_unique_violation()
                || d.code().as_deref() == Some("23505")
                || d.message().contains("UNIQUE constraint failed")
        }
        _ => false,
    }
}

/// Escapes `%`, `_` and `\` for a `LIKE … ESCAPE '\'` prefix pattern.
pub fn like_prefix(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 1);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fresh(name: &str) -> (Db, std::path::PathBuf) {
        let mut cfg = Config::load(None).expect("defaults");
        cfg.data_dir = std::env::temp_dir().join(format!(
            "mqim-db-{name}-{}-{}",
            std::process::id(),
            crate::now_ms()
        ));
        cfg.database.url = String::new();
        let db = Db::connect(&cfg).await.expect("connect");
        sqlx::query("CREATE TABLE t (x TEXT)")
            .execute(&db.pool)
            .await
            .expect("create");
        (db, cfg.data_dir.join("mqim.db"))
    }

    fn size(path: &std::path::Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    /// The message writer's connection has its large page cache (64 MiB, not SQLite's
    /// 2 MiB): with thousands of hot index pages the small one re-read most pages from
    /// the file (sqlite_writer.rs, `WRITER_PRAGMAS`).
    #[tokio::test]
    async fn the_writer_connection_has_a_large_page_cache() {
        let (db, _file) = fresh("cache").await;
        let size = db
            .write_job(|c| c.query_row("PRAGMA cache_size", [], |r| r.get::<_, i64>(0)))
            .await
            .expect("SQLite has a writer thread")
            .expect("writer running")
            .expect("pragma");
        assert_eq!(size, -65536, "cache_size of the writer connection");
        db.pool.close().await;
    }

    /// With `wal_autocheckpoint=0`, only the checkpoint thread moves committed pages
    /// from the WAL into the database file, also those written through the pool: if
    /// it did not, the file would never grow.
    #[tokio::test]
    async fn pool_writes_are_checkpointed() {
        let (db, file) = fresh("checkpoint").await;
        let before = size(&file);
        for _ in 0..20 {
            let mut tx = db.begin_write().await.expect("begin");
            for _ in 0..50 {
                sqlx::query("INSERT INTO t (x) VALUES ($1)")
                    .bind("x".repeat(1000))
                    .execute(&mut *tx)
                    .await
                    .expect("insert");
            }
            tx.commit().await.expect("commit");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while size(&file) < before + 900_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "WAL never checkpointed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        db.pool.close().await;
    }

    /// Under a steady stream of write jobs (~10 MB/s for 4 s) the WAL restarts from
    /// its beginning again and again, so its file stays a fraction of what was written
    /// (a single checkpoint pass racing with the commits let it grow by all of it).
    #[tokio::test]
    async fn the_wal_stays_small_under_a_steady_stream_of_write_jobs() {
        let (db, file) = fresh("wal-restart").await;
        let wal = file.with_file_name("mqim.db-wal");
        let (mut largest, mut written) = (0, 0u64);
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(4) {
            db.write_job(|conn| {
                let tx = conn.transaction()?;
                {
                    let mut insert = tx.prepare_cached("INSERT INTO t (x) VALUES (?1)")?;
                    for _ in 0..10 {
                        insert.execute(["y".repeat(2000)])?;
                    }
                }
                tx.commit()
            })
            .await
            .expect("sqlite has a writer thread")
            .expect("writer thread runs")
            .expect("insert");
            written += 20_000;
            largest = largest.max(size(&wal));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(
            size(&file) > written / 2,
            "the rows were copied into the database file: {} of {written} bytes",
            size(&file)
        );
        assert!(
            largest < written / 2,
            "WAL grew to {largest} bytes of {written} written: it seldom or never restarted"
        );
        db.pool.close().await;
    }
}
