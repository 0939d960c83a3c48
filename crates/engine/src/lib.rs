//! One client for the model servers okome fronts, shared by the edge (health checks, queue
//! depth, model discovery) and the arbiter (its signals):
//!
//! - the HTTP client is `okome_core::http`'s, the one every component uses.
//! - [`prom`]: the Prometheus text parser (vLLM's and TF Serving's `/metrics`).
//! - [`probe`]: per engine kind, what "healthy" means and what else an engine tells.
//! - [`tfs_grpc`]: TF Serving's gRPC messages and gRPC's unary framing and statuses.
//! - [`grpc_probe`]: TF Serving's gRPC side probed with `GetModelStatus`.

pub mod grpc_probe;
pub mod probe;
pub mod prom;
pub mod tfs_grpc;

pub use okome_core::http::{Client, GetError};

use serde::{Deserialize, Serialize};

/// The kind of model server, as written in configs (`kind: vllm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// vLLM's OpenAI-compatible server.
    Vllm,
    /// Ollama (native `/api/*` and OpenAI-compatible `/v1/*`).
    Ollama,
    /// TensorFlow Serving (REST port).
    Tfserving,
    /// Any other OpenAI-compatible server.
    Openai,
    /// llama.cpp's `llama-server`: OpenAI-compatible `/v1/*`, `/health` (503 while the model
    /// loads), and with `--metrics` the running and deferred requests on `/metrics`.
    Llamacpp,
    /// Another okome edge (a stream node behind an ingress): speaks every client API, serves
    /// whatever its own pools serve, and is ready while its admin `/readyz` says so.
    Okome,
}

impl EngineKind {
    /// Lower-case name as used in configs, metrics and `/v1/state`.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Vllm => "vllm",
            EngineKind::Ollama => "ollama",
            EngineKind::Tfserving => "tfserving",
            EngineKind::Openai => "openai",
            EngineKind::Llamacpp => "llamacpp",
            EngineKind::Okome => "okome",
        }
    }
}

impl EngineKind {
    /// Serves OpenAI chat and completions streams that can be continued from a final
    /// assistant message (mid-stream failover's continuation).
    pub fn continues_openai_chat(self) -> bool {
        matches!(
            self,
            EngineKind::Vllm | EngineKind::Openai | EngineKind::Llamacpp
        )
    }

    /// Speaks the OpenAI API on `/v1/*` (Ollama through its compatibility layer).
    pub fn speaks_openai(self) -> bool {
        self.continues_openai_chat() || self == EngineKind::Ollama
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
