-- Gateway calls reserved for an order, across deliveries of its order.placed
-- record: a call is counted here (committed) before it is made, so that a
-- redelivery after a restart continues the retry budget (PAYMENT_MAX_RETRIES
-- calls in all) instead of starting it again, and the attempt count reported
-- for the order includes the calls of earlier deliveries. A call is counted
-- right before it goes out (after the breaker let it); a count whose call never
-- went out (a crash in between) makes it one too high.
ALTER TABLE payments.payment_requests
    ADD COLUMN IF NOT EXISTS gateway_calls INTEGER NOT NULL DEFAULT 0 CHECK (gateway_calls >= 0);
