//! 10,000 generated requests over PlaceOrder, GetOrder and WatchOrder: huge,
//! empty and odd Unicode strings, odd metadata, out-of-range numbers,
//! thousands of items, malformed ids and an oversized message. A caller can
//! only ever get OK or one of the statuses that name its own mistake; nothing
//! panics; a rejected request writes nothing; every accepted order's total is
//! the menu's.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::spawn_app;
use foodorder_contract::v1::{
    GetOrderRequest, OrderItemInput, PlaceOrderRequest, WatchOrderRequest,
};
use rust_decimal::Decimal;
use tonic::Code;

const REQUESTS: usize = 10_000;

/// A small, seeded generator (xorshift64*): repeatable runs, no dependency.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    fn pick<'a, T>(&mut self, choices: &'a [T]) -> &'a T {
        &choices[self.below(choices.len())]
    }

    fn text(&mut self) -> String {
        match self.below(14) {
            0 => String::new(),
            1 => "   ".into(),
            2 => "x".repeat(10_000),
            3 => "y".repeat(101),
            4 => "\u{202e}evil\u{200b}\u{feff}".into(),
            5 => "👩‍👩‍👧‍👦".repeat(30),
            6 => "e\u{301}".repeat(200),
            7 => "nul\0byte".into(),
            8 => "\x07\x1b[31mred\x1b[0m".into(),
            9 => "'; DROP TABLE orders; --".into(),
            10 => "\u{fffd}\u{ffff}\u{10ffff}".into(),
            11 => "Ada Lovelace".into(),
            12 => "Zoë Ångström-Łukasiewicz".into(),
            _ => format!("Customer {}", self.next() % 1000),
        }
    }

    fn email(&mut self) -> String {
        match self.below(10) {
            0 => String::new(),
            1 => "no-at-sign".into(),
            2 => "@".into(),
            3 => format!("{}@example.com", "a".repeat(300)),
            4 => "ünïcode@exämple.com".into(),
            5 => "two@@example.com".into(),
            6 => "spaces in@example.com".into(),
            7 => "a@b".into(),
            _ => format!("user{}@example.com", self.next() % 1000),
        }
    }

    fn items(&mut self) -> Vec<OrderItemInput> {
        let count = match self.below(11) {
            0 => 0,
            1 => 101,
            2 => 3_000,
            3 => 100,
            _ => 1 + self.below(4),
        };
        (0..count)
            .map(|_| OrderItemInput {
                menu_item_id: *self.pick(&[0, -1, 9, 1, 2, 3, 4, 5, 6, 7, 8, i32::MAX, i32::MIN]),
                quantity: *self.pick(&[0, -1, 100, 1, 2, 5, 99, i32::MAX, i32::MIN, 3]),
            })
            .collect()
    }

    fn key(&mut self) -> String {
        match self.below(8) {
            0 => "k".repeat(10_000),
            1 => "ключ-🔑".into(),
            2 => " \t ".into(),
            3 => uuid::Uuid::new_v4().to_string(),
            4 => "shared-key".into(),
            _ => String::new(),
        }
    }

    fn order_id(&mut self, known: &[String]) -> String {
        match self.below(9) {
            0 => String::new(),
            1 => "not-a-uuid".into(),
            2 => uuid::Uuid::new_v4().to_string(),
            3 => "z".repeat(5_000),
            4 => "{00000000-0000-0000-0000-000000000000}".into(),
            5 => "💥".into(),
            6 if !known.is_empty() => known[self.below(known.len())].to_uppercase(),
            7 if !known.is_empty() => known[self.below(known.len())].clone(),
            _ => "00000000-0000-0000-0000-00000000000".into(),
        }
    }

    /// Metadata a client may send: request ids and idempotency keys of every shape
    /// that gRPC metadata can carry (visible ASCII).
    fn metadata(&mut self) -> Vec<(&'static str, String)> {
        let mut entries = Vec::new();
        match self.below(6) {
            0 => entries.push(("x-request-id", "r".repeat(300))),
            1 => entries.push(("x-request-id", "has spaces and ~!@#$%^&*()".into())),
            2 => entries.push(("x-request-id", format!("req-{}", self.next()))),
            _ => {}
        }
        if self.below(5) == 0 {
            let value = *self.pick(&["", "meta-key", "x"]);
            entries.push(("idempotency-key", value.to_owned()));
        }
        entries
    }
}

fn with_metadata<T>(message: T, entries: &[(&'static str, String)]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (name, value) in entries {
        if let Ok(value) = value.parse() {
            request.metadata_mut().insert(*name, value);
        }
    }
    request
}

/// Statuses that tell a caller what it did wrong (or that it asked for too much).
fn caller_status(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::ResourceExhausted
            | Code::OutOfRange
    )
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn ten_thousand_generated_requests_get_precise_statuses_and_write_nothing_wrong() {
    let app = spawn_app().await;
    let prices: BTreeMap<i32, Decimal> =
        sqlx::query_as::<_, (i32, Decimal)>("SELECT id, price FROM orders.menu_items")
            .fetch_all(&app.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let mut draws = Draws(0x9E37_79B9_7F4A_7C15);
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut unexpected = Vec::new();
    let mut accepted: BTreeSet<String> = BTreeSet::new();
    let mut known: Vec<String> = Vec::new();
    let mut wrong_totals = Vec::new();
    for index in 0..REQUESTS {
        let mut client = app.client.clone();
        let metadata = draws.metadata();
        let (call, outcome) = match draws.below(10) {
            0..=5 => {
                let request = PlaceOrderRequest {
                    customer_name: if index == 17 {
                        "n".repeat(5 * 1024 * 1024)
                    } else {
                        draws.text()
                    },
                    customer_email: draws.email(),
                    items: draws.items(),
                    idempotency_key: draws.key(),
                };
                let expected: Option<Decimal> = request
                    .items
                    .iter()
                    .map(|item| {
                        Some(*prices.get(&item.menu_item_id)? * Decimal::from(item.quantity))
                    })
                    .sum();
                let outcome = client.place_order(with_metadata(request, &metadata)).await;
                if let Ok(response) = &outcome {
                    let order = response.get_ref().order.clone().unwrap_or_default();
                    if order.total_amount.parse::<Decimal>().ok() != expected {
                        wrong_totals.push((order.id.clone(), order.total_amount.clone(), expected));
                    }
                    accepted.insert(order.id.clone());
                    known.push(order.id);
                }
                ("PlaceOrder", outcome.map(|_| ()))
            }
            6..=7 => {
                let order_id = draws.order_id(&known);
                let outcome = client
                    .get_order(with_metadata(GetOrderRequest { order_id }, &metadata))
                    .await;
                ("GetOrder", outcome.map(|_| ()))
            }
            _ => {
                let order_id = draws.order_id(&known);
                let outcome = match client
                    .watch_order(with_metadata(WatchOrderRequest { order_id }, &metadata))
                    .await
                {
                    Ok(response) => {
                        let mut stream = response.into_inner();
                        stream.message().await.map(|_| ())
                    }
                    Err(status) => Err(status),
                };
                ("WatchOrder", outcome)
            }
        };
        let label = match &outcome {
            Ok(()) => format!("{call} OK"),
            Err(status) => format!("{call} {:?}", status.code()),
        };
        *statuses.entry(label).or_default() += 1;
        if let Err(status) = outcome
            && !caller_status(status.code())
        {
            unexpected.push((
                index,
                call,
                status.code(),
                status.message().chars().take(120).collect::<String>(),
            ));
        }
    }
    eprintln!("{REQUESTS} generated requests: {statuses:?}");
    assert!(
        unexpected.is_empty(),
        "statuses a caller must never get: {unexpected:?}"
    );
    assert!(
        wrong_totals.is_empty(),
        "totals that are not the menu's: {wrong_totals:?}"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM orders.orders")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        stored as usize,
        accepted.len(),
        "one stored order per accepted order, none from a rejected request"
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM orders.outbox")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        events as usize,
        accepted.len(),
        "one event per accepted order"
    );
    assert!(
        statuses.keys().any(|label| label == "PlaceOrder OK"),
        "some generated orders are valid: {statuses:?}"
    );
    app.stop().await;
}
