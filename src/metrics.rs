//! The edge's Prometheus metrics. One registry per process, passed around (no globals).

use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// All collectors the edge updates.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Request accepted → first token written to the client.
    pub ttft: HistogramVec,
    /// Every gap between two tokens, as relayed.
    pub inter_token: HistogramVec,
    /// Per stream: standard deviation of its gaps.
    pub jitter: HistogramVec,
    /// Streams by outcome.
    pub streams: IntCounterVec,
    /// Tokens relayed.
    pub tokens: IntCounterVec,
    /// Requests this edge has in flight per backend.
    pub backend_inflight: IntGaugeVec,
    /// 1 when the backend passes health checks and is not ejected.
    pub backend_healthy: IntGaugeVec,
    /// The engine's own waiting queue (scraped).
    pub backend_queue_depth: IntGaugeVec,
    /// Passive ejections after live-traffic failures.
    pub backend_ejections: IntCounterVec,
    /// Attempts beyond the first, by reason.
    pub retries: IntCounterVec,
    /// Requests by route and final status.
    pub requests: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

const STREAM_LABELS: &[&str] = &["route", "pool", "backend", "model"];
const BACKEND_LABELS: &[&str] = &["pool", "backend"];

impl Metrics {
    /// Creates and registers every collector.
    pub fn new() -> Self {
        let registry = Registry::new();
        // Buckets: 1 ms .. ~65 s for TTFT, 0.5 ms .. ~16 s for gaps.
        let ttft = HistogramVec::new(
            HistogramOpts::new(
                "okome_ttft_seconds",
                "Request accepted to first token written to the client.",
            )
            .buckets(exponential_buckets(0.001, 2.0, 17).unwrap_or_default()),
            STREAM_LABELS,
        );
        let inter_token = HistogramVec::new(
            HistogramOpts::new(
                "okome_inter_token_seconds",
                "Gap between two consecutive tokens as relayed to the client.",
            )
            .buckets(exponential_buckets(0.0005, 2.0, 16).unwrap_or_default()),
            STREAM_LABELS,
        );
        let jitter = HistogramVec::new(
            HistogramOpts::new(
                "okome_stream_jitter_seconds",
                "Per stream: standard deviation of its inter-token gaps.",
            )
            .buckets(exponential_buckets(0.0001, 2.0, 16).unwrap_or_default()),
            STREAM_LABELS,
        );
        let streams = IntCounterVec::new(
            Opts::new(
                "okome_streams_total",
                "Token streams by outcome: completed, client_disconnect, upstream_error, timeout.",
            ),
            &["route", "pool", "outcome"],
        );
        let tokens = IntCounterVec::new(
            Opts::new("okome_tokens_total", "Tokens relayed to clients."),
            &["route", "pool", "model"],
        );
        let backend_inflight = IntGaugeVec::new(
            Opts::new(
                "okome_backend_inflight",
                "Requests this edge has in flight to the backend.",
            ),
            BACKEND_LABELS,
        );
        let backend_healthy = IntGaugeVec::new(
            Opts::new(
                "okome_backend_healthy",
                "1 when the backend passes its health check and is not ejected.",
            ),
            BACKEND_LABELS,
        );
        let backend_queue_depth = IntGaugeVec::new(
            Opts::new(
                "okome_backend_queue_depth",
                "Requests waiting in the engine's own queue (scraped from the engine).",
            ),
            BACKEND_LABELS,
        );
        let backend_ejections = IntCounterVec::new(
            Opts::new(
                "okome_backend_ejections_total",
                "Backends taken out of rotation after failures on live traffic.",
            ),
            BACKEND_LABELS,
        );
        let retries = IntCounterVec::new(
            Opts::new(
                "okome_upstream_retries_total",
                "Attempts beyond the first, before any byte reached the client.",
            ),
            &["route", "reason"],
        );
        let requests = IntCounterVec::new(
            Opts::new("okome_requests_total", "Requests by route and status."),
            &["route", "status"],
        );

        // Registration only fails on duplicate names or bad label names, both fixed at compile time here.
        let m = (|| -> prometheus::Result<Metrics> {
            let (ttft, inter_token, jitter) = (ttft?, inter_token?, jitter?);
            let (streams, tokens, requests, retries) = (streams?, tokens?, requests?, retries?);
            let (backend_inflight, backend_healthy, backend_queue_depth, backend_ejections) = (
                backend_inflight?,
                backend_healthy?,
                backend_queue_depth?,
                backend_ejections?,
            );
            registry.register(Box::new(ttft.clone()))?;
            registry.register(Box::new(inter_token.clone()))?;
            registry.register(Box::new(jitter.clone()))?;
            registry.register(Box::new(streams.clone()))?;
            registry.register(Box::new(tokens.clone()))?;
            registry.register(Box::new(backend_inflight.clone()))?;
            registry.register(Box::new(backend_healthy.clone()))?;
            registry.register(Box::new(backend_queue_depth.clone()))?;
            registry.register(Box::new(backend_ejections.clone()))?;
            registry.register(Box::new(retries.clone()))?;
            registry.register(Box::new(requests.clone()))?;
            Ok(Metrics {
                registry: registry.clone(),
                ttft,
                inter_token,
                jitter,
                streams,
                tokens,
                backend_inflight,
                backend_healthy,
                backend_queue_depth,
                backend_ejections,
                retries,
                requests,
            })
        })();
        #[allow(clippy::expect_used)]
        m.expect("metric definitions are static and valid")
    }

    /// Prometheus text exposition of everything.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
