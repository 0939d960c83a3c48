//! Pools of backends and the models they serve.

use super::Backend;
use crate::config::compile::{CompiledEdge, CompiledPool};
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
    /// Its backends, in config order.
    pub backends: Vec<Arc<Backend>>,
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
    /// Where each backend is probed (`http://IP:PORT`, in backend order): its own address, or
    /// its host at `health_check.port` (an okome node's admin listener).
    pub probe_bases: Vec<String>,
    /// The consistent-hash ring over all backends, when the pool is sticky.
    pub sticky: Option<super::hash::Sticky>,
}

impl Pool {
    /// Builds a pool from its compiled config; backends of `old` (the pool of the same name
    /// before a reload) at the same address are kept with their live state (health, in-flight,
    /// ejection), and so are its learned models when the engine kind is the same.
    pub fn new(
        cfg: &CompiledPool,
        retry: &config::Retry,
        metrics: &crate::metrics::Metrics,
        old: Option<&Pool>,
    ) -> Self {
        let backends = cfg
            .backends
            .iter()
            .map(|&addr| {
                old.and_then(|o| o.backends.iter().find(|b| b.addr == addr))
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Backend::new(&cfg.name, addr, metrics.clone())))
            })
            .collect();
        // Per generation, not per backend: a reload may change the probe port.
        let probe_bases = cfg
            .backends
            .iter()
            .map(|a| match cfg.probe_port {
                Some(port) => format!("http://{}", std::net::SocketAddr::new(a.ip(), port)),
                None => format!("http://{a}"),
            })
            .collect();
        let sticky = (!cfg.sticky.is_empty()).then(|| {
            super::hash::Sticky::new(cfg.sticky.clone(), &cfg.backends).counted(metrics, &cfg.name)
        });
        let learned = old
            .filter(|o| o.kind == cfg.kind)
            .map(|o| o.learned.load_full())
            .unwrap_or_default();
        Pool {
            name: cfg.name.clone(),
            kind: cfg.kind,
            backends,
            static_models: cfg.models.clone(),
            learned: ArcSwap::new(learned),
            health: cfg.health.clone(),
            ejection: cfg.ejection,
            auth: cfg.auth.clone(),
            retry_budget: crate::edge::retry::RetryBudget::new(
                retry.budget_ratio,
                retry.budget_reserve,
            ),
            probe_bases,
            sticky,
        }
    }

    /// Whether this pool serves `model` (configured or learned from the engines).
    pub fn serves(&self, model: &str) -> bool {
        self.static_models.iter().any(|m| m == model) || self.learned.load().contains(model)
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
        matches!(
            (api, self.kind),
            (_, PoolKind::Okome)
                | (
                    Api::OpenAi,
                    PoolKind::Vllm | PoolKind::Ollama | PoolKind::Openai
                )
                | (Api::Ollama, PoolKind::Ollama)
                | (Api::TfServing, PoolKind::Tfserving)
        )
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
    /// Builds all pools, in the compiled config's order (routes refer to them by index).
    pub fn new(cfg: &CompiledEdge, metrics: &crate::metrics::Metrics) -> Self {
        Self::rebuild(cfg, metrics, None)
    }

    /// Builds the pools of a reloaded config: pools and backends that keep their name and
    /// address keep their live state (see [`Pool::new`]); the others start fresh.
    pub fn rebuild(
        cfg: &CompiledEdge,
        metrics: &crate::metrics::Metrics,
        old: Option<&Upstreams>,
    ) -> Self {
        Upstreams {
            pools: cfg
                .pools
                .iter()
                .map(|p| {
                    let before = old.and_then(|o| o.pools.iter().find(|q| q.name == p.name));
                    Arc::new(Pool::new(p, &cfg.retry, metrics, before.map(|b| &**b)))
                })
                .collect(),
        }
    }

    /// Index of a pool by name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }
}
