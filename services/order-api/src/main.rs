//! `order-api` binary: reads the configuration (or, with `--migrate-only`, migrates its schema and exits), starts the gRPC server and the
//! outbox relay, and stops them cleanly on SIGINT/SIGTERM.
//!
//! `order-api --health-check [ADDR]` asks a running server for its gRPC health
//! (exit 0 when SERVING), for scripts and container health checks.

use anyhow::Context;
use foodorder_runtime::shutdown::unless_stopped;
use order_api::startup::NAME;
use order_api::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    if arguments.first().map(String::as_str) == Some("--health-check") {
        let address = arguments.get(1).map_or("127.0.0.1:50051", String::as_str);
        return health_check(address).await;
    }
    foodorder_runtime::host::main(NAME, &order_api::SCHEMA, |shutdown| async move {
        let config = Config::from_env()?;
        match unless_stopped(&shutdown, Application::build(config)).await? {
            Some(application) => application.run_until_stopped(shutdown).await,
            None => Ok(()),
        }
    })
    .await
}

async fn health_check(address: &str) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(2));
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {address}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "foodorder.v1.OrderService".into(),
        })
        .await
        .context("health check failed")?;
    let status = response.into_inner().status();
    println!("{}", status.as_str_name());
    anyhow::ensure!(status == ServingStatus::Serving, "order-api is not serving");
    Ok(())
}
