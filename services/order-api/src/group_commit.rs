//! Group commit for PlaceOrder: concurrent calls are committed together.
//!
//! Each call is queued; a few writer tasks take what is queued (up to
//! `max_batch`) and place it with [`repository::place_orders`]: one
//! transaction, multi-row inserts, one commit for the whole batch, while every
//! call keeps its own outcome. A writer that finds the queue empty takes the
//! call at once, so under light load nothing waits. Only while another writer
//! is committing (there is load) does a writer wait up to `window` for more
//! calls to fill its batch.
//!
//! A batch that PostgreSQL refuses as a whole (a statement error: the
//! transaction rolled back, nothing was written) is placed again one call at a
//! time, so that one call's failure is never another's. When the database
//! cannot be reached, every call of the batch gets UNAVAILABLE.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use foodorder_runtime::metrics::Metrics;
use prometheus_client::metrics::histogram::Histogram;
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::error::ApiError;
use crate::repository::{self, PlaceRequest, Placed};

/// How PlaceOrder calls are batched.
#[derive(Clone, Debug)]
pub struct GroupCommitConfig {
    /// Writer tasks, each committing one batch at a time.
    pub writers: usize,
    /// Most calls in one transaction.
    pub max_batch: usize,
    /// Longest a writer waits for more calls while another writer is busy.
    pub window: Duration,
}

struct Job {
    request: PlaceRequest,
    reply: oneshot::Sender<Result<Placed, ApiError>>,
}

/// The queue of PlaceOrder calls and its writers. Cheap to clone; the writers
/// stop when every clone is dropped and the queue is drained.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Job>,
}

/// The writers of a [`GroupCommit`], not yet started.
pub struct Writers {
    shared: Arc<Shared>,
    count: usize,
}

impl Writers {
    /// Starts the writer tasks, placing orders in `pool`. They end once every
    /// [`GroupCommit`] is dropped and the queue is empty.
    pub fn start(self, pool: PgPool) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.count)
            .map(|_| tokio::spawn(writer(pool.clone(), self.shared.clone())))
            .collect()
    }
}

impl GroupCommit {
    /// The queue and its writers (to be started), registering
    /// `foodorder_place_order_batch_size` and `foodorder_place_order_queued`
    /// in `metrics`.
    pub fn new(config: &GroupCommitConfig, metrics: &Metrics) -> (Self, Writers) {
        let count = config.writers.max(1);
        let max_batch = config.max_batch.max(1);
        let (queue, receiver) = mpsc::channel(count * max_batch);
        let batch_sizes = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]);
        metrics.register(
            "foodorder_place_order_batch_size",
            "PlaceOrder calls committed in one transaction",
            batch_sizes.clone(),
        );
        let queued = metrics.gauge(
            "foodorder_place_order_queued",
            "PlaceOrder calls waiting for a writer",
        );
        let weak = queue.downgrade();
        metrics.on_scrape(move || {
            if let Some(queue) = weak.upgrade() {
                queued.set((queue.max_capacity() - queue.capacity()) as i64);
            }
        });
        let shared = Arc::new(Shared {
            receiver: Mutex::new(receiver),
            busy: AtomicUsize::new(0),
            max_batch,
            window: config.window,
            batch_sizes,
        });
        (Self { queue }, Writers { shared, count })
    }

    /// Calls queued and not yet taken by a writer.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Places one order, committed together with whatever calls are queued beside it.
    pub async fn place(&self, request: PlaceRequest) -> Result<Placed, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { request, reply })
            .await
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("the order writers have stopped")))?;
        answer.await.map_err(|_| {
            ApiError::Internal(anyhow::anyhow!("an order writer failed without answering"))
        })?
    }
}

struct Shared {
    receiver: Mutex<mpsc::Receiver<Job>>,
    /// Writers committing a batch right now.
    busy: AtomicUsize,
    max_batch: usize,
    window: Duration,
    batch_sizes: Histogram,
}

impl Shared {
    /// The next batch: waits for one call, then takes what is queued; gathers
    /// more for up to the window only while another writer is committing. None
    /// when the queue is closed and empty. A non-empty batch counts as busy
    /// from here until it is placed ([`Busy`]).
    async fn next_batch(self: &Arc<Self>) -> Option<(Vec<Job>, Busy)> {
        let mut receiver = self.receiver.lock().await;
        let first = receiver.recv().await?;
        let mut batch = vec![first];
        let deadline = std::time::Instant::now() + self.window;
        while batch.len() < self.max_batch {
            if let Ok(job) = receiver.try_recv() {
                batch.push(job);
                continue;
            }
            if self.window.is_zero()
                || self.busy.load(Ordering::Acquire) == 0
                || std::time::Instant::now() >= deadline
            {
                break;
            }
            // Let the calls being handled right now reach the queue (a timer
            // would round the window up to a whole millisecond).
            tokio::task::yield_now().await;
        }
        // A caller that has gone away (cancelled, timed out) is not placed.
        batch.retain(|job| !job.reply.is_closed());
        self.busy.fetch_add(1, Ordering::AcqRel);
        Some((batch, Busy(self.clone())))
    }
}

/// A writer's batch being placed: counted in `busy` until dropped.
struct Busy(Arc<Shared>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn writer(pool: PgPool, shared: Arc<Shared>) {
    while let Some((batch, busy)) = shared.next_batch().await {
        if batch.is_empty() {
            continue;
        }
        shared.batch_sizes.observe(batch.len() as f64);
        // A panic placing one batch fails its calls, not the writer.
        let placing = tokio::spawn(commit(pool.clone(), batch, busy));
        if let Err(error) = placing.await {
            tracing::error!(%error, "placing a batch of orders panicked");
        }
    }
}

/// Places `batch` in one transaction and answers every call.
async fn commit(pool: PgPool, batch: Vec<Job>, busy: Busy) {
    let (requests, replies): (Vec<PlaceRequest>, Vec<_>) = batch
        .into_iter()
        .map(|job| (job.request, job.reply))
        .unzip();
    let mut replies: Vec<Option<_>> = replies.into_iter().map(Some).collect();
    let mut busy = Some(busy);
    let placed = repository::place_orders_answering(&pool, &requests, |index, result| {
        // Committed: the next batch may gather again while these are answered.
        busy.take();
        if let Some(reply) = replies.get_mut(index).and_then(Option::take) {
            let _ = reply.send(result);
        }
    })
    .await;
    drop(busy);
    // An error means nothing was committed and no call answered yet.
    let replies: Vec<_> = replies.into_iter().flatten().collect();
    debug_assert!(placed.is_ok() || replies.len() == requests.len());
    match placed {
        Ok(()) => {
            // Every call was answered.
        }
        Err(error) if requests.len() > 1 && rolled_back(&error) => {
            tracing::warn!(
                error = format!("{:#}", anyhow::Error::new(error)),
                batch = requests.len(),
                "a batch of orders was refused; placing its calls one by one"
            );
            for (reply, request) in replies.into_iter().zip(&requests) {
                if !reply.is_closed() {
                    let _ = reply.send(repository::place_order(&pool, request).await);
                }
            }
        }
        Err(error) => {
            let others = replies.len().saturating_sub(1);
            let mut replies = replies.into_iter();
            for reply in replies.by_ref().take(others) {
                let _ = reply.send(Err(same_failure(&error)));
            }
            if let Some(reply) = replies.next() {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// True when PostgreSQL answered a statement (or the commit) with an error:
/// the transaction rolled back and nothing was written, so the calls can
/// safely be placed again one by one. That includes a deadlock or a
/// serialization failure (reported as unavailable), but not a lost
/// connection or an exhausted pool, whose outcome or cause is not the batch's.
fn rolled_back(error: &ApiError) -> bool {
    let source = match error {
        ApiError::DatabaseUnavailable(source) => Some(source),
        ApiError::Internal(cause) => cause.downcast_ref::<sqlx::Error>(),
        _ => None,
    };
    matches!(source, Some(sqlx::Error::Database(_)))
}

/// The failure of a batch, for every call of it but one (which gets the
/// original): the same status, the cause as text.
fn same_failure(error: &ApiError) -> ApiError {
    match error {
        ApiError::DatabaseUnavailable(source) => ApiError::DatabaseUnavailable(sqlx::Error::Io(
            std::io::Error::other(format!("the batch of this call failed: {source}")),
        )),
        other => {
            let cause: Vec<String> = anyhow::Chain::new(other).map(ToString::to_string).collect();
            ApiError::Internal(anyhow::anyhow!(
                "the batch of this call failed: {}",
                cause.join(": ")
            ))
        }
    }
}
