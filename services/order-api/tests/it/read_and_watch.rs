//! GetOrder, ListMenuItems, WatchOrder, server reflection and health.

use std::time::Duration;

use crate::support::{self, order_request, spawn_app};
use foodorder_contract::v1::{
    GetOrderRequest, ListMenuItemsRequest, OrderStatus, WatchOrderRequest,
};
use tokio_stream::StreamExt;
use tonic::Code;

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn menu_lists_the_seeded_items() {
    let app = spawn_app().await;
    let menu = app
        .client
        .clone()
        .list_menu_items(ListMenuItemsRequest {})
        .await
        .unwrap()
        .into_inner()
        .menu_items;
    let summary: Vec<(i32, &str, &str)> = menu
        .iter()
        .map(|item| (item.id, item.name.as_str(), item.price.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "Margherita Pizza", "12.99"),
            (2, "Pepperoni Pizza", "14.99"),
            (3, "Caesar Salad", "8.99"),
            (4, "Chicken Burger", "10.99"),
            (5, "Veggie Wrap", "9.49"),
            (6, "Garlic Bread", "4.99"),
            (7, "Coke", "2.50"),
            (8, "Water", "1.99"),
        ]
    );
    assert!(menu.iter().all(|item| item.available));
    app.stop().await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn get_order_returns_the_order_or_a_precise_error() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let placed = client
        .place_order(order_request(&[(4, 3)]))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let fetched = client
        .get_order(GetOrderRequest {
            order_id: placed.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    assert_eq!(fetched.id, placed.id);
    assert_eq!(fetched.total_amount, "32.97");
    assert_eq!(fetched.items, placed.items);
    assert_eq!(fetched.status(), OrderStatus::Processing);

    let missing = uuid::Uuid::new_v4().to_string();
    let status = client
        .get_order(GetOrderRequest {
            order_id: missing.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains(&missing));
    for malformed in ["", "abc", "1234"] {
        let status = client
            .get_order(GetOrderRequest {
                order_id: malformed.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{malformed:?}");
    }
    app.stop().await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn watch_order_streams_changes_until_terminal() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let placed = client
        .place_order(order_request(&[(1, 1)]))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let mut stream = client
        .watch_order(WatchOrderRequest {
            order_id: placed.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("first message")
        .unwrap()
        .unwrap();
    assert_eq!(first.order.unwrap().status(), OrderStatus::Processing);

    support::publish_payment_outcome(&app.kafka, &placed.id, &placed.total_amount, true).await;
    let second = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .expect("status change within 60 s")
        .unwrap()
        .unwrap();
    let completed = second.order.unwrap();
    assert_eq!(completed.status(), OrderStatus::Completed);
    assert_eq!(completed.payment_attempts.len(), 1);
    assert!(completed.payment_successful);
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("stream ends");
    assert!(end.is_none(), "stream ends after a terminal status");

    // Watching a finished order yields its state and ends.
    let mut again = client
        .watch_order(WatchOrderRequest {
            order_id: placed.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let only = again.next().await.unwrap().unwrap();
    assert_eq!(only.order.unwrap().status(), OrderStatus::Completed);
    assert!(again.next().await.is_none());

    let status = client
        .watch_order(WatchOrderRequest {
            order_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .watch_order(WatchOrderRequest {
            order_id: "bad".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    app.stop().await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn many_watchers_each_see_their_own_order() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let mut streams = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..20 {
        let order = client
            .place_order(order_request(&[(8, 1)]))
            .await
            .unwrap()
            .into_inner()
            .order
            .unwrap();
        for _ in 0..5 {
            let mut stream = client
                .watch_order(WatchOrderRequest {
                    order_id: order.id.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            stream.next().await.unwrap().unwrap();
            streams.push((order.id.clone(), stream));
        }
        ids.push(order.id);
    }
    for id in &ids {
        support::publish_payment_outcome(&app.kafka, id, "1.99", true).await;
    }
    for (id, mut stream) in streams {
        let message = tokio::time::timeout(Duration::from_secs(60), stream.next())
            .await
            .expect("change")
            .unwrap()
            .unwrap();
        let order = message.order.unwrap();
        assert_eq!(
            (order.id.as_str(), order.status()),
            (id.as_str(), OrderStatus::Completed)
        );
    }
    app.stop().await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn reflection_and_health_work_without_proto_files() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as V1AlphaClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as V1AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as V1AlphaResponse;

    let app = spawn_app().await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in ["", "foodorder.v1.OrderService"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    let mut reflection = V1AlphaClient::new(app.channel.clone());
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(V1AlphaRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(V1AlphaResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a list of services");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for expected in ["foodorder.v1.OrderService", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|name| name == expected),
            "{expected} missing from {names:?}"
        );
    }

    let mut reflection_v1 =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            app.channel.clone(),
        );
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(tonic_reflection::pb::v1::server_reflection_request::MessageRequest::FileContainingSymbol(
            "foodorder.v1.OrderService".into(),
        )),
    };
    let mut responses = reflection_v1
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses
        .next()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap();
    assert!(
        matches!(response, tonic_reflection::pb::v1::server_reflection_response::MessageResponse::FileDescriptorResponse(ref files) if !files.file_descriptor_proto.is_empty()),
        "{response:?}"
    );
    app.stop().await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_client_that_leaves_frees_its_watch() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let order = client
        .place_order(order_request(&[(2, 1)]))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = client
            .watch_order(WatchOrderRequest {
                order_id: order.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        stream.next().await.unwrap().unwrap();
        streams.push(stream);
    }
    assert_eq!(
        app.watch_hub.watched_orders(),
        1,
        "one entry for the watched order"
    );
    drop(streams);
    foodorder_testkit::wait_for(
        "the server to drop the abandoned watches",
        Duration::from_secs(10),
        || async { (app.watch_hub.watched_orders() == 0).then_some(()) },
    )
    .await;
    app.stop().await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn watches_beyond_the_cap_are_refused_and_orders_still_go_through() {
    let app = crate::support::spawn_app_with(|config| {
        config.watch_max_streams = 3;
    })
    .await;
    let mut client = app.client.clone();
    let order = client
        .place_order(order_request(&[(2, 1)]))
        .await
        .unwrap()
        .into_inner()
        .order
        .unwrap();
    let watch = || {
        let mut client = app.client.clone();
        let order_id = order.id.clone();
        async move { client.watch_order(WatchOrderRequest { order_id }).await }
    };
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = watch().await.expect("a watch within the cap").into_inner();
        stream.next().await.unwrap().unwrap();
        streams.push(stream);
    }
    let refused = watch().await.expect_err("the fourth watch is over the cap");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    client
        .place_order(order_request(&[(3, 1)]))
        .await
        .expect("PlaceOrder is served while the watches are open");

    drop(streams);
    let mut again = foodorder_testkit::wait_for(
        "a watch to be accepted once the others closed",
        Duration::from_secs(10),
        || async { watch().await.ok() },
    )
    .await
    .into_inner();
    again.next().await.unwrap().unwrap();
    app.stop().await;
}

/// `/metrics` counts calls by method and code, new orders (not idempotent
/// replays), published outbox rows and open WatchOrder streams.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn metrics_count_calls_orders_outbox_and_streams() {
    use crate::support::with_metadata;
    use foodorder_testkit::{http_get, metric_value, wait_for_metric};

    let app = spawn_app().await;
    let mut client = app.client.clone();
    let mut placed = None;
    for _ in 0..2 {
        let request = with_metadata(
            order_request(&[(1, 1)]),
            &[("idempotency-key", "metrics-key-1")],
        );
        placed = client
            .place_order(request)
            .await
            .unwrap()
            .into_inner()
            .order;
    }
    client.place_order(order_request(&[(2, 3)])).await.unwrap();
    let refused = client.place_order(order_request(&[])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let mut stream = client
        .watch_order(WatchOrderRequest {
            order_id: placed.unwrap().id,
        })
        .await
        .unwrap()
        .into_inner();
    stream.next().await.expect("the first update").unwrap();

    let http = app.http_addr;
    let (status, scrape) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        metric_value(&scrape, "foodorder_orders_placed_total"),
        Some(2.0),
        "a replay is not a new order:\n{scrape}"
    );
    assert_eq!(
        metric_value(
            &scrape,
            r#"foodorder_grpc_server_requests_total{method="PlaceOrder",code="OK"}"#
        ),
        Some(3.0),
        "{scrape}"
    );
    assert_eq!(
        metric_value(
            &scrape,
            r#"foodorder_grpc_server_requests_total{method="PlaceOrder",code="INVALID_ARGUMENT"}"#
        ),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        metric_value(
            &scrape,
            r#"foodorder_grpc_server_request_duration_seconds_count{method="PlaceOrder"}"#
        ),
        Some(4.0),
        "{scrape}"
    );
    assert_eq!(
        metric_value(&scrape, "foodorder_watch_streams_active"),
        Some(1.0),
        "{scrape}"
    );
    assert!(metric_value(&scrape, r#"foodorder_db_pool_connections{state="idle"}"#).is_some());
    assert!(metric_value(&scrape, "process_resident_memory_bytes").unwrap() > 1e6);

    let topic = &app.kafka.topic(foodorder_contract::topics::ORDER_PLACED);
    wait_for_metric(
        http,
        &format!(r#"foodorder_outbox_published_total{{topic="{topic}"}}"#),
        |published| published == 2.0,
    )
    .await;
    wait_for_metric(
        http,
        &format!(r#"foodorder_outbox_unsent_rows{{topic="{topic}"}}"#),
        |unsent| unsent == 0.0,
    )
    .await;
    drop(stream);
    wait_for_metric(http, "foodorder_watch_streams_active", |active| {
        active == 0.0
    })
    .await;
    app.stop().await;
}
