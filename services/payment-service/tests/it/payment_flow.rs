//! The payment service against a real PostgreSQL and a real broker.

use std::time::Duration;

use crate::support::*;
use foodorder_contract::v1::{OrderStatus, PaymentCompleted};
use foodorder_runtime::consumer::{
    DLQ_ERROR, DLQ_SOURCE_OFFSET, DLQ_SOURCE_PARTITION, DLQ_SOURCE_TOPIC,
};
use foodorder_testkit as testing;
use prost::Message;

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn placed_order_is_paid_once_and_reported() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    let kafka = testing::kafka_config();
    let producer = producer(&kafka).await;
    let service = spawn_service(pool.clone(), test_config(kafka.clone(), 0.0)).await;
    let order_id = new_order_id();
    send_order_placed(&producer, &kafka, order_id).await;

    let (order_status, attempt_status, attempts, error) = wait_for_payment(&pool, order_id).await;
    assert_eq!(
        (
            order_status.as_str(),
            attempt_status.as_str(),
            attempts,
            error
        ),
        ("COMPLETED", "SUCCEEDED", 1, None)
    );
    let records = payment_completed_records(&kafka, 1, Duration::from_millis(500)).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key, order_id.to_string());
    assert_eq!(
        records[0].headers["event-type"],
        "foodorder.v1.PaymentCompleted"
    );
    assert_eq!(
        records[0].headers["x-request-id"],
        format!("req-{order_id}")
    );
    // The same trace continues, from the payment service's own span.
    let traceparent = &records[0].headers["traceparent"];
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{traceparent}"
    );
    assert!(!traceparent.contains("00f067aa0ba902b7"), "{traceparent}");
    let event = PaymentCompleted::decode(records[0].payload.as_slice()).unwrap();
    assert!(event.success);
    assert_eq!(event.final_status(), OrderStatus::Completed);
    assert_eq!((event.attempt_count, event.amount.as_str()), (1, "25.98"));
    assert_eq!(
        event.metadata.unwrap().correlation_id,
        format!("req-{order_id}")
    );
    assert_eq!(charges(&pool, order_id).await, 1);
    service.stop().await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn declined_payment_fails_the_order() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    let kafka = testing::kafka_config();
    let producer = producer(&kafka).await;
    let service = spawn_service(pool.clone(), test_config(kafka.clone(), 1.0)).await;
    let order_id = new_order_id();
    send_order_placed(&producer, &kafka, order_id).await;
    let outcome = wait_for_payment(&pool, order_id).await;
    assert_eq!(
        outcome,
        (
            "FAILED".into(),
            "FAILED".into(),
            1,
            Some("Insufficient funds".into())
        )
    );
    service.stop().await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn timeouts_are_retried_then_fail() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    let kafka = testing::kafka_config();
    let producer = producer(&kafka).await;
    let mut config = test_config(kafka.clone(), 0.0);
    config.gateway.min_latency = Duration::from_millis(400);
    config.gateway.max_latency = Duration::from_millis(400);
    config.payment.timeout = Duration::from_millis(100);
    config.payment.max_attempts = 2;
    let service = spawn_service(pool.clone(), config).await;
    let order_id = new_order_id();
    send_order_placed(&producer, &kafka, order_id).await;
    let outcome = wait_for_payment(&pool, order_id).await;
    assert_eq!(
        outcome,
        (
            "FAILED".into(),
            "FAILED".into(),
            2,
            Some("Payment gateway timeout after 2 attempts".into())
        )
    );
    let (_, scrape) = testing::http_get(service.http, "/metrics").await;
    for (series, expected) in [
        (
            r#"foodorder_payment_outcomes_total{outcome="timed_out"}"#,
            1.0,
        ),
        (
            r#"foodorder_payment_gateway_call_duration_seconds_count{result="timeout"}"#,
            2.0,
        ),
        ("foodorder_payment_attempts_sum", 2.0),
    ] {
        assert_eq!(
            testing::metric_value(&scrape, series),
            Some(expected),
            "{series}\n{scrape}"
        );
    }
    assert_eq!(
        decisions(&pool, order_id).await,
        ["VOIDED"],
        "timed-out calls charge nothing, and giving up voids the order at the gateway"
    );
    service.stop().await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn duplicate_deliveries_charge_and_report_once() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    let kafka = testing::kafka_config();
    let producer = producer(&kafka).await;
    let order_id = new_order_id();
    for _ in 0..5 {
        send_order_placed(&producer, &kafka, order_id).await;
    }
    let service = spawn_service(pool.clone(), test_config(kafka.clone(), 0.0)).await;
    wait_for_payment(&pool, order_id).await;
    let records = payment_completed_records(&kafka, 1, Duration::from_secs(3)).await;
    assert_eq!(records.len(), 1, "one payment.completed record");
    assert_eq!(attempt_rows(&pool, order_id).await, 1);
    assert_eq!(charges(&pool, order_id).await, 1);

    // The metrics tell the same story: one payment, four duplicates, nothing left behind.
    let topic = &kafka.topic(foodorder_contract::topics::ORDER_PLACED);
    let records = |outcome: &str| {
        format!(r#"foodorder_consumer_records_total{{topic="{topic}",outcome="{outcome}"}}"#)
    };
    testing::wait_for_metric(service.http, &records("duplicate"), |count| count == 4.0).await;
    let (_, scrape) = testing::http_get(service.http, "/metrics").await;
    let value = |series: &str| testing::metric_value(&scrape, series);
    assert_eq!(value(&records("processed")), Some(1.0), "{scrape}");
    assert_eq!(
        value(r#"foodorder_payment_outcomes_total{outcome="succeeded"}"#),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        value("foodorder_payment_attempts_count"),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        value("foodorder_payment_attempts_sum"),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        value(r#"foodorder_payment_gateway_call_duration_seconds_count{result="approved"}"#),
        Some(1.0),
        "one gateway call for five deliveries:\n{scrape}"
    );
    assert_eq!(
        value("foodorder_payment_breaker_state"),
        Some(0.0),
        "{scrape}"
    );
    assert_eq!(
        value(&format!(
            r#"foodorder_consumer_in_flight_records{{topic="{topic}"}}"#
        )),
        Some(0.0),
        "{scrape}"
    );
    let completed = &kafka.topic(foodorder_contract::topics::PAYMENT_COMPLETED);
    testing::wait_for_metric(
        service.http,
        &format!(r#"foodorder_outbox_published_total{{topic="{completed}"}}"#),
        |published| published == 1.0,
    )
    .await;
    // Lag comes from librdkafka's statistics (every 5 s): every partition read, all committed.
    let lagging = |scrape: &str| {
        scrape
            .lines()
            .filter(|line| line.starts_with("foodorder_consumer_lag_records{"))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, scrape) = testing::http_get(service.http, "/metrics").await;
        let lags = lagging(&scrape);
        if lags.len() == kafka.event_partitions as usize && lags.iter().all(|lag| *lag == 0.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lag of every assigned partition is reported as 0 within 60 s:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    service.stop().await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn poison_messages_go_to_the_dlq_and_do_not_stall() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    let kafka = testing::kafka_config();
    let producer = producer(&kafka).await;
    let known_order = known_order(&pool).await;
    let good_order = new_order_id();
    send_raw(
        &producer,
        &kafka.topic(foodorder_contract::topics::ORDER_PLACED),
        "not-an-order",
        b"\xff\xfe garbage",
        "req-poison",
    )
    .await;
    send_raw(
        &producer,
        &kafka.topic(foodorder_contract::topics::ORDER_PLACED),
        &known_order.to_string(),
        b"\x0a\xff",
        "req-known",
    )
    .await;
    send_order_placed(&producer, &kafka, good_order).await;
    let service = spawn_service(pool.clone(), test_config(kafka.clone(), 0.0)).await;

    assert_eq!(
        wait_for_payment(&pool, good_order).await.0,
        "COMPLETED",
        "the next message is still processed"
    );
    let failed = wait_for_payment(&pool, known_order).await;
    assert_eq!(
        (failed.0.as_str(), failed.2),
        ("FAILED", 0),
        "a dead-lettered order with a known id is FAILED"
    );
    assert!(
        failed
            .3
            .unwrap()
            .starts_with("Payment could not be processed")
    );

    let dead = testing::collect_records_async(
        &kafka.bootstrap_servers,
        &kafka.topic(payment_service::DEAD_LETTER_TOPIC),
        kafka.dlq_partitions,
        2,
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(dead.len(), 2);
    let garbage = dead
        .iter()
        .find(|record| record.key == "not-an-order")
        .expect("garbage dead-lettered");
    assert_eq!(garbage.payload, b"\xff\xfe garbage");
    assert_eq!(
        garbage.headers[DLQ_SOURCE_TOPIC],
        kafka.topic(foodorder_contract::topics::ORDER_PLACED)
    );
    assert!(garbage.headers[DLQ_SOURCE_PARTITION].parse::<i32>().is_ok());
    assert!(garbage.headers[DLQ_SOURCE_OFFSET].parse::<i64>().is_ok());
    assert!(
        garbage.headers[DLQ_ERROR].contains("OrderPlaced"),
        "{}",
        garbage.headers[DLQ_ERROR]
    );
    assert_eq!(
        garbage.headers["x-request-id"], "req-poison",
        "original headers kept"
    );
    assert!(garbage.headers.contains_key("dlq-failed-at"));
    let dead_lettered = format!(
        r#"foodorder_consumer_records_total{{topic="{}",outcome="dead_lettered"}}"#,
        kafka.topic(foodorder_contract::topics::ORDER_PLACED)
    );
    testing::wait_for_metric(service.http, &dead_lettered, |count| count == 2.0).await;
    service.stop().await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn header_names_that_are_not_utf8_neither_crash_nor_lose_anything() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    let kafka = testing::kafka_config();
    let producer = producer(&kafka).await;
    let service = spawn_service(pool.clone(), test_config(kafka.clone(), 0.0)).await;
    let hostile_headers = vec![
        (b"\xff\xfe-name".to_vec(), Some(b"\xc3\x28 value".to_vec())),
        (b"x-request-id".to_vec(), Some(b"req-hostile".to_vec())),
        (b"no-value".to_vec(), None),
    ];
    // A valid OrderPlaced that also carries a header named with invalid UTF-8: paid as usual.
    let valid_order = new_order_id();
    testing::produce_raw(
        &kafka.bootstrap_servers,
        &kafka.topic(foodorder_contract::topics::ORDER_PLACED),
        0,
        Some(valid_order.to_string().as_bytes()),
        Some(&order_placed(valid_order).encode_to_vec()),
        &hostile_headers,
    )
    .await;
    // Garbage with the same headers: dead-lettered byte for byte.
    testing::produce_raw(
        &kafka.bootstrap_servers,
        &kafka.topic(foodorder_contract::topics::ORDER_PLACED),
        0,
        Some(b"hostile-key"),
        Some(b"\x00\x01 not protobuf"),
        &hostile_headers,
    )
    .await;
    let after = new_order_id();
    send_order_placed(&producer, &kafka, after).await;

    assert_eq!(wait_for_payment(&pool, valid_order).await.0, "COMPLETED");
    assert_eq!(wait_for_payment(&pool, after).await.0, "COMPLETED");
    assert!(!service.is_finished(), "the service is still running");
    let dead = testing::collect_records_async(
        &kafka.bootstrap_servers,
        &kafka.topic(payment_service::DEAD_LETTER_TOPIC),
        kafka.dlq_partitions,
        1,
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(dead.len(), 1, "only the garbage is dead-lettered");
    assert_eq!(dead[0].key, "hostile-key");
    assert_eq!(dead[0].payload, b"\x00\x01 not protobuf");
    assert_eq!(
        dead[0].raw_headers[..hostile_headers.len()],
        hostile_headers[..],
        "the original headers, byte for byte, come first"
    );
    assert_eq!(
        dead[0].headers[DLQ_SOURCE_TOPIC],
        kafka.topic(foodorder_contract::topics::ORDER_PLACED)
    );
    service.stop().await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn the_largest_record_and_a_deleted_dlq_topic_still_reach_the_dlq() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;

    let kafka = testing::kafka_config();
    let producer = producer(&kafka).await;
    let service = spawn_service(pool.clone(), test_config(kafka.clone(), 0.0)).await;
    let admin: AdminClient<DefaultClientContext> =
        foodorder_runtime::kafka::client_config(&kafka, "test-admin")
            .create()
            .unwrap();
    // The service creates its dead-letter topic as it starts: make sure it
    // exists before deleting it.
    let dead_letter_topic = kafka.topic(payment_service::DEAD_LETTER_TOPIC);
    foodorder_runtime::kafka::ensure_topics(
        &kafka,
        &[foodorder_runtime::kafka::TopicSpec::dead_letter(
            &kafka,
            &dead_letter_topic,
        )],
    )
    .await
    .unwrap();
    let deleted = admin
        .delete_topics(
            &[&kafka.topic(payment_service::DEAD_LETTER_TOPIC)],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");

    // As large as the event topic accepts: its dead-letter copy is larger still.
    let huge = vec![0xab_u8; foodorder_runtime::kafka::EVENT_MAX_MESSAGE_BYTES - 4096];
    testing::produce_raw(
        &kafka.bootstrap_servers,
        &kafka.topic(foodorder_contract::topics::ORDER_PLACED),
        1,
        Some(b"huge-key"),
        Some(&huge),
        &[(b"x-request-id".to_vec(), Some(b"req-huge".to_vec()))],
    )
    .await;
    let after = new_order_id();
    send_order_placed(&producer, &kafka, after).await;
    assert_eq!(wait_for_payment(&pool, after).await.0, "COMPLETED");

    let dead = testing::collect_records_async(
        &kafka.bootstrap_servers,
        &kafka.topic(payment_service::DEAD_LETTER_TOPIC),
        kafka.dlq_partitions,
        1,
        Duration::from_secs(90),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].key, "huge-key");
    assert!(dead[0].payload == huge, "the value is kept whole");
    assert_eq!(dead[0].headers["x-request-id"], "req-huge");
    assert!(!service.is_finished());
    service.stop().await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_poison_record_voids_its_order_and_a_charge_that_landed_first_stands() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    let kafka = testing::kafka_config();
    let producer = producer(&kafka).await;
    let unpaid = known_order(&pool).await;
    let charged = known_order(&pool).await;
    // A charge for `charged` that landed on another instance before its record turned out poison.
    sqlx::query(
        "INSERT INTO payments.gateway_ledger (charge_id, idempotency_key, amount, outcome) \
         VALUES ($1, $2, 25.98, 'APPROVED')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(charged.to_string())
    .execute(&pool)
    .await
    .unwrap();
    for order_id in [unpaid, charged] {
        send_raw(
            &producer,
            &kafka.topic(foodorder_contract::topics::ORDER_PLACED),
            &order_id.to_string(),
            b"\x0a\xff not an OrderPlaced",
            "req-poison-known",
        )
        .await;
    }
    let service = spawn_service(pool.clone(), test_config(kafka.clone(), 0.0)).await;

    let failed = wait_for_payment(&pool, unpaid).await;
    assert_eq!((failed.0.as_str(), failed.1.as_str()), ("FAILED", "FAILED"));
    assert_eq!(
        decisions(&pool, unpaid).await,
        ["VOIDED"],
        "voided at the gateway: no charge can land later"
    );
    let completed = wait_for_payment(&pool, charged).await;
    assert_eq!(
        (completed.0.as_str(), completed.1.as_str()),
        ("COMPLETED", "SUCCEEDED"),
        "the customer was charged, so the order is not FAILED"
    );
    assert_eq!(charges(&pool, charged).await, 1);
    service.stop().await;
}

/// The payment-slowdown incident (the gateway's latency settings): the gateway
/// latency histogram shows it.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_gateway_slowdown_shows_in_the_gateway_latency_histogram() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    let kafka = testing::kafka_config();
    let producer = producer(&kafka).await;
    let mut config = test_config(kafka.clone(), 0.0);
    config.gateway.min_latency = Duration::from_millis(300);
    config.gateway.max_latency = Duration::from_millis(400);
    let service = spawn_service(pool.clone(), config).await;
    for _ in 0..3 {
        let order_id = new_order_id();
        send_order_placed(&producer, &kafka, order_id).await;
    }
    let bucket = |le: &str| {
        format!(
            r#"foodorder_payment_gateway_call_duration_seconds_bucket{{le="{le}",result="approved"}}"#
        )
    };
    testing::wait_for_metric(service.http, &bucket("0.5"), |calls| calls == 3.0).await;
    let (_, scrape) = testing::http_get(service.http, "/metrics").await;
    assert_eq!(
        testing::metric_value(&scrape, &bucket("0.25")),
        Some(0.0),
        "no call was faster than the slowdown allows:\n{scrape}"
    );
    service.stop().await;
}

/// A dead-letter topic made by an older version (the broker's default
/// `max.message.bytes`) is widened at start, keeping its other settings, so
/// the dead-letter copy of the largest record still fits.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_narrow_dead_letter_topic_is_widened_and_keeps_its_settings() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    use rdkafka::admin::{
        AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication,
    };
    use rdkafka::client::DefaultClientContext;

    let kafka = testing::kafka_config();
    let admin: AdminClient<DefaultClientContext> =
        foodorder_runtime::kafka::client_config(&kafka, "test-admin")
            .create()
            .unwrap();
    let dead_letter_topic = kafka.topic(payment_service::DEAD_LETTER_TOPIC);
    let narrow = NewTopic::new(&dead_letter_topic, 1, TopicReplication::Fixed(1))
        .set("retention.ms", "123456789");
    let created = admin
        .create_topics(&[narrow], &AdminOptions::new())
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");

    let producer = producer(&kafka).await;
    let service = spawn_service(pool.clone(), test_config(kafka.clone(), 0.0)).await;
    let huge = vec![0xcd_u8; foodorder_runtime::kafka::EVENT_MAX_MESSAGE_BYTES - 4096];
    testing::produce_raw(
        &kafka.bootstrap_servers,
        &kafka.topic(foodorder_contract::topics::ORDER_PLACED),
        0,
        Some(b"huge-key"),
        Some(&huge),
        &[],
    )
    .await;
    let after = new_order_id();
    send_order_placed(&producer, &kafka, after).await;
    assert_eq!(wait_for_payment(&pool, after).await.0, "COMPLETED");
    let dead = testing::collect_records_async(
        &kafka.bootstrap_servers,
        &kafka.topic(payment_service::DEAD_LETTER_TOPIC),
        1,
        1,
        Duration::from_secs(90),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].payload == huge, "the value is kept whole");

    let described = admin
        .describe_configs(
            &[ResourceSpecifier::Topic(
                &kafka.topic(payment_service::DEAD_LETTER_TOPIC),
            )],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let config = described.into_iter().next().unwrap().unwrap();
    let value = |name: &str| config.get(name).and_then(|entry| entry.value.clone());
    assert_eq!(
        value("max.message.bytes"),
        Some(foodorder_runtime::kafka::DLQ_MAX_MESSAGE_BYTES.to_string())
    );
    assert_eq!(
        value("retention.ms").as_deref(),
        Some("123456789"),
        "other settings are kept"
    );
    service.stop().await;
}

/// `KAFKA_MIN_INSYNC_REPLICAS` becomes the `min.insync.replicas` of every
/// topic the services create (event and dead-letter topics alike); unset, the
/// topics follow the broker's default.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn created_topics_carry_the_configured_min_insync_replicas() {
    use foodorder_runtime::kafka::{TopicSpec, ensure_topics};
    use rdkafka::admin::{AdminClient, AdminOptions, ConfigSource, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;

    let mut kafka = testing::kafka_config();
    let admin: AdminClient<DefaultClientContext> =
        foodorder_runtime::kafka::client_config(&kafka, "test-admin")
            .create()
            .unwrap();
    // A topic just created may not be known yet to the broker that answers the
    // description: asked again until it lists the setting.
    let described = |topic: String| {
        let admin = &admin;
        async move {
            testing::wait_for(
                &format!("the broker to describe {topic}'s min.insync.replicas"),
                Duration::from_secs(30),
                || async {
                    let described = admin
                        .describe_configs(&[ResourceSpecifier::Topic(&topic)], &AdminOptions::new())
                        .await
                        .ok()?;
                    let config = described.into_iter().next()?.ok()?;
                    let entry = config.get("min.insync.replicas")?;
                    Some((
                        entry.value.clone(),
                        entry.source == ConfigSource::DynamicTopic,
                    ))
                },
            )
            .await
        }
    };

    let unset = kafka.topic("unset.min-isr");
    ensure_topics(&kafka, &[TopicSpec::event(&kafka, &unset)])
        .await
        .unwrap();
    assert!(
        !described(unset).await.1,
        "without KAFKA_MIN_INSYNC_REPLICAS the topic follows the broker's default"
    );

    // The shared test broker is a single node: one in-sync replica is all it can have.
    kafka.min_insync_replicas = Some(1);
    let (event, dead_letter) = (kafka.topic("set.min-isr"), kafka.topic("set.min-isr.dlq"));
    ensure_topics(
        &kafka,
        &[
            TopicSpec::event(&kafka, &event),
            TopicSpec::dead_letter(&kafka, &dead_letter),
        ],
    )
    .await
    .unwrap();
    for topic in [event, dead_letter] {
        assert_eq!(
            described(topic.clone()).await,
            (Some("1".to_owned()), true),
            "{topic} has min.insync.replicas set on the topic itself"
        );
    }
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn poison_for_an_order_never_requested_waits_for_its_real_event_then_declares_it_unprocessable()
 {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    let kafka = testing::kafka_config();
    let producer = producer(&kafka).await;
    // `arrives`: a stray record keyed by the order, then its real OrderPlaced.
    // `never`: only a poison record ever names it.
    // `contradicted`: its first request is stored; a second OrderPlaced with
    // another total is not paid, the first one is.
    let (arrives, never) = (new_order_id(), new_order_id());
    let contradicted = known_order(&pool).await;
    for order_id in [arrives, never] {
        send_raw(
            &producer,
            &kafka.topic(foodorder_contract::topics::ORDER_PLACED),
            &order_id.to_string(),
            b"\x0a\xff stray",
            "req-stray",
        )
        .await;
    }
    send_order_placed(&producer, &kafka, arrives).await;
    let mut other_total = order_placed(contradicted);
    other_total.total_amount = "99.00".into();
    send_raw(
        &producer,
        &kafka.topic(foodorder_contract::topics::ORDER_PLACED),
        &contradicted.to_string(),
        &other_total.encode_to_vec(),
        "req-contradicting",
    )
    .await;
    send_order_placed(&producer, &kafka, contradicted).await;
    // test_config declares poison-only order ids unprocessable after 2 s.
    let config = test_config(kafka.clone(), 0.0);
    let config_group = config.consumer.group_id.clone();
    let service = spawn_service(pool.clone(), config).await;

    let paid = wait_for_payment(&pool, arrives).await;
    assert_eq!(
        (paid.0.as_str(), paid.1.as_str()),
        ("COMPLETED", "SUCCEEDED"),
        "the real event is paid"
    );
    assert_eq!(charges(&pool, arrives).await, 1);
    // `never` is declared unprocessable to the order API: an OrderUnprocessable
    // on order.unprocessable, and no payment event, attempt or gateway call.
    let declared = testing::collect_records_async(
        &kafka.bootstrap_servers,
        &kafka.topic(foodorder_contract::topics::ORDER_UNPROCESSABLE),
        kafka.event_partitions,
        1,
        Duration::from_secs(60),
        // Several housekeeping rounds: a second declaration would show.
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(declared.len(), 1, "one declaration: {declared:?}");
    assert_eq!(declared[0].key, never.to_string());
    assert_eq!(
        declared[0].headers["event-type"],
        "foodorder.v1.OrderUnprocessable"
    );
    let (declared_id, event) = foodorder_contract::events::decode_order_unprocessable(
        Some(declared[0].key.as_bytes()),
        Some(&declared[0].payload),
    )
    .expect("a valid OrderUnprocessable");
    assert_eq!(declared_id, never);
    assert!(
        event.reason.starts_with("value is not a valid OrderPlaced"),
        "{}",
        event.reason
    );
    // Its real event, arriving after the declaration, is not paid: once the
    // group has committed past it, nothing was recorded for it.
    send_order_placed(&producer, &kafka, never).await;
    let group = config_group.clone();
    let (bootstrap, topic) = (
        kafka.bootstrap_servers.clone(),
        kafka.topic(foodorder_contract::topics::ORDER_PLACED),
    );
    testing::wait_for(
        "the consumer to commit past the late OrderPlaced",
        Duration::from_secs(60),
        || {
            let (bootstrap, topic, group) = (bootstrap.clone(), topic.clone(), group.clone());
            async move {
                let offsets = tokio::task::spawn_blocking(move || {
                    testing::group_offsets(&bootstrap, &group, &topic)
                })
                .await
                .unwrap();
                offsets
                    .values()
                    .all(|(committed, high)| committed.max(&0) >= high)
                    .then_some(())
            }
        },
    )
    .await;
    let completed = payment_completed_records(&kafka, 2, Duration::from_secs(3)).await;
    assert!(
        completed
            .iter()
            .all(|record| record.key != never.to_string()),
        "no payment event for an order id only poison named: {completed:?}"
    );
    assert_eq!(attempt_rows(&pool, never).await, 0);
    assert_eq!(charges(&pool, never).await, 0);
    assert!(decisions(&pool, never).await.is_empty(), "no gateway call");
    let first = wait_for_payment(&pool, contradicted).await;
    assert_eq!(first.0, "COMPLETED");
    let charged: rust_decimal::Decimal =
        sqlx::query_scalar("SELECT amount FROM payments.payment_attempts WHERE order_id = $1")
            .bind(contradicted)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        charged.to_string(),
        "25.98",
        "the first request's total is charged"
    );

    let dead = testing::collect_records_async(
        &kafka.bootstrap_servers,
        &kafka.topic(payment_service::DEAD_LETTER_TOPIC),
        kafka.dlq_partitions,
        3,
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .await;
    let mut keys: Vec<String> = dead.iter().map(|record| record.key.clone()).collect();
    keys.sort();
    let mut expected = vec![
        arrives.to_string(),
        never.to_string(),
        contradicted.to_string(),
    ];
    expected.sort();
    assert_eq!(keys, expected);
    assert!(
        dead.iter()
            .any(|record| record.headers[DLQ_ERROR].contains("contradicts its first request"))
    );
    testing::wait_for(
        "settled orders to be forgotten",
        Duration::from_secs(60),
        || async {
            let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM payments.unsettled_poison")
                .fetch_one(&pool)
                .await
                .unwrap();
            (waiting == 0).then_some(())
        },
    )
    .await;
    service.stop().await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_correlation_id_that_fails_the_request_id_check_travels_no_further() {
    let (pool, _database) = foodorder_testkit::database(&[&payment_service::SCHEMA]).await;
    let kafka = testing::kafka_config();
    let producer = producer(&kafka).await;
    let (hostile, fine) = (new_order_id(), new_order_id());
    for (order_id, correlation_id) in [
        (
            hostile,
            format!("evil\nforged log line {}", "x".repeat(4096)),
        ),
        (fine, format!("req-{fine}")),
    ] {
        let mut event = order_placed(order_id);
        event.metadata.as_mut().unwrap().correlation_id = correlation_id.clone();
        send_raw(
            &producer,
            &kafka.topic(foodorder_contract::topics::ORDER_PLACED),
            &order_id.to_string(),
            &event.encode_to_vec(),
            &correlation_id,
        )
        .await;
    }
    let service = spawn_service(pool.clone(), test_config(kafka.clone(), 0.0)).await;
    for order_id in [hostile, fine] {
        wait_for_payment(&pool, order_id).await;
    }
    for (order_id, expected) in [(hostile, String::new()), (fine, format!("req-{fine}"))] {
        let (stored, header): (String, Option<String>) = sqlx::query_as(
            "SELECT r.correlation_id, o.headers ->> 'x-request-id' FROM payments.payment_requests r \
             JOIN payments.outbox o ON o.message_key = r.order_id::text WHERE r.order_id = $1",
        )
        .bind(order_id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(stored, expected, "the stored correlation id of {order_id}");
        assert_eq!(
            header.as_deref(),
            Some(expected.as_str()),
            "x-request-id of the payment.completed of {order_id}"
        );
        let completed = PaymentCompleted::decode(
            sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT payload FROM payments.outbox WHERE message_key = $1",
            )
            .bind(order_id.to_string())
            .fetch_one(&pool)
            .await
            .unwrap()
            .as_slice(),
        )
        .unwrap();
        assert_eq!(completed.metadata.unwrap().correlation_id, expected);
    }
    service.stop().await;
}
