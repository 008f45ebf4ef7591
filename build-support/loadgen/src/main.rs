//! Load generator for the foodorder platform: places orders over gRPC and
//! reports, from measurements only, PlaceOrder throughput and latency (HDR
//! histograms), errors by gRPC status code, and optionally the outbox publish
//! delay (response → record readable on `order.placed`) and the time to a
//! terminal status (WatchOrder).
//!
//! Two ways to load:
//! * closed loop (`--concurrency N`, the default): N calls in flight, each
//!   starting when the previous one ends — finds the maximum throughput;
//! * open loop (`--rate R`): calls start on a fixed schedule whatever the
//!   answers, and latency counts from the scheduled start, so a stalled server
//!   is not hidden by a client that waits for it (no coordinated omission).
//!
//! By count (`--orders`) or by time (`--duration`). `--json` prints one JSON
//! line with every figure after the human-readable summary.
//!
//! RESOURCE_EXHAUSTED answers (backpressure, rate limit, the server's
//! concurrency and queue limits) are counted as `rejected`, apart from the
//! `errors`; `place_order` is the latency of accepted calls only, `answered`
//! that of every call that got an answer, whatever its code.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use foodorder_proto::v1::order_service_client::OrderServiceClient;
use foodorder_proto::v1::{OrderItemInput, OrderStatus, PlaceOrderRequest, WatchOrderRequest};
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::json;
use tokio::sync::Semaphore;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

/// Places orders against the order API and measures what happens to them.
#[derive(Parser, Debug, Clone)]
#[command(name = "foodorder-loadgen", version, about, long_about = None)]
struct Options {
    /// The order API's gRPC address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// Call the API over TLS, trusting the CA certificate(s) in this PEM file
    /// (e.g. target/run/tls/ca.pem from `build-support/run --tls`).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Orders to place (ignored with --duration).
    #[arg(long, default_value_t = 1000)]
    orders: u64,
    /// Place orders for this many seconds instead of a count.
    #[arg(long)]
    duration: Option<f64>,
    /// Closed loop: calls in flight at once.
    #[arg(long, default_value_t = 32, conflicts_with = "rate")]
    concurrency: usize,
    /// Open loop: calls started per second, on a fixed schedule.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: most calls outstanding at once (beyond it, calls are counted as dropped).
    #[arg(long, default_value_t = 4096)]
    max_outstanding: usize,
    /// Follow every order with WatchOrder to its terminal status.
    #[arg(long)]
    watch: bool,
    /// Kafka bootstrap servers: measure the outbox publish delay on --topic.
    #[arg(long)]
    bootstrap: Option<String>,
    /// The `order.placed` topic (with its prefix).
    #[arg(long, default_value = "order.placed")]
    topic: String,
    /// Partitions of --topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Warm-up calls before measuring (connections, prepared statements).
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// Channels (HTTP/2 connections) the calls are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Print one JSON line with every figure at the end.
    #[arg(long)]
    json: bool,
    /// No progress bar (it is hidden anyway when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
    /// A label copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
    /// Send this `x-api-key` metadata entry with every call (the order API's
    /// per-client rate limit keys on it).
    #[arg(long)]
    api_key: Option<String>,
}

/// Latencies in microseconds, 1 µs to 10 min, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn record(histogram: &mut Histogram<u64>, duration: Duration) {
    histogram.saturating_record(duration.as_micros().max(1) as u64);
}

fn summary(histogram: &Histogram<u64>) -> serde_json::Value {
    let ms = |value: u64| value as f64 / 1000.0;
    if histogram.is_empty() {
        return json!({"n": 0});
    }
    json!({
        "n": histogram.len(),
        "p50_ms": ms(histogram.value_at_quantile(0.50)),
        "p90_ms": ms(histogram.value_at_quantile(0.90)),
        "p99_ms": ms(histogram.value_at_quantile(0.99)),
        "p999_ms": ms(histogram.value_at_quantile(0.999)),
        "max_ms": ms(histogram.max()),
        "mean_ms": histogram.mean() / 1000.0,
    })
}

fn print_latency(name: &str, histogram: &Histogram<u64>) {
    if histogram.is_empty() {
        println!("{name}: no samples");
        return;
    }
    let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    println!(
        "{name}: n={} p50={:.2}ms p90={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms",
        histogram.len(),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        histogram.max() as f64 / 1000.0
    );
}

/// Records when each key first becomes readable on the topic.
fn spawn_topic_reader(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("loadgen-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .set("log_level", "3");
    // A broker that takes SASL only: the login of KAFKA_SASL_* (the admin's,
    // from target/run/credentials/admin.env, may read every topic).
    if let (Ok(username), Ok(password)) = (
        std::env::var("KAFKA_SASL_USERNAME"),
        std::env::var("KAFKA_SASL_PASSWORD"),
    ) {
        config
            .set("security.protocol", "SASL_PLAINTEXT")
            .set(
                "sasl.mechanisms",
                std::env::var("KAFKA_SASL_MECHANISM").unwrap_or_else(|_| "SCRAM-SHA-512".into()),
            )
            .set("sasl.username", username)
            .set("sasl.password", password);
    }
    let consumer: BaseConsumer = config.create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::End)?;
    }
    consumer.assign(&assignment)?;
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(20))
                && let Some(key) = message.key()
            {
                let now = Instant::now();
                seen.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(String::from_utf8_lossy(key).into_owned())
                    .or_insert(now);
            }
        }
    }))
}

fn request(index: u64) -> PlaceOrderRequest {
    PlaceOrderRequest {
        customer_name: format!("Load Test {index}"),
        customer_email: format!("load{index}@example.com"),
        items: vec![
            OrderItemInput {
                menu_item_id: (index % 8) as i32 + 1,
                quantity: 1,
            },
            OrderItemInput {
                menu_item_id: 7,
                quantity: 2,
            },
        ],
        idempotency_key: String::new(),
    }
}

async fn watch_until_terminal(
    client: &mut OrderServiceClient<Channel>,
    order_id: &str,
) -> Result<OrderStatus, tonic::Status> {
    let mut stream = client
        .watch_order(WatchOrderRequest {
            order_id: order_id.to_owned(),
        })
        .await?
        .into_inner();
    let mut last = OrderStatus::Unspecified;
    while let Some(message) = stream.next().await {
        last = message?
            .order
            .map_or(OrderStatus::Unspecified, |order| order.status());
    }
    Ok(last)
}

/// What one call came to.
enum Outcome {
    Placed {
        order_id: String,
        answered_at: Instant,
        latency: Duration,
        terminal: Option<(Result<OrderStatus, tonic::Code>, Duration)>,
    },
    Failed {
        code: tonic::Code,
        latency: Duration,
    },
    Dropped,
}

/// Places order `index`: latency counts from `intended` (the scheduled start in
/// open loop, the actual start in closed loop).
async fn place(
    mut client: OrderServiceClient<Channel>,
    index: u64,
    intended: Instant,
    watch: bool,
    api_key: Option<AsciiMetadataValue>,
) -> Outcome {
    let mut call = tonic::Request::new(request(index));
    if let Some(key) = api_key {
        call.metadata_mut().insert("x-api-key", key);
    }
    match client.place_order(call).await {
        Ok(response) => {
            let answered_at = Instant::now();
            let order_id = response
                .into_inner()
                .order
                .map(|order| order.id)
                .unwrap_or_default();
            let terminal = if watch {
                let status = watch_until_terminal(&mut client, &order_id)
                    .await
                    .map_err(|status| status.code());
                Some((status, intended.elapsed()))
            } else {
                None
            };
            Outcome::Placed {
                order_id,
                answered_at,
                latency: answered_at - intended,
                terminal,
            }
        }
        Err(status) => Outcome::Failed {
            code: status.code(),
            latency: intended.elapsed(),
        },
    }
}

fn progress_bar(options: &Options) -> ProgressBar {
    let bar = match options.duration {
        Some(seconds) => ProgressBar::new(seconds.ceil() as u64).with_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} s  {msg}",
            )
            .expect("valid template"),
        ),
        None => ProgressBar::new(options.orders).with_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} orders  {per_sec}  {msg}",
            )
            .expect("valid template"),
        ),
    };
    if options.no_progress {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = Options::parse();
    anyhow::ensure!(options.concurrency > 0, "--concurrency must be at least 1");
    anyhow::ensure!(options.connections > 0, "--connections must be at least 1");
    if let Some(rate) = options.rate {
        anyhow::ensure!(rate > 0.0, "--rate must be positive");
    }
    let api_key: Option<AsciiMetadataValue> = options
        .api_key
        .as_deref()
        .map(str::parse)
        .transpose()
        .context("--api-key must be printable ASCII")?;
    let tls = match &options.ca {
        Some(ca) => {
            let pem = std::fs::read(ca)
                .with_context(|| format!("cannot read the CA file {}", ca.display()))?;
            Some(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            )
        }
        None => None,
    };
    let mut clients = Vec::new();
    for _ in 0..options.connections {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint =
            tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", options.addr))?;
        if let Some(tls) = &tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to {}", options.addr))?;
        clients.push(OrderServiceClient::new(channel));
    }
    let client_for = |index: u64| clients[index as usize % clients.len()].clone();

    let seen = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = match &options.bootstrap {
        Some(bootstrap) => {
            let handle = spawn_topic_reader(
                bootstrap,
                &options.topic,
                options.partitions,
                seen.clone(),
                stop.clone(),
            )?;
            // Let the reader reach the end of every partition before placing orders.
            tokio::time::sleep(Duration::from_secs(2)).await;
            Some(handle)
        }
        None => None,
    };

    for index in 0..options.warmup {
        let mut client = client_for(index);
        let mut call = tonic::Request::new(request(u64::MAX - index));
        if let Some(key) = &api_key {
            call.metadata_mut().insert("x-api-key", key.clone());
        }
        match client.place_order(call).await {
            // Refused (a rate limit, backpressure): nothing to warm, but no failure either.
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {}
            other => {
                other.context("warm-up call failed")?;
            }
        }
    }

    let bar = progress_bar(&options);
    let deadline = options.duration.map(Duration::from_secs_f64);
    let started = Instant::now();
    let within = |index: u64| match deadline {
        Some(limit) => started.elapsed() < limit,
        None => index < options.orders,
    };
    let tick = |bar: &ProgressBar, index: u64| match deadline {
        Some(_) => bar.set_position(started.elapsed().as_secs()),
        None => bar.set_position(index),
    };

    let mut outcomes = Vec::new();
    match options.rate {
        None => {
            // Closed loop: `concurrency` workers, each calling back to back.
            let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut workers = tokio::task::JoinSet::new();
            for _ in 0..options.concurrency {
                let (next, bar) = (next.clone(), bar.clone());
                let clients = clients.clone();
                let (watch, orders) = (options.watch, options.orders);
                let api_key = api_key.clone();
                workers.spawn(async move {
                    let mut mine = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let go_on = match deadline {
                            Some(limit) => started.elapsed() < limit,
                            None => index < orders,
                        };
                        if !go_on {
                            return mine;
                        }
                        let client = clients[index as usize % clients.len()].clone();
                        mine.push(
                            place(client, index, Instant::now(), watch, api_key.clone()).await,
                        );
                        match deadline {
                            Some(_) => bar.set_position(started.elapsed().as_secs()),
                            None => bar.inc(1),
                        }
                    }
                });
            }
            while let Some(mine) = workers.join_next().await {
                outcomes.extend(mine.context("worker task")?);
            }
        }
        Some(rate) => {
            // Open loop: call i starts at started + i / rate, whatever came before.
            let outstanding = Arc::new(Semaphore::new(options.max_outstanding));
            let mut calls = tokio::task::JoinSet::new();
            let mut index = 0;
            while within(index) {
                let intended = started + Duration::from_secs_f64(index as f64 / rate);
                tokio::time::sleep_until(intended.into()).await;
                match outstanding.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let client = client_for(index);
                        let (watch, api_key) = (options.watch, api_key.clone());
                        calls.spawn(async move {
                            let outcome = place(client, index, intended, watch, api_key).await;
                            drop(permit);
                            outcome
                        });
                    }
                    Err(_) => outcomes.push(Outcome::Dropped),
                }
                index += 1;
                tick(&bar, index);
                while let Some(done) = calls.try_join_next() {
                    outcomes.push(done.context("call task")?);
                }
            }
            while let Some(done) = calls.join_next().await {
                outcomes.push(done.context("call task")?);
            }
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();

    let mut latency = histogram();
    let mut answered = histogram();
    let mut rejected = 0_u64;
    let mut terminal_latency = histogram();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    let mut placed = Vec::new();
    let mut dropped = 0_u64;
    for outcome in outcomes {
        match outcome {
            Outcome::Placed {
                order_id,
                answered_at,
                latency: took,
                terminal,
            } => {
                record(&mut latency, took);
                record(&mut answered, took);
                placed.push((order_id, answered_at));
                match terminal {
                    Some((Ok(status), took)) => {
                        *statuses.entry(status.as_str_name().to_owned()).or_default() += 1;
                        record(&mut terminal_latency, took);
                    }
                    Some((Err(code), _)) => {
                        *errors.entry(format!("WatchOrder {code:?}")).or_default() += 1;
                    }
                    None => {}
                }
            }
            Outcome::Failed {
                code,
                latency: took,
            } => {
                record(&mut answered, took);
                if code == tonic::Code::ResourceExhausted {
                    rejected += 1;
                } else {
                    *errors.entry(format!("{code:?}")).or_default() += 1;
                }
            }
            Outcome::Dropped => dropped += 1,
        }
    }
    let attempted = placed.len() as u64 + rejected + errors.values().sum::<u64>() + dropped;
    let throughput = placed.len() as f64 / elapsed.as_secs_f64();
    let mode = match options.rate {
        Some(rate) => format!("open loop at {rate}/s"),
        None => format!("closed loop, {} concurrent", options.concurrency),
    };
    println!(
        "{mode}: {} placed of {attempted} in {:.2}s = {throughput:.1} orders/s; rejected {rejected}; errors {errors:?}; dropped {dropped}",
        placed.len(),
        elapsed.as_secs_f64()
    );
    print_latency("PlaceOrder latency", &latency);
    if rejected > 0 || !errors.is_empty() {
        print_latency("answered (accepted or refused) latency", &answered);
    }
    if options.watch {
        println!("terminal statuses: {statuses:?}");
        print_latency("place → terminal latency", &terminal_latency);
    }

    let mut publish = histogram();
    if let Some(reader) = reader {
        let wait_until = Instant::now() + Duration::from_secs(60);
        let all_seen = |seen: &HashMap<String, Instant>| {
            placed
                .iter()
                .all(|(order_id, _)| seen.contains_key(order_id))
        };
        while Instant::now() < wait_until
            && !all_seen(
                &seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            )
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let _ = reader.join();
        let seen = seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (order_id, answered_at) in &placed {
            if let Some(readable) = seen.get(order_id) {
                record(
                    &mut publish,
                    readable.saturating_duration_since(*answered_at),
                );
            }
        }
        println!(
            "records seen for {} of {} orders",
            publish.len(),
            placed.len()
        );
        print_latency("publish delay (response → record readable)", &publish);
    }
    if options.json {
        let line = json!({
            "label": options.label,
            "mode": if options.rate.is_some() { "open" } else { "closed" },
            "concurrency": options.rate.is_none().then_some(options.concurrency),
            "rate": options.rate,
            "placed": placed.len(),
            "attempted": attempted,
            "dropped": dropped,
            "rejected": rejected,
            "errors": errors,
            "seconds": elapsed.as_secs_f64(),
            "throughput_per_s": throughput,
            "place_order": summary(&latency),
            "answered": summary(&answered),
            "publish_delay": summary(&publish),
            "terminal": summary(&terminal_latency),
            "terminal_statuses": statuses,
        });
        println!("{line}");
    }
    Ok(())
}
