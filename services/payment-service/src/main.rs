//! `payment-service` binary: reads the configuration (or, with `--migrate-only`, migrates its schema and exits), runs the service until
//! SIGINT/SIGTERM, and stops cleanly.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    foodorder_runtime::host::main(
        payment_service::startup::NAME,
        &payment_service::SCHEMA,
        payment_service::run,
    )
    .await
}
