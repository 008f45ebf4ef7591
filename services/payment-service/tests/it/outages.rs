//! Database outage: the payment service keeps running, retries with back-off,
//! and once PostgreSQL is reachable again the order is paid exactly once and
//! reported — nothing lost, nothing doubled. The outage is a TCP proxy in front
//! of the real PostgreSQL that the test cuts and restores. Readiness follows
//! the database and the consumer's broker.

use std::time::Duration;

use crate::support::*;
use foodorder_runtime::config::KafkaConfig;
use foodorder_testkit::{self as testing, CuttableProxy, PrivateBroker};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn database_outage_delays_payment_but_loses_and_doubles_nothing() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    let (proxy, options) = database_proxy(&pool).await;
    let proxied_pool = PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options.host("127.0.0.1").port(proxy.address().port()))
        .await
        .unwrap();

    let kafka = testing::kafka_config();
    let producer = producer(&kafka).await;
    let service = spawn_service(proxied_pool, test_config(kafka.clone(), 0.0)).await;
    let order_id = new_order_id();

    proxy.cut();
    send_order_placed(&producer, &kafka, order_id).await;
    // Let the consumer receive the record and fail against the missing database a few times.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(attempt_rows(&pool, order_id).await, 0);
    assert!(
        !service.is_finished(),
        "the service keeps running through the outage"
    );

    proxy.restore();
    let outcome = wait_for_payment(&pool, order_id).await;
    assert_eq!(
        (outcome.0.as_str(), outcome.1.as_str()),
        ("COMPLETED", "SUCCEEDED")
    );
    let records = payment_completed_records(&kafka, 1, Duration::from_secs(1)).await;
    assert_eq!(records.len(), 1, "reported once");
    assert_eq!(charges(&pool, order_id).await, 1);
    service.stop().await;
}

/// A service started while PostgreSQL is unreachable (a database restart)
/// waits for it instead of exiting, then works normally.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_service_started_while_the_database_is_down_comes_up_with_it() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    let (proxy, options) = database_proxy(&pool).await;
    proxy.cut();
    let url = database_url(&pool).replacen(
        &format!(":{}/", options.get_port()),
        &format!(":{}/", proxy.address().port()),
        1,
    );
    let kafka = testing::kafka_config();
    let producer = producer(&kafka).await;
    let mut config = test_config(kafka.clone(), 0.0);
    config.consumer.database.url = foodorder_runtime::config::Secret::new(url);
    let building = tokio::spawn(payment_service::build(config, None));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !building.is_finished(),
        "start-up waits while the database is unreachable"
    );
    proxy.restore();
    let application = tokio::time::timeout(Duration::from_secs(60), building)
        .await
        .expect("start-up finishes once the database is back")
        .unwrap()
        .expect("the service starts");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let service = tokio::spawn(application.run_until_stopped(shutdown.clone()));
    let order_id = new_order_id();
    send_order_placed(&producer, &kafka, order_id).await;
    assert_eq!(wait_for_payment(&pool, order_id).await.0, "COMPLETED");
    shutdown.cancel();
    service.await.unwrap().unwrap();
}

/// A cuttable proxy in front of the test's PostgreSQL, and the test database's connect options.
async fn database_proxy(pool: &PgPool) -> (CuttableProxy, PgConnectOptions) {
    let options: PgConnectOptions = pool.connect_options().as_ref().clone();
    let target = tokio::net::lookup_host((options.get_host(), options.get_port()))
        .await
        .unwrap()
        .next()
        .expect("database address");
    (CuttableProxy::start(target).await, options)
}

/// A consumer's `/readyz` follows PostgreSQL: 503 naming it while it is
/// unreachable, 200 once it is back; `/healthz` stays 200.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn readiness_follows_the_database() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    let (proxy, options) = database_proxy(&pool).await;
    let proxied_pool = PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options.host("127.0.0.1").port(proxy.address().port()))
        .await
        .unwrap();
    let service = spawn_service(proxied_pool, test_config(testing::kafka_config(), 0.0)).await;
    let readyz = async |code: u16, body: &str| {
        testing::wait_for(
            &format!("/readyz to answer {code} {body:?}"),
            Duration::from_secs(60),
            || async {
                let answer = testing::http_get(service.http, "/readyz").await;
                (answer.0 == code && answer.1.contains(body)).then_some(())
            },
        )
        .await;
        assert_eq!(testing::http_get(service.http, "/healthz").await.0, 200);
    };
    readyz(200, "ready").await;
    proxy.cut();
    readyz(
        503,
        "not ready: database: write probe failed: cannot connect",
    )
    .await;
    proxy.restore();
    readyz(200, "ready").await;
    service.stop().await;
}

/// The consumer is ready while its group coordinator answers: an idle
/// consumer (nothing to commit) whose broker is frozen (connections open,
/// nothing answers, as in a partition) or killed is not ready within seconds,
/// and ready again by itself once the broker is back; `/readyz` answers at
/// once throughout and the process never stops.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn an_idle_consumer_is_not_ready_while_its_broker_is_frozen_or_down() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    let mut broker = PrivateBroker::start(testing::free_port()).await;
    let kafka = KafkaConfig::local(&broker.bootstrap(), &testing::unique_prefix());
    let service = spawn_service(pool, test_config(kafka, 0.0)).await;
    let http = service.http;
    let readyz = async |code: u16, body: &str, patience: Duration| {
        let started = std::time::Instant::now();
        loop {
            let (status, text) =
                tokio::time::timeout(Duration::from_secs(1), testing::http_get(http, "/readyz"))
                    .await
                    .expect("/readyz answers within 1 s, whatever the broker does");
            if status == code && text.contains(body) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < patience,
                "/readyz did not answer {code} with {body:?} within {patience:?}; it answered {status}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let consumer = "consumer ";
    readyz(200, consumer, Duration::from_secs(60)).await;

    broker.freeze();
    let frozen = readyz(503, consumer, Duration::from_secs(30)).await;
    let (_, body) = testing::http_get(http, "/readyz").await;
    assert!(
        body.contains("database: met"),
        "the database is fine:\n{body}"
    );
    broker.thaw();
    let thawed = readyz(200, "ready", Duration::from_secs(60)).await;

    broker.kill();
    let killed = readyz(503, consumer, Duration::from_secs(30)).await;
    broker.restart().await;
    let restarted = readyz(200, "ready", Duration::from_secs(90)).await;
    assert!(!service.is_finished(), "the service never stops on its own");
    eprintln!(
        "broker frozen: not ready after {frozen:?}, thawed: ready after {thawed:?}; \
         killed: not ready after {killed:?}, restarted: ready after {restarted:?} (once it answered)"
    );
    service.stop().await;
}
