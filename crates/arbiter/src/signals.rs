//! Engine probes, one per kind:
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
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// The HTTP client probes use (plain HTTP/1, pooled).
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Probe answers larger than this are not read (a `/metrics` page is a few hundred KiB).
const MAX_PROBE_BODY: usize = 4 << 20;

/// A pooled HTTP/1 client with `TCP_NODELAY`.
pub fn client() -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(conn)
}

/// `GET url`, the body when the status is 2xx, within `timeout`.
pub async fn get_url(c: &HttpClient, url: &str, timeout: Duration) -> Result<Bytes, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let fut = async {
        let resp = c.get(uri).await.map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_PROBE_BODY)
            .collect()
            .await
            .map_err(|e| format!("GET {url}: reading body: {e}"))?
            .to_bytes();
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("GET {url}: status {status}"))
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("GET {url}: no answer within {timeout:?}"))?
}

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

/// The values the arbiter reads from a vLLM `/metrics` page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VllmMetrics {
    /// Sum of `vllm:num_requests_waiting` over label sets.
    pub waiting: Option<f64>,
    /// Sum of `vllm:num_requests_running`.
    pub running: Option<f64>,
    /// Max of `vllm:kv_cache_usage_perc` (or `vllm:gpu_cache_usage_perc`, older vLLM).
    pub kv_cache_usage: Option<f64>,
    /// Sum of `vllm:request_success_total`.
    pub success_total: Option<f64>,
}

/// `(name, value)` of each sample line of a Prometheus text page.
fn samples(text: &str) -> impl Iterator<Item = (&str, f64)> {
    text.lines().filter_map(|l| {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            return None;
        }
        let name_end = l.find(['{', ' '])?;
        let name = &l[..name_end];
        // The value follows the label set (which may hold spaces inside quotes).
        let after = match l[name_end..].find('}') {
            Some(i) if l.as_bytes()[name_end] == b'{' => &l[name_end + i + 1..],
            _ => &l[name_end..],
        };
        let v: f64 = after.split_whitespace().next()?.parse().ok()?;
        Some((name, v))
    })
}

fn add(slot: &mut Option<f64>, v: f64) {
    *slot = Some(slot.unwrap_or(0.0) + v);
}

/// Parses the vLLM gauges and counters the rules use.
pub fn parse_vllm_metrics(text: &str) -> VllmMetrics {
    let mut m = VllmMetrics::default();
    let mut old_kv: Option<f64> = None;
    for (name, v) in samples(text) {
        match name {
            "vllm:num_requests_waiting" => add(&mut m.waiting, v),
            "vllm:num_requests_running" => add(&mut m.running, v),
            "vllm:request_success_total" => add(&mut m.success_total, v),
            "vllm:kv_cache_usage_perc" => {
                m.kv_cache_usage = Some(m.kv_cache_usage.unwrap_or(0.0).max(v))
            }
            "vllm:gpu_cache_usage_perc" => old_kv = Some(old_kv.unwrap_or(0.0).max(v)),
            _ => {}
        }
    }
    if m.kv_cache_usage.is_none() {
        m.kv_cache_usage = old_kv;
    }
    m
}

/// Sum of `:tensorflow:serving:request_count` (finished requests, any status).
pub fn parse_tfserving_requests(text: &str) -> Option<f64> {
    let mut total = None;
    for (name, v) in samples(text) {
        if name == ":tensorflow:serving:request_count" {
            add(&mut total, v);
        }
    }
    total
}

#[derive(serde::Deserialize)]
struct OllamaPs {
    #[serde(default)]
    models: Vec<OllamaLoaded>,
}

#[derive(serde::Deserialize)]
struct OllamaLoaded {
    name: String,
    #[serde(default)]
    size_vram: u64,
}

#[derive(serde::Deserialize)]
struct TfStatus {
    model_version_status: Vec<TfVersion>,
}

#[derive(serde::Deserialize)]
struct TfVersion {
    state: String,
}

/// Probes one engine.
pub async fn probe(c: &HttpClient, e: &EngineSpec, timeout: Duration) -> EngineSignals {
    let base = format!("http://{}", e.address);
    let mut s = EngineSignals::default();
    match e.kind {
        EngineKind::Vllm => {
            if let Err(err) = get_url(c, &format!("{base}/health"), timeout).await {
                s.health_error = err;
                return s;
            }
            s.healthy = true;
            if let Ok(body) = get_url(c, &format!("{base}/metrics"), timeout).await {
                let m = parse_vllm_metrics(&String::from_utf8_lossy(&body));
                s.queue_depth = m.waiting.map(|v| v.max(0.0) as u64);
                s.running = m.running.map(|v| v.max(0.0) as u64);
                s.kv_cache_usage = m.kv_cache_usage;
                s.finished_total = m.success_total;
            }
        }
        EngineKind::Ollama => {
            if let Err(err) = get_url(c, &format!("{base}/"), timeout).await {
                s.health_error = err;
                return s;
            }
            s.healthy = true;
            if let Ok(body) = get_url(c, &format!("{base}/api/ps"), timeout).await {
                if let Ok(ps) = serde_json::from_slice::<OllamaPs>(&body) {
                    s.vram_bytes = Some(ps.models.iter().map(|m| m.size_vram).sum());
                    s.loaded_models = ps.models.into_iter().map(|m| m.name).collect();
                }
            }
        }
        EngineKind::Tfserving => {
            for m in &e.models {
                let url = format!("{base}/v1/models/{m}");
                let ok = match get_url(c, &url, timeout).await {
                    Ok(body) => match serde_json::from_slice::<TfStatus>(&body) {
                        Ok(st)
                            if st
                                .model_version_status
                                .iter()
                                .any(|v| v.state == "AVAILABLE") =>
                        {
                            Ok(())
                        }
                        Ok(_) => Err(format!("{url}: no version is AVAILABLE")),
                        Err(err) => Err(format!("{url}: not a model status: {err}")),
                    },
                    Err(err) => Err(err),
                };
                if let Err(err) = ok {
                    s.health_error = err;
                    return s;
                }
            }
            s.healthy = true;
            if let Some(p) = &e.metrics_path {
                if let Ok(body) = get_url(c, &format!("{base}{p}"), timeout).await {
                    s.finished_total = parse_tfserving_requests(&String::from_utf8_lossy(&body));
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vllm_fixture_values() {
        let text = "# HELP vllm:num_requests_running x\n\
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0\n\
vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 1.0\n\
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.0421\n\
vllm:request_success_total{engine=\"0\",finished_reason=\"stop\",model_name=\"m\"} 7.0\n\
vllm:request_success_total{engine=\"0\",finished_reason=\"length\",model_name=\"m\"} 1.0\n\
vllm:request_success_created{engine=\"0\",finished_reason=\"stop\",model_name=\"m\"} 1.79e+09\n";
        let m = parse_vllm_metrics(text);
        assert_eq!(m.waiting, Some(1.0));
        assert_eq!(m.running, Some(3.0));
        assert_eq!(m.kv_cache_usage, Some(0.0421));
        assert_eq!(m.success_total, Some(8.0));
    }

    #[test]
    fn accepts_the_older_kv_gauge() {
        let m = parse_vllm_metrics("vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.5\n");
        assert_eq!(m.kv_cache_usage, Some(0.5));
    }

    #[test]
    fn parses_tfserving_request_count() {
        let text = "# TYPE :tensorflow:serving:request_count counter\n\
:tensorflow:serving:request_count{model_name=\"a\",status=\"OK\"} 5\n\
:tensorflow:serving:request_count{model_name=\"a\",status=\"INVALID_ARGUMENT\"} 2\n\
:tensorflow:core:graph_runs{} 21558640\n";
        assert_eq!(parse_tfserving_requests(text), Some(7.0));
    }
}
