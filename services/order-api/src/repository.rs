//! PostgreSQL access for the order API, in its own schema (`orders`): the
//! menu, placing an order (order, items and outbox row in one transaction,
//! idempotency-key aware), recording a payment's outcome from
//! `payment.completed`, and reading an order back as the protobuf `Order`.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use foodorder_common::db::ORDERS;
use foodorder_common::events::{self, timestamp};
use foodorder_common::money::format_money;
use foodorder_common::outbox::{self, OutboxMessage};
use foodorder_common::status::{OrderState, PaymentState};
use foodorder_proto::EventType;
use foodorder_proto::v1::{MenuItem, Order, OrderItem, OrderPlaced, OrderStatus, PaymentAttempt};
use prost::Message;
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{MenuEntry, NewOrder, PricedLine, order_placed, price_order};
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

/// What [`place_order`] did.
pub struct Placed {
    /// The order.
    pub order: Order,
    /// False when an idempotent retry returned the original order.
    pub created: bool,
}

/// Stores `new_order` (status PROCESSING), its items and an outbox row with
/// `OrderPlaced`, all in one transaction; on an idempotent retry returns the
/// original order instead.
pub async fn place_order(
    pool: &PgPool,
    new_order: &NewOrder,
    context: &PlaceContext,
) -> Result<Placed, ApiError> {
    let fingerprint = new_order.fingerprint();
    if let Some(key) = &new_order.idempotency_key
        && let Some(existing) = find_by_idempotency_key(pool, key, &fingerprint).await?
    {
        return Ok(Placed {
            order: existing,
            created: false,
        });
    }

    let mut tx = pool.begin().await?;
    let ids: Vec<i32> = new_order
        .lines
        .iter()
        .map(|line| line.menu_item_id)
        .collect();
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

    let priced = price_order(new_order, &menu)?;
    let (lines, total) = (&priced.lines, priced.total);

    let order_id = Uuid::now_v7();
    let inserted: Option<(DateTime<Utc>,)> = sqlx::query_as(
        "INSERT INTO orders.orders (id, customer_name, customer_email, status, total_amount, correlation_id, \
         idempotency_key, request_fingerprint) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING created_at",
    )
    .bind(order_id)
    .bind(&new_order.customer_name)
    .bind(&new_order.customer_email)
    .bind(OrderState::Processing)
    .bind(total)
    .bind(&context.correlation_id)
    .bind(&new_order.idempotency_key)
    .bind(new_order.idempotency_key.as_ref().map(|_| fingerprint.clone()))
    .fetch_optional(&mut *tx)
    .await?;
    let Some((created_at,)) = inserted else {
        // A concurrent call with the same key committed first.
        tx.rollback().await?;
        let key = new_order.idempotency_key.as_deref().unwrap_or_default();
        let existing = find_by_idempotency_key(pool, key, &fingerprint)
            .await?
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!(
                    "idempotency key conflict without a stored order"
                ))
            })?;
        return Ok(Placed {
            order: existing,
            created: false,
        });
    };

    let item_ids = insert_items(&mut tx, order_id, lines).await?;
    let items: Vec<OrderItem> = lines
        .iter()
        .zip(item_ids)
        .map(|(line, id)| OrderItem {
            id,
            menu_item_id: line.menu_item_id,
            menu_item_name: line.name.clone(),
            quantity: line.quantity,
            unit_price: format_money(line.unit_price),
            subtotal: format_money(line.subtotal),
        })
        .collect();

    let event = order_placed(
        order_id,
        new_order,
        &priced,
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
    outbox::enqueue(&mut tx, &ORDERS, &message).await?;
    tx.commit().await?;

    let order = Order {
        id: order_id.to_string(),
        customer_name: new_order.customer_name.clone(),
        customer_email: new_order.customer_email.clone(),
        status: OrderState::Processing.to_proto() as i32,
        total_amount: format_money(total),
        created_at: Some(timestamp(created_at)),
        updated_at: Some(timestamp(created_at)),
        items,
        payment_attempts: Vec::new(),
        payment_successful: false,
        correlation_id: context.correlation_id.clone(),
    };
    Ok(Placed {
        order,
        created: true,
    })
}

/// Inserts the lines in one statement; returns their ids in the order of `lines`.
async fn insert_items(
    connection: &mut PgConnection,
    order_id: Uuid,
    lines: &[PricedLine],
) -> Result<Vec<i64>, ApiError> {
    let menu_item_ids: Vec<i32> = lines.iter().map(|line| line.menu_item_id).collect();
    let names: Vec<&str> = lines.iter().map(|line| line.name.as_str()).collect();
    let quantities: Vec<i32> = lines.iter().map(|line| line.quantity).collect();
    let unit_prices: Vec<Decimal> = lines.iter().map(|line| line.unit_price).collect();
    let subtotals: Vec<Decimal> = lines.iter().map(|line| line.subtotal).collect();
    let rows: Vec<(i64, i32)> = sqlx::query_as(
        "INSERT INTO orders.order_items (order_id, menu_item_id, menu_item_name, quantity, unit_price, subtotal) \
         SELECT $1, * FROM UNNEST($2::int4[], $3::text[], $4::int4[], $5::numeric[], $6::numeric[]) \
         RETURNING id, menu_item_id",
    )
    .bind(order_id)
    .bind(&menu_item_ids)
    .bind(&names)
    .bind(&quantities)
    .bind(&unit_prices)
    .bind(&subtotals)
    .fetch_all(connection)
    .await?;
    // Lines are unique per menu item (merged in validation), so the menu item id names the row.
    let by_menu_item: HashMap<i32, i64> = rows
        .into_iter()
        .map(|(id, menu_item_id)| (menu_item_id, id))
        .collect();
    Ok(menu_item_ids
        .iter()
        .map(|menu_item_id| by_menu_item[menu_item_id])
        .collect())
}

/// The order stored under `key`, if its request had the same fingerprint.
async fn find_by_idempotency_key(
    pool: &PgPool,
    key: &str,
    fingerprint: &[u8],
) -> Result<Option<Order>, ApiError> {
    let stored: Option<(Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT id, request_fingerprint FROM orders.orders WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_optional(pool)
    .await?;
    let Some((order_id, stored_fingerprint)) = stored else {
        return Ok(None);
    };
    if stored_fingerprint != fingerprint {
        return Err(ApiError::IdempotencyKeyReused);
    }
    tracing::info!(%order_id, "idempotent retry, returning the original order");
    load_order(pool, order_id)
        .await?
        .map(Some)
        .ok_or(ApiError::OrderNotFound(order_id))
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
