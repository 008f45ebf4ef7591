#!/usr/bin/env bash
# Reads one order with its items and payment attempts.
#
#   ./05-get-order.sh ORDER_ID         # ORDER_ID: the "id" that 04-place-order.sh printed
set -euo pipefail
API_ADDR="${API_ADDR:-127.0.0.1:50051}"
ORDER_ID="${1:?usage: $0 ORDER_ID}"

exec grpcurl -plaintext -d "{\"order_id\": \"$ORDER_ID\"}" \
  "$API_ADDR" foodorder.v1.OrderService/GetOrder
