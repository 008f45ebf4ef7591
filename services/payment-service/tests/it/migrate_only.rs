//! `payment-service --migrate-only`, what a Kubernetes init container runs
//! before the service's new version starts: it brings the `payments` schema up
//! to date on an empty database and exits 0 without serving anything; a
//! misspelt argument is refused instead of starting the service.

use std::time::{Duration, Instant};

use crate::support::*;

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn migrate_only_migrates_the_schema_and_exits() {
    let (pool, _database) = foodorder_testkit::empty_database().await;
    let exists = "SELECT to_regclass('payments.payment_attempts') IS NOT NULL";
    let before: bool = sqlx::query_scalar(exists).fetch_one(&pool).await.unwrap();
    assert!(!before, "the database starts empty");
    // A misspelt argument fails at once instead of starting the service.
    let typo = std::process::Command::new(env!("CARGO_BIN_EXE_payment-service"))
        .arg("--migrate_only")
        .env("DATABASE_URL", database_url(&pool))
        .env("PAYMENT_HEALTH_ADDR", "127.0.0.1:0")
        .env("LOG_LEVEL", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start payment-service --migrate_only");
    let typo_status = wait_bounded(typo, "payment-service --migrate_only").await;
    assert!(!typo_status.success(), "an unknown argument is refused");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_payment-service"))
        .arg("--migrate-only")
        .env("DATABASE_URL", database_url(&pool))
        // Nothing else is configured: a migration needs no broker and no port.
        .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("PAYMENT_HEALTH_ADDR", "127.0.0.1:0")
        .env("LOG_LEVEL", "warn")
        .spawn()
        .expect("start payment-service --migrate-only");
    let status = wait_bounded(child, "payment-service --migrate-only").await;
    assert!(status.success(), "exit status {status}");
    let after: bool = sqlx::query_scalar(exists).fetch_one(&pool).await.unwrap();
    assert!(
        after,
        "payments.payment_attempts exists after --migrate-only"
    );
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payments._sqlx_migrations WHERE success")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        applied as usize,
        std::fs::read_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../migrations/payments"
        ))
        .unwrap()
        .filter(|entry| entry
            .as_ref()
            .unwrap()
            .path()
            .extension()
            .is_some_and(|e| e == "sql"))
        .count(),
        "every migration of the payments folder applied"
    );
}

/// Waits up to 60 s for `child` to exit; kills it and fails the test otherwise.
async fn wait_bounded(mut child: std::process::Child, what: &str) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{what} still running after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
