-- The order API's schema: the menu, orders with their items, the payment
-- summary it keeps from payment.completed, and its outbox (order.placed).
-- Money is NUMERIC (exact); statuses are text constrained by CHECK so that psql
-- users read them directly. A database that had the shared schema gets these
-- tables from the legacy folder's move, so everything here is IF NOT EXISTS.

CREATE TABLE IF NOT EXISTS orders.menu_items (
    id          INTEGER PRIMARY KEY,
    name        TEXT          NOT NULL UNIQUE,
    description TEXT          NOT NULL DEFAULT '',
    price       NUMERIC(10, 2) NOT NULL CHECK (price >= 0),
    available   BOOLEAN       NOT NULL DEFAULT TRUE,
    created_at  TIMESTAMPTZ   NOT NULL DEFAULT now()
);

-- The seed menu, only into an empty table (a moved database keeps its own menu).
INSERT INTO orders.menu_items (id, name, description, price)
SELECT id, name, description, price FROM (VALUES
    (1, 'Margherita Pizza', 'Tomato, mozzarella and basil', 12.99),
    (2, 'Pepperoni Pizza',  'Tomato, mozzarella and pepperoni', 14.99),
    (3, 'Caesar Salad',     'Romaine, parmesan, croutons and Caesar dressing', 8.99),
    (4, 'Chicken Burger',   'Grilled chicken breast, lettuce and mayo', 10.99),
    (5, 'Veggie Wrap',      'Grilled vegetables and hummus in a tortilla', 9.49),
    (6, 'Garlic Bread',     'Toasted baguette with garlic butter', 4.99),
    (7, 'Coke',             '330 ml can', 2.50),
    (8, 'Water',            '500 ml bottle', 1.99)
) AS seed (id, name, description, price)
WHERE NOT EXISTS (SELECT 1 FROM orders.menu_items);

CREATE TABLE IF NOT EXISTS orders.orders (
    id                  UUID          PRIMARY KEY,
    customer_name       TEXT          NOT NULL,
    customer_email      TEXT          NOT NULL,
    status              TEXT          NOT NULL
        CHECK (status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED')),
    total_amount        NUMERIC(12, 2) NOT NULL CHECK (total_amount >= 0),
    correlation_id      TEXT          NOT NULL,
    -- Client-chosen key that makes PlaceOrder safe to retry, and a hash of the
    -- request it was first used with (a different request with the same key is
    -- rejected).
    idempotency_key     TEXT          UNIQUE,
    request_fingerprint BYTEA,
    created_at          TIMESTAMPTZ   NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ   NOT NULL DEFAULT now(),
    CHECK ((idempotency_key IS NULL) = (request_fingerprint IS NULL))
);

CREATE INDEX IF NOT EXISTS orders_created_at_idx ON orders.orders (created_at);

CREATE TABLE IF NOT EXISTS orders.order_items (
    id             BIGSERIAL     PRIMARY KEY,
    order_id       UUID          NOT NULL REFERENCES orders.orders (id) ON DELETE CASCADE,
    menu_item_id   INTEGER       NOT NULL REFERENCES orders.menu_items (id),
    menu_item_name TEXT          NOT NULL,
    quantity       INTEGER       NOT NULL CHECK (quantity BETWEEN 1 AND 99),
    unit_price     NUMERIC(10, 2) NOT NULL CHECK (unit_price >= 0),
    subtotal       NUMERIC(12, 2) NOT NULL CHECK (subtotal >= 0),
    UNIQUE (order_id, menu_item_id)
);

-- How the payment of an order ended, as payment.completed reported it: at most
-- one per order (the primary key), which is how replays and duplicates of that
-- event are recognised.
CREATE TABLE IF NOT EXISTS orders.order_payments (
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

-- Transactional outbox: rows are inserted in the same transaction as the
-- business change and published to Kafka by the relay, which sets sent_at only
-- after the broker acknowledged the record. Rows the broker refuses for good
-- are parked with the reason instead of retried forever.
CREATE TABLE IF NOT EXISTS orders.outbox (
    id          BIGSERIAL   PRIMARY KEY,
    topic       TEXT        NOT NULL,
    message_key TEXT        NOT NULL,
    payload     BYTEA       NOT NULL,
    -- Kafka headers (name -> value), trace context and correlation id included.
    headers     JSONB       NOT NULL DEFAULT '{}'::jsonb,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at     TIMESTAMPTZ,
    parked_at   TIMESTAMPTZ,
    park_reason TEXT
);

CREATE INDEX IF NOT EXISTS outbox_unsent_idx ON orders.outbox (id)
    WHERE sent_at IS NULL AND parked_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_sent_at_idx ON orders.outbox (sent_at)
    WHERE sent_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_backlog_idx ON orders.outbox (topic, created_at)
    WHERE sent_at IS NULL AND parked_at IS NULL;
