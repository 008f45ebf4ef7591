//! Group commit for PlaceOrder: concurrent calls are committed together.
//!
//! Each call is queued; a few writer tasks take what is queued (up to
//! `max_batch`) and place it with [`repository::place_batch`]: one
//! transaction, multi-row inserts, one commit for the whole batch, while every
//! call keeps its own outcome. A writer that finds the queue empty takes the
//! call at once, so under light load nothing waits. Only while another writer
//! is committing (there is load) does a writer wait up to `window` for more
//! calls to fill its batch.
//!
//! A batch that PostgreSQL refuses as a whole (a statement error: the
//! transaction rolled back, nothing was written) is placed again one call at a
//! time, so that one call's failure is never another's. When the database
//! cannot be reached, or ran out of time (a statement or lock timeout), every
//! call of the batch gets UNAVAILABLE.
//!
//! Limits and deadlines:
//!
//! * the queue holds at most `queue_max` calls; one more is refused at once
//!   rather than left waiting: RESOURCE_EXHAUSTED when the writers keep
//!   committing (too many calls), UNAVAILABLE when the writers have been
//!   waiting for the database for `stalled_after` without any batch coming
//!   back (the queue is then full of calls
//!   waiting for a database that does not answer, many of them withdrawn
//!   already, and more calls would not help);
//! * a call waits for its answer only until its deadline
//!   ([`CallDeadline`]). A call still queued then is withdrawn (a writer will
//!   not place it: nothing is written); a call a writer already took may be
//!   committed after its caller left — such an order stands, is counted in
//!   `foodorder_orders_committed_after_caller_left_total` and logged with its
//!   order id and request id, and a retry with the same idempotency key
//!   returns it;
//! * a writer gives up a batch the database does not finish within
//!   `batch_timeout` (a connection whose peer vanished answers nothing, and
//!   no server-side timeout reaches it), so writers never hang.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use foodorder_runtime::metrics::Metrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use sqlx::PgPool;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::deadline::CallDeadline;
use crate::error::{ApiError, Waiting};
use crate::repository::{self, BatchOutcome, OrderRecord, PlaceRequest, StoredOrder};

/// What a PlaceOrder call got.
#[derive(Debug)]
pub struct Placed {
    /// The order.
    pub order: OrderRecord,
    /// False when an idempotent retry returned the original order.
    pub created: bool,
}

/// How PlaceOrder calls are batched.
#[derive(Clone, Debug)]
pub struct GroupCommitConfig {
    /// Writer tasks, each committing one batch at a time.
    pub writers: usize,
    /// Most calls in one transaction.
    pub max_batch: usize,
    /// Longest a writer waits for more calls while another writer is busy.
    pub window: Duration,
    /// Most calls waiting for a writer; one more is refused (RESOURCE_EXHAUSTED).
    pub queue_max: usize,
    /// Longest a writer waits for the database to finish one batch (the
    /// application sets it to `ORDER_API_REQUEST_TIMEOUT_MS` plus 1 s).
    pub batch_timeout: Duration,
    /// How long the writers may wait for the database without any batch
    /// coming back before a full queue means "the database is not answering"
    /// (UNAVAILABLE) rather than "too many calls" (RESOURCE_EXHAUSTED).
    /// Under load alone batches come back every few milliseconds.
    pub stalled_after: Duration,
}

impl Default for GroupCommitConfig {
    fn default() -> Self {
        Self {
            writers: 4,
            max_batch: 128,
            window: Duration::from_micros(200),
            queue_max: 512,
            batch_timeout: Duration::from_secs(5),
            stalled_after: STALLED_AFTER,
        }
    }
}

/// The default of [`GroupCommitConfig::stalled_after`].
pub const STALLED_AFTER: Duration = Duration::from_secs(1);

/// When a writer last heard back from the database about a batch (committed
/// or refused; a batch that ran out of time, lost its connection or was given
/// up on does not count), or started waiting for it with no other batch in
/// flight (so that a burst after a quiet spell is not taken for a stall).
struct Progress {
    stalled_after: Duration,
    since: std::time::Instant,
    /// Milliseconds from `since`.
    last_answer: AtomicU64,
}

impl Progress {
    fn new(stalled_after: Duration) -> Self {
        Self {
            stalled_after,
            since: std::time::Instant::now(),
            last_answer: AtomicU64::new(0),
        }
    }

    fn mark(&self) {
        self.last_answer
            .store(self.since.elapsed().as_millis() as u64, Ordering::Release);
    }

    /// How long the writers have been waiting for the database without an answer.
    fn silent_for(&self) -> Duration {
        self.since.elapsed().saturating_sub(Duration::from_millis(
            self.last_answer.load(Ordering::Acquire),
        ))
    }

    /// Whether the writers have waited for the database too long (see
    /// [`GroupCommitConfig::stalled_after`]).
    fn stalled(&self) -> bool {
        self.silent_for() >= self.stalled_after
    }
}

/// Where a queued call stands: waiting, taken by a writer, or withdrawn by
/// its caller (whose deadline passed first). Whoever moves it out of
/// `QUEUED` first decides: a withdrawn call is never placed.
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

struct Job {
    request: PlaceRequest,
    reply: oneshot::Sender<Result<Placed, ApiError>>,
    state: Arc<AtomicU8>,
}

/// The queue of PlaceOrder calls and its writers. Cheap to clone; the writers
/// stop when every clone is dropped and the queue is drained.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Job>,
    closing: CancellationToken,
    progress: Arc<Progress>,
}

/// The writers of a [`GroupCommit`], not yet started.
pub struct Writers {
    shared: Arc<Shared>,
    count: usize,
    topic: Arc<str>,
}

impl Writers {
    /// Starts the writer tasks, placing orders in `pool`. They end once every
    /// [`GroupCommit`] is dropped and the queue is empty.
    pub fn start(self, pool: PgPool) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.count)
            .map(|_| {
                tokio::spawn(writer(
                    pool.clone(),
                    self.topic.clone(),
                    self.shared.clone(),
                ))
            })
            .collect()
    }
}

/// What the writers count.
#[derive(Clone)]
struct Counters {
    /// New orders committed.
    placed: Counter,
    /// New orders committed after their caller had gone.
    after_caller_left: Counter,
}

impl GroupCommit {
    /// The queue and its writers (to be started), which publish each order's
    /// `OrderPlaced` to `topic`, registering `foodorder_orders_placed_total`,
    /// `foodorder_orders_committed_after_caller_left_total`,
    /// `foodorder_place_order_batch_size` and `foodorder_place_order_queued` in
    /// `metrics`.
    pub fn new(config: &GroupCommitConfig, topic: &str, metrics: &Metrics) -> (Self, Writers) {
        let count = config.writers.max(1);
        let max_batch = config.max_batch.max(1);
        let (queue, receiver) = mpsc::channel(config.queue_max.max(1));
        let counters = Counters {
            placed: metrics.counter(
                "foodorder_orders_placed",
                "Orders placed (idempotent retries that return an existing order are not counted)",
            ),
            after_caller_left: metrics.counter(
                "foodorder_orders_committed_after_caller_left",
                "Orders committed after their PlaceOrder caller had gone (deadline passed or call cancelled); they stand, and a retry with the same idempotency key returns them",
            ),
        };
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
        let closing = CancellationToken::new();
        let progress = Arc::new(Progress::new(config.stalled_after));
        let shared = Arc::new(Shared {
            progress: progress.clone(),
            receiver: Mutex::new(receiver),
            closing: closing.clone(),
            busy: AtomicUsize::new(0),
            max_batch,
            window: config.window,
            batch_timeout: config.batch_timeout,
            batch_sizes,
            counters,
        });
        let topic = Arc::from(topic);
        (
            Self {
                queue,
                closing,
                progress,
            },
            Writers {
                shared,
                count,
                topic,
            },
        )
    }

    /// Takes no more calls (they get UNAVAILABLE); the writers place what is
    /// queued, then end. The last step of a shutdown's drain.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Calls queued and not yet taken by a writer.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Places one order, committed together with whatever calls are queued
    /// beside it, waiting for the answer until `deadline`. A full queue is
    /// refused at once: UNAVAILABLE while the database does not answer,
    /// RESOURCE_EXHAUSTED otherwise.
    pub async fn place(
        &self,
        request: PlaceRequest,
        deadline: &CallDeadline,
    ) -> Result<Placed, ApiError> {
        if self.closing.is_cancelled() {
            return Err(ApiError::ShuttingDown);
        }
        let idempotent = request.order.idempotency_key.is_some();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let (reply, answer) = oneshot::channel();
        let job = Job {
            request,
            reply,
            state: state.clone(),
        };
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) if self.progress.stalled() => {
                return Err(ApiError::DatabaseNotAnswering(format!(
                    "the order database is not answering: no batch of orders came back from it for {:?} \
                     and {} orders are waiting for it; retry after a back-off (with the same idempotency key)",
                    self.progress.silent_for(),
                    self.queue.max_capacity()
                )));
            }
            Err(TrySendError::Full(_)) => {
                return Err(ApiError::Overloaded(format!(
                    "{} orders are already waiting to be written, the most this server queues; \
                     retry after a short back-off (with the same idempotency key)",
                    self.queue.max_capacity()
                )));
            }
            Err(TrySendError::Closed(_)) => return Err(ApiError::ShuttingDown),
        }
        match deadline.run(answer).await {
            Ok(answer) => answer.map_err(|_| {
                ApiError::Internal(anyhow::anyhow!("an order writer failed without answering"))
            })?,
            Err(_) => {
                // Withdrawn while still queued: no writer will place it.
                let withdrawn = state
                    .compare_exchange(QUEUED, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                Err(ApiError::DeadlineExceeded {
                    call: "PlaceOrder",
                    budget: deadline.budget(),
                    waiting_for: if withdrawn {
                        Waiting::Writer { idempotent }
                    } else {
                        Waiting::Commit { idempotent }
                    },
                })
            }
        }
    }
}

struct Shared {
    receiver: Mutex<mpsc::Receiver<Job>>,
    /// When the database last answered a batch.
    progress: Arc<Progress>,
    /// Once cancelled, the queue takes no more calls and the writers end when it is empty.
    closing: CancellationToken,
    /// Writers committing a batch right now.
    busy: AtomicUsize,
    max_batch: usize,
    window: Duration,
    batch_timeout: Duration,
    batch_sizes: Histogram,
    counters: Counters,
}

impl Shared {
    /// The next batch: waits for one call, then takes what is queued; gathers
    /// more for up to the window only while another writer is committing. None
    /// when the queue is closed and empty. A non-empty batch counts as busy
    /// from here until it is placed ([`Busy`]).
    async fn next_batch(self: &Arc<Self>) -> Option<(Vec<Job>, Busy)> {
        let mut receiver = self.receiver.lock().await;
        let first = tokio::select! {
            biased;
            job = receiver.recv() => job?,
            () = self.closing.cancelled() => {
                // What is queued is still placed; nothing more comes in.
                receiver.close();
                receiver.recv().await?
            }
        };
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
        // A caller that has gone away (cancelled, timed out) is not placed;
        // the others are taken, so that their callers can tell.
        batch.retain(|job| {
            !job.reply.is_closed()
                && job
                    .state
                    .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
        });
        if self.busy.fetch_add(1, Ordering::AcqRel) == 0 && !batch.is_empty() {
            // The writers start waiting for the database now, not when it last answered.
            self.progress.mark();
        }
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

async fn writer(pool: PgPool, topic: Arc<str>, shared: Arc<Shared>) {
    while let Some((batch, busy)) = shared.next_batch().await {
        if batch.is_empty() {
            continue;
        }
        shared.batch_sizes.observe(batch.len() as f64);
        // A panic placing one batch fails its calls, not the writer.
        let placing = tokio::spawn(commit(
            pool.clone(),
            topic.clone(),
            batch,
            busy,
            shared.batch_timeout,
            shared.counters.clone(),
            shared.progress.clone(),
        ));
        if let Err(error) = placing.await {
            tracing::error!(%error, "placing a batch of orders panicked");
        }
    }
}

/// `work` on the database, given up after `bound`: the database did not
/// answer (a connection whose peer vanished silently answers nothing).
async fn bounded<T>(
    bound: Duration,
    work: impl std::future::Future<Output = Result<T, repository::RepositoryError>>,
) -> Result<T, repository::RepositoryError> {
    tokio::time::timeout(bound, work).await.unwrap_or_else(|_| {
        Err(repository::RepositoryError::Unavailable(sqlx::Error::Io(
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the order database did not answer within {bound:?}"),
            ),
        )))
    })
}

/// Answers one call. A new order whose caller has gone is counted and logged:
/// it stands (a retry with the same idempotency key returns it).
fn answer(
    reply: oneshot::Sender<Result<Placed, ApiError>>,
    request: &PlaceRequest,
    result: Result<Placed, ApiError>,
    counters: &Counters,
) {
    if matches!(&result, Ok(placed) if placed.created) {
        counters.placed.inc();
    }
    if let Err(Ok(placed)) = reply.send(result)
        && placed.created
    {
        counters.after_caller_left.inc();
        tracing::warn!(
            order_id = %placed.order.id,
            request_id = request.context.correlation_id,
            idempotency_key = request.order.idempotency_key.as_deref(),
            "an order was committed after its caller left (deadline passed or call cancelled); \
             it stands, and a retry with the same idempotency key returns it"
        );
    }
}

/// Places `batch` in one transaction and answers every call: the calls placed
/// or refused right after the commit, then the repeated ones, which need the
/// stored order read. A batch PostgreSQL refused (rolled back, nothing
/// written) is placed again call by call, so that one call's failure is never
/// another's — unless it ran out of time (a lock or statement timeout), which
/// every call would again; any other failure is every call's. Each step is
/// bounded by `bound`.
async fn commit(
    pool: PgPool,
    topic: Arc<str>,
    batch: Vec<Job>,
    busy: Busy,
    bound: Duration,
    counters: Counters,
    progress: Arc<Progress>,
) {
    let (requests, replies): (Vec<PlaceRequest>, Vec<_>) = batch
        .into_iter()
        .map(|job| (job.request, job.reply))
        .unzip();
    let placed = bounded(bound, async {
        let placed = repository::place_batch(&pool, &topic, &requests).await;
        // Ran out of time or lost its connection: the database did not answer.
        if placed
            .as_ref()
            .err()
            .is_none_or(|error| !error.timed_out() && !error.outcome_unknown())
        {
            progress.mark();
        }
        placed
    })
    .await;
    // Committed or failed: the next batch may gather again while these are answered.
    drop(busy);
    match placed {
        Ok(outcomes) => {
            let mut repeated = Vec::new();
            for ((outcome, reply), request) in outcomes.into_iter().zip(replies).zip(&requests) {
                match outcome {
                    BatchOutcome::Repeated => repeated.push((reply, request)),
                    outcome => answer(reply, request, answer_known(outcome), &counters),
                }
            }
            for (reply, request) in repeated {
                if !reply.is_closed() {
                    let result = bounded_answer(bound, answer_repeated(&pool, request)).await;
                    answer(reply, request, result, &counters);
                }
            }
        }
        Err(error) if requests.len() > 1 && error.rolled_back() && !error.timed_out() => {
            tracing::warn!(
                error = format!("{:#}", anyhow::Error::new(error)),
                batch = requests.len(),
                "a batch of orders was refused; placing its calls one by one"
            );
            for (reply, request) in replies.into_iter().zip(&requests) {
                if !reply.is_closed() {
                    let result = bounded_answer(bound, place_one(&pool, &topic, request)).await;
                    answer(reply, request, result, &counters);
                }
            }
        }
        Err(error) => {
            if error.outcome_unknown() {
                let cause: Vec<String> = anyhow::Chain::new(&error)
                    .map(ToString::to_string)
                    .collect();
                tracing::error!(
                    error = cause.join(": "),
                    batch = requests.len(),
                    "a batch of orders did not finish: whether it was committed is unknown; \
                     its callers get UNAVAILABLE, and a retry with the same idempotency key finds an order that was"
                );
                // One line per call, so that an order committed anyway can be
                // traced back to its caller.
                for request in &requests {
                    tracing::warn!(
                        request_id = request.context.correlation_id,
                        idempotency_key = request.order.idempotency_key.as_deref(),
                        "the outcome of this order is unknown (its batch did not finish); \
                         it may have been committed"
                    );
                }
            }
            let error = ApiError::from(error);
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

/// An answer computed on the database, given up after `bound`.
async fn bounded_answer(
    bound: Duration,
    work: impl std::future::Future<Output = Result<Placed, ApiError>>,
) -> Result<Placed, ApiError> {
    tokio::time::timeout(bound, work).await.unwrap_or_else(|_| {
        Err(ApiError::DatabaseUnavailable(sqlx::Error::Io(
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the order database did not answer within {bound:?}"),
            ),
        )))
    })
}

/// Places one call alone (a batch of one) and answers it.
pub async fn place_one(
    pool: &PgPool,
    topic: &str,
    request: &PlaceRequest,
) -> Result<Placed, ApiError> {
    let outcome = repository::place_batch(pool, topic, std::slice::from_ref(request))
        .await?
        .pop()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a batch of one had no outcome")))?;
    match outcome {
        BatchOutcome::Repeated => answer_repeated(pool, request).await,
        outcome => answer_known(outcome),
    }
}

/// The answer to a call placed or refused by its batch.
fn answer_known(outcome: BatchOutcome) -> Result<Placed, ApiError> {
    match outcome {
        BatchOutcome::Placed(order) => Ok(Placed {
            order,
            created: true,
        }),
        BatchOutcome::Refused(error) => Err(error.into()),
        BatchOutcome::Repeated => Err(ApiError::Internal(anyhow::anyhow!(
            "a repeated call has no answer of its own"
        ))),
    }
}

/// The answer to a call whose idempotency key is stored: the original order,
/// or IdempotencyKeyReused for a different request.
pub async fn answer_repeated(pool: &PgPool, request: &PlaceRequest) -> Result<Placed, ApiError> {
    match repository::stored_order(pool, &request.order).await? {
        StoredOrder::Same(order) => Ok(Placed {
            order,
            created: false,
        }),
        StoredOrder::KeyReused => Err(ApiError::IdempotencyKeyReused),
    }
}

/// The failure of a batch, for every call of it but one (which gets the
/// original): the same status, the cause as text.
fn same_failure(error: &ApiError) -> ApiError {
    match error {
        ApiError::DatabaseUnavailable(source) => {
            ApiError::BatchUnavailable(crate::error::unavailable_message(source))
        }
        other => {
            let cause: Vec<String> = anyhow::Chain::new(other).map(ToString::to_string).collect();
            ApiError::Internal(anyhow::anyhow!(
                "the batch of this call failed: {}",
                cause.join(": ")
            ))
        }
    }
}
