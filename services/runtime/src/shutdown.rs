//! The shutdown signal: SIGINT (Ctrl-C) or SIGTERM cancel a
//! `CancellationToken` that every task of a service watches.

pub use tokio_util::sync::CancellationToken;

/// Resolves when the process receives SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "failed to listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "failed to listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received sigint, shutting down"),
        () = terminate => tracing::info!("received sigterm, shutting down"),
    }
}

/// A token that is cancelled when the process receives SIGINT or SIGTERM.
pub fn token_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        signal().await;
        child.cancel();
    });
    token
}

/// Runs `work` (a service starting: connecting, migrating, binding) unless
/// `shutdown` comes first, in which case it is dropped and `None` returned: a
/// signal during a long start (a database still down) stops the process at once.
pub async fn unless_stopped<T>(
    shutdown: &CancellationToken,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<Option<T>> {
    tokio::select! {
        () = shutdown.cancelled() => {
            tracing::info!("stopped while starting");
            Ok(None)
        }
        done = work => done.map(Some),
    }
}
