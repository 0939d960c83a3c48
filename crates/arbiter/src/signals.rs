//! What the arbiter reads of each engine, through the shared engine client
//! (`okome_engine::probe`):
//!
//! - vLLM: `GET /health` (200), `GET /metrics`: `vllm:num_requests_waiting`,
//!   `vllm:num_requests_running`, `vllm:kv_cache_usage_perc` (or the older
//!   `vllm:gpu_cache_usage_perc`), `vllm:request_success_total` (drain rate).
//! - Ollama: `GET /` (200), `GET /api/ps`: loaded models and their `size_vram`. Ollama has no
//!   queue metric.
//! - TF Serving: `GET /v1/models/{name}` for each model (healthy when a version is
//!   `AVAILABLE`), and, when `metrics_path` is set, `:tensorflow:serving:request_count` as the
//!   drain counter.

use super::config::{EngineKind, EngineSpec};
use okome_engine::probe::{self, Engine};
use okome_engine::{prom, Client};
use std::time::Duration;

/// What one probe round saw of an engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineSignals {
    /// Health probe succeeded.
    pub healthy: bool,
    /// Why it failed.
    pub health_error: String,
    /// Waiting requests.
    pub queue_depth: Option<u64>,
    /// Running requests.
    pub running: Option<u64>,
    /// KV-cache use 0..1.
    pub kv_cache_usage: Option<f64>,
    /// A counter of finished requests (drain rate comes from its deltas).
    pub finished_total: Option<f64>,
    /// Ollama: VRAM its loaded models hold, bytes.
    pub vram_bytes: Option<u64>,
    /// Ollama: loaded models.
    pub loaded_models: Vec<String>,
}

/// Probes one engine.
pub async fn probe(c: &Client, e: &EngineSpec, timeout: Duration) -> EngineSignals {
    let base = format!("http://{}", e.address);
    let engine = Engine {
        kind: e.kind,
        base: &base,
        auth: None,
        health_path: None,
        models: &e.models,
        timeout,
    };
    let mut s = EngineSignals::default();
    if let Err(err) = probe::health(c, &engine).await {
        s.health_error = err.to_string();
        return s;
    }
    s.healthy = true;
    match e.kind {
        EngineKind::Vllm | EngineKind::Llamacpp => {
            if let Some(m) = probe::metrics(c, &engine).await {
                s.queue_depth = m.waiting.map(prom::count);
                s.running = m.running.map(prom::count);
                s.kv_cache_usage = m.kv_cache_usage;
                s.finished_total = m.success_total;
            }
        }
        EngineKind::Ollama => {
            if let Some(loaded) = probe::ollama_loaded(c, &engine).await {
                s.vram_bytes = Some(loaded.iter().map(|m| m.size_vram).sum());
                s.loaded_models = loaded.into_iter().map(|m| m.name).collect();
            }
        }
        EngineKind::Tfserving => {
            if let Some(p) = &e.metrics_path {
                s.finished_total = probe::tfserving_requests(c, &engine, p).await;
            }
        }
        // Refused by the config: nothing more to read.
        EngineKind::Openai | EngineKind::Okome => {}
    }
    s
}
