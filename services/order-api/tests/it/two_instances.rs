//! Two order APIs on one database and one set of topics, as
//! `build-support/run --cluster` runs them: their outbox relays share the
//! `orders.outbox` table and must not publish a row twice between them.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::support::{order_request, spawn_app_on, spawn_app_with};
use foodorder_runtime::config::KafkaConfig;
use foodorder_testkit::{self as testing, PrivateBroker};
use order_api::Config;

/// Orders placed through both instances while the broker is down pile up in
/// the outbox; when it comes back both relays claim from the same backlog at
/// once, in small batches. Every order is published exactly once.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn two_instances_publish_every_order_once() {
    const ORDERS: usize = 120;
    let port = testing::free_port();
    let kafka = KafkaConfig::local(&format!("127.0.0.1:{port}"), &testing::unique_prefix());
    let shared = |config: &mut Config| {
        config.kafka = kafka.clone();
        // Small batches: many claims, so that the two relays interleave.
        config.relay.batch_size = 4;
    };
    let first = spawn_app_with(shared).await;
    let group = first.group.clone();
    let second = spawn_app_on(first.pool.clone(), |config| {
        shared(config);
        config.consumer_group = group;
    })
    .await;

    let mut placed = BTreeSet::new();
    for index in 0..ORDERS {
        let mut client = [&first, &second][index % 2].client.clone();
        let order = client
            .place_order(order_request(&[(1, 1)]))
            .await
            .expect("accepted without a broker");
        placed.insert(order.into_inner().order.unwrap().id);
    }
    assert_eq!(placed.len(), ORDERS);

    let broker = PrivateBroker::start(port).await;
    first.wait_outbox_drained().await;
    let records = testing::collect_records_async(
        &broker.bootstrap(),
        &kafka.topic(foodorder_contract::topics::ORDER_PLACED),
        kafka.event_partitions,
        ORDERS,
        Duration::from_secs(60),
        Duration::from_secs(3),
    )
    .await;
    let keys: Vec<String> = records.into_iter().map(|record| record.key).collect();
    let distinct: BTreeSet<String> = keys.iter().cloned().collect();
    assert_eq!(
        keys.len(),
        distinct.len(),
        "an order was published twice: {} records for {} orders",
        keys.len(),
        distinct.len()
    );
    assert_eq!(
        distinct, placed,
        "every order, and only those, was published"
    );
    second.stop().await;
    first.stop().await;
}
