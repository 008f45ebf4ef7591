-- An order id this service got only unprocessable order.placed records for
-- (none valid within PAYMENT_POISON_SETTLE_SECONDS) is declared unprocessable:
-- a request row with a reason and no customer stands for it, and an
-- OrderUnprocessable event goes to the order API, which owns orders and
-- decides what the order becomes. The row takes the order id's place, so a
-- valid order.placed arriving later is never paid (the first request wins),
-- and the declaration is made at most once.
ALTER TABLE payments.payment_requests ADD COLUMN IF NOT EXISTS unprocessable_reason TEXT;
