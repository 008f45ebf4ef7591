//! The run's own Apache Kafka broker, started through `build-support/kafka/broker`
//! (the one broker path of the repository, with the arguments lib.sh's
//! `start_kafka` gives it) with its durable data in the run's log directory.
//! Ready means the broker answers a metadata request through rdkafka. Like
//! lib.sh's `boot_kafka`, a broker that exits while starting (most often
//! because another socket took one of its ports meanwhile) has the tail of its
//! logs printed and is started again, up to three tries: on a new port for the
//! first start, on the same port (which the services already know) after a
//! pause for a restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};

use crate::supervise::{free_addr, port_open, spawn, stop, tail};

/// How long a starting broker may take to answer.
const READY_WITHIN: Duration = Duration::from_secs(90);

/// How long a stopped broker gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// A single-node KRaft broker on 127.0.0.1 that the run starts, kills and restarts.
pub struct Broker {
    script: PathBuf,
    libs: PathBuf,
    data: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    /// A broker run by `script` from the jars in `libs`, keeping its data in `data`; not started.
    pub fn new(script: PathBuf, libs: PathBuf, data: PathBuf) -> Self {
        Self {
            script,
            libs,
            data,
            port: 0,
            child: None,
        }
    }

    /// `127.0.0.1:port`, for the clients.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The first start, on a free port (another one if that is taken meanwhile).
    pub async fn boot(&mut self) -> anyhow::Result<()> {
        self.port = free_addr().port();
        self.launch(false).await
    }

    /// SIGKILLs the broker (no clean shutdown) and reaps it.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop("the kafka broker", &mut child, Duration::ZERO).await;
        }
    }

    /// Starts the broker again on the port the clients know, with the same data.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        self.launch(true).await
    }

    /// Stops the broker: SIGTERM, bounded wait, SIGKILL.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop("the kafka broker", &mut child, GRACE).await;
        }
    }

    async fn launch(&mut self, same_port: bool) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.data)?;
        let server_log = self.data.join("logs/server.log");
        for attempt in 1..=3 {
            let controller_port = match self.port.checked_add(1) {
                Some(next) if !port_open(SocketAddr::from(([127, 0, 0, 1], next))).await => next,
                _ => free_addr().port(),
            };
            let mut command = Command::new(&self.script);
            command
                .arg("--libs")
                .arg(&self.libs)
                .arg("--data")
                .arg(&self.data)
                .args(["--port", &self.port.to_string()])
                .args(["--controller-port", &controller_port.to_string()]);
            let output = self.data.join("broker.out");
            let mut child = spawn(&mut command, &output, true)?;
            let deadline = Instant::now() + READY_WITHIN;
            loop {
                if answers(self.bootstrap()).await {
                    self.child = Some(child);
                    return Ok(());
                }
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!(
                        "warning: the kafka broker on 127.0.0.1:{} exited while starting ({status}, try {attempt} of 3); the end of its logs:\n{}\n{}",
                        self.port,
                        tail(&output, 20),
                        tail(&server_log, 20)
                    );
                    break;
                }
                if Instant::now() >= deadline {
                    stop("the kafka broker", &mut child, GRACE).await;
                    anyhow::bail!(
                        "the kafka broker did not answer within {} s, see {}",
                        READY_WITHIN.as_secs(),
                        server_log.display()
                    );
                }
                sleep(Duration::from_millis(300)).await;
            }
            if same_port {
                sleep(Duration::from_secs(3)).await;
            } else {
                self.port = free_addr().port();
            }
        }
        anyhow::bail!(
            "the kafka broker would not start, see {}",
            server_log.display()
        )
    }
}

/// Whether a broker at `bootstrap` answers a metadata request within two seconds.
async fn answers(bootstrap: String) -> bool {
    tokio::task::spawn_blocking(move || {
        foodorder_testkit::broker::broker_answers(&bootstrap, Duration::from_secs(2))
    })
    .await
    .unwrap_or(false)
}
