//! Placing orders: a batch of PlaceOrder calls in one transaction (group
//! commit), each keeping its own outcome, and the stored order an idempotent
//! retry is answered with.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use foodorder_contract::EventType;
use foodorder_contract::events;
use foodorder_contract::states::OrderState;
use foodorder_contract::v1::OrderPlaced;
use foodorder_runtime::outbox::{self, OutboxMessage};
use prost::Message;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{ItemRecord, MenuRecord, OrderRecord, RepositoryError, load_order};
use crate::SCHEMA;
use crate::domain::{MenuEntry, NewOrder, PricedOrder, PricingError, order_placed, price_order};

/// Name of this service in event metadata.
pub const PRODUCER: &str = "order-api";

/// Who placed the order and the trace context to carry into the event.
#[derive(Clone, Debug)]
pub struct PlaceContext {
    /// Correlation id (`x-request-id`).
    pub correlation_id: String,
    /// `traceparent` / `tracestate` of the PlaceOrder call.
    pub trace_context: BTreeMap<String, String>,
}

/// One validated PlaceOrder call.
#[derive(Clone, Debug)]
pub struct PlaceRequest {
    /// The validated order.
    pub order: NewOrder,
    /// Who placed it.
    pub context: PlaceContext,
}

/// What a batch did with one of its calls.
#[derive(Debug)]
pub enum BatchOutcome {
    /// Placed by this batch: the order as stored, its outbox row committed.
    Placed(OrderRecord),
    /// Its idempotency key is stored (before the batch, or by an earlier call
    /// of it): answered from the stored order, see [`stored_order`].
    Repeated,
    /// It cannot be priced (unknown or unavailable menu items); nothing written.
    Refused(PricingError),
}

/// The stored order an idempotency key names, as a retry sees it.
#[derive(Debug)]
pub enum StoredOrder {
    /// The same request: the original order.
    Same(OrderRecord),
    /// The key was used for a different request.
    KeyReused,
}

/// A call of a batch and what is known of it so far.
enum Slot<'a> {
    /// To be inserted by this batch.
    New {
        request: &'a PlaceRequest,
        order_id: Uuid,
        priced: PricedOrder,
    },
    /// Known before the commit.
    Known(BatchOutcome),
}

/// Places `requests` in one transaction: one read of the menu, one multi-row
/// insert each for the orders, their items and their `OrderPlaced` outbox rows
/// (to `topic`), one notification of the relay, one commit. Every call keeps
/// its own outcome, as if it had been placed alone and in this order (see
/// [`BatchOutcome`]); a key taken earlier in the batch, or stored, makes the
/// call `Repeated` before it is priced. An error means the transaction failed
/// and nothing was written.
pub async fn place_batch(
    pool: &PgPool,
    topic: &str,
    requests: &[PlaceRequest],
) -> Result<Vec<BatchOutcome>, RepositoryError> {
    let mut tx = pool.begin().await?;
    // A retry is answered from the stored order before anything else, even
    // when the menu has changed since the original call.
    let keys: Vec<&str> = requests
        .iter()
        .filter_map(|request| request.order.idempotency_key.as_deref())
        .collect();
    let stored_keys: HashSet<String> = if keys.is_empty() {
        HashSet::new()
    } else {
        sqlx::query_scalar(
            "SELECT idempotency_key FROM orders.orders WHERE idempotency_key = ANY($1)",
        )
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect()
    };
    let menu = read_menu(&mut tx, requests).await?;

    let mut claimed_keys: HashSet<&str> = HashSet::new();
    let mut slots: Vec<Slot<'_>> = requests
        .iter()
        .map(|request| {
            let key = request.order.idempotency_key.as_deref();
            if key.is_some_and(|key| stored_keys.contains(key) || claimed_keys.contains(key)) {
                return Slot::Known(BatchOutcome::Repeated);
            }
            match price_order(&request.order, &menu) {
                // A call that fails writes nothing and leaves its key free.
                Err(error) => Slot::Known(BatchOutcome::Refused(error)),
                Ok(priced) => {
                    if let Some(key) = key {
                        claimed_keys.insert(key);
                    }
                    Slot::New {
                        request,
                        order_id: Uuid::now_v7(),
                        priced,
                    }
                }
            }
        })
        .collect();

    let created = insert_orders(&mut tx, &mut slots).await?;
    let mut item_ids = HashMap::new();
    if !created.is_empty() {
        item_ids = insert_items(&mut tx, &slots).await?;
        let messages: Vec<OutboxMessage> = slots
            .iter()
            .filter_map(|slot| match slot {
                Slot::New {
                    request,
                    order_id,
                    priced,
                } => Some(outbox_message(
                    topic,
                    request,
                    *order_id,
                    priced,
                    created[order_id],
                )),
                Slot::Known(_) => None,
            })
            .collect();
        outbox::enqueue_all(&mut tx, &SCHEMA, &messages).await?;
    }
    tx.commit().await?;
    outbox::committed(&SCHEMA);
    Ok(slots
        .into_iter()
        .map(|slot| match slot {
            Slot::Known(outcome) => outcome,
            Slot::New {
                request,
                order_id,
                priced,
            } => BatchOutcome::Placed(placed_record(
                request,
                order_id,
                &priced,
                created[&order_id],
                &item_ids,
            )),
        })
        .collect())
}

/// The menu entries the requests name.
async fn read_menu(
    connection: &mut PgConnection,
    requests: &[PlaceRequest],
) -> Result<HashMap<i32, MenuEntry>, sqlx::Error> {
    let mut ids: Vec<i32> = requests
        .iter()
        .flat_map(|request| request.order.lines.iter().map(|line| line.menu_item_id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let rows: Vec<MenuRecord> = sqlx::query_as(
        "SELECT id, name, description, price, available FROM orders.menu_items WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(connection)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let entry = MenuEntry {
                id: row.id,
                name: row.name,
                price: row.price,
                available: row.available,
            };
            (entry.id, entry)
        })
        .collect())
}

/// Inserts the orders of the `New` slots in one statement. A key stored by a
/// concurrent call meanwhile turns its slot into `Existing`. Returns the
/// creation time of each order inserted.
async fn insert_orders<'a>(
    connection: &mut PgConnection,
    slots: &mut [Slot<'a>],
) -> Result<HashMap<Uuid, DateTime<Utc>>, sqlx::Error> {
    let mut ids = Vec::new();
    let mut names = Vec::new();
    let mut emails = Vec::new();
    let mut totals = Vec::new();
    let mut correlation_ids = Vec::new();
    let mut keys = Vec::new();
    let mut fingerprints = Vec::new();
    // Keys are inserted in key order, so that two batches sharing keys lock
    // them in the same order and never deadlock each other.
    let mut new_slots: Vec<&Slot<'a>> = slots
        .iter()
        .filter(|slot| matches!(slot, Slot::New { .. }))
        .collect();
    new_slots.sort_by_key(|slot| match slot {
        Slot::New { request, .. } => request.order.idempotency_key.as_deref(),
        _ => None,
    });
    for slot in new_slots {
        if let Slot::New {
            request,
            order_id,
            priced,
        } = slot
        {
            let order = &request.order;
            ids.push(*order_id);
            names.push(order.customer_name.as_str());
            emails.push(order.customer_email.as_str());
            totals.push(priced.total);
            correlation_ids.push(request.context.correlation_id.as_str());
            keys.push(order.idempotency_key.as_deref());
            fingerprints.push(order.idempotency_key.as_ref().map(|_| order.fingerprint()));
        }
    }
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let created: HashMap<Uuid, DateTime<Utc>> = sqlx::query_as::<_, (Uuid, DateTime<Utc>)>(
        "INSERT INTO orders.orders (id, customer_name, customer_email, status, total_amount, correlation_id, \
         idempotency_key, request_fingerprint) \
         SELECT id, name, email, $8, total, correlation_id, key, fingerprint \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::numeric[], $5::text[], $6::text[], $7::bytea[]) \
           WITH ORDINALITY AS batch (id, name, email, total, correlation_id, key, fingerprint, position) \
         ORDER BY position \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id, created_at",
    )
    .bind(&ids)
    .bind(&names)
    .bind(&emails)
    .bind(&totals)
    .bind(&correlation_ids)
    .bind(&keys)
    .bind(&fingerprints)
    .bind(OrderState::Processing)
    .fetch_all(&mut *connection)
    .await?
    .into_iter()
    .collect();
    for slot in slots.iter_mut() {
        if let Slot::New { order_id, .. } = slot
            && !created.contains_key(order_id)
        {
            // A concurrent call with the same key stored it first.
            *slot = Slot::Known(BatchOutcome::Repeated);
        }
    }
    Ok(created)
}

/// Inserts the lines of every `New` slot in one statement; returns the id of
/// each line by (order id, menu item id).
async fn insert_items(
    connection: &mut PgConnection,
    slots: &[Slot<'_>],
) -> Result<HashMap<(Uuid, i32), i64>, sqlx::Error> {
    let mut order_ids = Vec::new();
    let mut menu_item_ids = Vec::new();
    let mut names = Vec::new();
    let mut quantities = Vec::new();
    let mut unit_prices = Vec::new();
    let mut subtotals = Vec::new();
    for slot in slots {
        if let Slot::New {
            order_id, priced, ..
        } = slot
        {
            for line in &priced.lines {
                order_ids.push(*order_id);
                menu_item_ids.push(line.menu_item_id);
                names.push(line.name.as_str());
                quantities.push(line.quantity);
                unit_prices.push(line.unit_price);
                subtotals.push(line.subtotal);
            }
        }
    }
    let rows: Vec<(i64, Uuid, i32)> = sqlx::query_as(
        "INSERT INTO orders.order_items (order_id, menu_item_id, menu_item_name, quantity, unit_price, subtotal) \
         SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::int4[], $5::numeric[], $6::numeric[]) \
         RETURNING id, order_id, menu_item_id",
    )
    .bind(&order_ids)
    .bind(&menu_item_ids)
    .bind(&names)
    .bind(&quantities)
    .bind(&unit_prices)
    .bind(&subtotals)
    .fetch_all(connection)
    .await?;
    // Lines are unique per menu item within an order (merged in validation).
    Ok(rows
        .into_iter()
        .map(|(id, order_id, menu_item_id)| ((order_id, menu_item_id), id))
        .collect())
}

/// The outbox row carrying the `OrderPlaced` event of a new order.
fn outbox_message(
    topic: &str,
    request: &PlaceRequest,
    order_id: Uuid,
    priced: &PricedOrder,
    created_at: DateTime<Utc>,
) -> OutboxMessage {
    let context = &request.context;
    let event = order_placed(
        order_id,
        &request.order,
        priced,
        &context.correlation_id,
        PRODUCER,
        created_at,
    );
    let message = OutboxMessage {
        topic: topic.to_owned(),
        key: order_id.to_string(),
        payload: event.encode_to_vec(),
        headers: events::standard_headers::<OrderPlaced>(
            &context.correlation_id,
            &context.trace_context,
        ),
    };
    debug_assert_eq!(
        message.headers[events::HEADER_EVENT_TYPE],
        OrderPlaced::EVENT_TYPE
    );
    message
}

/// The record of an order this batch placed, as stored.
fn placed_record(
    request: &PlaceRequest,
    order_id: Uuid,
    priced: &PricedOrder,
    created_at: DateTime<Utc>,
    item_ids: &HashMap<(Uuid, i32), i64>,
) -> OrderRecord {
    let order = &request.order;
    OrderRecord {
        id: order_id,
        customer_name: order.customer_name.clone(),
        customer_email: order.customer_email.clone(),
        status: OrderState::Processing,
        total_amount: priced.total,
        correlation_id: request.context.correlation_id.clone(),
        created_at,
        updated_at: created_at,
        items: priced
            .lines
            .iter()
            .map(|line| ItemRecord {
                id: item_ids
                    .get(&(order_id, line.menu_item_id))
                    .copied()
                    .unwrap_or_default(),
                menu_item_id: line.menu_item_id,
                menu_item_name: line.name.clone(),
                quantity: line.quantity,
                unit_price: line.unit_price,
                subtotal: line.subtotal,
            })
            .collect(),
        payments: Vec::new(),
    }
}

/// The stored order of `order`'s idempotency key, as a retry sees it: the
/// original order for the same request, `KeyReused` for another one.
pub async fn stored_order(pool: &PgPool, order: &NewOrder) -> Result<StoredOrder, RepositoryError> {
    let key = order.idempotency_key.as_deref().unwrap_or_default();
    let stored: Option<(Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT id, request_fingerprint FROM orders.orders WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(pool)
    .await?;
    let Some((order_id, stored_fingerprint)) = stored else {
        return Err(RepositoryError::Inconsistent(
            "idempotency key conflict without a stored order",
        ));
    };
    if stored_fingerprint != order.fingerprint() {
        return Ok(StoredOrder::KeyReused);
    }
    tracing::info!(%order_id, "idempotent retry, returning the original order");
    load_order(pool, order_id)
        .await?
        .map(StoredOrder::Same)
        .ok_or(RepositoryError::Inconsistent(
            "an order vanished while it was read",
        ))
}
