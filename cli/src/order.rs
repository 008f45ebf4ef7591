//! `foodorder order get|watch`: an order as the gRPC API shows it.

use std::time::Duration;

use anyhow::Context;
use foodorder_proto::v1::order_service_client::OrderServiceClient;
use foodorder_proto::v1::{GetOrderRequest, Order, OrderStatus, PaymentStatus, WatchOrderRequest};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

#[derive(clap::Args)]
pub struct ApiArgs {
    /// The order API (host:port).
    #[arg(long, env = "FOODORDER_API_ADDR", default_value = "127.0.0.1:50051")]
    addr: String,
    /// Call the API over TLS, trusting the CA certificate(s) in this PEM file
    /// (e.g. target/run/tls/ca.pem from `build-support/run --tls`).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
}

#[derive(clap::Subcommand)]
pub enum OrderCommand {
    /// The order as it is now: status, items, total, payment attempts.
    Get {
        /// The order id (UUID).
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Each change of the order until it is COMPLETED or FAILED.
    Watch {
        /// The order id (UUID).
        id: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub async fn run(command: OrderCommand) -> anyhow::Result<()> {
    match command {
        OrderCommand::Get { id, api } => {
            let mut client = connect(&api).await?;
            let order = client
                .get_order(GetOrderRequest { order_id: id })
                .await
                .map_err(|status| refused("GetOrder", &status))?
                .into_inner()
                .order
                .context("GetOrder answered without an order")?;
            print!("{}", describe(&order));
            Ok(())
        }
        OrderCommand::Watch { id, timeout, api } => {
            let mut client = connect(&api).await?;
            let watch = async {
                let mut stream = client
                    .watch_order(WatchOrderRequest {
                        order_id: id.clone(),
                    })
                    .await
                    .map_err(|status| refused("WatchOrder", &status))?
                    .into_inner();
                while let Some(change) = stream
                    .message()
                    .await
                    .map_err(|status| refused("WatchOrder", &status))?
                {
                    let order = change
                        .order
                        .context("WatchOrder sent a change without an order")?;
                    println!(
                        "{}  {}",
                        chrono::Utc::now().format("%H:%M:%S%.3f"),
                        status_name(order.status)
                    );
                    if terminal(order.status) {
                        print!("{}", describe(&order));
                        return Ok(());
                    }
                }
                anyhow::bail!(
                    "the server ended the watch of {id} before the order was COMPLETED or FAILED"
                )
            };
            tokio::time::timeout(Duration::from_secs(timeout), watch)
                .await
                .with_context(|| {
                    format!("order {id} was not COMPLETED or FAILED within {timeout} s")
                })?
        }
    }
}

async fn connect(api: &ApiArgs) -> anyhow::Result<OrderServiceClient<Channel>> {
    let scheme = if api.ca.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", api.addr))
        .with_context(|| format!("{} is not an address (host:port)", api.addr))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15));
    if let Some(ca) = &api.ca {
        let pem = std::fs::read(ca)
            .with_context(|| format!("cannot read the CA file {}", ca.display()))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
    }
    let channel = endpoint.connect().await.map_err(|error| {
        let cause = std::error::Error::source(&error)
            .map_or_else(|| error.to_string(), ToString::to_string);
        anyhow::anyhow!("cannot reach the order API at {} ({cause})", api.addr)
    })?;
    Ok(OrderServiceClient::new(channel))
}

fn refused(call: &str, status: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{call}: {:?}: {}", status.code(), status.message())
}

fn terminal(status: i32) -> bool {
    matches!(
        OrderStatus::try_from(status),
        Ok(OrderStatus::Completed | OrderStatus::Failed)
    )
}

fn status_name(status: i32) -> &'static str {
    OrderStatus::try_from(status).map_or("UNKNOWN", |status| status.as_str_name())
}

fn timestamp(time: Option<&prost_types::Timestamp>) -> String {
    time.and_then(|time| {
        chrono::DateTime::from_timestamp(time.seconds, u32::try_from(time.nanos).unwrap_or(0))
    })
    .map_or_else(|| "-".to_owned(), |time| time.to_rfc3339())
}

fn describe(order: &Order) -> String {
    let mut out = format!(
        "order        {}\nstatus       {}\ncustomer     {} <{}>\ntotal        {}\ncreated      {}\nupdated      {}\nrequest id   {}\nitems\n",
        order.id,
        status_name(order.status),
        order.customer_name,
        order.customer_email,
        order.total_amount,
        timestamp(order.created_at.as_ref()),
        timestamp(order.updated_at.as_ref()),
        if order.correlation_id.is_empty() {
            "-"
        } else {
            &order.correlation_id
        },
    );
    for item in &order.items {
        out += &format!(
            "  {} x {} (#{}) at {} = {}\n",
            item.quantity, item.menu_item_name, item.menu_item_id, item.unit_price, item.subtotal
        );
    }
    if order.payment_attempts.is_empty() {
        out += "payment      none yet\n";
    }
    for attempt in &order.payment_attempts {
        out += &format!(
            "payment      {} after {} gateway call(s), {} ms{}\n",
            PaymentStatus::try_from(attempt.status)
                .map_or("UNKNOWN", |status| status.as_str_name()),
            attempt.attempt_count,
            attempt.processing_time_ms,
            if attempt.error_message.is_empty() {
                String::new()
            } else {
                format!(": {}", attempt.error_message)
            }
        );
    }
    out
}
