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

use foodorder_common::metrics::Metrics;
use prometheus_client::metrics::histogram::Histogram;
use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::Instant;

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
    /// Starts the writer tasks, placing orders in `pool`.
    pub fn start(self, pool: PgPool) {
        for _ in 0..self.count {
            tokio::spawn(writer(pool.clone(), self.shared.clone()));
        }
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
    /// The next batch: waits for one call, then takes what is queued; waits up
    /// to the window for more only while another writer is committing. None
    /// when the queue is closed and empty.
    async fn next_batch(&self) -> Option<Vec<Job>> {
        let mut receiver = self.receiver.lock().await;
        let first = receiver.recv().await?;
        let mut batch = vec![first];
        let deadline = Instant::now() + self.window;
        while batch.len() < self.max_batch {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) if self.busy.load(Ordering::Acquire) == 0 || self.window.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(Some(job)) => batch.push(job),
                    Ok(None) | Err(_) => break,
                },
            }
        }
        // A caller that has gone away (cancelled, timed out) is not placed.
        batch.retain(|job| !job.reply.is_closed());
        Some(batch)
    }
}

async fn writer(pool: PgPool, shared: Arc<Shared>) {
    while let Some(batch) = shared.next_batch().await {
        if batch.is_empty() {
            continue;
        }
        shared.busy.fetch_add(1, Ordering::AcqRel);
        shared.batch_sizes.observe(batch.len() as f64);
        // A panic placing one batch fails its calls, not the writer.
        let placing = tokio::spawn(commit(pool.clone(), batch));
        if let Err(error) = placing.await {
            tracing::error!(%error, "placing a batch of orders panicked");
        }
        shared.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Places `batch` in one transaction and answers every call.
async fn commit(pool: PgPool, batch: Vec<Job>) {
    let (requests, replies): (Vec<PlaceRequest>, Vec<_>) = batch
        .into_iter()
        .map(|job| (job.request, job.reply))
        .unzip();
    match repository::place_orders(&pool, &requests).await {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Err(error) if requests.len() > 1 && refused_statement(&error) => {
            tracing::warn!(
                %error,
                batch = requests.len(),
                "a batch of orders was refused; placing its calls one by one"
            );
            for (reply, request) in replies.into_iter().zip(&requests) {
                let _ = reply.send(repository::place_order(&pool, request).await);
            }
        }
        Err(error) => {
            let mut replies = replies.into_iter();
            for reply in replies.by_ref().take(requests.len() - 1) {
                let _ = reply.send(Err(same_failure(&error)));
            }
            if let Some(reply) = replies.next() {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// True when PostgreSQL refused a statement, so the transaction rolled back
/// and nothing was written: the calls can safely be placed again one by one.
fn refused_statement(error: &ApiError) -> bool {
    matches!(error, ApiError::Internal(cause)
        if cause.downcast_ref::<sqlx::Error>().is_some_and(|error| matches!(error, sqlx::Error::Database(_))))
}

/// The failure of a batch, for every call of it but one (which gets the
/// original): the same status, the cause as text.
fn same_failure(error: &ApiError) -> ApiError {
    match error {
        ApiError::DatabaseUnavailable(source) => ApiError::DatabaseUnavailable(sqlx::Error::Io(
            std::io::Error::other(format!("the batch of this call failed: {source}")),
        )),
        other => {
            let mut cause = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(error) = source {
                cause = format!("{cause}: {error}");
                source = error.source();
            }
            ApiError::Internal(anyhow::anyhow!("the batch of this call failed: {cause}"))
        }
    }
}
