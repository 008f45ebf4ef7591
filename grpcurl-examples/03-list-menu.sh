#!/usr/bin/env bash
# Lists the menu. The ids are what PlaceOrder expects as menu_item_id; prices
# are exact decimal strings ("12.99"), never floating point numbers.
#
#   ./03-list-menu.sh
set -euo pipefail
API_ADDR="${API_ADDR:-127.0.0.1:50051}"

# ListMenuItemsRequest has no fields, so no -d is needed (grpcurl sends {}).
exec grpcurl -plaintext "$API_ADDR" foodorder.v1.OrderService/ListMenuItems
