-- The outbox backlog gauges (unsent rows and the age of the oldest, per topic)
-- are read every 5 s by each relay: a partial index over the unsent rows by
-- topic and age keeps that read small however long a broker outage lasts.
CREATE INDEX outbox_backlog_idx ON outbox (topic, created_at)
    WHERE sent_at IS NULL AND parked_at IS NULL;
