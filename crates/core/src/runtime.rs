//! The small tokio runtime beside Pingora's workers: admin listener, health probes, simulators.

/// Builds the control runtime (two workers: probes and admin never compete with the proxy's
/// own per-service runtimes).
pub fn control() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("okome-control")
        .enable_all()
        .build()
}

/// Resolves on Ctrl-C, or SIGTERM on Unix (what systemd sends): how the control plane, the
/// arbiter and the simulators know to stop.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
