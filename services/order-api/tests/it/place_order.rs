//! PlaceOrder against a real PostgreSQL and a real broker: rows, the published
//! event, validation that writes nothing, idempotent retries.

use std::time::Duration;

use crate::support::{order_request, spawn_app, with_metadata};
use foodorder_contract::v1::{OrderPlaced, OrderStatus, PlaceOrderRequest};
use prost::Message;
use tonic::Code;
use tonic_types::StatusExt;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn place_order_stores_rows_and_publishes_order_placed() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let request = with_metadata(
        order_request(&[(1, 2), (7, 1)]),
        &[
            ("x-request-id", "req-place-1"),
            ("traceparent", TRACEPARENT),
        ],
    );
    let response = client.place_order(request).await.expect("place order");
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "req-place-1"
    );
    let order = response.into_inner().order.unwrap();
    assert_eq!(order.status(), OrderStatus::Processing);
    assert_eq!(order.total_amount, "28.48");
    assert!(order.payment_attempts.is_empty());
    assert_eq!(order.correlation_id, "req-place-1");
    let lines: Vec<_> = order
        .items
        .iter()
        .map(|item| {
            (
                item.menu_item_id,
                item.menu_item_name.as_str(),
                item.quantity,
                item.unit_price.as_str(),
                item.subtotal.as_str(),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [
            (1, "Margherita Pizza", 2, "12.99", "25.98"),
            (7, "Coke", 1, "2.50", "2.50")
        ]
    );

    let (status, total, correlation): (String, rust_decimal::Decimal, String) = sqlx::query_as(
        "SELECT status, total_amount, correlation_id FROM orders.orders WHERE id = $1::uuid",
    )
    .bind(&order.id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (
            status.as_str(),
            total.to_string().as_str(),
            correlation.as_str()
        ),
        ("PROCESSING", "28.48", "req-place-1")
    );
    assert_eq!(app.count("orders.order_items").await, 2);
    assert_eq!(app.count("orders.outbox").await, 1);

    let records = app
        .order_placed_records(1, Duration::from_millis(500))
        .await;
    assert_eq!(records.len(), 1, "exactly one record");
    let record = &records[0];
    assert_eq!(record.key, order.id);
    assert_eq!(record.headers["content-type"], "application/x-protobuf");
    assert_eq!(record.headers["event-type"], "foodorder.v1.OrderPlaced");
    assert_eq!(record.headers["x-request-id"], "req-place-1");
    // Same trace as the caller's, continued by our own spans.
    let traceparent = &record.headers["traceparent"];
    assert_eq!(&traceparent[..35], &TRACEPARENT[..35], "{traceparent}");
    assert_ne!(traceparent, TRACEPARENT);
    let event = OrderPlaced::decode(record.payload.as_slice()).expect("decodes as OrderPlaced");
    let metadata = event.metadata.as_ref().unwrap();
    assert_eq!(metadata.correlation_id, "req-place-1");
    assert_eq!(metadata.schema_version, 1);
    assert!(uuid::Uuid::parse_str(&metadata.event_id).is_ok());
    assert_eq!(event.order_id, order.id);
    assert_eq!(event.total_amount, "28.48");
    assert_eq!(event.customer_email, "ada@example.com");
    assert_eq!(event.items.len(), 2);
    assert_eq!(
        (
            event.items[0].unit_price.as_str(),
            event.items[0].subtotal.as_str()
        ),
        ("12.99", "25.98")
    );

    app.wait_outbox_drained().await;
    app.stop().await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn generated_request_id_is_echoed_and_stored() {
    let app = spawn_app().await;
    let response = app
        .client
        .clone()
        .place_order(order_request(&[(8, 1)]))
        .await
        .unwrap();
    let echoed = response
        .metadata()
        .get("x-request-id")
        .expect("x-request-id echoed")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        uuid::Uuid::parse_str(&echoed).is_ok(),
        "generated id is a UUID: {echoed}"
    );
    assert_eq!(response.into_inner().order.unwrap().correlation_id, echoed);
    app.stop().await;
}

fn violations(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|bad_request| {
            bad_request
                .field_violations
                .iter()
                .map(|violation| violation.field.clone())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn invalid_requests_are_rejected_and_write_nothing() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let cases: Vec<(PlaceOrderRequest, Vec<&str>)> = vec![
        (
            PlaceOrderRequest {
                customer_name: " ".into(),
                ..order_request(&[(1, 1)])
            },
            vec!["customer_name"],
        ),
        (
            PlaceOrderRequest {
                customer_name: "x".repeat(101),
                ..order_request(&[(1, 1)])
            },
            vec!["customer_name"],
        ),
        (
            PlaceOrderRequest {
                customer_email: "nope".into(),
                ..order_request(&[(1, 1)])
            },
            vec!["customer_email"],
        ),
        (order_request(&[]), vec!["items"]),
        (
            order_request(&[(1, 0), (2, 100)]),
            vec!["items[0].quantity", "items[1].quantity"],
        ),
        (
            order_request(&[(1, 50), (1, 50)]),
            vec!["items[0].quantity"],
        ),
        (
            order_request(&[(1, 1), (999, 1)]),
            vec!["items[1].menu_item_id"],
        ),
        (order_request(&[(-3, 1)]), vec!["items[0].menu_item_id"]),
    ];
    for (request, expected_fields) in cases {
        let status = client
            .place_order(request.clone())
            .await
            .expect_err("must be rejected");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{request:?}: {status:?}"
        );
        assert_eq!(violations(&status), expected_fields, "{request:?}");
    }
    let status = client
        .place_order(with_metadata(
            order_request(&[(1, 1)]),
            &[("x-request-id", &"r".repeat(200))],
        ))
        .await
        .expect_err("long request id rejected");
    assert_eq!(status.code(), Code::InvalidArgument);

    sqlx::query("UPDATE orders.menu_items SET available = false WHERE id = 6")
        .execute(&app.pool)
        .await
        .unwrap();
    let status = client
        .place_order(order_request(&[(1, 1), (6, 2)]))
        .await
        .expect_err("unavailable item");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("Garlic Bread"),
        "{}",
        status.message()
    );
    let precondition = status
        .get_error_details()
        .precondition_failure()
        .cloned()
        .expect("precondition details");
    assert_eq!(precondition.violations[0].subject, "menu_items/6");

    for table in ["orders.orders", "orders.order_items", "orders.outbox"] {
        assert_eq!(app.count(table).await, 0, "{table} must stay empty");
    }
    app.stop().await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn idempotency_key_returns_the_original_order() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let request = PlaceOrderRequest {
        idempotency_key: "order-key-1".into(),
        ..order_request(&[(2, 1), (3, 2)])
    };
    let first = client
        .place_order(request.clone())
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let retry = client
        .place_order(request.clone())
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(first.id, retry.id);
    assert_eq!(first.total_amount, retry.total_amount);
    assert_eq!(first.items.len(), retry.items.len());

    // The same key in metadata is the same key.
    let by_metadata = client
        .place_order(with_metadata(
            order_request(&[(3, 2), (2, 1)]),
            &[("idempotency-key", "order-key-1")],
        ))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(by_metadata.id, first.id, "line order does not matter");

    let conflict = client
        .place_order(PlaceOrderRequest {
            idempotency_key: "order-key-1".into(),
            ..order_request(&[(2, 2)])
        })
        .await
        .expect_err("same key, different request");
    assert_eq!(conflict.code(), Code::AlreadyExists);

    // Concurrent first calls with one key create one order.
    let concurrent = PlaceOrderRequest {
        idempotency_key: "order-key-2".into(),
        ..order_request(&[(5, 1)])
    };
    let calls = (0..8).map(|_| {
        let mut client = client.clone();
        let request = concurrent.clone();
        async move {
            client
                .place_order(request)
                .await
                .unwrap()
                .into_inner()
                .order
                .unwrap()
                .id
        }
    });
    let ids = futures::future::join_all(calls).await;
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");

    assert_eq!(app.count("orders.orders").await, 2);
    assert_eq!(app.count("orders.outbox").await, 2);
    let records = app.order_placed_records(2, Duration::from_secs(1)).await;
    assert_eq!(records.len(), 2, "one event per order");
    app.stop().await;
}
