//! Load generator for the foodorder platform. Places orders over gRPC with a
//! bounded number of concurrent calls and reports, from measurements only:
//!
//! * PlaceOrder latency (p50/p95/p99/max) and throughput;
//! * outbox publish delay: from the PlaceOrder response (the commit) to the
//!   moment the `OrderPlaced` record is readable on `order.placed`;
//! * with `--watch`, PlaceOrder → terminal status latency (WatchOrder), i.e.
//!   the whole payment path, and orders completed per second.
//!
//! Usage: `foodorder-loadgen --addr 127.0.0.1:50051 --orders 500 --concurrency 32
//!         [--bootstrap 127.0.0.1:9092 --topic order.placed] [--watch]`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use foodorder_proto::v1::order_service_client::OrderServiceClient;
use foodorder_proto::v1::{OrderItemInput, OrderStatus, PlaceOrderRequest, WatchOrderRequest};
use futures::StreamExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tonic::transport::Channel;

struct Options {
    addr: String,
    orders: usize,
    concurrency: usize,
    bootstrap: Option<String>,
    topic: String,
    partitions: i32,
    watch: bool,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut options = Options {
        addr: "127.0.0.1:50051".into(),
        orders: 200,
        concurrency: 16,
        bootstrap: None,
        topic: "order.placed".into(),
        partitions: 6,
        watch: false,
    };
    let mut arguments = std::env::args().skip(1);
    while let Some(flag) = arguments.next() {
        let mut value = || {
            arguments
                .next()
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--addr" => options.addr = value()?,
            "--orders" => options.orders = value()?.parse()?,
            "--concurrency" => options.concurrency = value()?.parse()?,
            "--bootstrap" => options.bootstrap = Some(value()?),
            "--topic" => options.topic = value()?,
            "--partitions" => options.partitions = value()?.parse()?,
            "--watch" => options.watch = true,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(options)
}

/// Percentile of sorted durations, in milliseconds.
fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name}: n={} p50={:.2}ms p95={:.2}ms p99={:.2}ms max={:.2}ms",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.95),
        percentile(&samples, 0.99),
        percentile(&samples, 1.0),
    );
}

/// Records when each key first becomes readable on the topic.
fn spawn_topic_reader(
    bootstrap: String,
    topic: String,
    partitions: i32,
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("loadgen-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(&topic, partition, Offset::End)?;
    }
    consumer.assign(&assignment)?;
    Ok(std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(20))
                && let Some(key) = message.key()
            {
                let now = Instant::now();
                seen.lock()
                    .unwrap()
                    .entry(String::from_utf8_lossy(key).into_owned())
                    .or_insert(now);
            }
        }
    }))
}

/// Order id, when the response arrived, PlaceOrder latency, and (with --watch) the terminal status and latency.
type Outcome = (String, Instant, Duration, Option<(OrderStatus, Duration)>);

async fn place_one(
    client: &mut OrderServiceClient<Channel>,
    index: usize,
) -> anyhow::Result<(String, Instant, Duration)> {
    let request = PlaceOrderRequest {
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
    };
    let started = Instant::now();
    let response = client.place_order(request).await?;
    let done = Instant::now();
    let order = response
        .into_inner()
        .order
        .context("response without order")?;
    Ok((order.id, done, done - started))
}

async fn watch_until_terminal(
    client: &mut OrderServiceClient<Channel>,
    order_id: &str,
) -> anyhow::Result<OrderStatus> {
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
            .context("watch message without order")?
            .status();
    }
    Ok(last)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = parse_options()?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", options.addr))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", options.addr))?;
    let client = OrderServiceClient::new(channel);

    let seen = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = match &options.bootstrap {
        Some(bootstrap) => {
            let handle = spawn_topic_reader(
                bootstrap.clone(),
                options.topic.clone(),
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

    // Warm-up: connections, prepared statements, producer metadata.
    for index in 0..5 {
        place_one(&mut client.clone(), index).await?;
    }

    let started = Instant::now();
    let results: Vec<anyhow::Result<Outcome>> = futures::stream::iter(0..options.orders)
        .map(|index| {
            let mut client = client.clone();
            let watch = options.watch;
            async move {
                let (order_id, placed_at, latency) = place_one(&mut client, index).await?;
                let terminal = if watch {
                    let status = watch_until_terminal(&mut client, &order_id).await?;
                    Some((status, placed_at.elapsed() + latency))
                } else {
                    None
                };
                Ok((order_id, placed_at, latency, terminal))
            }
        })
        .buffer_unordered(options.concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();

    let mut latencies = Vec::new();
    let mut placed = Vec::new();
    let mut terminal_latencies = Vec::new();
    let mut statuses: HashMap<String, usize> = HashMap::new();
    let mut failures = 0;
    for result in results {
        match result {
            Ok((order_id, placed_at, latency, terminal)) => {
                latencies.push(latency);
                placed.push((order_id, placed_at));
                if let Some((status, duration)) = terminal {
                    *statuses.entry(status.as_str_name().to_owned()).or_default() += 1;
                    terminal_latencies.push(duration);
                }
            }
            Err(error) => {
                failures += 1;
                eprintln!("call failed: {error:#}");
            }
        }
    }
    println!(
        "orders={} concurrency={} failures={failures} wall={:.2}s",
        options.orders,
        options.concurrency,
        elapsed.as_secs_f64()
    );
    println!(
        "place_order throughput: {:.1} orders/s",
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    report("place_order latency", latencies);
    if options.watch {
        println!("terminal statuses: {statuses:?}");
        println!(
            "completed throughput (place → terminal): {:.1} orders/s",
            terminal_latencies.len() as f64 / elapsed.as_secs_f64()
        );
        report("place → terminal latency", terminal_latencies);
    }

    if let Some(reader) = reader {
        let deadline = Instant::now() + Duration::from_secs(60);
        while seen.lock().unwrap().len() < placed.len() + 5 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = reader.join();
        let seen = seen.lock().unwrap();
        let delays: Vec<Duration> = placed
            .iter()
            .filter_map(|(order_id, placed_at)| {
                seen.get(order_id)
                    .map(|readable| readable.saturating_duration_since(*placed_at))
            })
            .collect();
        println!(
            "records seen for {} of {} orders",
            delays.len(),
            placed.len()
        );
        report("publish delay (response → record readable)", delays);
    }
    anyhow::ensure!(failures == 0, "{failures} calls failed");
    Ok(())
}
