//! The notification service in-process against a real PostgreSQL and broker:
//! one notification per order under duplicates, poison records dead-lettered.
//! The orders exist only in the events: the service needs nothing else.

use std::time::Duration;

use foodorder_contract::events;
use foodorder_contract::v1::PaymentCompleted;
use foodorder_runtime::config::KafkaConfig;
use foodorder_runtime::consumer::{DLQ_ERROR, DLQ_SOURCE_TOPIC};
use foodorder_runtime::kafka;
use foodorder_testkit as testing;
use notification_service::Config;
use prost::Message;
use rdkafka::producer::FutureRecord;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn config(kafka: KafkaConfig) -> Config {
    let mut config = Config::for_tests();
    config.consumer.kafka = kafka;
    config.consumer.max_in_flight = 16;
    config
}

fn payment_completed(order_id: Uuid, success: bool) -> Vec<u8> {
    PaymentCompleted {
        metadata: Some(events::metadata("req-n", "test", chrono::Utc::now())),
        order_id: order_id.to_string(),
        customer_email: "grace@example.com".into(),
        customer_name: "Grace Hopper".into(),
        payment_id: Uuid::now_v7().to_string(),
        ..foodorder_testkit::fuzzing::seed_payment_completed(success)
    }
    .encode_to_vec()
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn one_notification_per_order_and_poison_to_the_dlq() {
    let (pool, _database) = foodorder_testkit::database(&[&notification_service::SCHEMA]).await;
    foodorder_runtime::telemetry::init_for_tests();
    let kafka_config = testing::kafka_config();
    foodorder_testkit::create_event_topics(&kafka_config)
        .await
        .unwrap();
    let producer = kafka::idempotent_producer(&kafka_config, "notification-test").unwrap();
    let paid = Uuid::now_v7();
    let declined = Uuid::now_v7();
    let topic = &kafka_config.topic(foodorder_contract::topics::PAYMENT_COMPLETED);
    let send = |key: String, payload: Vec<u8>| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .expect("produce");
        }
    };
    for _ in 0..3 {
        send(paid.to_string(), payment_completed(paid, true)).await;
    }
    send("garbage".into(), b"\x08\xff\xff".to_vec()).await;
    send(declined.to_string(), payment_completed(declined, false)).await;

    let application = notification_service::build(config(kafka_config.clone()), Some(pool.clone()))
        .await
        .unwrap();
    let http = application.http_addr();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(application.run_until_stopped(shutdown.clone()));

    let rows: Vec<(Uuid, String, String)> =
        testing::wait_for("both notifications", Duration::from_secs(60), || async {
            let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
                "SELECT order_id, kind, recipient FROM notifications.notifications ORDER BY kind",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            (rows.len() >= 2).then_some(rows)
        })
        .await;
    assert_eq!(
        rows,
        [
            (
                paid,
                "ORDER_CONFIRMED".to_owned(),
                "grace@example.com".to_owned()
            ),
            (
                declined,
                "PAYMENT_FAILED".to_owned(),
                "grace@example.com".to_owned()
            )
        ]
    );
    let dead = testing::collect_records_async(
        &kafka_config.bootstrap_servers,
        &kafka_config.topic(notification_service::DEAD_LETTER_TOPIC),
        kafka_config.dlq_partitions,
        1,
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].key, "garbage");
    assert_eq!(dead[0].headers[DLQ_SOURCE_TOPIC], *topic);
    assert!(dead[0].headers[DLQ_ERROR].contains("PaymentCompleted"));

    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications.notifications")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, 2, "duplicates sent nothing more");
    let (_, scrape) = testing::http_get(http, "/metrics").await;
    for (series, expected) in [
        (
            r#"foodorder_notifications_sent_total{kind="order_confirmed"}"#.to_owned(),
            1.0,
        ),
        (
            r#"foodorder_notifications_sent_total{kind="payment_failed"}"#.to_owned(),
            1.0,
        ),
        (
            format!(r#"foodorder_consumer_records_total{{topic="{topic}",outcome="processed"}}"#),
            2.0,
        ),
        (
            format!(r#"foodorder_consumer_records_total{{topic="{topic}",outcome="duplicate"}}"#),
            2.0,
        ),
        (
            format!(
                r#"foodorder_consumer_records_total{{topic="{topic}",outcome="dead_lettered"}}"#
            ),
            1.0,
        ),
    ] {
        assert_eq!(
            testing::metric_value(&scrape, &series),
            Some(expected),
            "{series}\n{scrape}"
        );
    }
    shutdown.cancel();
    handle.await.unwrap().unwrap();
}

/// Produces `count` PaymentCompleted records for new, successfully paid orders.
async fn produce_completed(kafka_config: &foodorder_runtime::config::KafkaConfig, count: usize) {
    let producer = kafka::idempotent_producer(kafka_config, "notification-test").unwrap();
    for _ in 0..count {
        let order_id = Uuid::now_v7();
        producer
            .send(
                FutureRecord::to(
                    &kafka_config.topic(foodorder_contract::topics::PAYMENT_COMPLETED),
                )
                .key(&order_id.to_string())
                .payload(&payment_completed(order_id, true)),
                Duration::from_secs(10),
            )
            .await
            .expect("produce");
    }
}

/// The sum of `foodorder_consumer_lag_records` over every partition in a scrape.
fn total_lag(scrape: &str) -> Option<f64> {
    let lags: Vec<f64> = scrape
        .lines()
        .filter(|line| line.starts_with("foodorder_consumer_lag_records{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!lags.is_empty()).then(|| lags.iter().sum())
}

/// The notification-backlog incident (`NOTIFICATION_SEND_DELAY`): the lag
/// metric rises while sends are slow and falls back to 0 once they caught up.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_slow_notifier_shows_as_lag_that_drains_back_to_zero() {
    let (pool, _database) = foodorder_testkit::database(&[&notification_service::SCHEMA]).await;
    foodorder_runtime::telemetry::init_for_tests();
    let kafka_config = testing::kafka_config();
    foodorder_testkit::create_event_topics(&kafka_config)
        .await
        .unwrap();
    let mut config = config(kafka_config.clone());
    config.consumer.max_in_flight = 1;
    config.incidents.send_delay = Duration::from_millis(700);
    let application = notification_service::build(config, Some(pool.clone()))
        .await
        .unwrap();
    let http = application.http_addr();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(application.run_until_stopped(shutdown.clone()));
    testing::wait_for(
        "the consumer to be ready",
        Duration::from_secs(60),
        || async { (testing::http_get(http, "/readyz").await.0 == 200).then_some(()) },
    )
    .await;
    produce_completed(&kafka_config, 20).await;

    let mut peak = 0.0_f64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (_, scrape) = testing::http_get(http, "/metrics").await;
        if let Some(lag) = total_lag(&scrape) {
            peak = peak.max(lag);
            if peak >= 5.0 && lag == 0.0 {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag should rise to 5 or more and fall back to 0 within 90 s (peak {peak}):\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications.notifications")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sent, 20, "the backlog drained: every notification went out");
    shutdown.cancel();
    handle.await.unwrap().unwrap();
}

/// The slow-leak incident (`NOTIFICATION_LEAK_BYTES_PER_MESSAGE`): resident
/// memory, exported as `process_resident_memory_bytes`, grows with the records handled.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_leak_shows_in_resident_memory() {
    let (pool, _database) = foodorder_testkit::database(&[&notification_service::SCHEMA]).await;
    foodorder_runtime::telemetry::init_for_tests();
    let kafka_config = testing::kafka_config();
    foodorder_testkit::create_event_topics(&kafka_config)
        .await
        .unwrap();
    let mut config = config(kafka_config.clone());
    config.incidents.leak_bytes_per_message = 4 * 1024 * 1024;
    let application = notification_service::build(config, Some(pool.clone()))
        .await
        .unwrap();
    let http = application.http_addr();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(application.run_until_stopped(shutdown.clone()));
    let (_, scrape) = testing::http_get(http, "/metrics").await;
    let before =
        testing::metric_value(&scrape, "process_resident_memory_bytes").expect("rss exported");
    produce_completed(&kafka_config, 25).await;
    let grown = testing::wait_for_metric(http, "process_resident_memory_bytes", |rss| {
        rss >= before + 80.0 * 1024.0 * 1024.0
    })
    .await;
    assert!(grown > before, "{before} -> {grown}");
    shutdown.cancel();
    handle.await.unwrap().unwrap();
}
