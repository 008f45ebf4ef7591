//! Load shedding for the order service: at most `ORDER_API_MAX_CONCURRENT_CALLS`
//! OrderService calls are handled at once, across every connection; one more
//! is answered RESOURCE_EXHAUSTED at once instead of waiting in a queue that
//! would only make every caller late. A call holds its place until its
//! response headers are sent (a WatchOrder stream, once open, holds none: the
//! streams have their own cap, `WATCH_MAX_STREAMS`). Health checks and
//! reflection are never shed, so an overloaded server still reports itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use foodorder_runtime::metrics::Metrics;
use tokio::sync::Semaphore;
use tower::{Layer, Service};

/// The path prefix of the calls that are limited.
const LIMITED_PREFIX: &str = "/foodorder.v1.OrderService/";

/// Sheds OrderService calls beyond a fixed number in progress.
#[derive(Clone)]
pub struct CallLimitLayer {
    permits: Arc<Semaphore>,
    max: usize,
}

impl CallLimitLayer {
    /// At most `max` OrderService calls at once; registers
    /// `foodorder_grpc_server_calls_in_progress` in `metrics`.
    pub fn new(max: usize, metrics: &Metrics) -> Self {
        let max = max.max(1);
        let permits = Arc::new(Semaphore::new(max));
        let in_progress = metrics.gauge(
            "foodorder_grpc_server_calls_in_progress",
            "OrderService calls being handled now (ORDER_API_MAX_CONCURRENT_CALLS at most; more are refused with RESOURCE_EXHAUSTED)",
        );
        let weak = Arc::downgrade(&permits);
        metrics.on_scrape(move || {
            if let Some(permits) = weak.upgrade() {
                in_progress.set(max.saturating_sub(permits.available_permits()) as i64);
            }
        });
        Self { permits, max }
    }
}

impl<S> Layer<S> for CallLimitLayer {
    type Service = CallLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallLimit {
            inner,
            permits: self.permits.clone(),
            max: self.max,
        }
    }
}

/// The service wrapper made by [`CallLimitLayer`].
#[derive(Clone)]
pub struct CallLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
    max: usize,
}

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for CallLimit<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResponseBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        if !request.uri().path().starts_with(LIMITED_PREFIX) {
            return Box::pin(self.inner.call(request));
        }
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let call = self.inner.call(request);
                Box::pin(async move {
                    let response = call.await;
                    drop(permit);
                    response
                })
            }
            Err(_) => {
                let refused = tonic::Status::resource_exhausted(format!(
                    "the order API is handling its limit of {} calls at once; retry after a short back-off \
                     (PlaceOrder with the same idempotency key)",
                    self.max
                ))
                .into_http::<ResponseBody>();
                Box::pin(std::future::ready(Ok(refused)))
            }
        }
    }
}
