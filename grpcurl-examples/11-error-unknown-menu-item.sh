#!/usr/bin/env bash
# Common mistake: ordering a menu item id that does not exist (ids come from
# 03-list-menu.sh). The server answers INVALID_ARGUMENT with a field violation
# on items[0].menu_item_id:
#
#   ERROR:
#     Code: InvalidArgument
#     Message: invalid request: items[0].menu_item_id: menu item 999 does not exist (see ListMenuItems)
#
# grpcurl (and so this script) exits non-zero: 67 = 64 + InvalidArgument (3).
set -euo pipefail
API_ADDR="${API_ADDR:-127.0.0.1:50051}"

exec grpcurl -plaintext -d @ "$API_ADDR" foodorder.v1.OrderService/PlaceOrder <<'JSON'
{
  "customer_name": "Ada Lovelace",
  "customer_email": "ada@example.com",
  "items": [{"menu_item_id": 999, "quantity": 1}]
}
JSON
