//! A payment-service process killed between the gateway charge and the commit
//! of the outcome, then restarted: the order is still charged exactly once.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use foodorder_common::testing;
use sqlx::PgPool;
use support::*;

fn payment_service(
    database_url: &str,
    kafka: &foodorder_common::config::KafkaConfig,
    group: &str,
    crash: bool,
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_payment-service"))
        .env("DATABASE_URL", database_url)
        .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.bootstrap_servers)
        .env(
            "KAFKA_TOPIC_PREFIX",
            kafka.topics.order_placed.trim_end_matches("order.placed"),
        )
        .env("PAYMENT_CONSUMER_GROUP", group)
        .env("PAYMENT_MIN_LATENCY", "0")
        .env("PAYMENT_MAX_LATENCY", "0")
        .env("PAYMENT_DECLINE_RATE", "0")
        .env("PAYMENT_HEALTH_ADDR", "127.0.0.1:0")
        .env(
            "PAYMENT_FAULT_CRASH_AFTER_CHARGE",
            if crash { "1" } else { "0" },
        )
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start payment-service")
}

#[sqlx::test(migrator = "foodorder_common::db::MIGRATOR")]
async fn crash_between_charge_and_commit_charges_once(pool: PgPool) {
    let kafka = testing::kafka_config();
    let producer = producer(&kafka).await;
    let order_id = insert_order(&pool).await;
    send_order_placed(&producer, &kafka, order_id).await;
    let database_url = database_url(&pool);
    let group = format!("payment-crash-{}", uuid::Uuid::new_v4());

    let mut crashing = payment_service(&database_url, &kafka, &group, true);
    let status = testing::wait_for(
        "the crashing payment-service to abort",
        Duration::from_secs(60),
        || {
            let exited = crashing.try_wait().expect("poll child");
            async move { exited }
        },
    )
    .await;
    assert!(!status.success(), "the process aborted");
    assert_eq!(
        ledger_rows(&pool, order_id).await,
        1,
        "charged before the crash"
    );
    assert_eq!(
        attempt_rows(&pool, order_id).await,
        0,
        "outcome not committed"
    );

    let mut restarted = payment_service(&database_url, &kafka, &group, false);
    let outcome = wait_for_payment(&pool, order_id).await;
    assert_eq!(
        (outcome.0.as_str(), outcome.1.as_str()),
        ("COMPLETED", "SUCCEEDED")
    );
    assert_eq!(ledger_rows(&pool, order_id).await, 1, "still one charge");
    assert_eq!(attempt_rows(&pool, order_id).await, 1);
    let _ = restarted.kill();
    let _ = restarted.wait();
}
