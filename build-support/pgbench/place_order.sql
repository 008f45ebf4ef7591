-- PlaceOrder's own transaction for one order, statement for statement as the order
-- API runs it for a batch of one (services/order-api/src/repository.rs, place_orders):
-- read the menu lines, insert the order, its items in one UNNEST statement, the
-- outbox row, notify the relay, commit. The API commits concurrent calls together
-- (group commit), so under load it does less work per order than this.
-- build-support/bench runs it with pgbench (-M prepared, as sqlx prepares) at
-- 1, 8 and 32 clients: the database's limit for placing orders on this machine.
\set item random(1, 6)
BEGIN;
SELECT id, name, description, price, available FROM orders.menu_items WHERE id = ANY(ARRAY[:item, 7]);
INSERT INTO orders.orders (id, customer_name, customer_email, status, total_amount, correlation_id, idempotency_key, request_fingerprint) VALUES (gen_random_uuid(), 'Bench Client', 'bench@example.com', 'PROCESSING', 17.99, 'pgbench', NULL, NULL) RETURNING id AS order_id, created_at \gset
INSERT INTO orders.order_items (order_id, menu_item_id, menu_item_name, quantity, unit_price, subtotal) SELECT :order_id, * FROM UNNEST(ARRAY[:item, 7]::int4[], ARRAY['Item', 'Coke']::text[], ARRAY[1, 2]::int4[], ARRAY[12.99, 2.50]::numeric[], ARRAY[12.99, 5.00]::numeric[]) RETURNING id, menu_item_id;
INSERT INTO orders.outbox (topic, message_key, payload, headers) VALUES ('bench-order.placed', :order_id, '\x0a2408011220', '{"event-type": "foodorder.v1.OrderPlaced", "content-type": "application/x-protobuf"}') RETURNING id;
SELECT pg_notify('bench_outbox', '');
COMMIT;
