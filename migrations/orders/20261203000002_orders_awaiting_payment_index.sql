-- Backpressure (order-api, ORDER_API_MAX_PENDING_ORDERS): every
-- ORDER_API_BACKLOG_CHECK_INTERVAL_MS each instance counts the orders still
-- awaiting their payment outcome, up to the bound + 1. A partial index over
-- exactly those rows keeps that count proportional to the backlog (at most the
-- bound), never to the whole, ever-growing orders table. Orders are written
-- PROCESSING; PENDING is allowed by the CHECK but unused, and counted alike.
CREATE INDEX IF NOT EXISTS orders_awaiting_payment_idx ON orders.orders (created_at)
    WHERE status IN ('PENDING', 'PROCESSING');
