//! PostgreSQL access for the order API, in its own schema (`orders`). It
//! speaks in rows and repository errors; what a caller sees (protobuf
//! messages, gRPC statuses) is made in `service.rs` and `error.rs`.
//!
//! * [`place`]: placing a batch of orders in one transaction (order, items and
//!   outbox row each), idempotency-key aware;
//! * [`payments`]: recording a payment's outcome from `payment.completed`;
//! * here: the records and reading them back (the menu, an order).

pub mod payments;
pub mod place;

use chrono::{DateTime, Utc};
use foodorder_contract::states::{OrderState, PaymentState};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

pub use payments::{PaymentOutcome, Recorded, record_payment, record_payments};
pub use place::{BatchOutcome, PlaceContext, PlaceRequest, StoredOrder, place_batch, stored_order};

/// What can go wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// PostgreSQL could not be reached, or refused for a reason that passes
    /// (see `foodorder_runtime::db::is_unavailable`).
    #[error("postgresql unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Any other database failure.
    #[error("postgresql failed")]
    Failed(#[source] sqlx::Error),
    /// The stored data contradicts itself.
    #[error("inconsistent data: {0}")]
    Inconsistent(&'static str),
}

impl From<sqlx::Error> for RepositoryError {
    fn from(error: sqlx::Error) -> Self {
        if foodorder_runtime::db::is_unavailable(&error) {
            Self::Unavailable(error)
        } else {
            Self::Failed(error)
        }
    }
}

impl RepositoryError {
    /// True when PostgreSQL answered a statement (or the commit) with an
    /// error: the transaction rolled back and nothing was written. That
    /// includes a deadlock or a serialization failure, but not a lost
    /// connection or an exhausted pool, whose outcome is unknown.
    pub fn rolled_back(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(sqlx::Error::Database(_)) | Self::Failed(sqlx::Error::Database(_))
        )
    }

    /// True when the database ran out of time (a statement or lock timeout,
    /// no pooled connection in time): the same work would wait again.
    pub fn timed_out(&self) -> bool {
        matches!(self, Self::Unavailable(error) if foodorder_runtime::db::is_timeout(error))
    }

    /// True when the connection failed mid-way (or the database did not
    /// answer in time): whether a commit happened is not known.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, Self::Unavailable(sqlx::Error::Io(_)))
    }
}

/// A menu item.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct MenuRecord {
    /// Menu item id.
    pub id: i32,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Price.
    pub price: Decimal,
    /// Whether it can be ordered now.
    pub available: bool,
}

/// An order with its lines and its payment summary.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderRecord {
    /// Order id.
    pub id: Uuid,
    /// Customer name.
    pub customer_name: String,
    /// Customer email.
    pub customer_email: String,
    /// State.
    pub status: OrderState,
    /// Total.
    pub total_amount: Decimal,
    /// Correlation id of the PlaceOrder call.
    pub correlation_id: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
    /// Lines, by menu item id.
    #[sqlx(skip)]
    pub items: Vec<ItemRecord>,
    /// The payment summary (at most one).
    #[sqlx(skip)]
    pub payments: Vec<PaymentRecord>,
}

/// One order line.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct ItemRecord {
    /// Line id.
    pub id: i64,
    /// Menu item id.
    pub menu_item_id: i32,
    /// Menu item name at the time of the order.
    pub menu_item_name: String,
    /// Quantity.
    pub quantity: i32,
    /// Price at the time of the order.
    pub unit_price: Decimal,
    /// `unit_price × quantity`.
    pub subtotal: Decimal,
}

/// A payment's summary, as `payment.completed` reported it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct PaymentRecord {
    /// Payment id.
    pub id: Uuid,
    /// Succeeded or failed.
    pub status: PaymentState,
    /// Gateway calls made.
    pub attempt_count: i32,
    /// Why it failed.
    pub error_message: Option<String>,
    /// Time spent on the payment.
    pub processing_time_ms: i64,
    /// When the payment service recorded it.
    pub created_at: DateTime<Utc>,
}

/// The whole menu, ordered by id.
pub async fn list_menu(pool: &PgPool) -> Result<Vec<MenuRecord>, RepositoryError> {
    Ok(sqlx::query_as(
        "SELECT id, name, description, price, available FROM orders.menu_items ORDER BY id",
    )
    .fetch_all(pool)
    .await?)
}

/// Reads an order with its items and payment summary.
pub async fn load_order(
    pool: &PgPool,
    order_id: Uuid,
) -> Result<Option<OrderRecord>, RepositoryError> {
    // One snapshot for the three reads, so an order is never seen PROCESSING
    // together with the payment that completed it.
    let mut connection = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let Some(mut order): Option<OrderRecord> = sqlx::query_as(
        "SELECT id, customer_name, customer_email, status, total_amount, correlation_id, created_at, updated_at \
         FROM orders.orders WHERE id = $1",
    )
    .bind(order_id)
    .fetch_optional(&mut *connection)
    .await?
    else {
        return Ok(None);
    };
    order.items = sqlx::query_as(
        "SELECT id, menu_item_id, menu_item_name, quantity, unit_price, subtotal \
         FROM orders.order_items WHERE order_id = $1 ORDER BY menu_item_id",
    )
    .bind(order_id)
    .fetch_all(&mut *connection)
    .await?;
    order.payments = sqlx::query_as(
        "SELECT payment_id AS id, status, attempt_count, error_message, processing_time_ms, completed_at AS created_at \
         FROM orders.order_payments WHERE order_id = $1",
    )
    .bind(order_id)
    .fetch_all(&mut *connection)
    .await?;
    connection.commit().await?;
    Ok(Some(order))
}
