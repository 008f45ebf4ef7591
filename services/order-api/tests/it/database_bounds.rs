//! The database deadlines every service's connections carry (the runtime's
//! `db` module, as the order API uses it): statement, lock and
//! idle-in-transaction timeouts on each pooled connection, timeouts read as
//! transient; migrations not cut by the statement timeout, their lock waits
//! bounded and clearly reported.

use std::time::Duration;

use foodorder_runtime::config::{DatabaseConfig, DatabaseTimeouts};
use foodorder_runtime::db::{self, Schema};
use sqlx::migrate::Migrator;

fn config(timeouts: DatabaseTimeouts) -> DatabaseConfig {
    DatabaseConfig {
        timeouts,
        ..DatabaseConfig::for_tests()
    }
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn pooled_connections_carry_the_deadlines() {
    let (pool, _database) = foodorder_testkit::database(&[&order_api::SCHEMA]).await;
    let bounded = db::reopen(
        &pool,
        &config(DatabaseTimeouts {
            statement: Duration::from_millis(300),
            lock: Duration::from_millis(200),
            idle_in_transaction: Duration::from_secs(7),
            ..DatabaseTimeouts::default()
        }),
        2,
    );
    for (setting, expected) in [
        ("statement_timeout", "300ms"),
        ("lock_timeout", "200ms"),
        ("idle_in_transaction_session_timeout", "7s"),
        ("tcp_keepalives_idle", "30"),
    ] {
        let value: String = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(&bounded)
            .await
            .unwrap();
        assert_eq!(value, expected, "{setting}");
    }

    let slow = sqlx::query("SELECT pg_sleep(5)")
        .execute(&bounded)
        .await
        .expect_err("cut by the statement timeout");
    assert_eq!(
        slow.as_database_error()
            .and_then(|error| error.code())
            .as_deref(),
        Some("57014")
    );
    assert!(db::is_unavailable(&slow) && db::is_timeout(&slow), "{slow}");

    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE orders.menu_items IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let waited = sqlx::query("SELECT count(*) FROM orders.menu_items")
        .execute(&bounded)
        .await
        .expect_err("the lock wait is given up");
    assert_eq!(
        waited
            .as_database_error()
            .and_then(|error| error.code())
            .as_deref(),
        Some("55P03")
    );
    assert!(
        db::is_unavailable(&waited) && db::is_timeout(&waited),
        "{waited}"
    );
    lock.rollback().await.unwrap();
}

/// A migrator over `migrations` (version, SQL), from files in a fresh directory.
async fn migrator(migrations: &[(i64, &str)]) -> Migrator {
    let directory = std::env::temp_dir().join(format!("migrations-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&directory).unwrap();
    for (version, sql) in migrations {
        std::fs::write(directory.join(format!("{version}_step.sql")), sql).unwrap();
    }
    let migrator = Migrator::new(directory.as_path()).await.unwrap();
    std::fs::remove_dir_all(&directory).unwrap();
    migrator
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn migrations_outlast_the_statement_timeout_and_bound_their_lock_waits() {
    let (pool, _database) = foodorder_testkit::empty_database().await;
    let timeouts = DatabaseTimeouts {
        statement: Duration::from_millis(200),
        migration_lock: Duration::from_millis(500),
        ..DatabaseTimeouts::default()
    };
    let first = [(
        1,
        "CREATE TABLE bounds.steps (id int PRIMARY KEY); SELECT pg_sleep(1);",
    )];
    let slow = Schema::new("bounds", migrator(&first).await);
    slow.migrate_with(&pool.connect_options(), &timeouts)
        .await
        .expect("a migration longer than the statement timeout runs to its end");

    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE bounds.steps IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let both = [
        first[0],
        (2, "ALTER TABLE bounds.steps ADD COLUMN label text;"),
    ];
    let blocked = Schema::new("bounds", migrator(&both).await);
    let started = std::time::Instant::now();
    let error = blocked
        .migrate_with(&pool.connect_options(), &timeouts)
        .await
        .expect_err("the migration's lock wait is bounded");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up after {:?}",
        started.elapsed()
    );
    let message = format!("{error:#}");
    assert!(
        message.contains("waited more than 500ms for a lock"),
        "{message}"
    );
    lock.rollback().await.unwrap();
    blocked
        .migrate_with(&pool.connect_options(), &timeouts)
        .await
        .expect("the migration runs once the lock is released");
    let columns: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns \
         WHERE table_schema = 'bounds' AND table_name = 'steps'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(columns, 2);
}
