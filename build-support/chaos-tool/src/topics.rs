//! Every topic of the platform under test, with its prefix: the contract's
//! event topics and each service's own dead-letter topic.

use foodorder_contract::topics::{ORDER_PLACED, ORDER_UNPROCESSABLE, PAYMENT_COMPLETED};

/// Full topic names for a prefix.
pub struct Topics {
    pub order_placed: String,
    pub payment_completed: String,
    pub order_unprocessable: String,
    pub payment_dlq: String,
    pub notification_dlq: String,
    pub order_dlq: String,
}

impl Topics {
    pub fn with_prefix(prefix: &str) -> Self {
        let topic = |name: &str| format!("{prefix}{name}");
        Self {
            order_placed: topic(ORDER_PLACED),
            payment_completed: topic(PAYMENT_COMPLETED),
            order_unprocessable: topic(ORDER_UNPROCESSABLE),
            payment_dlq: topic(payment_service::DEAD_LETTER_TOPIC),
            notification_dlq: topic(notification_service::DEAD_LETTER_TOPIC),
            order_dlq: topic(order_api::DEAD_LETTER_TOPIC),
        }
    }
}
