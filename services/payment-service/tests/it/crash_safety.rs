//! A payment-service process killed between the gateway charge and the commit
//! of the outcome, then restarted: the order is still charged exactly once.

use std::time::Duration;

use crate::support::*;
use foodorder_testkit as testing;

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn crash_between_charge_and_commit_charges_once() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    let kafka = testing::kafka_config();
    let producer = producer(&kafka).await;
    let order_id = new_order_id();
    send_order_placed(&producer, &kafka, order_id).await;
    let database_url = database_url(&pool);
    let group = format!("payment-crash-{}", uuid::Uuid::new_v4());

    let mut crashing = spawn_process(
        &database_url,
        &kafka,
        &group,
        &[("PAYMENT_FAULT_CRASH_AFTER_CHARGE", "1")],
    );
    let status = testing::wait_for(
        "the crashing payment-service to abort",
        Duration::from_secs(60),
        || {
            let exited = crashing.child.try_wait().expect("poll child");
            async move { exited }
        },
    )
    .await;
    assert!(!status.success(), "the process aborted");
    assert_eq!(
        charges(&pool, order_id).await,
        1,
        "charged before the crash"
    );
    assert_eq!(
        attempt_rows(&pool, order_id).await,
        0,
        "outcome not committed"
    );

    let mut restarted = spawn_process(&database_url, &kafka, &group, &[]);
    let outcome = wait_for_payment(&pool, order_id).await;
    assert_eq!(
        (outcome.0.as_str(), outcome.1.as_str()),
        ("COMPLETED", "SUCCEEDED")
    );
    assert_eq!(charges(&pool, order_id).await, 1, "still one charge");
    assert_eq!(attempt_rows(&pool, order_id).await, 1);
    let _ = restarted.child.kill();
    let _ = restarted.child.wait();
}

/// A payment-service killed between two retries of a failing gateway, then
/// restarted: the redelivered record continues the retry budget instead of
/// starting it again — PAYMENT_MAX_RETRIES calls in all — and the attempt
/// count reported includes the first process's calls.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_restart_between_retries_keeps_the_gateway_call_budget() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    let kafka = testing::kafka_config();
    let producer = producer(&kafka).await;
    let order_id = new_order_id();
    send_order_placed(&producer, &kafka, order_id).await;
    let database_url = database_url(&pool);
    let group = format!("payment-budget-{}", uuid::Uuid::new_v4());
    // Every call hangs and is cut at 0.2 s; retries come 5 s and 10 s later.
    let failing = [
        ("PAYMENT_TIMEOUT_RATE", "1"),
        ("PAYMENT_TIMEOUT", "0.2"),
        ("PAYMENT_MAX_RETRIES", "3"),
        ("PAYMENT_RETRY_BASE_DELAY", "5"),
    ];
    let mut first = spawn_process(&database_url, &kafka, &group, &failing);
    testing::wait_for(
        "two gateway calls counted by the first process",
        Duration::from_secs(60),
        || async { (gateway_calls(&pool, order_id).await == 2).then_some(()) },
    )
    .await;
    let _ = first.child.kill();
    let _ = first.child.wait();
    assert_eq!(
        attempt_rows(&pool, order_id).await,
        0,
        "nothing recorded yet"
    );

    let http = std::net::SocketAddr::from(([127, 0, 0, 1], testing::free_port()));
    let http_setting = http.to_string();
    let mut restarted_env = failing.to_vec();
    restarted_env.push(("PAYMENT_HEALTH_ADDR", http_setting.as_str()));
    let mut restarted = spawn_process(&database_url, &kafka, &group, &restarted_env);
    let (order, attempt, attempts, error) = wait_for_payment(&pool, order_id).await;
    let (_, scrape) = testing::http_get(http, "/metrics").await;
    assert_eq!(
        testing::metric_value(
            &scrape,
            "foodorder_payment_gateway_call_duration_seconds_count{result=\"timeout\"}"
        ),
        Some(1.0),
        "the restarted process made one call, not three:\n{scrape}"
    );
    assert_eq!((order.as_str(), attempt.as_str()), ("FAILED", "FAILED"));
    assert_eq!(attempts, 3, "the first process's two calls are counted");
    assert_eq!(
        error.as_deref(),
        Some("Payment gateway timeout after 3 attempts")
    );
    assert_eq!(
        gateway_calls(&pool, order_id).await,
        3,
        "one call by the restarted process, not three"
    );
    assert_eq!(charges(&pool, order_id).await, 0);
    let _ = restarted.child.kill();
    let _ = restarted.child.wait();
}

/// Gateway calls counted for an order across its deliveries.
async fn gateway_calls(pool: &sqlx::PgPool, order_id: uuid::Uuid) -> i32 {
    sqlx::query_scalar("SELECT gateway_calls FROM payments.payment_requests WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(pool)
        .await
        .unwrap()
        .unwrap_or(0)
}
