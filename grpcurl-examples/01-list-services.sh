#!/usr/bin/env bash
# Lists the gRPC services the server offers, via server reflection (no .proto
# files needed). Expect foodorder.v1.OrderService, grpc.health.v1.Health and
# the reflection service itself.
#
#   ./01-list-services.sh                    # server at $API_ADDR (default 127.0.0.1:50051)
#   API_ADDR=host:port ./01-list-services.sh
set -euo pipefail
API_ADDR="${API_ADDR:-127.0.0.1:50051}"

# -plaintext: the API speaks gRPC without TLS (put TLS in front of it in production).
exec grpcurl -plaintext "$API_ADDR" list
