//! `order-api` binary: reads the configuration (or, with `--migrate-only`, migrates its schema and exits), starts the gRPC server and the
//! outbox relay, and stops them cleanly on SIGINT/SIGTERM.
//!
//! `order-api --health-check [ADDR] [--ca FILE]` asks a running server for its
//! gRPC health (exit 0 when SERVING), for scripts and container health checks;
//! with `--ca`, over TLS, trusting the CA certificate(s) in FILE.

use anyhow::Context;
use foodorder_runtime::shutdown::unless_stopped;
use order_api::startup::NAME;
use order_api::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    if arguments.first().map(String::as_str) == Some("--health-check") {
        let mut address = "127.0.0.1:50051";
        let mut ca = None;
        let mut rest = arguments[1..].iter();
        while let Some(argument) = rest.next() {
            match argument.as_str() {
                "--ca" => {
                    ca = Some(
                        rest.next()
                            .context("--ca needs the CA certificate's PEM file")?
                            .as_str(),
                    );
                }
                other => address = other,
            }
        }
        return health_check(address, ca).await;
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

async fn health_check(address: &str, ca: Option<&str>) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let scheme = if ca.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{address}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(2));
    if let Some(ca) = ca {
        endpoint = endpoint.tls_config(order_api::tls::client_config(std::path::Path::new(ca))?)?;
    }
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
