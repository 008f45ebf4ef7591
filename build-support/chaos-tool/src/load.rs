//! The careful client: a steady rate of PlaceOrder calls, each with its own
//! idempotency key, retried with that key while the API is unreachable, so an
//! order is either acknowledged once or reported as failed, never doubled.
//! With several order API instances, order n is first sent to instance
//! n mod count and each retry goes to the next instance, as a client behind a
//! load balancer would see it. Every call is recorded (when it started, how
//! long it took, its outcome, which instance), for the latency of each fault.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use foodorder_contract::v1::order_service_client::OrderServiceClient;
use foodorder_contract::v1::{OrderItemInput, PlaceOrderRequest};
use tonic::Code;

/// Options of the `load` subcommand.
#[derive(clap::Args)]
pub struct LoadArgs {
    /// The order API, host:port (repeat for several instances).
    #[arg(long, required = true)]
    addr: Vec<String>,
    /// Orders per second.
    #[arg(long, default_value_t = 40)]
    rate: u32,
    /// How long to place orders, in seconds.
    #[arg(long)]
    seconds: u64,
    /// Where to write the ids of the acknowledged orders, one per line.
    #[arg(long)]
    acked: std::path::PathBuf,
    /// How long one order may be retried before it counts as failed, in seconds.
    #[arg(long, default_value_t = 120)]
    retry_for: u64,
}

/// The client's own bound on one call: a call that reaches it went unanswered.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Codes a careful client retries with the same key: the API or its database was
/// unreachable, or the API shed the call (retrying with the key is always safe).
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
    )
}

/// What the careful client saw: the acknowledged order ids and a JSON summary
/// (orders placed, acknowledged, outcomes by gRPC code, retried calls).
pub struct LoadReport {
    /// Ids of the orders PlaceOrder acknowledged.
    pub acked: Vec<String>,
    /// `{"acknowledged", "outcomes", "placed", "retried_calls"}`, printed as the PlaceOrder row.
    pub summary: serde_json::Value,
    /// Every PlaceOrder call, in the order they ended.
    pub calls: Vec<Call>,
}

/// One PlaceOrder call (an order's first try or one of its retries).
#[derive(Clone, Debug)]
pub struct Call {
    /// When it started, after the load's start.
    pub started: Duration,
    /// How long it took to be answered.
    pub took: Duration,
    /// `OK` or the gRPC code.
    pub outcome: String,
    /// Index of the instance it went to.
    pub instance: usize,
}

/// The `load` subcommand: places the load, writes the acknowledged ids, prints the summary.
pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let report = place_orders(
        &args.addr,
        args.rate,
        Duration::from_secs(args.seconds),
        Duration::from_secs(args.retry_for),
    )
    .await?;
    write_acked(&args.acked, &report.acked)?;
    println!("{}", report.summary);
    Ok(())
}

/// Writes the acknowledged ids, one per line.
pub fn write_acked(path: &std::path::Path, acked: &[String]) -> anyhow::Result<()> {
    std::fs::write(path, acked.join("\n") + "\n")
        .with_context(|| format!("failed to write {}", path.display()))
}

/// Places `rate` orders per second at `addr` for `duration`; an order whose
/// calls fail with a retryable code is retried with its key for up to `retry_for`.
pub async fn place_orders(
    addrs: &[String],
    rate: u32,
    duration: Duration,
    retry_for: Duration,
) -> anyhow::Result<LoadReport> {
    anyhow::ensure!(rate > 0, "the rate must be at least 1 order/s");
    anyhow::ensure!(!addrs.is_empty(), "no order API address");
    let mut clients = Vec::new();
    for addr in addrs {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(CALL_TIMEOUT)
            .connect_lazy();
        clients.push(OrderServiceClient::new(channel));
    }
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let load_start = Instant::now();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let outcomes: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let retries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    let end = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    let mut index: u64 = 0;
    while Instant::now() < end {
        ticker.tick().await;
        index += 1;
        let (clients, acked, outcomes, retries, calls) = (
            clients.clone(),
            acked.clone(),
            outcomes.clone(),
            retries.clone(),
            calls.clone(),
        );
        tasks.spawn(async move {
            let request = PlaceOrderRequest {
                customer_name: format!("Chaos Customer {index}"),
                customer_email: format!("chaos{index}@example.com"),
                items: vec![
                    OrderItemInput {
                        menu_item_id: (index % 8) as i32 + 1,
                        quantity: (index % 3) as i32 + 1,
                    },
                    OrderItemInput {
                        menu_item_id: 7,
                        quantity: 1,
                    },
                ],
                idempotency_key: uuid::Uuid::new_v4().to_string(),
            };
            let started = Instant::now();
            let mut instance = (index as usize) % clients.len();
            let outcome = loop {
                let call_start = Instant::now();
                let answer = clients[instance].clone().place_order(request.clone()).await;
                calls.lock().unwrap().push(Call {
                    started: call_start - load_start,
                    took: call_start.elapsed(),
                    outcome: match &answer {
                        Ok(_) => "OK".to_owned(),
                        Err(status) => format!("{:?}", status.code()),
                    },
                    instance,
                });
                match answer {
                    Ok(response) => {
                        let order = response.into_inner().order.unwrap_or_default();
                        acked.lock().unwrap().push(order.id);
                        break "OK".to_owned();
                    }
                    Err(status) if retryable(status.code()) && started.elapsed() < retry_for => {
                        retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        instance = (instance + 1) % clients.len();
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(status) => break format!("{:?}", status.code()),
                }
            };
            *outcomes.lock().unwrap().entry(outcome).or_default() += 1;
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let acked = acked.lock().unwrap().clone();
    let calls = calls.lock().unwrap().clone();
    let mut by_instance = vec![0u64; addrs.len()];
    for call in &calls {
        by_instance[call.instance] += 1;
    }
    let summary = serde_json::json!({
        "placed": index,
        "acknowledged": acked.len(),
        "outcomes": *outcomes.lock().unwrap(),
        "retried_calls": retries.load(std::sync::atomic::Ordering::Relaxed),
        "calls_by_instance": by_instance,
    });
    Ok(LoadReport {
        acked,
        summary,
        calls,
    })
}
