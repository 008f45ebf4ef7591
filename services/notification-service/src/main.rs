//! `notification-service` binary: reads the configuration (or, with `--migrate-only`, migrates its schema and exits), runs the service
//! until SIGINT/SIGTERM, and stops cleanly.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    foodorder_runtime::host::main(
        notification_service::startup::NAME,
        &notification_service::SCHEMA,
        notification_service::run,
    )
    .await
}
