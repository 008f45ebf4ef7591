//! The notification service in-process against a real PostgreSQL and broker:
//! one notification per order under duplicates, poison records dead-lettered.

use std::time::Duration;

use foodorder_common::config::{DatabaseConfig, KafkaConfig, Secret};
use foodorder_common::consumer::{DLQ_ERROR, DLQ_SOURCE_TOPIC};
use foodorder_common::{events, kafka, testing};
use foodorder_proto::v1::{OrderStatus, PaymentCompleted};
use notification_service::{Application, Config};
use prost::Message;
use rdkafka::producer::FutureRecord;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn config(kafka: KafkaConfig) -> Config {
    Config {
        database: DatabaseConfig {
            url: Secret::new(String::new()),
            max_connections: 5,
        },
        kafka,
        max_in_flight: 16,
        group_id: format!("notification-test-{}", Uuid::new_v4()),
        health_addr: "127.0.0.1:0".parse().unwrap(),
        shutdown_grace: Duration::from_secs(5),
    }
}

async fn insert_order(pool: &PgPool, status: &str) -> Uuid {
    let order_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO orders (id, customer_name, customer_email, status, total_amount, correlation_id) \
         VALUES ($1, 'Grace Hopper', 'grace@example.com', $2, 8.99, 'req-n')",
    )
    .bind(order_id)
    .bind(status)
    .execute(pool)
    .await
    .unwrap();
    order_id
}

fn payment_completed(order_id: Uuid, success: bool) -> Vec<u8> {
    PaymentCompleted {
        metadata: Some(events::metadata("req-n", "test", chrono::Utc::now())),
        order_id: order_id.to_string(),
        success,
        final_status: if success {
            OrderStatus::Completed
        } else {
            OrderStatus::Failed
        } as i32,
        attempt_count: 1,
        processing_time_ms: 7,
        error_message: if success {
            String::new()
        } else {
            "Insufficient funds".into()
        },
        amount: "8.99".into(),
        customer_email: "grace@example.com".into(),
        customer_name: "Grace Hopper".into(),
    }
    .encode_to_vec()
}

#[sqlx::test(migrator = "foodorder_common::db::MIGRATOR")]
async fn one_notification_per_order_and_poison_to_the_dlq(pool: PgPool) {
    foodorder_common::telemetry::init_for_tests();
    let kafka_config = testing::kafka_config();
    kafka::ensure_topics(&kafka_config, &kafka::platform_topics(&kafka_config))
        .await
        .unwrap();
    let producer = kafka::idempotent_producer(&kafka_config, "notification-test").unwrap();
    let paid = insert_order(&pool, "COMPLETED").await;
    let declined = insert_order(&pool, "FAILED").await;
    let topic = &kafka_config.topics.payment_completed;
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

    let application = Application::build_with_pool(config(kafka_config.clone()), pool.clone())
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(application.run_until_stopped(shutdown.clone()));

    let rows: Vec<(Uuid, String, String)> =
        testing::wait_for("both notifications", Duration::from_secs(60), || async {
            let rows: Vec<(Uuid, String, String)> =
                sqlx::query_as("SELECT order_id, kind, recipient FROM notifications ORDER BY kind")
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
        &kafka_config.topics.notification_dlq,
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

    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, 2, "duplicates sent nothing more");
    shutdown.cancel();
    handle.await.unwrap().unwrap();
}
