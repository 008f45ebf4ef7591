//! `payment-service` binary: reads the configuration, runs the consumer, and
//! stops cleanly on SIGINT/SIGTERM.

use anyhow::Context;
use foodorder_common::{shutdown, telemetry};
use payment_service::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = telemetry::init("payment-service");
    let config = Config::from_env().context("failed to read the configuration")?;
    let application = Application::build(config).await.inspect_err(|error| {
        tracing::error!(
            error = format!("{error:#}"),
            "failed to start payment-service"
        );
    })?;
    let result = application
        .run_until_stopped(shutdown::token_on_signal())
        .await;
    telemetry.shutdown().await;
    result
}
