//! The whole flow with the three real binaries as processes, against the real
//! broker and PostgreSQL: orders placed over gRPC → paid → notified. Every order
//! ends terminal with exactly one payment attempt and one notification, WatchOrder
//! delivers PROCESSING then the terminal state, totals match the menu, and every
//! service exits 0 on SIGTERM.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use crate::support::Platform;
use foodorder_contract::v1::{
    ListMenuItemsRequest, OrderItemInput, OrderStatus, PlaceOrderRequest, WatchOrderRequest,
};
use foodorder_testkit as testing;
use rust_decimal::Decimal;
use tokio_stream::StreamExt;

const ORDERS: usize = 20;

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn orders_flow_from_the_api_to_the_notification() {
    let (pool, _database) = foodorder_testkit::database(crate::support::SCHEMAS).await;
    let platform = Platform::start(
        &pool,
        &[("SHUTDOWN_GRACE_SECONDS", "10".to_owned())],
        &[
            ("PAYMENT_MIN_LATENCY", "0.3".into()),
            ("PAYMENT_MAX_LATENCY", "0.6".into()),
            ("PAYMENT_DECLINE_RATE", "0.2".into()),
            ("PAYMENT_RNG_SEED", "7".into()),
        ],
    );
    let mut client = platform.client().await;
    let prices: HashMap<i32, Decimal> = client
        .list_menu_items(ListMenuItemsRequest {})
        .await
        .unwrap()
        .into_inner()
        .menu_items
        .into_iter()
        .map(|item| (item.id, item.price.parse().unwrap()))
        .collect();

    let mut watchers = Vec::new();
    let mut expected_totals = HashMap::new();
    for index in 0..ORDERS {
        let items = vec![
            OrderItemInput {
                menu_item_id: (index % 8) as i32 + 1,
                quantity: (index % 3) as i32 + 1,
            },
            OrderItemInput {
                menu_item_id: 7,
                quantity: 1,
            },
        ];
        let expected: Decimal = items
            .iter()
            .map(|item| prices[&item.menu_item_id] * Decimal::from(item.quantity))
            .sum();
        let order = client
            .place_order(PlaceOrderRequest {
                customer_name: format!("Customer {index}"),
                customer_email: format!("customer{index}@example.com"),
                items,
                idempotency_key: String::new(),
            })
            .await
            .expect("place order")
            .into_inner()
            .order
            .unwrap();
        let stream = client
            .watch_order(WatchOrderRequest {
                order_id: order.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        expected_totals.insert(order.id.clone(), expected);
        watchers.push((order.id, stream));
    }

    for (order_id, mut stream) in watchers {
        let mut statuses = Vec::new();
        let collect = async {
            while let Some(message) = stream.next().await {
                statuses.push(message.expect("watch message").order.unwrap().status());
            }
        };
        tokio::time::timeout(Duration::from_secs(90), collect)
            .await
            .expect("order reached a terminal state in 90 s");
        assert_eq!(
            statuses.first(),
            Some(&OrderStatus::Processing),
            "{order_id}: {statuses:?}"
        );
        assert_eq!(
            statuses.len(),
            2,
            "{order_id}: PROCESSING then terminal, got {statuses:?}"
        );
        assert!(
            matches!(statuses[1], OrderStatus::Completed | OrderStatus::Failed),
            "{order_id}: {statuses:?}"
        );
    }

    let rows: Vec<(String, String, Decimal, i64, i64, Option<Decimal>)> = sqlx::query_as(
        "SELECT o.id::text, o.status, o.total_amount, \
         (SELECT count(*) FROM payments.payment_attempts p WHERE p.order_id = o.id), \
         (SELECT count(*) FROM notifications.notifications n WHERE n.order_id = o.id), \
         (SELECT amount FROM payments.payment_attempts p WHERE p.order_id = o.id) FROM orders.orders o",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), ORDERS);
    for (order_id, status, total, attempts, _, amount) in &rows {
        assert!(
            status == "COMPLETED" || status == "FAILED",
            "{order_id} is {status}"
        );
        assert_eq!(*attempts, 1, "{order_id}: one payment attempt");
        assert_eq!(
            *total, expected_totals[order_id],
            "{order_id}: total matches the menu"
        );
        assert_eq!(
            amount.as_ref(),
            Some(total),
            "{order_id}: amount charged is the total"
        );
    }
    let notified = testing::wait_for(
        "one notification per order",
        Duration::from_secs(60),
        || async {
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications.notifications")
                .fetch_one(&pool)
                .await
                .unwrap();
            (count == ORDERS as i64).then_some(count)
        },
    )
    .await;
    assert_eq!(notified, ORDERS as i64);
    let statuses: BTreeSet<String> = rows.iter().map(|row| row.1.clone()).collect();
    assert!(
        statuses.contains("COMPLETED"),
        "some orders are paid: {statuses:?}"
    );

    let log_dir = platform.log_dir.clone();
    platform.terminate();

    let lines: Vec<serde_json::Value> = notification_lines(&log_dir);
    let notified_orders: Vec<&str> = lines
        .iter()
        .filter_map(|line| line["order_id"].as_str())
        .collect();
    assert_eq!(
        notified_orders.len(),
        ORDERS,
        "one notification log line per order"
    );
    assert_eq!(
        notified_orders.iter().collect::<BTreeSet<_>>().len(),
        ORDERS,
        "no order notified twice"
    );
    Platform::remove_logs(&log_dir);
}

fn notification_lines(log_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log_dir.join("notification-service.log"))
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == "notification sent")
        .collect()
}
