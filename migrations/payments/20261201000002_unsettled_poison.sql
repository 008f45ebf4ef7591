-- Orders a poison order.placed record named (by its key) before the service
-- had any valid request for them. The record itself goes to the DLQ at once;
-- the order waits here: if its real order.placed arrives, it is paid as usual;
-- if none has come after PAYMENT_POISON_SETTLE_SECONDS, the order is voided at
-- the gateway and recorded FAILED (COMPLETED if a charge had landed), so that
-- nobody waits on it forever.
CREATE TABLE IF NOT EXISTS payments.unsettled_poison (
    order_id      UUID        PRIMARY KEY,
    reason        TEXT        NOT NULL,
    first_seen_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
