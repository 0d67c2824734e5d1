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
