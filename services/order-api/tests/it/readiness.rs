//! Readiness tells the truth: the order API is ready when an order could
//! commit now. A lock on its tables, a database that hangs or refuses, make
//! it not ready within seconds and ready again after; a broker that is down
//! does not (the outbox holds the orders) and shows on `/healthz` and in the
//! metrics instead. `/readyz` answers at once whatever the dependencies do.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::support::{order_request, spawn_app, spawn_app_on, spawn_app_with};
use foodorder_contract::topics::ORDER_PLACED;
use foodorder_runtime::config::KafkaConfig;
use foodorder_testkit::{self as testing, PrivateBroker};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The endpoint reads what the probes left: any answer slower than this is a bug.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);

/// `GET path`, which must answer within [`ANSWER_WITHIN`].
async fn get(http: SocketAddr, path: &str) -> (u16, String) {
    tokio::time::timeout(ANSWER_WITHIN, testing::http_get(http, path))
        .await
        .unwrap_or_else(|_| panic!("{path} did not answer within {ANSWER_WITHIN:?}"))
}

/// Asks `path` until it answers `code` with `wanted` in its body, each answer
/// within [`ANSWER_WITHIN`], for up to `patience`; returns how long that took.
async fn until(
    http: SocketAddr,
    path: &str,
    code: u16,
    wanted: &str,
    patience: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = get(http, path).await;
        if status == code && body.contains(wanted) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < patience,
            "{path} did not answer {code} with {wanted:?} within {patience:?}; it answered {status}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn grpc_health(app: &crate::support::TestApp) -> ServingStatus {
    HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: "foodorder.v1.OrderService".into(),
        })
        .await
        .expect("grpc health answers")
        .into_inner()
        .status()
}

/// What a migration or `VACUUM FULL` takes: the write probe cannot take its
/// lock, so the API is not ready (and grpc.health.v1 says NOT_SERVING) until
/// the lock is released.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn not_ready_while_the_orders_table_is_locked_and_ready_after() {
    let app = spawn_app().await;
    assert_eq!(grpc_health(&app).await, ServingStatus::Serving);

    let mut migration = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE orders.orders IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *migration)
        .await
        .unwrap();
    let unready = until(
        app.http_addr,
        "/readyz",
        503,
        "database: write probe failed: could not lock orders.orders",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(grpc_health(&app).await, ServingStatus::NotServing);
    let (code, body) = get(app.http_addr, "/healthz").await;
    assert_eq!(code, 200, "alive all the same:\n{body}");
    assert!(body.starts_with("alive\nnot ready: database: "), "{body}");

    migration.rollback().await.unwrap();
    let ready = until(
        app.http_addr,
        "/readyz",
        200,
        "database: met",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(grpc_health(&app).await, ServingStatus::Serving);
    eprintln!("lock held: not ready after {unready:?}; lock released: ready after {ready:?}");
    app.stop().await;
}

/// A partition that drops packets (the database's connections stay open and
/// carry nothing): `/readyz` keeps answering at once, says not ready within
/// seconds, and ready again by itself once the partition heals. A database
/// that refuses connections is not ready either.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn readyz_answers_at_once_while_the_database_hangs() {
    let (pool, _database) = testing::database(&[&order_api::SCHEMA]).await;
    let (proxy, proxied) = testing::proxied_pool(&pool, 5).await;
    let app = spawn_app_on(proxied, |_| {}).await;

    proxy.blackhole();
    let unready = until(
        app.http_addr,
        "/readyz",
        503,
        "database: write probe timed out after 1.5 s",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(grpc_health(&app).await, ServingStatus::NotServing);
    assert_eq!(get(app.http_addr, "/healthz").await.0, 200);
    proxy.restore();
    let ready = until(
        app.http_addr,
        "/readyz",
        200,
        "database: met",
        Duration::from_secs(15),
    )
    .await;
    eprintln!("database blackholed: not ready after {unready:?}; healed: ready after {ready:?}");

    proxy.cut();
    until(
        app.http_addr,
        "/readyz",
        503,
        "database: write probe failed: cannot connect",
        Duration::from_secs(15),
    )
    .await;
    proxy.restore();
    until(
        app.http_addr,
        "/readyz",
        200,
        "database: met",
        Duration::from_secs(15),
    )
    .await;
    let (_, scrape) = get(app.http_addr, "/metrics").await;
    assert_eq!(testing::metric_value(&scrape, "foodorder_ready"), Some(1.0));
    assert_eq!(
        testing::metric_value(
            &scrape,
            "foodorder_dependency_up{dependency=\"postgresql\"}"
        ),
        Some(1.0)
    );
    app.stop().await;
}

/// With its broker down the API stays ready and keeps accepting orders (the
/// outbox holds them); `/healthz` and the metrics show the broker
/// unreachable and the outbox's backlog, and both recover once it is back.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn stays_ready_while_its_broker_is_down_and_shows_it_on_healthz() {
    let mut broker = PrivateBroker::start(testing::free_port()).await;
    let kafka = KafkaConfig::local(&broker.bootstrap(), &testing::unique_prefix());
    let app = spawn_app_with(|config| config.kafka = kafka).await;
    let topic = app.kafka.topic(ORDER_PLACED);
    let healthz = app.http_addr;
    until(
        healthz,
        "/healthz",
        200,
        "\nkafka: met",
        Duration::from_secs(30),
    )
    .await;

    broker.kill();
    let started = Instant::now();
    loop {
        let (code, body) = get(healthz, "/readyz").await;
        assert_eq!(code, 200, "the broker does not gate readiness:\n{body}");
        let (_, health) = get(healthz, "/healthz").await;
        if health.contains("\nkafka: UNMET") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "/healthz did not show the broker unreachable within 30 s:\n{health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown = started.elapsed();
    let mut client = app.client.clone();
    client
        .place_order(order_request(&[(1, 2)]))
        .await
        .expect("orders are accepted without a broker");
    let (_, health) = get(healthz, "/healthz").await;
    assert!(
        health.contains("kafka: UNMET") && health.contains("(does not gate readiness): "),
        "{health}"
    );
    until(
        healthz,
        "/healthz",
        200,
        "outbox: met",
        Duration::from_secs(30),
    )
    .await;
    until(
        healthz,
        "/healthz",
        200,
        "1 unsent, the oldest",
        Duration::from_secs(30),
    )
    .await;
    eprintln!(
        "/healthz with the broker down:\n{}",
        get(healthz, "/healthz").await.1
    );
    let age = testing::wait_for_metric(
        healthz,
        &format!("foodorder_outbox_oldest_unsent_age_seconds{{topic=\"{topic}\"}}"),
        |age| age > 0.0,
    )
    .await;
    let (_, scrape) = get(healthz, "/metrics").await;
    assert_eq!(
        testing::metric_value(&scrape, "foodorder_dependency_up{dependency=\"kafka\"}"),
        Some(0.0)
    );
    assert_eq!(testing::metric_value(&scrape, "foodorder_ready"), Some(1.0));
    assert_eq!(get(healthz, "/readyz").await.0, 200);

    broker.restart().await;
    app.wait_outbox_drained().await;
    until(
        healthz,
        "/healthz",
        200,
        "\nkafka: met",
        Duration::from_secs(30),
    )
    .await;
    until(
        healthz,
        "/healthz",
        200,
        "outbox: met",
        Duration::from_secs(30),
    )
    .await;
    until(
        healthz,
        "/healthz",
        200,
        "nothing unsent; last publish acknowledged",
        Duration::from_secs(30),
    )
    .await;
    eprintln!(
        "broker killed: /healthz showed it after {shown:?}; outbox age reached {age} s; /readyz stayed 200"
    );
    app.stop().await;
}
