//! The per-client rate limit: a client's burst, then RESOURCE_EXHAUSTED with
//! a RetryInfo; another client is served; a malformed `x-api-key` is refused;
//! health checks are never limited.

use std::time::Duration;

use foodorder_contract::v1::ListMenuItemsRequest;
use foodorder_testkit as testing;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt;

use crate::support::{spawn_app_with, with_metadata};

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn each_client_gets_its_rate_then_resource_exhausted_with_retry_info() {
    let app = spawn_app_with(|config| {
        config.rate_limit.per_second = 2;
        config.rate_limit.burst = 2;
    })
    .await;
    let mut client = app.client.clone();
    let menu = |key: &str| with_metadata(ListMenuItemsRequest {}, &[("x-api-key", key)]);

    // The burst of two passes; the next calls, made at once, are refused
    // (a bounded number of tries, so that a very slow machine, where half a
    // second passes between calls and a token comes back, does not fail it).
    for _ in 0..2 {
        client
            .list_menu_items(menu("team-a"))
            .await
            .expect("within the burst");
    }
    let mut refusal = None;
    for _ in 0..20 {
        if let Err(status) = client.list_menu_items(menu("team-a")).await {
            refusal = Some(status);
            break;
        }
    }
    let refusal = refusal.expect("team-a refused within 20 quick calls");
    assert_eq!(refusal.code(), Code::ResourceExhausted, "{refusal:?}");
    assert!(
        refusal
            .message()
            .starts_with("rate limit reached: 2 calls per second"),
        "{}",
        refusal.message()
    );
    let retry = refusal
        .get_error_details()
        .retry_info()
        .cloned()
        .expect("a RetryInfo")
        .retry_delay
        .expect("a delay");
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_millis(500),
        "{retry:?}"
    );

    // Another key has its own bucket, and so has a call with no key (its peer address).
    client
        .list_menu_items(menu("team-b"))
        .await
        .expect("another key is served");
    client
        .list_menu_items(ListMenuItemsRequest {})
        .await
        .expect("a call without a key is counted against its address");

    // A malformed key is refused, whatever the rate.
    for bad in ["k".repeat(129), "tab\tinside".to_owned()] {
        let status = client
            .list_menu_items(menu(&bad))
            .await
            .expect_err("a malformed x-api-key");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let details = status.get_error_details();
        assert_eq!(
            details.bad_request().unwrap().field_violations[0].field,
            "x-api-key"
        );
        assert!(!status.message().contains(&bad), "the key is not echoed");
    }

    // Health checks are never limited.
    for _ in 0..10 {
        let status = HealthClient::new(app.channel.clone())
            .check(HealthCheckRequest {
                service: "foodorder.v1.OrderService".into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving);
    }

    let (_, scrape) = testing::http_get(app.http_addr, "/metrics").await;
    let rejected = testing::metric_value(
        &scrape,
        "foodorder_place_order_rejected_total{reason=\"rate_limit\"}",
    )
    .expect("the rejection counter");
    assert!(rejected >= 1.0, "{rejected}");
    assert!(
        testing::metric_value(&scrape, "foodorder_rate_limit_clients").is_some(),
        "{scrape}"
    );
    app.stop().await;
}
