#!/usr/bin/env node
// End-to-end check of the foodorder.v1 contract from Node.js.
//
//   node check_client.mjs ADDR        # e.g. 127.0.0.1:50051
//
// Loads proto/foodorder/v1/*.proto at run time with @grpc/proto-loader (no
// code generation; google/protobuf/timestamp.proto is bundled with it), then
// lists the menu, places an order, watches it until a terminal status
// (bounded), reads it back with GetOrder and checks its fields. Exits 0 and
// prints a short summary when all checks pass, exits 1 with the reason otherwise.
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const PROTO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../proto');
const WATCH_SECONDS = 60; // the payment service finishes within seconds
const TERMINAL = ['ORDER_STATUS_COMPLETED', 'ORDER_STATUS_FAILED'];

function check(condition, message) {
  if (!condition) {
    console.error(`FAIL: ${message}`);
    process.exit(1);
  }
}

// Money is an exact decimal string ("12.99"): compute in integer cents.
function cents(amount) {
  const match = /^(\d+)\.(\d{2})$/.exec(amount);
  check(match, `not a money string: ${JSON.stringify(amount)}`);
  return Number(match[1]) * 100 + Number(match[2]);
}

const deadline = (seconds) => new Date(Date.now() + seconds * 1000);

// Promise wrapper for a unary call that also returns the response headers.
function unary(client, method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) => {
    let headers;
    const call = client[method](request, metadata, { deadline: deadline(10) }, (error, response) =>
      error ? reject(error) : resolve({ response, headers }));
    call.on('metadata', (received) => { headers = received; });
  });
}

// Collects the statuses of a WatchOrder stream until it ends (or fails).
function watch(client, orderId) {
  return new Promise((resolve, reject) => {
    const statuses = [];
    const call = client.WatchOrder({ order_id: orderId }, { deadline: deadline(WATCH_SECONDS) });
    call.on('data', (message) => statuses.push(message.order.status));
    call.on('error', (error) => reject(Object.assign(error, { statuses })));
    call.on('end', () => resolve(statuses));
  });
}

async function main() {
  const addr = process.argv[2];
  check(addr && process.argv.length === 3, 'usage: node check_client.mjs ADDR');
  const definition = protoLoader.loadSync(['foodorder/v1/order_service.proto', 'foodorder/v1/events.proto'], {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as in the .proto (customer_email, not customerEmail)
    longs: String, // int64 as decimal strings
    enums: String, // enum values by name
    defaults: true, // unset fields get their default value
  });
  const { OrderService } = grpc.loadPackageDefinition(definition).foodorder.v1;
  const client = new OrderService(addr, grpc.credentials.createInsecure());

  // 1. The menu: pick two available items.
  const menu = (await unary(client, 'ListMenuItems', {})).response.menu_items;
  const available = menu.filter((item) => item.available);
  check(available.length >= 2, `expected at least 2 available menu items, got ${available.length}`);
  const wanted = new Map([[available[0].id, 2], [available.at(-1).id, 1]]);
  const byId = new Map(menu.map((item) => [item.id, item]));
  let expectedCents = 0;
  for (const [id, quantity] of wanted) expectedCents += cents(byId.get(id).price) * quantity;
  console.log(`menu: ${menu.length} items; ordering ` +
    [...wanted].map(([id, quantity]) => `${quantity} x ${byId.get(id).name}`).join(', '));

  // 2. Place the order with a correlation id and an idempotency key.
  const requestId = `node-client-${randomUUID()}`;
  const metadata = new grpc.Metadata();
  metadata.set('x-request-id', requestId);
  const { response, headers } = await unary(client, 'PlaceOrder', {
    customer_name: 'Grace Hopper',
    customer_email: 'grace@example.com',
    items: [...wanted].map(([menu_item_id, quantity]) => ({ menu_item_id, quantity })),
    idempotency_key: `node-client-${randomUUID()}`,
  }, metadata);
  const { order } = response;
  const echoed = headers?.get('x-request-id')[0];
  check(echoed === requestId, `x-request-id not echoed: sent ${requestId}, got ${echoed}`);
  check(order.correlation_id === requestId, `correlation_id ${order.correlation_id} != ${requestId}`);
  check(order.status === 'ORDER_STATUS_PROCESSING', `new order has status ${order.status}`);
  console.log(`placed: ${order.id} total ${order.total_amount} ${order.status}`);

  // 3. Watch until a terminal status; the stream ends by itself after it.
  const started = Date.now();
  let statuses;
  try {
    statuses = await watch(client, order.id);
  } catch (error) {
    check(false, `WatchOrder ended with ${grpc.status[error.code]} after ` +
      `${error.statuses.join(' -> ') || 'no messages'} (no terminal status within ${WATCH_SECONDS} s?)`);
  }
  check(TERMINAL.includes(statuses.at(-1)), `watch ended without a terminal status: ${statuses}`);
  console.log(`watched: ${statuses.join(' -> ')} in ${((Date.now() - started) / 1000).toFixed(1)} s`);

  // 4. Read it back and check the fields.
  const got = (await unary(client, 'GetOrder', { order_id: order.id })).response.order;
  check(got.id === order.id, `GetOrder returned id ${got.id}`);
  check(got.status === statuses.at(-1), `GetOrder status ${got.status} != watched ${statuses.at(-1)}`);
  check(cents(got.total_amount) === expectedCents,
    `total ${got.total_amount} != sum of menu prices x quantities (${expectedCents} cents)`);
  check(got.items.length === wanted.size, `expected ${wanted.size} items, got ${got.items.length}`);
  for (const item of got.items) {
    const price = cents(byId.get(item.menu_item_id).price);
    check(wanted.get(item.menu_item_id) === item.quantity, `unexpected item ${JSON.stringify(item)}`);
    check(cents(item.unit_price) === price && cents(item.subtotal) === price * item.quantity,
      `item ${item.menu_item_id} priced ${item.unit_price} / ${item.subtotal}`);
  }
  check(got.payment_attempts.length === 1, `expected 1 payment attempt, got ${got.payment_attempts.length}`);
  const [payment] = got.payment_attempts;
  const succeeded = got.status === 'ORDER_STATUS_COMPLETED';
  check(got.payment_successful === succeeded, `payment_successful=${got.payment_successful} for ${got.status}`);
  check(payment.status === (succeeded ? 'PAYMENT_STATUS_SUCCEEDED' : 'PAYMENT_STATUS_FAILED'),
    `payment attempt ${payment.status} for ${got.status}`);
  console.log(`got: ${got.id} ${got.status} total ${got.total_amount}, ${got.items.length} items, ` +
    `payment ${payment.status} after ${payment.attempt_count} gateway call(s)`);

  client.close();
  console.log('node client: all checks passed');
}

main().catch((error) => {
  console.error(`FAIL: ${error.message ?? error}`);
  process.exit(1);
});
