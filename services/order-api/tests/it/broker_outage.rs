//! Orders committed while the broker is unreachable are published once it is
//! back: nothing lost, nothing duplicated. Uses a private Apache Kafka broker that the
//! test starts late, on a port where nothing listened before.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::{order_request, spawn_app, spawn_app_with};
use foodorder_runtime::config::KafkaConfig;
use foodorder_testkit::{self as testing, PrivateBroker};

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn orders_placed_while_the_broker_is_down_are_published_once_it_is_back() {
    let port = testing::free_port();
    let kafka = KafkaConfig::local(&format!("127.0.0.1:{port}"), &testing::unique_prefix());
    let app = spawn_app_with(|config| config.kafka = kafka).await;
    let mut client = app.client.clone();

    let mut placed = BTreeSet::new();
    for _ in 0..5 {
        let order = client
            .place_order(order_request(&[(2, 1)]))
            .await
            .expect("accepted without a broker");
        placed.insert(order.into_inner().order.unwrap().id);
    }
    let unsent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders.outbox WHERE sent_at IS NULL")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(unsent, 5, "nothing can be marked sent without a broker");

    let broker = PrivateBroker::start(port).await;
    app.wait_outbox_drained().await;
    let records = testing::collect_records_async(
        &broker.bootstrap(),
        &app.kafka.topic(foodorder_contract::topics::ORDER_PLACED),
        app.kafka.event_partitions,
        placed.len(),
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .await;
    let keys: Vec<String> = records.iter().map(|record| record.key.clone()).collect();
    assert_eq!(keys.len(), placed.len(), "no duplicates: {keys:?}");
    assert_eq!(keys.into_iter().collect::<BTreeSet<_>>(), placed, "no loss");
    app.stop().await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_record_the_broker_refuses_for_good_is_parked_and_the_rest_go_out() {
    let app = spawn_app().await;
    // Larger than any record the producer may send: it can never be published.
    sqlx::query(
        "INSERT INTO orders.outbox (topic, message_key, payload) VALUES ($1, 'too-large', $2)",
    )
    .bind(app.kafka.topic(foodorder_contract::topics::ORDER_PLACED))
    .bind(vec![0_u8; 2 * 1024 * 1024])
    .execute(&app.pool)
    .await
    .unwrap();
    let mut client = app.client.clone();
    let order = client
        .place_order(order_request(&[(1, 1)]))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    app.wait_outbox_drained().await;
    let (parked, reason): (bool, Option<String>) = sqlx::query_as(
        "SELECT parked_at IS NOT NULL, park_reason FROM orders.outbox WHERE message_key = 'too-large'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(parked, "the unpublishable row is parked");
    assert!(
        reason
            .as_deref()
            .is_some_and(|reason| reason.contains("size")),
        "{reason:?}"
    );
    let records = app
        .order_placed_records(1, Duration::from_millis(500))
        .await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key, order.id, "the order's event went out");
    app.stop().await;
}

/// A relay whose idempotent producer hit a fatal error (librdkafka refuses
/// every record after one) replaces it and publishes everything, once each.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_relay_whose_producer_hit_a_fatal_error_replaces_it() {
    let (pool, _database) = foodorder_testkit::database(&[&order_api::SCHEMA]).await;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use foodorder_runtime::kafka;
    use foodorder_runtime::outbox::{OutboxRelay, RelayConfig};

    foodorder_runtime::telemetry::init_for_tests();
    let config = testing::kafka_config();
    foodorder_testkit::create_event_topics(&config)
        .await
        .unwrap();
    let topic = config
        .topic(foodorder_contract::topics::ORDER_PLACED)
        .clone();
    let producer = kafka::idempotent_producer(&config, "fatal-test").unwrap();
    testing::inject_fatal_error(&producer, "injected by the test");
    let renewals = Arc::new(AtomicUsize::new(0));
    let relay = OutboxRelay::new(
        pool.clone(),
        &order_api::SCHEMA,
        producer,
        RelayConfig {
            topics: vec![topic.clone()],
            max_backoff: Duration::from_millis(500),
            ..RelayConfig::default()
        },
    )
    .renewing_producer_with(Box::new({
        let (config, renewals) = (config.clone(), renewals.clone());
        move || {
            renewals.fetch_add(1, Ordering::SeqCst);
            kafka::idempotent_producer(&config, "fatal-test")
        }
    }));
    let keys: BTreeSet<String> = (0..3).map(|index| format!("fatal-{index}")).collect();
    for key in &keys {
        sqlx::query("INSERT INTO orders.outbox (topic, message_key, payload) VALUES ($1, $2, $3)")
            .bind(&topic)
            .bind(key)
            .bind(key.as_bytes())
            .execute(&pool)
            .await
            .unwrap();
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    testing::wait_for(
        "every outbox row to be sent",
        Duration::from_secs(60),
        || async {
            let unsent: i64 =
                sqlx::query_scalar("SELECT count(*) FROM orders.outbox WHERE sent_at IS NULL")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            (unsent == 0).then_some(())
        },
    )
    .await;
    assert!(
        renewals.load(Ordering::SeqCst) >= 1,
        "the producer was replaced"
    );
    let records = testing::collect_records_async(
        &config.bootstrap_servers,
        &topic,
        config.event_partitions,
        keys.len(),
        Duration::from_secs(30),
        Duration::from_secs(2),
    )
    .await;
    let published: Vec<String> = records.into_iter().map(|record| record.key).collect();
    assert_eq!(published.len(), keys.len(), "each row once: {published:?}");
    assert_eq!(published.into_iter().collect::<BTreeSet<_>>(), keys);
    shutdown.cancel();
    running.await.unwrap();
}
