//! What makes the notification service (see `foodorder_common::service`): the
//! `payment.completed` consumer with the notification handler.

use foodorder_common::db::{self, Schema};
use foodorder_common::metrics::Metrics;
use foodorder_common::service::{Assembly, ConsumerApp, ConsumerApplication, ConsumerConfig};
use sqlx::PgPool;

use crate::config::Config;
use crate::handler::NotificationHandler;
use crate::notifier::LogNotifier;

/// The notification service, built and ready to run.
pub type Application = ConsumerApplication<Config>;

impl ConsumerApp for Config {
    const NAME: &'static str = "notification-service";
    const SCHEMA: &'static Schema = &db::NOTIFICATIONS;
    type Handler = NotificationHandler<LogNotifier>;

    fn consumer(&self) -> &ConsumerConfig {
        &self.consumer
    }

    fn assemble(self, pool: &PgPool, metrics: &Metrics) -> Assembly<Self::Handler> {
        let topics = &self.consumer.kafka.topics;
        Assembly {
            settings: self
                .consumer
                .settings(&topics.payment_completed, &topics.notification_dlq),
            relay: None,
            kafka: self.consumer.kafka,
            handler: NotificationHandler::new(pool.clone(), LogNotifier)
                .with_metrics(metrics)
                .with_incidents(self.incidents),
        }
    }
}
