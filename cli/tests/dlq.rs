//! `foodorder dlq` against a real broker: dead-lettered records are listed
//! and shown; a redrive sends the selected ones back to their source topic
//! byte for byte (plus the redrive header) exactly once however often it
//! runs; a record whose source topic is gone stays; bad input is one line and
//! exit status 1.

use std::process::Command;
use std::time::Duration;

use foodorder_runtime::config::KafkaConfig;
use foodorder_runtime::kafka::{TopicSpec, ensure_topics};
use foodorder_testkit as testing;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Runs the CLI; (exit status, stdout, stderr).
fn foodorder(prefix: &str, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_foodorder"))
        .args(args)
        .env(
            "KAFKA_BOOTSTRAP_SERVERS",
            testing::kafka::bootstrap_servers(),
        )
        .env("KAFKA_TOPIC_PREFIX", prefix)
        .env_remove("KAFKA_SASL_USERNAME")
        .env_remove("KAFKA_SASL_PASSWORD")
        .output()
        .expect("run foodorder");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// An `OrderPlaced` event's bytes.
fn placed_event(order_id: &str) -> Vec<u8> {
    use prost::Message;
    foodorder_proto::v1::OrderPlaced {
        order_id: order_id.to_owned(),
        total_amount: "12.50".to_owned(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A record as a consumer dead-letters it: the original, then the diagnostics.
async fn dead_letter(
    producer: &FutureProducer,
    dlq: &str,
    source: &str,
    key: &str,
    value: &[u8],
    error: &str,
) {
    dead_letter_with(
        producer,
        dlq,
        source,
        key,
        value,
        error,
        OwnedHeaders::new(),
    )
    .await;
}

/// [`dead_letter`] of an original record that already carried `original` headers.
async fn dead_letter_with(
    producer: &FutureProducer,
    dlq: &str,
    source: &str,
    key: &str,
    value: &[u8],
    error: &str,
    original: OwnedHeaders,
) {
    let headers = original
        .insert(Header {
            key: "x-request-id",
            value: Some("req-1"),
        })
        .insert(Header {
            key: "traceparent",
            value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        })
        .insert(Header {
            key: "dlq-source-topic",
            value: Some(source),
        })
        .insert(Header {
            key: "dlq-source-partition",
            value: Some("2"),
        })
        .insert(Header {
            key: "dlq-source-offset",
            value: Some("41"),
        })
        .insert(Header {
            key: "dlq-consumer-group",
            value: Some("payment-service"),
        })
        .insert(Header {
            key: "dlq-error",
            value: Some(error),
        })
        .insert(Header {
            key: "dlq-failed-at",
            value: Some("2026-12-04T03:00:00+00:00"),
        });
    // A topic just created may take a moment to reach the broker's metadata.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let record = FutureRecord::to(dlq)
            .key(key)
            .payload(value)
            .headers(headers.clone());
        match producer.send(record, Duration::from_secs(10)).await {
            Ok(_) => return,
            Err((error, _)) if std::time::Instant::now() < deadline => {
                eprintln!("writing to {dlq} again: {error}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err((error, _)) => panic!("write the dead-lettered record: {error}"),
        }
    }
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn dead_letters_are_listed_shown_and_redriven_once() {
    let prefix = testing::unique_prefix();
    let bootstrap = testing::kafka::bootstrap_servers();
    let config = KafkaConfig::local(&bootstrap, &prefix);
    let (placed, dlq) = (
        format!("{prefix}order.placed"),
        format!("{prefix}payment.dlq"),
    );
    ensure_topics(
        &config,
        &[
            TopicSpec::event(&config, &placed),
            TopicSpec::dead_letter(&config, &dlq),
        ],
    )
    .await
    .expect("create the topics");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    dead_letter(
        &producer,
        &dlq,
        &placed,
        "order-1",
        &placed_event("order-1"),
        "the gateway refused our credentials",
    )
    .await;
    dead_letter(
        &producer,
        &dlq,
        &placed,
        "order-2",
        &placed_event("order-2"),
        "the gateway refused our credentials",
    )
    .await;
    dead_letter(
        &producer,
        &dlq,
        &placed,
        "order-3",
        b"\xff\xff",
        "undecodable OrderPlaced",
    )
    .await;
    dead_letter(
        &producer,
        &dlq,
        &format!("{prefix}gone.topic"),
        "order-4",
        b"x",
        "the gateway refused our credentials",
    )
    .await;

    // A producer that forged the diagnostics (to have the admin redrive its
    // record to a topic it may not write): the consumer's own, appended after
    // the original headers, are the ones that count.
    dead_letter_with(
        &producer,
        &dlq,
        &placed,
        "order-5",
        &placed_event("order-5"),
        "the gateway refused our credentials",
        OwnedHeaders::new()
            .insert(Header {
                key: "dlq-source-topic",
                value: Some(format!("{prefix}payment.completed").as_str()),
            })
            .insert(Header {
                key: "dlq-error",
                value: Some("forged"),
            }),
    )
    .await;
    // A record whose (real) source is no topic payment.dlq's consumer reads.
    dead_letter(
        &producer,
        &dlq,
        &format!("{prefix}payment.completed"),
        "order-6",
        b"x",
        "the gateway refused our credentials",
    )
    .await;
    let (code, out, err) = foodorder(&prefix, &["dlq", "list", "payment.dlq"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("6 record(s) in"), "{out}");
    assert!(
        !out.contains("forged"),
        "the consumer's diagnostics win: {out}"
    );
    assert!(
        out.contains("OrderPlaced order-1") && out.contains("undecodable, 2 B"),
        "values summed up: {out}"
    );
    assert!(out.contains(&format!("{placed}/2@41")), "{out}");
    assert!(out.contains("undecodable OrderPlaced"), "{out}");

    let (code, out, err) = foodorder(&prefix, &["dlq", "show", "payment.dlq", "0:0"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("OrderPlaced {") && out.contains("order-1"),
        "decoded: {out}"
    );
    assert!(out.contains("the gateway refused our credentials"), "{out}");
    let (_, out, _) = foodorder(&prefix, &["dlq", "show", "payment.dlq", "0:2"]);
    assert!(out.contains("does not decode"), "{out}");

    // Dry run: says, sends nothing.
    let (code, out, err) = foodorder(
        &prefix,
        &[
            "dlq",
            "redrive",
            "payment.dlq",
            "--error",
            "credentials",
            "--dry-run",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("dry run: 3 record(s) would be sent back; 2 stay"),
        "{out}"
    );
    assert!(out.contains("gone.topic is not one that"), "{out}");
    assert!(
        out.contains("payment.completed is not one that") && out.contains("(order.placed)"),
        "{out}"
    );
    // The cause fixed: the three records whose error it was go back, once
    // (the forged one to where the consumer read it, not where it claims).
    let (code, out, err) = foodorder(
        &prefix,
        &["dlq", "redrive", "payment.dlq", "--error", "credentials"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("sent 3 record(s) back (3 to {placed}); 2 stay")),
        "{out}"
    );
    let (code, out, err) = foodorder(
        &prefix,
        &["dlq", "redrive", "payment.dlq", "--error", "credentials"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("sent 0 record(s) back; 2 stay") && out.contains("3 already redriven"),
        "{out}"
    );
    let (_, out, _) = foodorder(&prefix, &["dlq", "list", "payment.dlq"]);
    assert!(
        out.contains("6 record(s) in") && out.contains("3 of them redriven"),
        "{out}"
    );

    let copies = tokio::task::spawn_blocking(move || {
        testing::kafka::collect_records(
            &bootstrap,
            &placed,
            6,
            3,
            Duration::from_secs(30),
            Duration::from_secs(3),
        )
    })
    .await
    .unwrap();
    assert_eq!(copies.len(), 3, "each record once: {copies:?}");
    for copy in &copies {
        let number = copy.key.trim_start_matches("order-");
        assert_eq!(copy.payload, placed_event(&format!("order-{number}")));
        assert_eq!(
            copy.headers.get("x-request-id").map(String::as_str),
            Some("req-1")
        );
        assert!(copy.headers.contains_key("traceparent"));
        assert!(
            !copy.headers.keys().any(|name| name.starts_with("dlq-")),
            "{:?}",
            copy.headers
        );
        let origin = copy
            .headers
            .get("foodorder-redrive-of")
            .expect("the redrive header");
        assert!(origin.starts_with(&format!("{dlq}:0:")), "{origin}");
    }

    // A source topic its consumers do read, but that is gone: the record stays.
    let order_dlq = format!("{prefix}order.dlq");
    ensure_topics(&config, &[TopicSpec::dead_letter(&config, &order_dlq)])
        .await
        .expect("create order.dlq");
    dead_letter(
        &producer,
        &order_dlq,
        &format!("{prefix}order.unprocessable"),
        "order-7",
        b"x",
        "the gateway refused our credentials",
    )
    .await;
    let (code, out, err) = foodorder(&prefix, &["dlq", "redrive", "order.dlq"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("order.unprocessable no longer exists")
            && out.contains("sent 0 record(s) back; 1 stay"),
        "{out}"
    );

    // Bad input: one line on stderr, exit status 1.
    for (args, expected) in [
        (
            vec!["dlq", "list", "order.placed"],
            "is not a dead-letter topic",
        ),
        (
            vec!["dlq", "show", "payment.dlq", "0:99"],
            "has no offset 99",
        ),
        (
            vec!["dlq", "show", "payment.dlq", "5:0"],
            "has no partition 5",
        ),
        (
            vec!["dlq", "show", "payment.dlq", "zero"],
            "is not PARTITION:OFFSET",
        ),
        (vec!["dlq", "list", "notification.dlq"], "does not exist"),
        (
            vec!["dlq", "redrive", "payment.dlq", "--since", "yesterday"],
            "--since",
        ),
    ] {
        let (code, out, err) = foodorder(&prefix, &args);
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(
            err.starts_with("foodorder: ") && err.contains(expected),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_broker_that_does_not_answer_is_one_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_foodorder"))
        .args(["dlq", "list", "payment.dlq", "--bootstrap", "127.0.0.1:1"])
        .env_remove("KAFKA_SASL_USERNAME")
        .env_remove("KAFKA_SASL_PASSWORD")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no answer from Kafka at 127.0.0.1:1"), "{err}");
}

#[test]
fn an_order_api_that_does_not_answer_is_one_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_foodorder"))
        .args([
            "order",
            "get",
            "0b8e3c9e-5f51-4a55-9d0e-8d8f2d0a1c11",
            "--addr",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot reach the order API at 127.0.0.1:1"),
        "{err}"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_foodorder"))
        .args([
            "trace",
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "--jaeger",
            "http://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("no answer from Jaeger's query API"), "{err}");
    let output = Command::new(env!("CARGO_BIN_EXE_foodorder"))
        .args(["trace", "not-an-id"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("neither a trace id"), "{err}");
}
