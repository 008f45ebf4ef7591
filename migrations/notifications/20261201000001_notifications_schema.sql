-- The notification service's schema: the notifications it sent, at most one
-- per order (enforced), recorded in the same transaction that sends it, which
-- is how replays and duplicate payment.completed records are recognised. A
-- database that had the shared schema gets this table from the legacy folder's
-- move, so it is IF NOT EXISTS.
CREATE TABLE IF NOT EXISTS notifications.notifications (
    id         UUID        PRIMARY KEY,
    order_id   UUID        NOT NULL UNIQUE,
    event_id   TEXT        NOT NULL,
    kind       TEXT        NOT NULL CHECK (kind IN ('ORDER_CONFIRMED', 'PAYMENT_FAILED')),
    channel    TEXT        NOT NULL,
    recipient  TEXT        NOT NULL,
    payload    JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
