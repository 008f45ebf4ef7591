#!/usr/bin/env bash
# Common mistake: asking for an order id that does not exist (a typo, or an id
# from another environment). The server answers NOT_FOUND:
#
#   ERROR:
#     Code: NotFound
#     Message: order 00000000-0000-4000-8000-000000000000 not found
#
# An id that is not a UUID at all gets INVALID_ARGUMENT instead. grpcurl (and
# so this script) exits non-zero: 69 = 64 + NotFound (5).
#
#   ./12-error-unknown-order.sh [ORDER_ID]
set -euo pipefail
API_ADDR="${API_ADDR:-127.0.0.1:50051}"
ORDER_ID="${1:-00000000-0000-4000-8000-000000000000}"

exec grpcurl -plaintext -d "{\"order_id\": \"$ORDER_ID\"}" \
  "$API_ADDR" foodorder.v1.OrderService/GetOrder
