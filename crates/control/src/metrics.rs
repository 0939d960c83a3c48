//! The control plane's Prometheus metrics; one registry per store, passed around (no globals).

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

/// Every collector the control plane updates.
#[derive(Clone)]
pub struct ControlMetrics {
    registry: Registry,
    /// API requests by endpoint (`snapshot`, `keys`, `healthz`, `metrics`) and HTTP status.
    pub requests: IntCounterVec,
    /// The version currently served.
    pub snapshot_version: IntGauge,
    /// Reloads of the policy files by result (`ok`, `rejected`).
    pub reloads: IntCounterVec,
}

impl std::fmt::Debug for ControlMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlMetrics")
    }
}

impl ControlMetrics {
    /// Creates and registers every collector.
    pub fn new() -> Self {
        let registry = Registry::new();
        // Registration only fails on duplicate names or bad label names, both fixed at compile time here.
        let m = (|| -> prometheus::Result<ControlMetrics> {
            let requests = IntCounterVec::new(
                Opts::new(
                    "okome_control_requests_total",
                    "Control API requests by endpoint and status.",
                ),
                &["endpoint", "status"],
            )?;
            let snapshot_version = IntGauge::new(
                "okome_control_snapshot_version",
                "Version of the policy snapshot being served.",
            )?;
            let reloads = IntCounterVec::new(
                Opts::new(
                    "okome_control_reloads_total",
                    "Reloads of control.yaml and its keys file, by result (ok, rejected).",
                ),
                &["result"],
            )?;
            registry.register(Box::new(requests.clone()))?;
            registry.register(Box::new(snapshot_version.clone()))?;
            registry.register(Box::new(reloads.clone()))?;
            okome_core::metrics::register_process_metrics(&registry);
            // Both results exist from the start, so a dashboard's rate() sees the first rejection.
            reloads.with_label_values(&["ok"]);
            reloads.with_label_values(&["rejected"]);
            Ok(ControlMetrics {
                registry: registry.clone(),
                requests,
                snapshot_version,
                reloads,
            })
        })();
        #[allow(clippy::expect_used)]
        m.expect("metric definitions are static and valid")
    }

    /// Prometheus text exposition of everything.
    pub fn render(&self) -> Vec<u8> {
        okome_core::metrics::render(&self.registry)
    }
}

impl Default for ControlMetrics {
    fn default() -> Self {
        Self::new()
    }
}
