//! The stream plane: a Pingora proxy that routes LLM requests to engine pools and relays token
//! streams chunk by chunk.
//!
//! One file per proxy phase: [`request`] (head checks, route, header filters, body, body
//! filters), [`peer`] (backend for each attempt), [`body`] (replaying the pre-read body),
//! [`upstream_request`] (what the engine is sent: credentials stripped, framing normalised,
//! [`forwarded`] client address),
//! [`response`] (retry on 502/503, stream tap), [`failure`] (retry policy, errors in the
//! client's shape), [`logging`] (metrics, access log). What a route exposes is [`surface`];
//! reading the body's model is [`peek`].

pub mod access_log;
pub mod body;
pub mod connections;
pub mod ctx;
pub mod drain;
pub mod embedded;
pub mod failure;
pub mod forwarded;
pub mod listing;
pub mod logging;
pub mod peek;
pub mod peer;
pub mod prompt;
pub mod proxy;
pub mod reload;
pub mod request;
pub mod respond;
pub mod response;
pub mod retry;
pub mod routes;
pub mod series;
pub mod server;
pub mod surface;
pub mod upstream_request;

use crate::config::{compile::CompiledEdge, Timeouts};
use crate::metrics::Metrics;
use crate::upstream::arbiter::{ArbiterFeeds, Verdict};
use crate::upstream::{select, Upstreams};
use bytes::Bytes;
use ctx::RequestCtx;
use okome_filters::policy::Priority;
use routes::RouteTable;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The proxy's shared, read-mostly state.
#[derive(Debug)]
pub struct Edge {
    /// Pools and backends.
    pub upstreams: Arc<Upstreams>,
    /// Compiled routes.
    pub routes: RouteTable,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Upstream timeouts.
    pub timeouts: Timeouts,
    /// Attempts per request.
    pub max_attempts: u32,
    /// Largest body routed.
    pub max_body: u64,
    /// Largest request head.
    pub max_header_bytes: u64,
    /// Requests run at once.
    pub max_requests: Option<u64>,
    /// The arbiters' decisions, when the config names arbiters.
    pub arbiters: Option<Arc<ArbiterFeeds>>,
    /// Start a W3C trace for requests that come without a `traceparent`.
    pub generate_traceparent: bool,
    /// Where each request's record goes (shared by every config generation).
    pub access_log: Arc<access_log::AccessLog>,
    /// The config generation this edge was built from (1 at start, +1 per reload).
    pub version: u64,
    /// The process's drain state (shared by every generation).
    pub drain: Arc<drain::Drain>,
    /// The listeners' connection caps (shared by every generation).
    pub connections: Arc<connections::ConnectionLimits>,
    /// Peers whose `X-Forwarded-For` is believed (`trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The series every request updates, resolved once per label combination.
    pub series: series::RequestSeries,
    /// The resumable streams this node holds (shared by every generation).
    pub streams: Arc<crate::resume::Streams>,
}

/// Label values of a stream's metrics.
#[derive(Debug)]
pub struct StreamLabels<'a> {
    /// Route name.
    pub route: &'a str,
    /// Pool name.
    pub pool: &'a str,
    /// Backend id.
    pub backend: &'a str,
    /// Model, or `other` when not a known model (bounded cardinality).
    pub model: &'a str,
}

impl StreamLabels<'_> {
    /// As a label slice, in the order of the metric definitions.
    pub fn as_refs(&self) -> [&str; 4] {
        [self.route, self.pool, self.backend, self.model]
    }
}

/// OpenAI's model object: `{"id", "object": "model", "created", "owned_by"}`.
fn model_json(id: &str, owned_by: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": owned_by})
}

/// What every config generation of the edge shares with the next: the process's own state.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Metrics registry.
    pub metrics: Metrics,
    /// The filters' policy cache and rate counters.
    pub env: okome_filters::FilterEnv,
    /// Where each request's record goes.
    pub access_log: Arc<access_log::AccessLog>,
    /// The arbiters' decisions, when the config names arbiters.
    pub arbiters: Option<Arc<ArbiterFeeds>>,
    /// The drain state.
    pub drain: Arc<drain::Drain>,
    /// The listeners' connection caps.
    pub connections: Arc<connections::ConnectionLimits>,
    /// What each TLS listener serves, by listener index (`None`: plaintext); a reload swaps
    /// the certificates in place.
    pub certs: Vec<Option<crate::tls::Served>>,
    /// The resumable streams this node holds.
    pub streams: Arc<crate::resume::Streams>,
}

impl Edge {
    /// Builds config generation `version` of the proxy state from a compiled config (cannot
    /// fail: compile checked it all) over the process's shared state.
    pub fn new(
        cfg: &CompiledEdge,
        upstreams: Arc<Upstreams>,
        shared: &Shared,
        version: u64,
    ) -> Self {
        let routes = RouteTable::new(&cfg.routes, &upstreams, &shared.env);
        Edge {
            series: series::RequestSeries::new(routes.routes.len(), upstreams.pools.len()),
            routes,
            upstreams,
            metrics: shared.metrics.clone(),
            timeouts: cfg.timeouts,
            max_attempts: cfg.retry.max_attempts,
            max_body: cfg.max_body,
            max_header_bytes: cfg.max_header_bytes,
            max_requests: cfg.max_requests,
            arbiters: shared.arbiters.clone(),
            generate_traceparent: cfg.tracing.generate_traceparent,
            access_log: shared.access_log.clone(),
            version,
            drain: shared.drain.clone(),
            connections: shared.connections.clone(),
            trusted_proxies: cfg.trusted_proxies.clone(),
            streams: {
                shared.streams.set_budget(cfg.resumable_budget);
                shared.streams.clone()
            },
        }
    }

    /// Asks the retry core whether the failed attempt is retried; a retry spends one of the
    /// failing pool's budget. Records the failure for the retry metric.
    pub fn retry_after_failure(
        &self,
        ctx: &mut RequestCtx,
        failure: retry::Failure,
        response_started: bool,
    ) -> bool {
        ctx.attempt.last_failure = Some(failure);
        let pool = ctx.attempt.current.map(|(pi, _)| &self.upstreams.pools[pi]);
        let attempt = retry::Attempt {
            made: ctx.attempt.made,
            max_attempts: self.max_attempts,
            response_started,
            alternative: self.has_alternative(ctx),
            budget: pool.is_none_or(|p| p.retry_budget.available()),
        };
        match retry::decide(failure, attempt) {
            retry::Decision::Retry => pool.is_none_or(|p| p.retry_budget.spend()),
            retry::Decision::Stop(stop) => {
                if stop == retry::Stop::BudgetExhausted {
                    if let Some(p) = pool {
                        self.metrics
                            .retry_budget_exhausted
                            .with_label_values(&[&p.name])
                            .inc();
                    }
                }
                false
            }
        }
    }

    /// Whether another attempt could find a backend (this pool or a later one in the plan).
    pub fn has_alternative(&self, ctx: &RequestCtx) -> bool {
        ctx.attempt
            .plan
            .iter()
            .skip(ctx.attempt.plan_pos)
            .any(|&pi| {
                let pool = &self.upstreams.pools[pi];
                select::any(&pool.backends, |b| self.skip(ctx, pi, b))
            })
    }

    /// The priority class of the request (its tenant's, `standard` without one).
    pub fn priority(ctx: &RequestCtx) -> Priority {
        ctx.effects
            .tenant
            .as_ref()
            .map_or(Priority::Standard, |t| t.priority)
    }

    /// The arbiter's refusal of backend `b` of pool `pi` for this request, if it refuses it.
    pub fn arbiter_refusal(&self, ctx: &RequestCtx, pi: usize, b: usize) -> Option<Arc<Verdict>> {
        let feeds = self.arbiters.as_ref()?;
        feeds
            .verdict(&self.upstreams.pools[pi].backends[b])
            .filter(|v| !v.admits(Self::priority(ctx)))
    }

    /// Whether backend `b` of pool `pi` is out for this request: tried already, or refused by
    /// the arbiter for the request's priority.
    pub fn skip(&self, ctx: &RequestCtx, pi: usize, b: usize) -> bool {
        ctx.attempt.tried.contains(&(pi, b)) || self.arbiter_refusal(ctx, pi, b).is_some()
    }

    /// Labels for the request's stream metrics.
    pub fn stream_labels<'a>(&'a self, ctx: &'a RequestCtx) -> StreamLabels<'a> {
        let route = ctx
            .req
            .route
            .map_or("none", |r| self.routes.routes[r].name.as_str());
        let (pool, backend) = match ctx.attempt.current {
            Some((pi, bi)) => {
                let p = &self.upstreams.pools[pi];
                (p.name.as_str(), p.backends[bi].id.as_str())
            }
            None => ("", ""),
        };
        let model = match (ctx.req.model.as_deref(), ctx.attempt.current) {
            (Some(m), Some((pi, _))) if self.upstreams.pools[pi].serves(m) => m,
            _ => "other",
        };
        StreamLabels {
            route,
            pool,
            backend,
            model,
        }
    }

    /// Every model any pool serves, sorted.
    pub fn known_models(&self) -> Vec<String> {
        let mut all = BTreeSet::new();
        for p in &self.upstreams.pools {
            all.extend(p.models());
        }
        all.into_iter().collect()
    }

    /// OpenAI's model object for `id` when one of `pools` serves it.
    pub fn model_object(&self, pools: &[usize], id: &str) -> Option<Bytes> {
        let p = pools
            .iter()
            .map(|&i| &self.upstreams.pools[i])
            .find(|p| p.speaks(crate::api::Api::OpenAi) && p.serves(id))?;
        Some(Bytes::from(model_json(id, &p.name).to_string()))
    }

    /// `GET /v1/models` answered from the models of `pools` that `allowed` lets through
    /// (OpenAI list shape), each model once.
    pub fn models_list_body(&self, pools: &[usize], allowed: impl Fn(&str) -> bool) -> Bytes {
        let mut data = Vec::new();
        let mut seen = BTreeSet::new();
        for p in pools
            .iter()
            .map(|&i| &self.upstreams.pools[i])
            .filter(|p| p.speaks(crate::api::Api::OpenAi))
        {
            for m in p.models() {
                if allowed(&m) && seen.insert(m.clone()) {
                    data.push(model_json(&m, &p.name));
                }
            }
        }
        Bytes::from(serde_json::json!({"object": "list", "data": data}).to_string())
    }
}
