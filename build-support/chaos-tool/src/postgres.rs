//! The private PostgreSQL cluster build-support/chaos provisioned for the run:
//! its abrupt restart (immediate shutdown, so no checkpoint and crash recovery
//! at the start, on the same port: lib.sh's `restart_private_postgres`) and its
//! fast shutdown when the run ends. The cluster is started with the options of
//! lib.sh's `pg_start_cluster`; as root, pg_ctl runs as the `postgres` OS user.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::process::Command;

/// A cluster that pg_ctl controls.
pub struct Postgres {
    pg_ctl: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres_user: bool,
}

impl Postgres {
    /// The cluster in `data`, listening on 127.0.0.1:`port`; `as_postgres_user`
    /// runs pg_ctl through `runuser -u postgres --`.
    pub fn new(pg_ctl: PathBuf, data: PathBuf, port: u16, as_postgres_user: bool) -> Self {
        Self {
            pg_ctl,
            data,
            port,
            as_postgres_user,
        }
    }

    fn pg_ctl(&self) -> Command {
        let mut command = if self.as_postgres_user {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(&self.pg_ctl);
            runuser
        } else {
            Command::new(&self.pg_ctl)
        };
        command.arg("-D").arg(&self.data).kill_on_drop(true);
        command
    }

    /// Immediate shutdown, `pause`, then a start on the same port.
    pub async fn restart(&self, pause: Duration) -> anyhow::Result<()> {
        // As lib.sh: a cluster that is already down is no reason to stop.
        let _ = self
            .pg_ctl()
            .args(["-m", "immediate", "stop"])
            .output()
            .await;
        tokio::time::sleep(pause).await;
        self.start()
            .await
            .context("postgresql did not come back after its restart")
    }

    async fn start(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=300",
            self.port,
            self.data.display()
        );
        let output = self
            .pg_ctl()
            .args(["-w", "-t", "60", "-l"])
            .arg(self.data.join("server.log"))
            .arg("-o")
            .arg(options)
            .arg("start")
            .output()
            .await
            .context("failed to run pg_ctl")?;
        anyhow::ensure!(
            output.status.success(),
            "pg_ctl start failed ({}): {}; see {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            self.data.join("server.log").display()
        );
        Ok(())
    }

    /// Fast shutdown (clients disconnected, a checkpoint written); failures are only reported.
    pub async fn stop(&self) {
        match self.pg_ctl().args(["-m", "fast", "stop"]).output().await {
            Ok(output) if output.status.success() => {}
            Ok(output) => eprintln!(
                "warning: stopping postgresql failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
            Err(error) => eprintln!("warning: cannot run pg_ctl: {error}"),
        }
    }
}
