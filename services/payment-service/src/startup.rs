//! How the payment service is put together on the [`ServiceHost`]: the
//! `order.placed` consumer with the payment handler, and the outbox relay that
//! publishes `payment.completed`.

use std::net::SocketAddr;
use std::sync::Arc;

use foodorder_contract::topics::{ORDER_PLACED, PAYMENT_COMPLETED};
use foodorder_runtime::db;
use foodorder_runtime::host::ServiceHost;
use foodorder_runtime::outbox::RelayConfig;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::breaker::CircuitBreaker;
use crate::config::Config;
use crate::gateway::MockGateway;
use crate::handler::PaymentHandler;
use crate::processor::PaymentProcessor;
use crate::{DEAD_LETTER_TOPIC, SCHEMA};

/// Service name: logs, traces, Kafka client ids.
pub const NAME: &str = "payment-service";

/// The payment service, built and ready to run.
pub struct Application {
    host: ServiceHost,
}

impl Application {
    /// Connects to PostgreSQL (creating the database, migrating the `payments`
    /// schema) and binds the HTTP endpoint.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let consumer = &config.consumer;
        let host = ServiceHost::connect(
            NAME,
            &consumer.database,
            &SCHEMA,
            consumer.kafka.clone(),
            consumer.health_addr,
        )
        .await?;
        Ok(Self::assemble(config, host))
    }

    /// Uses an existing pool, already migrated for the `payments` schema.
    pub async fn build_with_pool(config: Config, pool: PgPool) -> anyhow::Result<Self> {
        let consumer = &config.consumer;
        let host = ServiceHost::with_pool(
            NAME,
            pool,
            &SCHEMA,
            consumer.kafka.clone(),
            consumer.health_addr,
        )
        .await?;
        Ok(Self::assemble(config, host))
    }

    fn assemble(config: Config, host: ServiceHost) -> Self {
        // The mock gateway keeps its ledger through a pool of its own, as a
        // remote gateway would: consumers holding every service connection
        // must not make the gateway look slow (and trip the breaker).
        let gateway_pool = db::side_pool(host.pool(), config.gateway.db_connections);
        let processor = Arc::new(
            PaymentProcessor::new(
                MockGateway::new(gateway_pool, config.gateway.clone()),
                CircuitBreaker::new(config.breaker.clone()),
                config.payment.clone(),
            )
            .with_metrics(host.metrics()),
        );
        let payment_completed = host.kafka().topic(PAYMENT_COMPLETED);
        let handler = PaymentHandler::new(
            host.pool().clone(),
            processor,
            payment_completed.clone(),
            config.crash_after_charge,
        )
        .settling_poison_after(config.poison_settle_after);
        let host = host
            .relay(RelayConfig {
                topics: vec![payment_completed],
                ..config.relay
            })
            .consumer(
                config.consumer.settings(ORDER_PLACED, DEAD_LETTER_TOPIC),
                handler,
            )
            .shutdown_grace(config.consumer.shutdown_grace);
        Self { host }
    }

    /// Address of the HTTP endpoint.
    pub fn health_addr(&self) -> SocketAddr {
        self.host.http_addr()
    }

    /// Consumes until `shutdown`, then drains, commits, stops the relay and closes the pool.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.host.run_until_stopped(shutdown).await
    }
}
