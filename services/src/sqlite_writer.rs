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
//!
//! A second thread checkpoints the WAL (copies committed pages back into the database
//! file; `wal_autocheckpoint` is off, so nothing else does) every 250 ms, in passes.
//! SQLite restarts the WAL from its beginning only when a write transaction begins
//! while every frame is already copied back. A single pass beside a writer committing every ~0.5 ms almost never ends that way: under steady traffic the
//! WAL grew without end (800 MB after a minute of the 1:1 benchmark) and each
//! checkpoint, every lookup in the WAL index, and the latency tail grew with it. A
//! checkpoint on the writer thread itself would restart it, but holds up the next batch
//! for the whole copy and its two `fsync`s (7–12 ms at 5,000 msg/s). So the first
//! passes copy the bulk while writes go on, and the last, holding the write gate, copies
//! only what came in meanwhile (about a millisecond at 5,000 msg/s); the next write then
//! restarts the WAL.

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::db::SQLITE_PRAGMAS;

/// A job: runs on the writer thread with its connection.
type Job = Box<dyn FnOnce(&mut rusqlite::Connection) + Send>;

/// Settings of the writer's connection beyond the pool's (`SQLITE_PRAGMAS`): temporary
/// data in memory, never in temporary files, and a page cache of up to 64 MiB instead of
/// SQLite's 2 MiB. Every message updates a leaf of each index (conversation and seq,
/// sender and client id) and its conversation's row; with a thousand conversations
/// active that is thousands of hot pages, so with 2 MiB most statements re-read a page
/// from the file (`pread`: half of them gone with the larger cache at 1:1 saturation,
/// BENCHMARKS.md fix 18). The cache grows only as pages are used.
const WRITER_PRAGMAS: &str = "PRAGMA temp_store=MEMORY; PRAGMA cache_size=-65536;";

/// How often the WAL is checkpointed. Longer copies fewer pages in all (a page written
/// many times in between is copied once) but makes the WAL, and the part the second
/// pass copies with writers held off, larger.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// At most this many extra passes beside the writers, and the number of frames below
/// which a pass counts as short enough to stop: the pass that holds the writers off
/// then copies what came in during a pass of about a millisecond.
const MORE_PASSES: usize = 3;
const SMALL_PASS: i64 = 200;

/// The write gate: writes of this process take turns here (see [`crate::db::Db`]).
pub type Gate = Arc<tokio::sync::Mutex<()>>;

/// Handle to the writer thread; the thread ends when the last handle is dropped.
#[derive(Debug)]
pub struct SqliteWriter {
    jobs: mpsc::Sender<Job>,
    /// Dropped with the writer, which ends the checkpoint thread.
    _checkpoints: mpsc::Sender<()>,
}

/// The writer thread is gone (it cannot start, or the process is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the SQLite writer thread stopped")]
pub struct WriterGone;

impl SqliteWriter {
    /// Opens `path` (which the pool already created) and starts the writer and the
    /// checkpoint threads; `gate` is the write gate the checkpoint's second pass holds.
    ///
    /// # Errors
    /// When the database cannot be opened or a thread cannot be started.
    pub fn open(path: &Path, gate: Gate) -> Result<SqliteWriter, std::io::Error> {
        let open = || -> Result<rusqlite::Connection, std::io::Error> {
            let conn = rusqlite::Connection::open(path).map_err(std::io::Error::other)?;
            conn.execute_batch(SQLITE_PRAGMAS)
                .and_then(|()| conn.execute_batch(WRITER_PRAGMAS))
                .map_err(std::io::Error::other)?;
            Ok(conn)
        };
        let conn = open()?;
        conn.set_prepared_statement_cache_capacity(32);
        let checkpointer = open()?;
        let (checkpoints, stop) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("mqim-sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpointer, &gate, &stop))?;
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
        Ok(SqliteWriter {
            jobs,
            _checkpoints: checkpoints,
        })
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

/// The checkpoint thread's loop (see the module docs): every `CHECKPOINT_EVERY`, a
/// pass beside the writers, then, if anything was written since the last time, a short
/// pass holding the write gate. Ends when the writer is dropped.
fn checkpoint_loop(conn: &rusqlite::Connection, gate: &Gate, stop: &mpsc::Receiver<()>) {
    let mut last = None;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        let Some(mut pass) = checkpoint(conn, "beside writers") else {
            continue;
        };
        if Some(pass) == last {
            continue;
        }
        // More passes beside the writers while each still finds many new frames (a
        // long first pass under heavy load), so that the one that holds them off is short.
        for _ in 0..MORE_PASSES {
            let Some(next) = checkpoint(conn, "beside writers") else {
                break;
            };
            // `copied` counts from the WAL's beginning, which a restart moved.
            let fresh = if next.1 >= pass.1 {
                next.1 - pass.1
            } else {
                next.1
            };
            pass = next;
            if fresh < SMALL_PASS {
                break;
            }
        }
        let _held = gate.blocking_lock();
        last = checkpoint(conn, "writers held");
    }
}

/// One PASSIVE checkpoint: copies what it can without waiting for or blocking anyone
/// (frames a reader still needs stay for the next time). Returns the WAL's frames and
/// how many of them are copied, which change only when something was written.
fn checkpoint(conn: &rusqlite::Connection, pass: &'static str) -> Option<(i64, i64)> {
    let started = Instant::now();
    let r = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
    });
    match r {
        Ok((frames, copied)) => {
            tracing::trace!(
                pass,
                frames,
                copied,
                us = started.elapsed().as_micros() as u64,
                "WAL checkpoint"
            );
            Some((frames, copied))
        }
        Err(e) => {
            tracing::warn!(error = %e, "WAL checkpoint failed");
            None
        }
    }
}
