//! Group commit for consumer handlers: the database work of many records in
//! one transaction, with multi-row statements, while every record keeps its
//! own outcome.
//!
//! A handler still handles one record (the consumer framework keeps per-key
//! order, commits only below the first unfinished offset and dead-letters a
//! poison record alone); for its database step it calls
//! [`Batcher::submit`] and waits for its own result. A few writer tasks take
//! what is queued and run it through [`BatchWork::run`] in one go:
//!
//! * no waiting when idle: a writer that finds one job runs it at once; only
//!   while another writer is busy (there is load) does it wait up to
//!   `window` for more, and never beyond `max_batch` jobs;
//! * a batch that fails in a way one job can cause (PostgreSQL refused a
//!   row's data, see [`BatchWork::retry_alone`]) rolled back as a whole and is
//!   run again one job at a time, so that one poison record fails alone and
//!   the others go through;
//! * any other failure (the database unreachable, a deadline) is every job's:
//!   each handler gets the error and retries as it would have alone;
//! * a job whose caller gave up (its try timed out, shutdown) before a writer
//!   took it is dropped unrun; one already taken still runs — the work is
//!   idempotent like every handler's;
//! * a batch that does not finish within `timeout` is abandoned (a connection
//!   whose peer vanished answers nothing), and a batch that panics does not
//!   take its writer with it: either way its jobs run again one at a time
//!   (those whose caller still waits), so that a stuck or panicking job fails
//!   alone — retryably when stuck, as poison when it panicked.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::consumer::HandleError;
use crate::metrics::Metrics;

/// Work that can be done for many jobs at once.
pub trait BatchWork: Send + Sync + 'static {
    /// One record's part.
    type Job: Send + Sync + 'static;
    /// One record's result.
    type Output: Send + 'static;
    /// How a batch fails.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Does `jobs` together (normally one transaction) and returns one output
    /// per job, in order. On an error nothing may have been committed.
    fn run(
        &self,
        jobs: &[Self::Job],
    ) -> impl Future<Output = Result<Vec<Self::Output>, Self::Error>> + Send;

    /// Whether a batch that failed with `error` is to be run again one job at
    /// a time (the error can come from one job's data).
    fn retry_alone(error: &Self::Error) -> bool;
}

/// Why a job got no output.
#[derive(Debug, thiserror::Error)]
pub enum BatchError<E: std::error::Error + 'static> {
    /// The batch (or the job alone) failed.
    #[error(transparent)]
    Failed(Arc<E>),
    /// The batch did not finish in time; it was abandoned.
    #[error("the {batch} batch did not finish within {timeout:?}; abandoned")]
    TimedOut {
        /// Which batcher.
        batch: &'static str,
        /// Its timeout.
        timeout: Duration,
    },
    /// The batcher is gone (the service is stopping).
    #[error("the {0} batcher stopped")]
    Stopped(&'static str),
    /// The batch's work returned a wrong number of outputs (a bug).
    #[error("the {0} batch returned a wrong number of outputs")]
    Broken(&'static str),
    /// The batch's work panicked (the job alone, once it ran alone).
    #[error("the {batch} batch panicked: {message}")]
    Panicked {
        /// Which batcher.
        batch: &'static str,
        /// The panic's message.
        message: String,
    },
}

impl<E: std::error::Error + 'static> Clone for BatchError<E> {
    fn clone(&self) -> Self {
        match self {
            Self::Failed(error) => Self::Failed(error.clone()),
            Self::TimedOut { batch, timeout } => Self::TimedOut {
                batch,
                timeout: *timeout,
            },
            Self::Stopped(batch) => Self::Stopped(batch),
            Self::Broken(batch) => Self::Broken(batch),
            Self::Panicked { batch, message } => Self::Panicked {
                batch,
                message: message.clone(),
            },
        }
    }
}

impl From<BatchError<sqlx::Error>> for HandleError {
    /// Data the database refused (the job ran alone by then) is poison; the
    /// rest is retried.
    fn from(error: BatchError<sqlx::Error>) -> Self {
        match error {
            BatchError::Failed(error) if crate::db::is_data_error(&error) => {
                Self::Fatal(format!("the database rejected the message's data: {error}"))
            }
            // It panicked alone: poison, as a panicking handler is.
            BatchError::Panicked { message, .. } => {
                Self::Fatal(format!("the handler panicked: {message}"))
            }
            other => Self::Retryable(anyhow::Error::new(other).context("database error")),
        }
    }
}

/// How a [`Batcher`] batches.
#[derive(Clone, Debug)]
pub struct BatchSettings {
    /// Writer tasks, each running one batch at a time.
    pub writers: usize,
    /// Most jobs in one batch.
    pub max_batch: usize,
    /// Longest a writer waits for more jobs while another writer is busy.
    pub window: Duration,
    /// Longest one batch may take.
    pub timeout: Duration,
}

impl Default for BatchSettings {
    /// Two writers, up to 256 jobs, a 500 µs window, 30 s per batch.
    fn default() -> Self {
        Self {
            writers: 2,
            max_batch: 256,
            window: Duration::from_micros(500),
            timeout: Duration::from_secs(30),
        }
    }
}

struct Queued<W: BatchWork> {
    job: W::Job,
    reply: oneshot::Sender<Result<W::Output, BatchError<W::Error>>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BatchLabel {
    batch: &'static str,
}

/// The batch-size histogram family, one series per batcher.
#[derive(Clone)]
pub struct BatchMetrics {
    sizes: Family<BatchLabel, Histogram>,
}

impl BatchMetrics {
    /// Registers `foodorder_batch_jobs{batch}` in `metrics`.
    pub fn new(metrics: &Metrics) -> Self {
        let sizes = Family::<BatchLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0])
        });
        metrics.register(
            "foodorder_batch_jobs",
            "Records' database steps done together in one transaction, by batcher",
            sizes.clone(),
        );
        Self { sizes }
    }
}

impl Default for BatchMetrics {
    /// Unregistered.
    fn default() -> Self {
        Self::new(&Metrics::new())
    }
}

/// Queues jobs of one kind and runs them in batches (see the module).
pub struct Batcher<W: BatchWork> {
    name: &'static str,
    sender: mpsc::UnboundedSender<Queued<W>>,
}

impl<W: BatchWork> Batcher<W> {
    /// Starts `settings.writers` writers running `work`; `name` labels the
    /// batch-size histogram in `metrics`. Must be called within a Tokio
    /// runtime; the writers end when the batcher is dropped.
    pub fn new(
        name: &'static str,
        work: Arc<W>,
        settings: BatchSettings,
        metrics: &BatchMetrics,
    ) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        let busy = Arc::new(AtomicUsize::new(0));
        let sizes = metrics
            .sizes
            .get_or_create(&BatchLabel { batch: name })
            .clone();
        for _ in 0..settings.writers.max(1) {
            tokio::spawn(writer(
                name,
                work.clone(),
                receiver.clone(),
                busy.clone(),
                settings.clone(),
                sizes.clone(),
            ));
        }
        Self { name, sender }
    }

    /// Queues `job` and waits for its output. The queue is not bounded here:
    /// the consumer framework's `max_in_flight` bounds the jobs outstanding.
    pub async fn submit(&self, job: W::Job) -> Result<W::Output, BatchError<W::Error>> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Queued { job, reply })
            .map_err(|_| BatchError::Stopped(self.name))?;
        answer.await.map_err(|_| BatchError::Stopped(self.name))?
    }
}

async fn writer<W: BatchWork>(
    name: &'static str,
    work: Arc<W>,
    receiver: Arc<Mutex<mpsc::UnboundedReceiver<Queued<W>>>>,
    busy: Arc<AtomicUsize>,
    settings: BatchSettings,
    sizes: Histogram,
) {
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut batch = vec![first];
            let window_ends = tokio::time::Instant::now() + settings.window;
            while batch.len() < settings.max_batch {
                match receiver.try_recv() {
                    Ok(queued) => batch.push(queued),
                    // Nothing queued: wait for more only while another writer
                    // is busy (there is load), within the window.
                    Err(_) if busy.load(Ordering::Acquire) > 0 => {
                        match tokio::time::timeout_at(window_ends, receiver.recv()).await {
                            Ok(Some(queued)) => batch.push(queued),
                            Ok(None) | Err(_) => break,
                        }
                    }
                    Err(_) => break,
                }
            }
            batch
        };
        // Callers that left before their job was taken: nothing to do.
        let batch: Vec<Queued<W>> = batch
            .into_iter()
            .filter(|queued| !queued.reply.is_closed())
            .collect();
        if batch.is_empty() {
            continue;
        }
        let _busy = Busy::enter(&busy);
        sizes.observe(batch.len() as f64);
        run_batch(name, &*work, batch, &settings).await;
    }
}

/// Counts a writer as busy while it lives.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn enter(busy: &'a AtomicUsize) -> Self {
        busy.fetch_add(1, Ordering::AcqRel);
        Self(busy)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn run_batch<W: BatchWork>(
    name: &'static str,
    work: &W,
    batch: Vec<Queued<W>>,
    settings: &BatchSettings,
) {
    let (jobs, replies): (Vec<W::Job>, Vec<_>) = batch
        .into_iter()
        .map(|queued| (queued.job, queued.reply))
        .unzip();
    match run_once(name, work, &jobs, settings.timeout).await {
        Ok(outputs) => {
            for (reply, output) in replies.into_iter().zip(outputs) {
                let _ = reply.send(Ok(output));
            }
        }
        // One job's data, a panic, or one job stuck: the others must not
        // share its fate, so each runs alone (those whose caller is still
        // waiting).
        Err(error) if jobs.len() > 1 && alone_may_help::<W>(&error) => {
            tracing::info!(
                batch = name,
                jobs = jobs.len(),
                %error,
                "a batch failed as a whole; running its jobs one at a time"
            );
            for (job, reply) in jobs.iter().zip(replies) {
                if reply.is_closed() {
                    continue;
                }
                let result = run_once(name, work, std::slice::from_ref(job), settings.timeout)
                    .await
                    .map(|mut outputs| outputs.remove(0));
                let _ = reply.send(result);
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// Whether a failed batch is worth running again one job at a time.
fn alone_may_help<W: BatchWork>(error: &BatchError<W::Error>) -> bool {
    match error {
        BatchError::Failed(error) => W::retry_alone(error),
        BatchError::TimedOut { .. } | BatchError::Panicked { .. } => true,
        BatchError::Stopped(_) | BatchError::Broken(_) => false,
    }
}

async fn run_once<W: BatchWork>(
    name: &'static str,
    work: &W,
    jobs: &[W::Job],
    timeout: Duration,
) -> Result<Vec<W::Output>, BatchError<W::Error>> {
    // A panicking batch must not take its writer with it.
    let attempt = std::panic::AssertUnwindSafe(work.run(jobs)).catch_unwind();
    let outcome = match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(panic)) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(batch = name, jobs = jobs.len(), message, "a batch panicked");
            return Err(BatchError::Panicked {
                batch: name,
                message,
            });
        }
        Err(elapsed) => Err(elapsed),
    };
    match outcome {
        Ok(Ok(outputs)) if outputs.len() == jobs.len() => Ok(outputs),
        Ok(Ok(outputs)) => {
            tracing::error!(
                batch = name,
                jobs = jobs.len(),
                outputs = outputs.len(),
                "a batch returned a wrong number of outputs"
            );
            Err(BatchError::Broken(name))
        }
        Ok(Err(error)) => Err(BatchError::Failed(Arc::new(error))),
        Err(_) => Err(BatchError::TimedOut {
            batch: name,
            timeout,
        }),
    }
}

#[cfg(test)]
mod tests;
