//! Server-side deadlines of the order API's calls. PlaceOrder, GetOrder,
//! ListMenuItems (and the opening of a WatchOrder stream) each finish within
//! `ORDER_API_REQUEST_TIMEOUT_MS`, even when the caller sent no deadline:
//! the effective deadline is the earlier of the caller's (`grpc-timeout`,
//! answered a few milliseconds early so that the application's answer beats
//! tonic's own cut) and the server's. A call that runs out of time is answered
//! DEADLINE_EXCEEDED, saying what it was waiting for (see
//! [`crate::error::ApiError::DeadlineExceeded`]) — it never hangs on a
//! database that does not answer.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The metadata entry in which a gRPC caller sends its deadline.
pub const GRPC_TIMEOUT_METADATA: &str = "grpc-timeout";

/// One call's deadline: when it expires and how long the call was given.
#[derive(Clone, Copy, Debug)]
pub struct CallDeadline {
    expires_at: Instant,
    budget: Duration,
}

/// When a call reached the server: put in the request's extensions by the
/// first layer inside tonic's own deadline timer (which starts the moment
/// the request arrives), so that a call's deadline is measured from the same
/// instant however long decoding and queueing took before the handler ran.
#[derive(Clone, Copy, Debug)]
pub struct CallArrival(pub Instant);

impl CallArrival {
    pub fn now() -> Self {
        Self(Instant::now())
    }
}

/// The deadline ran out first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expired;

impl CallDeadline {
    /// A deadline `budget` from now.
    pub fn after(budget: Duration) -> Self {
        Self {
            expires_at: Instant::now() + budget,
            budget,
        }
    }

    /// The deadline of `request`: the server's `server_budget`, or the
    /// caller's `grpc-timeout` when it is sooner. A caller's deadline expires
    /// here [`client_margin`] early: tonic's server cuts a call at the
    /// caller's `grpc-timeout` itself (answering CANCELLED "Timeout
    /// expired"), so the application has to answer first for the caller to
    /// get DEADLINE_EXCEEDED saying what the call was waiting for. The
    /// budget reported stays the caller's.
    /// Both are measured from the call's [`CallArrival`] when the request
    /// carries one, from now otherwise.
    pub fn of<T>(request: &tonic::Request<T>, server_budget: Duration) -> Self {
        let arrived = request
            .extensions()
            .get::<CallArrival>()
            .map_or_else(Instant::now, |arrival| arrival.0);
        let client_budget = request
            .metadata()
            .get(GRPC_TIMEOUT_METADATA)
            .and_then(|value| parse_grpc_timeout(value.to_str().ok()?));
        match client_budget {
            Some(client) if client <= server_budget => Self {
                expires_at: arrived + client.saturating_sub(client_margin(client)),
                budget: client,
            },
            _ => Self {
                expires_at: arrived + server_budget,
                budget: server_budget,
            },
        }
    }

    /// How long the call was given.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Runs `work` until it finishes or the deadline passes (`work` is then dropped).
    pub async fn run<F: Future>(&self, work: F) -> Result<F::Output, Expired> {
        tokio::time::timeout_at(self.expires_at, work)
            .await
            .map_err(|_| Expired)
    }
}

/// How much earlier than the caller's deadline a call is answered: time for
/// the answer to get out before tonic's own timer (started as the request
/// arrived, at its [`CallArrival`]) cuts the call. A tenth of the caller's budget, at most 50 ms.
pub fn client_margin(client_budget: Duration) -> Duration {
    (client_budget / 10).min(Duration::from_millis(50))
}

/// A `grpc-timeout` value (`<digits><unit>`, at most 8 digits, unit H, M, S,
/// m, u or n), as the gRPC over HTTP/2 protocol defines it.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_and_bad_ones_are_ignored() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("999999999S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("+5S"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    #[test]
    fn the_sooner_of_the_callers_and_the_servers_deadline_applies() {
        let server = Duration::from_secs(5);
        let mut request = tonic::Request::new(());
        assert_eq!(CallDeadline::of(&request, server).budget(), server);
        request
            .metadata_mut()
            .insert(GRPC_TIMEOUT_METADATA, "300m".parse().unwrap());
        assert_eq!(
            CallDeadline::of(&request, server).budget(),
            Duration::from_millis(300)
        );
        request
            .metadata_mut()
            .insert(GRPC_TIMEOUT_METADATA, "60S".parse().unwrap());
        assert_eq!(CallDeadline::of(&request, server).budget(), server);
    }

    #[test]
    fn a_callers_deadline_expires_here_a_little_earlier() {
        let mut request = tonic::Request::new(());
        request
            .metadata_mut()
            .insert(GRPC_TIMEOUT_METADATA, "500m".parse().unwrap());
        let before = Instant::now();
        let deadline = CallDeadline::of(&request, Duration::from_secs(5));
        let after = Instant::now();
        assert_eq!(
            deadline.budget(),
            Duration::from_millis(500),
            "reported as given"
        );
        assert!(deadline.expires_at >= before + Duration::from_millis(450));
        assert!(deadline.expires_at <= after + Duration::from_millis(450));
        assert_eq!(
            client_margin(Duration::from_millis(40)),
            Duration::from_millis(4)
        );

        let before = Instant::now();
        let servers = CallDeadline::of(&tonic::Request::new(()), Duration::from_secs(1));
        assert!(
            servers.expires_at >= before + Duration::from_secs(1),
            "no margin on the server's own deadline"
        );
    }

    #[test]
    fn deadlines_count_from_the_calls_arrival_not_from_when_the_handler_reads_them() {
        let arrived = Instant::now() - Duration::from_millis(300);
        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(CallArrival(arrived));
        request
            .metadata_mut()
            .insert(GRPC_TIMEOUT_METADATA, "500m".parse().unwrap());
        let deadline = CallDeadline::of(&request, Duration::from_secs(5));
        assert_eq!(deadline.expires_at, arrived + Duration::from_millis(450));

        let mut request = tonic::Request::new(());
        request.extensions_mut().insert(CallArrival(arrived));
        let servers = CallDeadline::of(&request, Duration::from_secs(1));
        assert_eq!(servers.expires_at, arrived + Duration::from_secs(1));
    }

    #[tokio::test]
    async fn work_past_the_deadline_is_cut() {
        let deadline = CallDeadline::after(Duration::from_millis(20));
        assert_eq!(deadline.run(async { 7 }).await, Ok(7));
        let slow = deadline.run(tokio::time::sleep(Duration::from_secs(60)));
        assert_eq!(slow.await, Err(Expired));
    }
}
