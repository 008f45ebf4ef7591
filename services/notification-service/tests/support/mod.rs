//! Runs the services as real processes for the end-to-end tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::PgPool;

/// A service process; killed if still running when dropped.
pub struct Service {
    pub name: &'static str,
    child: Child,
    pub log: PathBuf,
}

impl Service {
    pub fn start(name: &'static str, env: &[(&str, String)], log_dir: &Path) -> Self {
        let binary = sibling_binary(name);
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(&binary)
            .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
            .env("LOG_LEVEL", "info")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("failed to start {}: {error}", binary.display()));
        Self { name, child, log }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                assert!(
                    exit.success(),
                    "{} exited with {exit} on SIGTERM; log: {}",
                    self.name,
                    self.log.display()
                );
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not stop within 30 s of SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The other services' binaries sit next to this package's binary in the target directory.
pub fn sibling_binary(name: &str) -> PathBuf {
    let own = PathBuf::from(env!("CARGO_BIN_EXE_notification-service"));
    let path = own.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

pub fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let database = pool
        .connect_options()
        .get_database()
        .expect("database name")
        .to_owned();
    format!(
        "{}/{database}",
        base.rsplit_once('/').expect("DATABASE_URL has a path").0
    )
}
