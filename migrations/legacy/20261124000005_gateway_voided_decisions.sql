-- A payment the service gives up on (timeouts exhausted, circuit breaker open)
-- is voided at the gateway: a VOIDED decision under the same per-key lock, so
-- a charge still in flight cannot land afterwards, and a charge that landed
-- first wins (the order is then recorded as paid, not failed).
ALTER TABLE gateway_ledger DROP CONSTRAINT gateway_ledger_outcome_check;
ALTER TABLE gateway_ledger ADD CONSTRAINT gateway_ledger_outcome_check
    CHECK (outcome IN ('APPROVED', 'DECLINED', 'VOIDED'));
