//! The order API's error type and the one table that maps it to gRPC
//! statuses. Errors a caller caused carry a precise code and message (and
//! google.rpc details); internal causes are logged here and never returned.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;

use crate::domain::FieldViolation;

/// Everything that can go wrong while serving a call.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// One or more request fields are invalid.
    #[error("invalid request")]
    InvalidArgument(Vec<FieldViolation>),
    /// No order has this id.
    #[error("order {0} not found")]
    OrderNotFound(Uuid),
    /// Menu items that exist but cannot be ordered now: (id, name).
    #[error("menu items unavailable")]
    MenuItemsUnavailable(Vec<(i32, String)>),
    /// The idempotency key belongs to a different request.
    #[error("idempotency key reused for a different request")]
    IdempotencyKeyReused,
    /// PostgreSQL could not be reached, or ran out of time.
    #[error("database unavailable")]
    DatabaseUnavailable(#[source] sqlx::Error),
    /// The batch this call was committed with failed for a reason that
    /// passes (logged once, with the batch's first call): what the caller is told.
    #[error("the batch of this call failed: {0}")]
    BatchUnavailable(&'static str),
    /// The order database does not answer and calls pile up waiting for it:
    /// the text says so; the caller should back off and retry.
    #[error("database not answering: {0}")]
    DatabaseNotAnswering(String),
    /// The server is stopping and takes no more orders.
    #[error("shutting down")]
    ShuttingDown,
    /// A limit is reached (calls in progress, orders waiting to be written):
    /// the text says which; the caller should back off and retry.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// Too many orders await their payment outcome (`ORDER_API_MAX_PENDING_ORDERS`):
    /// nothing was written; retry after `retry_after`.
    #[error("backpressure: {pending} orders await payment (limit {limit})")]
    Backpressure {
        /// Orders awaiting payment, as last counted.
        pending: u64,
        /// The limit.
        limit: u64,
        /// The advised retry delay.
        retry_after: Duration,
    },
    /// The caller's rate limit (`ORDER_API_RATE_LIMIT_PER_SECOND`) is reached.
    #[error("rate limited")]
    RateLimited {
        /// Calls a second allowed to one client.
        per_second: u32,
        /// Calls one client may make at once after a pause.
        burst: u32,
        /// When the next call would be allowed.
        retry_after: Duration,
    },
    /// The call's deadline passed before it finished.
    #[error("{call} exceeded its deadline of {budget:?}")]
    DeadlineExceeded {
        /// The method.
        call: &'static str,
        /// How long it was given (the caller's deadline or the server's, the sooner).
        budget: Duration,
        /// What it was waiting for.
        waiting_for: Waiting,
    },
    /// A bug or an unexpected failure.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// What a call was waiting for when its deadline passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// PlaceOrder: for a database writer to take the order; nothing was written.
    Writer {
        /// Whether the call has an idempotency key (a retry is then safe).
        idempotent: bool,
    },
    /// PlaceOrder: for the order's transaction; it may have been committed.
    Commit {
        /// Whether the call has an idempotency key (a retry is then safe).
        idempotent: bool,
    },
    /// A read of the order database.
    Read,
}

impl ApiError {
    /// A single invalid field.
    pub fn invalid_field(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

/// The longest violation description an error carries, in characters.
const MAX_DESCRIPTION_CHARS: usize = 200;

/// `text` cut to [`MAX_DESCRIPTION_CHARS`] characters, marked with "…" when cut.
fn bounded(text: &str) -> String {
    if text.chars().count() <= MAX_DESCRIPTION_CHARS {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(MAX_DESCRIPTION_CHARS).collect();
    cut.push('…');
    cut
}

/// The most field violations one INVALID_ARGUMENT reports (the message says how many more there were).
const MAX_REPORTED_VIOLATIONS: usize = 10;

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidArgument(mut violations) => {
                // Bounded: a request with hundreds of bad lines must not produce
                // response headers larger than a client accepts.
                let total = violations.len();
                violations.truncate(MAX_REPORTED_VIOLATIONS);
                // Descriptions are ours, but some quote caller input: keep each bounded.
                for violation in &mut violations {
                    violation.description = bounded(&violation.description);
                }
                let mut summary = violations
                    .iter()
                    .map(|violation| format!("{}: {}", violation.field, violation.description))
                    .collect::<Vec<_>>()
                    .join("; ");
                if total > violations.len() {
                    summary.push_str(&format!(
                        "; and {} more violations",
                        total - violations.len()
                    ));
                }
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|violation| {
                            tonic_types::FieldViolation::new(violation.field, violation.description)
                        })
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("invalid request: {summary}"),
                    details,
                )
            }
            ApiError::OrderNotFound(id) => Status::not_found(format!("order {id} not found")),
            ApiError::MenuItemsUnavailable(items) => {
                let names = items
                    .iter()
                    .map(|(_, name)| name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut details = ErrorDetails::new();
                for (id, name) in &items {
                    details.add_precondition_failure_violation(
                        "MENU_ITEM_UNAVAILABLE",
                        format!("menu_items/{id}"),
                        format!("{name} is not available right now"),
                    );
                }
                Status::with_error_details(
                    Code::FailedPrecondition,
                    format!("menu items not available right now: {names}"),
                    details,
                )
            }
            ApiError::IdempotencyKeyReused => Status::already_exists(
                "idempotency key was already used for a different request; use a new key for a new order",
            ),
            ApiError::DatabaseUnavailable(source) => {
                if foodorder_runtime::db::is_timeout(&source) {
                    tracing::warn!(error = %source, "database busy or slow");
                } else {
                    tracing::error!(error = %source, "database unavailable");
                }
                Status::unavailable(unavailable_message(&source))
            }
            ApiError::BatchUnavailable(message) => Status::unavailable(message),
            ApiError::DatabaseNotAnswering(message) => Status::unavailable(message),
            ApiError::ShuttingDown => Status::unavailable(
                "the order API is shutting down, retry on another instance or later",
            ),
            ApiError::Overloaded(reason) => Status::resource_exhausted(reason),
            ApiError::Backpressure {
                pending,
                limit,
                retry_after,
            } => Status::with_error_details(
                Code::ResourceExhausted,
                format!(
                    "the platform is behind: {pending} orders await payment (limit {limit}); \
                     retry later (in about {:.0} s); nothing was written",
                    retry_after.as_secs_f64().ceil()
                ),
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            ApiError::RateLimited {
                per_second,
                burst,
                retry_after,
            } => Status::with_error_details(
                Code::ResourceExhausted,
                format!(
                    "rate limit reached: {per_second} calls per second for this client \
                     (x-api-key, or the peer address without one), bursts of {burst}; \
                     retry in {} ms",
                    retry_after.as_millis().max(1)
                ),
                ErrorDetails::with_retry_info(Some(retry_after)),
            ),
            ApiError::DeadlineExceeded {
                call,
                budget,
                waiting_for,
            } => {
                tracing::warn!(
                    call,
                    budget_ms = budget.as_millis() as u64,
                    ?waiting_for,
                    "call exceeded its deadline"
                );
                let retry = |idempotent: bool| {
                    if idempotent {
                        "retry with the same idempotency key: it returns the order if it was placed, and never places it twice"
                    } else {
                        "the call has no idempotency key, so a retry may place a second order: send one (idempotency_key or the idempotency-key metadata) to retry safely"
                    }
                };
                let message = match waiting_for {
                    Waiting::Writer { idempotent } => format!(
                        "{call} did not finish within its deadline of {budget:?}: the order was still waiting for a database writer (the order database is slow or unreachable) and nothing was written; {}",
                        retry(idempotent)
                    ),
                    Waiting::Commit { idempotent } => format!(
                        "{call} did not finish within its deadline of {budget:?}: the order database did not confirm the order's transaction in time, so the order may or may not have been placed; {}",
                        retry(idempotent)
                    ),
                    Waiting::Read => format!(
                        "{call} did not finish within its deadline of {budget:?}: the order database did not answer in time; retry later"
                    ),
                };
                Status::deadline_exceeded(message)
            }
            ApiError::Internal(source) => {
                tracing::error!(error = format!("{source:#}"), "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// What a caller is told when the database failed for a reason that passes.
pub fn unavailable_message(source: &sqlx::Error) -> &'static str {
    if matches!(source, sqlx::Error::PoolTimedOut) {
        "the order database did not answer in time (no connection became available), retry later"
    } else if foodorder_runtime::db::is_timeout(source) {
        "the order database is busy (a statement or lock wait ran out of time; \
         maintenance or a migration may hold a table), retry later"
    } else {
        "the order database is unavailable, retry later"
    }
}

impl From<crate::repository::RepositoryError> for ApiError {
    fn from(error: crate::repository::RepositoryError) -> Self {
        use crate::repository::RepositoryError;
        match error {
            RepositoryError::Unavailable(source) => Self::DatabaseUnavailable(source),
            RepositoryError::Failed(source) => Self::Internal(anyhow::Error::new(source)),
            other => Self::Internal(anyhow::Error::new(other)),
        }
    }
}

impl From<crate::domain::PricingError> for ApiError {
    fn from(error: crate::domain::PricingError) -> Self {
        match error {
            crate::domain::PricingError::UnknownItems(violations) => {
                Self::InvalidArgument(violations)
            }
            crate::domain::PricingError::Unavailable(items) => Self::MenuItemsUnavailable(items),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_bad_request_details() {
        let status = Status::from(ApiError::invalid_field("customer_email", "must be valid"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("customer_email: must be valid"));
        let details = status.get_error_details();
        let bad_request = details.bad_request().expect("bad request details");
        assert_eq!(bad_request.field_violations[0].field, "customer_email");
    }

    #[test]
    fn many_violations_are_reported_bounded() {
        let violations = (0..200)
            .map(|index| {
                FieldViolation::new(
                    format!("items[{index}].quantity"),
                    "quantity must be between 1 and 99",
                )
            })
            .collect();
        let status = Status::from(ApiError::InvalidArgument(violations));
        assert!(
            status.message().ends_with("; and 190 more violations"),
            "{}",
            status.message()
        );
        assert_eq!(
            status
                .get_error_details()
                .bad_request()
                .unwrap()
                .field_violations
                .len(),
            10
        );
    }

    #[test]
    fn long_descriptions_are_cut() {
        let status = Status::from(ApiError::invalid_field("order_id", "z".repeat(5_000)));
        assert!(status.message().len() < 300, "{}", status.message().len());
        let details = status.get_error_details();
        let description = &details.bad_request().unwrap().field_violations[0].description;
        assert!(description.ends_with('…') && description.chars().count() == 201);
    }

    #[test]
    fn refusals_carry_retry_info() {
        let status = Status::from(ApiError::Backpressure {
            pending: 21,
            limit: 20,
            retry_after: Duration::from_millis(2500),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(
            status
                .message()
                .starts_with("the platform is behind: 21 orders await payment (limit 20)"),
            "{}",
            status.message()
        );
        let retry = status.get_error_details().retry_info().cloned().unwrap();
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(2500)));
        let status = Status::from(ApiError::RateLimited {
            per_second: 2,
            burst: 2,
            retry_after: Duration::from_millis(400),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        let retry = status.get_error_details().retry_info().cloned().unwrap();
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(400)));
    }

    #[test]
    fn internal_causes_are_not_returned() {
        let status = Status::from(ApiError::Internal(anyhow::anyhow!(
            "secret connection string"
        )));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
        let status = Status::from(ApiError::DatabaseUnavailable(sqlx::Error::PoolTimedOut));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("pool"));
    }
}
