//! The PostgreSQL pool with its deadlines, how a service's schema is created
//! and migrated (each service declares its own [`Schema`] from its folder in
//! `migrations/`), and how database errors are classified.
//!
//! Every connection a service opens is bounded (see [`DatabaseTimeouts`]):
//!
//! * PostgreSQL cancels a statement after `statement_timeout`, gives up a lock
//!   wait after `lock_timeout` and ends a session left idle inside a
//!   transaction after `idle_in_transaction_session_timeout`; all three are
//!   sent as startup options of each connection ([`bounded_options`]), so
//!   they cost no round trip. The server also probes its side of every TCP
//!   connection (`tcp_keepalives_*`), so the session of a client that
//!   vanished without closing its connection ends, and its locks with it.
//! * The pool gives up a wait for a connection, opening one included, after
//!   the acquire timeout, and checks a released connection within a bound
//!   ([`pool_options`]): a connection whose peer vanished silently (a
//!   partition that drops packets) is closed instead of being waited on
//!   forever, so the pool recovers once the network does.
//! * Server-side bounds cannot help when the packets never arrive: what waits
//!   for the database also bounds the wait on its own side (the order API's
//!   request deadline and group-commit writers, the consumers' handler
//!   timeout).
//! * Migrations have no statement timeout (they may legitimately run long),
//!   but their lock waits are bounded by the migration lock timeout: a
//!   migration waiting for a table lock would make every later query of the
//!   table queue behind it. A start that runs into it is retried.
//!
//! A statement cancelled by a timeout (57014) or a lock wait given up (55P03)
//! is transient ([`is_unavailable`]): callers get UNAVAILABLE, consumers retry.

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use crate::backoff::Backoff;
use crate::config::{DatabaseConfig, DatabaseTimeouts};

/// Server-side TCP keepalive of every connection: PostgreSQL probes a client
/// silent for this long ...
const TCP_KEEPALIVE_IDLE_SECONDS: u32 = 30;
/// ... every this many seconds ...
const TCP_KEEPALIVE_INTERVAL_SECONDS: u32 = 10;
/// ... and ends the session after this many unanswered probes (about a minute in all).
const TCP_KEEPALIVE_COUNT: u32 = 3;

/// `options` with the session deadlines of `timeouts` and the server-side
/// TCP keepalive, sent as startup options (`-c name=value`) of each
/// connection. Later options win, so a caller may override one afterwards.
pub fn bounded_options(options: PgConnectOptions, timeouts: &DatabaseTimeouts) -> PgConnectOptions {
    options.options([
        ("statement_timeout", millis(timeouts.statement)),
        ("lock_timeout", millis(timeouts.lock)),
        (
            "idle_in_transaction_session_timeout",
            millis(timeouts.idle_in_transaction),
        ),
        (
            "tcp_keepalives_idle",
            TCP_KEEPALIVE_IDLE_SECONDS.to_string(),
        ),
        (
            "tcp_keepalives_interval",
            TCP_KEEPALIVE_INTERVAL_SECONDS.to_string(),
        ),
        ("tcp_keepalives_count", TCP_KEEPALIVE_COUNT.to_string()),
    ])
}

/// A duration as PostgreSQL's milliseconds setting (0 turns the bound off).
fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

/// How long a released connection may take to prove it is usable: the rest of
/// a statement its caller gave up on (cut by `statement_timeout` at most) and
/// a round trip. A connection that does not answer within it is closed.
fn release_check_timeout(timeouts: &DatabaseTimeouts) -> Duration {
    if timeouts.statement.is_zero() {
        Duration::from_secs(30)
    } else {
        timeouts.statement + Duration::from_secs(1)
    }
}

/// Pool settings: at most `max_connections`, a wait for a connection (opening
/// one included) bounded by `timeouts.acquire`, and a released connection
/// checked within a bound (sqlx's own check on release has none: a connection
/// whose peer vanished silently would hold its slot until TCP gives up,
/// about 15 minutes). Every release is checked, so a connection handed out
/// again within [`RECHECK_IDLE_AFTER`] is not checked a second time on the
/// way out (sqlx would, at one more round trip per use); one idle longer is.
pub fn pool_options(max_connections: u32, timeouts: &DatabaseTimeouts) -> PgPoolOptions {
    pool_options_with(
        max_connections,
        timeouts.acquire,
        release_check_timeout(timeouts),
    )
}

/// How long a released (and checked) connection may sit idle before it is
/// checked again when handed out.
const RECHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

fn pool_options_with(
    max_connections: u32,
    acquire: Duration,
    release_check: Duration,
) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire)
        .test_before_acquire(false)
        .before_acquire(|connection, metadata| {
            Box::pin(async move {
                if metadata.idle_for >= RECHECK_IDLE_AFTER {
                    // Within the acquire timeout, like sqlx's own check.
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
        .after_release(move |connection, _| {
            Box::pin(async move {
                match tokio::time::timeout(release_check, connection.ping()).await {
                    Ok(Ok(())) => Ok(true),
                    Ok(Err(error)) => Err(error),
                    // An error closes the connection without waiting on it.
                    Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "a released connection did not answer within {release_check:?}; closing it"
                        ),
                    ))),
                }
            })
        })
}

/// A new pool, opened lazily, on the database of `pool` with `config`'s
/// bounds and at most `max_connections`: for a service handed a pool (a test's,
/// a proxied one) that keeps its own pools, bounded as in production.
pub fn reopen(pool: &PgPool, config: &DatabaseConfig, max_connections: u32) -> PgPool {
    let options = bounded_options(pool.connect_options().as_ref().clone(), &config.timeouts);
    pool_options(max_connections, &config.timeouts).connect_lazy_with(options)
}

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

    /// The schema's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Brings the database up to date for this schema: the legacy move first
    /// when the database has the shared history, then the schema's own folder.
    /// With the default [`DatabaseTimeouts`]; see [`Schema::migrate_with`].
    pub async fn migrate(&self, options: &PgConnectOptions) -> anyhow::Result<()> {
        self.migrate_with(options, &DatabaseTimeouts::default())
            .await
    }

    /// [`Schema::migrate`] over a connection of its own with no statement
    /// timeout (a migration may legitimately run long) and lock waits bounded
    /// by `timeouts.migration_lock` (a migration waiting for a table lock makes
    /// every later query of that table queue behind it). Instances starting
    /// together migrate one at a time: the others wait, saying so every 10 s,
    /// holding no lock a query could queue behind; the wait ends when the
    /// migrating instance finishes or its session ends (PostgreSQL ends the
    /// session of a client that vanished, see [`bounded_options`]).
    pub async fn migrate_with(
        &self,
        options: &PgConnectOptions,
        timeouts: &DatabaseTimeouts,
    ) -> anyhow::Result<()> {
        let options = bounded_options(options.clone(), timeouts).options([
            ("search_path", "public".to_owned()),
            ("statement_timeout", "0".to_owned()),
            ("idle_in_transaction_session_timeout", "0".to_owned()),
            ("lock_timeout", millis(timeouts.migration_lock)),
        ]);
        let mut connection = tokio::time::timeout(timeouts.acquire, options.connect())
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "postgresql did not accept a connection within {:?}",
                        timeouts.acquire
                    ),
                )
            })
            .context("failed to connect to postgresql to migrate")?
            .context("failed to connect to postgresql to migrate")?;
        wait_for_migration_lock(&mut connection, self.name).await?;
        let migrated = self
            .migrate_locked(&mut connection)
            .await
            .map_err(|error| explain_lock_timeout(error, self.name, timeouts.migration_lock));
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
        // Once the split is recorded the shared history has nothing left to
        // do: a service running as its own role (which may read that history,
        // see `migrations/roles.sql`, but not write in `public`) skips it.
        let split = LEGACY.iter().map(|migration| migration.version).max();
        if legacy {
            let done: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM public._sqlx_migrations WHERE version = $1 AND success)",
            )
            .bind(split)
            .fetch_one(&mut *connection)
            .await
            .context("failed to read the shared schema's history (public._sqlx_migrations)")?;
            if !done {
                LEGACY
                    .run_direct(&mut *connection)
                    .await
                    .context("failed to apply the shared schema's history and the split")?;
            }
        }
        // A service that runs as its own role (see `migrations/roles.sql`)
        // finds its schema made for it and may not create one: the database's
        // CREATE right is checked even when the schema exists, so it is only
        // asked for a schema that is missing.
        let exists: bool = sqlx::query_scalar("SELECT to_regnamespace($1) IS NOT NULL")
            .bind(self.name)
            .fetch_one(&mut *connection)
            .await?;
        if !exists {
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {}", self.name))
                .execute(&mut *connection)
                .await
                .map_err(|error| {
                    let denied = error
                        .as_database_error()
                        .and_then(|db| db.code())
                        .is_some_and(|code| code == "42501");
                    let error = anyhow::Error::new(error);
                    if denied {
                        error.context(format!(
                            "schema {} does not exist and this role may not create it: \
                             provision the database's roles first (migrations/roles.sql)",
                            self.name
                        ))
                    } else {
                        error
                    }
                })?;
        }
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

/// Takes the migration lock, polling rather than queueing for it, and says
/// every 10 s that another instance is still migrating.
async fn wait_for_migration_lock(
    connection: &mut PgConnection,
    schema: &str,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut reported = started;
    loop {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .fetch_one(&mut *connection)
            .await
            .context("failed to take the migration lock")?;
        if locked {
            return Ok(());
        }
        if reported.elapsed() >= Duration::from_secs(10) {
            reported = std::time::Instant::now();
            tracing::info!(
                schema,
                waited_seconds = started.elapsed().as_secs(),
                "another instance is migrating the database; waiting for it to finish"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A migration's error, with a clear word when it gave up a lock wait.
fn explain_lock_timeout(error: anyhow::Error, schema: &str, timeout: Duration) -> anyhow::Error {
    let lock_wait = error.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .and_then(sqlx::Error::as_database_error)
            .and_then(|db| db.code())
            .is_some_and(|code| code == "55P03")
    });
    if lock_wait {
        error.context(format!(
            "the migration of schema {schema} waited more than {timeout:?} for a lock another session \
             holds (a long transaction, VACUUM FULL, another migration?); nothing was changed, the start is retried"
        ))
    } else {
        error
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
                    "postgresql not ready yet (unreachable, restarting or busy), retrying"
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
    let bound = config.timeouts.acquire;
    let within = |what: &'static str| {
        move |_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("postgresql did not answer within {bound:?} ({what})"),
            )
        }
    };
    if !tokio::time::timeout(bound, sqlx::Postgres::database_exists(url))
        .await
        .map_err(within("checking that the database exists"))
        .context("failed to reach postgresql at DATABASE_URL")?
        .context("failed to reach postgresql at DATABASE_URL")?
    {
        tracing::info!("database does not exist, creating it");
        let created = tokio::time::timeout(bound, sqlx::Postgres::create_database(url))
            .await
            .map_err(within("creating the database"))
            .context("failed to create the database")?;
        if let Err(error) = created {
            // Another service may have created it at the same moment.
            let exists = tokio::time::timeout(bound, sqlx::Postgres::database_exists(url)).await;
            if !matches!(exists, Ok(Ok(true))) {
                return Err(error).context("failed to create the database");
            }
        }
    }
    let options: PgConnectOptions = url
        .parse()
        .context("DATABASE_URL is not a PostgreSQL URL")?;
    let pool = pool_options(config.max_connections, &config.timeouts)
        .connect_with(bounded_options(options, &config.timeouts))
        .await
        .context("failed to connect to postgresql")?;
    schema
        .migrate_with(&pool.connect_options(), &config.timeouts)
        .await?;
    Ok(pool)
}

/// A second, smaller pool on the same database as `pool`, opened lazily: for
/// work that must not compete with the service's own connections (the mock
/// gateway's ledger, the order API's payment-outcome consumer). It has the
/// bounds of `pool`: the same session deadlines and acquire timeout, and
/// released connections checked within a bound.
pub fn side_pool(pool: &PgPool, max_connections: u32) -> PgPool {
    let acquire = pool.options().get_acquire_timeout();
    pool_options_with(
        max_connections,
        acquire,
        acquire.max(Duration::from_secs(5)),
    )
    .connect_lazy_with(pool.connect_options().as_ref().clone())
}

/// A [`side_pool`] whose sessions commit without waiting for the disk
/// (`synchronous_commit = off`): for bookkeeping that a crash of the service
/// never loses (the commit is done) and a crash of PostgreSQL itself loses
/// only within the WAL writer's delay — in exchange, one round trip and no
/// flush wait per statement.
pub fn asynchronous_commit_pool(pool: &PgPool, max_connections: u32) -> PgPool {
    let acquire = pool.options().get_acquire_timeout();
    pool_options_with(
        max_connections,
        acquire,
        acquire.max(Duration::from_secs(5)),
    )
    .connect_lazy_with(
        pool.connect_options()
            .as_ref()
            .clone()
            .options([("synchronous_commit", "off")]),
    )
}

/// How long a client waits, on its own side, for one short statement of
/// `pool` that no other deadline bounds (a `LISTEN`, a chunk of a sweep): the
/// pool's acquire timeout (opening a connection included), the sessions'
/// `statement_timeout` and a second for the round trip. PostgreSQL's bound
/// alone does not help when the packets never arrive (a partition that drops
/// them). A pool without a statement timeout counts the default one.
pub fn statement_wait_bound(pool: &PgPool) -> Duration {
    let statement = pool
        .connect_options()
        .get_options()
        .and_then(statement_timeout_of)
        .filter(|timeout| !timeout.is_zero())
        .unwrap_or(DatabaseTimeouts::default().statement);
    pool.options().get_acquire_timeout() + statement + Duration::from_secs(1)
}

/// The last `statement_timeout` (in milliseconds, as [`bounded_options`]
/// writes it) of a startup options string.
fn statement_timeout_of(options: &str) -> Option<Duration> {
    options
        .split_whitespace()
        .rev()
        .find_map(|option| option.strip_prefix("statement_timeout="))
        .and_then(|millis| millis.parse().ok())
        .map(Duration::from_millis)
}

/// True when the error is the database's state rather than the request: it
/// could not be reached, or it refused for a reason that passes (too many
/// connections, a deadlock or serialization failure, a read-only standby, an
/// administrator's shutdown, a statement or lock wait that ran out of time).
/// Callers get UNAVAILABLE and may retry; consumers retry.
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
/// (deadlock), 25006 (read-only transaction, e.g. during a failover), 55P03
/// (lock not available: `lock_timeout`) and 57014 (query canceled:
/// `statement_timeout`, or an administrator's cancel).
pub fn is_transient_sqlstate(code: &str) -> bool {
    ["08", "53", "57P"]
        .iter()
        .any(|class| code.starts_with(class))
        || ["40001", "40P01", "25006", "55P03", "57014"].contains(&code)
}

/// True when the database ran out of time rather than refused: a statement
/// cancelled by `statement_timeout` (57014), a lock wait given up after
/// `lock_timeout` (55P03), or no pooled connection within the acquire
/// timeout. Repeating the work at once would wait the same way.
pub fn is_timeout(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code == "57014" || code == "55P03"),
        _ => false,
    }
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
    fn the_statement_timeout_is_read_back_from_the_startup_options() {
        let options = bounded_options(
            PgConnectOptions::new(),
            &DatabaseTimeouts {
                statement: Duration::from_millis(1500),
                ..DatabaseTimeouts::default()
            },
        )
        .options([("statement_timeout", "2500")]);
        assert_eq!(
            options.get_options().and_then(statement_timeout_of),
            Some(Duration::from_millis(2500)),
            "the later option wins, as in PostgreSQL"
        );
        assert_eq!(statement_timeout_of("-c lock_timeout=2000"), None);
    }

    #[test]
    fn passing_refusals_are_transient_and_bad_requests_are_not() {
        for code in [
            "08006", "53300", "57P01", "57P03", "40001", "40P01", "25006", "55P03", "57014",
        ] {
            assert!(is_transient_sqlstate(code), "{code} is transient");
        }
        for code in ["23505", "22P02", "42P01", "42601", "XX000"] {
            assert!(!is_transient_sqlstate(code), "{code} is not transient");
        }
    }
}
