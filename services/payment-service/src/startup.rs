//! What makes the payment service (see `foodorder_common::service`): the
//! `order.placed` consumer with the payment handler, and the outbox relay for
//! `payment.completed`.

use std::sync::Arc;

use foodorder_common::db::{self, Schema};
use foodorder_common::metrics::Metrics;
use foodorder_common::outbox::RelayConfig;
use foodorder_common::service::{Assembly, ConsumerApp, ConsumerApplication, ConsumerConfig};
use sqlx::PgPool;

use crate::breaker::CircuitBreaker;
use crate::config::Config;
use crate::gateway::MockGateway;
use crate::handler::PaymentHandler;
use crate::processor::PaymentProcessor;

/// The payment service, built and ready to run.
pub type Application = ConsumerApplication<Config>;

impl ConsumerApp for Config {
    const NAME: &'static str = "payment-service";
    const SCHEMA: &'static Schema = &db::PAYMENTS;
    type Handler = PaymentHandler<MockGateway>;

    fn consumer(&self) -> &ConsumerConfig {
        &self.consumer
    }

    fn assemble(self, pool: &PgPool, metrics: &Metrics) -> Assembly<Self::Handler> {
        // The mock gateway keeps its ledger through a pool of its own, as a
        // remote gateway would: consumers holding every service connection
        // must not make the gateway look slow (and trip the breaker).
        let gateway_pool = db::side_pool(pool, self.gateway.db_connections);
        let processor = Arc::new(
            PaymentProcessor::new(
                MockGateway::new(gateway_pool, self.gateway.clone()),
                CircuitBreaker::new(self.breaker.clone()),
                self.payment.clone(),
            )
            .with_metrics(metrics),
        );
        let topics = &self.consumer.kafka.topics;
        let handler = PaymentHandler::new(
            pool.clone(),
            processor,
            topics.payment_completed.clone(),
            self.crash_after_charge,
        )
        .settling_poison_after(self.poison_settle_after);
        Assembly {
            settings: self
                .consumer
                .settings(&topics.order_placed, &topics.payment_dlq),
            relay: Some(RelayConfig {
                topics: vec![topics.payment_completed.clone()],
                ..self.relay
            }),
            kafka: self.consumer.kafka,
            handler,
        }
    }
}
