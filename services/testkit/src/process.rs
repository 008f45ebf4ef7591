//! A service binary run as a real process by a test: started with the
//! environment the test gives it, its output in a log file (or inherited with
//! `TEST_LOG`), stopped with SIGTERM and a bounded wait, and killed if still
//! running when dropped, so a failing test leaves no process behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a SIGTERMed service may take to exit.
const STOP_PATIENCE: Duration = Duration::from_secs(30);

/// A running service process.
pub struct ServiceProcess {
    /// The service's name, for failure messages.
    pub name: String,
    /// The process.
    pub child: Child,
    /// Where its output goes (None: inherited or discarded).
    pub log: Option<PathBuf>,
}

impl ServiceProcess {
    /// Starts `binary` with `env`, writing its output to `log` when given;
    /// otherwise inherited with `TEST_LOG` set, discarded without.
    pub fn start(binary: &Path, env: &[(&str, String)], log: Option<PathBuf>) -> Self {
        let name = binary.file_name().map_or_else(
            || binary.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        );
        let (stdout, stderr) = match &log {
            Some(path) => {
                let file = std::fs::File::create(path)
                    .unwrap_or_else(|error| panic!("create the log {}: {error}", path.display()));
                (
                    Stdio::from(file.try_clone().expect("clone the log file")),
                    Stdio::from(file),
                )
            }
            None if std::env::var_os("TEST_LOG").is_some() => (Stdio::inherit(), Stdio::inherit()),
            None => (Stdio::null(), Stdio::null()),
        };
        let child = Command::new(binary)
            .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| panic!("failed to start {}: {error}", binary.display()));
        Self { name, child, log }
    }

    /// Where the failure messages send the reader.
    fn log_hint(&self) -> String {
        self.log.as_ref().map_or_else(
            || "run with TEST_LOG=1 to see its output".to_owned(),
            |log| format!("log: {}", log.display()),
        )
    }

    /// Panics, naming the service, if it exited on its own.
    pub fn assert_running(&mut self) {
        if let Some(exit) = self.child.try_wait().expect("poll the child") {
            panic!(
                "{} exited on its own with {exit}; {}",
                self.name,
                self.log_hint()
            );
        }
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit.
    pub fn terminate(mut self) {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "SIGTERM to {} failed", self.name);
        let deadline = std::time::Instant::now() + STOP_PATIENCE;
        loop {
            if let Some(exit) = self.child.try_wait().expect("poll the child") {
                assert!(
                    exit.success(),
                    "{} exited with {exit} on SIGTERM; {}",
                    self.name,
                    self.log_hint()
                );
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not stop within {STOP_PATIENCE:?} of SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
