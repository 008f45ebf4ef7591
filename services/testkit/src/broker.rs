//! A private Apache Kafka broker that a test may stop, kill and restart.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use uuid::Uuid;

use crate::{free_port, repository_root};

/// A private Apache Kafka broker (single-node KRaft) for tests that stop, kill
/// and restart a broker. It runs `build-support/kafka/broker`, the same script
/// and jars as `build-support/run`, on its own ports and its own data
/// directory, which survives [`PrivateBroker::kill`] and
/// [`PrivateBroker::restart`] and is removed when the broker is dropped.
pub struct PrivateBroker {
    child: Option<Child>,
    port: u16,
    controller_port: u16,
    data_dir: std::path::PathBuf,
    /// With SASL: the credentials directory (`build-support/kafka/broker --sasl`).
    sasl: Option<std::path::PathBuf>,
}

impl PrivateBroker {
    /// The broker's jars: `KAFKA_LIBS`, as exported by `build-support/test`.
    pub fn libs() -> String {
        std::env::var("KAFKA_LIBS").expect(
            "KAFKA_LIBS is not set: run the suite with build-support/test, which installs Apache Kafka and exports it",
        )
    }

    /// Starts a broker on 127.0.0.1:`port` and waits until it answers Kafka requests.
    pub async fn start(port: u16) -> Self {
        Self::start_with(port, None).await
    }

    /// Starts a broker that takes SASL/SCRAM only, with ACLs
    /// (`build-support/kafka/broker --sasl credentials`: `credentials` holds
    /// `kafka-admin.password`, `kafka-broker.password` and
    /// `kafka-controller.password`), and waits until it answers the admin.
    pub async fn start_with_sasl(port: u16, credentials: &std::path::Path) -> Self {
        Self::start_with(port, Some(credentials.to_owned())).await
    }

    async fn start_with(port: u16, sasl: Option<std::path::PathBuf>) -> Self {
        let data_dir = std::env::temp_dir().join(format!("foodorder-broker-{}", Uuid::new_v4()));
        let mut broker = Self {
            child: None,
            port,
            controller_port: free_port(),
            data_dir,
            sasl,
        };
        broker.launch().await;
        broker
    }

    /// The admin's login, for a broker started with SASL.
    fn admin_login(&self) -> Option<(String, String)> {
        let dir = self.sasl.as_ref()?;
        let password = std::fs::read_to_string(dir.join("kafka-admin.password"))
            .expect("the admin's password file");
        Some(("admin".to_owned(), password.trim().to_owned()))
    }

    /// Starts the broker and waits until it answers. A broker that exits while
    /// starting (one of its ports taken by another socket in the meantime) has
    /// its output printed and is started again, with a new controller port, up
    /// to three times.
    async fn launch(&mut self) {
        let output = std::env::temp_dir().join(format!("foodorder-broker-{}.out", self.port));
        for attempt in 1..=3 {
            let log = std::fs::File::create(&output).expect("create the broker's output file");
            let child = Command::new(repository_root().join("build-support/kafka/broker"))
                .arg("--libs")
                .arg(Self::libs())
                .arg("--data")
                .arg(&self.data_dir)
                .args(["--port", &self.port.to_string()])
                .args(["--controller-port", &self.controller_port.to_string()])
                .args(
                    self.sasl
                        .iter()
                        .flat_map(|dir| [std::ffi::OsStr::new("--sasl"), dir.as_os_str()]),
                )
                .env("KAFKA_HEAP", "256m")
                .stdout(Stdio::from(log.try_clone().expect("clone a file handle")))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("failed to start build-support/kafka/broker");
            self.child = Some(child);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            loop {
                let (bootstrap, login) = (self.bootstrap(), self.admin_login());
                if tokio::task::spawn_blocking(move || {
                    broker_answers_as(&bootstrap, Duration::from_secs(1), login.as_ref())
                })
                .await
                .unwrap_or(false)
                {
                    return;
                }
                let exited = self
                    .child
                    .as_mut()
                    .and_then(|child| child.try_wait().ok().flatten());
                if let Some(status) = exited {
                    let said = std::fs::read_to_string(&output).unwrap_or_default();
                    let tail: Vec<&str> = said.lines().rev().take(20).collect();
                    eprintln!(
                        "the private broker on port {} exited while starting ({status}, try {attempt} of 3):\n{}",
                        self.port,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "timed out after 90 s waiting for the private broker on port {} to answer; see {}",
                    self.port,
                    self.data_dir.join("logs/server.log").display()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            self.child = None;
            self.controller_port = free_port();
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        panic!(
            "the private broker on port {} would not start; see {}",
            self.port,
            self.data_dir.join("logs/server.log").display()
        );
    }

    /// Kills the broker with SIGKILL (no clean shutdown, frozen or not) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the broker (SIGSTOP): its connections stay open and nothing
    /// answers, as in a network partition that drops packets. [`Self::thaw`]
    /// heals it.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Lets a frozen broker run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the broker is running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} of the broker failed");
    }

    /// Starts the broker again on the same ports and data directory.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// `127.0.0.1:port`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "the private broker's data and log are kept for the failed test: {}",
                self.data_dir.join("logs/server.log").display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// Whether a broker at `bootstrap` answers a metadata request within `patience`.
pub fn broker_answers(bootstrap: &str, patience: Duration) -> bool {
    broker_answers_as(bootstrap, patience, crate::kafka::login())
}

/// [`broker_answers`], logged in as `login` (name, password) over SASL/SCRAM-SHA-512.
pub fn broker_answers_as(
    bootstrap: &str,
    patience: Duration,
    login: Option<&(String, String)>,
) -> bool {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("log_level", "0");
    if let Some((username, password)) = login {
        scram_login(&mut config, username, password);
    }
    let Ok(consumer) = config.create::<BaseConsumer>() else {
        return false;
    };
    consumer
        .fetch_metadata(None, patience)
        .is_ok_and(|metadata| !metadata.brokers().is_empty())
}

/// Makes `config` log in as `username` over SASL/SCRAM-SHA-512, as the
/// services do with `KAFKA_SASL_*`.
pub fn scram_login<'a>(
    config: &'a mut ClientConfig,
    username: &str,
    password: &str,
) -> &'a mut ClientConfig {
    config
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanisms", "SCRAM-SHA-512")
        .set("sasl.username", username)
        .set("sasl.password", password)
}
