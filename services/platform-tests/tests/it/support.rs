//! Runs the services as real processes for the end-to-end tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use foodorder_testkit::ServiceProcess;
use sqlx::PgPool;

/// Every service's schema: the platform tests start all three.
pub const SCHEMAS: &[&foodorder_runtime::db::Schema] = &[
    &order_api::SCHEMA,
    &payment_service::SCHEMA,
    &notification_service::SCHEMA,
];

/// Starts service `name` (its binary beside this test's) with `env`, logging
/// at info into `log_dir/<name>.log`.
fn start_service(name: &str, env: &[(&str, String)], log_dir: &Path) -> ServiceProcess {
    let mut env = env.to_vec();
    env.push(("LOG_LEVEL", "info".to_owned()));
    ServiceProcess::start(
        &sibling_binary(name),
        &env,
        Some(log_dir.join(format!("{name}.log"))),
    )
}

/// The other services' binaries sit next to this package's binary in the target directory.
pub fn sibling_binary(name: &str) -> PathBuf {
    // The test binary is target/<profile>/deps/it-<hash>; the services are in target/<profile>/.
    let own = std::env::current_exe().expect("the test binary's path");
    let path = own
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

pub fn database_url(pool: &PgPool) -> String {
    let base = foodorder_testkit::database_url();
    let database = pool
        .connect_options()
        .get_database()
        .expect("database name")
        .to_owned();
    format!(
        "{}/{database}",
        base.rsplit_once('/').expect("DATABASE_URL has a path").0
    )
}

/// `DATABASE_URL` of `pool`'s database for `login`.
pub fn role_url(pool: &PgPool, login: &foodorder_testkit::roles::Login) -> String {
    let options = pool.connect_options();
    format!(
        "postgres://{}:{}@{}:{}/{}",
        login.role,
        login.password,
        options.get_host(),
        options.get_port(),
        options.get_database().expect("database name")
    )
}

/// The three services started as processes on one database and fresh topics.
pub struct Platform {
    /// Port of the order API on 127.0.0.1.
    pub api_port: u16,
    /// Topic-name prefix of this run.
    pub prefix: String,
    /// Where the services' logs go.
    pub log_dir: PathBuf,
    /// The payment service's consumer group.
    pub payment_group: String,
    /// The notification service's consumer group.
    pub notification_group: String,
    services: Vec<ServiceProcess>,
}

impl Platform {
    /// Starts order-api, payment-service and notification-service. `shared`
    /// is added to every service's environment, `payment` to the payment service's.
    pub fn start(
        pool: &PgPool,
        shared: &[(&'static str, String)],
        payment: &[(&'static str, String)],
    ) -> Self {
        Self::start_as(pool, None, shared, payment)
    }

    /// Like [`Platform::start`]; with `roles`, each service connects as its
    /// own role (`DATABASE_URL` with the role's name and password).
    pub fn start_as(
        pool: &PgPool,
        roles: Option<&foodorder_testkit::roles::Roles>,
        shared: &[(&'static str, String)],
        payment: &[(&'static str, String)],
    ) -> Self {
        Self::start_with(pool, roles, shared, payment, [vec![], vec![], vec![]])
    }

    /// Like [`Platform::start_as`], with settings of each service's own
    /// (order-api's, payment-service's, notification-service's), added last.
    pub fn start_with(
        pool: &PgPool,
        roles: Option<&foodorder_testkit::roles::Roles>,
        shared: &[(&'static str, String)],
        payment: &[(&'static str, String)],
        own: [Vec<(&'static str, String)>; 3],
    ) -> Self {
        let [order_own, payment_own, notification_own] = own;
        let own_database = |login: Option<&foodorder_testkit::roles::Login>| {
            login.map(|login| ("DATABASE_URL", role_url(pool, login)))
        };
        let log_dir = std::env::temp_dir().join(format!("foodorder-e2e-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&log_dir).unwrap();
        let api_port = foodorder_testkit::free_port();
        let prefix = foodorder_testkit::unique_prefix();
        let run = uuid::Uuid::new_v4().simple().to_string();
        let mut common = vec![
            ("DATABASE_URL", database_url(pool)),
            (
                "KAFKA_BOOTSTRAP_SERVERS",
                foodorder_testkit::bootstrap_servers(),
            ),
            ("KAFKA_TOPIC_PREFIX", prefix.clone()),
        ];
        common.extend_from_slice(shared);
        let with = |extra: &[(&'static str, String)]| {
            let mut env = common.clone();
            env.extend_from_slice(extra);
            env
        };
        let mut payment_env = vec![
            ("PAYMENT_CONSUMER_GROUP", format!("payment-{run}")),
            ("PAYMENT_HEALTH_ADDR", "127.0.0.1:0".to_owned()),
        ];
        payment_env.extend_from_slice(payment);
        payment_env.extend(own_database(roles.map(|roles| &roles.payments)));
        payment_env.extend(payment_own);
        let mut order_env = vec![
            ("ORDER_API_ADDR", format!("127.0.0.1:{api_port}")),
            ("ORDER_API_HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("ORDER_API_CONSUMER_GROUP", format!("order-api-{run}")),
        ];
        order_env.extend(own_database(roles.map(|roles| &roles.orders)));
        order_env.extend(order_own);
        let mut notification_env = vec![
            ("NOTIFICATION_CONSUMER_GROUP", format!("notification-{run}")),
            ("NOTIFICATION_HEALTH_ADDR", "127.0.0.1:0".to_owned()),
        ];
        notification_env.extend(own_database(roles.map(|roles| &roles.notifications)));
        notification_env.extend(notification_own);
        let services = vec![
            start_service("order-api", &with(&order_env), &log_dir),
            start_service("payment-service", &with(&payment_env), &log_dir),
            start_service("notification-service", &with(&notification_env), &log_dir),
        ];
        Self {
            api_port,
            prefix,
            log_dir,
            payment_group: format!("payment-{run}"),
            notification_group: format!("notification-{run}"),
            services,
        }
    }

    /// A client of the order API, once it accepts connections.
    pub async fn client(
        &self,
    ) -> foodorder_contract::v1::order_service_client::OrderServiceClient<tonic::transport::Channel>
    {
        let address = format!("http://127.0.0.1:{}", self.api_port);
        let channel = foodorder_testkit::wait_for(
            "order-api to accept connections",
            Duration::from_secs(60),
            || async {
                tonic::transport::Endpoint::from_shared(address.clone())
                    .unwrap()
                    .connect()
                    .await
                    .ok()
            },
        )
        .await;
        foodorder_contract::v1::order_service_client::OrderServiceClient::new(channel)
    }

    /// Places one order and waits (up to 90 s) until it is COMPLETED and has
    /// its one notification (the gateway must not decline: `PAYMENT_DECLINE_RATE=0`).
    pub async fn place_one_and_wait_until_notified(&self, pool: &PgPool) {
        use foodorder_contract::v1::{
            GetOrderRequest, OrderItemInput, OrderStatus, PlaceOrderRequest,
        };
        let mut client = self.client().await;
        let order = client
            .place_order(PlaceOrderRequest {
                customer_name: "Ada Lovelace".into(),
                customer_email: "ada@example.com".into(),
                items: vec![OrderItemInput {
                    menu_item_id: 1,
                    quantity: 1,
                }],
                ..Default::default()
            })
            .await
            .expect("PlaceOrder")
            .into_inner()
            .order
            .expect("the placed order");
        foodorder_testkit::wait_for(
            "the order to complete and be notified",
            Duration::from_secs(90),
            || {
                let (mut client, id, pool) = (client.clone(), order.id.clone(), pool.clone());
                async move {
                    let status = client
                        .get_order(GetOrderRequest {
                            order_id: id.clone(),
                        })
                        .await
                        .ok()?
                        .into_inner()
                        .order?
                        .status();
                    let notified: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM notifications.notifications WHERE order_id = $1::uuid",
                    )
                    .bind(&id)
                    .fetch_one(&pool)
                    .await
                    .ok()?;
                    (status == OrderStatus::Completed && notified == 1).then_some(())
                }
            },
        )
        .await;
    }

    /// Panics naming any service that exited on its own (crashed or gave up).
    pub fn assert_running(&mut self) {
        for service in &mut self.services {
            service.assert_running();
        }
    }

    /// SIGTERMs every service (each must exit 0); returns each service's log file.
    pub fn terminate(self) -> Vec<(String, PathBuf)> {
        let logs = self
            .services
            .iter()
            .filter_map(|service| Some((service.name.clone(), service.log.clone()?)))
            .collect();
        for service in self.services {
            service.terminate();
        }
        logs
    }

    /// Deletes the logs.
    pub fn remove_logs(log_dir: &Path) {
        let _ = std::fs::remove_dir_all(log_dir);
    }
}
