#!/usr/bin/env bash
# Follows an order through payment: WatchOrder is a server stream that sends the
# order's current state at once, then one message per status change, and ends
# by itself after a terminal status (ORDER_STATUS_COMPLETED or ORDER_STATUS_FAILED).
#
#   ./06-watch-order.sh ORDER_ID
#   WATCH_SECONDS=120 ./06-watch-order.sh ORDER_ID
#
# -max-time bounds the whole call (default 60 s) so the script cannot hang
# forever: if no terminal status arrives in time, grpcurl prints
# "Code: DeadlineExceeded" and exits non-zero (68).
set -euo pipefail
API_ADDR="${API_ADDR:-127.0.0.1:50051}"
ORDER_ID="${1:?usage: $0 ORDER_ID}"
WATCH_SECONDS="${WATCH_SECONDS:-60}"

exec grpcurl -plaintext -max-time "$WATCH_SECONDS" -d "{\"order_id\": \"$ORDER_ID\"}" \
  "$API_ADDR" foodorder.v1.OrderService/WatchOrder
