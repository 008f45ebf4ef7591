//! The order API's `payment.completed` consumer: it moves orders to their final
//! status once, serves the payment summary, and dead-letters what it cannot use.

use std::time::Duration;

use foodorder_contract::v1::{GetOrderRequest, OrderStatus, PaymentStatus};
use foodorder_runtime::consumer::DLQ_ERROR;
use foodorder_testkit as testing;

use crate::support::{self, order_request, spawn_app};

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn payment_outcomes_finish_orders_once_and_poison_is_dead_lettered() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let mut placed = Vec::new();
    for _ in 0..3 {
        let order = client
            .place_order(order_request(&[(1, 1)]))
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap();
        placed.push(order.id);
    }
    let (paid, failed, underpaid) = (&placed[0], &placed[1], &placed[2]);
    // The first outcome wins; a later, contradicting copy changes nothing.
    support::publish_payment_outcome(&app.kafka, paid, "12.99", true).await;
    support::publish_payment_outcome(&app.kafka, paid, "12.99", true).await;
    support::publish_payment_outcome(&app.kafka, failed, "12.99", false).await;
    support::publish_payment_outcome(&app.kafka, failed, "12.99", true).await;
    // A payment that does not pay the order's total (12.99), an order this API
    // never stored, and bytes that are no event.
    support::publish_payment_outcome(&app.kafka, underpaid, "1.00", true).await;
    let stranger = uuid::Uuid::new_v4().to_string();
    support::publish_payment_outcome(&app.kafka, &stranger, "12.99", true).await;
    support::publish_payment_completed(&app.kafka, "garbage", b"\x0a\xff".to_vec()).await;

    for (id, status, payment) in [
        (paid, OrderStatus::Completed, PaymentStatus::Succeeded),
        (failed, OrderStatus::Failed, PaymentStatus::Failed),
    ] {
        let order = testing::wait_for(
            &format!("order {id} to be {status:?}"),
            Duration::from_secs(60),
            || {
                let mut client = client.clone();
                async move {
                    let order = client
                        .get_order(GetOrderRequest {
                            order_id: id.clone(),
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .order
                        .unwrap();
                    (order.status() == status).then_some(order)
                }
            },
        )
        .await;
        assert_eq!(order.payment_attempts.len(), 1);
        assert_eq!(order.payment_attempts[0].status(), payment);
        assert_eq!(order.payment_successful, status == OrderStatus::Completed);
    }
    let dead = testing::collect_records_async(
        &app.kafka.bootstrap_servers,
        &app.kafka.topic(order_api::DEAD_LETTER_TOPIC),
        app.kafka.dlq_partitions,
        3,
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .await;
    let mut reasons: Vec<(String, &str)> = dead
        .iter()
        .map(|record| {
            let error = &record.headers[DLQ_ERROR];
            let why = if error.contains("does not exist") {
                "unknown order"
            } else if error.contains("does not pay") {
                "wrong amount"
            } else {
                "undecodable"
            };
            (record.key.clone(), why)
        })
        .collect();
    reasons.sort();
    let mut expected = vec![
        ("garbage".to_owned(), "undecodable"),
        (stranger, "unknown order"),
        (underpaid.clone(), "wrong amount"),
    ];
    expected.sort();
    assert_eq!(reasons, expected);
    // Every record was consumed (the contradicting copies included), and the
    // duplicates changed nothing.
    support::wait_until_consumed(
        &app.kafka.bootstrap_servers,
        &app.group,
        &app.kafka
            .topic(foodorder_contract::topics::PAYMENT_COMPLETED),
        7,
    )
    .await;
    for (id, status) in [
        (paid, OrderStatus::Completed),
        (failed, OrderStatus::Failed),
        (underpaid, OrderStatus::Processing),
    ] {
        let order = client
            .get_order(GetOrderRequest {
                order_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap();
        assert_eq!(order.status(), status, "{id} kept its first outcome");
        assert_eq!(
            order.payment_attempts.len(),
            usize::from(status != OrderStatus::Processing)
        );
    }
    // The duplicates were consumed and changed nothing.
    let summaries: i64 = sqlx::query_scalar("SELECT count(*) FROM orders.order_payments")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(summaries, 2);
    app.stop().await;
}
