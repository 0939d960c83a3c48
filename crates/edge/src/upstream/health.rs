//! Active health probes per engine kind, queue-depth scraping and model discovery.
//!
//! - vLLM: `GET /health` (200), queue from `/metrics` `vllm:num_requests_waiting`, models from `/v1/models`.
//! - Ollama: `GET /` (200 "Ollama is running"), models from `/api/tags` (it exposes no queue).
//! - TF Serving: `GET /v1/models/{model}`, healthy when a version is `AVAILABLE`.
//! - OpenAI-compatible: `GET /v1/models` (200), models from it.

use super::{Backend, Pool, Upstreams};
use crate::config::PoolKind;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Models are rediscovered every this many probe rounds.
const DISCOVERY_EVERY: u64 = 5;
/// Probe answers larger than this are not read (a `/metrics` page is a few hundred KiB at most).
const MAX_PROBE_BODY: usize = 4 << 20;

fn client() -> HttpClient {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(conn)
}

/// Runs one round of probes and discovery for every pool; used at start-up so the first
/// request already sees real health.
pub async fn bootstrap(up: &Upstreams) {
    let c = client();
    let rounds = up.pools.iter().map(|p| round(&c, p, true));
    futures::future::join_all(rounds).await;
}

/// Probes every pool forever, each at its own interval (a supervised task: see
/// [`okome_core::supervisor`]).
pub async fn run(up: Arc<Upstreams>) {
    let loops = up.pools.iter().cloned().map(|pool| async move {
        let c = client();
        let mut tick = tokio::time::interval(pool.health.interval.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the bootstrap round just ran
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            n += 1;
            round(&c, &pool, n % DISCOVERY_EVERY == 0).await;
        }
    });
    futures::future::join_all(loops).await;
}

async fn round(c: &HttpClient, pool: &Pool, discover: bool) {
    let probes = pool.backends.iter().map(|b| probe(c, pool, b));
    futures::future::join_all(probes).await;
    if discover && pool.kind != PoolKind::Tfserving {
        let mut models = BTreeSet::new();
        let mut any = false;
        for b in pool.backends.iter().filter(|b| b.healthy()) {
            if let Some(ms) = discover_models(c, pool, b).await {
                any = true;
                models.extend(ms);
            }
        }
        if any {
            pool.set_learned(models);
        }
    }
}

async fn probe(c: &HttpClient, pool: &Pool, b: &Backend) {
    let timeout = pool.health.timeout.0;
    let result = match pool.kind {
        PoolKind::Vllm => get(
            c,
            pool.auth.as_ref(),
            b,
            pool.health.path.as_deref().unwrap_or("/health"),
            timeout,
        )
        .await
        .map(|_| ()),
        PoolKind::Ollama => get(
            c,
            pool.auth.as_ref(),
            b,
            pool.health.path.as_deref().unwrap_or("/"),
            timeout,
        )
        .await
        .map(|_| ()),
        PoolKind::Openai => get(
            c,
            pool.auth.as_ref(),
            b,
            pool.health.path.as_deref().unwrap_or("/v1/models"),
            timeout,
        )
        .await
        .map(|_| ()),
        PoolKind::Tfserving => probe_tfserving(c, pool, b, timeout).await,
    };
    let (ok, why) = match result {
        Ok(()) => (true, String::new()),
        Err(e) => (false, e),
    };
    b.probe_result(
        ok,
        pool.health.healthy_after,
        pool.health.unhealthy_after,
        &why,
    );
    if ok && pool.kind == PoolKind::Vllm {
        if let Ok(text) = get(c, pool.auth.as_ref(), b, "/metrics", timeout).await {
            b.set_queue_depth(vllm_waiting(&text));
            b.set_prefix_cache(
                vllm_sum(&text, "vllm:prefix_cache_queries_total"),
                vllm_sum(&text, "vllm:prefix_cache_hits_total"),
            );
        }
    }
}

async fn probe_tfserving(
    c: &HttpClient,
    pool: &Pool,
    b: &Backend,
    timeout: Duration,
) -> Result<(), String> {
    let path = match (&pool.health.path, pool.static_models.first()) {
        (Some(p), _) => p.clone(),
        (None, Some(m)) => format!("/v1/models/{m}"),
        (None, None) => return Err("no model to probe".into()),
    };
    let body = get(c, pool.auth.as_ref(), b, &path, timeout).await?;
    #[derive(serde::Deserialize)]
    struct Status {
        model_version_status: Vec<Version>,
    }
    #[derive(serde::Deserialize)]
    struct Version {
        state: String,
    }
    let s: Status =
        serde_json::from_slice(&body).map_err(|e| format!("{path}: not a model status: {e}"))?;
    if s.model_version_status
        .iter()
        .any(|v| v.state == "AVAILABLE")
    {
        Ok(())
    } else {
        Err(format!("{path}: no version is AVAILABLE"))
    }
}

async fn discover_models(c: &HttpClient, pool: &Pool, b: &Backend) -> Option<Vec<String>> {
    let timeout = pool.health.timeout.0;
    match pool.kind {
        PoolKind::Vllm | PoolKind::Openai => {
            #[derive(serde::Deserialize)]
            struct List {
                data: Vec<Item>,
            }
            #[derive(serde::Deserialize)]
            struct Item {
                id: String,
            }
            let body = get(c, pool.auth.as_ref(), b, "/v1/models", timeout)
                .await
                .ok()?;
            let l: List = serde_json::from_slice(&body).ok()?;
            Some(l.data.into_iter().map(|i| i.id).collect())
        }
        PoolKind::Ollama => {
            #[derive(serde::Deserialize)]
            struct Tags {
                models: Vec<Tag>,
            }
            #[derive(serde::Deserialize)]
            struct Tag {
                name: String,
            }
            let body = get(c, pool.auth.as_ref(), b, "/api/tags", timeout)
                .await
                .ok()?;
            let t: Tags = serde_json::from_slice(&body).ok()?;
            let mut out = Vec::new();
            for tag in t.models {
                // Ollama answers to "llama3.2" for "llama3.2:latest"; clients use both.
                if let Some(short) = tag.name.strip_suffix(":latest") {
                    out.push(short.to_owned());
                }
                out.push(tag.name);
            }
            Some(out)
        }
        PoolKind::Tfserving => None,
    }
}

/// `GET path` on a backend, with the pool's own credentials when it has them.
async fn get(
    c: &HttpClient,
    auth: Option<&http::HeaderValue>,
    b: &Backend,
    path: &str,
    timeout: Duration,
) -> Result<Bytes, String> {
    let uri: http::Uri = format!("http://{}{}", b.addr, path)
        .parse()
        .map_err(|e| format!("{path}: {e}"))?;
    let fut = async {
        let mut req = http::Request::get(uri);
        if let Some(a) = auth {
            req = req.header(http::header::AUTHORIZATION, a.clone());
        }
        let req = req
            .body(Default::default())
            .map_err(|e| format!("GET {path}: {e}"))?;
        let resp = c
            .request(req)
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_PROBE_BODY)
            .collect()
            .await
            .map_err(|e| format!("GET {path}: reading body: {e}"))?
            .to_bytes();
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("GET {path}: status {status}"))
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("GET {path}: no answer within {timeout:?}"))?
}

/// Sums `vllm:num_requests_waiting` over its label sets (one per model/engine).
pub fn vllm_waiting(metrics: &[u8]) -> u64 {
    vllm_sum(metrics, "vllm:num_requests_waiting").unwrap_or(0)
}

/// Sums one vLLM metric over its label sets; `None` when the engine does not export it.
pub fn vllm_sum(metrics: &[u8], name: &str) -> Option<u64> {
    let text = String::from_utf8_lossy(metrics);
    let mut found = false;
    let sum = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .inspect(|_| found = true)
        .map(|v| v.max(0.0) as u64)
        .sum();
    found.then_some(sum)
}

#[cfg(test)]
mod tests {
    use super::vllm_waiting;

    #[test]
    fn parses_the_waiting_gauge() {
        let text =
            b"# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
# TYPE vllm:num_requests_waiting gauge\n\
vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 7.0\n\
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 3.0\n";
        assert_eq!(vllm_waiting(text), 7);
        assert_eq!(super::vllm_sum(text, "vllm:prefix_cache_hits_total"), None);
    }
}
