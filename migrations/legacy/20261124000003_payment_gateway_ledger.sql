-- The mock payment gateway's own ledger: one row per charge decision it made
-- (approved or declined), keyed by the caller's idempotency key (the order id).
-- Deliberately NOT unique on the key: the gateway's idempotency is enforced by
-- its own logic (an advisory lock per key, then look-up), so counting rows per
-- key is a real proof that no order was charged twice.
CREATE TABLE gateway_ledger (
    charge_id       UUID          PRIMARY KEY,
    idempotency_key TEXT          NOT NULL,
    amount          NUMERIC(12, 2) NOT NULL,
    outcome         TEXT          NOT NULL CHECK (outcome IN ('APPROVED', 'DECLINED')),
    decline_reason  TEXT,
    created_at      TIMESTAMPTZ   NOT NULL DEFAULT now()
);

CREATE INDEX gateway_ledger_key_idx ON gateway_ledger (idempotency_key);
