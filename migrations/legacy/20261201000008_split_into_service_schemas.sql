-- The one-time move from the single shared schema to one schema per service.
-- Every service applies this folder before its own (only where the shared
-- history exists: a database created after the split never had it). Tables
-- keep their rows, ids, indexes and sequences; nothing is copied but the two
-- things the split creates:
--   * orders.order_payments, the payment summary the order API now keeps from
--     payment.completed, filled from the payment attempts recorded so far;
--   * payments.outbox, the payment service's own outbox, which takes the
--     PaymentCompleted rows out of the old shared outbox (sent or not: the
--     unsent ones are published by the payment service's relay);
--   * payments.payment_requests, what the payment service knows of an order
--     from its OrderPlaced, filled for the orders still waiting for payment
--     (so that a poison record keyed by one of them settles it at once).
-- Links across services go: the foreign keys from payment attempts and
-- notifications to orders, and the trigger on orders that the payment
-- service's status update used to fire.

CREATE SCHEMA IF NOT EXISTS orders;
CREATE SCHEMA IF NOT EXISTS payments;
CREATE SCHEMA IF NOT EXISTS notifications;

DROP TRIGGER IF EXISTS orders_status_notify ON orders;
DROP FUNCTION IF EXISTS notify_order_status();
ALTER TABLE payment_attempts DROP CONSTRAINT IF EXISTS payment_attempts_order_id_fkey;
ALTER TABLE notifications DROP CONSTRAINT IF EXISTS notifications_order_id_fkey;

ALTER TABLE menu_items SET SCHEMA orders;
ALTER TABLE orders SET SCHEMA orders;
ALTER TABLE order_items SET SCHEMA orders;
ALTER TABLE outbox SET SCHEMA orders;
ALTER TABLE payment_attempts SET SCHEMA payments;
ALTER TABLE gateway_ledger SET SCHEMA payments;
ALTER TABLE notifications SET SCHEMA notifications;

CREATE TABLE orders.order_payments (
    order_id           UUID          PRIMARY KEY REFERENCES orders.orders (id) ON DELETE CASCADE,
    payment_id         UUID          NOT NULL,
    status             TEXT          NOT NULL CHECK (status IN ('SUCCEEDED', 'FAILED')),
    amount             NUMERIC(12, 2) NOT NULL,
    attempt_count      INTEGER       NOT NULL CHECK (attempt_count >= 0),
    error_message      TEXT,
    processing_time_ms BIGINT        NOT NULL CHECK (processing_time_ms >= 0),
    completed_at       TIMESTAMPTZ   NOT NULL,
    received_at        TIMESTAMPTZ   NOT NULL DEFAULT now()
);

INSERT INTO orders.order_payments
    (order_id, payment_id, status, amount, attempt_count, error_message, processing_time_ms, completed_at)
SELECT p.order_id, p.id, p.status, p.amount, p.attempt_count, p.error_message, p.processing_time_ms, p.created_at
FROM payments.payment_attempts p
JOIN orders.orders o ON o.id = p.order_id;

CREATE TABLE payments.payment_requests (
    order_id       UUID          PRIMARY KEY,
    amount         NUMERIC(12, 2) NOT NULL CHECK (amount >= 0),
    customer_name  TEXT          NOT NULL,
    customer_email TEXT          NOT NULL,
    correlation_id TEXT          NOT NULL,
    received_at    TIMESTAMPTZ   NOT NULL DEFAULT now()
);

INSERT INTO payments.payment_requests (order_id, amount, customer_name, customer_email, correlation_id)
SELECT o.id, o.total_amount, o.customer_name, o.customer_email, o.correlation_id
FROM orders.orders o
WHERE NOT EXISTS (SELECT 1 FROM payments.payment_attempts p WHERE p.order_id = o.id);

CREATE TABLE payments.outbox (
    id          BIGSERIAL   PRIMARY KEY,
    topic       TEXT        NOT NULL,
    message_key TEXT        NOT NULL,
    payload     BYTEA       NOT NULL,
    headers     JSONB       NOT NULL DEFAULT '{}'::jsonb,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at     TIMESTAMPTZ,
    parked_at   TIMESTAMPTZ,
    park_reason TEXT
);

WITH moved AS (
    DELETE FROM orders.outbox
    WHERE headers ->> 'event-type' = 'foodorder.v1.PaymentCompleted'
    RETURNING *
)
INSERT INTO payments.outbox
    (id, topic, message_key, payload, headers, created_at, sent_at, parked_at, park_reason)
SELECT id, topic, message_key, payload, headers, created_at, sent_at, parked_at, park_reason FROM moved;

SELECT setval(pg_get_serial_sequence('payments.outbox', 'id'),
              GREATEST((SELECT max(id) FROM payments.outbox), 1),
              (SELECT max(id) FROM payments.outbox) IS NOT NULL);
