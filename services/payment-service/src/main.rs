//! `payment-service` binary: reads the configuration, runs the consumer, and
//! stops cleanly on SIGINT/SIGTERM.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    foodorder_common::service::main(payment_service::Config::from_env).await
}
