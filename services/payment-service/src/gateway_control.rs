//! Changing the mock gateway while it runs, for drills: its decline and
//! timeout rates ([`GatewayRates`], shared by the mock's draws) and the route
//! that sets them on the payment service's HTTP endpoint:
//!
//! * `GET /mock-gateway`: the current rates, `decline_rate=0.15` and
//!   `timeout_rate=0` on a line each;
//! * `PUT /mock-gateway?timeout_rate=0.9` (and/or `decline_rate=…`, each
//!   within 0..=1): sets them from the next draw on and answers the rates now
//!   in force; a value that is not a number within 0..=1, or an unknown or
//!   missing setting, is refused with 400 and changes nothing. Only a client on
//!   the same host (loopback) may change them, as only it may `/drain`: anyone
//!   else who can reach the port gets 403. Every change is logged as a warning.
//!
//! The bench's breaker drill raises the timeout rate to 0.9 and watches the
//! circuit breaker open, then sets it back to 0 and watches it close.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use foodorder_runtime::http::SameHost;

use crate::config::GatewaySettings;

/// The route's path.
pub const PATH: &str = "/mock-gateway";

/// The mock gateway's decline and timeout rates, read at every draw and
/// changeable at run time; clones share them.
#[derive(Clone, Debug)]
pub struct GatewayRates(Arc<[AtomicU64; 2]>);

const DECLINE: usize = 0;
const TIMEOUT: usize = 1;
const NAMES: [&str; 2] = ["decline_rate", "timeout_rate"];

impl GatewayRates {
    /// The rates configured in `settings` (`PAYMENT_DECLINE_RATE`, `PAYMENT_TIMEOUT_RATE`).
    pub fn new(settings: &GatewaySettings) -> Self {
        Self(Arc::new([
            AtomicU64::new(settings.decline_rate.to_bits()),
            AtomicU64::new(settings.timeout_rate.to_bits()),
        ]))
    }

    fn get(&self, which: usize) -> f64 {
        f64::from_bits(self.0[which].load(Ordering::Relaxed))
    }

    /// The share of answered calls that decline.
    pub fn decline_rate(&self) -> f64 {
        self.get(DECLINE)
    }

    /// The share of calls that never answer.
    pub fn timeout_rate(&self) -> f64 {
        self.get(TIMEOUT)
    }

    /// `decline_rate=…` and `timeout_rate=…`, a line each.
    pub fn describe(&self) -> String {
        NAMES
            .iter()
            .enumerate()
            .map(|(which, name)| format!("{name}={}\n", self.get(which)))
            .collect()
    }

    /// Applies a query such as `timeout_rate=0.9&decline_rate=0.1`: all of it,
    /// or, when any part is wrong, nothing (the error says why).
    pub fn apply(&self, query: &str) -> Result<(), String> {
        let mut changes = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let which = NAMES
                .iter()
                .position(|known| *known == name)
                .ok_or_else(|| format!("unknown setting {name:?} (decline_rate, timeout_rate)"))?;
            let rate = value
                .parse::<f64>()
                .ok()
                .filter(|rate| (0.0..=1.0).contains(rate))
                .ok_or_else(|| format!("{name} must be a number within 0..=1, not {value:?}"))?;
            changes.push((which, rate));
        }
        if changes.is_empty() {
            return Err("nothing to change: give decline_rate=… and/or timeout_rate=…".to_owned());
        }
        for (which, rate) in changes {
            let before = f64::from_bits(self.0[which].swap(rate.to_bits(), Ordering::Relaxed));
            tracing::warn!(
                setting = NAMES[which],
                before,
                after = rate,
                "mock gateway changed at run time"
            );
        }
        Ok(())
    }
}

/// `GET` and `PUT /mock-gateway` over `rates` (see the module docs).
pub fn routes(rates: GatewayRates) -> Router {
    Router::new()
        .route(PATH, get(show).put(change))
        .with_state(rates)
}

async fn show(State(rates): State<GatewayRates>) -> String {
    rates.describe()
}

async fn change(
    _: SameHost,
    State(rates): State<GatewayRates>,
    RawQuery(query): RawQuery,
) -> Response {
    match rates.apply(query.as_deref().unwrap_or_default()) {
        Ok(()) => rates.describe().into_response(),
        Err(why) => (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use axum::http::Request;
    use foodorder_runtime::http::Peer;
    use tower::ServiceExt;

    use super::*;
    use crate::gateway::MockGateway;

    fn gateway(decline_rate: f64, timeout_rate: f64) -> MockGateway {
        crate::gateway::unconnected_for_tests(11, decline_rate, timeout_rate)
    }

    async fn call(router: &Router, method: &str, uri: &str, peer: &str) -> (u16, String) {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(Peer(peer.parse::<SocketAddr>().unwrap())));
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_route_changes_the_next_draw_from_the_same_host_only() {
        let gateway = gateway(0.0, 0.0);
        let router = routes(gateway.rates());
        let local = "127.0.0.1:50000";
        assert_eq!(
            call(&router, "GET", PATH, "10.0.0.9:1").await,
            (200, "decline_rate=0\ntimeout_rate=0\n".to_owned()),
            "anyone may look"
        );
        assert!((0..200).all(|_| !gateway.draw().hang));
        let (status, body) =
            call(&router, "PUT", "/mock-gateway?timeout_rate=1", "10.0.0.9:1").await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(
            call(
                &router,
                "PUT",
                "/mock-gateway?timeout_rate=1",
                "[::ffff:10.0.0.9]:1"
            )
            .await
            .0,
            403
        );
        assert!(!gateway.draw().hang, "a refused change changes nothing");
        assert_eq!(
            call(&router, "PUT", "/mock-gateway?timeout_rate=1", local).await,
            (200, "decline_rate=0\ntimeout_rate=1\n".to_owned())
        );
        assert!(
            (0..200).all(|_| gateway.draw().hang),
            "from the next draw on"
        );
        let (status, body) = call(
            &router,
            "PUT",
            "/mock-gateway?timeout_rate=0.9&decline_rate=1",
            "[::1]:50000",
        )
        .await;
        assert_eq!(
            (status, body.as_str()),
            (200, "decline_rate=1\ntimeout_rate=0.9\n")
        );
        let draws: Vec<_> = (0..2000).map(|_| gateway.draw()).collect();
        let hung = draws.iter().filter(|draw| draw.hang).count() as f64 / 2000.0;
        assert!((0.87..0.93).contains(&hung), "hang share {hung}");
        assert!(draws.iter().all(|draw| draw.decline));
        assert_eq!(
            call(&router, "PUT", "/mock-gateway?timeout_rate=0", local)
                .await
                .0,
            200
        );
        assert!((0..200).all(|_| !gateway.draw().hang));
    }

    #[tokio::test]
    async fn bad_values_are_refused_and_change_nothing() {
        let gateway = gateway(0.15, 0.0);
        let router = routes(gateway.rates());
        let local = "127.0.0.1:50000";
        for query in [
            "",
            "?",
            "?timeout_rate=1.5",
            "?timeout_rate=-0.1",
            "?timeout_rate=NaN",
            "?timeout_rate=",
            "?timeout_rate",
            "?timeout_rate=lots",
            "?decline_rate=0.5&timeout_rate=2",
            "?timeout=0.9",
        ] {
            let (status, body) = call(&router, "PUT", &format!("{PATH}{query}"), local).await;
            assert_eq!(status, 400, "{query}: {body}");
        }
        assert_eq!(
            gateway.rates().describe(),
            "decline_rate=0.15\ntimeout_rate=0\n",
            "nothing changed, not even the valid half of a refused query"
        );
        assert_eq!(call(&router, "POST", PATH, local).await.0, 405);
    }

    #[tokio::test]
    async fn a_zero_timeout_rate_leaves_seeded_draws_as_they_were() {
        // The hang is drawn only above 0: a seed gives the latencies and
        // declines it gave before the setting existed (a latency, then a decline).
        use rand::{Rng, SeedableRng};
        let mut before = rand::rngs::StdRng::seed_from_u64(11);
        let gateway = gateway(0.15, 0.0);
        for _ in 0..500 {
            let expected_latency = Duration::from_secs_f64(before.random_range(1.0..=5.0));
            let expected_decline = before.random_bool(0.15);
            let draw = gateway.draw();
            assert_eq!(
                (draw.latency, draw.decline, draw.hang),
                (expected_latency, expected_decline, false)
            );
        }
    }
}
