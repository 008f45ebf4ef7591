//! Group commit: a batch of PlaceOrder calls in one transaction keeps each
//! call's own outcome (validation errors, idempotency keys, one outbox row per
//! order), and a batch PostgreSQL refuses is placed again call by call.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use foodorder_contract::v1::{OrderPlaced, PlaceOrderRequest};
use foodorder_runtime::metrics::Metrics;
use foodorder_testkit as testing;
use order_api::deadline::CallDeadline;
use order_api::domain::{NewOrder, validate_place_order};
use order_api::error::ApiError;
use order_api::group_commit::{self, GroupCommit, GroupCommitConfig, Placed};
use order_api::repository::{self, BatchOutcome, PlaceContext, PlaceRequest};
use prost::Message;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::{order_request, spawn_app};

const TOPIC: &str = "group-commit-test.order.placed";

/// Every call's answer, as the writers give it: one batch, then the repeated
/// calls answered from the stored order.
async fn place_all(pool: &PgPool, batch: &[PlaceRequest]) -> Vec<Result<Placed, ApiError>> {
    let outcomes = repository::place_batch(pool, TOPIC, batch).await.unwrap();
    let mut results = Vec::new();
    for (outcome, request) in outcomes.into_iter().zip(batch) {
        results.push(match outcome {
            BatchOutcome::Placed(order) => Ok(Placed {
                order,
                created: true,
            }),
            BatchOutcome::Refused(error) => Err(error.into()),
            BatchOutcome::Repeated => group_commit::answer_repeated(pool, request).await,
        });
    }
    results
}

fn place_request(request: &PlaceOrderRequest, key: Option<&str>) -> PlaceRequest {
    PlaceRequest {
        order: validate_place_order(request, key).expect("a valid request"),
        context: PlaceContext {
            correlation_id: format!("corr-{}", Uuid::new_v4()),
            trace_context: BTreeMap::new(),
        },
    }
}

fn created(result: &Result<Placed, ApiError>) -> (String, bool) {
    match result {
        Ok(placed) => (placed.order.id.to_string(), placed.created),
        Err(error) => panic!("expected an order, got {error:?}"),
    }
}

/// Each stored order's total, and each outbox row's (order id from the key, decoded event).
async fn stored(pool: &PgPool) -> (HashMap<String, String>, Vec<(String, OrderPlaced)>) {
    let orders: Vec<(Uuid, rust_decimal::Decimal)> =
        sqlx::query_as("SELECT id, total_amount FROM orders.orders")
            .fetch_all(pool)
            .await
            .unwrap();
    let outbox: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT message_key, payload FROM orders.outbox ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    (
        orders
            .into_iter()
            .map(|(id, total)| (id.to_string(), total.to_string()))
            .collect(),
        outbox
            .into_iter()
            .map(|(key, payload)| (key, OrderPlaced::decode(payload.as_slice()).unwrap()))
            .collect(),
    )
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn one_transaction_keeps_every_calls_own_outcome() {
    let (pool, _database) = foodorder_testkit::database(&[&order_api::SCHEMA]).await;
    sqlx::query("UPDATE orders.menu_items SET available = false WHERE id = 8")
        .execute(&pool)
        .await
        .unwrap();
    // Stored before the batch: its retry must be answered from the stored order.
    let earlier = place_request(&order_request(&[(3, 1)]), Some("key-earlier"));
    let earlier_order = group_commit::place_one(&pool, TOPIC, &earlier)
        .await
        .unwrap();
    let earlier_id = earlier_order.order.id.to_string();
    assert!(earlier_order.created);
    // Retried with the menu item now unavailable: still the original order.
    sqlx::query("UPDATE orders.menu_items SET available = false WHERE id = 3")
        .execute(&pool)
        .await
        .unwrap();

    let batch = vec![
        place_request(&order_request(&[(1, 2), (7, 1)]), None), // 0: new
        place_request(&order_request(&[(999, 1)]), None),       // 1: unknown item
        place_request(&order_request(&[(2, 1)]), Some("key-a")), // 2: new, stores key-a
        place_request(&order_request(&[(2, 1)]), Some("key-a")), // 3: retry of 2
        place_request(&order_request(&[(4, 1)]), Some("key-a")), // 4: key-a, another request
        place_request(&order_request(&[(8, 1)]), Some("key-b")), // 5: unavailable item
        place_request(&order_request(&[(5, 3)]), Some("key-b")), // 6: new, stores key-b
        earlier.clone(),                                        // 7: retry of the earlier order
        place_request(&order_request(&[(6, 1), (1, 1)]), None), // 8: new
        place_request(&order_request(&[(999, 1)]), Some("key-a")), // 9: key-a taken by 2
    ];
    let results = place_all(&pool, &batch).await;
    assert_eq!(results.len(), batch.len());

    let (id0, new0) = created(&results[0]);
    assert!(new0);
    assert!(
        matches!(&results[1], Err(ApiError::InvalidArgument(violations)) if violations[0].field == "items[0].menu_item_id"),
        "{:?}",
        results[1]
    );
    let (id2, new2) = created(&results[2]);
    assert!(new2);
    let (id3, new3) = created(&results[3]);
    assert_eq!(
        (id3, new3),
        (id2.clone(), false),
        "a retry in the same batch gets the order"
    );
    assert!(
        matches!(results[4], Err(ApiError::IdempotencyKeyReused)),
        "{:?}",
        results[4]
    );
    assert!(
        matches!(&results[5], Err(ApiError::MenuItemsUnavailable(items)) if items == &[(8, "Water".to_owned())]),
        "{:?}",
        results[5]
    );
    let (id6, new6) = created(&results[6]);
    assert!(new6, "a failed call does not take the key");
    let (id7, new7) = created(&results[7]);
    assert_eq!((id7, new7), (earlier_id.clone(), false));
    let (id8, new8) = created(&results[8]);
    assert!(new8);
    assert!(
        matches!(results[9], Err(ApiError::IdempotencyKeyReused)),
        "a key taken earlier in the batch is reported before pricing: {:?}",
        results[9]
    );

    // What each caller got is what was stored: totals, item ids, timestamps.
    let (totals, outbox) = stored(&pool).await;
    let expected_totals: HashMap<String, String> = [
        (earlier_id.clone(), "8.99"),
        (id0.clone(), "28.48"),
        (id2.clone(), "14.99"),
        (id6.clone(), "28.47"),
        (id8.clone(), "17.98"),
    ]
    .into_iter()
    .map(|(id, total)| (id, total.to_owned()))
    .collect();
    assert_eq!(totals, expected_totals);
    for result in [&results[0], &results[2], &results[6], &results[8]] {
        let answered = &result.as_ref().unwrap().order;
        let reread = repository::load_order(&pool, answered.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answered, &reread, "the answer equals the stored order");
    }

    // One outbox row per new order, in call order, each with its own event.
    let keys: Vec<&str> = outbox.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(
        keys,
        [
            earlier_id.as_str(),
            id0.as_str(),
            id2.as_str(),
            id6.as_str(),
            id8.as_str()
        ],
        "one row per order, in call order"
    );
    for (key, event) in &outbox {
        assert_eq!(&event.order_id, key);
        assert_eq!(event.total_amount, expected_totals[key]);
    }
    let correlation: Vec<String> = sqlx::query_scalar(
        "SELECT correlation_id FROM orders.orders WHERE id = ANY($1::uuid[]) ORDER BY id",
    )
    .bind(vec![id0.parse::<Uuid>().unwrap()])
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(correlation, [batch[0].context.correlation_id.clone()]);
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_batch_postgres_refuses_is_placed_call_by_call() {
    let (pool, _database) = foodorder_testkit::database(&[&order_api::SCHEMA]).await;
    let (placing, writers) = GroupCommit::new(
        &GroupCommitConfig {
            writers: 1,
            max_batch: 16,
            window: Duration::ZERO,
            ..GroupCommitConfig::default()
        },
        TOPIC,
        &Metrics::new(),
    );
    let good = place_request(&order_request(&[(1, 1)]), None);
    // Validation keeps NUL out; built by hand, PostgreSQL refuses the text,
    // which fails the whole batch's transaction.
    let mut refused = place_request(&order_request(&[(2, 1)]), None);
    refused.order = NewOrder {
        customer_name: "Nul\0Byte".into(),
        ..refused.order
    };
    let calls: Vec<_> = [good, refused.clone(), refused]
        .into_iter()
        .map(|request| {
            let placing = placing.clone();
            let deadline = CallDeadline::after(Duration::from_secs(60));
            tokio::spawn(async move { placing.place(request, &deadline).await })
        })
        .collect();
    // All three are queued before any writer runs: they form one batch.
    testing::wait_for(
        "the three calls to be queued",
        Duration::from_secs(10),
        || async { (placing.queued() == 3).then_some(()) },
    )
    .await;
    writers.start(pool.clone());
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    let (good_id, new) = created(&results[0]);
    assert!(new);
    for result in &results[1..] {
        assert!(
            matches!(result, Err(ApiError::Internal(_))),
            "the refused call fails alone: {result:?}"
        );
    }
    let (totals, outbox) = stored(&pool).await;
    assert_eq!(totals.keys().collect::<Vec<_>>(), [&good_id]);
    assert_eq!(outbox.len(), 1);
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn concurrent_calls_through_the_api_each_get_their_order() {
    let app = spawn_app().await;
    let calls: Vec<_> = (0..64)
        .map(|index| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                let mut request = order_request(&[(1 + index % 7, 1 + index % 3)]);
                // Every fourth call shares a key with its neighbour: pairs of
                // retries that may or may not land in the same batch.
                if index % 4 < 2 {
                    request.idempotency_key = format!("pair-{}", index / 4);
                    request.items = vec![foodorder_contract::v1::OrderItemInput {
                        menu_item_id: 1,
                        quantity: 1,
                    }];
                }
                client
                    .place_order(request)
                    .await
                    .map(|r| r.into_inner().order.unwrap())
            })
        })
        .collect();
    let mut orders = Vec::new();
    for call in calls {
        orders.push(call.await.unwrap().expect("every call succeeds"));
    }
    for pair in 0..16 {
        assert_eq!(
            orders[pair * 4].id,
            orders[pair * 4 + 1].id,
            "a key names one order"
        );
    }
    let distinct: std::collections::HashSet<&str> =
        orders.iter().map(|order| order.id.as_str()).collect();
    assert_eq!(distinct.len(), 48);
    assert_eq!(app.count("orders.orders").await, 48);
    assert_eq!(app.count("orders.outbox").await, 48);
    let records = app
        .order_placed_records(48, Duration::from_millis(500))
        .await;
    let published: std::collections::HashSet<String> = records
        .iter()
        .map(|record| {
            OrderPlaced::decode(record.payload.as_slice())
                .unwrap()
                .order_id
        })
        .collect();
    assert_eq!(published.len(), 48, "one event per order");
    assert!(published.iter().all(|id| distinct.contains(id.as_str())));
    app.stop().await;
}
