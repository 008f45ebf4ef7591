//! The broker is killed with SIGKILL and restarted, twice, while a steady load
//! of orders flows through the three real services: nothing is lost, doubled
//! or stuck. Every order the client saw accepted ends COMPLETED or FAILED with
//! one payment attempt, at most one charge (exactly one when COMPLETED) and
//! one notification, and no service exits. The broker is a private Apache
//! Kafka with its own durable data directory, so the restart keeps its records
//! and the groups' committed offsets, as a real broker's restart does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::Platform;
use foodorder_contract::v1::order_service_client::OrderServiceClient;
use foodorder_contract::v1::{OrderItemInput, PlaceOrderRequest};
use foodorder_testkit::{self as testing, PrivateBroker};
use tonic::transport::Channel;

/// How long each outage lasts.
const OUTAGE: Duration = Duration::from_secs(3);

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn broker_restarts_under_load_lose_and_double_nothing() {
    let (pool, _database) = foodorder_testkit::database(crate::support::SCHEMAS).await;
    let mut broker = PrivateBroker::start(testing::free_port()).await;
    let mut platform = Platform::start(
        &pool,
        &[
            ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap()),
            ("KAFKA_SESSION_TIMEOUT_MS", "6000".to_owned()),
        ],
        &[
            ("PAYMENT_MIN_LATENCY", "0".into()),
            ("PAYMENT_MAX_LATENCY", "0.05".into()),
            ("PAYMENT_DECLINE_RATE", "0.1".into()),
            ("PAYMENT_RNG_SEED", "11".into()),
        ],
    );
    let client = platform.client().await;
    let stop_load = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(place_orders_until(client, stop_load.clone()));

    let notified = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM notifications.notifications")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    testing::wait_for(
        "the first orders to be notified",
        Duration::from_secs(90),
        || async { (notified().await >= 10).then_some(()) },
    )
    .await;
    let watched = [
        (
            platform.payment_group.clone(),
            format!("{}order.placed", platform.prefix),
        ),
        (
            platform.notification_group.clone(),
            format!("{}payment.completed", platform.prefix),
        ),
    ];
    let offsets = |bootstrap: String| {
        let watched = watched.clone();
        tokio::task::spawn_blocking(move || {
            watched
                .iter()
                .map(|(group, topic)| testing::group_offsets(&bootstrap, group, topic))
                .collect::<Vec<_>>()
        })
    };
    for round in 1..=2 {
        // Commits run every 200 ms: wait until each group has committed
        // something, so that the restart has committed offsets to keep.
        let before_kill = testing::wait_for(
            &format!("both groups to commit before restart {round}"),
            Duration::from_secs(30),
            || async {
                let now = offsets(broker.bootstrap()).await.unwrap();
                now.iter()
                    .all(|group| group.values().any(|(committed, _)| *committed > 0))
                    .then_some(now)
            },
        )
        .await;
        broker.kill();
        tokio::time::sleep(OUTAGE).await;
        broker.restart().await;
        // What the groups had committed and what the topics held survived the restart.
        let after_restart = offsets(broker.bootstrap()).await.unwrap();
        for ((group, topic), (before, after)) in
            watched.iter().zip(before_kill.iter().zip(&after_restart))
        {
            assert!(
                before.values().any(|(committed, _)| *committed > 0),
                "{group} had committed offsets before restart {round}: {before:?}"
            );
            for (partition, (committed, high)) in before {
                let (committed_after, high_after) = after[partition];
                assert!(
                    committed_after >= *committed && high_after >= *high,
                    "{topic}[{partition}] for {group} after restart {round}: committed {committed} -> {committed_after}, \
                     high watermark {high} -> {high_after}"
                );
            }
        }
        let before = notified().await;
        testing::wait_for(
            &format!("notifications to resume after broker restart {round}"),
            Duration::from_secs(120),
            || async { (notified().await > before + 10).then_some(()) },
        )
        .await;
        platform.assert_running();
    }
    stop_load.store(true, Ordering::SeqCst);
    let placed = load.await.expect("the load task");
    assert!(
        placed.len() >= 40,
        "the load placed {} orders",
        placed.len()
    );

    let expected = placed.len() as i64;
    let finished = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM orders.orders WHERE status IN ('COMPLETED', 'FAILED')",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    testing::wait_for(
        &format!("all {expected} orders finished and notified after the restarts"),
        Duration::from_secs(180),
        || async { (notified().await == expected && finished().await == expected).then_some(()) },
    )
    .await;
    let rows: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT o.id::text, o.status, \
         (SELECT count(*) FROM payments.payment_attempts p WHERE p.order_id = o.id), \
         (SELECT count(*) FROM notifications.notifications n WHERE n.order_id = o.id), \
         (SELECT count(*) FROM payments.gateway_ledger g WHERE g.idempotency_key = o.id::text AND g.outcome = 'APPROVED') \
         FROM orders.orders o",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows.len(),
        placed.len(),
        "exactly the accepted orders exist"
    );
    for (order_id, status, attempts, notifications, charges) in &rows {
        assert!(placed.contains(order_id), "{order_id} was accepted");
        let expected_charges = match status.as_str() {
            "COMPLETED" => 1,
            "FAILED" => 0,
            other => panic!("{order_id} is stuck in {other}"),
        };
        assert_eq!(*attempts, 1, "{order_id}: one payment attempt");
        assert_eq!(*notifications, 1, "{order_id}: one notification");
        assert_eq!(*charges, expected_charges, "{order_id} ({status}): charges");
    }
    let unsent: i64 = sqlx::query_scalar("SELECT (SELECT count(*) FROM orders.outbox WHERE sent_at IS NULL) + (SELECT count(*) FROM payments.outbox WHERE sent_at IS NULL)")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(unsent, 0, "the outbox is drained");
    platform.assert_running();
    eprintln!(
        "broker restarted twice under load: {} orders placed, all terminal and notified once",
        placed.len()
    );
    let log_dir = platform.log_dir.clone();
    platform.terminate();
    Platform::remove_logs(&log_dir);
}

/// A careful client: about 20 orders a second until `stop`, each retried with
/// its idempotency key while the API answers UNAVAILABLE. Returns the ids the
/// API accepted.
async fn place_orders_until(
    mut client: OrderServiceClient<Channel>,
    stop: Arc<AtomicBool>,
) -> std::collections::BTreeSet<String> {
    let mut placed = std::collections::BTreeSet::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    let mut index = 0;
    while !stop.load(Ordering::SeqCst) {
        ticker.tick().await;
        index += 1;
        let request = PlaceOrderRequest {
            customer_name: format!("Customer {index}"),
            customer_email: format!("customer{index}@example.com"),
            items: vec![OrderItemInput {
                menu_item_id: index % 8 + 1,
                quantity: 1,
            }],
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        };
        for attempt in 0.. {
            match client.place_order(request.clone()).await {
                Ok(response) => {
                    placed.insert(response.into_inner().order.unwrap().id);
                    break;
                }
                Err(status) if status.code() == tonic::Code::Unavailable && attempt < 50 => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => panic!("PlaceOrder failed: {status:?}"),
            }
        }
    }
    placed
}
