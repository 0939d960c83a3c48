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
