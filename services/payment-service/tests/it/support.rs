//! Test harness: orders inserted straight into a per-test database, OrderPlaced
//! records produced to fresh topics on the real broker, and the payment service
//! run in-process (or as a real process for the crash test).

#![allow(dead_code)]

use std::time::Duration;

use foodorder_contract::events;
use foodorder_contract::v1::{OrderPlaced, OrderPlacedItem, PaymentCompleted};
use foodorder_runtime::config::KafkaConfig;
use foodorder_runtime::kafka;
use foodorder_testkit::{self as testing, ServiceProcess};
use payment_service::Config;
use prost::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The test settings (see `Config::for_tests`) on `kafka`, declining with `decline_rate`.
pub fn test_config(kafka: KafkaConfig, decline_rate: f64) -> Config {
    let mut config = Config::for_tests();
    config.consumer.kafka = kafka;
    config.consumer.database.max_connections = 10;
    config.gateway.decline_rate = decline_rate;
    config
}

/// A running in-process payment service.
pub struct TestService {
    /// The HTTP endpoint: /healthz, /readyz, /metrics.
    pub http: std::net::SocketAddr,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

pub async fn spawn_service(pool: PgPool, config: Config) -> TestService {
    foodorder_runtime::telemetry::init_for_tests();
    let application = payment_service::build(config, Some(pool))
        .await
        .expect("build payment service");
    let http = application.http_addr();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(application.run_until_stopped(shutdown.clone()));
    TestService {
        http,
        shutdown,
        handle,
    }
}

impl TestService {
    /// Whether the service task has ended.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("payment service did not stop within 30 s")
            .expect("payment service panicked")
            .expect("payment service failed");
    }
}

/// A new order's id: the payment service knows orders from their events alone.
pub fn new_order_id() -> Uuid {
    Uuid::now_v7()
}

/// An order whose OrderPlaced an earlier delivery already handed to the
/// service (its request is stored, as the first delivery stores it); its
/// payment may still be in flight.
pub async fn known_order(pool: &PgPool) -> Uuid {
    let order_id = new_order_id();
    sqlx::query(
        "INSERT INTO payments.payment_requests (order_id, amount, customer_name, customer_email, correlation_id) \
         VALUES ($1, 25.98, 'Ada Lovelace', 'ada@example.com', $2)",
    )
    .bind(order_id)
    .bind(format!("req-{order_id}"))
    .execute(pool)
    .await
    .unwrap();
    order_id
}

/// The OrderPlaced event of an order (2 × Margherita Pizza = 25.98).
pub fn order_placed(order_id: Uuid) -> OrderPlaced {
    OrderPlaced {
        metadata: Some(events::metadata(
            &format!("req-{order_id}"),
            "test",
            chrono::Utc::now(),
        )),
        order_id: order_id.to_string(),
        customer_name: "Ada Lovelace".into(),
        customer_email: "ada@example.com".into(),
        total_amount: "25.98".into(),
        items: vec![OrderPlacedItem {
            menu_item_id: 1,
            menu_item_name: "Margherita Pizza".into(),
            quantity: 2,
            unit_price: "12.99".into(),
            subtotal: "25.98".into(),
        }],
    }
}

/// Creates the topics and returns a producer for test records.
pub async fn producer(kafka: &KafkaConfig) -> FutureProducer {
    foodorder_testkit::create_event_topics(kafka)
        .await
        .expect("create topics");
    kafka::idempotent_producer(kafka, "payment-test-producer").unwrap()
}

/// Produces raw bytes with `key` and the standard headers of an OrderPlaced.
pub async fn send_raw(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    correlation_id: &str,
) {
    let headers = events::standard_headers::<OrderPlaced>(
        correlation_id,
        &[(
            "traceparent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        )]
        .into(),
    );
    let record = FutureRecord::to(topic)
        .key(key)
        .payload(payload)
        .headers(kafka::to_kafka_headers(&headers));
    producer
        .send(record, Duration::from_secs(10))
        .await
        .expect("produce test record");
}

/// Produces the OrderPlaced event of `order_id`.
pub async fn send_order_placed(producer: &FutureProducer, kafka: &KafkaConfig, order_id: Uuid) {
    let payload = order_placed(order_id).encode_to_vec();
    send_raw(
        producer,
        &kafka.topic(foodorder_contract::topics::ORDER_PLACED),
        &order_id.to_string(),
        &payload,
        &format!("req-{order_id}"),
    )
    .await;
}

/// Waits until the order has a payment attempt; returns (the order's final
/// status in the PaymentCompleted event stored with it, attempt status,
/// attempt_count, error).
pub async fn wait_for_payment(
    pool: &PgPool,
    order_id: Uuid,
) -> (String, String, i32, Option<String>) {
    let (attempt, attempts, error, event): (String, i32, Option<String>, Vec<u8>) =
        testing::wait_for(
            &format!("a payment attempt for order {order_id}"),
            Duration::from_secs(60),
            || async {
                sqlx::query_as(
                    "SELECT p.status, p.attempt_count, p.error_message, o.payload \
                     FROM payments.payment_attempts p \
                     JOIN payments.outbox o ON o.message_key = p.order_id::text WHERE p.order_id = $1",
                )
                .bind(order_id)
                .fetch_optional(pool)
                .await
                .unwrap()
            },
        )
        .await;
    let event =
        PaymentCompleted::decode(event.as_slice()).expect("a PaymentCompleted in the outbox");
    assert_eq!(event.order_id, order_id.to_string());
    let status = event
        .final_status()
        .as_str_name()
        .trim_start_matches("ORDER_STATUS_")
        .to_owned();
    (status, attempt, attempts, error)
}

/// Number of rows matching `sql` with one bind.
pub async fn count(pool: &PgPool, sql: &str, order_id: Uuid) -> i64 {
    sqlx::query_scalar(sql)
        .bind(order_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// DATABASE_URL of this test's own database (for a service run as a process).
pub fn database_url(pool: &PgPool) -> String {
    let base = foodorder_testkit::database_url();
    let database = pool
        .connect_options()
        .get_database()
        .expect("test database name")
        .to_owned();
    let (prefix, _) = base.rsplit_once('/').expect("DATABASE_URL has a path");
    format!("{prefix}/{database}")
}

/// Reads `payment.completed` until `expected` records arrived (then `grace` more for extras).
pub async fn payment_completed_records(
    kafka: &KafkaConfig,
    expected: usize,
    grace: Duration,
) -> Vec<testing::Record> {
    testing::collect_records_async(
        &kafka.bootstrap_servers,
        &kafka.topic(foodorder_contract::topics::PAYMENT_COMPLETED),
        kafka.event_partitions,
        expected,
        Duration::from_secs(60),
        grace,
    )
    .await
}

/// Charges the gateway made for an order (APPROVED decisions in its ledger).
pub async fn charges(pool: &PgPool, order_id: Uuid) -> i64 {
    count(
        pool,
        "SELECT count(*) FROM payments.gateway_ledger WHERE idempotency_key = $1::text AND outcome = 'APPROVED'",
        order_id,
    )
    .await
}

/// The gateway's decisions for an order, oldest first (APPROVED, DECLINED or VOIDED).
pub async fn decisions(pool: &PgPool, order_id: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT outcome FROM payments.gateway_ledger WHERE idempotency_key = $1::text ORDER BY created_at",
    )
    .bind(order_id.to_string())
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Payment attempts recorded for an order.
pub async fn attempt_rows(pool: &PgPool, order_id: Uuid) -> i64 {
    count(
        pool,
        "SELECT count(*) FROM payments.payment_attempts WHERE order_id = $1",
        order_id,
    )
    .await
}

/// Starts the payment-service binary as a process on `database_url` and the
/// topics of `kafka`, in consumer group `group`, with a zero-latency gateway
/// that never declines unless `extra_env` says otherwise.
pub fn spawn_process(
    database_url: &str,
    kafka: &KafkaConfig,
    group: &str,
    extra_env: &[(&str, &str)],
) -> ServiceProcess {
    let mut env: Vec<(&str, String)> = vec![
        ("DATABASE_URL", database_url.to_owned()),
        ("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap_servers.clone()),
        ("KAFKA_TOPIC_PREFIX", kafka.topic_prefix.clone()),
        ("PAYMENT_CONSUMER_GROUP", group.to_owned()),
        ("PAYMENT_MIN_LATENCY", "0".to_owned()),
        ("PAYMENT_MAX_LATENCY", "0".to_owned()),
        ("PAYMENT_DECLINE_RATE", "0".to_owned()),
        ("PAYMENT_HEALTH_ADDR", "127.0.0.1:0".to_owned()),
        (
            "LOG_LEVEL",
            if std::env::var_os("TEST_LOG").is_some() {
                "info"
            } else {
                "warn"
            }
            .to_owned(),
        ),
    ];
    env.extend(
        extra_env
            .iter()
            .map(|(key, value)| (*key, (*value).to_owned())),
    );
    ServiceProcess::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_payment-service")),
        &env,
        None,
    )
}
