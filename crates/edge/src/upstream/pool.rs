//! Pools of backends and the models they serve.

use super::dns::Resolved;
use super::Backend;
use crate::config::compile::{BackendSpec, CompiledEdge, CompiledPool};
use crate::config::{self, PoolKind};
use arc_swap::ArcSwap;
use std::collections::BTreeSet;
use std::sync::Arc;

/// Interchangeable backends of one kind.
#[derive(Debug)]
pub struct Pool {
    /// Name from the config.
    pub name: String,
    /// Engine kind.
    pub kind: PoolKind,
    /// Its backends, in config order; a name's addresses (sorted) where the name is listed.
    pub backends: Vec<Arc<Backend>>,
    /// Its `HOST:PORT` backends, in config order (resolved again every `resolve_every`).
    pub names: Vec<(String, u16)>,
    /// How often its names are resolved again.
    pub resolve_every: std::time::Duration,
    /// Models named in the config (never replaced by discovery).
    pub static_models: Vec<String>,
    learned: ArcSwap<BTreeSet<String>>,
    /// Health check settings.
    pub health: config::HealthCheck,
    /// Passive ejection settings.
    pub ejection: config::Ejection,
    /// `Authorization` for this pool's engines (its `api_key`), on requests and probes.
    pub auth: Option<http::HeaderValue>,
    /// Retries this pool may still cause.
    pub retry_budget: crate::edge::retry::RetryBudget,
    /// TLS to the backends (requests and probes).
    pub tls: Option<Arc<crate::config::tls::UpstreamTls>>,
    /// Where each backend is probed (`http://IP:PORT`, in backend order): its own address, or
    /// its host at `health_check.port` (an okome node's admin listener).
    pub probe_bases: Vec<String>,
    /// TF Serving's gRPC port on each backend's host (`grpc_port`); `None`: no gRPC here.
    pub grpc_port: Option<u16>,
    /// The consistent-hash ring over all backends, when the pool is sticky.
    pub sticky: Option<super::hash::Sticky>,
    /// The prefix table, when the pool picks by prefix affinity.
    pub affinity: Option<Arc<super::affinity::Affinity>>,
}

impl Pool {
    /// Builds a pool from its compiled config, its names as `resolved` (a name not resolved
    /// yet gives no backend); an address listed twice (a literal and a name, or two names) is
    /// one backend, the first. Backends of `old` (the pool of the same name in the generation
    /// before) at the same address and from the same name are kept with their live state
    /// (health, in-flight, ejection), and so are its learned models when the engine kind is
    /// the same.
    pub fn new(
        cfg: &CompiledPool,
        retry: &config::Retry,
        metrics: &crate::metrics::Metrics,
        old: Option<&Pool>,
        resolved: &Resolved,
    ) -> Self {
        let mut addrs: Vec<(std::net::SocketAddr, Option<&str>)> = Vec::new();
        for spec in &cfg.backends {
            let found: Vec<_> = match spec {
                BackendSpec::Addr(a) => vec![(*a, None)],
                BackendSpec::Name { host, port } => resolved
                    .addrs(&cfg.name, host, *port)
                    .iter()
                    .map(|a| (*a, Some(host.as_str())))
                    .collect(),
            };
            for (a, name) in found {
                if !addrs.iter().any(|(b, _)| *b == a) {
                    addrs.push((a, name));
                }
            }
        }
        let backends: Vec<Arc<Backend>> = addrs
            .into_iter()
            .map(|(addr, name)| {
                old.and_then(|o| {
                    o.backends
                        .iter()
                        .find(|b| b.addr == addr && b.name.as_deref() == name)
                })
                .cloned()
                .unwrap_or_else(|| {
                    Arc::new(
                        Backend::new(&cfg.name, addr, metrics.clone())
                            .with_name(name.map(str::to_owned)),
                    )
                })
            })
            .collect();
        // Per generation, not per backend: a reload may change the probe port or TLS. A probe
        // of the backend's own port speaks the pool's TLS; one of `health_check.port` (an
        // okome node's admin listener) is plain HTTP.
        let probe_bases = backends
            .iter()
            .map(|b| match cfg.probe_port {
                Some(port) => format!("http://{}", std::net::SocketAddr::new(b.addr.ip(), port)),
                None if cfg.tls.is_some() => format!("https://{}", b.addr),
                None => format!("http://{}", b.addr),
            })
            .collect();
        let sticky = (!cfg.sticky.is_empty()).then(|| {
            let addrs: Vec<std::net::SocketAddr> = backends.iter().map(|b| b.addr).collect();
            super::hash::Sticky::new(cfg.sticky.clone(), &addrs).counted(metrics, &cfg.name)
        });
        // The table names backends by position: it survives a reload only with the same
        // backends in the same order and the same settings.
        let affinity = cfg.affinity.map(|settings| {
            old.filter(|o| {
                o.backends
                    .iter()
                    .map(|b| b.addr)
                    .eq(backends.iter().map(|b| b.addr))
            })
            .and_then(|o| o.affinity.as_ref())
            .filter(|a| a.settings == settings)
            .cloned()
            .unwrap_or_else(|| {
                Arc::new(super::affinity::Affinity::new(settings).counted(metrics, &cfg.name))
            })
        });
        let learned = old
            .filter(|o| o.kind == cfg.kind)
            .map(|o| o.learned.load_full())
            .unwrap_or_default();
        Pool {
            name: cfg.name.clone(),
            kind: cfg.kind,
            backends,
            names: cfg.names().map(|(h, p)| (h.to_owned(), p)).collect(),
            resolve_every: cfg.resolve_every,
            static_models: cfg.models.clone(),
            learned: ArcSwap::new(learned),
            health: cfg.health.clone(),
            ejection: cfg.ejection,
            auth: cfg.auth.clone(),
            tls: cfg.tls.clone(),
            retry_budget: crate::edge::retry::RetryBudget::new(
                retry.budget_ratio,
                retry.budget_reserve,
            ),
            probe_bases,
            grpc_port: cfg.grpc_port,
            sticky,
            affinity,
        }
    }

    /// Whether this pool serves `model` (configured or learned from the engines).
    pub fn serves(&self, model: &str) -> bool {
        self.static_models.iter().any(|m| m == model) || self.learned.load().contains(model)
    }

    /// Whether a request for `model` may go to this pool: a TF Serving pool without a model
    /// list takes any name (TF Serving cannot list its models, and answers a name it does not
    /// have itself, in its shape); a list restricts; other pools take the models they serve.
    pub fn takes(&self, model: &str) -> bool {
        self.open_tf() || self.serves(model)
    }

    /// A TF Serving pool with no configured model list.
    pub fn open_tf(&self) -> bool {
        self.kind == PoolKind::Tfserving && self.static_models.is_empty()
    }

    /// Learns a TF Serving model from traffic: the engine just answered a request for it with
    /// a 2xx. Rare (once per name), so a copy of the set is fine; bounded so that a flood of
    /// names cannot grow it without end.
    pub fn learn_tf_model(&self, model: &str) {
        const MAX_LEARNED: usize = 1024;
        if self.kind != PoolKind::Tfserving || self.serves(model) {
            return;
        }
        self.learned.rcu(|cur| {
            let mut next = cur.as_ref().clone();
            if next.len() < MAX_LEARNED {
                next.insert(model.to_owned());
            }
            next
        });
        log::info!(
            "pool {}: learned TF Serving model {model} from a 2xx answer",
            self.name
        );
    }

    /// The learned models alone (TF Serving's discovery re-checks them).
    pub fn learned(&self) -> Arc<BTreeSet<String>> {
        self.learned.load_full()
    }

    /// Every model known for this pool.
    pub fn models(&self) -> BTreeSet<String> {
        let mut all: BTreeSet<String> = self.learned.load().as_ref().clone();
        all.extend(self.static_models.iter().cloned());
        all
    }

    /// Replaces the learned model set (from discovery).
    pub fn set_learned(&self, models: BTreeSet<String>) {
        if **self.learned.load() != models {
            log::info!(
                "pool {} serves models: {}",
                self.name,
                models.iter().cloned().collect::<Vec<_>>().join(", ")
            );
            self.learned.store(Arc::new(models));
        }
    }

    /// Whether any backend may take a request now.
    pub fn any_eligible(&self) -> bool {
        self.backends.iter().any(|b| b.eligible())
    }

    /// Whether this pool can answer requests of `api` (stream nodes speak every client API:
    /// their own pools decide).
    pub fn speaks(&self, api: crate::api::Api) -> bool {
        use crate::api::Api;
        self.kind == PoolKind::Okome
            || (api == Api::OpenAi && self.kind.speaks_openai())
            || matches!(
                (api, self.kind),
                (Api::Ollama, PoolKind::Ollama) | (Api::TfServing, PoolKind::Tfserving)
            )
            || (api == Api::TfServingGrpc
                && self.kind == PoolKind::Tfserving
                && self.grpc_port.is_some())
    }

    /// Suggested Retry-After (seconds) when nothing in this pool can take a request.
    pub fn retry_after_secs(&self) -> u64 {
        let soonest_ejection_end = self
            .backends
            .iter()
            .filter(|b| b.healthy())
            .map(|b| b.ejected_for_ms())
            .min();
        match soonest_ejection_end {
            Some(ms) => ms.div_ceil(1000).max(1),
            // Unhealthy everywhere: the earliest a probe can bring one back.
            None => self.health.interval.0.as_secs().max(1) * self.health.healthy_after as u64,
        }
    }
}

/// Every pool of the edge, by index (routes refer to pools by index on the hot path).
#[derive(Debug)]
pub struct Upstreams {
    /// Pools in config (name) order.
    pub pools: Vec<Arc<Pool>>,
}

impl Upstreams {
    /// Builds all pools, in the compiled config's order (routes refer to them by index), their
    /// names as `resolved`.
    pub fn new(cfg: &CompiledEdge, metrics: &crate::metrics::Metrics, resolved: &Resolved) -> Self {
        Self::rebuild(cfg, metrics, None, resolved)
    }

    /// Builds the pools of a new generation (a reload, or names that resolve differently):
    /// pools and backends that keep their name and address keep their live state (see
    /// [`Pool::new`]); the others start fresh.
    pub fn rebuild(
        cfg: &CompiledEdge,
        metrics: &crate::metrics::Metrics,
        old: Option<&Upstreams>,
        resolved: &Resolved,
    ) -> Self {
        Upstreams {
            pools: cfg
                .pools
                .iter()
                .map(|p| {
                    let before = old.and_then(|o| o.pools.iter().find(|q| q.name == p.name));
                    Arc::new(Pool::new(
                        p,
                        &cfg.retry,
                        metrics,
                        before.map(|b| &**b),
                        resolved,
                    ))
                })
                .collect(),
        }
    }

    /// Whether `other` has the same pools with the same backends (same `Arc`s: nothing to swap).
    pub fn same_backends(&self, other: &Upstreams) -> bool {
        self.pools.len() == other.pools.len()
            && self.pools.iter().zip(&other.pools).all(|(a, b)| {
                a.name == b.name
                    && a.backends.len() == b.backends.len()
                    && a.backends
                        .iter()
                        .zip(&b.backends)
                        .all(|(x, y)| Arc::ptr_eq(x, y))
            })
    }

    /// Index of a pool by name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }
}
