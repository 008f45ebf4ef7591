//! `order-api` binary: reads the configuration, starts the gRPC server and the
//! outbox relay, and stops them cleanly on SIGINT/SIGTERM.

use anyhow::Context;
use foodorder_common::{shutdown, telemetry};
use order_api::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = telemetry::init("order-api");
    let config = Config::from_env().context("failed to read the configuration")?;
    let application = Application::build(config).await.inspect_err(|error| {
        tracing::error!(error = format!("{error:#}"), "failed to start order-api");
    })?;
    tracing::info!(address = %application.local_addr(), "order-api listening");
    application
        .run_until_stopped(shutdown::token_on_signal())
        .await
}
