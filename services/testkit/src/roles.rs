//! The database's roles, as `migrations/roles.sql` makes them: a login role
//! per service owning its schema, and a read-only admin role. Role names are
//! the server's (not one database's), so each test makes its own set and
//! drops it at the end.

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Executor};

/// The provisioning script, the one `build-support/run` runs.
pub const PROVISION_SQL: &str = include_str!("../../../migrations/roles.sql");

/// A role and its password.
#[derive(Clone, Debug)]
pub struct Login {
    /// The role's name.
    pub role: String,
    /// Its password.
    pub password: String,
}

impl Login {
    /// `options` (server and database) with this role and password.
    pub fn on(&self, options: &PgConnectOptions) -> PgConnectOptions {
        options
            .clone()
            .username(&self.role)
            .password(&self.password)
    }
}

/// One set of roles: a login per service schema, and the admin's.
#[derive(Clone, Debug)]
pub struct Roles {
    /// order-api's: owns `orders`.
    pub orders: Login,
    /// payment-service's: owns `payments`.
    pub payments: Login,
    /// notification-service's: owns `notifications`.
    pub notifications: Login,
    /// The tools': reads every schema.
    pub admin: Login,
}

impl Roles {
    /// New role names (unique to this set) with new passwords.
    pub fn new() -> Self {
        let suffix = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let login = |name: &str| Login {
            role: format!("foodorder_{name}_{suffix}"),
            password: uuid::Uuid::new_v4().simple().to_string(),
        };
        Self {
            orders: login("orders"),
            payments: login("payments"),
            notifications: login("notifications"),
            admin: login("admin"),
        }
    }

    /// The same roles with new passwords.
    pub fn rotated(&self) -> Self {
        let rotate = |login: &Login| Login {
            role: login.role.clone(),
            password: uuid::Uuid::new_v4().simple().to_string(),
        };
        Self {
            orders: rotate(&self.orders),
            payments: rotate(&self.payments),
            notifications: rotate(&self.notifications),
            admin: rotate(&self.admin),
        }
    }

    /// Each schema with the login that owns it.
    pub fn by_schema(&self) -> [(&'static str, &Login); 3] {
        [
            ("orders", &self.orders),
            ("payments", &self.payments),
            ("notifications", &self.notifications),
        ]
    }

    /// The login that owns schema `name` (panics for a schema of no service).
    pub fn owner_of(&self, name: &str) -> &Login {
        self.by_schema()
            .into_iter()
            .find(|(schema, _)| *schema == name)
            .map(|(_, login)| login)
            .unwrap_or_else(|| panic!("no service owns schema {name}"))
    }

    /// Runs the provisioning script on `database` (a superuser's options on
    /// the platform's database) for these roles.
    pub async fn provision(&self, database: &PgConnectOptions) -> Result<(), sqlx::Error> {
        let settings: Vec<(String, String)> = [
            ("orders", &self.orders),
            ("payments", &self.payments),
            ("notifications", &self.notifications),
            ("admin", &self.admin),
        ]
        .into_iter()
        .flat_map(|(name, login)| {
            [
                (format!("foodorder.{name}_role"), login.role.clone()),
                (format!("foodorder.{name}_password"), login.password.clone()),
            ]
        })
        .collect();
        let mut connection = database.clone().options(settings).connect().await?;
        connection.execute(sqlx::raw_sql(PROVISION_SQL)).await?;
        Ok(())
    }

    /// Drops the roles, once the databases they own things in are gone.
    pub async fn drop_all(&self, server: &PgConnectOptions) -> Result<(), sqlx::Error> {
        let mut connection = server.connect().await?;
        for login in [
            &self.orders,
            &self.payments,
            &self.notifications,
            &self.admin,
        ] {
            connection
                .execute(format!(r#"DROP ROLE IF EXISTS "{}""#, login.role).as_str())
                .await?;
        }
        Ok(())
    }
}

impl Default for Roles {
    fn default() -> Self {
        Self::new()
    }
}
