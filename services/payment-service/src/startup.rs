//! How the payment service is put together on the [`ServiceHost`]: the
//! `order.placed` consumer with the payment handler, and the outbox relay that
//! publishes `payment.completed` and `order.unprocessable`; `/mock-gateway` on
//! the HTTP endpoint.

use std::sync::Arc;

use foodorder_contract::topics::{ORDER_PLACED, ORDER_UNPROCESSABLE, PAYMENT_COMPLETED};
use foodorder_runtime::batch::BatchMetrics;
use foodorder_runtime::db;
use foodorder_runtime::health::DatabaseProbe;
use foodorder_runtime::host::ServiceHost;
use foodorder_runtime::outbox::RelayConfig;
use foodorder_runtime::shutdown::unless_stopped;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::breaker::CircuitBreaker;
use crate::config::Config;
use crate::gateway::MockGateway;
use crate::gateway_control;
use crate::handler::PaymentHandler;
use crate::processor::PaymentProcessor;
use crate::{DEAD_LETTER_TOPIC, SCHEMA};

/// Service name: logs, traces, Kafka client ids.
pub const NAME: &str = "payment-service";

/// Builds the service on its host: over `pool` when given (already migrated
/// for the `payments` schema), else connecting to PostgreSQL (creating the
/// database, migrating the schema); the HTTP endpoint is bound.
pub async fn build(config: Config, pool: Option<PgPool>) -> anyhow::Result<ServiceHost> {
    let host = ServiceHost::for_consumer(NAME, &SCHEMA, &config.consumer, pool).await?;
    // The mock gateway keeps its ledger through a pool of its own, as a
    // remote gateway would: consumers holding every service connection
    // must not make the gateway look slow (and trip the breaker).
    let gateway_pool = db::side_pool(host.pool(), config.gateway.db_connections);
    let batches = BatchMetrics::new(host.metrics());
    let gateway = MockGateway::new(gateway_pool, config.gateway.clone(), &batches);
    // Its rates can be changed at run time, from the same host only (drills).
    let host = host.routes(gateway_control::routes(gateway.rates()));
    let processor = Arc::new(
        PaymentProcessor::new(
            gateway,
            CircuitBreaker::new(config.breaker.clone()),
            config.payment.clone(),
        )
        .with_metrics(host.metrics()),
    );
    let payment_completed = host.kafka().topic(PAYMENT_COMPLETED);
    let order_unprocessable = host.kafka().topic(ORDER_UNPROCESSABLE);
    let handler = PaymentHandler::new(
        host.pool().clone(),
        processor,
        payment_completed.clone(),
        order_unprocessable.clone(),
        config.crash_after_charge,
        &batches,
    )
    .settling_poison_after(config.poison_settle_after);
    let settings = config.consumer.settings(ORDER_PLACED, DEAD_LETTER_TOPIC);
    Ok(host
        // Ready when a payment could be recorded: its request, its attempt and its event.
        .database_probe(DatabaseProbe::write_path(
            &[
                "payments.payment_requests",
                "payments.payment_attempts",
                "payments.outbox",
            ],
            &[],
        ))
        .relay(RelayConfig {
            topics: vec![payment_completed, order_unprocessable],
            ..config.relay
        })
        .consumer(settings, handler))
}

/// Reads the configuration, builds the service and runs it until `shutdown`.
pub async fn run(shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    match unless_stopped(&shutdown, build(config, None)).await? {
        Some(host) => host.run_until_stopped(shutdown).await,
        None => Ok(()),
    }
}
