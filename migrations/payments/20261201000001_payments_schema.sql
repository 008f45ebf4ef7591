-- The payment service's schema: the payment requests it received, the payment
-- attempts it recorded, the mock gateway's ledger, and its outbox
-- (payment.completed). A database that had the shared schema gets the existing
-- tables from the legacy folder's move, so everything here is IF NOT EXISTS.

-- What an order.placed record asked for, stored when it is first handled: the
-- service knows an order from this alone (a poison record keyed by a known
-- order settles that order with what is stored here).
CREATE TABLE IF NOT EXISTS payments.payment_requests (
    order_id       UUID          PRIMARY KEY,
    amount         NUMERIC(12, 2) NOT NULL CHECK (amount >= 0),
    customer_name  TEXT          NOT NULL,
    customer_email TEXT          NOT NULL,
    correlation_id TEXT          NOT NULL,
    received_at    TIMESTAMPTZ   NOT NULL DEFAULT now()
);

-- One row per order (the UNIQUE constraint), written after the payment's
-- retries are over, in the same transaction as its payment.completed event.
CREATE TABLE IF NOT EXISTS payments.payment_attempts (
    id                 UUID          PRIMARY KEY,
    order_id           UUID          NOT NULL UNIQUE,
    status             TEXT          NOT NULL CHECK (status IN ('SUCCEEDED', 'FAILED')),
    amount             NUMERIC(12, 2) NOT NULL,
    attempt_count      INTEGER       NOT NULL CHECK (attempt_count >= 0),
    error_message      TEXT,
    processing_time_ms BIGINT        NOT NULL CHECK (processing_time_ms >= 0),
    created_at         TIMESTAMPTZ   NOT NULL DEFAULT now()
);

-- The mock payment gateway's own ledger: one row per decision it made
-- (approved, declined, or voided when the service gives up), keyed by the
-- caller's idempotency key (the order id). Deliberately NOT unique on the key:
-- the gateway's idempotency is its own logic (an advisory lock per key, then a
-- look-up), so counting rows per key is a real proof that no order was charged
-- twice.
CREATE TABLE IF NOT EXISTS payments.gateway_ledger (
    charge_id       UUID          PRIMARY KEY,
    idempotency_key TEXT          NOT NULL,
    amount          NUMERIC(12, 2) NOT NULL,
    outcome         TEXT          NOT NULL
        CONSTRAINT gateway_ledger_outcome_check CHECK (outcome IN ('APPROVED', 'DECLINED', 'VOIDED')),
    decline_reason  TEXT,
    created_at      TIMESTAMPTZ   NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS gateway_ledger_key_idx ON payments.gateway_ledger (idempotency_key);

-- Transactional outbox, as in the order API's schema.
CREATE TABLE IF NOT EXISTS payments.outbox (
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

CREATE INDEX IF NOT EXISTS outbox_unsent_idx ON payments.outbox (id)
    WHERE sent_at IS NULL AND parked_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_sent_at_idx ON payments.outbox (sent_at)
    WHERE sent_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_backlog_idx ON payments.outbox (topic, created_at)
    WHERE sent_at IS NULL AND parked_at IS NULL;
