//! Two payment-service instances share the consumer group; one of them is
//! stopped in the middle of the work and never restarted. The survivor takes
//! over its partitions (a rebalance), and every order is still paid exactly
//! once: one attempt, one gateway charge, one PaymentCompleted event (a record
//! published but not yet marked sent may be re-sent, with the same event id).
//! - SIGKILL: the instance vanishes without leaving the group; the broker
//!   notices after the session timeout and hands its partitions over. Its
//!   in-flight work was never committed, so the survivor redoes it, and the
//!   gateway ledger keeps a redone charge from being a second one.
//! - SIGTERM: the instance drains, commits and leaves the group at once.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::*;
use foodorder_contract::v1::PaymentCompleted;
use foodorder_testkit as testing;
use prost::Message;
use sqlx::PgPool;

const ORDERS: usize = 60;

/// The session timeout both instances use: a killed member's partitions move after it.
const SESSION_TIMEOUT_MS: &str = "6000";

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn killing_one_of_two_instances_loses_and_doubles_nothing() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    one_of_two_instances_stops(pool, "KILL").await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn stopping_one_of_two_instances_loses_and_doubles_nothing() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    one_of_two_instances_stops(pool, "TERM").await;
}

async fn one_of_two_instances_stops(pool: PgPool, signal: &str) {
    let kafka = testing::kafka_config();
    let producer = producer(&kafka).await;
    let database_url = database_url(&pool);
    let group = format!("payment-rebalance-{}", uuid::Uuid::new_v4());
    let latency = [
        // About 10 payments a second for both together: the stop comes with most orders unpaid.
        ("PAYMENT_MIN_LATENCY", "0.2"),
        ("PAYMENT_MAX_LATENCY", "0.4"),
        ("PAYMENT_MAX_IN_FLIGHT", "2"),
        ("KAFKA_SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS),
    ];
    let mut doomed = spawn_process(&database_url, &kafka, &group, &latency);
    let mut survivor = spawn_process(&database_url, &kafka, &group, &latency);
    // Both hold partitions before any order exists, so the stopped one leaves work behind.
    testing::wait_for_group_members(&kafka.bootstrap_servers, &group, 2).await;

    let mut orders = Vec::new();
    for _ in 0..ORDERS {
        let order_id = new_order_id();
        send_order_placed(&producer, &kafka, order_id).await;
        orders.push(order_id);
    }
    let paid = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM payments.payment_attempts")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    testing::wait_for("the first payments", Duration::from_secs(60), || async {
        (paid().await >= 5).then_some(())
    })
    .await;
    let paid_at_stop = paid().await;
    assert!(
        paid_at_stop < ORDERS as i64,
        "the stop came too late to test anything ({paid_at_stop} paid)"
    );
    let stopped_at = std::time::Instant::now();
    let stopped = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &doomed.child.id().to_string()])
        .status()
        .expect("send the signal");
    assert!(stopped.success());
    let exit = doomed.child.wait().unwrap();
    if signal == "TERM" {
        assert!(exit.success(), "the stopped instance exits cleanly: {exit}");
    }

    testing::wait_for(
        "every order paid by the survivor",
        Duration::from_secs(120),
        || async { (paid().await == ORDERS as i64).then_some(()) },
    )
    .await;
    eprintln!(
        "SIG{signal}: {paid_at_stop} of {ORDERS} paid at the stop, all paid {:?} later",
        stopped_at.elapsed()
    );
    assert!(
        survivor.child.try_wait().unwrap().is_none(),
        "the survivor is still running"
    );
    for order_id in &orders {
        assert_eq!(
            attempt_rows(&pool, *order_id).await,
            1,
            "{order_id}: one attempt"
        );
        assert_eq!(charges(&pool, *order_id).await, 1, "{order_id}: one charge");
    }
    let records = payment_completed_records(&kafka, ORDERS, Duration::from_secs(2)).await;
    let mut events_by_order: HashMap<String, Vec<String>> = HashMap::new();
    for record in &records {
        let event = PaymentCompleted::decode(record.payload.as_slice()).unwrap();
        events_by_order
            .entry(record.key.clone())
            .or_default()
            .push(event.metadata.unwrap().event_id);
    }
    assert_eq!(events_by_order.len(), ORDERS, "every order reported");
    for (order_id, event_ids) in &events_by_order {
        assert!(
            event_ids.iter().all(|id| *id == event_ids[0]),
            "{order_id}: one event, re-sent at most: {event_ids:?}"
        );
    }
    survivor.child.kill().unwrap();
    survivor.child.wait().unwrap();
}

/// An instance whose every in-flight slot is busy (one slot, a 60 s gateway
/// call) still serves a rebalance: its partitions are paused, not left
/// unpolled, so a second instance gets its share long before the call ends.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_saturated_instance_still_hands_partitions_over() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    let kafka = testing::kafka_config();
    let producer = producer(&kafka).await;
    let database_url = database_url(&pool);
    let group = format!("payment-saturated-{}", uuid::Uuid::new_v4());
    let slow = [
        ("PAYMENT_MIN_LATENCY", "60"),
        ("PAYMENT_MAX_LATENCY", "60"),
        ("PAYMENT_TIMEOUT", "120"),
        ("PAYMENT_MAX_IN_FLIGHT", "1"),
        ("KAFKA_SESSION_TIMEOUT_MS", SESSION_TIMEOUT_MS),
    ];
    let _busy = spawn_process(&database_url, &kafka, &group, &slow);
    testing::wait_for_group_members(&kafka.bootstrap_servers, &group, 1).await;
    for _ in 0..6 {
        let order_id = new_order_id();
        send_order_placed(&producer, &kafka, order_id).await;
    }
    // Not a synchronisation: it lets the single slot take its 60 s call first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _second = spawn_process(&database_url, &kafka, &group, &slow);
    let joined = std::time::Instant::now();
    // Bounded well below the 60 s call: an unpolled instance would hold the rebalance that long.
    testing::wait_for(
        "both instances to hold partitions while the first one's only slot is busy",
        Duration::from_secs(40),
        || {
            let (bootstrap, group) = (kafka.bootstrap_servers.clone(), group.clone());
            async move {
                let members = tokio::task::spawn_blocking(move || {
                    testing::assigned_group_members(&bootstrap, &group)
                })
                .await
                .unwrap_or(0);
                (members == 2).then_some(())
            }
        },
    )
    .await;
    eprintln!(
        "the rebalance completed {:?} after the second instance started",
        joined.elapsed()
    );
}

/// `/healthz` (liveness) answers at once; `/readyz` only once the consumer is
/// subscribed and holds its assignment, and not any more after shutdown begins.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn ready_only_once_the_consumer_holds_its_assignment() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    let kafka = testing::kafka_config();
    let config = test_config(kafka.clone(), 0.0);
    let group = config.consumer.group_id.clone();
    let application = payment_service::build(config, Some(pool)).await.unwrap();
    let health = application.http_addr();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let service = tokio::spawn(application.run_until_stopped(shutdown.clone()));
    testing::wait_for(
        "/healthz to answer 200",
        Duration::from_secs(10),
        || async { (http_status(health, "/healthz").await == Some(200)).then_some(()) },
    )
    .await;
    testing::wait_for("/readyz to answer 200", Duration::from_secs(60), || async {
        (http_status(health, "/readyz").await == Some(200)).then_some(())
    })
    .await;
    let bootstrap = kafka.bootstrap_servers.clone();
    let members =
        tokio::task::spawn_blocking(move || testing::assigned_group_members(&bootstrap, &group))
            .await
            .unwrap();
    assert_eq!(
        members, 1,
        "ready means the group shows this member with its partitions"
    );
    shutdown.cancel();
    service.await.unwrap().unwrap();
}

/// The status code of `GET path`, or None when nothing answers.
async fn http_status(address: std::net::SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}
