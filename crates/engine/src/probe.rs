//! Per engine kind, what "healthy" means and what else an engine tells:
//!
//! - vLLM: `GET /health` (200); `/metrics` (queue, running, KV cache, finished, prefix cache);
//!   models from `/v1/models`.
//! - Ollama: `GET /` (200 "Ollama is running"); loaded models and their VRAM from `/api/ps`;
//!   models from `/api/tags`. It exposes no queue.
//! - TF Serving: `GET /v1/models/{model}` for any name: up when it answers in TF Serving's shape
//!   (a model status, or its `{"error": "Servable not found…"}` 404), so health never hangs on
//!   one model's name. Which models are `AVAILABLE` is asked per name ([`tf_model_available`]):
//!   TF Serving has no model listing. Finished requests from its Prometheus page when one is
//!   configured.
//! - llama.cpp (`llama-server`): `GET /health` (200; 503 while the model loads); with
//!   `--metrics`, `/metrics` gives the running and deferred requests (the queue); models from
//!   `/v1/models`.
//! - OpenAI-compatible: `GET /v1/models` (200), models from it.
//! - okome (a stream node): `GET /readyz?pools=any` (200) on its admin listener, so a draining
//!   node (503 from SIGTERM on) or one with no engine left leaves the rotation, but one engine
//!   down does not take it out for every model. No model listing: routes name its pool.

use crate::prom::{self, EngineMetrics};
use crate::EngineKind;
use crate::{Client, GetError};
use serde::Deserialize;
use std::time::Duration;

/// One engine as a probe sees it.
#[derive(Debug, Clone, Copy)]
pub struct Engine<'a> {
    /// Its kind.
    pub kind: EngineKind,
    /// `http://IP:PORT` where it is probed (an okome node: its admin listener).
    pub base: &'a str,
    /// The engine's own key, sent as `Authorization`.
    pub auth: Option<&'a http::HeaderValue>,
    /// A health path that replaces the kind's.
    pub health_path: Option<&'a str>,
    /// TF Serving: the model names to ask about (the first one is probed; none: a reserved name).
    pub models: &'a [String],
    /// Per-call timeout.
    pub timeout: Duration,
}

/// Why an engine is not healthy.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Unhealthy {
    /// Its health endpoint did not answer 2xx in time.
    #[error(transparent)]
    Get(#[from] GetError),
    /// TF Serving answered something that is not a model status.
    #[error("{url}: not a model status: {message}")]
    NotModelStatus {
        /// What was asked.
        url: String,
        /// The decoder's message.
        message: String,
    },
    /// The status path given as the health check names a model with no `AVAILABLE` version.
    #[error("{url}: no version is AVAILABLE")]
    NoVersionAvailable {
        /// What was asked.
        url: String,
    },
}

impl Engine<'_> {
    async fn get(&self, c: &Client, path: &str) -> Result<bytes::Bytes, GetError> {
        c.get(&format!("{}{path}", self.base), self.auth, self.timeout)
            .await
    }
}

/// Checks the engine's health the way its kind defines it.
pub async fn health(c: &Client, e: &Engine<'_>) -> Result<(), Unhealthy> {
    let default = match e.kind {
        EngineKind::Vllm | EngineKind::Llamacpp => "/health",
        EngineKind::Ollama => "/",
        EngineKind::Openai => "/v1/models",
        // Ready while it serves any pool: one engine down on the core must not take every
        // stream node, and with them every model, out of the ingress's rotation.
        EngineKind::Okome => "/readyz?pools=any",
        EngineKind::Tfserving => {
            // An explicit health path names a model status the operator wants AVAILABLE.
            if let Some(p) = e.health_path {
                return match tf_answers(c, e, p).await? {
                    true => Ok(()),
                    false => Err(Unhealthy::NoVersionAvailable {
                        url: format!("{}{p}", e.base),
                    }),
                };
            }
            let model = e.models.first().map_or(TF_PROBE_MODEL, String::as_str);
            return tf_answers(c, e, &format!("/v1/models/{model}"))
                .await
                .map(|_| ());
        }
    };
    e.get(c, e.health_path.unwrap_or(default)).await?;
    Ok(())
}

/// The model name asked when a TF Serving pool knows none: any name will do, as a 404 in TF
/// Serving's shape proves the model server answers.
pub const TF_PROBE_MODEL: &str = "okome-health-probe";

/// TF Serving's answer to `GET path` (a model status path): whether a version is `AVAILABLE`
/// (`false` for its own 404 "Servable not found"), or why it is not TF Serving answering.
async fn tf_answers(c: &Client, e: &Engine<'_>, path: &str) -> Result<bool, Unhealthy> {
    #[derive(Deserialize)]
    struct Status {
        model_version_status: Vec<Version>,
    }
    #[derive(Deserialize)]
    struct Version {
        state: String,
    }
    #[derive(Deserialize)]
    struct NotFound {
        #[allow(dead_code)] // its presence is what is checked
        error: String,
    }
    let url = format!("{}{path}", e.base);
    let (status, body) = c.get_response(&url, e.auth, e.timeout).await?;
    let not_status = |message: String| Unhealthy::NotModelStatus {
        url: url.clone(),
        message,
    };
    match status {
        s if s.is_success() => {
            let st: Status =
                serde_json::from_slice(&body).map_err(|err| not_status(err.to_string()))?;
            Ok(st
                .model_version_status
                .iter()
                .any(|v| v.state == "AVAILABLE"))
        }
        http::StatusCode::NOT_FOUND => serde_json::from_slice::<NotFound>(&body)
            .map(|_| false)
            .map_err(|err| not_status(format!("404 that is not TF Serving's: {err}"))),
        status => Err(Unhealthy::Get(GetError::Status { url, status })),
    }
}

/// Whether TF Serving has an `AVAILABLE` version of `model`; `None` when it did not answer in
/// its shape.
pub async fn tf_model_available(c: &Client, e: &Engine<'_>, model: &str) -> Option<bool> {
    tf_answers(c, e, &format!("/v1/models/{model}")).await.ok()
}

/// The engine's queue and load from its `/metrics` (vLLM's, llama.cpp's); `None` for kinds
/// without one or when it cannot be read (llama.cpp without `--metrics` answers 501).
pub async fn metrics(c: &Client, e: &Engine<'_>) -> Option<EngineMetrics> {
    let read: fn(&str) -> EngineMetrics = match e.kind {
        EngineKind::Vllm => prom::vllm,
        EngineKind::Llamacpp => prom::llamacpp,
        _ => return None,
    };
    let body = e.get(c, "/metrics").await.ok()?;
    Some(read(&String::from_utf8_lossy(&body)))
}

/// A model Ollama holds in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Model name.
    pub name: String,
    /// Bytes of VRAM it holds.
    pub size_vram: u64,
}

/// Ollama's loaded models (`/api/ps`); `None` when it cannot be read.
pub async fn ollama_loaded(c: &Client, e: &Engine<'_>) -> Option<Vec<Loaded>> {
    #[derive(Deserialize)]
    struct Ps {
        #[serde(default)]
        models: Vec<Model>,
    }
    #[derive(Deserialize)]
    struct Model {
        name: String,
        #[serde(default)]
        size_vram: u64,
    }
    let body = e.get(c, "/api/ps").await.ok()?;
    let ps: Ps = serde_json::from_slice(&body).ok()?;
    Some(
        ps.models
            .into_iter()
            .map(|m| Loaded {
                name: m.name,
                size_vram: m.size_vram,
            })
            .collect(),
    )
}

/// TF Serving's finished requests from its Prometheus page at `path`.
pub async fn tfserving_requests(c: &Client, e: &Engine<'_>, path: &str) -> Option<f64> {
    let body = e.get(c, path).await.ok()?;
    prom::tfserving_requests(&String::from_utf8_lossy(&body))
}

/// The models an engine serves, from its listing API (`None` for TF Serving, which has none,
/// for an okome node, whose routes are its own, or when the listing cannot be read). Ollama's `name:latest` is listed under both names,
/// as clients use both.
pub async fn models(c: &Client, e: &Engine<'_>) -> Option<Vec<String>> {
    match e.kind {
        EngineKind::Vllm | EngineKind::Openai | EngineKind::Llamacpp => {
            #[derive(Deserialize)]
            struct List {
                data: Vec<Item>,
            }
            #[derive(Deserialize)]
            struct Item {
                id: String,
            }
            let body = e.get(c, "/v1/models").await.ok()?;
            let l: List = serde_json::from_slice(&body).ok()?;
            Some(l.data.into_iter().map(|i| i.id).collect())
        }
        EngineKind::Ollama => {
            #[derive(Deserialize)]
            struct Tags {
                models: Vec<Tag>,
            }
            #[derive(Deserialize)]
            struct Tag {
                name: String,
            }
            let body = e.get(c, "/api/tags").await.ok()?;
            let t: Tags = serde_json::from_slice(&body).ok()?;
            let mut out = Vec::with_capacity(t.models.len() * 2);
            for tag in t.models {
                if let Some(short) = tag.name.strip_suffix(":latest") {
                    out.push(short.to_owned());
                }
                out.push(tag.name);
            }
            Some(out)
        }
        EngineKind::Tfserving | EngineKind::Okome => None,
    }
}
