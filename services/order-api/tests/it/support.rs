//! Test harness: runs the real order API on 127.0.0.1:0 over a per-test
//! database (from `testing::database`) and fresh Kafka topic names, and talks to it
//! with the generated client.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use foodorder_contract::v1::order_service_client::OrderServiceClient;
use foodorder_contract::v1::{OrderItemInput, PlaceOrderRequest};
use foodorder_runtime::config::KafkaConfig;
use foodorder_testkit as testing;
use order_api::{Application, Config};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A running order API.
pub struct TestApp {
    pub addr: SocketAddr,
    /// The HTTP endpoint: /healthz, /readyz, /metrics.
    pub http_addr: SocketAddr,
    pub channel: Channel,
    pub client: OrderServiceClient<Channel>,
    pub kafka: KafkaConfig,
    pub pool: PgPool,
    pub watch_hub: order_api::watch::OrderWatchHub,
    /// The consumer group of the API's payment.completed consumer.
    pub group: String,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
    /// The test's own database, dropped with the app.
    database: Option<testing::TestDatabase>,
}

/// Starts the API over a database of its own (the `orders` schema only) and
/// topics of its own on the test broker.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// [`spawn_app`] after `adjust` changed the test configuration.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let (pool, database) = testing::database(&[&order_api::SCHEMA]).await;
    let mut app = spawn_app_on(pool, adjust).await;
    app.database = Some(database);
    app
}

/// Starts the API over `pool` (already migrated: a proxied connection, say)
/// and waits until it is ready (its write probe passed).
pub async fn spawn_app_on(pool: PgPool, adjust: impl FnOnce(&mut Config)) -> TestApp {
    foodorder_runtime::telemetry::init_for_tests();
    let mut config = Config::for_tests();
    adjust(&mut config);
    let group = config.consumer_group.clone();
    let kafka = config.kafka.clone();
    let tls = config.tls.clone();
    let application = Application::build_with_pool(config, pool.clone())
        .await
        .expect("failed to build the app");
    let addr = application.local_addr();
    let http_addr = application.http_addr();
    let watch_hub = application.watch_hub();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(application.run_until_stopped(shutdown.clone()));
    // With TLS, the client trusts the CA that `build-support/tls-cert` put
    // beside the server's certificate.
    let endpoint = match &tls {
        Some(tls) => tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(
                order_api::tls::client_config(&tls.cert.with_file_name("ca.pem"))
                    .expect("the test CA"),
            )
            .unwrap(),
        None => tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap(),
    };
    let channel = endpoint
        .connect()
        .await
        .expect("failed to connect to the app");
    testing::wait_for("the app to be ready", Duration::from_secs(30), || async {
        (testing::http_get(http_addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    TestApp {
        addr,
        http_addr,
        client: OrderServiceClient::new(channel.clone()),
        channel,
        kafka,
        pool,
        watch_hub,
        group,
        shutdown,
        handle,
        database: None,
    }
}

impl TestApp {
    /// Stops the API and waits until it has shut down.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the app did not stop within 30 s")
            .expect("the app task panicked")
            .expect("the app failed");
    }

    /// Number of rows in `table`.
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Reads `order.placed` from the shared broker until `expected` records
    /// arrived, then `grace` longer to catch extras.
    pub async fn order_placed_records(
        &self,
        expected: usize,
        grace: Duration,
    ) -> Vec<testing::Record> {
        testing::collect_records_async(
            &self.kafka.bootstrap_servers,
            &self.kafka.topic(foodorder_contract::topics::ORDER_PLACED),
            self.kafka.event_partitions,
            expected,
            Duration::from_secs(60),
            grace,
        )
        .await
    }

    /// Waits until every outbox row is sent (or parked as unpublishable).
    pub async fn wait_outbox_drained(&self) {
        testing::wait_for(
            "every outbox row to be marked sent",
            Duration::from_secs(60),
            || async {
                let unsent: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM orders.outbox WHERE sent_at IS NULL AND parked_at IS NULL",
                )
                .fetch_one(&self.pool)
                .await
                .unwrap();
                (unsent == 0).then_some(())
            },
        )
        .await;
    }
}

/// A valid request for `items` (menu id, quantity).
pub fn order_request(items: &[(i32, i32)]) -> PlaceOrderRequest {
    PlaceOrderRequest {
        customer_name: "Ada Lovelace".into(),
        customer_email: "ada@example.com".into(),
        items: items
            .iter()
            .map(|&(menu_item_id, quantity)| OrderItemInput {
                menu_item_id,
                quantity,
            })
            .collect(),
        idempotency_key: String::new(),
    }
}

/// A request with metadata entries.
pub fn with_metadata<T>(message: T, entries: &[(&'static str, &str)]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (name, value) in entries {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    request
}

/// Publishes the `payment.completed` event the payment service would, for `order_id`.
pub async fn publish_payment_outcome(
    kafka_config: &KafkaConfig,
    order_id: &str,
    amount: &str,
    success: bool,
) {
    let payload = payment_completed(order_id, amount, success);
    publish_payment_completed(kafka_config, order_id, payload).await;
}

/// A valid `PaymentCompleted` for `order_id`.
pub fn payment_completed(order_id: &str, amount: &str, success: bool) -> Vec<u8> {
    use prost::Message;
    foodorder_contract::v1::PaymentCompleted {
        order_id: order_id.to_owned(),
        amount: amount.to_owned(),
        payment_id: uuid::Uuid::now_v7().to_string(),
        ..foodorder_testkit::fuzzing::seed_payment_completed(success)
    }
    .encode_to_vec()
}

/// Publishes `payload` on `payment.completed` keyed by `key`.
pub async fn publish_payment_completed(kafka_config: &KafkaConfig, key: &str, payload: Vec<u8>) {
    publish(
        kafka_config,
        foodorder_contract::topics::PAYMENT_COMPLETED,
        key,
        payload,
    )
    .await;
}

/// Publishes `payload` on `topic` (its name without the prefix) keyed by `key`.
pub async fn publish(kafka_config: &KafkaConfig, topic: &str, key: &str, payload: Vec<u8>) {
    let producer = foodorder_runtime::kafka::idempotent_producer(kafka_config, "order-api-test")
        .expect("producer");
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&kafka_config.topic(topic))
                .key(key)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(error, _)| panic!("produce to {topic}: {error}"));
}

/// The `OrderUnprocessable` the payment service would send for `order_id`.
pub fn order_unprocessable(order_id: &str, reason: &str) -> Vec<u8> {
    use prost::Message;
    let now = chrono::Utc::now();
    foodorder_contract::v1::OrderUnprocessable {
        metadata: Some(foodorder_contract::events::metadata(
            "",
            "payment-service",
            now,
        )),
        order_id: order_id.to_owned(),
        reason: reason.to_owned(),
        first_seen_at: Some(foodorder_contract::events::timestamp(now)),
    }
    .encode_to_vec()
}

/// Waits (up to 60 s) until consumer group `group` has committed `records`
/// records of `topic` in all (summed over its partitions).
pub async fn wait_until_consumed(bootstrap: &str, group: &str, topic: &str, records: i64) {
    let (bootstrap, group, topic) = (bootstrap.to_owned(), group.to_owned(), topic.to_owned());
    testing::wait_for(
        &format!("group {group} to consume {records} records of {topic}"),
        Duration::from_secs(60),
        || {
            let (bootstrap, group, topic) = (bootstrap.clone(), group.clone(), topic.clone());
            async move {
                let offsets = tokio::task::spawn_blocking(move || {
                    testing::group_offsets(&bootstrap, &group, &topic)
                })
                .await
                .unwrap();
                let consumed: i64 = offsets
                    .values()
                    .map(|(committed, _)| (*committed).max(0))
                    .sum();
                (consumed == records).then_some(())
            }
        },
    )
    .await;
}
