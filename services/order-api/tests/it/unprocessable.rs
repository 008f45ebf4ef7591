//! The order API's `order.unprocessable` consumer: the owner of orders
//! decides what an order id the payment service could not process becomes.

use std::time::Duration;

use foodorder_contract::topics::ORDER_UNPROCESSABLE;
use foodorder_contract::v1::{GetOrderRequest, OrderStatus, PaymentStatus};
use foodorder_runtime::consumer::DLQ_ERROR;
use foodorder_testkit as testing;

use crate::support::{self, order_request, spawn_app};

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn an_unprocessable_order_fails_and_an_unknown_id_goes_nowhere() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let mut placed = Vec::new();
    for _ in 0..2 {
        let order = client
            .place_order(order_request(&[(1, 1)]))
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap();
        placed.push(order.id);
    }
    let (waiting, paid) = (&placed[0], &placed[1]);
    support::publish_payment_outcome(&app.kafka, paid, "12.99", true).await;
    // The outcome first (another group reads it): a declaration for an order
    // already paid must change nothing.
    testing::wait_for(
        "the paid order to complete",
        Duration::from_secs(60),
        || {
            let mut client = client.clone();
            let id = paid.clone();
            async move {
                let order = client
                    .get_order(GetOrderRequest { order_id: id })
                    .await
                    .ok()?
                    .into_inner()
                    .order?;
                (order.status() == OrderStatus::Completed).then_some(())
            }
        },
    )
    .await;
    let stranger = uuid::Uuid::new_v4().to_string();
    let hostile_reason = "value is not a valid OrderPlaced\n\u{1b}[31m";
    for id in [waiting, paid, &stranger] {
        support::publish(
            &app.kafka,
            ORDER_UNPROCESSABLE,
            id,
            support::order_unprocessable(id, hostile_reason),
        )
        .await;
    }
    // A second copy of a declaration changes nothing; bytes that are no
    // event are dead-lettered.
    support::publish(
        &app.kafka,
        ORDER_UNPROCESSABLE,
        waiting,
        support::order_unprocessable(waiting, "again"),
    )
    .await;
    support::publish(
        &app.kafka,
        ORDER_UNPROCESSABLE,
        "garbage",
        b"\x0a\xff".to_vec(),
    )
    .await;

    let failed = testing::wait_for(
        "the order awaiting payment to fail",
        Duration::from_secs(60),
        || {
            let mut client = client.clone();
            let id = waiting.clone();
            async move {
                let order = client
                    .get_order(GetOrderRequest { order_id: id })
                    .await
                    .unwrap()
                    .into_inner()
                    .order
                    .unwrap();
                (order.status() == OrderStatus::Failed).then_some(order)
            }
        },
    )
    .await;
    assert_eq!(failed.payment_attempts.len(), 1);
    let summary = &failed.payment_attempts[0];
    assert_eq!(summary.status(), PaymentStatus::Failed);
    assert_eq!(summary.attempt_count, 0);
    assert!(!failed.payment_successful);
    assert!(
        summary
            .error_message
            .contains("value is not a valid OrderPlaced"),
        "{summary:?}"
    );
    assert!(
        !summary.error_message.chars().any(char::is_control),
        "no control character is stored or served: {:?}",
        summary.error_message
    );

    // Every record consumed: then the paid order is still paid, the stranger
    // left no trace, and only the garbage reached the DLQ.
    support::wait_until_consumed(
        &app.kafka.bootstrap_servers,
        &format!("{}.unprocessable", app.group),
        &app.kafka.topic(ORDER_UNPROCESSABLE),
        5,
    )
    .await;
    let order = client
        .get_order(GetOrderRequest {
            order_id: paid.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(
        order.status(),
        OrderStatus::Completed,
        "a paid order stays paid"
    );
    let stranger_rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM orders.orders WHERE id = $1::uuid) \
         + (SELECT count(*) FROM orders.order_payments WHERE order_id = $1::uuid)",
    )
    .bind(&stranger)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(stranger_rows, 0, "an id that is no order changes nothing");
    let dead = testing::collect_records_async(
        &app.kafka.bootstrap_servers,
        &app.kafka.topic(order_api::DEAD_LETTER_TOPIC),
        app.kafka.dlq_partitions,
        1,
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .await;
    let keys: Vec<(&str, bool)> = dead
        .iter()
        .map(|record| {
            (
                record.key.as_str(),
                record.headers[DLQ_ERROR].contains("OrderUnprocessable"),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [("garbage", true)],
        "only the undecodable record is dead-lettered"
    );
    let (_, scrape) = testing::http_get(app.http_addr, "/metrics").await;
    // Two consumers in one service share their metric families: each is
    // described once (a second HELP line is an invalid exposition).
    let mut described = std::collections::HashSet::new();
    for line in scrape.lines().filter(|line| line.starts_with("# HELP ")) {
        let name = line.split_whitespace().nth(2).unwrap_or_default();
        assert!(
            described.insert(name.to_owned()),
            "{name} is described twice"
        );
    }
    for (outcome, expected) in [
        ("failed", 1.0),
        ("already_final", 2.0),
        ("unknown_order", 1.0),
    ] {
        assert_eq!(
            testing::metric_value(
                &scrape,
                &format!("foodorder_orders_unprocessable_total{{outcome=\"{outcome}\"}}")
            ),
            Some(expected),
            "{outcome}"
        );
    }
    app.stop().await;
}
