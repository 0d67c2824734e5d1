//! SQLite's writer thread: one OS thread that owns a rusqlite connection and runs whole
//! write jobs (a batch of messages, a flush of device cursors) on it.
//!
//! Why not sqlx for these: its SQLite driver runs every statement on the connection's
//! own thread and hands rows back through a channel, so a batch cost several thread
//! hand-offs, each a wait for a core on a busy 2-core machine (the 1:1 benchmark showed
//! the driver's thread a third of the time runnable but not running), and multi-row
//! statements made SQLite keep a statement journal. Here a job is one closure, sent
//! once and answered once, running prepared single-row statements in one transaction.
//! Everything else (reads, REST writes, migrations) stays on the sqlx pool; both share
//! the database file in WAL mode, and writes of this process take turns at the write
//! gate (see [`crate::db::Db`]).

use std::path::Path;
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::db::SQLITE_PRAGMAS;

/// A job: runs on the writer thread with its connection.
type Job = Box<dyn FnOnce(&mut rusqlite::Connection) + Send>;

/// Settings of the writer's connection beyond the pool's (`SQLITE_PRAGMAS`): temporary
/// data in memory, never in temporary files.
const WRITER_PRAGMAS: &str = "PRAGMA temp_store=MEMORY;";

/// Handle to the writer thread; the thread ends when the last handle is dropped.
#[derive(Debug)]
pub struct SqliteWriter {
    jobs: mpsc::Sender<Job>,
}

/// The writer thread is gone (it cannot start, or the process is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the SQLite writer thread stopped")]
pub struct WriterGone;

impl SqliteWriter {
    /// Opens `path` (which the pool already created) and starts the thread.
    ///
    /// # Errors
    /// When the database cannot be opened or the thread cannot be started.
    pub fn open(path: &Path) -> Result<SqliteWriter, std::io::Error> {
        let conn = rusqlite::Connection::open(path).map_err(std::io::Error::other)?;
        conn.execute_batch(SQLITE_PRAGMAS)
            .and_then(|()| conn.execute_batch(WRITER_PRAGMAS))
            .map_err(std::io::Error::other)?;
        conn.set_prepared_statement_cache_capacity(32);
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("mqim-sqlite-writer".into())
            .spawn(move || {
                let mut conn = conn;
                while let Ok(job) = rx.recv() {
                    // A panicking job loses only itself (its transaction rolls back as
                    // it unwinds); the thread goes on with the next.
                    let run = std::panic::AssertUnwindSafe(|| job(&mut conn));
                    if std::panic::catch_unwind(run).is_err() {
                        tracing::error!("a job on the SQLite writer thread panicked");
                    }
                }
            })?;
        Ok(SqliteWriter { jobs })
    }

    /// Runs `f` on the writer thread and returns its result. The caller holds the write
    /// gate while it runs (see [`crate::db::Db::write_job`]).
    ///
    /// # Errors
    /// [`WriterGone`] when the thread has stopped.
    pub async fn run<R, F>(&self, f: F) -> Result<R, WriterGone>
    where
        R: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> R + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |conn| {
                let _ = tx.send(f(conn));
            }))
            .map_err(|_| WriterGone)?;
        rx.await.map_err(|_| WriterGone)
    }
}
