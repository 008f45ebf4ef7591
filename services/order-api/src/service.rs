//! The `foodorder.v1.OrderService` handlers: read the request and its metadata,
//! validate, call the placer or the repository, and turn records into the
//! contract's messages (errors into statuses through `error.rs`). The
//! correlation id and the call's span come from the telemetry layer.
//!
//! Every call has a deadline ([`CallDeadline`]: the caller's or the
//! server's, the sooner). Reads go through a pool of their own, so that
//! readers waiting on a slow or locked table can never take the connections
//! PlaceOrder's writers need.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use foodorder_contract::events::timestamp;
use foodorder_contract::money::format_money;
use foodorder_contract::states::PaymentState;
use foodorder_contract::v1::order_service_server::OrderService;
use foodorder_contract::v1::{
    GetOrderRequest, GetOrderResponse, ListMenuItemsRequest, ListMenuItemsResponse, MenuItem,
    Order, OrderItem, PaymentAttempt, PlaceOrderRequest, PlaceOrderResponse, WatchOrderRequest,
    WatchOrderResponse,
};
use foodorder_runtime::metrics::Metrics;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::backpressure::Backpressure;
use crate::deadline::CallDeadline;
use crate::domain::validate_place_order;
use crate::error::{ApiError, Waiting};
use crate::group_commit::GroupCommit;
use crate::repository::{self, MenuRecord, OrderRecord, PlaceContext, PlaceRequest};
use crate::request_context::CorrelationId;
use crate::watch::OrderWatchHub;

/// Metadata entry that makes PlaceOrder safe to retry (alternative to the request field).
pub const IDEMPOTENCY_KEY_METADATA: &str = "idempotency-key";
/// Safety net for WatchOrder: re-read the order this often even without a notification.
const WATCH_RECHECK_INTERVAL: Duration = Duration::from_secs(15);

/// The OrderService implementation.
#[derive(Clone)]
pub struct OrderServiceImpl {
    /// The readers' own pool (GetOrder, ListMenuItems, WatchOrder).
    read_pool: PgPool,
    placing: GroupCommit,
    watch_hub: OrderWatchHub,
    watch_limits: WatchLimits,
    shutdown: CancellationToken,
    /// The server's deadline of a call (`ORDER_API_REQUEST_TIMEOUT_MS`).
    request_timeout: Duration,
    /// Whether new orders are taken (`ORDER_API_MAX_PENDING_ORDERS`).
    backpressure: Backpressure,
}

/// Bounds on what WatchOrder streams may hold: the streams open at once, and
/// the readers' connections they may use at once, so that watchers always
/// leave GetOrder some (PlaceOrder's writers have a pool of their own).
#[derive(Clone)]
pub struct WatchLimits {
    /// One permit per open stream: a call beyond the cap is RESOURCE_EXHAUSTED.
    streams: Arc<Semaphore>,
    /// One permit per database read a stream makes at a time.
    reads: Arc<Semaphore>,
}

impl WatchLimits {
    /// At most `max_streams` open streams, reading with at most `max_reads` connections at once.
    pub fn new(max_streams: usize, max_reads: usize) -> Self {
        Self {
            streams: Arc::new(Semaphore::new(max_streams)),
            reads: Arc::new(Semaphore::new(max_reads.max(1))),
        }
    }

    /// Registers `foodorder_watch_streams_active` in `metrics`.
    pub fn register(&self, metrics: &Metrics, max_streams: usize) {
        let active = metrics.gauge(
            "foodorder_watch_streams_active",
            "WatchOrder streams open now",
        );
        let streams = Arc::downgrade(&self.streams);
        metrics.on_scrape(move || {
            if let Some(streams) = streams.upgrade() {
                active.set(max_streams.saturating_sub(streams.available_permits()) as i64);
            }
        });
    }
}

impl OrderServiceImpl {
    /// A service reading through `read_pool`, placing orders through
    /// `placing`, each call within `request_timeout` (or the caller's sooner
    /// deadline); watch streams end when `shutdown` is cancelled.
    pub fn new(
        read_pool: PgPool,
        placing: GroupCommit,
        watch_hub: OrderWatchHub,
        watch_limits: WatchLimits,
        shutdown: CancellationToken,
        request_timeout: Duration,
    ) -> Self {
        Self {
            read_pool,
            placing,
            watch_hub,
            watch_limits,
            shutdown,
            request_timeout,
            backpressure: Backpressure::off(),
        }
    }

    /// The same service, refusing new orders while `backpressure` says so.
    pub fn with_backpressure(mut self, backpressure: Backpressure) -> Self {
        self.backpressure = backpressure;
        self
    }

    /// The deadline of `request`.
    fn deadline<T>(&self, request: &Request<T>) -> CallDeadline {
        CallDeadline::of(request, self.request_timeout)
    }
}

/// The error of a read whose deadline passed.
fn read_expired(call: &'static str, deadline: &CallDeadline) -> ApiError {
    ApiError::DeadlineExceeded {
        call,
        budget: deadline.budget(),
        waiting_for: Waiting::Read,
    }
}

fn parse_order_id(text: &str) -> Result<Uuid, ApiError> {
    if text.is_empty() {
        return Err(ApiError::invalid_field("order_id", "order_id is required"));
    }
    Uuid::parse_str(text).map_err(|_| {
        // The caller's text is quoted only when short: an error must never
        // carry unbounded input back (it would overflow the response headers).
        let shown = if text.chars().count() <= MAX_ECHOED_CHARS {
            format!("{text:?}")
        } else {
            format!("of {} characters", text.chars().count())
        };
        ApiError::invalid_field("order_id", format!("order_id {shown} is not a UUID"))
    })
}

/// The longest caller input an error message quotes.
const MAX_ECHOED_CHARS: usize = 64;

#[tonic::async_trait]
impl OrderService for OrderServiceImpl {
    #[tracing::instrument(name = "PlaceOrder", skip_all, fields(order_id))]
    async fn place_order(
        &self,
        request: Request<PlaceOrderRequest>,
    ) -> Result<Response<PlaceOrderResponse>, Status> {
        let deadline = self.deadline(&request);
        let metadata_key = request
            .metadata()
            .get(IDEMPOTENCY_KEY_METADATA)
            .map(|value| value.to_str().map(str::to_owned))
            .transpose()
            .map_err(|_| {
                ApiError::invalid_field("idempotency_key", "idempotency-key metadata must be ASCII")
            })?;
        let context = PlaceContext {
            correlation_id: CorrelationId::of(&request),
            trace_context: foodorder_runtime::telemetry::inject_span(&tracing::Span::current()),
        };
        let new_order = validate_place_order(request.get_ref(), metadata_key.as_deref())
            .map_err(ApiError::InvalidArgument)?;
        // Before anything is written: a few atomics the backlog poller keeps.
        self.backpressure.admit()?;
        let placed = self
            .placing
            .place(
                PlaceRequest {
                    order: new_order,
                    context,
                },
                &deadline,
            )
            .await?;
        let order = order_message(placed.order);
        tracing::Span::current().record("order_id", order.id.as_str());
        tracing::info!(
            total_amount = order.total_amount,
            items = order.items.len(),
            "order placed"
        );
        Ok(Response::new(PlaceOrderResponse { order: Some(order) }))
    }

    #[tracing::instrument(name = "GetOrder", skip_all, fields(order_id))]
    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<GetOrderResponse>, Status> {
        let deadline = self.deadline(&request);
        let order_id = parse_order_id(&request.get_ref().order_id)?;
        tracing::Span::current().record("order_id", tracing::field::display(order_id));
        let order = deadline
            .run(repository::load_order(&self.read_pool, order_id))
            .await
            .map_err(|_| read_expired("GetOrder", &deadline))?
            .map_err(ApiError::from)?
            .ok_or(ApiError::OrderNotFound(order_id))?;
        Ok(Response::new(GetOrderResponse {
            order: Some(order_message(order)),
        }))
    }

    #[tracing::instrument(name = "ListMenuItems", skip_all)]
    async fn list_menu_items(
        &self,
        request: Request<ListMenuItemsRequest>,
    ) -> Result<Response<ListMenuItemsResponse>, Status> {
        let deadline = self.deadline(&request);
        let menu_items = deadline
            .run(repository::list_menu(&self.read_pool))
            .await
            .map_err(|_| read_expired("ListMenuItems", &deadline))?
            .map_err(ApiError::from)?
            .into_iter()
            .map(menu_item_message)
            .collect();
        Ok(Response::new(ListMenuItemsResponse { menu_items }))
    }

    type WatchOrderStream =
        Pin<Box<dyn Stream<Item = Result<WatchOrderResponse, Status>> + Send + 'static>>;

    #[tracing::instrument(name = "WatchOrder", skip_all, fields(order_id))]
    async fn watch_order(
        &self,
        request: Request<WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        let deadline = self.deadline(&request);
        let order_id = parse_order_id(&request.get_ref().order_id)?;
        tracing::Span::current().record("order_id", tracing::field::display(order_id));
        let Ok(stream_permit) = self.watch_limits.streams.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(
                "too many orders are being watched right now; retry later or poll GetOrder",
            ));
        };
        // Subscribe before the first read so that no change can slip in between.
        let subscription = self.watch_hub.subscribe(order_id);
        let order = deadline
            .run(load_for_watch(
                &self.read_pool,
                &self.watch_limits,
                order_id,
            ))
            .await
            .map_err(|_| read_expired("WatchOrder", &deadline))??
            .ok_or(ApiError::OrderNotFound(order_id))?;
        let (sender, receiver) = mpsc::channel(4);
        let stream = stream_order_changes(
            self.read_pool.clone(),
            self.watch_limits.clone(),
            self.request_timeout,
            order,
            subscription,
            sender,
            self.shutdown.clone(),
        );
        tokio::spawn(async move {
            stream.await;
            drop(stream_permit);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// Sends `order`, then each new status, until a terminal status, the client
/// leaving, or shutdown.
async fn stream_order_changes(
    pool: PgPool,
    watch_limits: WatchLimits,
    read_timeout: Duration,
    order: OrderRecord,
    mut subscription: crate::watch::OrderSubscription,
    sender: mpsc::Sender<Result<WatchOrderResponse, Status>>,
    shutdown: CancellationToken,
) {
    let order_id = order.id;
    let mut last_status = order.status;
    if !send_order(&sender, order).await {
        return;
    }
    while !last_status.is_terminal() {
        tokio::select! {
            () = sender.closed() => return,
            () = shutdown.cancelled() => {
                let _ = sender.send(Err(Status::unavailable("server is shutting down, watch again"))).await;
                return;
            }
            () = subscription.changed() => {}
            () = tokio::time::sleep(WATCH_RECHECK_INTERVAL) => {}
        }
        let read =
            tokio::time::timeout(read_timeout, load_for_watch(&pool, &watch_limits, order_id));
        let Ok(read) = read.await else {
            let _ = sender
                .send(Err(Status::unavailable(format!(
                    "the order database did not answer within {read_timeout:?} while this watch re-read the order; watch again"
                ))))
                .await;
            return;
        };
        match read {
            Ok(Some(order)) if order.status != last_status => {
                last_status = order.status;
                if !send_order(&sender, order).await {
                    return;
                }
            }
            Ok(_) => {}
            Err(error) => {
                let status: Status = error.into();
                let _ = sender.send(Err(status)).await;
                return;
            }
        }
    }
}

/// Sends `order` on a watch stream; false when the client has gone.
async fn send_order(
    sender: &mpsc::Sender<Result<WatchOrderResponse, Status>>,
    order: OrderRecord,
) -> bool {
    let message = WatchOrderResponse {
        order: Some(order_message(order)),
    };
    sender.send(Ok(message)).await.is_ok()
}

/// Reads an order for a watch, holding one of the watch read permits.
async fn load_for_watch(
    pool: &PgPool,
    limits: &WatchLimits,
    order_id: Uuid,
) -> Result<Option<OrderRecord>, ApiError> {
    let _permit = limits
        .reads
        .acquire()
        .await
        .map_err(|_| ApiError::DatabaseUnavailable(sqlx::Error::PoolClosed))?;
    Ok(repository::load_order(pool, order_id).await?)
}

/// The contract's `Order` for a stored order.
fn order_message(order: OrderRecord) -> Order {
    Order {
        id: order.id.to_string(),
        customer_name: order.customer_name,
        customer_email: order.customer_email,
        status: order.status.to_proto() as i32,
        total_amount: format_money(order.total_amount),
        created_at: Some(timestamp(order.created_at)),
        updated_at: Some(timestamp(order.updated_at)),
        items: order
            .items
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
        payment_successful: order
            .payments
            .iter()
            .any(|payment| payment.status == PaymentState::Succeeded),
        payment_attempts: order
            .payments
            .into_iter()
            .map(|payment| PaymentAttempt {
                id: payment.id.to_string(),
                status: payment.status.to_proto() as i32,
                attempt_count: payment.attempt_count,
                error_message: payment.error_message.unwrap_or_default(),
                processing_time_ms: payment.processing_time_ms,
                created_at: Some(timestamp(payment.created_at)),
            })
            .collect(),
        correlation_id: order.correlation_id,
    }
}

/// The contract's `MenuItem` for a menu row.
fn menu_item_message(item: MenuRecord) -> MenuItem {
    MenuItem {
        id: item.id,
        name: item.name,
        description: item.description,
        price: format_money(item.price),
        available: item.available,
    }
}
