#!/usr/bin/env python3
"""End-to-end check of the foodorder.v1 contract from Python.

    python check_client.py ADDR        # e.g. 127.0.0.1:50051

Generates the Python client from proto/ with grpcio-tools into a temporary
directory (nothing is written to the repository), then lists the menu, places
an order, watches it until a terminal status (bounded), reads it back with
GetOrder and checks its fields. Exits 0 and prints a short summary when all
checks pass, exits 1 with the reason otherwise.
"""

import importlib
import importlib.resources
import pathlib
import sys
import tempfile
import time
import uuid
from decimal import Decimal

import grpc
from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto"
WATCH_SECONDS = 60  # the payment service finishes within seconds
TERMINAL = ("ORDER_STATUS_COMPLETED", "ORDER_STATUS_FAILED")


def generate_client(out_dir):
    """Runs protoc (bundled with grpcio-tools) on proto/foodorder/v1/*.proto."""
    well_known = importlib.resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.glob("foodorder/v1/*.proto"))
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}",
            f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *protos]
    if protoc.main(args) != 0:
        sys.exit(f"FAIL: protoc could not compile {protos}")
    sys.path.insert(0, str(out_dir))
    pb2 = importlib.import_module("foodorder.v1.order_service_pb2")
    pb2_grpc = importlib.import_module("foodorder.v1.order_service_pb2_grpc")
    return pb2, pb2_grpc


def check(condition, message):
    if not condition:
        sys.exit(f"FAIL: {message}")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: check_client.py ADDR")
    addr = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="foodorder-py-") as gen_dir:
        pb2, pb2_grpc = generate_client(gen_dir)
        with grpc.insecure_channel(addr) as channel:
            try:
                run(pb2, pb2_grpc.OrderServiceStub(channel))
            except grpc.RpcError as error:
                sys.exit(f"FAIL: {error.code().name}: {error.details()}")
    print("python client: all checks passed")


def run(pb2, stub):
    status_name = pb2.OrderStatus.Name

    # 1. The menu: pick two available items.
    menu = stub.ListMenuItems(pb2.ListMenuItemsRequest(), timeout=10).menu_items
    available = [item for item in menu if item.available]
    check(len(available) >= 2, f"expected at least 2 available menu items, got {len(available)}")
    wanted = {available[0].id: 2, available[-1].id: 1}
    prices = {item.id: Decimal(item.price) for item in menu}
    expected_total = sum(prices[i] * q for i, q in wanted.items())
    print(f"menu: {len(menu)} items; ordering "
          + ", ".join(f"{q} x {next(m.name for m in menu if m.id == i)}" for i, q in wanted.items()))

    # 2. Place the order with a correlation id and an idempotency key.
    request_id = f"py-client-{uuid.uuid4()}"
    request = pb2.PlaceOrderRequest(
        customer_name="Grace Hopper", customer_email="grace@example.com",
        items=[pb2.OrderItemInput(menu_item_id=i, quantity=q) for i, q in wanted.items()],
        idempotency_key=f"py-client-{uuid.uuid4()}")
    response, call = stub.PlaceOrder.with_call(
        request, metadata=[("x-request-id", request_id)], timeout=10)
    order = response.order
    echoed = dict(call.initial_metadata()).get("x-request-id")
    check(echoed == request_id, f"x-request-id not echoed: sent {request_id}, got {echoed}")
    check(order.correlation_id == request_id, f"correlation_id {order.correlation_id!r} != {request_id!r}")
    check(status_name(order.status) == "ORDER_STATUS_PROCESSING",
          f"new order has status {status_name(order.status)}")
    print(f"placed: {order.id} total {order.total_amount} {status_name(order.status)}")

    # 3. Watch until a terminal status; the stream ends by itself after it.
    started = time.monotonic()
    statuses = []
    try:
        for message in stub.WatchOrder(pb2.WatchOrderRequest(order_id=order.id), timeout=WATCH_SECONDS):
            statuses.append(status_name(message.order.status))
    except grpc.RpcError as error:
        sys.exit(f"FAIL: WatchOrder ended with {error.code().name} after {statuses or 'no messages'}"
                 f" (no terminal status within {WATCH_SECONDS} s?)")
    check(statuses and statuses[-1] in TERMINAL, f"watch ended without a terminal status: {statuses}")
    print(f"watched: {' -> '.join(statuses)} in {time.monotonic() - started:.1f} s")

    # 4. Read it back and check the fields.
    got = stub.GetOrder(pb2.GetOrderRequest(order_id=order.id), timeout=10).order
    final = status_name(got.status)
    check(got.id == order.id, f"GetOrder returned id {got.id}")
    check(final == statuses[-1], f"GetOrder status {final} != watched {statuses[-1]}")
    check(Decimal(got.total_amount) == expected_total,
          f"total {got.total_amount} != sum of menu prices x quantities {expected_total}")
    check({i.menu_item_id: i.quantity for i in got.items} == wanted,
          f"items {[(i.menu_item_id, i.quantity) for i in got.items]} != {wanted}")
    for item in got.items:
        check(Decimal(item.unit_price) == prices[item.menu_item_id]
              and Decimal(item.subtotal) == prices[item.menu_item_id] * item.quantity,
              f"item {item.menu_item_id} priced {item.unit_price} / {item.subtotal}")
    check(len(got.payment_attempts) == 1, f"expected 1 payment attempt, got {len(got.payment_attempts)}")
    payment = pb2.PaymentStatus.Name(got.payment_attempts[0].status)
    succeeded = final == "ORDER_STATUS_COMPLETED"
    check(got.payment_successful == succeeded, f"payment_successful={got.payment_successful} for {final}")
    check(payment == ("PAYMENT_STATUS_SUCCEEDED" if succeeded else "PAYMENT_STATUS_FAILED"),
          f"payment attempt {payment} for {final}")
    print(f"got: {got.id} {final} total {got.total_amount}, {len(got.items)} items, "
          f"payment {payment} after {got.payment_attempts[0].attempt_count} gateway call(s)")


if __name__ == "__main__":
    main()
