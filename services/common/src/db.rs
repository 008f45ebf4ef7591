//! The PostgreSQL pool and the embedded migrations (the workspace's
//! `migrations/` folder), shared by every service.

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::config::DatabaseConfig;

/// The workspace's migrations, compiled into every service.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Creates the database if it does not exist, opens a pool and runs the migrations.
pub async fn connect_and_migrate(config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let url = config.url.expose();
    if !sqlx::Postgres::database_exists(url)
        .await
        .context("failed to reach postgresql at DATABASE_URL")?
    {
        tracing::info!("database does not exist, creating it");
        if let Err(error) = sqlx::Postgres::create_database(url).await {
            // Another service may have created it at the same moment.
            if !sqlx::Postgres::database_exists(url).await.unwrap_or(false) {
                return Err(error).context("failed to create the database");
            }
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .context("failed to connect to postgresql")?;
    MIGRATOR
        .run(&pool)
        .await
        .context("failed to run database migrations")?;
    Ok(pool)
}

/// True when the error means the database could not be reached (rather than a bad query).
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
    ) || matches!(error, sqlx::Error::Database(db) if db.code().is_some_and(|code| code.starts_with("57P") || code.starts_with("08")))
}

/// True when the database rejected the data itself (SQLSTATE classes 22 "data
/// exception" and 23 "integrity constraint violation", or a value it cannot
/// decode): repeating the same statement will fail the same way.
pub fn is_data_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => true,
        _ => false,
    }
}
