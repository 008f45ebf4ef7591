//! The move from the single shared schema to one schema per service: a
//! database with the old history and rows in flight comes out with every row
//! in its owner's schema, the payment summaries filled, each outbox holding
//! its own events, and nothing left behind in `public`.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use uuid::Uuid;

/// Applies the shared schema's history without the split, as a database
/// created before it has it.
async fn apply_history_before_the_split(pool: &PgPool) {
    let source = foodorder_testkit::repository_root().join("migrations/legacy");
    let history = std::env::temp_dir().join(format!("foodorder-history-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&history).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".sql") && !name.contains("split_into_service_schemas") {
            std::fs::copy(&path, history.join(name)).unwrap();
        }
    }
    let migrator = Migrator::new(history.as_path()).await.unwrap();
    std::fs::remove_dir_all(&history).unwrap();
    migrator.run(pool).await.unwrap();
}

/// The services' tables as PostgreSQL describes them: columns with types,
/// nullability and defaults, constraints, indexes.
async fn catalog(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT format('column %s.%s.%s %s null=%s default=%s', table_schema, table_name, column_name, \
                data_type, is_nullable, column_default) \
         FROM information_schema.columns \
         WHERE table_schema IN ('orders', 'payments', 'notifications') AND table_name <> '_sqlx_migrations' \
         UNION ALL \
         SELECT format('constraint %s.%s %s', n.nspname, c.conname, pg_get_constraintdef(c.oid)) \
         FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace \
         WHERE n.nspname IN ('orders', 'payments', 'notifications') \
           AND c.conrelid::regclass::text NOT LIKE '%_sqlx_migrations' \
         UNION ALL \
         SELECT format('index %s', indexdef) FROM pg_indexes \
         WHERE schemaname IN ('orders', 'payments', 'notifications') AND tablename <> '_sqlx_migrations' \
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn the_split_keeps_every_row_and_gives_each_service_its_own() {
    let (pool, _database) = foodorder_testkit::empty_database().await;
    apply_history_before_the_split(&pool).await;
    let (paid, waiting) = (Uuid::now_v7(), Uuid::now_v7());
    let attempt = Uuid::now_v7();
    for statement in [
        "INSERT INTO orders (id, customer_name, customer_email, status, total_amount, correlation_id) \
         VALUES ($1, 'Ada', 'ada@example.com', 'COMPLETED', 25.98, 'req-paid'), \
                ($2, 'Bob', 'bob@example.com', 'PROCESSING', 2.50, 'req-waiting')",
        "INSERT INTO order_items (order_id, menu_item_id, menu_item_name, quantity, unit_price, subtotal) \
         VALUES ($1, 1, 'Margherita Pizza', 2, 12.99, 25.98), ($2, 7, 'Coke', 1, 2.50, 2.50)",
        "INSERT INTO payment_attempts (id, order_id, status, amount, attempt_count, processing_time_ms) \
         VALUES ($3, $1, 'SUCCEEDED', 25.98, 1, 40)",
        "INSERT INTO gateway_ledger (charge_id, idempotency_key, amount, outcome) \
         VALUES (gen_random_uuid(), $1::text, 25.98, 'APPROVED')",
        "INSERT INTO notifications (id, order_id, event_id, kind, channel, recipient, payload) \
         VALUES (gen_random_uuid(), $1, 'e-1', 'ORDER_CONFIRMED', 'log', 'ada@example.com', '{}')",
        // Sent and unsent rows of both producers in the one shared outbox.
        "INSERT INTO outbox (topic, message_key, payload, headers, sent_at) VALUES \
         ('order.placed', $1::text, '\\x01', '{\"event-type\": \"foodorder.v1.OrderPlaced\"}', now()), \
         ('payment.completed', $1::text, '\\x02', '{\"event-type\": \"foodorder.v1.PaymentCompleted\"}', NULL), \
         ('order.placed', $2::text, '\\x03', '{\"event-type\": \"foodorder.v1.OrderPlaced\"}', NULL)",
    ] {
        sqlx::query(statement)
            .bind(paid)
            .bind(waiting)
            .bind(attempt)
            .execute(&pool)
            .await
            .unwrap_or_else(|error| panic!("{statement}: {error}"));
    }

    // The three services start together.
    let options = pool.connect_options();
    let migrated = tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join_all(
            crate::support::SCHEMAS
                .iter()
                .map(|schema| schema.migrate(&options)),
        ),
    )
    .await
    .expect("migrations finish within 60 s");
    for result in migrated {
        result.unwrap();
    }

    let left_in_public: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(left_in_public, ["_sqlx_migrations"]);
    for (sql, expected) in [
        ("SELECT count(*) FROM orders.orders", 2),
        ("SELECT count(*) FROM orders.order_items", 2),
        ("SELECT count(*) FROM orders.menu_items", 8),
        ("SELECT count(*) FROM payments.payment_attempts", 1),
        ("SELECT count(*) FROM payments.gateway_ledger", 1),
        ("SELECT count(*) FROM payments.payment_requests", 1),
        ("SELECT count(*) FROM notifications.notifications", 1),
        (
            "SELECT count(*) FROM orders.outbox WHERE headers ->> 'event-type' = 'foodorder.v1.OrderPlaced'",
            2,
        ),
        ("SELECT count(*) FROM orders.outbox", 2),
        (
            "SELECT count(*) FROM orders.outbox WHERE sent_at IS NULL",
            1,
        ),
        (
            "SELECT count(*) FROM payments.outbox WHERE headers ->> 'event-type' = 'foodorder.v1.PaymentCompleted' AND sent_at IS NULL",
            1,
        ),
        ("SELECT count(*) FROM payments.outbox", 1),
        (
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'orders_status_notify'",
            0,
        ),
    ] {
        assert_eq!(count(&pool, sql).await, expected, "{sql}");
    }
    let summary: (Uuid, String, i32) = sqlx::query_as(
        "SELECT payment_id, status, attempt_count FROM orders.order_payments WHERE order_id = $1",
    )
    .bind(paid)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(summary, (attempt, "SUCCEEDED".to_owned(), 1));
    // The moved outbox keeps numbering after the rows it took.
    let next: i64 = sqlx::query_scalar(
        "INSERT INTO payments.outbox (topic, message_key, payload) VALUES ('payment.completed', 'k', '\\x04') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let moved: i64 = count(&pool, "SELECT min(id) FROM payments.outbox").await;
    assert!(next > moved, "new id {next} after the moved {moved}");
    // The moved database has the very tables a new one gets.
    let (fresh, _fresh_database) = foodorder_testkit::empty_database().await;
    for schema in crate::support::SCHEMAS {
        schema.migrate(&fresh.connect_options()).await.unwrap();
    }
    let (moved_catalog, fresh_catalog) = (catalog(&pool).await, catalog(&fresh).await);
    let only_moved: Vec<_> = moved_catalog
        .iter()
        .filter(|line| !fresh_catalog.contains(line))
        .collect();
    let only_fresh: Vec<_> = fresh_catalog
        .iter()
        .filter(|line| !moved_catalog.contains(line))
        .collect();
    assert!(
        only_moved.is_empty() && only_fresh.is_empty(),
        "moved and new databases differ:\nonly moved: {only_moved:#?}\nonly new: {only_fresh:#?}"
    );
    assert!(
        moved_catalog.len() > 40,
        "the catalog was read: {moved_catalog:#?}"
    );
    // Starting again changes nothing.
    for schema in crate::support::SCHEMAS {
        schema.migrate(&options).await.unwrap();
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM orders.orders").await, 2);
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_new_database_never_gets_the_shared_schema() {
    let (pool, _database) = foodorder_testkit::empty_database().await;
    for schema in crate::support::SCHEMAS {
        schema.migrate(&pool.connect_options()).await.unwrap();
    }
    let public: i64 = count(
        &pool,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .await;
    assert_eq!(public, 0);
    let owned: Vec<(String, i64)> = sqlx::query_as(
        "SELECT table_schema::text, count(*) FROM information_schema.tables \
         WHERE table_schema IN ('orders', 'payments', 'notifications') AND table_name <> '_sqlx_migrations' \
         GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        owned,
        [
            ("notifications".to_owned(), 1),
            ("orders".to_owned(), 5),
            ("payments".to_owned(), 5)
        ]
    );
}
