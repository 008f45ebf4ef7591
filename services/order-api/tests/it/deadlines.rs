//! Deadlines everywhere: with a table locked (what a migration or `VACUUM
//! FULL` takes) or the database black-holed by a partition, every call is
//! answered — UNAVAILABLE or DEADLINE_EXCEEDED, within the server's deadline —
//! even when the caller sent none, and nothing acknowledged is lost; past the
//! limits (calls in progress, the group-commit queue) a caller is refused at
//! once; readers held up by a locked table leave the writers their
//! connections; an order committed after its caller left is counted and
//! logged.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foodorder_contract::v1::{
    GetOrderRequest, ListMenuItemsRequest, PlaceOrderRequest, WatchOrderRequest,
};
use foodorder_testkit as testing;
use sqlx::PgPool;
use tonic::Code;

use crate::support::{TestApp, order_request, spawn_app_on, spawn_app_with, with_metadata};

/// The most an answer may come after the call's deadline: scheduling, a
/// loaded test machine. Generous on purpose: the point is "answered, not hung".
const MARGIN: Duration = Duration::from_secs(3);

/// A transaction of the test's own holding `LOCK TABLE <table> IN ACCESS
/// EXCLUSIVE MODE`, as a migration or `VACUUM FULL` does, until dropped.
async fn lock_table(pool: &PgPool, table: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut lock = pool.begin().await.expect("a connection for the lock");
    sqlx::query(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        .execute(&mut *lock)
        .await
        .expect("lock the table");
    lock
}

/// Waits until `sessions` sessions of the test database wait for a lock.
async fn wait_for_lock_waiters(pool: &PgPool, sessions: i64) {
    testing::wait_for(
        &format!("{sessions} sessions waiting for a lock"),
        Duration::from_secs(20),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(pool)
            .await
            .unwrap();
            (waiting >= sessions).then_some(())
        },
    )
    .await;
}

fn keyed(items: &[(i32, i32)], key: &str) -> PlaceOrderRequest {
    PlaceOrderRequest {
        idempotency_key: key.to_owned(),
        ..order_request(items)
    }
}

/// A call's outcome and how long it took.
async fn timed<T>(call: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let outcome = call.await;
    (outcome, started.elapsed())
}

/// Places `count` orders; their ids.
async fn place_orders(app: &TestApp, count: usize) -> Vec<String> {
    let mut client = app.client.clone();
    let mut ids = Vec::new();
    for index in 0..count {
        let order = client
            .place_order(keyed(&[(1, 1)], &format!("before-{index}")))
            .await
            .expect("an order before the lock")
            .into_inner()
            .order
            .unwrap();
        ids.push(order.id);
    }
    ids
}

/// With `orders.orders` locked, PlaceOrder (no client deadline) and GetOrder
/// are answered within the server's deadline: `expected` (UNAVAILABLE when
/// the lock wait gives up first, DEADLINE_EXCEEDED when the deadline passes
/// first) with a message naming the database. Once the lock is released the
/// same PlaceOrders, retried with their keys, succeed once each, and every
/// order acknowledged before is still there.
async fn locked_orders_table(
    lock_timeout: Duration,
    request_timeout: Duration,
    expected: Code,
    says: &str,
) {
    let app = spawn_app_with(|config| {
        config.request_timeout = request_timeout;
        config.database.timeouts.lock = lock_timeout;
        config.database.timeouts.statement = Duration::from_secs(30);
    })
    .await;
    let acknowledged = place_orders(&app, 3).await;
    let lock = lock_table(&app.pool, "orders.orders").await;

    let placing = (0..4).map(|index| {
        let mut client = app.client.clone();
        async move { timed(client.place_order(keyed(&[(2, 1)], &format!("during-{index}")))).await }
    });
    let reading = {
        let mut client = app.client.clone();
        let order_id = acknowledged[0].clone();
        async move { timed(client.get_order(GetOrderRequest { order_id })).await }
    };
    let (placed, (read, read_took)) = tokio::join!(futures::future::join_all(placing), reading);
    for (outcome, took) in placed {
        let status = outcome.expect_err("PlaceOrder cannot commit while the table is locked");
        eprintln!(
            "table locked, no client deadline: PlaceOrder answered {:?} after {took:?}: {}",
            status.code(),
            status.message()
        );
        assert_eq!(status.code(), expected, "{status:?}");
        assert!(status.message().contains("database"), "{status:?}");
        assert!(status.message().contains(says), "{status:?}");
        assert!(
            took < request_timeout + MARGIN,
            "PlaceOrder answered after {took:?}, its deadline is {request_timeout:?}"
        );
    }
    let status = read.expect_err("GetOrder cannot read while the table is locked");
    eprintln!(
        "table locked, no client deadline: GetOrder answered {:?} after {read_took:?}: {}",
        status.code(),
        status.message()
    );
    assert_eq!(status.code(), expected, "{status:?}");
    assert!(status.message().contains("database"), "{status:?}");
    assert!(status.message().contains(says), "{status:?}");
    assert!(
        read_took < request_timeout + MARGIN,
        "GetOrder answered after {read_took:?}, its deadline is {request_timeout:?}"
    );

    lock.rollback().await.unwrap();
    let mut client = app.client.clone();
    let mut placed_ids = Vec::new();
    for index in 0..4 {
        let request = keyed(&[(2, 1)], &format!("during-{index}"));
        let order = testing::wait_for(
            "PlaceOrder to succeed once the lock is released",
            Duration::from_secs(30),
            || {
                let (mut client, request) = (client.clone(), request.clone());
                async move { client.place_order(request).await.ok() }
            },
        )
        .await
        .into_inner()
        .order
        .unwrap();
        placed_ids.push(order.id);
    }
    for id in acknowledged.iter().chain(&placed_ids) {
        let order = client
            .get_order(GetOrderRequest {
                order_id: id.clone(),
            })
            .await
            .expect("every acknowledged order is there");
        assert_eq!(&order.into_inner().order.unwrap().id, id);
    }
    assert_eq!(app.count("orders.orders").await, 7, "one order per key");
    assert_eq!(app.count("orders.outbox").await, 7, "one event per order");
    app.wait_outbox_drained().await;
    app.stop().await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_locked_table_gets_unavailable_when_the_lock_wait_gives_up_first() {
    // The production defaults: a 2 s lock timeout within a 5 s deadline.
    locked_orders_table(
        foodorder_runtime::config::DatabaseTimeouts::default().lock,
        order_api::config::DEFAULT_REQUEST_TIMEOUT,
        Code::Unavailable,
        "busy",
    )
    .await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_locked_table_gets_deadline_exceeded_when_the_deadline_passes_first() {
    locked_orders_table(
        Duration::from_secs(30),
        Duration::from_millis(1500),
        Code::DeadlineExceeded,
        "deadline of 1.5s",
    )
    .await;
}

/// A partition that drops packets, starting while an order is being written:
/// the database's connections go silent (no reset, no close) and new ones
/// are never answered. PlaceOrder and GetOrder are still answered within the
/// deadline, naming the database. Once the network is back the pool recovers
/// — the connection that went silent mid-statement is closed rather than
/// waited on for good (the pool here is small enough that it would otherwise
/// starve), and PostgreSQL ends its abandoned session — and the retry with
/// the same key places the order once.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_database_that_stops_answering_gets_answers_within_the_deadline() {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

    let (direct, _database) = testing::database(&[&order_api::SCHEMA]).await;
    let options: PgConnectOptions = direct.connect_options().as_ref().clone();
    let target = tokio::net::lookup_host((options.get_host(), options.get_port()))
        .await
        .unwrap()
        .next()
        .expect("database address");
    let proxy = testing::CuttableProxy::start(target).await;
    let proxied = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options.host("127.0.0.1").port(proxy.address().port()));
    let request_timeout = Duration::from_millis(1500);
    let app = spawn_app_on(proxied, |config| {
        config.request_timeout = request_timeout;
        // Two connections for the two listeners (relay, WatchOrder), one for
        // the writers and the relay's batches.
        config.database.max_connections = 3;
        config.group_commit.writers = 1;
        config.database.timeouts.statement = Duration::from_secs(1);
        config.database.timeouts.acquire = Duration::from_secs(1);
        config.database.timeouts.idle_in_transaction = Duration::from_secs(3);
    })
    .await;
    let mut client = app.client.clone();
    let acknowledged = client
        .place_order(keyed(&[(1, 1)], "before-partition"))
        .await
        .expect("an order before the partition")
        .into_inner()
        .order
        .unwrap();
    client
        .get_order(GetOrderRequest {
            order_id: acknowledged.id.clone(),
        })
        .await
        .expect("a read before the partition");

    // An order is being written (its INSERT waits for a lock) when the
    // network starts dropping packets.
    let lock = lock_table(&direct, "orders.orders").await;
    let in_flight = tokio::spawn({
        let mut client = client.clone();
        async move { timed(client.place_order(keyed(&[(2, 1)], "during-partition"))).await }
    });
    wait_for_lock_waiters(&direct, 1).await;
    proxy.blackhole();
    let (placed, took) = in_flight.await.unwrap();
    let status = placed.expect_err("nothing can commit during the partition");
    eprintln!(
        "partition mid-write: PlaceOrder answered {:?} after {took:?}: {}",
        status.code(),
        status.message()
    );
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("may or may not have been placed"),
        "{status:?}"
    );
    assert!(took < request_timeout + MARGIN, "PlaceOrder took {took:?}");
    lock.rollback().await.unwrap();

    for attempt in 0..2 {
        let (placed, took) = timed(client.place_order(keyed(&[(2, 1)], "during-partition"))).await;
        let status = placed.expect_err("nothing can commit during the partition");
        assert!(
            matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
            "attempt {attempt}: {status:?}"
        );
        assert!(status.message().contains("database"), "{status:?}");
        assert!(took < request_timeout + MARGIN, "PlaceOrder took {took:?}");
        let (read, took) = timed(client.get_order(GetOrderRequest {
            order_id: acknowledged.id.clone(),
        }))
        .await;
        let status = read.expect_err("nothing can be read during the partition");
        eprintln!(
            "partition: GetOrder answered {:?} after {took:?}: {}",
            status.code(),
            status.message()
        );
        assert!(
            matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
            "attempt {attempt}: {status:?}"
        );
        assert!(status.message().contains("database"), "{status:?}");
        assert!(took < request_timeout + MARGIN, "GetOrder took {took:?}");
    }

    // The network heals, but the connections open during the partition never
    // answer again (their server-side sessions are gone): the pool must
    // close them rather than wait on them.
    proxy.abandon();
    proxy.restore();
    let healed = Instant::now();
    let placed = testing::wait_for(
        "PlaceOrder to succeed once the network is back",
        Duration::from_secs(60),
        || {
            let mut client = client.clone();
            async move {
                client
                    .place_order(keyed(&[(2, 1)], "during-partition"))
                    .await
                    .ok()
            }
        },
    )
    .await
    .into_inner()
    .order
    .unwrap();
    eprintln!(
        "partition healed: PlaceOrder with the same key succeeded after {:?}",
        healed.elapsed()
    );
    let read = testing::wait_for(
        "GetOrder to succeed once the network is back",
        Duration::from_secs(60),
        || {
            let mut client = client.clone();
            let order_id = acknowledged.id.clone();
            async move { client.get_order(GetOrderRequest { order_id }).await.ok() }
        },
    )
    .await;
    assert_eq!(read.into_inner().order.unwrap().id, acknowledged.id);
    let orders: Vec<String> =
        sqlx::query_scalar("SELECT id::text FROM orders.orders ORDER BY created_at")
            .fetch_all(&direct)
            .await
            .unwrap();
    assert_eq!(
        orders,
        [acknowledged.id, placed.id],
        "the acknowledged order and one order for the retried key"
    );
    app.stop().await;
}

/// Readers held up by a locked table (here `orders.order_payments`, which
/// GetOrder and WatchOrder read and PlaceOrder does not write) hold every
/// connection they may; PlaceOrder still commits, because the readers have a
/// pool of their own.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn readers_held_up_by_a_lock_leave_the_writers_their_connections() {
    let app = spawn_app_with(|config| {
        config.read_db_connections = 2;
        config.watch_max_db_reads = 1;
        config.request_timeout = Duration::from_secs(30);
        config.database.timeouts.lock = Duration::from_secs(30);
        config.database.timeouts.statement = Duration::from_secs(30);
        config.database.timeouts.acquire = Duration::from_secs(30);
    })
    .await;
    let order_id = place_orders(&app, 1).await.remove(0);
    let lock = lock_table(&app.pool, "orders.order_payments").await;

    let readers: Vec<_> = (0..12)
        .map(|_| {
            let mut client = app.client.clone();
            let order_id = order_id.clone();
            tokio::spawn(async move { client.get_order(GetOrderRequest { order_id }).await })
        })
        .collect();
    let watchers: Vec<_> = (0..4)
        .map(|_| {
            let mut client = app.client.clone();
            let order_id = order_id.clone();
            tokio::spawn(async move { client.watch_order(WatchOrderRequest { order_id }).await })
        })
        .collect();
    // Both read connections are taken, waiting for the lock; the other
    // readers wait for a connection.
    wait_for_lock_waiters(&app.pool, 2).await;

    let mut client = app.client.clone();
    for index in 0..10 {
        let (placed, took) =
            timed(client.place_order(keyed(&[(3, 1)], &format!("writer-{index}")))).await;
        placed.expect("PlaceOrder commits while readers are held up");
        assert!(took < Duration::from_secs(5), "PlaceOrder took {took:?}");
    }
    assert!(
        readers.iter().all(|reader| !reader.is_finished()),
        "the readers are still held up by the lock"
    );

    lock.rollback().await.unwrap();
    for reader in readers {
        let read = reader.await.unwrap();
        assert!(read.is_ok(), "{read:?}");
    }
    for watcher in watchers {
        let watch = watcher.await.unwrap();
        assert!(watch.is_ok(), "{:?}", watch.err());
    }
    assert_eq!(app.count("orders.orders").await, 11);
    app.stop().await;
}

/// Past the group-commit queue's limit a PlaceOrder is refused at once with
/// RESOURCE_EXHAUSTED; the queued calls are placed once the database answers.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_full_group_commit_queue_refuses_at_once() {
    // Never taken for a stall here: the queue's own limit is what is tested.
    full_group_commit_queue(
        Duration::from_secs(600),
        Code::ResourceExhausted,
        "waiting to be written",
    )
    .await;
}

/// A queue full because the database stopped answering (here: a locked table
/// and no lock timeout) is refused with UNAVAILABLE saying so, not
/// RESOURCE_EXHAUSTED: more capacity would not help.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_queue_full_of_calls_waiting_for_a_stalled_database_gets_unavailable() {
    full_group_commit_queue(
        Duration::from_millis(300),
        Code::Unavailable,
        "not answering",
    )
    .await;
}

/// One writer waits on a locked table while two calls fill the queue; one
/// more is refused at once, with `expected` once `stalled_after` has passed
/// (polled, bounded), and placed after the lock is released.
async fn full_group_commit_queue(stalled_after: Duration, expected: Code, says: &str) {
    let app = spawn_app_with(|config| {
        config.group_commit.writers = 1;
        config.group_commit.max_batch = 1;
        config.group_commit.queue_max = 2;
        config.group_commit.stalled_after = stalled_after;
        config.request_timeout = Duration::from_secs(30);
        config.database.timeouts.lock = Duration::from_secs(30);
        config.database.timeouts.statement = Duration::from_secs(30);
    })
    .await;
    let lock = lock_table(&app.pool, "orders.orders").await;
    let place = |key: &str| {
        let mut client = app.client.clone();
        let request = keyed(&[(1, 1)], key);
        tokio::spawn(async move { client.place_order(request).await })
    };
    // The writer takes the first and waits for the lock; two more fill the queue.
    let first = place("queue-0");
    wait_for_lock_waiters(&app.pool, 1).await;
    let queued = [place("queue-1"), place("queue-2")];
    testing::wait_for_metric(app.http_addr, "foodorder_place_order_queued", |queued| {
        queued == 2.0
    })
    .await;

    let client = app.client.clone();
    let status = testing::wait_for(
        "a refusal with the expected status",
        Duration::from_secs(20),
        || {
            let mut client = client.clone();
            async move {
                let (refused, took) = timed(client.place_order(keyed(&[(1, 1)], "queue-3"))).await;
                let status = refused.expect_err("the queue is full");
                assert!(took < Duration::from_secs(2), "refused after {took:?}");
                assert!(
                    matches!(status.code(), Code::ResourceExhausted | Code::Unavailable),
                    "{status:?}"
                );
                (status.code() == expected).then_some(status)
            }
        },
    )
    .await;
    assert!(status.message().contains(says), "{status:?}");

    lock.rollback().await.unwrap();
    for call in std::iter::once(first).chain(queued) {
        call.await.unwrap().expect("a queued call is placed");
    }
    let mut client = app.client.clone();
    client
        .place_order(keyed(&[(1, 1)], "queue-3"))
        .await
        .expect("the refused call, retried");
    assert_eq!(app.count("orders.orders").await, 4);
    app.stop().await;
}

/// Past `ORDER_API_MAX_CONCURRENT_CALLS` an OrderService call is refused at
/// once with RESOURCE_EXHAUSTED (and counted); health checks still answer.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn calls_beyond_the_limit_are_shed_at_once() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let app = spawn_app_with(|config| {
        config.max_concurrent_calls = 2;
        config.request_timeout = Duration::from_secs(30);
        config.database.timeouts.lock = Duration::from_secs(30);
        config.database.timeouts.statement = Duration::from_secs(30);
    })
    .await;
    let order_id = place_orders(&app, 1).await.remove(0);
    let lock = lock_table(&app.pool, "orders.order_payments").await;
    let held: Vec<_> = (0..2)
        .map(|_| {
            let mut client = app.client.clone();
            let order_id = order_id.clone();
            tokio::spawn(async move { client.get_order(GetOrderRequest { order_id }).await })
        })
        .collect();
    wait_for_lock_waiters(&app.pool, 2).await;

    let mut client = app.client.clone();
    let (shed, took) = timed(client.list_menu_items(ListMenuItemsRequest {})).await;
    let status = shed.expect_err("a third call is over the limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("limit of 2 calls"), "{status:?}");
    assert!(took < Duration::from_secs(2), "refused after {took:?}");
    let health = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: "foodorder.v1.OrderService".into(),
        })
        .await
        .expect("health checks are not shed")
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    let (_, scrape) = testing::http_get(app.http_addr, "/metrics").await;
    assert_eq!(
        testing::metric_value(
            &scrape,
            r#"foodorder_grpc_server_requests_total{method="ListMenuItems",code="RESOURCE_EXHAUSTED"}"#
        ),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        testing::metric_value(&scrape, "foodorder_grpc_server_calls_in_progress"),
        Some(2.0),
        "{scrape}"
    );

    lock.rollback().await.unwrap();
    for call in held {
        call.await.unwrap().expect("the held calls finish");
    }
    client
        .list_menu_items(ListMenuItemsRequest {})
        .await
        .expect("served again once the others finished");
    app.stop().await;
}

/// A `MakeWriter` that keeps what is logged.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    fn lines(&self) -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

/// A PlaceOrder whose caller left (its deadline passed) while its order was
/// being written: the order is committed anyway, and it is counted in
/// `foodorder_orders_placed_total` and
/// `foodorder_orders_committed_after_caller_left_total` and logged with its
/// order id and request id; the retry with the same key returns it.
#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn an_order_committed_after_its_caller_left_is_counted_and_logged() {
    let log = CapturedLog::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::INFO)
        .with_writer({
            let log = log.clone();
            move || log.clone()
        })
        .finish();
    // The test's runtime has one thread: the app's tasks log here too.
    let _logging = tracing::subscriber::set_default(subscriber);
    let app = spawn_app_with(|config| {
        config.request_timeout = Duration::from_secs(30);
        config.database.timeouts.lock = Duration::from_secs(30);
        config.database.timeouts.statement = Duration::from_secs(30);
    })
    .await;
    let lock = lock_table(&app.pool, "orders.orders").await;
    let request = || {
        let mut request = with_metadata(
            keyed(&[(4, 2)], "left-early"),
            &[("x-request-id", "left-early-1")],
        );
        request.set_timeout(Duration::from_millis(500));
        request
    };
    let mut client = app.client.clone();
    let call = tokio::spawn({
        let mut client = client.clone();
        let request = request();
        async move { client.place_order(request).await }
    });
    wait_for_lock_waiters(&app.pool, 1).await;
    let status = call
        .await
        .unwrap()
        .expect_err("the caller's deadline passes first");
    // The application answers before tonic's own timer (CANCELLED "Timeout expired").
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("database"), "{status:?}");
    lock.rollback().await.unwrap();

    testing::wait_for_metric(
        app.http_addr,
        "foodorder_orders_committed_after_caller_left_total",
        |count| count == 1.0,
    )
    .await;
    let (order_id, correlation_id): (String, String) =
        sqlx::query_as("SELECT id::text, correlation_id FROM orders.orders")
            .fetch_one(&app.pool)
            .await
            .expect("the order was committed");
    assert_eq!(correlation_id, "left-early-1");
    let logged = log
        .lines()
        .into_iter()
        .find(|line| {
            line["fields"]["message"]
                .as_str()
                .is_some_and(|message| message.contains("committed after its caller left"))
        })
        .expect("the late commit is logged");
    assert_eq!(logged["level"], "WARN", "{logged}");
    assert_eq!(logged["fields"]["order_id"], order_id.as_str(), "{logged}");
    assert_eq!(logged["fields"]["request_id"], "left-early-1", "{logged}");
    let (_, scrape) = testing::http_get(app.http_addr, "/metrics").await;
    assert_eq!(
        testing::metric_value(&scrape, "foodorder_orders_placed_total"),
        Some(1.0),
        "{scrape}"
    );

    let retried = client
        .place_order(request())
        .await
        .expect("the retry with the same key")
        .into_inner()
        .order
        .unwrap();
    assert_eq!(
        retried.id, order_id,
        "the retry returns the committed order"
    );
    assert_eq!(app.count("orders.orders").await, 1);
    app.stop().await;
}
