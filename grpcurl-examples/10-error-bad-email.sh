#!/usr/bin/env bash
# Common mistake: an invalid customer email. The server refuses the order with
# INVALID_ARGUMENT and a google.rpc.BadRequest detail naming the bad field:
#
#   ERROR:
#     Code: InvalidArgument
#     Message: invalid request: customer_email: customer email must be a valid email address
#     Details:
#     1)  {"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"customer_email",...}]}
#
# grpcurl prints the error on stderr and exits non-zero (64 + the gRPC code:
# 67 for InvalidArgument), and so does this script.
set -euo pipefail
API_ADDR="${API_ADDR:-127.0.0.1:50051}"

exec grpcurl -plaintext -d @ "$API_ADDR" foodorder.v1.OrderService/PlaceOrder <<'JSON'
{
  "customer_name": "Ada Lovelace",
  "customer_email": "ada-at-example.com",
  "items": [{"menu_item_id": 1, "quantity": 1}]
}
JSON
