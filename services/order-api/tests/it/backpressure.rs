//! Backpressure: with no payment service, orders pile up awaiting payment;
//! past `ORDER_API_MAX_PENDING_ORDERS` PlaceOrder answers RESOURCE_EXHAUSTED
//! with a RetryInfo and writes nothing, while reads and readiness carry on;
//! once the orders are paid, orders are accepted again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use foodorder_contract::v1::{GetOrderRequest, OrderStatus};
use foodorder_testkit as testing;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{self, order_request, spawn_app_with, with_metadata};

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn place_order_is_refused_past_the_pending_bound_and_resumes_once_orders_finish() {
    let app = spawn_app_with(|config| {
        config.backpressure.max_pending = 5;
        config.backpressure.check_interval = Duration::from_millis(50);
    })
    .await;
    let client = app.client.clone();

    // No payment service: every accepted order stays PROCESSING. Place orders
    // until the poller has seen the bound and PlaceOrder refuses.
    let placed = Arc::new(Mutex::new(Vec::<String>::new()));
    let refusal = testing::wait_for(
        "PlaceOrder to be refused with RESOURCE_EXHAUSTED",
        Duration::from_secs(60),
        || {
            let (mut client, placed) = (client.clone(), placed.clone());
            async move {
                match client.place_order(order_request(&[(1, 1)])).await {
                    Ok(response) => {
                        let order = response.into_inner().order.unwrap();
                        placed.lock().unwrap().push(order.id);
                        None
                    }
                    Err(status) if status.code() == Code::ResourceExhausted => Some(status),
                    Err(status) => panic!("unexpected answer: {status:?}"),
                }
            }
        },
    )
    .await;
    let placed = placed.lock().unwrap().clone();
    assert!(
        placed.len() >= 5,
        "refused after only {} orders",
        placed.len()
    );
    assert!(
        refusal.message().starts_with("the platform is behind: ")
            && refusal.message().contains("orders await payment (limit 5)"),
        "{}",
        refusal.message()
    );
    let retry = refusal
        .get_error_details()
        .retry_info()
        .cloned()
        .expect("a RetryInfo in the status details")
        .retry_delay
        .expect("a retry delay");
    assert!(
        (Duration::from_secs(1)..=Duration::from_secs(30)).contains(&retry),
        "{retry:?}"
    );

    // A refused call writes nothing: no order, no outbox row, its key unused.
    let (orders, outbox) = (
        app.count("orders.orders").await,
        app.count("orders.outbox").await,
    );
    let refused = app
        .client
        .clone()
        .place_order(with_metadata(
            order_request(&[(2, 1)]),
            &[("idempotency-key", "refused-by-backpressure")],
        ))
        .await
        .expect_err("still over the bound");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(app.count("orders.orders").await, orders);
    assert_eq!(app.count("orders.outbox").await, outbox);
    let with_key: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders.orders WHERE idempotency_key = 'refused-by-backpressure'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(with_key, 0);

    // Reads go on, the instance stays ready, /healthz and the metrics say why.
    let order = app
        .client
        .clone()
        .get_order(GetOrderRequest {
            order_id: placed[0].clone(),
        })
        .await
        .expect("GetOrder is not refused")
        .into_inner()
        .order
        .unwrap();
    assert_eq!(order.status(), OrderStatus::Processing);
    let (code, ready) = testing::http_get(app.http_addr, "/readyz").await;
    assert_eq!(
        code, 200,
        "backpressure never makes the instance unready:\n{ready}"
    );
    let (_, health) = testing::http_get(app.http_addr, "/healthz").await;
    assert!(health.contains("backpressure: UNMET for "), "{health}");
    assert!(health.contains("rejecting PlaceOrder: "), "{health}");
    let (_, scrape) = testing::http_get(app.http_addr, "/metrics").await;
    let rejected = testing::metric_value(
        &scrape,
        "foodorder_place_order_rejected_total{reason=\"backpressure\"}",
    )
    .expect("the rejection counter");
    assert!(rejected >= 2.0, "{rejected}");
    let pending = testing::metric_value(&scrape, "foodorder_orders_pending").expect("the gauge");
    assert!(pending >= 5.0, "{pending}");

    // The payment outcomes arrive (as payment-service would send them): the
    // orders finish, the backlog drains, and orders are accepted again.
    for order_id in &placed {
        support::publish_payment_outcome(&app.kafka, order_id, "12.99", true).await;
    }
    let accepted = testing::wait_for(
        "PlaceOrder to be accepted again once the orders are paid",
        Duration::from_secs(60),
        || {
            let mut client = client.clone();
            async move {
                match client.place_order(order_request(&[(1, 1)])).await {
                    Ok(response) => Some(response.into_inner().order.unwrap()),
                    Err(status) if status.code() == Code::ResourceExhausted => None,
                    Err(status) => panic!("unexpected answer: {status:?}"),
                }
            }
        },
    )
    .await;
    assert_eq!(accepted.status(), OrderStatus::Processing);
    let finished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM orders.orders WHERE id = ANY($1::uuid[]) AND status = 'COMPLETED'",
    )
    .bind(
        placed
            .iter()
            .map(|id| uuid::Uuid::parse_str(id).unwrap())
            .collect::<Vec<_>>(),
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    // Accepting again means fewer than 90 % of 5 await payment: at most 4.
    assert!(
        finished as usize + 4 >= placed.len(),
        "acceptance resumed with {finished} of {} orders finished",
        placed.len()
    );
    let (_, health) = testing::http_get(app.http_addr, "/healthz").await;
    assert!(health.contains("accepting: "), "{health}");
    app.stop().await;
}
