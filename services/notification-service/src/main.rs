//! `notification-service` binary: reads the configuration, runs the service
//! until SIGINT/SIGTERM, and stops cleanly.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    foodorder_runtime::host::main(
        notification_service::startup::NAME,
        notification_service::run,
    )
    .await
}
