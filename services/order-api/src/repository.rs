//! PostgreSQL access for the order API, in its own schema (`orders`): the
//! menu, placing an order (order, items and outbox row in one transaction,
//! idempotency-key aware), recording a payment's outcome from
//! `payment.completed`, and reading an order back as the protobuf `Order`.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::SCHEMA;
use chrono::{DateTime, Utc};
use foodorder_contract::EventType;
use foodorder_contract::events::{self, timestamp};
use foodorder_contract::money::format_money;
use foodorder_contract::states::{OrderState, PaymentState};
use foodorder_contract::v1::{
    MenuItem, Order, OrderItem, OrderPlaced, OrderStatus, PaymentAttempt,
};
use foodorder_runtime::outbox::{self, OutboxMessage};
use prost::Message;
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{MenuEntry, NewOrder, PricedOrder, order_placed, price_order};
use crate::error::ApiError;

/// Name of this service in event metadata.
pub const PRODUCER: &str = "order-api";

#[derive(sqlx::FromRow)]
struct MenuItemRow {
    id: i32,
    name: String,
    description: String,
    price: Decimal,
    available: bool,
}

#[derive(sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    customer_name: String,
    customer_email: String,
    status: OrderState,
    total_amount: Decimal,
    correlation_id: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct OrderItemRow {
    id: i64,
    menu_item_id: i32,
    menu_item_name: String,
    quantity: i32,
    unit_price: Decimal,
    subtotal: Decimal,
}

#[derive(sqlx::FromRow)]
struct PaymentAttemptRow {
    id: Uuid,
    status: PaymentState,
    attempt_count: i32,
    error_message: Option<String>,
    processing_time_ms: i64,
    created_at: DateTime<Utc>,
}

/// True for COMPLETED and FAILED.
pub fn is_terminal(status: OrderStatus) -> bool {
    matches!(status, OrderStatus::Completed | OrderStatus::Failed)
}

/// The whole menu, ordered by id.
pub async fn list_menu(pool: &PgPool) -> Result<Vec<MenuItem>, sqlx::Error> {
    let rows: Vec<MenuItemRow> = sqlx::query_as(
        "SELECT id, name, description, price, available FROM orders.menu_items ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| MenuItem {
            id: row.id,
            name: row.name,
            description: row.description,
            price: format_money(row.price),
            available: row.available,
        })
        .collect())
}

/// Who placed the order and the trace context to carry into the event.
#[derive(Clone, Debug)]
pub struct PlaceContext {
    /// Correlation id (`x-request-id`).
    pub correlation_id: String,
    /// `traceparent` / `tracestate` of the PlaceOrder call.
    pub trace_context: BTreeMap<String, String>,
    /// Topic for OrderPlaced events.
    pub topic: String,
}

/// One validated PlaceOrder call.
#[derive(Clone, Debug)]
pub struct PlaceRequest {
    /// The validated order.
    pub order: NewOrder,
    /// Who placed it.
    pub context: PlaceContext,
}

/// What placing an order did.
#[derive(Debug)]
pub struct Placed {
    /// The order.
    pub order: Order,
    /// False when an idempotent retry returned the original order.
    pub created: bool,
}

/// Stores one order (status PROCESSING), its items and an outbox row with
/// `OrderPlaced`, all in one transaction; on an idempotent retry returns the
/// original order instead. [`place_orders`] with one request.
pub async fn place_order(pool: &PgPool, request: &PlaceRequest) -> Result<Placed, ApiError> {
    place_orders(pool, std::slice::from_ref(request))
        .await?
        .pop()
        .unwrap_or_else(|| {
            Err(ApiError::Internal(anyhow::anyhow!(
                "no result for the order"
            )))
        })
}

/// A request of a batch and what is known of it so far.
enum Slot<'a> {
    /// To be inserted by this batch.
    New {
        request: &'a PlaceRequest,
        order_id: Uuid,
        priced: PricedOrder,
    },
    /// Its idempotency key is (or will be, when this batch commits) stored:
    /// answered from the stored order after the commit.
    Existing(&'a PlaceRequest),
    /// Answered.
    Done(Result<Placed, ApiError>),
}

/// Places several orders in one transaction (group commit): one read of the
/// menu, one multi-row insert each for the orders, their items and their
/// outbox rows, one notification of the relay, one commit. Every request keeps
/// its own outcome, as if it had been placed alone and in this order:
/// - one that cannot be priced (unknown or unavailable menu items) gets its
///   error and writes nothing;
/// - one whose idempotency key is already stored, or that repeats the key of
///   an earlier request in the batch, gets the stored order (created = false),
///   or IdempotencyKeyReused when it is a different request;
/// - every other one gets its order and exactly one outbox row.
///
/// The outer error means the transaction failed and nothing was written.
pub async fn place_orders(
    pool: &PgPool,
    requests: &[PlaceRequest],
) -> Result<Vec<Result<Placed, ApiError>>, ApiError> {
    let mut results: Vec<Option<Result<Placed, ApiError>>> = std::iter::repeat_with(|| None)
        .take(requests.len())
        .collect();
    place_orders_answering(pool, requests, |index, result| {
        results[index] = Some(result)
    })
    .await?;
    Ok(results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| {
                Err(ApiError::Internal(anyhow::anyhow!(
                    "a call was not answered"
                )))
            })
        })
        .collect())
}

/// [`place_orders`], handing each call's outcome to `answer` (with the call's
/// index) as soon as it is known: the calls the batch placed or refused right
/// after the commit, then the retries, which need the stored order read.
pub async fn place_orders_answering(
    pool: &PgPool,
    requests: &[PlaceRequest],
    mut answer: impl FnMut(usize, Result<Placed, ApiError>) + Send,
) -> Result<(), ApiError> {
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

    let mut ids: Vec<i32> = requests
        .iter()
        .flat_map(|request| request.order.lines.iter().map(|line| line.menu_item_id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let menu: HashMap<i32, MenuEntry> = sqlx::query_as::<_, MenuItemRow>(
        "SELECT id, name, description, price, available FROM orders.menu_items WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?
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
    .collect();

    let mut claimed_keys: HashSet<&str> = HashSet::new();
    let mut slots: Vec<Slot<'_>> = requests
        .iter()
        .map(|request| {
            let key = request.order.idempotency_key.as_deref();
            // A key stored already, or by an earlier call of this batch: the
            // call is answered from that order (or told the key is taken).
            if key.is_some_and(|key| stored_keys.contains(key) || claimed_keys.contains(key)) {
                return Slot::Existing(request);
            }
            match price_order(&request.order, &menu) {
                // A call that fails writes nothing and leaves its key free.
                Err(error) => Slot::Done(Err(error.into())),
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
                    request,
                    *order_id,
                    priced,
                    created[order_id],
                )),
                _ => None,
            })
            .collect();
        outbox::enqueue_all(&mut tx, &SCHEMA, &messages).await?;
    }
    tx.commit().await?;

    let mut retries = Vec::new();
    for (index, slot) in slots.into_iter().enumerate() {
        match slot {
            Slot::Done(result) => answer(index, result),
            Slot::Existing(request) => retries.push((index, request)),
            Slot::New {
                request,
                order_id,
                priced,
            } => answer(
                index,
                Ok(Placed {
                    order: new_order(request, order_id, &priced, created[&order_id], &item_ids),
                    created: true,
                }),
            ),
        }
    }
    for (index, request) in retries {
        answer(index, stored_order(pool, &request.order).await);
    }
    Ok(())
}

/// Inserts the orders of the `New` slots in one statement. A key stored by a
/// concurrent call meanwhile turns its slot into `Existing`. Returns the
/// creation time of each order inserted.
async fn insert_orders<'a>(
    connection: &mut PgConnection,
    slots: &mut [Slot<'a>],
) -> Result<HashMap<Uuid, DateTime<Utc>>, ApiError> {
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
        if let Slot::New {
            request, order_id, ..
        } = slot
            && !created.contains_key(order_id)
        {
            // A concurrent call with the same key stored it first.
            *slot = Slot::Existing(request);
        }
    }
    Ok(created)
}

/// Inserts the lines of every `New` slot in one statement; returns the id of
/// each line by (order id, menu item id).
async fn insert_items(
    connection: &mut PgConnection,
    slots: &[Slot<'_>],
) -> Result<HashMap<(Uuid, i32), i64>, ApiError> {
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
        topic: context.topic.clone(),
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

/// The `Order` a new order's caller gets back.
fn new_order(
    request: &PlaceRequest,
    order_id: Uuid,
    priced: &PricedOrder,
    created_at: DateTime<Utc>,
    item_ids: &HashMap<(Uuid, i32), i64>,
) -> Order {
    let order = &request.order;
    Order {
        id: order_id.to_string(),
        customer_name: order.customer_name.clone(),
        customer_email: order.customer_email.clone(),
        status: OrderState::Processing.to_proto() as i32,
        total_amount: format_money(priced.total),
        created_at: Some(timestamp(created_at)),
        updated_at: Some(timestamp(created_at)),
        items: priced
            .lines
            .iter()
            .map(|line| OrderItem {
                id: item_ids
                    .get(&(order_id, line.menu_item_id))
                    .copied()
                    .unwrap_or_default(),
                menu_item_id: line.menu_item_id,
                menu_item_name: line.name.clone(),
                quantity: line.quantity,
                unit_price: format_money(line.unit_price),
                subtotal: format_money(line.subtotal),
            })
            .collect(),
        payment_attempts: Vec::new(),
        payment_successful: false,
        correlation_id: request.context.correlation_id.clone(),
    }
}

/// The stored order of a request whose idempotency key is stored: an
/// idempotent retry when the request is the same, IdempotencyKeyReused when not.
async fn stored_order(pool: &PgPool, order: &NewOrder) -> Result<Placed, ApiError> {
    let key = order.idempotency_key.as_deref().unwrap_or_default();
    let stored: Option<(Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT id, request_fingerprint FROM orders.orders WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(pool)
    .await?;
    let Some((order_id, stored_fingerprint)) = stored else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "idempotency key conflict without a stored order"
        )));
    };
    if stored_fingerprint != order.fingerprint() {
        return Err(ApiError::IdempotencyKeyReused);
    }
    tracing::info!(%order_id, "idempotent retry, returning the original order");
    let order = load_order(pool, order_id)
        .await?
        .ok_or(ApiError::OrderNotFound(order_id))?;
    Ok(Placed {
        order,
        created: false,
    })
}

/// Reads an order with its items and payment attempts.
pub async fn load_order(pool: &PgPool, order_id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    // One snapshot for the three reads, so an order is never seen PROCESSING
    // together with the payment attempt that completed it.
    let mut connection = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let Some(order): Option<OrderRow> = sqlx::query_as(
        "SELECT id, customer_name, customer_email, status, total_amount, correlation_id, created_at, updated_at \
         FROM orders.orders WHERE id = $1",
    )
    .bind(order_id)
    .fetch_optional(&mut *connection)
    .await?
    else {
        return Ok(None);
    };
    let items: Vec<OrderItemRow> = sqlx::query_as(
        "SELECT id, menu_item_id, menu_item_name, quantity, unit_price, subtotal \
         FROM orders.order_items WHERE order_id = $1 ORDER BY menu_item_id",
    )
    .bind(order_id)
    .fetch_all(&mut *connection)
    .await?;
    let attempts: Vec<PaymentAttemptRow> = sqlx::query_as(
        "SELECT payment_id AS id, status, attempt_count, error_message, processing_time_ms, completed_at AS created_at \
         FROM orders.order_payments WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_all(&mut *connection)
    .await?;

    connection.commit().await?;
    let status = order.status.to_proto();
    Ok(Some(Order {
        id: order.id.to_string(),
        customer_name: order.customer_name,
        customer_email: order.customer_email,
        status: status as i32,
        total_amount: format_money(order.total_amount),
        created_at: Some(timestamp(order.created_at)),
        updated_at: Some(timestamp(order.updated_at)),
        items: items
            .into_iter()
            .map(|item| OrderItem {
                id: item.id,
                menu_item_id: item.menu_item_id,
                menu_item_name: item.menu_item_name,
                quantity: item.quantity,
                unit_price: format_money(item.unit_price),
                subtotal: format_money(item.subtotal),
            })
            .collect(),
        payment_successful: attempts
            .iter()
            .any(|attempt| attempt.status == PaymentState::Succeeded),
        payment_attempts: attempts
            .into_iter()
            .map(|attempt| PaymentAttempt {
                id: attempt.id.to_string(),
                status: attempt.status.to_proto() as i32,
                attempt_count: attempt.attempt_count,
                error_message: attempt.error_message.unwrap_or_default(),
                processing_time_ms: attempt.processing_time_ms,
                created_at: Some(timestamp(attempt.created_at)),
            })
            .collect(),
        correlation_id: order.correlation_id,
    }))
}

/// A payment's outcome as `payment.completed` reported it.
pub struct PaymentOutcome {
    /// The payment attempt's id.
    pub payment_id: Uuid,
    /// Succeeded or failed.
    pub status: PaymentState,
    /// Amount charged or attempted.
    pub amount: Decimal,
    /// Gateway calls made.
    pub attempt_count: i32,
    /// Why it failed.
    pub error_message: Option<String>,
    /// Time spent on the payment.
    pub processing_time_ms: i64,
    /// When the payment service recorded it.
    pub completed_at: DateTime<Utc>,
}

/// What recording a payment outcome did.
#[derive(Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The order moved to its final status.
    Applied,
    /// The order's outcome was already recorded (a replay or a duplicate).
    AlreadyRecorded,
    /// No such order.
    UnknownOrder,
    /// A successful payment of another amount than the order's total: not applied.
    WrongAmount {
        /// The order's total.
        total: Decimal,
    },
}

/// Stores the payment summary of `order_id` and moves the order to the
/// outcome's final status, in one transaction that also wakes the order's
/// WatchOrder streams (`NOTIFY`, delivered at commit). The summary's primary
/// key makes a replay change nothing.
pub async fn record_payment(
    pool: &PgPool,
    order_id: Uuid,
    outcome: &PaymentOutcome,
    notify_channel: &str,
) -> Result<Recorded, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let known: Option<(Decimal,)> =
        sqlx::query_as("SELECT total_amount FROM orders.orders WHERE id = $1 FOR UPDATE")
            .bind(order_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((total,)) = known else {
        tx.rollback().await?;
        return Ok(Recorded::UnknownOrder);
    };
    if outcome.status == PaymentState::Succeeded && outcome.amount != total {
        tx.rollback().await?;
        return Ok(Recorded::WrongAmount { total });
    }
    let inserted = sqlx::query(
        "INSERT INTO orders.order_payments (order_id, payment_id, status, amount, attempt_count, \
         error_message, processing_time_ms, completed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id)
    .bind(outcome.payment_id)
    .bind(outcome.status)
    .bind(outcome.amount)
    .bind(outcome.attempt_count)
    .bind(&outcome.error_message)
    .bind(outcome.processing_time_ms)
    .bind(outcome.completed_at)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(Recorded::AlreadyRecorded);
    }
    sqlx::query(
        "UPDATE orders.orders SET status = $2, updated_at = now() WHERE id = $1 AND status <> $2",
    )
    .bind(order_id)
    .bind(outcome.status.order_state())
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(notify_channel)
        .bind(order_id.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Recorded::Applied)
}
