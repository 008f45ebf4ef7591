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
