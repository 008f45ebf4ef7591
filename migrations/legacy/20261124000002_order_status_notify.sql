-- Notifies channel `order_status` with the order id whenever an order's status
-- changes, so WatchOrder streams are driven by the database instead of polling.
-- The notification is delivered when the changing transaction commits, so a
-- listener that re-reads the order sees the new status and its payment attempt.

CREATE FUNCTION notify_order_status() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('order_status', NEW.id::text);
    RETURN NEW;
END
$$;

CREATE TRIGGER orders_status_notify
    AFTER UPDATE OF status ON orders
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION notify_order_status();
