//! A PostgreSQL database of each test's own, migrated for the schemas the
//! test names, dropped when the test passes.

use std::time::Duration;

use foodorder_runtime::db::Schema;
use uuid::Uuid;

/// The PostgreSQL server the tests use: `DATABASE_URL` (any database on it;
/// each test gets its own), default `postgres://postgres@127.0.0.1:5432/foodorder`.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/foodorder".to_owned())
}

/// Whether something accepts TCP connections at `host:port` within a second.
fn answers(address: &str) -> bool {
    use std::net::ToSocketAddrs;
    address.to_socket_addrs().is_ok_and(|mut addresses| {
        addresses.any(|address| {
            std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok()
        })
    })
}

/// A database of one test's own, dropped when the test passes (kept for a
/// failed test, to look at).
pub struct TestDatabase {
    name: String,
    server: sqlx::postgres::PgConnectOptions,
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "the test database {} is kept for the failed test",
                self.name
            );
            return;
        }
        let (name, server) = (self.name.clone(), self.server.clone());
        // Drop cannot await: a thread of its own with a small runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            runtime.block_on(async move {
                use sqlx::{ConnectOptions, Executor};
                if let Ok(mut connection) = server.connect().await {
                    let _ = connection
                        .execute(
                            format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str(),
                        )
                        .await;
                }
            });
        })
        .join();
    }
}

/// A fresh database for one test, migrated for `schemas` (its crate's own: a
/// service's tests never see another's tables), and its guard (keep it alive to
/// the end of the test). Panics, saying what is missing, when PostgreSQL or the
/// broker does not answer: the tests that call it run only with the
/// `infra-tests` feature, which `build-support/test` turns on after
/// provisioning both.
pub async fn database(schemas: &[&Schema]) -> (sqlx::PgPool, TestDatabase) {
    let (pool, database) = empty_database().await;
    for schema in schemas {
        schema
            .migrate(&pool.connect_options())
            .await
            .unwrap_or_else(|error| {
                panic!("migrate the test database {}: {error:#}", database.name)
            });
    }
    (pool, database)
}

/// Like [`database`], without the migrations: for tests of the migrations.
pub async fn empty_database() -> (sqlx::PgPool, TestDatabase) {
    use sqlx::{ConnectOptions, Executor};
    let url = database_url();
    let server: sqlx::postgres::PgConnectOptions = match url.parse() {
        Ok(options) => options,
        Err(error) => panic!("DATABASE_URL is not a PostgreSQL URL: {error}"),
    };
    let server = server.database("postgres");
    let database_address = format!("{}:{}", server.get_host(), server.get_port());
    let broker = crate::kafka::bootstrap_servers();
    let broker_address = broker.split(',').next().unwrap_or_default().to_owned();
    let database_up = matches!(
        tokio::time::timeout(Duration::from_secs(2), server.connect()).await,
        Ok(Ok(_))
    );
    let broker_up = tokio::task::spawn_blocking({
        let broker_address = broker_address.clone();
        move || answers(&broker_address)
    })
    .await
    .unwrap_or(false);
    if !(database_up && broker_up) {
        let missing = match (database_up, broker_up) {
            (false, false) => format!(
                "PostgreSQL ({database_address}) and Kafka ({broker_address}) do not answer"
            ),
            (false, true) => format!("PostgreSQL ({database_address}) does not answer"),
            _ => format!("Kafka ({broker_address}) does not answer"),
        };
        panic!(
            "{missing}: run build-support/test, which provisions both, or set DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS"
        );
    }
    let name = format!("foodorder_test_{}", Uuid::new_v4().simple());
    let mut admin = server
        .connect()
        .await
        .unwrap_or_else(|error| panic!("connect to PostgreSQL at {database_address}: {error}"));
    admin
        .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
        .await
        .unwrap_or_else(|error| panic!("create the test database {name}: {error}"));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(server.clone().database(&name))
        .await
        .unwrap_or_else(|error| panic!("connect to the test database {name}: {error}"));
    (pool, TestDatabase { name, server })
}

/// A proxy in front of `pool`'s server (to cut or blackhole, see
/// [`crate::CuttableProxy`]) and a pool of `max_connections` on the same
/// database through it, whose connections wait at most 2 s for a free slot.
pub async fn proxied_pool(
    pool: &sqlx::PgPool,
    max_connections: u32,
) -> (crate::CuttableProxy, sqlx::PgPool) {
    let options: sqlx::postgres::PgConnectOptions = pool.connect_options().as_ref().clone();
    let target = tokio::net::lookup_host((options.get_host(), options.get_port()))
        .await
        .expect("resolve the database's address")
        .next()
        .expect("the database has an address");
    let proxy = crate::CuttableProxy::start(target).await;
    let proxied = sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options.host("127.0.0.1").port(proxy.address().port()))
        .await
        .expect("connect to the database through the proxy");
    (proxy, proxied)
}
