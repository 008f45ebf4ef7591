//! Least privilege in Kafka: a broker started as `build-support/run` starts
//! its own (`build-support/kafka/broker --sasl`: SASL/SCRAM only, an ACL for
//! everything), provisioned by `build-support/kafka/Provision.java`. Each
//! service's principal may do what the service does and nothing else; a
//! client without a login, or with a wrong password, may do nothing; and the
//! three services run the whole flow, each as its own principal.

use std::path::Path;
use std::time::Duration;

use foodorder_testkit as testing;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::support::Platform;

const PRINCIPALS: [&str; 6] = [
    "admin",
    "broker",
    "controller",
    "order-api",
    "payment-service",
    "notification-service",
];

fn client(bootstrap: &str, login: Option<(&str, &str)>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "8000")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("log_level", "0");
    if let Some((username, password)) = login {
        testing::broker::scram_login(&mut config, username, password);
    }
    config
}

/// Produces one record to `topic` as `login`; the broker's answer.
async fn produce(
    bootstrap: &str,
    login: Option<(&str, &str)>,
    topic: &str,
) -> Result<(), KafkaError> {
    let producer: FutureProducer = client(bootstrap, login).create().expect("a producer");
    producer
        .send(
            FutureRecord::to(topic).key("k").payload("v"),
            Duration::from_secs(10),
        )
        .await
        .map(drop)
        .map_err(|(error, _)| error)
}

fn password(dir: &Path, principal: &str) -> String {
    std::fs::read_to_string(dir.join(format!("kafka-{principal}.password")))
        .unwrap()
        .trim()
        .to_owned()
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn each_principal_may_do_what_its_service_does_and_nothing_else() {
    let credentials = std::env::temp_dir().join(format!("foodorder-sasl-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&credentials).unwrap();
    for principal in PRINCIPALS {
        std::fs::write(
            credentials.join(format!("kafka-{principal}.password")),
            uuid::Uuid::new_v4().simple().to_string(),
        )
        .unwrap();
    }
    let broker = testing::PrivateBroker::start_with_sasl(testing::free_port(), &credentials).await;
    let bootstrap = broker.bootstrap();
    let prefix = testing::unique_prefix();
    let provision = std::process::Command::new("java")
        .arg("-cp")
        .arg(format!("{}/*", testing::PrivateBroker::libs()))
        .arg(testing::repository_root().join("build-support/kafka/Provision.java"))
        .args(["--bootstrap", &bootstrap, "--prefix", &prefix])
        .arg("--credentials")
        .arg(&credentials)
        .output()
        .expect("run Provision.java");
    assert!(
        provision.status.success(),
        "Provision.java: {}",
        String::from_utf8_lossy(&provision.stderr)
    );
    let login = |principal: &'static str| -> (&'static str, String) {
        (principal, password(&credentials, principal))
    };
    let (order_api, payment, notification) = (
        login("order-api"),
        login("payment-service"),
        login("notification-service"),
    );
    let as_login = |login: &(&'static str, String)| Some((login.0, login.1.clone()));
    let topic = |name: &str| format!("{prefix}{name}");

    // What each service does.
    for (who, name) in [
        (&order_api, "order.placed"),
        (&order_api, "order.dlq"),
        (&payment, "payment.completed"),
        (&payment, "order.unprocessable"),
        (&payment, "payment.dlq"),
        (&notification, "notification.dlq"),
    ] {
        let login = as_login(who);
        produce(
            &bootstrap,
            login.as_ref().map(|(u, p)| (*u, p.as_str())),
            &topic(name),
        )
        .await
        .unwrap_or_else(|error| panic!("{} may write {name}: {error}", who.0));
    }
    // Another service's topic: refused by the broker, at once.
    let mut tried = Vec::new();
    for (who, name) in [
        (&payment, "order.placed"),
        (&notification, "order.placed"),
        (&order_api, "payment.completed"),
        (&notification, "payment.completed"),
        (&order_api, "order.unprocessable"),
        (&order_api, "payment.dlq"),
        (&notification, "order.dlq"),
    ] {
        let login = as_login(who);
        let error = produce(
            &bootstrap,
            login.as_ref().map(|(u, p)| (*u, p.as_str())),
            &topic(name),
        )
        .await
        .expect_err("another service's topic");
        assert_eq!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::TopicAuthorizationFailed),
            "{} writing {name}: {error}",
            who.0
        );
        tried.push(format!("{} writes {name}: {error}", who.0));
    }
    // No login, or a wrong password: nothing at all.
    for (what, login) in [
        ("no login", None),
        (
            "order-api with a wrong password",
            Some(("order-api", "wrong")),
        ),
        ("an unknown principal", Some(("intruder", "x"))),
    ] {
        let error = produce(&bootstrap, login, &topic("order.placed"))
            .await
            .expect_err(what);
        tried.push(format!("{what} writes order.placed: {error}"));
    }
    // The test kit's own SCRAM-SHA-512 client (the raw producer the chaos
    // run's hostile records go through): the admin writes, a wrong password
    // is refused at login, and a service's principal is held to its ACLs.
    let admin = login("admin");
    let raw = |login: Option<(&'static str, String)>, name: &str| {
        let (bootstrap, topic) = (bootstrap.clone(), topic(name));
        async move {
            let login = login
                .as_ref()
                .map(|(user, password)| (*user, password.as_str()));
            testing::try_produce_raw_as(login, &bootstrap, &topic, 0, Some(b"k"), Some(b"v"), &[])
                .await
        }
    };
    let offset = raw(as_login(&admin), "order.dlq")
        .await
        .expect("the admin writes over the raw protocol after its SCRAM login");
    assert!(offset >= 0);
    let error = raw(Some(("admin", "wrong".to_owned())), "order.dlq")
        .await
        .expect_err("a wrong password");
    assert!(error.contains("SASL authentication failed"), "{error}");
    tried.push(format!(
        "the raw producer as admin with a wrong password: {error}"
    ));
    let error = raw(as_login(&payment), "order.placed")
        .await
        .expect_err("another service's topic, over the raw protocol");
    assert!(error.contains("error code 29"), "{error}");
    tried.push(format!(
        "the raw producer as payment-service writes order.placed: {error}"
    ));
    // Reading: a topic or a group that is not the service's is refused.
    for (who, name, group) in [
        (&notification, "order.placed", "notification-service"),
        (&order_api, "order.placed", "order-api"),
        (&payment, "payment.completed", "notification-service"),
    ] {
        let consumer: BaseConsumer = client(&bootstrap, Some((who.0, &who.1)))
            .set("group.id", group)
            .create()
            .unwrap();
        consumer.subscribe(&[&topic(name)]).unwrap();
        let refused = (0..40).find_map(|_| match consumer.poll(Duration::from_millis(250)) {
            Some(Err(error)) => Some(error),
            _ => None,
        });
        let error = refused
            .unwrap_or_else(|| panic!("{} reading {name} in group {group} is refused", who.0));
        let code = error.rdkafka_error_code();
        assert!(
            matches!(
                code,
                Some(
                    RDKafkaErrorCode::TopicAuthorizationFailed
                        | RDKafkaErrorCode::GroupAuthorizationFailed
                )
            ),
            "{} reading {name} in group {group}: {error}",
            who.0
        );
        tried.push(format!("{} reads {name} in group {group}: {error}", who.0));
    }
    eprintln!(
        "refused, as they must be ({}):\n{}",
        tried.len(),
        tried.join("\n")
    );

    // The three services, each as its own principal, run the whole flow.
    let (pool, _database) = testing::database(crate::support::SCHEMAS).await;
    let sasl = |login: &(&'static str, String)| {
        vec![
            ("KAFKA_SASL_USERNAME", login.0.to_owned()),
            ("KAFKA_SASL_PASSWORD", login.1.clone()),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".to_owned()),
        ]
    };
    let platform = Platform::start_with(
        &pool,
        None,
        &[
            ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.clone()),
            ("KAFKA_TOPIC_PREFIX", prefix.clone()),
            ("SHUTDOWN_GRACE_SECONDS", "10".to_owned()),
        ],
        &[("PAYMENT_DECLINE_RATE", "0".into())],
        [
            sasl(&order_api),
            // Groups named after their service: the ACLs allow those only.
            [
                sasl(&payment),
                vec![(
                    "PAYMENT_CONSUMER_GROUP",
                    format!("payment-service-{prefix}"),
                )],
            ]
            .concat(),
            [
                sasl(&notification),
                vec![(
                    "NOTIFICATION_CONSUMER_GROUP",
                    format!("notification-service-{prefix}"),
                )],
            ]
            .concat(),
        ],
    );
    platform.place_one_and_wait_until_notified(&pool).await;
    let logs = platform.terminate();
    Platform::remove_logs(logs[0].1.parent().unwrap());
    drop(broker);
    let _ = std::fs::remove_dir_all(&credentials);
}
