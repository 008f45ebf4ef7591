//! Least privilege in PostgreSQL: each service runs as a role of its own that
//! owns its schema and may touch nothing else, and the tools' admin role only
//! reads. The roles come from `migrations/roles.sql`, the script
//! `build-support/run` runs.

use foodorder_testkit as testing;
use foodorder_testkit::roles::{Login, Roles};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

use crate::support::Platform;

/// A table of each schema that every version has.
const TABLES: [(&str, &str); 3] = [
    ("orders", "orders.orders"),
    ("payments", "payments.payment_requests"),
    ("notifications", "notifications.notifications"),
];

/// The SQLSTATE of `sql` run on `connection`, or None if it succeeded.
async fn refusal(connection: &mut PgConnection, sql: &str) -> Option<String> {
    match sqlx::raw_sql(sql).execute(&mut *connection).await {
        Ok(_) => None,
        Err(error) => Some(
            error
                .as_database_error()
                .and_then(|db| db.code())
                .map(|code| code.into_owned())
                .unwrap_or_else(|| format!("not a database error: {error}")),
        ),
    }
}

async fn connect(options: &PgConnectOptions, login: &Login) -> PgConnection {
    login
        .on(options)
        .connect()
        .await
        .unwrap_or_else(|error| panic!("connect as {}: {error}", login.role))
}

/// Whether the server checks passwords on TCP (a server whose pg_hba.conf
/// trusts TCP connections lets any role in without one).
async fn passwords_checked(superuser: &mut PgConnection) -> bool {
    let trusting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_hba_file_rules WHERE type LIKE 'host%' AND auth_method = 'trust'",
    )
    .fetch_one(&mut *superuser)
    .await
    .unwrap();
    trusting == 0
}

/// Drops the test's database, then its roles (which own things only there).
async fn drop_everything(
    pool: sqlx::PgPool,
    database: testing::TestDatabase,
    roles: &Roles,
    options: &PgConnectOptions,
) {
    drop(pool);
    drop(database);
    roles
        .drop_all(&options.clone().database("postgres"))
        .await
        .expect("drop the test's roles");
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn each_service_role_owns_its_schema_and_can_touch_no_other() {
    let (pool, database) = testing::empty_database().await;
    let options = pool.connect_options().as_ref().clone();
    let roles = Roles::new();
    roles
        .provision(&options)
        .await
        .expect("provision the roles");
    // Each service migrates its own schema as its own role.
    for schema in crate::support::SCHEMAS {
        let login = roles.owner_of(schema.name());
        schema
            .migrate(&login.on(&options))
            .await
            .unwrap_or_else(|error| panic!("migrate {} as its role: {error:#}", schema.name()));
    }

    let mut tried = Vec::new();
    for (schema, login) in roles.by_schema() {
        let mut connection = connect(&options, login).await;
        let superuser: bool =
            sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                .fetch_one(&mut connection)
                .await
                .unwrap();
        assert!(!superuser, "{} is no superuser", login.role);
        // Its own schema: read, write, change.
        let own = TABLES.iter().find(|(name, _)| *name == schema).unwrap().1;
        for sql in [
            format!("SELECT count(*) FROM {own}"),
            format!(
                "CREATE TABLE {schema}.probe (x int); INSERT INTO {schema}.probe VALUES (1); DROP TABLE {schema}.probe"
            ),
        ] {
            assert_eq!(
                refusal(&mut connection, &sql).await,
                None,
                "{} may: {sql}",
                login.role
            );
        }
        // Anything else: permission denied (42501).
        let mut forbidden = Vec::new();
        for (other, table) in TABLES.iter().filter(|(name, _)| *name != schema) {
            forbidden.push(format!("SELECT count(*) FROM {table}"));
            forbidden.push(format!("DELETE FROM {table}"));
            forbidden.push(format!("CREATE TABLE {other}.intruder (x int)"));
            forbidden.push(format!("SELECT count(*) FROM {other}.outbox"));
        }
        forbidden.push("CREATE SCHEMA intruder".to_owned());
        forbidden.push("CREATE TABLE public.intruder (x int)".to_owned());
        forbidden.push("CREATE DATABASE intruder".to_owned());
        forbidden.push("CREATE ROLE intruder".to_owned());
        for (_, other) in roles
            .by_schema()
            .into_iter()
            .filter(|(name, _)| *name != schema)
        {
            forbidden.push(format!(r#"SET ROLE "{}""#, other.role));
        }
        for sql in forbidden {
            let code = refusal(&mut connection, &sql).await;
            assert_eq!(
                code.as_deref(),
                Some("42501"),
                "{} must not: {sql} ({code:?})",
                login.role
            );
            tried.push(format!("{schema}: {sql} → {}", code.unwrap()));
        }
    }
    // The admin reads every schema and writes none.
    let mut admin = connect(&options, &roles.admin).await;
    for (schema, table) in TABLES {
        assert_eq!(
            refusal(&mut admin, &format!("SELECT count(*) FROM {table}")).await,
            None,
            "admin reads {table}"
        );
        let code = refusal(&mut admin, &format!("DELETE FROM {table}")).await;
        assert_eq!(
            code.as_deref(),
            Some("42501"),
            "admin must not write {table}"
        );
        let code = refusal(
            &mut admin,
            &format!("CREATE TABLE {schema}.intruder (x int)"),
        )
        .await;
        assert_eq!(
            code.as_deref(),
            Some("42501"),
            "admin must not create in {schema}"
        );
    }

    // Provisioning again changes the passwords: the old ones stop working
    // (where the server checks passwords at all).
    let mut superuser = PgConnection::connect_with(&options).await.unwrap();
    let rotated = roles.rotated();
    rotated.provision(&options).await.expect("provision again");
    let checked = passwords_checked(&mut superuser).await;
    // build-support/test's private cluster checks passwords: there, a
    // server that does not is a failure, not a skip.
    assert!(
        checked || std::env::var_os("FOODORDER_POSTGRES_CHECKS_PASSWORDS").is_none(),
        "the private cluster trusts TCP connections: every role's name would let anyone in"
    );
    if checked {
        for (old, new) in [
            (&roles.orders, &rotated.orders),
            (&roles.admin, &rotated.admin),
        ] {
            let error = old
                .on(&options)
                .connect()
                .await
                .map(drop)
                .expect_err("the old password is refused");
            let code = error
                .as_database_error()
                .and_then(|db| db.code())
                .map(|code| code.into_owned());
            assert_eq!(code.as_deref(), Some("28P01"), "{error}");
            connect(&options, new).await;
        }
    } else {
        eprintln!("this server trusts TCP connections: password checks skipped");
    }
    drop(superuser);

    // The whole platform works as the three roles.
    let platform = Platform::start_as(
        &pool,
        Some(&rotated),
        &[("SHUTDOWN_GRACE_SECONDS", "10".to_owned())],
        &[("PAYMENT_DECLINE_RATE", "0".into())],
    );
    platform.place_one_and_wait_until_notified(&pool).await;
    let logs = platform.terminate();
    Platform::remove_logs(logs[0].1.parent().unwrap());
    eprintln!(
        "permission checks tried ({}):\n{}",
        tried.len(),
        tried.join("\n")
    );

    drop_everything(pool, database, &rotated, &options).await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_database_migrated_before_the_roles_is_handed_over_to_them() {
    // Migrated by the superuser, as every installation was before the roles.
    let (pool, database) = testing::database(crate::support::SCHEMAS).await;
    let options = pool.connect_options().as_ref().clone();
    let roles = Roles::new();
    roles
        .provision(&options)
        .await
        .expect("provision the roles");
    for schema in crate::support::SCHEMAS {
        let login = roles.owner_of(schema.name());
        // Its history is found, nothing is left to apply, and every object
        // of the schema is the role's now.
        schema
            .migrate(&login.on(&options))
            .await
            .unwrap_or_else(|error| panic!("migrate {} as its role: {error:#}", schema.name()));
        let foreign: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c \
             WHERE c.relnamespace = $1::regnamespace AND pg_get_userbyid(c.relowner) <> $2",
        )
        .bind(schema.name())
        .bind(&login.role)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(
            foreign.is_empty(),
            "{} still owned by another role: {foreign:?}",
            schema.name()
        );
        let mut connection = connect(&options, login).await;
        let (_, own) = TABLES
            .iter()
            .find(|(name, _)| *name == schema.name())
            .unwrap();
        assert_eq!(
            refusal(
                &mut connection,
                &format!("BEGIN; SELECT count(*) FROM {own}; DELETE FROM {own}; ALTER TABLE {own} ADD COLUMN probe int; ROLLBACK")
            )
            .await,
            None,
            "{} reads, writes and changes {own}",
            login.role
        );
    }
    drop_everything(pool, database, &roles, &options).await;
}

#[cfg_attr(
    not(feature = "infra-tests"),
    ignore = "needs PostgreSQL and Kafka: cargo test --features infra-tests, as build-support/test runs it"
)]
#[tokio::test]
async fn a_database_upgraded_across_the_split_runs_as_the_roles() {
    // The shared schema's whole history (the split included) in public, as a
    // database upgraded from before the split has it, then each schema.
    let (pool, database) = testing::empty_database().await;
    foodorder_runtime::db::LEGACY
        .run(&pool)
        .await
        .expect("the shared history and the split");
    for schema in crate::support::SCHEMAS {
        schema.migrate(&pool.connect_options()).await.unwrap();
    }
    let options = pool.connect_options().as_ref().clone();
    let roles = Roles::new();
    roles
        .provision(&options)
        .await
        .expect("provision the roles");
    for schema in crate::support::SCHEMAS {
        let login = roles.owner_of(schema.name());
        // The history in public is read, not written: the split is done.
        schema
            .migrate(&login.on(&options))
            .await
            .unwrap_or_else(|error| panic!("migrate {} as its role: {error:#}", schema.name()));
        let mut connection = connect(&options, login).await;
        assert_eq!(
            refusal(&mut connection, "CREATE TABLE public._intruder (x int)")
                .await
                .as_deref(),
            Some("42501"),
            "{} may not write in public",
            login.role
        );
    }
    drop_everything(pool, database, &roles, &options).await;
}
