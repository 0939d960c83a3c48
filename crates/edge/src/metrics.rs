//! The edge's Prometheus metrics. One registry per process, passed around (no globals).

pub use okome_core::metrics::{register_process_metrics, slo_buckets};

use prometheus::{
    exponential_buckets, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// TTFT: 5 ms to 10 s densely (thresholds at 0.5 s and 2 s), then up to 10 minutes of queueing.
pub fn ttft_buckets() -> Vec<f64> {
    slo_buckets(
        &[0.001, 0.0025],
        0.005,
        10.0,
        &[15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0],
    )
}

/// Inter-token gaps: 1 ms to 2.5 s densely (thresholds at 100 ms and 250 ms), then seconds.
pub fn gap_buckets() -> Vec<f64> {
    slo_buckets(&[0.00025, 0.0005], 0.001, 2.5, &[5.0, 10.0, 30.0, 60.0])
}

/// Per-stream jitter (std-dev of gaps): 0.1 ms to 1 s densely (threshold at 50 ms).
pub fn jitter_buckets() -> Vec<f64> {
    slo_buckets(&[0.00005], 0.0001, 1.0, &[2.5, 5.0, 10.0])
}

/// Whole-request duration: 1 ms (a refusal) to 10 minutes (a long generation).
pub fn duration_buckets() -> Vec<f64> {
    slo_buckets(&[0.0005], 0.001, 60.0, &[120.0, 300.0, 600.0, 1800.0])
}

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
    /// 1 while the backend's health probe fails but it keeps delivering responses.
    pub backend_busy: IntGaugeVec,
    /// The engine's own waiting queue (scraped).
    pub backend_queue_depth: IntGaugeVec,
    /// Passive ejections after live-traffic failures.
    pub backend_ejections: IntCounterVec,
    /// Attempts beyond the first, by reason.
    pub retries: IntCounterVec,
    /// Mid-stream failovers by route, reason and outcome.
    pub failover: IntCounterVec,
    /// Engine death → first continued token written to the client.
    pub failover_gap: HistogramVec,
    /// SSE keep-alive comments written during an engine's silence, per route.
    pub stream_keepalives: IntCounterVec,
    /// Retries not made because the pool's retry budget was spent.
    pub retry_budget_exhausted: IntCounterVec,
    /// Requests by route and final status.
    pub requests: IntCounterVec,
    /// Every request, streamed or not: accepted → last byte written (or refused).
    pub request_duration: HistogramVec,
    /// Response body bytes written to clients.
    pub response_bytes: IntCounterVec,
    /// Policy cache answers: hit, miss, stale, negative, error.
    pub policy_cache_requests: IntCounterVec,
    /// Calls to the control plane, by endpoint.
    pub control_request_seconds: HistogramVec,
    /// Version of the policy snapshot in use.
    pub policy_snapshot_version: prometheus::IntGauge,
    /// Failures to load or save the last known good policy in `state_dir`.
    pub policy_state_errors: IntCounterVec,
    /// Background tasks restarted after a panic or an unexpected end.
    pub task_restarts: IntCounterVec,
    /// Config reloads by result (`applied`, `rejected`, `needs_restart`).
    pub config_reloads: IntCounterVec,
    /// The config generation serving.
    pub config_version: prometheus::IntGauge,
    /// When each served certificate expires (Unix seconds), by listener and file.
    pub tls_cert_expiry: IntGaugeVec,
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
    /// Picks in pools with `sticky:`, by result (`hit`, `moved`, `no_key`).
    pub sticky_picks: IntCounterVec,
    /// Picks in pools with `pick: prefix_affinity`, by result (`hit`, `miss`, `overloaded`, `none`).
    pub affinity_picks: IntCounterVec,
    /// Prompt prefix bytes looked up (`kind="looked_up"`) and found on the picked backend
    /// (`kind="matched"`) in pools with `pick: prefix_affinity`.
    pub affinity_bytes: IntCounterVec,
    /// 1 while an arbiter's state is fresh enough to obey.
    pub arbiter_fresh: IntGaugeVec,
    /// The arbiter's decision per backend (0 ok, 1 pressured, 2 shedding, 3 down).
    pub backend_arbiter_state: IntGaugeVec,
    /// Lookups of pools' `HOST:PORT` backends: changed, unchanged, error.
    pub dns_resolutions: IntCounterVec,
    /// The shared limit store's: allowed on error, refusals by limit, errors, round trips.
    pub limits: okome_limits::StoreMetrics,
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
        let ttft = HistogramVec::new(
            HistogramOpts::new(
                "okome_ttft_seconds",
                "Request accepted to first token written to the client.",
            )
            .buckets(ttft_buckets()),
            STREAM_LABELS,
        );
        let inter_token = HistogramVec::new(
            HistogramOpts::new(
                "okome_inter_token_seconds",
                "Gap between two consecutive tokens as relayed to the client.",
            )
            .buckets(gap_buckets()),
            STREAM_LABELS,
        );
        let jitter = HistogramVec::new(
            HistogramOpts::new(
                "okome_stream_jitter_seconds",
                "Per stream: standard deviation of its inter-token gaps.",
            )
            .buckets(jitter_buckets()),
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
        let backend_busy = IntGaugeVec::new(
            Opts::new(
                "okome_backend_busy",
                "1 while the backend's health probe fails but it delivered response bytes within \
                 the probe window: busy, kept in rotation.",
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
        let failover = IntCounterVec::new(
            Opts::new(
                "okome_failover_total",
                "Streams whose engine died mid-stream on a route with mid_stream_failover, by why it died and what became of the stream.",
            ),
            &["route", "reason", "outcome"],
        );
        let failover_gap = HistogramVec::new(
            HistogramOpts::new(
                "okome_failover_gap_seconds",
                "Mid-stream failover: engine death noticed → first continued token written to the client.",
            )
            .buckets(duration_buckets()),
            &["route"],
        );
        let stream_keepalives = IntCounterVec::new(
            Opts::new(
                "okome_stream_keepalives_total",
                "SSE keep-alive comments written between events while the engine was silent (routes[].keepalive).",
            ),
            &["route"],
        );
        let retry_budget_exhausted = IntCounterVec::new(
            Opts::new(
                "okome_retry_budget_exhausted_total",
                "Failed attempts not retried because the pool's retry budget (retry.budget_ratio) was spent.",
            ),
            &["pool"],
        );
        let requests = IntCounterVec::new(
            Opts::new("okome_requests_total", "Requests by route and status."),
            &["route", "status"],
        );
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "okome_request_duration_seconds",
                "Every request, streamed or not: accepted to the last byte written, by route, pool and status class (2xx, 4xx, 5xx; 0 = the client left first).",
            )
            .buckets(duration_buckets()),
            &["route", "pool", "status_class"],
        );
        let response_bytes = IntCounterVec::new(
            Opts::new(
                "okome_response_bytes_total",
                "Response body bytes written to clients.",
            ),
            &["route", "pool"],
        );
        let policy_cache_requests = IntCounterVec::new(
            Opts::new(
                "okome_policy_cache_requests_total",
                "Key lookups in the policy cache: hit, miss, stale; negative (an unknown key, asked of the control plane), negative_hit (an unknown key answered from the cache); error.",
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
        let policy_state_errors = IntCounterVec::new(
            Opts::new(
                "okome_policy_state_errors_total",
                "Failures to load or save the last known good policy (snapshot, key hashes) in control.state_dir.",
            ),
            &["op"],
        );
        let task_restarts = IntCounterVec::new(
            Opts::new(
                "okome_task_restarts_total",
                "Background tasks (health probes, arbiter feeds, policy watch, key writer) restarted after a panic or an unexpected end.",
            ),
            &["task"],
        );
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "okome_config_reloads_total",
                "Config reloads (SIGHUP or a changed file) by result: applied, rejected (invalid; the old config keeps serving), needs_restart (a process setting changed; nothing applied).",
            ),
            &["result"],
        );
        let config_version = prometheus::IntGauge::new(
            "okome_config_version",
            "The config generation serving: 1 at start, +1 per applied reload.",
        );
        let tls_cert_expiry = IntGaugeVec::new(
            Opts::new(
                "okome_tls_certificate_expiry_timestamp_seconds",
                "When each certificate a TLS listener serves expires (Unix seconds; alert on it minus time()). Replaced by a reload.",
            ),
            &["listener", "cert", "names"],
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
        let sticky_picks = IntCounterVec::new(
            Opts::new(
                "okome_sticky_picks_total",
                "Backend picks in pools with sticky routing: hit (the key's own backend), moved (the next on the ring: the key's own was out), no_key (no key in the request: least loaded).",
            ),
            &["pool", "result"],
        );
        let affinity_picks = IntCounterVec::new(
            Opts::new(
                "okome_prefix_affinity_picks_total",
                "Backend picks in pools with pick: prefix_affinity: hit (the backend that served the longest prefix of the prompt), miss (no backend served any of it: least loaded), overloaded (the best-matching backends were over the load bound: least loaded among the others), none (no whole block of prompt to match: least loaded).",
            ),
            &["pool", "result"],
        );
        let affinity_bytes = IntCounterVec::new(
            Opts::new(
                "okome_prefix_affinity_bytes_total",
                "Rendered prompt-prefix bytes in pools with pick: prefix_affinity: looked_up (whole blocks hashed), matched (of those, the prefix the picked backend had served before).",
            ),
            &["pool", "kind"],
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
        let dns_resolutions = IntCounterVec::new(
            Opts::new(
                "okome_dns_resolutions_total",
                "Lookups of pools' HOST:PORT backends by result: changed (a new address set, applied as a new generation), unchanged, error (the last good addresses keep serving).",
            ),
            &["pool", "result"],
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
            let request_duration = reg(r, request_duration)?;
            let retry_budget_exhausted = reg(r, retry_budget_exhausted)?;
            let failover = reg(r, failover)?;
            let failover_gap = reg(r, failover_gap)?;
            let stream_keepalives = reg(r, stream_keepalives)?;
            let response_bytes = reg(r, response_bytes)?;
            let backend_inflight = reg(r, backend_inflight)?;
            let backend_healthy = reg(r, backend_healthy)?;
            let backend_busy = reg(r, backend_busy)?;
            let backend_queue_depth = reg(r, backend_queue_depth)?;
            let backend_ejections = reg(r, backend_ejections)?;
            let policy_cache_requests = reg(r, policy_cache_requests)?;
            let control_request_seconds = reg(r, control_request_seconds)?;
            let policy_snapshot_version = reg(r, policy_snapshot_version)?;
            let policy_state_errors = reg(r, policy_state_errors)?;
            let task_restarts = reg(r, task_restarts)?;
            let config_reloads = reg(r, config_reloads)?;
            let config_version = reg(r, config_version)?;
            let tls_cert_expiry = reg(r, tls_cert_expiry)?;
            let policy_snapshot_age_seconds = reg(r, policy_snapshot_age_seconds)?;
            let tenant_tokens = reg(r, tenant_tokens)?;
            let shed = reg(r, shed)?;
            let sticky_picks = reg(r, sticky_picks)?;
            let affinity_picks = reg(r, affinity_picks)?;
            let affinity_bytes = reg(r, affinity_bytes)?;
            let backend_prefix_queries = reg(r, backend_prefix_queries)?;
            let backend_prefix_hits = reg(r, backend_prefix_hits)?;
            let arbiter_fresh = reg(r, arbiter_fresh)?;
            let backend_arbiter_state = reg(r, backend_arbiter_state)?;
            let dns_resolutions = reg(r, dns_resolutions)?;
            let limits = okome_limits::StoreMetrics::new()?;
            r.register(Box::new(limits.allowed_on_error.clone()))?;
            r.register(Box::new(limits.refused.clone()))?;
            r.register(Box::new(limits.errors.clone()))?;
            r.register(Box::new(limits.latency.clone()))?;
            limits.init_series();
            Ok(Metrics {
                registry: registry.clone(),
                ttft,
                inter_token,
                jitter,
                streams,
                tokens,
                backend_inflight,
                backend_healthy,
                backend_busy,
                backend_queue_depth,
                backend_ejections,
                retries,
                failover,
                failover_gap,
                stream_keepalives,
                retry_budget_exhausted,
                requests,
                request_duration,
                response_bytes,
                policy_cache_requests,
                control_request_seconds,
                policy_snapshot_version,
                policy_state_errors,
                task_restarts,
                config_reloads,
                config_version,
                tls_cert_expiry,
                policy_snapshot_age_seconds,
                tenant_tokens,
                shed,
                sticky_picks,
                affinity_picks,
                affinity_bytes,
                backend_prefix_queries,
                backend_prefix_hits,
                arbiter_fresh,
                backend_arbiter_state,
                dns_resolutions,
                limits,
            })
        })();
        #[allow(clippy::expect_used)]
        let m = m.expect("metric definitions are static and valid");
        register_process_metrics(&m.registry);
        m
    }

    /// Publishes the expiry of every certificate the listeners serve now (old series dropped).
    pub fn set_certificates(&self, listeners: &[crate::config::compile::CompiledListener]) {
        self.tls_cert_expiry.reset();
        for l in listeners {
            let Some(tls) = &l.tls else { continue };
            let listener = l.address.to_string();
            for (path, names, not_after) in &tls.certs.loaded {
                self.tls_cert_expiry
                    .with_label_values(&[
                        listener.as_str(),
                        &path.display().to_string(),
                        &names.join(" "),
                    ])
                    .set(*not_after);
            }
        }
    }

    /// Creates a failover route's series at 0: every reason × outcome, and the gap histogram.
    pub fn init_failover_series(&self, route: &str) {
        for reason in ["reset", "eof", "idle", "in_band_error"] {
            for outcome in ["continued", "failed", "not_eligible"] {
                self.failover.with_label_values(&[route, reason, outcome]);
            }
        }
        self.failover_gap.with_label_values(&[route]);
    }

    /// Creates every series whose labels are known up front at 0, so dashboards, `rate()` and
    /// `absent()` see them before the first event: per route and pool the stream outcomes, tokens,
    /// request durations and bytes; per route the statuses and retry reasons; per backend the
    /// ejections; shed reasons × priorities; policy cache results. Bounded: routes × pools.
    pub fn init_series(&self, routes: &[(&str, Vec<&str>)], backends: &[(&str, &str)]) {
        for result in ["applied", "rejected", "needs_restart"] {
            self.config_reloads.with_label_values(&[result]);
        }
        const OUTCOMES: [&str; 5] = [
            "completed",
            "client_disconnect",
            "upstream_error",
            "timeout",
            "shutdown",
        ];
        const STATUSES: [&str; 10] = [
            "200", "400", "401", "403", "404", "413", "429", "502", "503", "504",
        ];
        const RETRY_REASONS: [&str; 4] = ["connect", "upstream_error", "status_502", "status_503"];
        // The arbiter's rules (`arbiter::rules::Rule`), as the edge labels a shed request.
        const SHED_REASONS: [&str; 6] = [
            "queue_depth",
            "kv_cache",
            "gpu_headroom",
            "over_budget",
            "health",
            "none",
        ];
        for (route, pools) in routes {
            for s in STATUSES {
                self.requests.with_label_values(&[route, s]);
            }
            for r in RETRY_REASONS {
                self.retries.with_label_values(&[route, r]);
            }
            // Refusals before a pool is chosen are counted under pool "".
            for pool in pools.iter().copied().chain(std::iter::once("")) {
                for o in OUTCOMES {
                    self.streams.with_label_values(&[route, pool, o]);
                }
                for c in ["2xx", "4xx", "5xx"] {
                    self.request_duration.with_label_values(&[route, pool, c]);
                }
                self.response_bytes.with_label_values(&[route, pool]);
                self.tokens.with_label_values(&[route, pool, "other"]);
            }
        }
        for (pool, backend) in backends {
            self.backend_ejections.with_label_values(&[pool, backend]);
            self.retry_budget_exhausted.with_label_values(&[pool]);
        }
        for reason in SHED_REASONS {
            for p in ["critical", "standard", "sheddable"] {
                self.shed.with_label_values(&[reason, p]);
            }
        }
        for r in ["hit", "miss", "stale", "negative", "negative_hit", "error"] {
            self.policy_cache_requests.with_label_values(&[r]);
        }
        for op in ["load", "save"] {
            self.policy_state_errors.with_label_values(&[op]);
        }
    }

    /// The registry, for collectors kept elsewhere (e.g. the resumable streams').
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of everything.
    pub fn render(&self) -> Vec<u8> {
        okome_core::metrics::render(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
