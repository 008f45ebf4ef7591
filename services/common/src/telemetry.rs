//! Logging set-up: JSON lines by default (`LOG_FORMAT=pretty` for humans),
//! level from `RUST_LOG` or `LOG_LEVEL` (default `info`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps telemetry alive; dropping it flushes what is buffered.
#[must_use = "telemetry is flushed when the guard is dropped"]
pub struct TelemetryGuard {
    _private: (),
}

fn env_filter() -> EnvFilter {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.trim().is_empty())
        .or_else(|| {
            std::env::var("LOG_LEVEL")
                .ok()
                .map(|level| level.to_lowercase())
        })
        .filter(|value| !value.trim().is_empty())
        .unwrap_or_else(|| "info".to_owned());
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber for `service_name`. Call once, at start.
pub fn init(service_name: &'static str) -> TelemetryGuard {
    let pretty =
        std::env::var("LOG_FORMAT").is_ok_and(|format| format.eq_ignore_ascii_case("pretty"));
    let registry = tracing_subscriber::registry().with(env_filter());
    let result = if pretty {
        registry.with(tracing_subscriber::fmt::layer()).try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()
    };
    if result.is_ok() {
        tracing::info!(service = service_name, "telemetry initialised");
    }
    TelemetryGuard { _private: () }
}

/// Installs a subscriber for tests: silent unless `TEST_LOG` is set.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::registry()
            .with(env_filter())
            .with(tracing_subscriber::fmt::layer().with_test_writer())
            .try_init();
    }
}
