-- Outbox rows the broker refuses for good (too large for the topic, invalid)
-- are parked instead of retried forever: the relay skips them and an operator
-- finds them here with the reason. Unsent rows that are not parked are the backlog.
ALTER TABLE outbox
    ADD COLUMN parked_at   TIMESTAMPTZ,
    ADD COLUMN park_reason TEXT;

DROP INDEX outbox_unsent_idx;
CREATE INDEX outbox_unsent_idx ON outbox (id) WHERE sent_at IS NULL AND parked_at IS NULL;
