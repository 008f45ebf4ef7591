#!/usr/bin/env bash
# Shows the OrderService contract (its RPCs with their documentation) as the
# server describes it through reflection. Pass any other symbol to describe it
# instead, e.g. a message: ./02-describe-order-service.sh foodorder.v1.PlaceOrderRequest
#
#   ./02-describe-order-service.sh [SYMBOL]
set -euo pipefail
API_ADDR="${API_ADDR:-127.0.0.1:50051}"
SYMBOL="${1:-foodorder.v1.OrderService}"

exec grpcurl -plaintext "$API_ADDR" describe "$SYMBOL"
