#!/usr/bin/env bash
# Places an order (2 x Margherita Pizza + 1 x Coke) and prints the
# PlaceOrderResponse JSON: {"order": {"id": ..., "status": "ORDER_STATUS_PROCESSING", ...}}.
# Payment happens asynchronously afterwards: follow it with 06-watch-order.sh.
#
#   ./04-place-order.sh
#   REQUEST_ID=my-trace-1 IDEMPOTENCY_KEY=order-42 ./04-place-order.sh
#   VERBOSE=1 ./04-place-order.sh      # also show the headers (the echoed x-request-id)
#
# REQUEST_ID      correlation id sent as `x-request-id` metadata; the server echoes
#                 it in the response headers and stores it as order.correlationId.
# IDEMPOTENCY_KEY makes the call safe to retry: the same key with the same request
#                 returns the original order instead of creating a second one (the
#                 same key with a different request fails with ALREADY_EXISTS).
#                 It may also be sent as `-H 'idempotency-key: ...'` metadata.
set -euo pipefail
API_ADDR="${API_ADDR:-127.0.0.1:50051}"
REQUEST_ID="${REQUEST_ID:-demo-$(date +%s)-$$}"
IDEMPOTENCY_KEY="${IDEMPOTENCY_KEY:-demo-order-$(date +%s)-$$}"

# `-d @` reads the request JSON from standard input (here document below).
# Field names may be written as in the .proto (snake_case) or in camelCase.
exec grpcurl -plaintext ${VERBOSE:+-v} \
  -H "x-request-id: $REQUEST_ID" \
  -d @ "$API_ADDR" foodorder.v1.OrderService/PlaceOrder <<JSON
{
  "customer_name": "Ada Lovelace",
  "customer_email": "ada@example.com",
  "items": [
    {"menu_item_id": 1, "quantity": 2},
    {"menu_item_id": 7, "quantity": 1}
  ],
  "idempotency_key": "$IDEMPOTENCY_KEY"
}
JSON
