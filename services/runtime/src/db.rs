//! The PostgreSQL pool with its deadlines, how a service's schema is created
//! and migrated (each service declares its own [`Schema`] from its folder in
//! `migrations/`), and how database errors are classified.

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use crate::backoff::Backoff;
use crate::config::DatabaseConfig;

/// A service's own schema: only that service reads or writes its tables, and
/// it applies its migrations, with their history in `<schema>._sqlx_migrations`.
/// Each service declares its own, next to its code:
/// `Schema::new("orders", sqlx::migrate!("../../migrations/orders"))`.
pub struct Schema {
    /// The schema's name, which qualifies every table the service names.
    pub name: &'static str,
    migrator: Migrator,
}

/// The single shared schema's history (in `public`), ending with the move of
/// every table to its owner's schema. Applied only where that history exists.
pub static LEGACY: Migrator = sqlx::migrate!("../../migrations/legacy");

/// Advisory-lock key held while a service creates its schema and migrates, so
/// that services starting together do not race on `CREATE SCHEMA`.
const MIGRATION_LOCK: i64 = 0x666f_6f64_6f72_6472;

impl Schema {
    /// The schema `name` with the migrations of its owner's folder.
    pub const fn new(name: &'static str, migrator: Migrator) -> Self {
        Self { name, migrator }
    }

    /// Brings the database up to date for this schema: the legacy move first
    /// when the database has the shared history, then the schema's own folder.
    pub async fn migrate(&self, options: &PgConnectOptions) -> anyhow::Result<()> {
        let mut connection = options
            .clone()
            .options([("search_path", "public")])
            .connect()
            .await
            .context("failed to connect to postgresql to migrate")?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut connection)
            .await?;
        let migrated = self.migrate_locked(&mut connection).await;
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut connection)
            .await;
        let _ = connection.close().await;
        migrated
    }

    async fn migrate_locked(&self, connection: &mut PgConnection) -> anyhow::Result<()> {
        let legacy: bool =
            sqlx::query_scalar("SELECT to_regclass('public._sqlx_migrations') IS NOT NULL")
                .fetch_one(&mut *connection)
                .await?;
        if legacy {
            LEGACY
                .run_direct(&mut *connection)
                .await
                .context("failed to apply the shared schema's history and the split")?;
        }
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", self.name))
            .execute(&mut *connection)
            .await?;
        // The schema's own history table lives in the schema.
        sqlx::query(&format!("SET search_path TO {}", self.name))
            .execute(&mut *connection)
            .await?;
        self.migrator
            .run_direct(&mut *connection)
            .await
            .with_context(|| format!("failed to run the {} schema's migrations", self.name))?;
        sqlx::query("SET search_path TO public")
            .execute(&mut *connection)
            .await?;
        Ok(())
    }
}

/// How long a starting service waits for PostgreSQL to be reachable before it gives up.
const STARTUP_PATIENCE: Duration = Duration::from_secs(120);

/// Creates the database if it does not exist, opens a pool and runs the
/// migrations of `schema`. A database that is unreachable or restarting (see
/// [`is_unavailable`]) is waited for, with capped back-off, for up to two
/// minutes: a service started during a database restart comes up with it
/// instead of exiting. Anything else (bad credentials, a broken migration)
/// fails at once.
pub async fn connect_and_migrate(
    config: &DatabaseConfig,
    schema: &Schema,
) -> anyhow::Result<PgPool> {
    let started = std::time::Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match try_connect_and_migrate(config, schema).await {
            Ok(pool) => return Ok(pool),
            Err(error)
                if is_transient_startup_error(&error) && started.elapsed() < STARTUP_PATIENCE =>
            {
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = format!("{error:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "postgresql not reachable yet, retrying"
                );
                tokio::time::sleep(delay).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Whether a start-up failure comes from a database that is down or restarting.
fn is_transient_startup_error(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .is_some_and(is_unavailable)
            || cause.downcast_ref::<std::io::Error>().is_some()
    })
}

async fn try_connect_and_migrate(
    config: &DatabaseConfig,
    schema: &Schema,
) -> anyhow::Result<PgPool> {
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
    schema.migrate(&pool.connect_options()).await?;
    Ok(pool)
}

/// A second, smaller pool on the same database as `pool`, opened lazily: for
/// work that must not compete with the service's own connections (the mock
/// gateway's ledger, the order API's payment-outcome consumer).
pub fn side_pool(pool: &PgPool, max_connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(pool.connect_options().as_ref().clone())
}

/// True when the error is the database's state rather than the request: it
/// could not be reached, or it refused for a reason that passes (too many
/// connections, a deadlock or serialization failure, a read-only standby, an
/// administrator's shutdown). Callers get UNAVAILABLE and may retry; consumers
/// retry.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_transient_sqlstate(&code)),
        _ => false,
    }
}

/// SQLSTATEs that say "try again later": classes 08 (connection exception),
/// 53 (insufficient resources, e.g. 53300 too many connections), 57P (admin or
/// crash shutdown, cannot connect now), 40001 (serialization failure), 40P01
/// (deadlock), 25006 (read-only transaction, e.g. during a failover) and 55P03
/// (lock not available).
pub fn is_transient_sqlstate(code: &str) -> bool {
    ["08", "53", "57P"]
        .iter()
        .any(|class| code.starts_with(class))
        || ["40001", "40P01", "25006", "55P03"].contains(&code)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passing_refusals_are_transient_and_bad_requests_are_not() {
        for code in [
            "08006", "53300", "57P01", "57P03", "40001", "40P01", "25006", "55P03",
        ] {
            assert!(is_transient_sqlstate(code), "{code} is transient");
        }
        for code in ["23505", "22P02", "42P01", "42601", "XX000"] {
            assert!(!is_transient_sqlstate(code), "{code} is not transient");
        }
    }
}
