#!/usr/bin/env bash
# Asks the standard gRPC health service whether the server can take work.
# Prints {"status": "SERVING"} when it can. Without an argument it asks about
# the server as a whole; pass a service name to ask about that one.
#
#   ./07-health.sh
#   ./07-health.sh foodorder.v1.OrderService
set -euo pipefail
API_ADDR="${API_ADDR:-127.0.0.1:50051}"
SERVICE="${1:-}"

exec grpcurl -plaintext -d "{\"service\": \"$SERVICE\"}" \
  "$API_ADDR" grpc.health.v1.Health/Check
