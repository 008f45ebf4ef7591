-- Notifications sent by the notification service: at most one per order
-- (enforced), recorded in the same transaction that sends it, which is how
-- replays and duplicate payment.completed records are deduplicated.
CREATE TABLE notifications (
    id         UUID        PRIMARY KEY,
    order_id   UUID        NOT NULL UNIQUE REFERENCES orders (id) ON DELETE CASCADE,
    event_id   TEXT        NOT NULL,
    kind       TEXT        NOT NULL CHECK (kind IN ('ORDER_CONFIRMED', 'PAYMENT_FAILED')),
    channel    TEXT        NOT NULL,
    recipient  TEXT        NOT NULL,
    payload    JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
