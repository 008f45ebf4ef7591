//! The event topics the contract names. A deployment may put a prefix in front
//! of every name (`KAFKA_TOPIC_PREFIX`, which isolates test runs); each
//! service names its own dead-letter topic.

/// `OrderPlaced` events, keyed by order id; written by order-api.
pub const ORDER_PLACED: &str = "order.placed";

/// `PaymentCompleted` events, keyed by order id; written by payment-service.
pub const PAYMENT_COMPLETED: &str = "payment.completed";

/// `OrderUnprocessable` events, keyed by order id; written by payment-service
/// for an order id it got only unprocessable `order.placed` records for, read
/// by order-api, which decides what the order becomes.
pub const ORDER_UNPROCESSABLE: &str = "order.unprocessable";
