//! `payment-service` binary: reads the configuration, runs the service until
//! SIGINT/SIGTERM, and stops cleanly.

use payment_service::startup::NAME;
use payment_service::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    foodorder_runtime::host::main(NAME, |shutdown| async move {
        let application = Application::build(Config::from_env()?).await?;
        application.run_until_stopped(shutdown).await
    })
    .await
}
