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
    /// Policy cache answers: hit, miss, stale, negative, error.
    pub policy_cache_requests: IntCounterVec,
    /// Calls to the control plane, by endpoint.
    pub control_request_seconds: HistogramVec,
    /// Version of the policy snapshot in use.
    pub policy_snapshot_version: prometheus::IntGauge,
    /// Seconds since that snapshot was published.
    pub policy_snapshot_age_seconds: prometheus::Gauge,
    /// Tokens charged to each tenant (settled counts).
    pub tenant_tokens: IntCounterVec,
    /// vLLM prefix-cache queries (tokens), re-exported from the engine's `/metrics`.
    pub backend_prefix_queries: IntCounterVec,
    /// vLLM prefix-cache hits (tokens), re-exported from the engine's `/metrics`.
    pub backend_prefix_hits: IntCounterVec,
    /// Requests refused because the arbiter said the backends are saturated.
    pub shed: IntCounterVec,
    /// 1 while an arbiter's state is fresh enough to obey.
    pub arbiter_fresh: IntGaugeVec,
    /// The arbiter's decision per backend (0 ok, 1 pressured, 2 shedding, 3 down).
    pub backend_arbiter_state: IntGaugeVec,
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
        let policy_cache_requests = IntCounterVec::new(
            Opts::new(
                "okome_policy_cache_requests_total",
                "Key lookups in the policy cache: hit, miss, stale, negative, error.",
            ),
            &["result"],
        );
        let control_request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "okome_control_request_seconds",
                "Calls from this edge to the control plane.",
            )
            .buckets(exponential_buckets(0.0005, 2.0, 18).unwrap_or_default()),
            &["endpoint"],
        );
        let policy_snapshot_version = prometheus::IntGauge::new(
            "okome_policy_snapshot_version",
            "Version of the policy snapshot in use.",
        );
        let policy_snapshot_age_seconds = prometheus::Gauge::new(
            "okome_policy_snapshot_age_seconds",
            "Seconds since the policy snapshot in use was published.",
        );
        let backend_prefix_queries = IntCounterVec::new(
            Opts::new(
                "okome_backend_prefix_cache_queries_total",
                "vLLM prefix cache queries in tokens, scraped from the engine (vllm:prefix_cache_queries_total).",
            ),
            BACKEND_LABELS,
        );
        let backend_prefix_hits = IntCounterVec::new(
            Opts::new(
                "okome_backend_prefix_cache_hits_total",
                "vLLM prefix cache hits in tokens, scraped from the engine (vllm:prefix_cache_hits_total).",
            ),
            BACKEND_LABELS,
        );
        let shed = IntCounterVec::new(
            Opts::new(
                "okome_shed_total",
                "Requests answered 503 because every eligible backend was shedding, by the arbiter's rule and the tenant's priority.",
            ),
            &["reason", "priority"],
        );
        let arbiter_fresh = IntGaugeVec::new(
            Opts::new("okome_arbiter_fresh", "1 while the arbiter's state is fresh enough to obey; 0 means the edge routes on its own signals."),
            &["arbiter"],
        );
        let backend_arbiter_state = IntGaugeVec::new(
            Opts::new(
                "okome_backend_arbiter_state",
                "The arbiter's decision per backend: 0 ok, 1 pressured, 2 shedding, 3 down.",
            ),
            BACKEND_LABELS,
        );
        let tenant_tokens = IntCounterVec::new(
            Opts::new(
                "okome_tenant_tokens_total",
                "Tokens charged to tenants (the real counts, settled at the end of each stream).",
            ),
            &["tenant"],
        );

        // Registration only fails on duplicate names or bad label names, both fixed at compile time here.
        let m = (|| -> prometheus::Result<Metrics> {
            // Registers a collector and hands it back, so each metric is named once below.
            fn reg<C: prometheus::core::Collector + Clone + 'static>(
                r: &Registry,
                c: prometheus::Result<C>,
            ) -> prometheus::Result<C> {
                let c = c?;
                r.register(Box::new(c.clone()))?;
                Ok(c)
            }
            let r = &registry;
            let (ttft, inter_token, jitter) =
                (reg(r, ttft)?, reg(r, inter_token)?, reg(r, jitter)?);
            let (streams, tokens, requests, retries) = (
                reg(r, streams)?,
                reg(r, tokens)?,
                reg(r, requests)?,
                reg(r, retries)?,
            );
            let backend_inflight = reg(r, backend_inflight)?;
            let backend_healthy = reg(r, backend_healthy)?;
            let backend_queue_depth = reg(r, backend_queue_depth)?;
            let backend_ejections = reg(r, backend_ejections)?;
            let policy_cache_requests = reg(r, policy_cache_requests)?;
            let control_request_seconds = reg(r, control_request_seconds)?;
            let policy_snapshot_version = reg(r, policy_snapshot_version)?;
            let policy_snapshot_age_seconds = reg(r, policy_snapshot_age_seconds)?;
            let tenant_tokens = reg(r, tenant_tokens)?;
            let shed = reg(r, shed)?;
            let backend_prefix_queries = reg(r, backend_prefix_queries)?;
            let backend_prefix_hits = reg(r, backend_prefix_hits)?;
            let arbiter_fresh = reg(r, arbiter_fresh)?;
            let backend_arbiter_state = reg(r, backend_arbiter_state)?;
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
                policy_cache_requests,
                control_request_seconds,
                policy_snapshot_version,
                policy_snapshot_age_seconds,
                tenant_tokens,
                shed,
                backend_prefix_queries,
                backend_prefix_hits,
                arbiter_fresh,
                backend_arbiter_state,
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
