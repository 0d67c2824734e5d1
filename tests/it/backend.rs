//! Storage backends: the suite really runs on the backend it was asked for (with
//! `TEST_POSTGRES_URL` set, PostgreSQL, never a silent fallback to SQLite), and
//! `mqim migrate` creates the schema there and is idempotent.

use mqim_tests::{command, fresh_database_url, postgres_admin_url, start_server};
use sqlx::{Connection, Row};

/// Migration files for `backend` (`sqlite` or `postgres`) in the repository.
fn migration_count(backend: &str) -> i64 {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../migrations")
        .join(backend);
    std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sql")
        })
        .count() as i64
}

#[tokio::test]
async fn server_runs_on_the_requested_backend() {
    let s = start_server().await;
    let expected = if postgres_admin_url().is_some() {
        "backend=Postgres"
    } else {
        "backend=Sqlite"
    };
    let log = s.log_text();
    assert!(log.contains(expected), "expected {expected} in:\n{log}");
}

#[tokio::test]
async fn migrate_creates_the_schema_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database_url(dir.path()).await;
    for run in 1..=2 {
        let out = command()
            .arg("migrate")
            .env("MQIM_DATA_DIR", dir.path())
            .env("MQIM_DATABASE_URL", &url)
            .env("RUST_LOG", "info")
            .output()
            .await
            .unwrap();
        let log = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "migrate run {run} failed:\n{log}");
        assert!(log.contains("migrations applied"), "{log}");
    }
    // Every embedded migration is recorded as applied, and the tables exist.
    let query = "SELECT (SELECT COUNT(*) FROM _sqlx_migrations WHERE success) AS applied, \
                 (SELECT COUNT(*) FROM users) AS users";
    let (applied, users): (i64, i64) = if postgres_admin_url().is_some() {
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        let r = sqlx::query(query).fetch_one(&mut c).await.unwrap();
        (r.get("applied"), r.get("users"))
    } else {
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let r = sqlx::query(query).fetch_one(&mut c).await.unwrap();
        (r.get("applied"), r.get("users"))
    };
    let backend = if postgres_admin_url().is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(applied, migration_count(backend));
    assert_eq!(users, 0);
}

/// PostgreSQL restarts, failovers and idle-connection killers drop the server's
/// connections under it. The message writer's lane and the pool test a connection
/// before each use, so the next sends are stored and acked on fresh connections, and
/// none of them is refused, lost or given a seq out of turn. (PostgreSQL only: SQLite
/// has no server to drop connections.)
#[tokio::test]
async fn sends_go_on_after_postgresql_drops_the_servers_connections() {
    use mqim_proto::{Format, ServerFrame};
    let Some(admin) = postgres_admin_url() else {
        eprintln!("SKIPPED PART: PostgreSQL only (TEST_POSTGRES_URL unset)");
        return;
    };
    let s = start_server().await;
    let (a, b) = s.register_friends("alice", "bob").await;
    let mut sender = s.mqtt(&a, Some("phone")).await;
    let mut bob = s.mqtt(&b, Some("web")).await;
    for (c, u) in [(&mut sender, &a), (&mut bob, &b)] {
        let t = format!("im/u/{}/in/json", u.id);
        assert_eq!(c.subscribe_ok(&[&t]).await, [true]);
    }
    let database = s
        .database_url
        .rsplit('/')
        .next()
        .and_then(|d| d.split('?').next())
        .unwrap()
        .to_owned();
    let mut seqs = Vec::new();
    for round in 0..3 {
        // Two messages on the connections as they are…
        for k in 0..2 {
            let cmid = format!("r{round}-{k}");
            sender
                .send_frame(a.id, Format::Json, &mqim_tests::text(&cmid, b.id, "hi"))
                .await;
            let (_, f) = sender
                .recv_frame_where(|f| {
                    matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. })
                })
                .await;
            match f {
                ServerFrame::Ack { seq, .. } => seqs.push(seq),
                other => panic!("send {cmid} (round {round}): {other:?}"),
            }
        }
        // …then PostgreSQL drops every connection of mqim's database.
        let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
        let dropped: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()) t",
        )
        .bind(&database)
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get("n");
        assert!(dropped >= 1, "mqim had no connection to drop");
        let _ = c.close().await;
    }
    assert_eq!(seqs, (1..=6).collect::<Vec<i64>>(), "acked seqs in turn");
    // Bob got each of them once, in order.
    let mut got = Vec::new();
    while got.len() < 6 {
        let (_, f) = bob
            .recv_frame_where(|f| matches!(f, ServerFrame::Message(_)))
            .await;
        if let ServerFrame::Message(m) = f {
            got.push(m.seq);
        }
    }
    assert_eq!(got, (1..=6).collect::<Vec<i64>>());
}
